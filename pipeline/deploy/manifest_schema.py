"""The deployment manifest's schema (version 2): what `artifacts/manifest.yaml` must hold.

Paths are relative to the manifest's own directory, so the `artifacts/` folder can be moved or
copied as a whole. Every weights file carries its sha256, which the runtime checks before use.
A change that breaks readers must bump `schema_version`. Version 2: the router predicts risk
against dense and carries a Learn-then-Test certificate; the cascade's deferral is a learned rule
kept in its thresholds file; route-then-escalate (`escalate`); the cost model is analytic by
default, and measured timings appear only when they are the cost (`costs.kind: latency`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 2
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
NonNeg = Annotated[float, Field(ge=0.0)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Shape(Strict):
    layers: int
    kv_heads: int
    q_per_kv: int
    mlp: int


class Rung(Strict):
    name: str
    path: str
    parent: str | None
    weights_sha256: dict[str, Sha256] = Field(min_length=1)
    shape: Shape
    params: int
    nonzero_params: int
    flops_per_token: int
    relative_flops: NonNeg
    latency_ms: dict[str, NonNeg] | None  # measured (`speed`); only when costs.kind is latency
    throughput_tokens_per_s: NonNeg | None  # measured; only when costs.kind is latency
    routing_cost: NonNeg  # in `costs.unit`
    relative_cost: NonNeg  # routing cost / dense's
    perplexity: NonNeg
    accuracy: dict[str, Unit]  # per task and "mean", under `prediction`


class Certificate(Strict):
    """Learn-then-Test on the calibration split: P(accuracy drop against dense > epsilon) <= delta."""

    epsilon: Unit
    delta: Unit
    calibration_size: int
    calibration_drop_upper_bound: float


class Router(Strict):
    path: str
    weights: str
    weights_sha256: Sha256
    config: str
    config_sha256: Sha256
    features: Literal["minilm", "hidden_state"]
    model: str  # the risk model chosen by cross-validation, e.g. knn:30, logistic:10, task_rate
    candidates: list[str]  # rungs it may send a query to (Pareto front), cheapest first; dense is the fallback
    threshold: float | None  # route to the cheapest candidate with risk <= threshold; null: always dense
    target: Literal["accuracy", "budget"]
    certificate: Certificate | None  # null for the budget target (no guarantee)
    metrics: dict  # test-split figures with 95% intervals, see artifacts/router/metrics.json


class Cascade(Strict):
    path: str
    sha256: Sha256
    order: list[str] = Field(min_length=1)
    deferral: Literal["learned", "signal"]
    signal: str
    method: Literal["ltt", "quantile"]
    thresholds: list[float | None]  # null: the rung is skipped
    epsilon: Unit
    delta: Unit
    calibration_size: int
    test_metrics: dict


class Escalate(Strict):
    """Route-then-escalate: the router's rung at `threshold`, then dense if its deferral risk > threshold."""

    path: str
    sha256: Sha256
    threshold: float | None  # null: always dense
    certificate: Certificate
    test_metrics: dict


class Build(Strict):
    git_revision: str
    git_dirty: bool
    params_hash: str
    seed: int
    libraries: dict[str, str]


class Costs(Strict):
    kind: Literal["latency", "flops"]
    unit: str
    prompt_tokens: int  # the costed query: prompt tokens ...
    scored_tokens: int  # ... and answer tokens scored (lm_head runs on these only)


class Manifest(Strict):
    schema_version: Literal[2]
    name: str
    prediction: Literal["acc", "acc_norm"]
    base: dict  # the base stage's provenance.json: source, sha256, architecture, versions
    costs: Costs
    rungs: list[Rung] = Field(min_length=1)
    router: Router
    cascade: Cascade
    escalate: Escalate
    build: Build

    def rung(self, name: str) -> Rung:
        for r in self.rungs:
            if r.name == name:
                return r
        raise KeyError(f"no rung '{name}' in the manifest; rungs: {[r.name for r in self.rungs]}")


class ManifestError(ValueError):
    """The manifest is missing, not YAML, or does not fit the schema; the message names the fields."""


def validate_manifest(raw: object, source: str = "manifest") -> Manifest:
    if not isinstance(raw, dict):
        raise ManifestError(f"{source} is not a YAML mapping")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{source}: schema_version is {version!r}; this runtime reads version {SCHEMA_VERSION}")
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ManifestError(f"{source} does not fit schema version {SCHEMA_VERSION}:\n" + "\n".join(lines)) from None
    names = [r.name for r in m.rungs]
    missing = [r for r in m.cascade.order + m.router.candidates if r not in names]
    if missing or names[0] != "dense":
        raise ManifestError(f"{source}: rungs must start with dense and include the cascade's order and the router's "
                            f"candidates (rungs {names}, cascade {m.cascade.order}, router {m.router.candidates})")
    if len(m.cascade.thresholds) != len(m.cascade.order) - 1:
        raise ManifestError(f"{source}: cascade has {len(m.cascade.thresholds)} thresholds for "
                            f"{len(m.cascade.order)} rungs (want one per rung before dense)")
    return m


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path} not found: build it with `dvc repro manifest` (or `make repro`)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path} is not valid YAML: {exc}") from None
    return validate_manifest(raw, str(path))
