"""Weights & Biases, one run per stage, grouped per pipeline run.

Group: `DVC_EXP_NAME` when DVC runs an experiment, else a hash of the composed
params, so every stage of one build lands in one W&B group. Offline by default
(runs land in `wandb/`; `wandb sync wandb/offline-run-*` uploads them later);
`tracking.mode=disabled` turns it off, which the tests do.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from pipeline.common.config import Config


def params_hash(cfg: Config) -> str:
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def run_group(cfg: Config) -> str:
    return os.environ.get("DVC_EXP_NAME") or f"params-{params_hash(cfg)}"


class Tracker:
    """Thin wrapper so stages log the same way whether W&B is on or off."""

    def __init__(self, cfg: Config, stage: str):
        self.run = None
        t = cfg.tracking
        if t.mode == "disabled":
            return
        import wandb

        os.makedirs(t.dir, exist_ok=True)
        self.run = wandb.init(
            project=t.project,
            entity=t.entity,
            mode=t.mode,
            dir=t.dir,
            group=run_group(cfg),
            job_type=stage,
            name=f"{stage}-{run_group(cfg)}",
            config=cfg.model_dump(mode="json"),
            reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(metrics)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(metrics)

    def curves(self, prefix: str, curves: dict[str, list[tuple[float, float]]], picture=None,
               bands: dict[str, list[dict]] | None = None) -> None:
        """Accuracy-vs-cost curves as one W&B line chart (x: relative cost), plus the picture.
        `bands`: per curve, one {lo, hi} per point: drawn as two more lines (the 95% interval)."""
        if self.run is None:
            return
        import wandb

        curves = dict(curves)
        for name, bs in (bands or {}).items():
            curves[f"{name} 95% lo"] = [(c, b["lo"]) for (c, _), b in zip(curves[name], bs)]
            curves[f"{name} 95% hi"] = [(c, b["hi"]) for (c, _), b in zip(curves[name], bs)]
        names = list(curves)
        sorted_pts = [sorted(curves[n]) for n in names]
        chart = wandb.plot.line_series(xs=[[c for c, _ in p] for p in sorted_pts],
                                       ys=[[a for _, a in p] for p in sorted_pts], keys=names,
                                       title=f"{prefix}: accuracy vs relative cost", xname="relative cost")
        logged = {f"{prefix}/curves": chart}
        if picture is not None:
            logged[f"{prefix}/curves_png"] = wandb.Image(str(picture))
        self.run.log(logged)

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def artifact(self, name: str, kind: str, files: list, metadata: dict | None = None) -> None:
        if self.run is None:
            return
        import wandb

        art = wandb.Artifact(name, type=kind, metadata=metadata or {})
        for f in files:
            art.add_file(str(f))
        self.run.log_artifact(art)

    def finish(self, ok: bool = True) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)
            self.run = None
