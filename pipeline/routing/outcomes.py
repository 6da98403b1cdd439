"""Every rung's per-query results side by side: the table router and cascade learn from.

`load_outcomes` reads `artifacts/eval/<rung>/records.jsonl` and `metrics.json` for every rung
and aligns them by item id into arrays of shape [items, rungs]: whether the rung answered
correctly, its answer, and its confidence under each signal; plus the rung's routing cost.
Costs are relative to dense (dense = 1.0), so "cost 0.6" means 60% of dense's latency (or
FLOPs, with `evaluate.routing_cost=flops`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common.assets import AssetError
from pipeline.common.formats import read_json, read_jsonl

SIGNALS = ("msp", "margin", "entropy", "msp_norm", "margin_norm", "entropy_norm")
RECORD_KEYS = ("id", "task", "split", "pred", "correct", "pred_norm", "correct_norm", "msp", "margin",
               "entropy_normalised", "msp_norm", "margin_norm", "entropy_normalised_norm")


def signal_value(record: dict, signal: str) -> float:
    """A confidence in [0, 1], higher = surer. Entropy is turned around: 1 - H / log(choices)."""
    if signal == "entropy":
        return 1.0 - record["entropy_normalised"]
    if signal == "entropy_norm":
        return 1.0 - record["entropy_normalised_norm"]
    return record[signal]


def answer_of(record: dict, prediction: str) -> tuple[int, bool]:
    """The rung's answer and whether it is right, under `evaluate.prediction` (acc | acc_norm)."""
    if prediction == "acc_norm":
        return record["pred_norm"], record["correct_norm"]
    return record["pred"], record["correct"]


@dataclass
class Outcomes:
    rungs: list[str]
    ids: list[str]
    tasks: list[str]
    splits: np.ndarray  # [N] str
    correct: np.ndarray  # [N, R] bool
    answer: np.ndarray  # [N, R] int
    confidence: dict[str, np.ndarray]  # signal -> [N, R] float
    cost: np.ndarray  # [R], relative to dense
    cost_raw: np.ndarray  # [R], in cost_unit
    cost_unit: str

    def subset(self, split: str) -> "Outcomes":
        m = self.splits == split
        return Outcomes(self.rungs, [i for i, k in zip(self.ids, m) if k], [t for t, k in zip(self.tasks, m) if k],
                        self.splits[m], self.correct[m], self.answer[m],
                        {s: v[m] for s, v in self.confidence.items()}, self.cost, self.cost_raw, self.cost_unit)

    def rung_index(self, name: str) -> int:
        return self.rungs.index(name)

    def __len__(self) -> int:
        return len(self.ids)


def load_outcomes(eval_dir: str | Path, rungs: list[str], prediction: str) -> Outcomes:
    eval_dir = Path(eval_dir)
    if rungs[0] != "dense":
        raise ValueError(f"rungs must start with dense, got {rungs}")
    per_rung, costs, unit = [], [], None
    for name in rungs:
        path = eval_dir / name / "records.jsonl"
        if not path.exists():
            raise AssetError(f"{path} is missing: run `dvc repro evaluate@{name}` first")
        records = read_jsonl(path, RECORD_KEYS)
        if not records:
            raise AssetError(f"{path} holds no records (an empty task set?): rebuild with `dvc repro evaluate@{name}`")
        per_rung.append({r["id"]: r for r in records})
        metrics = read_json(eval_dir / name / "metrics.json")
        try:
            costs.append(float(metrics["routing_cost"]["value"]))
            unit = unit or metrics["routing_cost"]["unit"]
        except (KeyError, TypeError, ValueError):
            raise AssetError(f"{eval_dir / name / 'metrics.json'} has no routing_cost.value: rebuild with "
                             f"`dvc repro evaluate@{name}`") from None
    ids = list(per_rung[0])
    for name, recs in zip(rungs, per_rung):
        if set(recs) != set(ids):
            raise AssetError(f"rung {name} was evaluated on other items than dense: re-run its evaluation "
                             f"(`dvc repro evaluate@{name}`)")
    rows = [[recs[i] for recs in per_rung] for i in ids]
    answers = [[answer_of(r, prediction) for r in row] for row in rows]
    cost_raw = np.asarray(costs, dtype=np.float64)
    return Outcomes(
        rungs=list(rungs), ids=ids, tasks=[row[0]["task"] for row in rows],
        splits=np.asarray([row[0]["split"] for row in rows]),
        correct=np.asarray([[c for _, c in a] for a in answers], dtype=bool),
        answer=np.asarray([[p for p, _ in a] for a in answers], dtype=np.int64),
        confidence={s: np.asarray([[signal_value(r, s) for r in row] for row in rows]) for s in SIGNALS},
        cost=cost_raw / cost_raw[0], cost_raw=cost_raw, cost_unit=unit or "",
    )
