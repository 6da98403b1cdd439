"""The deployment manifest's schema (version 2): what `artifacts/manifest.yaml` must hold.

Paths are relative to the manifest's own directory, so the `artifacts/` folder can be moved or
copied as a whole; a path that is absolute or climbs out of that directory (`..`) is refused, and
file names are plain names inside their directory. Every file the runtime loads carries its
sha256, which the runtime checks before use. A change that breaks readers of a version must bump
`schema_version`.

Version 2 (from 1), from two branches merged into one version:
- trust (hardening): a rung lists `files_sha256`, the digest of *every* file it is loaded from
  (config, generation config, tokenizer, every weights shard), instead of `weights_sha256`; paths
  are confined; `serve` holds the runtime's request limits;
- routing: the router predicts risk against dense and carries a Learn-then-Test certificate; the
  cascade's deferral is a learned rule kept in its thresholds file; route-then-escalate
  (`escalate`, with its own checked thresholds file); the cost model is analytic by default, and
  measured timings appear only when they are the cost (`costs.kind: latency`).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from pipeline.common.config import ServeConfig

SCHEMA_VERSION = 2
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
NonNeg = Annotated[float, Field(ge=0.0)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def _plain_name(name: str) -> str:
    """A file inside its directory: no separators, no leading dot (so never '.' or '..')."""
    if not FILE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a plain file name (letters, digits, '_', '-', '.'; no '/', no leading '.')")
    return name


FileName = Annotated[str, AfterValidator(_plain_name)]


def _inside(path: str) -> str:
    """Relative, and staying inside the manifest's directory once normalised."""
    norm = posixpath.normpath(path.replace("\\", "/"))
    if posixpath.isabs(norm) or Path(path).is_absolute() or norm == ".." or norm.startswith("../"):
        raise ValueError(f"{path!r} leaves the manifest's directory; paths must be relative and stay inside it")
    return path


RelPath = Annotated[str, Field(min_length=1), AfterValidator(_inside)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Shape(Strict):
    layers: int
    hidden: int  # hidden size kept
    kv_heads: int  # per layer
    q_per_kv: int  # query heads per KV head (the prune report's `q_heads`)
    mlp: int  # MLP channels per layer


class Rung(Strict):
    name: str
    path: RelPath
    parent: str | None
    files_sha256: dict[FileName, Sha256] = Field(min_length=1)  # every file a loader reads
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
    path: RelPath
    weights: FileName
    weights_sha256: Sha256
    config: FileName
    config_sha256: Sha256
    features: Literal["minilm", "hidden_state"]
    model: str  # the risk model chosen by cross-validation, e.g. knn:30, logistic:10, task_rate
    # what the threshold is on: gap = P(rung wrong, dense right) - P(rung right, dense wrong);
    # harm = P(rung wrong, dense right) (manifests before the gap risk hold harm)
    risk: Literal["gap", "harm"] = "harm"
    candidates: list[str]  # rungs it may send a query to (Pareto front), cheapest first; dense is the fallback
    threshold: float | None  # route to the cheapest candidate with risk <= threshold; null: always dense
    target: Literal["accuracy", "budget"]
    certificate: Certificate | None  # null for the budget target (no guarantee)
    metrics: dict  # test-split figures with 95% intervals, see artifacts/router/metrics.json


class Cascade(Strict):
    path: RelPath
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
    """Route-then-escalate: the router's rung at `threshold`, then dense if its deferral risk > `deferral_threshold`."""

    path: RelPath
    sha256: Sha256
    threshold: float | None  # null: always dense
    deferral_threshold: float | None  # null with threshold null
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
    serve: ServeConfig  # the runtime's request limits
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
    if isinstance(version, str) and version.strip() == str(SCHEMA_VERSION):
        raise ManifestError(f"{source}: schema_version must be the integer {SCHEMA_VERSION}, not the string {version!r}")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{source}: schema_version is {version!r}, but this runtime reads version {SCHEMA_VERSION} "
                            "only: rebuild the manifest with this pipeline (`dvc repro manifest`), or serve it with "
                            "the pipeline version that wrote it")
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'] if not str(p).startswith('function-after'))}: "
                 f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        raise ManifestError(f"{source} does not fit schema version {SCHEMA_VERSION}:\n" + "\n".join(lines)) from None
    names = [r.name for r in m.rungs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ManifestError(f"{source}: rungs {twice} are listed more than once")
    missing = [r for r in m.cascade.order + m.router.candidates if r not in names]
    if missing or names[0] != "dense":
        raise ManifestError(f"{source}: rungs must start with dense and include the cascade's order and the router's "
                            f"candidates (rungs {names}, cascade {m.cascade.order}, router {m.router.candidates})")
    if len(m.cascade.thresholds) != len(m.cascade.order) - 1:
        raise ManifestError(f"{source}: cascade has {len(m.cascade.thresholds)} thresholds for "
                            f"{len(m.cascade.order)} rungs (want one per rung before dense)")
    return m


def load_manifest(path: str | Path) -> Manifest:
    from pipeline.common.formats import strict_yaml_load, yaml_error_line

    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"{path} is a directory; give the manifest file (e.g. {path / 'manifest.yaml'})")
    if not path.is_file():
        raise ManifestError(f"{path} not found: build it with `dvc repro manifest` (or `make repro`)")
    try:
        raw = strict_yaml_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not valid UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ManifestError(yaml_error_line(path, exc)) from None
    return validate_manifest(raw, str(path))
