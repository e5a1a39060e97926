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
entry records the CPU it was made on (``platform``). A re-make on another platform that does not
reproduce is not refused but kept beside the record as that platform's re-make
(``<entry>/platforms/<cpu>/``, the record untouched; ``get`` there returns it): later benchmarks on that
machine build on it, and whatever they compare it with must be made there too. On the record's own
platform a re-make that differs is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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


def _variant_dir(here: str | None = None) -> str:
    """``platforms/<cpu>``: where a run re-made on this CPU platform, not reproducing its record, is kept."""
    if here is None:
        from compressdet.pipeline import cpu_platform

        here = cpu_platform()
    return "platforms/" + (re.sub(r"[^A-Za-z0-9]+", "-", here).strip("-").lower() or "unknown")


def _kept(name: str, manifest: dict) -> list[str]:
    """The run's files a ledger keeps: the ``KEPT_ARTIFACTS`` of every stage it ran."""
    out = []
    for rec in manifest["stages"].values():
        if rec.get("status") != "done" or rec.get("kind") == "model_file":
            continue  # a model_file stage holds an input (the teacher), recorded where it was made
        for key in KEPT_ARTIFACTS:
            art = (rec.get("artifacts") or {}).get(key)
            if not art:
                continue
            if Path(art["path"]).is_absolute() or ".." in Path(art["path"]).parts:
                raise ValueError(f"{name}: {key} artifact {art['path']} is not inside the run folder")
            out.append(art["path"])
    return out


