"""A committed record of finished benchmark runs, so a benchmark longer than one session resumes on
a fresh machine.

The run folders under ``benchmarks/.<bench>/`` are a local cache: a machine that is wiped between
sessions loses them. The ledger (``benchmarks/ledger/<bench>/<preset>/``, in git) keeps, for each
finished recipe run, its manifest and the sha256 of the final model file of each of its stages, plus
the commit and the time they were made at; the files themselves sit beside the record but outside
git (``.gitignore``: weights do not belong in the repository), or in
``$COMPRESSDET_LEDGER_STORE/<bench>/<preset>``. A later invocation that asks for the same run (same
recipe name, which carries a location-free digest of the recipe and its inputs,
``_protocol.run_digest``) gets the recorded run back instead of training it again; test-split
evaluations are cached in the ledger too. On a machine that lost the bytes, the record still says
what a re-made run must reproduce: results JSONs stay valid, and the runs later benchmarks reuse
are re-made (``imitation_gain.py --teacher-only`` / ``--remake-chosen``) and checked byte for byte.

Only finished runs enter it; a run killed half-way is re-run from its local checkpoints when they
exist, from the start otherwise. Because training is byte-reproducible (same recipe, seed and
inputs give the same model bytes), every recorded model can be checked by re-running its recipe:
``sha256`` in each entry is what it must reproduce, and ``put`` refuses a re-made run that does not.
That holds on one CPU platform (PyTorch picks its kernels by the instruction set it finds), so each
entry records the CPU it was made on (``platform``), and a refusal names both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEDGERS = ROOT / "benchmarks" / "ledger"
# what a later report reads of a finished stage: the float model, and an int8 stage's program and graph
KEPT_ARTIFACTS = ("model", "quantized", "onnx_int8")


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "compressdet"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _why_not_reproduced(recorded_on: str | None, here: str) -> str:
    if recorded_on is None:
        return (f"its record does not name the CPU it was made on (this one: {here}); training is byte-reproducible "
                "on one CPU platform only, so re-make it where it was recorded or re-make every run it is compared with")
    if recorded_on != here:
        return (f"it was recorded on {recorded_on} and re-made on {here}: training is byte-reproducible on one CPU "
                "platform only, so re-make it there or re-make every run it is compared with here")
    return f"recorded on this CPU platform too ({here}), where training is meant to be byte-reproducible"


class Ledger:
    """``get`` / ``put`` of finished recipe runs under ``root`` (``None``: a ledger that keeps nothing).

    ``root`` (in git) holds the record: manifests, sha256 of every kept file, test evaluations.
    ``store`` holds the bytes of the kept files (default: ``root``, beside the records; git ignores
    them). A run whose files are gone from the store is
    trained again, and must reproduce the recorded sha256."""

    def __init__(self, root: Path | None, store: Path | None = None):
        self.root = Path(root) if root is not None else None
        self.store = Path(store) if store is not None else self.root

    @classmethod
    def for_bench(cls, bench: str, preset: str, enabled: bool = True) -> "Ledger":
        if not enabled:
            return cls(None)
        return cls.at(LEDGERS / bench / preset)

    @classmethod
    def at(cls, root: Path) -> "Ledger":
        """The ledger recorded at ``root`` (``.../<bench>/<preset>``), its bytes beside the record or
        under ``$COMPRESSDET_LEDGER_STORE/<bench>/<preset>``."""
        root = Path(root)
        store = os.environ.get("COMPRESSDET_LEDGER_STORE")
        return cls(root, Path(store) / root.parent.name / root.name if store else root)

    @property
    def test_dir(self) -> Path | None:
        """Where test-split evaluations are cached (durable with the ledger)."""
        return None if self.root is None else self.root / "test_eval"

    def cache_dir(self, name: str, fallback: Path) -> Path:
        """A folder for a benchmark's content-addressed intermediates (e.g. the pruned network of a
        student, keyed by the student's sha256) that later runs depend on: in the ledger when there is
        one, so a restored run and its recomputed input cannot disagree; else ``fallback``."""
        return fallback if self.store is None else self.store / name

    def _entry(self, name: str) -> Path:
        return self.root / name

    def get(self, name: str, run_dir: Path, *, need_files: bool = True) -> dict | None:
        """The recorded manifest of run ``name``, its model files restored under ``run_dir`` (at the
        manifest's relative paths) when missing there; ``None`` when the ledger has no such run.

        ``need_files=False`` is for a caller that reads only the run's metrics and its models' recorded
        sha256 (a leaf run whose test evaluation is cached under that sha256): when the bytes are gone
        the record alone comes back, marked ``"ledger_files": {relpath: sha256}``, instead of ``None``
        (which means: train it again). A run another one builds on must ask for its files."""
        if self.root is None:
            return None
        entry = self._entry(name)
        if not (entry / "manifest.json").is_file():
            return None
        from compressdet._io import sha256_file

        man = json.loads((entry / "manifest.json").read_text())
        info = json.loads((entry / "ledger.json").read_text())
        if any(not (self.store / name / rel).is_file() for rel in info["files"]):
            # recorded, but its bytes are not in this store: train again (same sha256 expected), unless
            # the caller needs only the record
            return None if need_files else {**man, "ledger_files": dict(info["files"])}
        for rel, sha in info["files"].items():
            src, dst = self.store / name / rel, Path(run_dir) / rel
            if not dst.is_file() or sha256_file(dst) != sha:
                if sha256_file(src) != sha:
                    raise SystemExit(f"{src}: ledger file changed (sha256 differs from {entry / 'ledger.json'})")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        return man

    def put(self, name: str, run_dir: Path, manifest: dict) -> None:
        """Record finished run ``name``: its manifest and the ``KEPT_ARTIFACTS`` of every stage it ran
        (not of its ``model_file`` inputs)."""
        if self.root is None:
            return
        from compressdet._io import atomic_write_json, sha256_file
        from compressdet.pipeline import cpu_platform

        entry = self._entry(name)
        info = json.loads((entry / "ledger.json").read_text()) if (entry / "manifest.json").is_file() else None
        recorded = None if info is None else info["files"]
        here = cpu_platform()
        files = {}
        for rec in manifest["stages"].values():
            if rec.get("status") != "done" or rec.get("kind") == "model_file":
                continue  # a model_file stage holds an input (the teacher), recorded where it was made
            for key in KEPT_ARTIFACTS:
                art = (rec.get("artifacts") or {}).get(key)
                if not art:
                    continue
                if Path(art["path"]).is_absolute() or ".." in Path(art["path"]).parts:
                    raise ValueError(f"{name}: {key} artifact {art['path']} is not inside the run folder")
                src = Path(run_dir) / art["path"]
                dst = self.store / name / art["path"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_suffix(dst.suffix + ".tmp")
                shutil.copyfile(src, tmp)
                sha = sha256_file(tmp)
                if recorded is not None and recorded.get(art["path"], sha) != sha:
                    tmp.unlink()
                    raise SystemExit(f"{entry / 'ledger.json'}: re-made run {name} does not reproduce its recorded "
                                     f"{art['path']} (sha256 {sha[:12]}, recorded {recorded[art['path']][:12]}); "
                                     + _why_not_reproduced(info.get("platform"), here))
                tmp.replace(dst)
                files[art["path"]] = sha
        atomic_write_json(entry / "ledger.json", {"files": files, "commit": _commit(), "platform": here,
                                                  "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        atomic_write_json(entry / "manifest.json", manifest)  # last: its presence means the entry is whole

    def entries(self) -> dict[str, dict]:
        """``{run name: ledger.json}`` of every recorded run (provenance for a results JSON)."""
        if self.root is None or not self.root.is_dir():
            return {}
        return {p.parent.name: json.loads(p.read_text()) for p in sorted(self.root.glob("*/ledger.json"))
                if (p.parent / "manifest.json").is_file()}
