"""compressdet predict: same preprocessing, decode and NMS as evaluation (predict + eval == bench mAP),
outputs (PNGs, KITTI txt, COCO JSON, mp4), and one-line exit-2 errors for bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("onnxruntime")

from test_export_helpers import make_run  # noqa: E402

from compressdet.cli import main  # noqa: E402

torch.set_num_threads(1)


def _val_images(run, dest):
    """The val images the bench evaluates (recipe's max_val_images), copied into ``dest``; their label dir."""
    from compressdet.data import build_dataset, prepare_data
    from compressdet.recipe import load_recipe

    cfg = load_recipe(run / "recipe.yaml").data
    root = prepare_data(cfg)
    ids = build_dataset(cfg, "val", train=False).ids
    dest.mkdir()
    for i in ids:
        shutil.copy(root / "training" / "image_2" / f"{i}.png", dest / f"{i}.png")
    return ids, root / "training" / "label_2"


def test_predict_then_eval_equals_bench_map(tmp_path, capsys):
    run = make_run(tmp_path / "runs", stages=("student",))
    assert main(["bench", str(run), "--backends", "torch", "--runs", "1", "--warmup", "0", "--batch-sizes", "1",
                 "--rounds", "1", "--threads", "1"]) == 0
    bench_map = json.loads((run / "bench" / "report.json").read_text())["rows"][0]["eval"]["map40"]
    ids, labels = _val_images(run, tmp_path / "val")
    capsys.readouterr()
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "val"), "--model", str(run), "--backend", "torch", "--out", str(out),
                 "--save-txt", "kitti", "--threads", "1"]) == 0
    assert sorted(p.stem for p in (out / "labels").glob("*.txt")) == sorted(ids)
    assert all((out / f"{i}.png").read_bytes()[:4] == b"\x89PNG" for i in ids)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    capsys.readouterr()
    assert main(["eval", "--gt", str(labels), "--det", str(out / "labels"), "--ids", str(tmp_path / "ids.txt"),
                 "--json", str(tmp_path / "ev.json")]) == 0
    got = json.loads((tmp_path / "ev.json").read_text())["map40"]
    assert got == pytest.approx(bench_map, abs=1e-6), (got, bench_map)


def test_predict_on_a_split_of_the_run_data(tmp_path, capsys):
    """``split:test`` is the run's held-out images (what ``make demo`` draws), ``--max-images`` the first N."""
    from compressdet.data import build_dataset
    from compressdet.recipe import load_recipe

    run = make_run(tmp_path / "runs", stages=("student",))
    ids = build_dataset(load_recipe(run / "recipe.yaml").data, "test", train=False).ids
    out = tmp_path / "pred"
    assert main(["predict", "split:test", "--model", str(run), "--out", str(out), "--max-images", "1",
                 "--save-txt", "kitti", "--threads", "1"]) == 0
    assert [p.stem for p in out.glob("*.png")] == ids[:1]
    assert [p.stem for p in (out / "labels").glob("*.txt")] == ids[:1]


def test_predict_onnx_glob_coco_and_threshold(tmp_path, capsys):
    run = make_run(tmp_path / "runs", stages=("student",))
    assert main(["export", str(run), "--onnx"]) == 0
    ids, _ = _val_images(run, tmp_path / "val")
    out = tmp_path / "pred"
    onnx = run / "exports" / "student.onnx"
    assert main(["predict", str(tmp_path / "val" / "*.png"), "--model", str(onnx), "--out", str(out),
                 "--save-txt", "coco", "--score-threshold", "0.2"]) == 0
    coco = json.loads((out / "detections.coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["car", "pedestrian", "cyclist"]
    assert len(coco["images"]) == len(ids) and all(a["score"] >= 0.2 for a in coco["annotations"])
    assert "img/s" in capsys.readouterr().out
    # the same image on torch and ort: the same detections (ORT agrees with PyTorch to 1e-3)
    a, b = tmp_path / "a", tmp_path / "b"
    one = str(tmp_path / "val" / f"{ids[0]}.png")
    assert main(["predict", one, "--model", str(run), "--out", str(a), "--save-txt", "kitti"]) == 0
    assert main(["predict", one, "--model", str(onnx), "--out", str(b), "--save-txt", "kitti"]) == 0
    la = (a / "labels" / f"{ids[0]}.txt").read_text().splitlines()
    lb = (b / "labels" / f"{ids[0]}.txt").read_text().splitlines()
    assert len(la) == len(lb) and [x.split()[0] for x in la] == [x.split()[0] for x in lb]


def test_predict_video(tmp_path):
    iio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    import numpy as np

    run = make_run(tmp_path / "runs", stages=("student",))
    video = tmp_path / "clip.mp4"
    w = iio.get_writer(str(video), format="FFMPEG", fps=5, codec="libx264", macro_block_size=1,
                       ffmpeg_log_level="error")
    for i in range(3):
        w.append_data(np.full((64, 192, 3), 40 * i, np.uint8))
    w.close()
    out = tmp_path / "pred"
    assert main(["predict", str(video), "--model", str(run), "--out", str(out), "--save-txt", "kitti"]) == 0
    assert (out / "clip.mp4").stat().st_size > 0
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"clip_{i:06d}.txt" for i in range(3)]


@pytest.mark.parametrize("args, msg", [
    (["{tmp}/nope.png"], "nope.png: no such image, video, folder or glob match"),
    (["{tmp}/bad.png"], "bad.png: cannot decode image"),
    (["{tmp}/*.jpg"], "no file matches this pattern"),
    (["{tmp}/bad.png", "--backend", "onnxrt"], "unknown backend 'onnxrt'"),
    (["{tmp}/bad.png", "--model", "{run}/student/model.pt", "--backend", "ort"],
     "backend 'ort' cannot run it"),
    (["{tmp}/bad.png", "--backend", "openvino"], "has no file for backend 'openvino'"),
    (["split:test", "--model", "{run}/student/model.pt"], "need --model to be a run directory"),
    (["split:holdout"], "expected split:train, split:val or split:test"),
    (["{tmp}/bad.png", "--max-images", "0"], "--max-images 0: expected a positive number"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, msg):
    run = make_run(tmp_path / "runs", stages=("student",))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    argv = ["predict", *[a.format(tmp=tmp_path, run=run) for a in args]]
    if "--model" not in argv:
        argv += ["--model", str(run)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress/log lines go to stderr before it
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and err[-1] == errors[0] and msg in errors[0], err


def test_best_f1_threshold_picks_the_score_where_precision_and_recall_balance():
    """Two objects; detections scored 0.9 (hit), 0.8 (duplicate of the same object: a false positive), 0.7
    (the second object) and 0.2 (background): F1 is best keeping down to 0.7 (2 TP, 1 FP: 0.8); a
    detection on an ignore region counts neither way; no match at all -> None."""
    import numpy as np

    from compressdet.predict.threshold import best_f1_threshold

    gt = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float),
          "labels": np.array([0, 1, -1])}
    det = {"boxes": np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 31], [60, 60, 70, 70],
                              [40, 40, 50, 50]], float),
           "scores": np.array([0.9, 0.8, 0.7, 0.2, 0.95]), "labels": np.array([0, 0, 1, 0, 0])}
    r = best_f1_threshold([det], [gt])
    assert r["threshold"] == 0.7 and abs(r["f1"] - 0.8) < 1e-9 and r["objects"] == 2
    assert abs(r["precision"] - 2 / 3) < 1e-4 and r["recall"] == 1.0
    det["labels"] = np.array([1, 1, 0, 1, 0])  # every class wrong: nothing matches
    assert best_f1_threshold([det], [gt]) is None