def remade_here(path: Path) -> Path:
    """A results JSON's path to a kept file of a ledger run (``<store>/<run>/<rel>``): this CPU platform's
    re-make of it (``<store>/<run>/platforms/<cpu>/<rel>``, ``Ledger.put``) when there is one (what this
    machine's other runs were built on), else the path itself."""
    path = Path(path)
    variant = _variant_dir()
    if "platforms" not in path.parts:
        for parent in list(path.parents)[:3]:  # <run>/<rel>, rel at most two folders deep (e.g. student/model.pt)
            if (other := parent / variant / path.relative_to(parent)).is_file():
                return other
    return path


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

        Where this CPU platform re-made the run (``put`` of a run that did not reproduce its record here),
        that re-make is the run here, marked ``"ledger_variant": "platforms/<cpu>"``: what this machine's
        later runs were built on, even when the record's bytes are here too.

        ``need_files=False`` is for a caller that reads only the run's metrics and its models' recorded
        sha256 (a leaf run whose test evaluation is cached under that sha256): when the bytes are gone
        the record alone comes back, marked ``"ledger_files": {relpath: sha256}``, instead of ``None``
        (which means: train it again). A run another one builds on must ask for its files."""
        if self.root is None:
            return None
        entry = self._entry(name)
        if not (entry / "manifest.json").is_file():
            return None
        variant = _variant_dir()
        rec, files = entry, self.store / name
        if (entry / variant / "manifest.json").is_file():
            rec, files = entry / variant, self.store / name / variant
        info = json.loads((rec / "ledger.json").read_text())
        tag = {"ledger_variant": variant} if rec != entry else {}
        if all((files / rel).is_file() for rel in info["files"]):
            return {**self._restore(rec, files, info, run_dir), **tag}
        # recorded, but its bytes are not in this store: train again (same sha256 expected), unless the
        # caller needs only the record
        man = json.loads((rec / "manifest.json").read_text())
        return None if need_files else {**man, **tag, "ledger_files": dict(info["files"])}

    @staticmethod
    def _restore(record: Path, files: Path, info: dict, run_dir: Path) -> dict:
        from compressdet._io import sha256_file

        for rel, sha in info["files"].items():
            src, dst = files / rel, Path(run_dir) / rel
            if not dst.is_file() or sha256_file(dst) != sha:
                if sha256_file(src) != sha:
                    raise SystemExit(f"{src}: ledger file changed (sha256 differs from {record / 'ledger.json'})")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        return json.loads((record / "manifest.json").read_text())

    def file(self, man: dict, rel: str) -> Path:
        """Where the ledger keeps file ``rel`` of run ``man`` (a ``get`` result): the recorded bytes, or
        this platform's re-make of them."""
        return self.store / man["recipe"] / man.get("ledger_variant", "") / rel

    def kept_file(self, name: str, stage: str, key: str = "model") -> tuple[Path, dict]:
        """File ``key`` of ``stage`` of recorded run ``name`` and the manifest it belongs to, restoring
        nothing: this platform's re-make when the store has it (as ``get``), else the recorded bytes (their
        path, whether or not they are here)."""
        entry, variant = self._entry(name), _variant_dir()
        found = []
        for rec, files in ((entry / variant, self.store / name / variant), (entry, self.store / name)):
            if (rec / "manifest.json").is_file():
                man = json.loads((rec / "manifest.json").read_text())
                found.append((files / man["stages"][stage]["artifacts"][key]["path"], man))
        if not found:
            raise FileNotFoundError(f"{entry}: no recorded run")
        return next((f for f in found if f[0].is_file()), found[0])

    def put(self, name: str, run_dir: Path, manifest: dict) -> None:
        """Record finished run ``name``: its manifest and the ``KEPT_ARTIFACTS`` of every stage it ran
        (not of its ``model_file`` inputs).

        A re-made run must reproduce its recorded sha256. One that does not, on a CPU platform other than
        the record's (or a record that does not name one), is kept beside the record as this platform's
        re-make (``<entry>/platforms/<cpu>/``): training is byte-reproducible on one platform only, so
        runs compared with it must be re-made here too. On the record's own platform it is refused."""
        if self.root is None:
            return
        from compressdet._io import atomic_write_json, sha256_file
        from compressdet.pipeline import cpu_platform

        entry = self._entry(name)
        info = json.loads((entry / "ledger.json").read_text()) if (entry / "manifest.json").is_file() else None
        here, variant = cpu_platform(), _variant_dir()
        manifest = {k: v for k, v in manifest.items() if not k.startswith("ledger_")}  # get's marks, not the run's
        shas = {rel: sha256_file(Path(run_dir) / rel) for rel in _kept(name, manifest)}
        differs = [rel for rel, sha in shas.items() if info is not None and info["files"].get(rel, sha) != sha]
        if differs:
            rel, recorded_on = differs[0], info.get("platform")
            why = (f"{entry / 'ledger.json'}: re-made run {name} does not reproduce its recorded {rel} (sha256 "
                   f"{shas[rel][:12]}, recorded {info['files'][rel][:12]}); "
                   + _why_not_reproduced(recorded_on, here))
            if recorded_on == here:
                raise SystemExit(why)
            vrec = entry / variant
            if (vrec / "manifest.json").is_file():  # re-made here before: this one must reproduce that one
                vinfo = json.loads((vrec / "ledger.json").read_text())
                if (bad := [r for r, sha in shas.items() if vinfo["files"].get(r, sha) != sha]):
                    raise SystemExit(f"{vrec / 'ledger.json'}: re-made run {name} does not reproduce this CPU "
                                     f"platform's earlier re-make of {bad[0]} (sha256 {shas[bad[0]][:12]}, recorded "
                                     f"{vinfo['files'][bad[0]][:12]}); "
                                     + _why_not_reproduced(vinfo.get("platform"), here))
            print(f"{why}; kept as this platform's re-make ({variant})", file=sys.stderr, flush=True)
            entry, files_at = vrec, self.store / name / variant
        else:
            files_at = self.store / name
        (entry / "manifest.json").unlink(missing_ok=True)  # until the bytes and record agree: not an entry
        for rel, sha in shas.items():
            dst = files_at / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_suffix(dst.suffix + ".tmp")
            shutil.copyfile(Path(run_dir) / rel, tmp)
            if sha256_file(tmp) != sha:
                tmp.unlink()
                raise SystemExit(f"{Path(run_dir) / rel}: changed while it was recorded")
            tmp.replace(dst)
        record = {"files": shas, "commit": _commit(), "platform": here,
                  "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if differs:
            record["remakes_record_of"] = info.get("platform")
        atomic_write_json(entry / "ledger.json", record)
        atomic_write_json(entry / "manifest.json", manifest)  # last: its presence means the entry is whole

    def entries(self) -> dict[str, dict]:
        """``{run name: ledger.json}`` of every recorded run (provenance for a results JSON): where this CPU
        platform re-made a run, that re-make's (what a results JSON made here used), marked
        ``ledger_variant`` and carrying the ``record`` it re-makes; other platforms' re-makes under
        ``remakes``."""
        if self.root is None or not self.root.is_dir():
            return {}
        variant = _variant_dir()
        out = {}
        for p in sorted(self.root.glob("*/ledger.json")):
            if not (p.parent / "manifest.json").is_file():
                continue
            info = json.loads(p.read_text())
            remakes = {f"platforms/{v.parent.name}": json.loads(v.read_text())
                       for v in sorted(p.parent.glob("platforms/*/ledger.json")) if (v.parent / "manifest.json").is_file()}
            if variant in remakes:
                here = remakes.pop(variant)
                out[p.parent.name] = {**here, "ledger_variant": variant, "record": info,
                                      **({"remakes": remakes} if remakes else {})}
            else:
                out[p.parent.name] = {**info, "remakes": remakes} if remakes else info
        return out
