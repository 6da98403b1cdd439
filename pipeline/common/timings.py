"""Where a stage's seconds go: beside its outputs, never inside them.

A cached output that records how long it took to build differs on every build. DVC then re-runs
everything downstream of a stage whose real results did not change (a comment edited under
`pipeline/pruning/` would re-run every prune stage and then all the evaluation after them), and
"the same config and seed give the same files" fails. So calibrate, teacher and prune write their
seconds to `<artifacts>/timings/<stage>.json` (prune: `timings/prune/<rung>.json`): DVC outputs
that no stage depends on, so a change in them re-runs nothing. They are cached like every output
(with `cache: false`, `dvc checkout` could not restore a stage DVC cleared before a failed run).
`benchmarks/ladder_tables.py` prints them; W&B gets them too.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.common.atomic import atomic_write_json


def timings_path(artifacts: str | Path, stage: str, rung: str | None = None) -> Path:
    """`artifacts` is the directory that holds the stage's outputs (`artifacts/` in dvc.yaml)."""
    root = Path(artifacts) / "timings"
    return root / stage / f"{rung}.json" if rung else root / f"{stage}.json"


def write_timings(path: str | Path, seconds: dict) -> Path:
    """Atomically, like every output: a killed stage leaves the previous file or none."""
    return atomic_write_json(path, seconds)


def read_timings(path: str | Path) -> dict:
    """The recorded seconds, or {} when that stage has not written any (an older build)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}
