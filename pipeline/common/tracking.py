"""Weights & Biases: one run per stage (per rung for the rung stages), grouped per pipeline run.

- Group: `DVC_EXP_NAME` when DVC runs an experiment, else a hash of the composed params, so every
  stage of one build lands in one W&B group.
- Name `<stage>@<rung>-<group>` (`evaluate@f90-exp-brave-otter`), job type the stage; `rung` is in
  the run's config and summary, so the runs table groups and filters by rung.
- Config: the stage's slice of params.yaml, i.e. the params dvc.yaml declares for it (what DVC
  reruns it for), plus `rung` and the DVC stage name.
- Lineage, from the DVC graph: under DVC (which sets `DVC_STAGE` and `DVC_ROOT` for every stage
  command) the run looks its stage up in the resolved dvc.yaml, declares the outputs of the stages
  it depends on as used artifacts, and logs its own outputs as one artifact when it ends well, so
  the W&B graph runs base -> rung -> evaluation -> router / cascade -> manifest with no per-stage
  code. A consumer re-declares an artifact from the files it read; they are the producer's files (DVC
  guarantees it), so the digest is the same and W&B resolves both to one artifact version.
  Checkpoints are logged as their small files (config, report, recipe, card); the weights are pinned
  by the sha256 in `pruning_report.json` / `provenance.json` and uploaded only with
  `tracking.log_weights=true`. Stages run by hand (outside DVC) log the whole config and no lineage.
- Mode: `WANDB_MODE` in the environment wins over `tracking.mode` (offline by default); offline runs
  land in `<tracking.dir>/wandb/` (`python -m pipeline.lineage` lists them; `wandb sync` uploads them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.common.config import Config, ConfigError

# WANDB_MODE values wandb accepts, as the tracking mode they mean.
WANDB_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline",
               "disabled": "disabled"}
# W&B artifact type of each stage module's outputs (others: the module name).
ARTIFACT_TYPES = {"base": "model", "prune": "model", "evaluate": "evaluation", "data": "dataset"}
# Files of a checkpoint directory that describe it without its weights or tokenizer.
_CHECKPOINT_SKIP = re.compile(r"(\.safetensors|^tokenizer.*|^special_tokens_map\.json|\.jinja|^vocab\.json|^merges\.txt)$")


def params_hash(cfg: Config) -> str:
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def run_group(cfg: Config) -> str:
    return os.environ.get("DVC_EXP_NAME") or f"params-{params_hash(cfg)}"


def tracking_mode(cfg: Config) -> str:
    """`WANDB_MODE` from the environment if set, else `tracking.mode`."""
    env = os.environ.get("WANDB_MODE")
    if not env:
        return cfg.tracking.mode
    if env not in WANDB_MODES:
        raise ConfigError(f"WANDB_MODE={env!r} in the environment: allowed {sorted(WANDB_MODES)}")
    return WANDB_MODES[env]


@dataclass(frozen=True)
class Lineage:
    """A DVC stage as W&B sees it: its params, and its inputs and outputs as artifacts."""

    stage: str
    root: Path
    params: list[str]
    inputs: list[tuple[str, str, list[tuple[Path, str]]]]  # (artifact name, type, [(file, name in artifact)])
    output: tuple[str, str, list[Path]] | None  # (artifact name, type, the stage's out paths)
    log_weights: bool = False

    def output_files(self) -> list[tuple[Path, str]]:
        """The stage's outputs as they are now (call it when the stage has written them)."""
        return _files(self.output[2], self.root, self.log_weights) if self.output else []


def _module(stage) -> str | None:
    m = re.search(r"-m\s+pipeline\.(\w+)", stage.cmd or "")
    return m.group(1) if m else None


def artifact_name(stage) -> tuple[str, str]:
    """(name, type) of the artifact holding a DVC stage's outputs: `rung-<rung>` for a prune stage
    (dense included), `eval-<rung>` for evaluate, else the stage name; `@` is not allowed."""
    module = _module(stage)
    rung = stage.name.partition("@")[2] or (re.search(r"--rung\s+(\S+)", stage.cmd or "") or [None, None])[1]
    prefix = {"prune": "rung", "evaluate": "eval"}.get(module)
    name = f"{prefix}-{rung}" if prefix and rung else stage.name.replace("@", "-")
    return name, ARTIFACT_TYPES.get(module, module or "output")


