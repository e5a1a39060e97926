"""A model's own class names: KITTI type tokens, colours, bench report columns, COCO image matching, IR rt_info
(issue #39). The command-line journeys are in tests/journeys/test_predict_eval_journey.py."""

from __future__ import annotations

import pytest
import torch

from compressdet.errors import UserError


def test_predictions_to_kitti_takes_any_class_names():
    from compressdet.eval.kitti_eval import kitti_type_name, predictions_to_kitti

    pred = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 20.0]] * 3), "scores": torch.tensor([0.9, 0.8, 0.7]),
            "labels": torch.tensor([0, 1, 2])}
    objs = predictions_to_kitti(pred, ["vehicle", "traffic  light", "CAR"])
    assert [o.type for o in objs] == ["vehicle", "traffic_light", "Car"]  # KITTI's own keep the devkit spelling
    assert kitti_type_name("pedestrian") == "Pedestrian"
    with pytest.raises(UserError, match="non-empty"):
        kitti_type_name("  ")
    with pytest.raises(UserError, match="out of range"):
        predictions_to_kitti({**pred, "labels": torch.tensor([0, 1, 3])}, ["vehicle", "traffic light", "car"])


def test_each_class_of_a_model_gets_its_own_colour():
    from compressdet.eval.viz import CLASS_COLOURS, PALETTE, class_colour

    classes = [f"c{i}" for i in range(len(PALETTE))]
    assert len({class_colour(c, classes) for c in classes}) == len(PALETTE)
    assert class_colour("Car", classes) == CLASS_COLOURS["car"]
    assert class_colour("traffic_light", ["traffic light"]) == PALETTE[0]  # KITTI token of a name with a space
    assert class_colour("unknown") == class_colour("unknown")  # stable without the model's classes


def test_bench_report_columns_follow_the_report_classes():
    from compressdet.bench.report import COLUMNS, _ap_cells, columns, report_classes

    assert columns({"metric": "kitti"}) == [f"{c} (%)" if "E/M/H" in c or c == "mAP" else c for c in COLUMNS]
    sub = {"metric": "kitti", "classes": ["car"]}
    cols = columns(sub)
    assert "car E/M/H (%)" in cols and "ped E/M/H (%)" not in cols and "mAP (%)" in cols
    assert len(cols) == len(COLUMNS) - 2
    ev = {"ap": {"car": {lvl: {"ap40": 50.0} for lvl in ("easy", "moderate", "hard")}}}
    assert report_classes({"rows": [{"eval": ev}]}) == ["car"]
    assert _ap_cells(ev, "ap40", ["car"]) == ["50.0/50.0/50.0", "50.0"]
    assert "AP (%)" in columns({"metric": "coco"})


