"""Every rung's per-query results side by side: the table router and cascade learn from.

`load_outcomes` reads `artifacts/eval/<rung>/records.jsonl` for every rung and aligns them by
item id into arrays of shape [items, rungs]: whether the rung answered correctly, its answer,
and its confidence under each signal; plus the rung's routing cost (`pipeline/routing/costs.py`).
Costs are relative to dense (dense = 1.0), so "cost 0.6" means 60% of dense's FLOPs per query
(or of its measured latency, with `cost.kind=latency`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common.assets import AssetError
from pipeline.common.formats import read_jsonl

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


def read_records(eval_dir: str | Path, rungs: list[str]) -> list[dict[str, dict]]:
    """Every rung's records by item id, read strictly: a missing, empty or malformed file, or a rung
    evaluated on other items than dense, fails naming the file and the stage that rebuilds it."""
    eval_dir = Path(eval_dir)
    if rungs[0] != "dense":
        raise ValueError(f"rungs must start with dense, got {rungs}")
    per_rung = []
    for name in rungs:
        path = eval_dir / name / "records.jsonl"
        if not path.exists():
            raise AssetError(f"{path} is missing: run `dvc repro evaluate@{name}` first")
        records = read_jsonl(path, RECORD_KEYS)
        if not records:
            raise AssetError(f"{path} holds no records (an empty task set?): rebuild with `dvc repro evaluate@{name}`")
        per_rung.append({r["id"]: r for r in records})
    ids = list(per_rung[0])
    for name, recs in zip(rungs, per_rung):
        if set(recs) != set(ids):
            raise AssetError(f"rung {name} was evaluated on other items than dense: re-run its evaluation "
                             f"(`dvc repro evaluate@{name}`)")
    return per_rung


def load_outcomes(eval_dir: str | Path, rungs: list[str], prediction: str, costs,
                  per_rung: list[dict[str, dict]] | None = None) -> Outcomes:
    """`costs`: the rungs' `RungCosts` (see `pipeline/routing/costs.py`), in the order of `rungs`;
    `per_rung`: `read_records(eval_dir, rungs)` when the caller has read them already."""
    per_rung = per_rung if per_rung is not None else read_records(eval_dir, rungs)
    ids = list(per_rung[0])
    rows = [[recs[i] for recs in per_rung] for i in ids]
    answers = [[answer_of(r, prediction) for r in row] for row in rows]
    cost_raw = np.asarray(costs.raw, dtype=np.float64)
    return Outcomes(
        rungs=list(rungs), ids=ids, tasks=[row[0]["task"] for row in rows],
        splits=np.asarray([row[0]["split"] for row in rows]),
        correct=np.asarray([[c for _, c in a] for a in answers], dtype=bool),
        answer=np.asarray([[p for p, _ in a] for a in answers], dtype=np.int64),
        confidence={s: np.asarray([[signal_value(r, s) for r in row] for row in rows]) for s in SIGNALS},
        cost=cost_raw / cost_raw[0], cost_raw=cost_raw, cost_unit=costs.unit,
    )


def load_routing_inputs(cfg, eval_dir: str | Path, ladder_dir: str | Path, speed_path: str | Path | None):
    """(Outcomes, RungCosts) for the stages that route: the records of every rung, and their cost
    under `cfg.cost`. The records are read (and refused if empty or malformed) first."""
    from pipeline.routing.costs import rung_costs

    per_rung = read_records(eval_dir, cfg.rungs)
    costs = rung_costs(cfg.cost, cfg.rungs, ladder_dir, speed_path)
    return load_outcomes(eval_dir, cfg.rungs, cfg.evaluate.prediction, costs, per_rung), costs


def task_indices(tasks: list[str], known: list[str]) -> np.ndarray:
    """Index of each task in `known`; -1 for a task the models never saw."""
    pos = {t: i for i, t in enumerate(known)}
    return np.asarray([pos.get(t, -1) for t in tasks], dtype=np.int64)
