"""benchmarks/yolo.py (issue #45): the comparison blocks, steps and table from numbers alone (fast); the
decoded-output path that evaluates Ultralytics' exported graph gives the detections of compressdet's own
decode; the smoke preset end to end (`make test-bench`: Ultralytics trainings and exports, deploys)."""

from __future__ import annotations

import json
import math
import os

import pytest
from _bench import load_bench, unload_bench  # tests/ is on sys.path

from compressdet.models.yolo import ultralytics_available

pytestmark = pytest.mark.skipif(not ultralytics_available(), reason="ultralytics not installed (compressdet[ultralytics])")


@pytest.fixture(scope="module")
def yb():
    yield load_bench("yolo")
    unload_bench("yolo")


SEEDS = [0, 1, 2]


def _numbers():
    test = {"direct": {0: 10.0, 1: 11.0, 2: 12.0}, "compressdet_distill": {0: 12.0, 1: 13.5, 2: 13.0},
            "ultralytics_distill": {0: 11.0, 1: 12.0, 2: 12.5}, "chain": {0: 12.5, 1: 13.0, 2: 13.5},
            "ultralytics_path": {0: 11.0, 1: 11.5, 2: 12.0}}
    lat = {"chain": {0: 4.0, 1: 5.0, 2: 6.0}, "ultralytics_path": {0: 8.0, 1: 10.0, 2: 12.0}}
    return test, lat


def test_summary_pairs_by_seed_and_the_latency_ratio_is_the_means(yb):
    test, lat = _numbers()
    s = yb.summarize(SEEDS, test, lat)
    cvu = s["chain_vs_ultralytics"]
    assert cvu["map_diff"]["per_seed"] == pytest.approx([1.5, 1.5, 1.5])
    assert cvu["map_diff"]["mean"] == pytest.approx(1.5) and cvu["map_diff"]["ci95"][0] > 0
    assert cvu["latency_ratio"] == pytest.approx(5.0 / 10.0) and cvu["latency_ratio_per_seed"] == pytest.approx([0.5] * 3)
    assert s["goals"] == {"map_ahead_ci_above_0": True, "latency_equal_or_lower": True, "met": True}
    # slower, or not ahead with a CI above 0: the goal is not met, and says which half failed
    slow = {"chain": {k: 3 * v for k, v in lat["chain"].items()}, "ultralytics_path": lat["ultralytics_path"]}
    assert yb.summarize(SEEDS, test, slow)["goals"] == {"map_ahead_ci_above_0": True, "latency_equal_or_lower": False,
                                                         "met": False}
    mixed = {**test, "chain": {0: 13.0, 1: 10.0, 2: 12.5}}
    g = yb.summarize(SEEDS, mixed, lat)["goals"]
    assert not g["map_ahead_ci_above_0"] and not g["met"]
    assert s["compressdet_distill_vs_ultralytics_distill"]["per_seed"] == pytest.approx([1.0, 1.5, 0.5])


def test_equal_steps_for_both_paths(yb):
    for preset, n_train in (("smoke", 14), ("cpu", 1000), ("cpu", 999)):
        pl = yb.plan(yb.PRESETS[preset], n_train)
        assert pl["student_steps"] == pl["epochs"] * pl["batches_per_epoch"] == pl["epochs"] * math.ceil(n_train / 2)
        assert pl["chain_steps"] == pl["path_steps"] == (pl["epochs"] + 1) * pl["batches_per_epoch"]
        assert pl["prune_steps"] >= 1 and pl["qat_steps"] >= 1
    h, w = yb.PRESETS["cpu"]["data"]["image_size"]
    assert h % 32 == 0 and w % 32 == 0 and len(yb.PRESETS["cpu"]["seeds"]) == 3


def test_table_from_the_json_alone(yb):
    test, lat = _numbers()
    r = {"preset": "cpu", "command": "python benchmarks/yolo.py --preset cpu", "cpu": "x86", "seeds": SEEDS,
         "data": {"train_images": 1000, "val_images": 500, "test_images": 1000, "image_size": [192, 640]},
         "steps": {"batch": 2, "student_steps": 1500, "epochs": 3, "batches_per_epoch": 500},
         "teacher": {"arch": "yolov8s", "test_map40": 30.0}, "student": "yolov8n",
         "selection": {"chosen": "pkd", "val_map40": {"fgfi": 1.0, "pkd": 2.0, "crosskd": 0.5}},
         "ultralytics": {"settings": {"dis": 6.0}}, "latency": {"note": "isolated"},
         "arms": {a: {"what": a, "test_map40": [test[a][s] for s in SEEDS]} for a in yb.ARMS},
         **yb.summarize(SEEDS, test, lat)}
    for a in ("chain", "ultralytics_path"):
        r["arms"][a]["latency_ms"] = [lat[a][s] for s in SEEDS]
    md = yb.render_md(r)
    assert all(f"| {a} |" in md for a in yb.ARMS)
    assert "| 5.00 (4.00, 5.00, 6.00) |" in md and "0.50x" in md and "goal (" in md and ": met" in md
    import readme_tables  # the distillation page's block: the same tables without the title

    block = readme_tables.GENERATORS["yolo.json"](r)
    assert not block.startswith("#") and block in md and "| 5.00 (4.00, 5.00, 6.00) |" in block


