"""Recipe validation: every malformed recipe gets one exact `file:line: field: problem` line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from compressdet.cli import main
from compressdet.errors import RecipeError
from compressdet.recipe import DistillConfig, load_recipe, parse_recipe, stage_schemas

BASE = """name: demo
data:
  format: synth
  image_size: [64, 192]
stages:
  - name: teacher
    kind: train
    model: shuffledet_1x
  - name: student
    kind: train
    model: shuffledet_0.25x
    teacher: teacher
    imitation: {weight: 1.0}
"""

T = "    model: shuffledet_1x"  # the teacher's model line, a place to insert keys after

CASES = {
    "bad_yaml": ("name: demo\nstages: [\n  - name: a\n", [],
                 "{f}:3: invalid YAML: expected the node content, but found '-'"),
    "not_mapping": ("- a\n- b\n", [], "{f}:1: <top>: a recipe is a mapping with name, data and stages (got list)"),
    "unknown_top_key": (BASE.replace("name: demo", "nmae: demo\nname: demo"), [],
                        "{f}:1: nmae: unknown key 'nmae' (did you mean 'name'?)"),
    "unknown_stage_key": (BASE.replace(T, T + "\n    shedule: {steps: 3}"), [],
                          "{f}:9: stages[0].shedule: unknown key 'shedule' (did you mean 'schedule'?)"),
    "wrong_type": (BASE.replace(T, T + "\n    schedule: {steps: abc}"), [],
                   "{f}:9: stages[0].schedule.steps: Input should be a valid integer, unable to parse string as "
                   "an integer (got 'abc')"),
    "out_of_range": (BASE.replace(T, T + "\n    schedule:\n      lr: -1"), [],
                     "{f}:10: stages[0].schedule.lr: Input should be greater than 0 (got -1)"),
    "unknown_kind": (BASE.replace("kind: train\n" + T, "kind: trian\n" + T), [],
                     "{f}:7: stages[0].kind: unknown stage kind 'trian' (did you mean 'train'?) "
                     "(known: {known})"),
    "missing_kind": (BASE.replace("    kind: train\n" + T, T), [],
                     "{f}:6: stages[0]: required field 'kind' is missing (one of: {known})"),
    "dangling_reference": (BASE.replace("teacher: teacher", "teacher: teachr"), [],
                           "{f}:12: stages[1].teacher: no stage named 'teachr' (did you mean 'teacher'?)"),
    "cyclic_reference": (BASE.replace(T, T + "\n    from: student"), [],
                         "{f}:9: stages[0].from: reference cycle: teacher -> student -> teacher"),
    "forward_reference": (BASE + "  - name: p\n    kind: prune\n    from: q\n  - name: q\n    kind: train\n"
                                 "    model: shuffledet_0.5x\n", [],
                          "{f}:16: stages[2].from: 'q' is defined later (stages[3]); a stage can only use stages "
                          "listed before it"),
    "duplicate_name": (BASE.replace("name: student", "name: teacher").replace("teacher: teacher", "teacher: teacher"),
                       [], "{f}:9: stages[1].name: duplicate stage name 'teacher' (first used by stages[0])"),
    "missing_required_ref": (BASE + "  - name: p\n    kind: prune\n", [],
                             "{f}:14: stages[2]: stage kind 'prune' needs 'from: <stage name>'"),
    "imitation_without_teacher": (BASE.replace("    teacher: teacher\n", ""), [],
                                  "{f}:9: stages[1]: imitation with weight > 0 needs 'teacher: <stage name>'"),
    "teacher_without_imitation": (BASE.replace("    imitation: {weight: 1.0}\n", ""), [],
                                  "{f}:9: stages[1]: 'teacher: teacher' is named but there is no 'imitation' "
                                  "block; add 'imitation: {{weight: 1.0}}' to imitate it (weight 0: the baseline) or "
                                  "drop 'teacher'"),
    "prune_teacher_without_imitation": (BASE + "  - name: p\n    kind: prune\n    from: student\n"
                                        "    teacher: teacher\n", [],
                                        "{f}:14: stages[2]: 'teacher: teacher' is named but there is no 'imitation' "
                                        "block; add 'imitation: {{weight: 1.0}}' to imitate it (weight 0: the "
                                        "baseline) or drop 'teacher'"),
    "prune_imitation_without_teacher": (BASE + "  - name: p\n    kind: prune\n    from: student\n"
                                        "    imitation: {weight: 1.0}\n", [],
                                        "{f}:14: stages[2]: imitation with weight > 0 needs 'teacher: <stage name>'"),
    "image_size_not_16": (BASE.replace("[64, 192]", "[60, 192]"), [],
                          "{f}:4: data.image_size: both sides must be positive multiples of 16, got 60x192"),
    "missing_data_root": (BASE.replace("format: synth", "format: kitti\n  root: /nonexistent/kitti"), [],
                          "{f}:4: data.root: folder '/nonexistent/kitti' does not exist (put KITTI there or override "
                          "data.root=PATH); to get KITTI: download 'left color images of object data set' (12 GB) "
                          "and 'training labels of object data set' from "
                          "https://www.cvlibs.net/datasets/kitti/eval_object.php, unzip both into /nonexistent/kitti "
                          "(giving /nonexistent/kitti/training/image_2 and /nonexistent/kitti/training/label_2), then "
                          "check it with 'compressdet data kitti --verify /nonexistent/kitti' (it also writes the "
                          "MSCNN train/val split)"),
    "override_bad_stage": (BASE, ["stages.studnt.schedule.steps=3"],
                           "{f}: override 'stages.studnt.schedule.steps=3': stages.studnt: no stage named 'studnt' "
                           "(did you mean 'student'?)"),
    "override_wrong_type": (BASE, ["stages.student.schedule.steps=many"],
                            "{f}: override 'stages.student.schedule.steps=many': stages[1].schedule.steps: Input "
                            "should be a valid integer, unable to parse string as an integer (got 'many')"),
    "override_without_value": (BASE, ["stages.student.schedule.steps"],
                               "{f}: override 'stages.student.schedule.steps': expected dotted.key=value"),
    "override_index_out_of_range": (BASE, ["stages.5.name=x"],
                                    "{f}: override 'stages.5.name=x': stages: index 5 out of range (list has 2 items)"),
    "override_into_value": (BASE, ["name.x=1"],
                            "{f}: override 'name.x=1': name: is a value ('demo'), cannot set 'x' inside it"),
    # YAML keys are unique: PyYAML alone would keep the last value without a word
    "duplicate_top_key": ("seed: 0\n" + BASE + "seed: 3\n", [], "{f}:15: seed: duplicate key (first at line 1)"),
    "duplicate_nested_key": (BASE + "    schedule:\n      lr: 0.1\n      steps: 3\n      lr: 0.2\n", [],
                             "{f}:17: stages[1].schedule.lr: duplicate key (first at line 15)"),
    "duplicate_flow_key": (BASE.replace("{weight: 1.0}", "{weight: 1.0, weight: 0.5}"), [],
                           "{f}:13: stages[1].imitation.weight: duplicate key (first at line 13)"),
    "duplicate_key_same_value": (BASE.replace("format: synth", "format: synth\n  format: synth"), [],
                                 "{f}:4: data.format: duplicate key (first at line 3)"),
    "timestamp_out_of_range": (BASE.replace("name: demo", "name: 2001-13-45"), [],
                               "{f}:1: invalid YAML: cannot read '2001-13-45' (month must be in 1..12)"),
    "not_finite": (BASE + "    schedule: {weight_decay: .inf}\n", [],
                   "{f}:14: stages[1].schedule.weight_decay: Input should be a finite number (got inf)"),
    # found by tests/test_fuzz_recipe.py: each was an internal error (or a message broken over lines)
    "key_with_a_line_break": (BASE + '"se\\ned": 1\n', [], "{f}:14: se\\ned: unknown key 'se\\ned' (did you mean 'seed'?)"),
    "override_with_a_line_break": (BASE, ["na\x85me=x"],
                                   "{f}: override 'na\\x85me=x': na\\x85me: unknown key 'na\\x85me' (did you mean 'name'?)"),
    "override_index_two_minus": (BASE, ["stages.--1.name=x"], "{f}: override 'stages.--1.name=x': stages.--1: no stage "
                                                              "named '--1'"),
    "override_index_superscript": (BASE, ["stages.\u00b2=x"], "{f}: override 'stages.\u00b2=x': stages.\u00b2: no stage "
                                                               "named '\u00b2'"),
    "override_timestamp": (BASE, ["seed=2001-13-45"], "{f}: override 'seed=2001-13-45': value is not valid YAML "
                                                      "(cannot read '2001-13-45' (month must be in 1..12))"),
    "override_control_character": (BASE, ["seed=\x1b"], "{f}: override 'seed=\\x1b': value is not valid YAML "
                                   "(unacceptable character #x001b: special characters are not allowed)"),
    "kind_not_a_name": (BASE.replace("kind: train\n" + T, "kind: [train]\n" + T), [],
                        "{f}:7: stages[0].kind: unknown stage kind '['train']' (did you mean 'train'?) (known: {known})"),
    "override_duplicate_key": (BASE, ["seed={a: 1, a: 2}"], "{f}: override 'seed={{a: 1, a: 2}}': value has a "
                                                            "duplicate key 'a'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_recipe_gives_exact_error(case, tmp_path, capsys):
    text, overrides, expected = CASES[case]
    f = tmp_path / f"{case}.yaml"
    f.write_text(text)
    rc = main(["recipe", "check", str(f), *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    known = ", ".join(sorted(stage_schemas()))  # tests may register extra kinds
    assert err[0] == "error: " + expected.format(f=f, known=known)


def test_missing_file_is_exit_2(tmp_path, capsys):
    assert main(["recipe", "check", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe file not found" in capsys.readouterr().err


def test_every_error_is_reported(tmp_path):
    text = BASE.replace(T, T + "\n    shedule: {}\n    bogus: 1")
    with pytest.raises(RecipeError) as e:
        parse_recipe(text, "r.yaml")
    lines = str(e.value).splitlines()
    assert lines == ["r.yaml:9: stages[0].shedule: unknown key 'shedule' (did you mean 'schedule'?)",
                     "r.yaml:10: stages[0].bogus: unknown key 'bogus' (valid keys: name, kind, from, teacher, model, "
                     "schedule, imitation, distill, postprocess, eval)"]


def test_overrides_by_stage_name_index_and_yaml_values(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(BASE)
    r = load_recipe(f, ["stages.student.schedule.steps=200", "stages.0.schedule.lr=0.5",
                        "data.image_size=[96, 320]", "stages.student.imitation.psi=0.25", "seed=7"])
    assert r.stage("student").schedule.steps == 200
    assert r.stage("teacher").schedule.lr == 0.5
    assert r.data.image_size == (96, 320)
    assert r.stage("student").imitation.psi == 0.25
    assert r.seed == 7
    # defaults come from METHOD.md
    s = r.stage("teacher").schedule
    assert (s.lr, s.momentum, s.steps, s.batch_size, s.clip_grad_norm) == (0.5, 0.9, 40000, 32, 1.0)
    assert r.stage("student").postprocess.nms_thresh == 0.4
    assert r.stage("student").postprocess.topk_candidates == 64


def test_resolved_recipe_round_trips(tmp_path):
    import yaml

    r = parse_recipe(BASE, "r.yaml")
    again = parse_recipe(yaml.safe_dump(r.to_yaml_dict()), "again.yaml")
    assert again.to_yaml_dict() == r.to_yaml_dict()


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_recipe_and_every_distiller_round_trips(path):
    """A run directory's recipe.yaml (the resolved recipe) loads again: export, bench and predict read it.
    Each distiller keeps its own fields only (the strict loader refuses another method's)."""
    import yaml

    from compressdet.pipeline import recipe_fingerprints

    r = parse_recipe(path.read_text(), path.name, check_paths=False)
    student = next((s for s in r.stages if s.kind == "train" and s.teacher), None)
    if student is not None:  # every method with its own, non-default fields
        student.distill = [DistillConfig(method="fgfi", psi=0.25), DistillConfig(method="pkd", weight=2.0),
                           DistillConfig(method="crosskd", tau=2.0, box_weight=0.5)]
        student.imitation = None
    dumped = yaml.safe_dump(r.to_yaml_dict(), sort_keys=False)
    again = parse_recipe(dumped, "recipe.yaml", check_paths=False)
    assert again.to_yaml_dict() == r.to_yaml_dict()
    assert recipe_fingerprints(again) == recipe_fingerprints(r)  # the same runs: resume still finds them
    if student is not None:
        assert [m.model_dump() for m in again.stage(student.name).distill] == [m.model_dump() for m in student.distill]


def test_yaml_is_loaded_safely():
    with pytest.raises(RecipeError, match="invalid YAML"):
        parse_recipe("name: !!python/object/apply:os.system ['echo hi']\nstages: []\n", "evil.yaml")


def test_unknown_model_name_when_registry_present(tmp_path):
    models = pytest.importorskip("compressdet.models")
    if not getattr(models, "list_models", None) or not models.list_models():
        pytest.skip("model registry not available")
    with pytest.raises(RecipeError) as e:
        parse_recipe(BASE.replace("shuffledet_0.25x", "shufledet_0.25x"), "r.yaml")
    assert str(e.value).startswith("r.yaml:11: stages[1].model: unknown model 'shufledet_0.25x' (did you mean ")


def test_recipe_check_prints_plan(tmp_path, capsys):
    f = tmp_path / "r.yaml"
    f.write_text(BASE)
    assert main(["recipe", "check", str(f), "--runs-root", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "recipe 'demo', 2 stages" in out and "student" in out and "teacher=teacher" in out


def test_shipped_recipes_validate():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
    assert recipes, "no recipes shipped"
    for p in recipes:
        load_recipe(p, check_paths=False)


@pytest.mark.parametrize("arch, size, noted", [("fcos_mnv3_small", "[128, 416]", True),
                                               ("retinanet_mnv3_small", "[192, 624]", True),
                                               ("fcos_mnv3_small", "[128, 384]", False),
                                               ("shuffledet_0.25x", "[192, 624]", False)])
def test_fpn_prior_stride_advisory(tmp_path, capsys, arch, size, noted):
    """An FPN family at a side that is not a multiple of 128 gets one note (short P5-P7 strides), not an error."""
    text = f"""name: t
data: {{format: synth, image_size: {size}}}
stages:
  - {{name: s, kind: train, model: {arch}, schedule: {{steps: 2}}}}
"""
    r = parse_recipe(text, "t.yaml")
    assert bool(r.advisories()) == noted
    (tmp_path / "t.yaml").write_text(text)
    assert main(["recipe", "check", str(tmp_path / "t.yaml"), "--runs-root", str(tmp_path / "runs")]) == 0
    out = " ".join(capsys.readouterr().out.split())  # Rich wraps lines at the console width
    assert ("not a multiple of 128" in out) == noted
    if noted:
        assert arch in out.split("note", 1)[1]


def test_an_override_of_a_key_in_the_file_is_not_a_duplicate():
    r = parse_recipe("seed: 0\n" + BASE, "r.yaml", ["seed=3", "seed=4"])
    assert r.seed == 4


def test_aliases_and_merge_keys_are_not_duplicates():
    """An alias repeats a node and ``<<`` merges keys that the mapping may then set itself: neither is a
    key written twice."""
    text = BASE.replace("image_size: [64, 192]", "image_size: &size [64, 192]") + (
        "    schedule: &sched {steps: 3, lr: 0.1}\n"
        "models: {m: {arch: shuffledet_0.25x, <<: {dropout: 0.1}, dropout: 0.2}}\n")
    r = parse_recipe(text.replace("{steps: 3, lr: 0.1}", "{<<: {steps: 3, lr: 0.1}, lr: 0.2}"), "r.yaml")
    assert r.stages[1].schedule.lr == 0.2 and r.stages[1].schedule.steps == 3 and r.models["m"].dropout == 0.2


def test_yolo_dataset_yaml_with_a_duplicate_key_names_both_lines(tmp_path):
    from compressdet.data.formats.yolo import load_dataset_yaml
    from compressdet.errors import DataError

    p = tmp_path / "data.yaml"
    p.write_text("path: .\ntrain: images/train\nnames:\n  0: car\n  1: person\n  0: bike\n")
    with pytest.raises(DataError, match=r"^.*data\.yaml:6: names\.0: duplicate key \(first at line 4\)$"):
        load_dataset_yaml(p)
    p.write_text("path: .\ntrain: images/train\nnames:\n  0: car\n  1: person\n")
    assert load_dataset_yaml(p)[2] == ["car", "person"]


def test_an_error_inside_an_anchored_block_names_its_own_line():
    """The line map walks the file in order: an anchored block's keys get their lines where it is
    written, not where a later alias repeats it (the alias was walked first and took the block)."""
    text = ("name: demo\nmodels:\n  s: &m\n    arch: shuffledet_0.25x\n    widht: 1\n  t: *m\n"
            "stages:\n  - name: a\n    kind: train\n    model: s\n")
    with pytest.raises(RecipeError) as e:
        parse_recipe(text, "r.yaml", check_paths=False)
    assert "r.yaml:5: models.s.widht: unknown key 'widht'" in str(e.value).splitlines()[0]
