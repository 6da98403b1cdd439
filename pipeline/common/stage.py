"""What every stage does around its work: parse args, validate config, check its files, seed, track.

A stage module calls `begin(name)` first thing, before importing torch or
transformers, so a bad config fails in a fraction of a second. `begin` also:
- sweeps what a killed earlier run of the stage left next to its outputs, and checks that each
  output location is writable (`pipeline.common.atomic`), so a read-only directory fails before
  the work, not at the final rename;
- checks the structure of every checkpoint and safetensors file the stage will load
  (`stage_inputs`), so a truncated or foreign file fails naming itself before any model loads;
- makes the project's own errors about inputs (AssetError: a file missing, corrupt or untrusted)
  print as one line, `<stage>: <message>`, instead of a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pipeline.common.config import Config, ConfigError, load_config
from pipeline.common.device import peak_memory

log = logging.getLogger("ladder")


@dataclass
class Stage:
    name: str
    cfg: Config
    args: argparse.Namespace
    started: float = field(default_factory=time.perf_counter)
    log: logging.Logger = log

    @contextlib.contextmanager
    def tracked(self, rung: str | None = None) -> Iterator["Tracker"]:  # noqa: F821
        """One W&B run for the stage; `rung` defaults to the stage's `--rung` argument."""
        from pipeline.common.tracking import Tracker

        tracker = Tracker(self.cfg, self.name, rung or getattr(self.args, "rung", None))
        ok = False
        try:
            yield tracker
            ok = True
            mb, kind = peak_memory()
            tracker.summary({"peak_memory_mb": round(mb, 1), "peak_memory_kind": kind})
        finally:
            tracker.finish(ok)

    def done(self, read: str, wrote: str) -> None:
        """The one log line per stage: what it read and what it wrote."""
        secs = time.perf_counter() - self.started
        mb, kind = peak_memory()
        log.info("%s: read %s; wrote %s (%.1fs, peak memory %.0f MB %s)", self.name, read, wrote, secs, mb, kind)


def begin(name: str, add_args=None, argv: list[str] | None = None) -> Stage:
    """Parse `--params` (+ stage args), validate the config, check inputs and outputs, seed everything."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    _one_line_errors(name)
    ap = argparse.ArgumentParser(prog=f"python -m pipeline.{name}")
    ap.add_argument("--params", default="params.yaml", help="composed config (default: params.yaml)")
    if add_args:
        add_args(ap)
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.params)
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    check_device(name, cfg)
    from pipeline.common.atomic import check_writable, sweep_stale

    # AssetErrors from here on reach the caller as such; run as a script, the hook prints one line.
    for out in stage_outputs(name, args):
        for p in sweep_stale(out):
            log.info("%s: removed %s, left by a killed earlier run", name, p)
        check_writable(out)
    check_inputs(stage_inputs(name, args, cfg))
    seed_everything(cfg.seed)
    return Stage(name, cfg, args)


def _one_line_errors(name: str) -> None:
    """Uncaught AssetErrors (bad, missing or untrusted input files) print as one line; bugs keep their traceback."""
    from pipeline.common.assets import AssetError

    previous = getattr(sys.excepthook, "previous", sys.excepthook)  # begin() may run more than once

    def hook(kind, exc, tb):
        if issubclass(kind, AssetError):
            print(f"{name}: {exc}", file=sys.stderr)
        else:
            previous(kind, exc, tb)

    hook.previous = previous
    sys.excepthook = hook


# What each stage writes and loads, from its arguments (dvc.yaml declares the same paths). A stage
# not listed writes its `--out` / `--*-out` arguments and has no checkpoint inputs to check; an
# argument a stage no longer has is skipped, never an error here.
def stage_outputs(name: str, args: argparse.Namespace) -> list[Path]:
    from pipeline.common.timings import timings_path

    a = vars(args)
    if name == "prune" and a.get("ladder_dir") and a.get("rung"):
        ladder = Path(a["ladder_dir"])
        return [ladder / a["rung"], timings_path(ladder.parent, "prune", a["rung"])]
    if name in ("calibrate", "teacher") and a.get("out"):
        return [Path(a["out"]), timings_path(Path(a["out"]).parent, name)]
    if name == "evaluate" and a.get("rung"):
        return [Path(a.get("out") or f"artifacts/eval/{a['rung']}")]
    return [Path(v) for k, v in a.items() if (k == "out" or k.endswith("_out")) and isinstance(v, str)]


def stage_inputs(name: str, args: argparse.Namespace, cfg: Config) -> list[Path]:
    """Checkpoint directories and safetensors files the stage loads."""
    a = vars(args)
    p = {k: Path(v) for k, v in a.items() if isinstance(v, str)}
    base, data, ladder = p.get("base"), p.get("data"), p.get("ladder_dir")
    paths: list[Path | None] = []
    if name == "calibrate":
        paths = [base, data and data / "calibration.safetensors"]
    elif name == "teacher":
        paths = [base, data and data / "heal.safetensors", data and data / "calibration.safetensors"]
    elif name == "prune":
        rung = cfg.ladder.rungs.get(a.get("rung"))
        paths = [base]
        if rung is not None:
            calibration, teacher = p.get("calibration"), p.get("teacher")
            paths += [ladder and ladder / rung.parent, calibration and calibration / "importance.safetensors",
                      data and data / "calibration.safetensors"]
            paths += [teacher and teacher / f"{f}.safetensors" for f in ("heal", "heal_val", "allocator")]
    elif name == "speed":  # every rung, each loaded whole
        paths = [ladder and ladder / r for r in cfg.rungs]
    elif name == "evaluate":  # the rung itself: verify_rung checks structure and digests
        paths = [data and data / "heldout.safetensors", data and data / "heldout_other.safetensors"]
    elif name == "router" and cfg.router.features == "hidden_state":
        paths = [ladder and ladder / "dense"]
    return [x for x in paths if x is not None]


def check_device(name: str, cfg: Config) -> None:
    """A requested GPU must exist, checked before any work (torch is imported only to check one)."""
    if not cfg.model.device.startswith("cuda"):
        return  # cpu, or auto: whatever this machine has
    from pipeline.common.device import DeviceError, resolve_device

    try:
        resolve_device(cfg.model.device)
    except DeviceError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def check_inputs(paths: list[Path]) -> None:
    """Structure of each input that exists (a missing one is the stage's own error to report)."""
    from pipeline.common.formats import check_safetensors
    from pipeline.models.checkpoint import check_checkpoint_files

    for path in paths:
        if path.is_dir():
            check_checkpoint_files(path)
        elif path.suffix == ".safetensors" and path.exists():
            check_safetensors(path)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch  # imported here, after validation, so config errors stay fast

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
