"""Output that holds for every terminal and family: a closed pipe, piped tables, progress lines, loss
labels, help texts, viz --out and the bench report's size columns."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from compressdet.cli import EXIT_CLOSED_PIPE, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "compressdet", *args], cwd=ROOT, env=env or ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_closed_pipe_ends_quietly_with_141():
    # the reader is gone before the command writes (the command needs far longer than this to import)
    p = _cli("recipe", "check", "recipes/demo.yaml", "--print-resolved")
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == EXIT_CLOSED_PIPE == 141, err
    assert "internal error" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


def test_pipe_into_head_as_a_user_types_it():
    r = subprocess.run(f"{sys.executable} -m compressdet recipe check recipes/demo.yaml --print-resolved | head -1",
                       shell=True, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("ok recipes/demo.yaml") and len(r.stdout.splitlines()) == 1
    assert "internal error" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


LONG = "student_distilled_with_feature_imitation_from_the_teacher"
RECIPE = f"""
name: wide-table
data:
  format: synth
  image_size: [192, 624]
  synth: {{num_images: 400, size: [1242, 375], seed: 7}}
stages:
  - {{name: teacher_trained_on_synthetic_kitti_layout_images, kind: model_file,
      path: "asset:shuffledet_1x_synthkitti"}}
  - {{name: {LONG}, kind: model_file, path: "asset:shuffledet_0.25x_imitated_synthkitti"}}
  - {{name: int8, kind: ptq, from: {LONG}}}
