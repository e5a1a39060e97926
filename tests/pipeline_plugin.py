"""Stage kinds registered by the pipeline tests (also imported by subprocesses they start)."""

from __future__ import annotations

import json
import os
import time
from typing import Literal

from compressdet._io import atomic_path, atomic_write_text
from compressdet.recipe import StageConfig, register_stage_schema
from compressdet.stages import StageResult, register_stage

CALLS: list[str] = []


@register_stage_schema("echo")
class EchoStage(StageConfig):
    kind: Literal["echo"] = "echo"
    text: str = "hello"
    fail_once_env: str | None = None  # fail after checkpointing while this env var is set
    slow_bytes: int = 0  # write this many bytes slowly through atomic_path (for kill tests)


@register_stage("echo", replace=True)
def run_echo(ctx):
    CALLS.append(ctx.name)
    upstream = ""
    if "from" in ctx.inputs:
        upstream = ctx.input("from").artifact("out").read_text()
    resumed_from = None
    ck = ctx.latest_checkpoint()
    if ck is not None:
        resumed_from = ck.read_text()
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ctx.checkpoint_dir / "last.pt", f"checkpoint of {ctx.name}")
    if ctx.cfg.fail_once_env and os.environ.get(ctx.cfg.fail_once_env):
        raise RuntimeError("simulated crash")
    out = ctx.stage_dir / "out.txt"
    if ctx.cfg.slow_bytes:
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            for _ in range(ctx.cfg.slow_bytes // 1024):
                fh.write(b"x" * 1024)
                fh.flush()
                time.sleep(0.01)
    else:
        atomic_write_text(out, upstream + ctx.cfg.text)
    atomic_write_text(ctx.stage_dir / "info.json", json.dumps({"resumed_from": resumed_from}))
    return StageResult(artifacts={"out": out, "info": ctx.stage_dir / "info.json"},
                       metrics={"length": len(upstream) + len(ctx.cfg.text)}, meta={"text": ctx.cfg.text})
