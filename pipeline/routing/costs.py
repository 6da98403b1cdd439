"""Per-rung routing cost: what router, cascade and route-then-escalate trade against.

- `flops` (default): `query_flops` of each rung's `config.json` at `cost.prompt_tokens` prompt
  tokens and `cost.scored_tokens` scored answer tokens. Only shapes go in, so the same config
  gives the same costs, thresholds and manifest on any machine.
- `latency`: the `speed` stage's median prefill time of that same query, measured with every rung
  in one process, interleaved (`artifacts/speed/speed.json`).

Costs are returned in their unit and relative to dense (dense = 1.0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class RungCosts:
    kind: str  # flops | latency
    unit: str  # "FLOPs/query" | "ms/query"
    raw: np.ndarray  # [R] in unit, rungs in the order asked for
    relative: np.ndarray  # [R], dense = 1
    detail: dict  # per rung: the breakdown (flops) or the measured figures (latency)


def rung_costs(cost_cfg, rungs: list[str], ladder_dir: str | Path, speed_path: str | Path | None) -> RungCosts:
    """Costs of `rungs` (dense first) under `cost_cfg` (the `cost` config section)."""
    from pipeline.models.cost import query_flops

    if rungs[0] != "dense":
        raise ValueError(f"rungs must start with dense, got {rungs}")
    if cost_cfg.kind == "flops":
        detail = {}
        for r in rungs:
            path = Path(ladder_dir) / r / "config.json"
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: run `dvc repro prune@{r}` (or `dense`) first")
            detail[r] = query_flops(json.loads(path.read_text()), cost_cfg.prompt_tokens, cost_cfg.scored_tokens)
        raw = np.asarray([detail[r]["total"] for r in rungs], dtype=np.float64)
        unit = "FLOPs/query"
    else:
        if speed_path is None or not Path(speed_path).exists():
            raise FileNotFoundError(f"cost.kind=latency reads {speed_path}: run `dvc repro speed` first")
        speed = json.loads(Path(speed_path).read_text())
        if (speed["prompt_tokens"], speed["scored_tokens"]) != (cost_cfg.prompt_tokens, cost_cfg.scored_tokens):
            raise ValueError(f"{speed_path} timed {speed['prompt_tokens']} + {speed['scored_tokens']} tokens but "
                             f"cost asks for {cost_cfg.prompt_tokens} + {cost_cfg.scored_tokens}: re-run `dvc repro speed`")
        missing = [r for r in rungs if r not in speed["rungs"]]
        if missing:
            raise ValueError(f"{speed_path} has no timing for rungs {missing}: re-run `dvc repro speed`")
        detail = {r: speed["rungs"][r] for r in rungs}
        raw = np.asarray([detail[r]["query_ms"] for r in rungs], dtype=np.float64)
        unit = "ms/query"
    return RungCosts(cost_cfg.kind, unit, raw, raw / raw[0], detail)