"""


def test_piped_table_keeps_long_cells_whole(tmp_path):
    recipe = tmp_path / "wide.yaml"
    recipe.write_text(RECIPE)
    p = _cli("recipe", "check", str(recipe), "--runs-root", str(tmp_path / "runs"), env={**ENV, "COLUMNS": ""})
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    rows = [ln for ln in out.splitlines() if "│" in ln]
    # rich's 80-column default folds these cells over several lines; piped, each stays on one row
    assert any(f"from={LONG}" in ln for ln in rows), out
    assert any("teacher_trained_on_synthetic_kitti_layout_images" in ln for ln in rows), out
    assert max(len(ln) for ln in rows) > 80


def test_console_width_when_not_a_terminal(monkeypatch):
    from rich.table import Table

    from compressdet._console import PIPE_WIDTH, console, print_whole

    monkeypatch.delenv("COLUMNS", raising=False)
    buf = io.StringIO()
    con = console(file=buf)
    assert not con.is_terminal and con.width == PIPE_WIDTH
    t = Table()
    cells = [f"cell{i}_" + "x" * 40 for i in range(6)]  # ~300 columns: wider than PIPE_WIDTH too
    for i in range(6):
        t.add_column(f"c{i}")
    t.add_row(*cells)
    print_whole(con, t)
    assert all(c in buf.getvalue() for c in cells) and con.width == PIPE_WIDTH
    monkeypatch.setenv("COLUMNS", "300")
    assert console(file=io.StringIO()).width == 300


def test_fit_fields_leaves_out_what_does_not_fit_and_never_cuts():
    from compressdet._console import fit_fields

    fields = ["total 1.234", "cls 0.500", "bbox_reg 0.400", "12.5 img/s"]
    assert fit_fields(fields, 200) == "  ".join(fields)
    assert fit_fields(fields, 24) == "total 1.234  cls 0.500"
    assert fit_fields(fields, 5) == ""


def test_loss_labels_are_distinct_for_every_family():
    from compressdet.engine.hooks import loss_labels

    fcos = loss_labels(["classification", "bbox_regression", "bbox_ctrness", "pkd", "total"])
    assert fcos == {"classification": "cls", "bbox_regression": "bbox_reg", "bbox_ctrness": "bbox_ctrness",
                    "pkd": "pkd", "total": "total"}
    shuffledet = loss_labels(["class", "confidence", "box", "imitation", "total"])
    assert len(set(shuffledet.values())) == 5 and shuffledet["confidence"] == "conf"
    # two keys that would shorten alike keep their whole names
    assert loss_labels(["bbox_regression", "bbox_reg"]) == {"bbox_regression": "bbox_regression", "bbox_reg": "bbox_reg"}


def _fake_trainer(max_iter: int, log_every: int) -> SimpleNamespace:
    losses = {"classification": 0.5, "bbox_regression": 0.4, "bbox_ctrness": 0.6, "total": 1.5}
    return SimpleNamespace(rank=0, start_iter=0, max_iter=max_iter, iter=0, schedule=SimpleNamespace(log_every=log_every),
                           storage={"img_per_s": 12.5, "step_time": 0.5}, loss_values=lambda: dict(losses))


def test_progress_piped_prints_one_plain_line_per_log_interval(capsys):
    from compressdet.engine.hooks import ProgressHook

    hook = ProgressHook("pruned round 1/2", every=1)
    hook.trainer = _fake_trainer(max_iter=5, log_every=2)
    hook.before_train()
    for i in range(5):
        hook.trainer.iter = i
        hook.after_step()
    hook.after_train()
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("  ")[0] for ln in lines] == ["pruned round 1/2: step 0/5", "pruned round 1/2: step 2/5",
                                                  "pruned round 1/2: step 4/5", "pruned round 1/2: step 5/5"]
    assert "bbox_reg 0.400" in lines[1] and "bbox_ctrness 0.600" in lines[1] and "12.5 img/s" in lines[1]
    assert lines[1].endswith("ETA 0:00:01")


def test_progress_on_a_narrow_terminal_keeps_the_stage_and_whole_fields(monkeypatch):
    from rich.console import Console

    import compressdet._console as cons
    from compressdet.engine.hooks import ProgressHook

    buf = io.StringIO()
    monkeypatch.setattr(cons, "console", lambda **kw: Console(file=buf, force_terminal=True, width=70))
    hook = ProgressHook("pruned", every=1)
    hook.trainer = _fake_trainer(max_iter=100, log_every=10)
    hook.before_train()
    hook.trainer.iter = 9
    hook.after_step()
    info = hook.progress.tasks[0].fields["info"]
    hook.after_train()
    fields = hook.fields()
    assert info and info == "  ".join(fields[: len(info.split("  "))])  # a prefix of whole fields
    assert len(info) <= hook._info_width() < len("  ".join(fields))
    import re

    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue()).replace("\r", "\n").splitlines()
    last = [ln for ln in shown if "pruned" in ln][-1]  # the bar as drawn last: one line, in 70 columns
    assert info.split("  ")[-1] in last and "10/100" in last and len(last.rstrip()) <= 70


def test_help_names_no_family_and_every_viz_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    export_help = sub["export"].format_help()
    assert "[N,72" not in export_help and "export_outputs" in export_help
    bench_help = sub["bench"].format_help()
    assert "MACs" in bench_help and "KITTI AP on" not in bench_help
    viz = next(a for a in sub["viz"]._actions if a.dest == "viz_command").choices
    for name, p in viz.items():
        for a in p._actions:
            if a.option_strings and a.dest != "help":
                assert a.help, f"viz {name} {a.option_strings[0]} has no help"
    assert "folder" in viz["dets"].format_help() and "FILE" in viz["pr"].format_help()


def test_every_command_comes_from_its_cli_module_and_its_help_runs(capsys):
    """The commands in the order ``--help`` always listed them, each registered by its own ``cli/`` module (no
    library package registers one), and each ``--help`` (sub-actions too) printed and exiting 0."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert list(sub) == ["run", "recipe", "info", "anchors", "data", "eval", "viz", "export", "bench", "predict",
                         "deploy"]
    for name, p in sub.items():
        nested = [(s, sp) for a in p._actions if isinstance(a, argparse._SubParsersAction) for s, sp in a.choices.items()]
        for q in [p] + [sp for _, sp in nested]:  # a group (data, viz) sets func on its actions
            assert q.get_default("func") is None or q.get_default("func").__module__ == f"compressdet.cli.{name}", name
        assert any(q.get_default("func") for q in [p] + [sp for _, sp in nested]), name
        for path in [(name,)] + [(name, s) for s, _ in nested]:
            with pytest.raises(SystemExit) as e:
                main([*path, "--help"])
            assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: compressdet {' '.join(path)} ")