def test_decoded_outputs_give_compressdets_own_detections(yb):
    """Ultralytics' exported graph ends in its decode; DecodedYolo's selection + NMS on that decode is the
    float model's postprocess of the raw outputs."""
    import torch

    from compressdet.models import build_model
    from compressdet.quant.ptq import randomize_batchnorm

    torch.manual_seed(0)
    model = randomize_batchnorm(build_model("yolov8n", image_size=(64, 96), num_classes=3)).eval()
    with torch.no_grad():
        raw = model(torch.randn(2, 3, 64, 96) * 40)
        ref = model.postprocess(raw, [(128, 192)] * 2)
        got = yb.DecodedYolo(model).postprocessor()((model.decode(raw),), [(128, 192)] * 2)
    assert len(got) == 2 and sum(len(d["boxes"]) for d in got) > 0
    for a, b in zip(got, ref):
        for k in ("boxes", "scores", "labels"):
            torch.testing.assert_close(a[k], b[k])


def test_ultralytics_distils_on_the_yolo_copy_and_loads_back(yb, tmp_path):
    """The Ultralytics arm on its own (one epoch at smoke size): the YOLO copy holds compressdet's classes
    only, Ultralytics' trainer distils from our teacher (dis_loss > 0, its distill_model and dis in the
    checkpoint), and its best.pt loads whole through model.weights and evaluates by compressdet."""
    import yaml

    from compressdet.models import build_model
    from compressdet.models.yolo import save_ultralytics
    from compressdet.recipe import DataConfig

    p = yb.PRESETS["smoke"]
    hw = tuple(p["data"]["image_size"])
    data = {**p["data"], "synth": {**p["data"]["synth"], "cache_dir": str(tmp_path / "synth")},
            "augment": {"enabled": False}}
    cfg = DataConfig(**data)
    y = yb.yolo_dataset(cfg, tmp_path / "yolo")
    meta = yaml.safe_load(y.read_text())
    assert meta["names"] == dict(enumerate(cfg.classes)) and os.path.isabs(meta["path"])
    ids = {ln.split()[0] for f in (tmp_path / "yolo" / "labels").rglob("*.txt") for ln in f.read_text().splitlines()}
    assert ids and ids <= {"0", "1", "2"}
    assert yb.yolo_dataset(cfg, tmp_path / "yolo") == y  # made once
    teacher = save_ultralytics(build_model(yb.TEACHER, image_size=hw, num_classes=3), tmp_path / "teacher.pt",
                               classes=list(cfg.classes))
    run = yb.ultralytics_train(tmp_path / "w", y, teacher, seed=0, epochs=1, hw=hw, p=p)
    assert len(run["dis_loss"]) == 1 and run["dis_loss"][0] > 0
    assert run["args"]["distill_model"] == str(teacher) and run["args"]["dis"] == 6.0 and run["args"]["epochs"] == 1
    again = yb.ultralytics_train(tmp_path / "w", y, teacher, seed=0, epochs=1, hw=hw, p=p)  # cached
    assert again["best_sha256"] == run["best_sha256"]
    f = yb.as_compressdet(run["best"], hw, list(cfg.classes), tmp_path / "models")
    from _protocol import test_map

    res = test_map(f, data, tmp_path / "test_eval")
    assert res["split"] == "test" and res["images"] > 0 and 0.0 <= res["map40"] <= 100.0


@pytest.mark.bench_smoke  # ~8 min on the shared 2-core CPU: 9 compressdet runs, 2 chains, 4 Ultralytics trainings, 2 exports
def test_smoke_preset_end_to_end(yb, tmp_path):
    args = ["--preset", "smoke", "--seeds", "2", "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
    assert yb.main(args) == 0
    r = json.loads((tmp_path / "r" / "yolo.json").read_text())
    seeds = r["seeds"]
    assert (r["selection_split"], r["report_split"], seeds) == ("val", "test", [0, 1])
    assert r["command"] == "python benchmarks/yolo.py --preset smoke --seeds 2" and r["cpu"]
    assert set(r["arms"]) == set(yb.ARMS) and r["selection"]["chosen"] in yb.METHODS
    for arm, a in r["arms"].items():
        assert len(a["test_map40"]) == len(seeds) and all(0.0 <= v <= 100.0 for v in a["test_map40"]), arm
        assert len(a["latency_ms"]) == len(seeds) and min(a["latency_ms"]) > 0, arm
    # both paths train as many steps; Ultralytics distilled (its dis_loss > 0 in every epoch, our teacher)
    assert r["arms"]["chain"]["steps"] == r["arms"]["ultralytics_path"]["steps"]
    ul = r["arms"]["ultralytics_distill"]
    assert ul["distilled"] and all(len(d) == r["steps"]["epochs"] and min(d) > 0 for d in ul["dis_loss"])
    assert r["ultralytics"]["settings"]["dis"] == 6.0 and r["ultralytics"]["settings"]["distill_model"].endswith(".pt")
    cvu = r["chain_vs_ultralytics"]
    assert {"per_seed", "mean", "ci95"} <= set(cvu["map_diff"]) and len(cvu["map_diff"]["per_seed"]) == len(seeds)
    lc, lu = r["arms"]["chain"]["latency_ms"], r["arms"]["ultralytics_path"]["latency_ms"]
    assert len(lc) == len(lu) == len(seeds) and min(lc + lu) > 0
    assert cvu["latency_ratio"] == pytest.approx(sum(lc) / sum(lu))
    assert cvu["map_diff"]["per_seed"] == pytest.approx(
        [c - u for c, u in zip(r["arms"]["chain"]["test_map40"], r["arms"]["ultralytics_path"]["test_map40"])])
    assert set(r["goals"]) == {"map_ahead_ci_above_0", "latency_equal_or_lower", "met"}
    assert "| chain |" in (tmp_path / "r" / "yolo.md").read_text()