def _files(outs: list[Path], root: Path, log_weights: bool) -> list[tuple[Path, str]]:
    files = []
    for path in outs:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file())
            if (path / "config.json").exists():  # a checkpoint: its small files (weights by sha256)
                found = [p for p in found if not _CHECKPOINT_SKIP.search(p.name)
                         or (log_weights and p.suffix == ".safetensors")]
        else:
            found = [path] if path.is_file() else []
        files += [(p, p.relative_to(root).as_posix()) for p in found]
    return files


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def dvc_lineage(log_weights: bool = False) -> Lineage | None:
    """The stage DVC is running (`DVC_STAGE` in `DVC_ROOT`, set by DVC for every stage command),
    resolved by DVC itself: its params, the outputs of the stages it depends on, its own outputs.
    None outside DVC (a stage run by hand or by a test)."""
    name, root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
    if not name or not root:
        return None
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    name = name.rpartition(":")[2]  # addressing may carry the dvc.yaml path
    with Repo(root) as repo:
        root = Path(repo.root_dir)  # the same spelling as the stages' fs_path
        stages = {s.name: s for s in repo.index.stages}
    stage = stages.get(name)
    if stage is None:
        return None
    params = [p for d in stage.deps if isinstance(d, ParamsDependency) for p in d.params]
    inputs = []
    for producer in stages.values():
        if producer is stage or not producer.outs:
            continue
        if any(_overlaps(Path(d.fs_path), Path(o.fs_path)) for d in stage.deps
               if not isinstance(d, ParamsDependency) for o in producer.outs):
            inputs.append((*artifact_name(producer), _files(_outs(producer), root, log_weights)))
    output = (*artifact_name(stage), _outs(stage)) if stage.outs else None
    return Lineage(name, root, params, inputs, output, log_weights)


def _outs(stage) -> list[Path]:
    return [Path(o.fs_path) for o in stage.outs]


def config_slice(cfg: Config, keys: list[str]) -> dict:
    """The nested part of the config under each dotted key."""
    full, out = cfg.model_dump(mode="json"), {}
    for key in keys:
        src, dst, parts = full, out, key.split(".")
        for part in parts[:-1]:
            src = src.get(part, {}) if isinstance(src, dict) else {}
            dst = dst.setdefault(part, {})
        if isinstance(src, dict) and parts[-1] in src:
            dst[parts[-1]] = src[parts[-1]]
    return out


class Tracker:
    """Thin wrapper so stages log the same way whether W&B is on or off.

    Under DVC the lineage is automatic: the run declares the outputs of the stages it depends on as
    used artifacts when it starts, and logs its own outputs when the stage ends well."""

    def __init__(self, cfg: Config, stage: str, rung: str | None = None):
        self.run = None
        self.rung = rung
        self.lineage = None
        t, mode = cfg.tracking, tracking_mode(cfg)
        if mode == "disabled":
            return
        import wandb

        self.lineage = dvc_lineage(t.log_weights)
        config = (config_slice(cfg, self.lineage.params) if self.lineage is not None
                  else cfg.model_dump(mode="json"))  # run by hand: no stage to slice by
        label = f"{stage}@{rung}" if rung else stage
        # Absolute: W&B's service process outlives the first run and may resolve a relative dir
        # against its own working directory, not this stage's.
        run_dir = os.path.abspath(t.dir)
        os.makedirs(run_dir, exist_ok=True)
        self.run = wandb.init(
            project=t.project,
            entity=t.entity,
            mode=mode,
            dir=run_dir,
            group=run_group(cfg),
            job_type=stage,
            name=f"{label}-{run_group(cfg)}",
            tags=[stage, *([rung] if rung else [])],
            config={**config, "rung": rung, "dvc_stage": self.lineage.stage if self.lineage else None},
            reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off"),
        )
        if rung:
            self.run.summary["rung"] = rung
        for name, kind, files in self.lineage.inputs if self.lineage else []:
            self.use(name, kind, files)

    def log(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(metrics)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(metrics)

    def table(self, key: str, rows: list[dict]) -> None:
        """Rows of dicts (one per rung, say) as a W&B table."""
        if self.run is None or not rows:
            return
        import wandb

        columns = list(rows[0])
        self.run.log({key: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})

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

    @staticmethod
    def _artifact(name: str, kind: str, files: list, metadata: dict | None):
        import wandb

        art = wandb.Artifact(name, type=kind, metadata=metadata or {})
        for f in files:
            path, inside = f if isinstance(f, tuple) else (f, Path(f).name)
            art.add_file(str(path), name=inside)
        return art

    def artifact(self, name: str, kind: str, files: list, metadata: dict | None = None) -> None:
        """Log files this run wrote as artifact `name` (an output in the lineage graph)."""
        if self.run is not None:
            self.run.log_artifact(self._artifact(name, kind, files, {**(metadata or {}),
                                                                      **({"rung": self.rung} if self.rung else {})}))

    def use(self, name: str, kind: str, files: list) -> None:
        """Declare files this run read as artifact `name` (an input): the producer's files, so the
        same digest and the same artifact version."""
        if self.run is None or not files:
            return
        art = self._artifact(name, kind, files, None)
        if self.run.offline:
            # run.use_artifact refuses offline runs; this is the record it writes online for a draft
            # artifact (logged, then used after commit), which `wandb sync` replays.
            self.run._log_artifact(art, is_user_created=True, use_after_commit=True)
        else:
            self.run.use_artifact(art)

    def finish(self, ok: bool = True) -> None:
        if self.run is None:
            return
        files = self.lineage.output_files() if ok and self.lineage is not None else []
        if files:
            name, kind, _ = self.lineage.output
            self.artifact(name, kind, files, {"dvc_stage": self.lineage.stage})
        self.run.finish(exit_code=0 if ok else 1)
        self.run = None
