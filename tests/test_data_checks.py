"""Checks before work and the data commands, run as a user types them (issue #39, part 3): classes and
class_map checked against the annotation files (case-insensitively) by ``recipe check`` and by ``run``
before it makes a run directory; ``recipe check --print-resolved`` shows only the fields the format
reads; ``data convert --split-file`` and the ``all`` listing; no DontCare class in YOLO/VOC output;
``data stats`` writes a PNG only when asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The command in a new process, as a user types it."""
    return subprocess.run([sys.executable, "-m", "compressdet", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def cli(capsys, monkeypatch):
    """The same command line in this process (each item has one subprocess test; variants run here)."""
    from compressdet.cli import main

    def run(*args, cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out, err)
    return run


def _coco(root: Path) -> Path:
    """Two splits of two 40x30 images, categories spelled 'Car', 'Truck', 'Person'."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    cats = [{"id": 1, "name": "Car"}, {"id": 2, "name": "Truck"}, {"id": 3, "name": "Person"}]
    for split, first in (("train", 1), ("val", 3)):
        imgs, anns = [], []
        for k in (first, first + 1):
            Image.new("RGB", (40, 30), (k * 40, 0, 0)).save(root / "images" / f"im{k}.png")
            imgs.append({"id": k, "file_name": f"im{k}.png", "width": 40, "height": 30})
            for c in (1, 2, 3):
                anns.append({"id": len(anns) + 1, "image_id": k, "category_id": c, "bbox": [c * 5, 2, 8, 10],
                             "iscrowd": 0})
        (root / "annotations" / f"{split}.json").write_text(json.dumps(
            {"images": imgs, "annotations": anns, "categories": cats}))
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """The same tiny set as COCO, YOLO and VOC: {format: folder}."""
    from compressdet.data.convert import convert

    base = tmp_path_factory.mktemp("sets")
    out = {"coco": _coco(base / "coco")}
    for fmt in ("yolo", "voc"):
        convert(out["coco"], src_format="coco", dst_format=fmt, out=base / fmt, log=lambda m: None)
        out[fmt] = base / fmt
    return out


def _recipe(path: Path, fmt: str, root: Path, classes: list[str] | None, class_map: dict | None = None) -> Path:
    data = {"format": fmt, "image_size": [32, 32]}
    if classes is not None:
        data["classes"] = classes
    data.update({"yolo": str(root / "data.yaml")} if fmt == "yolo" else {"root": str(root)})
    if class_map:
        data["class_map"] = class_map
    path.write_text(yaml.safe_dump({"name": "chk", "data": data, "stages": [
        {"name": "train", "kind": "train", "model": "shuffledet_0.25x",
         "schedule": {"steps": 1, "batch_size": 2, "eval_every": 1, "checkpoint_every": 1}}]}, sort_keys=False))
    return path


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
def test_class_names_match_the_annotations_case_insensitively(datasets, fmt, tmp_path, cli):
    # the README's promise: 'car' in the recipe is the file's 'Car'; the model keeps the recipe's spelling
    r = _recipe(tmp_path / "ok.yaml", fmt, datasets[fmt], ["vehicle", "person"],
                {"car": "vehicle", "TRUCK": "Vehicle", "person": "person"})
    p = cli("recipe", "check", r, "--runs-root", tmp_path / "runs", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    from compressdet.data import build_dataset
    from compressdet.recipe import load_recipe

    cfg = load_recipe(r).data
    ds = build_dataset(cfg, "val", train=False)
    assert sorted(ds[0][1]["labels"].tolist()) == [0, 0, 1] and cfg.classes == ["vehicle", "person"]


@pytest.mark.parametrize("fmt, source", [("coco", "annotations/train.json"), ("yolo", "data.yaml"),
                                         ("voc", "Annotations/*.xml of ")])
def test_recipe_check_and_run_name_every_mismatch_before_any_work(datasets, fmt, source, tmp_path, cli):
    r = _recipe(tmp_path / "bad.yaml", fmt, datasets[fmt], ["vehicle", "cyclist"], {"car": "vehicle", "truk": "vehicle"})
    cmd = _cli if fmt == "coco" else cli
    p = cmd("recipe", "check", r, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 2, p.stderr  # one line per problem, each naming recipe, field and annotation file
    assert all(ln.removeprefix("error: ").startswith(f"{r}: data.class") for ln in lines), p.stderr
    assert all(str(datasets[fmt] / source) in ln for ln in lines), p.stderr
    assert "data.class_map: 'truk' is not a category of" in lines[0] and "(did you mean 'Truck'?)" in lines[0]
    assert "data.classes: 'cyclist' matches no category" in lines[1]
    assert "Traceback" not in p.stderr and "ok" not in p.stdout
    # run: the same lines, and no run directory is made
    runs = tmp_path / "runs"
    p = cmd("run", r, "--runs-root", runs, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == lines, p.stderr
    assert not runs.exists() or not any(runs.rglob("*"))


@pytest.mark.parametrize("fmt, expected", [("coco", ["Car", "Truck", "Person"]),  # as the JSON lists them
                                           ("yolo", ["Car", "Truck", "Person"]),  # the dataset YAML's names
                                           ("voc", ["Car", "Person", "Truck"])])  # VOC declares none: sorted
def test_omitted_classes_are_the_datas_own(datasets, fmt, expected, tmp_path, cli):
    """No KITTI names for a user's data: omitted classes are its categories, recorded in the resolved recipe."""
    r = _recipe(tmp_path / "own.yaml", fmt, datasets[fmt], None)
    cmd = _cli if fmt == "yolo" else cli
    p = cmd("recipe", "check", r, "--print-resolved", "--runs-root", tmp_path / "runs", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    resolved = yaml.safe_load(p.stdout[p.stdout.index("name: chk"):])
    assert resolved["data"]["classes"] == expected
    from compressdet.data import build_dataset
    from compressdet.recipe import load_recipe

    target = build_dataset(load_recipe(r).data, "val", train=False)[0][1]
    by_x = [lab for _, lab in sorted(zip(target["boxes"][:, 0].tolist(), target["labels"].tolist()))]
    assert by_x == [expected.index(n) for n in ("Car", "Truck", "Person")]  # the boxes left to right


def test_omitted_classes_with_a_class_map_are_its_targets_and_without_data_a_one_line_error(datasets, tmp_path, cli):
    from compressdet.recipe import load_recipe

    r = _recipe(tmp_path / "m.yaml", "coco", datasets["coco"], None, {"car": "vehicle", "truck": "vehicle",
                                                                       "person": "human"})
    assert load_recipe(r).data.classes == ["vehicle", "human"]
    r = _recipe(tmp_path / "none.yaml", "coco", tmp_path / "nowhere", None)
    p = cli("recipe", "check", r, cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert f"{r}:" in p.stderr and "data" in p.stderr and "give data.classes" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_print_resolved_shows_only_what_the_format_reads_and_loads_again(datasets, tmp_path):
    from compressdet.recipe import parse_recipe

    r = _recipe(tmp_path / "c.yaml", "coco", datasets["coco"], ["car", "person"])
    p = _cli("recipe", "check", r, "--print-resolved", "--runs-root", tmp_path / "runs", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    text = p.stdout[p.stdout.index("name: chk"):]
    data = yaml.safe_load(text)["data"]
    assert {"train_split", "val_split", "test_split", "synth", "voc", "yolo"}.isdisjoint(data), data
    assert data["format"] == "coco" and data["root"] == str(datasets["coco"]) and "class_map" in data
    again = parse_recipe(text, "resolved.yaml")  # the strict loader takes it back, unchanged
    assert yaml.safe_dump(again.to_yaml_dict(used_only=True), sort_keys=False) in p.stdout
    # a synth recipe keeps its synth settings and split files, and shows no class_map or coco block
    synth = parse_recipe(yaml.safe_dump({"name": "s", "data": {"synth": {"num_images": 9}},
                                         "stages": [{"name": "t", "kind": "train", "model": "shuffledet_0.25x"}]}))
    sd = synth.to_yaml_dict(used_only=True)["data"]
    assert sd["synth"]["num_images"] == 9 and "train_split" in sd and {"class_map", "coco", "root"}.isdisjoint(sd)
    assert parse_recipe(yaml.safe_dump(synth.to_yaml_dict(used_only=True))).data == synth.data


def test_convert_a_partial_kitti_copy_with_split_files(kitti_real, tmp_path, cli):
    # kitti_real is a partial copy: its ImageSets/train.txt lists 3,711 ids, 29 images are present
    p = cli("data", "convert", kitti_real, "--from", "kitti", "--to", "coco", "--out", tmp_path / "x", cwd=tmp_path)
    assert p.returncode == 2 and "not found" in p.stderr and not (tmp_path / "x").exists()
    p = _cli("data", "convert", kitti_real, "--from", "kitti", "--to", "coco", "--out", tmp_path / "c",
             "--split-file", "train=ImageSets/real_train.txt", "--split-file", "val=ImageSets/real_val.txt",
             cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "29 images (train 12, val 17)" in p.stdout
    ann = {s: json.loads((tmp_path / "c" / "annotations" / f"{s}.json").read_text()) for s in ("train", "val", "all")}
    assert [len(ann[s]["images"]) for s in ("train", "val", "all")] == [12, 17, 29]
    assert [im["file_name"] for im in ann["all"]["images"]] == [
        im["file_name"] for s in ("train", "val") for im in ann[s]["images"]]
    assert len(ann["all"]["annotations"]) == len(ann["train"]["annotations"]) + len(ann["val"]["annotations"])
    for im in ann["all"]["images"]:
        assert (tmp_path / "c" / "images" / im["file_name"]).is_file()
    # the COCO 'all' file is a split a recipe can name
    from compressdet.data.formats import read_records, source_config
    from compressdet.recipe import SplitFiles

    recs, _, _ = read_records(source_config("coco", tmp_path / "c", coco=SplitFiles(train="annotations/all.json")),
                              "train")
    assert len(recs) == 29
    # a listed id without its image: one line naming the list file and line
    ids = tmp_path / "ids.txt"
    ids.write_text("000001\n999999\n")
    p = cli("data", "convert", kitti_real, "--from", "kitti", "--to", "kitti", "--out", tmp_path / "k",
             "--split-file", f"val={ids}", cwd=tmp_path)
    assert p.returncode == 2 and f"{ids}:2: image id '999999' is listed but" in p.stderr, p.stderr
    assert not (tmp_path / "k").exists()
    p = cli("data", "convert", kitti_real, "--from", "coco", "--to", "kitti", "--out", tmp_path / "k",
             "--split-file", f"val={ids}", cwd=tmp_path)
    assert p.returncode == 2 and "--split-file" in p.stderr and "coco data is split by" in p.stderr, p.stderr


@pytest.mark.parametrize("fmt, listing", [("kitti", "ImageSets/all.txt"), ("voc", "ImageSets/Main/all.txt"),
                                          ("yolo", "all.txt")])
def test_convert_writes_an_all_listing_and_no_empty_dontcare_class(kitti_real, fmt, listing, tmp_path):
    from compressdet.data.convert import convert, open_source, read_all_splits
    from compressdet.data.formats import Issues

    out = tmp_path / fmt
    rep = convert(kitti_real, src_format="kitti", dst_format=fmt, out=out, log=lambda m: None,
                  split_files={"train": kitti_real / "ImageSets" / "real_train.txt", "val": "ImageSets/real_val.txt"})
    lines = (out / listing).read_text().splitlines()
    assert len(lines) == 29 == rep["images"]
    if fmt == "yolo":
        assert all((out / ln).is_file() for ln in lines)
        names = yaml.safe_load((out / "data.yaml").read_text())["names"]
        assert "DontCare" not in names.values() and "Car" in names.values()
    else:
        split_ids = [ln for s in ("train", "val") for ln in (out / Path(listing).with_name(f"{s}.txt")).read_text().split()]
        assert lines == split_ids
    data, cats = read_all_splits(open_source(out, fmt), Issues())
    names = {n for recs in data.values() for r in recs for n in r.names}
    if fmt == "kitti":  # KITTI keeps its ignore regions
        assert "DontCare" in names and "DontCare" in rep["categories"]
    else:
        assert "DontCare" not in names | set(cats) | set(rep["categories"])
        assert rep["dropped_ignore_regions"] == 55  # every DontCare of the 29 images, counted


def test_stats_writes_a_png_only_when_asked(datasets, tmp_path, cli):
    p = _cli("data", "stats", datasets["coco"], "--format", "coco", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "train: 2 images, 6 boxes" in p.stdout and list(tmp_path.iterdir()) == []
    p = cli("data", "stats", datasets["coco"], "--format", "coco", "--png", "h.png", cwd=tmp_path)
    assert p.returncode == 0 and (tmp_path / "h.png").stat().st_size > 1000
    assert [f.name for f in tmp_path.iterdir()] == ["h.png"]


def test_voc_names_are_the_whole_sets(datasets, tmp_path):
    # VOC declares no category list: a name only the train split's objects use is still a category
    import shutil

    from compressdet.data.checks import check_classes
    from compressdet.recipe import DataConfig

    root = tmp_path / "voc"
    shutil.copytree(datasets["voc"], root)
    xml = root / "Annotations" / f"{(root / 'ImageSets/Main/train.txt').read_text().split()[0]}.xml"
    xml.write_text(xml.read_text().replace("<name>Truck</name>", "<name>Tram</name>"))
    cfg = DataConfig(format="voc", root=str(root), classes=["vehicle", "person"],
                     class_map={"car": "vehicle", "tram": None, "person": "person"})
    assert check_classes(cfg) == []
    bad = cfg.model_copy(update={"class_map": {"car": "vehicle", "person": "person", "bus": None}})
    (line,) = check_classes(bad)
    assert line.startswith("data.class_map: 'bus' is not a category of") and "train.txt and" in line