def test_image_matcher_by_path_tail_and_base_name():
    from compressdet.eval.coco_eval import ImageMatcher, category_ids_by_name

    gt = {"images": [{"id": 5, "file_name": "val/000001.png"}, {"id": 6, "file_name": "train/000001.png"},
                     {"id": 7, "file_name": "val/000002.png"}],
          "categories": [{"id": 3, "name": "Car"}]}
    m = ImageMatcher(gt, "gt.json")
    assert m.match("val/000001.png") == 5
    assert m.match("/data/images/train/000001.png") == 6
    assert m.match("elsewhere/000002.png") == 7  # base name, unique
    assert m.match("000003.png") is None
    with pytest.raises(UserError, match="fits 2 images"):
        m.match("elsewhere/000001.png")
    assert category_ids_by_name(gt, "gt.json") == {"car": 3}
    with pytest.raises(UserError, match="both named 'car'"):
        category_ids_by_name({"categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "CAR"}]}, "gt.json")


def test_openvino_ir_carries_the_graph_metadata(tmp_path):
    pytest.importorskip("openvino")
    import onnx
    from onnx import TensorProto, helper

    from compressdet.export._openvino import convert_to_ir, ir_metadata

    g = helper.make_graph([helper.make_node("Relu", ["images"], ["head"])], "g",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("head", TensorProto.FLOAT, [1, 3, 16, 16])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.metadata_props.add(key="classes", value='["vehicle", "traffic light"]')
    onnx.save(m, tmp_path / "m.onnx")
    convert_to_ir(tmp_path / "m.onnx", tmp_path / "ir" / "m.xml")
    assert ir_metadata(tmp_path / "ir" / "m.xml") == {"classes": '["vehicle", "traffic light"]'}
    assert b"<compressdet>" in (tmp_path / "ir" / "m.xml").read_bytes()


def test_split_of_a_coco_run_takes_its_annotation_file(tmp_path):
    """predict split:val --save-txt coco of a coco-format run writes that split's ids, when its categories
    cover the model's classes; otherwise predict's own ids, said in one log line."""
    import json

    import yaml

    from compressdet.predict.predictor import split_coco_gt

    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    ann = root / "annotations" / "val.json"
    ann.write_text(json.dumps({"images": [], "annotations": [],
                               "categories": [{"id": 4, "name": "Vehicle"}, {"id": 9, "name": "person"}]}))
    run = tmp_path / "run"
    run.mkdir()
    recipe = {"name": "t", "data": {"format": "coco", "root": str(root), "classes": ["vehicle", "person"],
                                    "coco": {"train": "annotations/val.json", "val": "annotations/val.json"}},
              "stages": [{"name": "s", "kind": "train", "model": "shuffledet_0.25x"}]}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    logs = []
    assert split_coco_gt(run, "val", ["vehicle", "person"], logs.append) == ann and not logs
    assert split_coco_gt(run, "val", ["vehicle", "bicycle"], logs.append) is None
    assert len(logs) == 1 and "no category named 'bicycle'" in logs[0]
    assert split_coco_gt(run, "test", ["vehicle", "person"], logs.append) is None  # no such file
    assert split_coco_gt(None, "val", ["vehicle"], logs.append) is None
    # a class_map that renames or merges: the file's boxes are not the model's targets, so not its ids
    recipe["data"]["class_map"] = {"Vehicle": "vehicle", "person": "vehicle"}
    recipe["data"]["classes"] = ["vehicle"]
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert split_coco_gt(run, "val", ["vehicle"], logs.append) is None and len(logs) == 1


def test_tensorrt_engine_takes_classes_from_the_onnx_beside_it(tmp_path, monkeypatch):
    """An engine file has no metadata: the ONNX it was built from (exported beside it) names its classes and
    family; without one, KITTI's three (checked with TensorRT itself stubbed: no CUDA here)."""
    import onnx
    from onnx import TensorProto, helper

    import compressdet.export._tensorrt as trt
    from compressdet.predict import predictor

    monkeypatch.setattr(trt, "check_tensorrt", lambda purpose: None)
    monkeypatch.setattr(predictor, "_graph_input_size", lambda path, backend: (64, 160))
    g = helper.make_graph([helper.make_node("Relu", ["images"], ["head"])], "g",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 160])],
                          [helper.make_tensor_value_info("head", TensorProto.FLOAT, [1, 3, 64, 160])])
    m = helper.make_model(g)
    m.metadata_props.add(key="classes", value='["vehicle", "person"]')
    onnx.save(m, tmp_path / "student.int8.onnx")
    (tmp_path / "student.int8.engine").write_bytes(b"engine")
    (tmp_path / "alone.engine").write_bytes(b"engine")
    got = predictor.resolve_model(tmp_path / "student.int8.engine", log=lambda s: None)
    assert got.backend == "tensorrt" and got.classes == ["vehicle", "person"] and got.image_size == (64, 160)
    assert predictor.resolve_model(tmp_path / "alone.engine", log=lambda s: None).classes == ["car", "pedestrian",
                                                                                              "cyclist"]


def test_a_model_without_recorded_classes_is_never_given_kitti_names_it_does_not_have():
    """export and predict share one fallback: KITTI's three for a 3-class file, else class0..N-1 (the exporter
    used to cut KITTI's list to N, naming a 2-class COCO model car/pedestrian)."""
    from compressdet.conventions import default_classes

    assert default_classes(3) == ["car", "pedestrian", "cyclist"]
    assert default_classes(2) == ["class0", "class1"] and default_classes(5)[-1] == "class4"
