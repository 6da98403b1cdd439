"""What every stage does around its work: parse args, validate config, seed, track.

A stage module calls `begin(name)` first thing, before importing torch or
transformers, so a bad config fails in a fraction of a second.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

from pipeline.common.config import Config, ConfigError, load_config

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
        finally:
            tracker.finish(ok)

    def done(self, read: str, wrote: str) -> None:
        """The one log line per stage: what it read and what it wrote."""
        secs = time.perf_counter() - self.started
        log.info("%s: read %s; wrote %s (%.1fs)", self.name, read, wrote, secs)


def begin(name: str, add_args=None, argv: list[str] | None = None) -> Stage:
    """Parse `--params` (+ stage args), validate the config, seed everything."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
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
    seed_everything(cfg.seed)
    return Stage(name, cfg, args)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch  # imported here, after validation, so config errors stay fast

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