def _kitti(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(ln + "\n" for ln in lines))


def test_viz_out_pr_is_a_png_file_dets_a_folder(tmp_path, capsys):
    gt_line = "Car 0.00 0 -10 100.00 100.00 200.00 180.00 -1 -1 -1 -1000 -1000 -1000 -10"
    for k in ("000001", "000002"):
        _kitti(tmp_path / "gt" / f"{k}.txt", [gt_line])
        _kitti(tmp_path / "det" / f"{k}.txt", [gt_line + " 0.9"])
    assert main(["viz", "pr", "--gt", str(tmp_path / "gt"), "--det", str(tmp_path / "det"),
                 "--out", str(tmp_path / "curves")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "curves").exists()
    assert main(["viz", "pr", "--gt", str(tmp_path / "gt"), "--det", str(tmp_path / "det"),
                 "--out", str(tmp_path / "pr.PNG")]) == 0
    assert (tmp_path / "pr.PNG").is_file() and not (tmp_path / "pr.PNG.png").exists()
    capsys.readouterr()
    (tmp_path / "taken").write_text("")
    assert main(["viz", "dets", "--image-dir", str(tmp_path), "--gt", str(tmp_path / "gt"),
                 "--out", str(tmp_path / "taken")]) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "taken").read_text() == ""


def _row(label: str, frm: str | None, precision: str, param: int, file_b: int) -> dict:
    return {"label": label, "stage": label, "from": frm, "precision": precision, "weights_dtype": precision,
            "macs": {"backbone": 1e9, "total": 1.2e9}, "params": {"total": 1e6},
            "params_with_bn_stats": {"total": 1.01e6}, "file_bytes": file_b, "param_bytes": param,
            "latency": {}, "eval": None}


def test_report_size_columns_are_param_bytes_and_file_size():
    from compressdet.bench.report import columns, markdown_report, table_rows
    from compressdet.bench.runner import _deltas

    # a pruned model whose file grew (history, a bigger pickle) but whose parameters shrank
    rows = [_row("student", None, "fp32", 4_000_000, 4_500_000), _row("pruned", "student", "fp32", 2_000_000, 6_900_000)]
    _deltas(rows, "official")
    report = {"run_dir": "r", "rows": rows, "runs": 1, "warmup": 0, "threads": 1, "device": "cpu",
              "batch_sizes": [1]}
    cols = columns(report)
    assert "MACs" in cols and "FLOPs" not in cols and "size" not in cols
    cells = dict(zip(cols, table_rows(report)[1]))
    assert cells["param bytes"] == "2.000 MB fp32" and cells["file size"] == "6.90 MB"
    assert "param bytes -50%" in cells["delta vs ref"] and "+53%" not in cells["delta vs ref"]
    assert "param bytes = parameters x element size" in markdown_report(report)


def test_param_bytes_counts_parameters_not_buffers():
    import torch

    from compressdet.bench.runner import param_bytes

    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    assert param_bytes(m) == (8 * 3 * 9 + 8 + 8 + 8) * 4  # conv weight + bias, BN weight + bias; no running stats
    assert param_bytes(m.half()) == (8 * 3 * 9 + 8 + 8 + 8) * 2


@pytest.mark.parametrize("model", ["asset:shuffledet_0.25x_imitated_synthkitti"])
def test_predict_on_a_shipped_model_says_what_it_was_trained_on(model, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((60, 200, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--model", model, "--out", str(tmp_path / "out"),
                 "--no-images", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    note = [ln for ln in err.splitlines() if "synthetic" in ln]
    assert len(note) == 1 and "real" in note[0], err
