"""``compressdet data kitti --verify``: sha256 of a KITTI download against the shipped list (real files:
correct, missing, one byte corrupted); the MSCNN split written only for a download that verified; the
recipe error without KITTI."""

from __future__ import annotations

import shutil
from pathlib import Path

from compressdet.cli import main
from compressdet.data.verify import load_checksums, verify_kitti

REPO = Path(__file__).resolve().parents[1]


def test_shipped_checksum_lists_are_complete():
    img, lab = load_checksums("image_2"), load_checksums("label_2")
    assert len(img) == len(lab) == 7481
    assert img["000000.png"][0] == "bf103e7a67c33549053fd3faa22b4c079434acc967b24995da3bdc7f8ece8c65"
    assert set(lab) == {f"{i:06d}.txt" for i in range(7481)}


def _partial_download(src: Path, dst: Path, ids=("000000", "000001", "000002")) -> Path:
    for kind, ext in (("image_2", ".png"), ("label_2", ".txt")):
        (dst / "training" / kind).mkdir(parents=True)
        for i in ids:
            shutil.copy(src / "training" / kind / f"{i}{ext}", dst / "training" / kind / f"{i}{ext}")
    return dst


def test_verify_reports_missing_and_corrupt(kitti_real, tmp_path, capsys):
    root = _partial_download(kitti_real, tmp_path / "kitti")
    png = root / "training" / "image_2" / "000001.png"
    data = bytearray(png.read_bytes())
    data[1000] ^= 0x01  # one byte flipped: same size, other sha256
    png.write_bytes(bytes(data))
    rep = verify_kitti(root, write_split=False)
    assert rep["checked"] == 2 * 7481 and rep["ok"] == 5
    assert rep["corrupt"] == ["training/image_2/000001.png"]
    assert len(rep["missing"]) == 2 * 7481 - 6 and "training/label_2/007480.txt" in rep["missing"]
    assert not (root / "ImageSets").exists()

    assert main(["data", "kitti", "--verify", str(root), "--show", "2"]) == 2
    cap = capsys.readouterr()
    assert f"corrupt: {png}" in cap.out and "more missing" in cap.out
    assert "5 of 14962 files match the original KITTI training set, 14956 missing, 1 corrupt" in cap.err
    # a failed check writes nothing into the folder it found broken (issue #44)
    assert not (root / "ImageSets").exists() and "wrote" not in cap.out


def test_verified_download_gets_the_mscnn_split(kitti_real, tmp_path, capsys, monkeypatch):
    import compressdet.data.verify as verify

    root = _partial_download(kitti_real, tmp_path / "kitti")
    full = {k: verify.load_checksums(k) for k in ("image_2", "label_2")}
    # a download of these three images only: the shipped sha256 of just those files
    monkeypatch.setattr(verify, "load_checksums", lambda kind: {n: v for n, v in full[kind].items()
                                                                if (root / "training" / kind / n).is_file()})
    assert main(["data", "kitti", "--verify", str(root), "--no-split"]) == 0
    assert not (root / "ImageSets").exists()
    assert main(["data", "kitti", "--verify", str(root)]) == 0
    cap = capsys.readouterr()
    assert "6 of 6 files match" in cap.out and "MSCNN split" in cap.out
    # the MSCNN split was written (absent before) and is the shipped one
    train = (root / "ImageSets" / "train.txt").read_text().split()
    val = (root / "ImageSets" / "val.txt").read_text().split()
    assert len(train) == 3712 and len(val) == 3769 and not set(train) & set(val)


def test_verify_cli_needs_a_kitti_root(tmp_path, capsys):
    assert main(["data", "kitti", "--verify", str(tmp_path)]) == 2
    assert "no training/ folder" in capsys.readouterr().err


def test_run_without_kitti_says_how_to_get_and_verify_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's data.root (data/kitti) is not there
    rc = main(["run", str(REPO / "recipes" / "0.25x_imitate_int8.yaml"), "--run-dir", str(tmp_path / "run"),
               "--only", "teacher"])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1, err
    assert "data/kitti" in line[0] and "cvlibs.net" in line[0] and "compressdet data kitti --verify data/kitti" in line[0]
