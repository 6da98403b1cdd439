"""The cascade's deferral rule: after a rung has answered, how likely is it that it is wrong
where dense would be right? Learned on router-train from everything the rung's scoring recorded.

Per rung, an L2-penalised logistic regression (`risk_models.fit_logistic`, float64, Newton) on:
every confidence signal of `outcomes.SIGNALS` (max softmax probability, margin and 1 - normalised
entropy, on raw and length-normalised scores), standardised; the task (one-hot; an unknown task
gets none); an intercept. Target: the rung's harm, 1[rung wrong and dense right]. The model is
small enough to live in the cascade's JSON: plain floats, which round-trip exactly.

With `cascade.deferral=signal` the rule is the old one: the configured signal alone, as a
confidence, risk = 1 - signal.
"""

from __future__ import annotations

import numpy as np

from pipeline.routing.outcomes import SIGNALS, signal_value
from pipeline.routing.risk_models import fit_logistic, log_loss, one_hot


def signal_matrix(confidence: dict[str, np.ndarray], rung: int) -> np.ndarray:
    """[N, len(SIGNALS)] every signal of one rung."""
    return np.stack([confidence[s][:, rung] for s in SIGNALS], axis=1)


def record_signals(record: dict) -> np.ndarray:
    """[1, len(SIGNALS)] the same from one evaluation record (what the runtime has)."""
    return np.asarray([[signal_value(record, s) for s in SIGNALS]], dtype=np.float64)


class Deferral:
    def __init__(self, kind: str, tasks: list[str], signal: str, l2: float, per_rung: dict | None = None):
        self.kind, self.tasks, self.signal, self.l2 = kind, list(tasks), signal, float(l2)
        self.per_rung = per_rung or {}  # rung -> {"weights", "mean", "std"} (learned)

    def fit(self, rungs: list[str], signals: dict[str, np.ndarray], task: np.ndarray, harm: dict[str, np.ndarray]):
        if self.kind == "learned":
            for r in rungs:
                s = signals[r]
                mean, std = s.mean(0), np.maximum(s.std(0), 1e-6)
                w = fit_logistic(self._design(s, task, mean, std), harm[r].astype(np.float64), self.l2)
                self.per_rung[r] = {"weights": w, "mean": mean, "std": std}
        return self

    def _design(self, s, task, mean, std):
        return np.concatenate([(s - mean) / std, one_hot(task, len(self.tasks)), np.ones((len(s), 1))], axis=1)

    def risk(self, rung: str, signals: np.ndarray, task: np.ndarray) -> np.ndarray:
        """[N] P(harm) of `rung` given its signals [N, len(SIGNALS)] and task indices [N]."""
        if self.kind == "signal":
            return 1.0 - signals[:, SIGNALS.index(self.signal)]
        m = self.per_rung[rung]
        z = self._design(signals, task, np.asarray(m["mean"]), np.asarray(m["std"]))
        return 1 / (1 + np.exp(-(z @ np.asarray(m["weights"]))))

    def task_index(self, task: str | None) -> np.ndarray:
        return np.asarray([self.tasks.index(task) if task in self.tasks else -1])

    def to_json(self) -> dict:
        return {"kind": self.kind, "signals": list(SIGNALS), "signal": self.signal, "tasks": self.tasks,
                "l2": self.l2, "inputs": "standardised signals, task one-hot, intercept",
                "target": "P(rung wrong and dense right)",
                "rungs": {r: {k: [float(v) for v in np.asarray(a)] for k, a in m.items()}
                          for r, m in self.per_rung.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "Deferral":
        return cls(d["kind"], d["tasks"], d["signal"], d["l2"],
                   {r: {k: np.asarray(v, dtype=np.float64) for k, v in m.items()} for r, m in d["rungs"].items()})


def cross_validated_fit(rungs, signals, task, harm, n_tasks, l2, folds, seed) -> dict:
    """Per rung, the out-of-fold log-loss of the learned deferral against the per-task base rate
    (the same folds): how much the signals add to knowing the task."""
    from pipeline.routing.risk_models import TaskRate, folds_of

    fold = folds_of(len(task), min(folds, len(task)), seed)
    out = {}
    for r in rungs:
        oof, base = np.zeros(len(task)), np.zeros(len(task))
        for f in range(fold.max() + 1):
            tr, va = fold != f, fold == f
            s = signals[r]
            mean, std = s[tr].mean(0), np.maximum(s[tr].std(0), 1e-6)
            d = Deferral("learned", [""] * n_tasks, "", l2)
            w = fit_logistic(d._design(s[tr], task[tr], mean, std), harm[r][tr].astype(np.float64), l2)
            oof[va] = 1 / (1 + np.exp(-(d._design(s[va], task[va], mean, std) @ w)))
            base[va] = TaskRate(n_tasks).fit(None, task[tr], harm[r][tr, None].astype(np.float64)).predict(
                None, task[va])[:, 0]
        y = harm[r].astype(np.float64)
        out[r] = {"cv_log_loss": log_loss(oof, y), "cv_log_loss_task_rate": log_loss(base, y),
                  "harm_rate": float(y.mean())}
    return out
