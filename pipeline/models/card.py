"""Hugging Face model cards for rungs: Hub metadata (YAML front matter) and what was done.

Two cards per rung, each written by the stage that owns the facts (a stage never edits another's
outputs):
- `prune@<rung>` writes `artifacts/ladder/<rung>/README.md` (`model_card`): `base_model`, the
  base's `license` (`base_facts`: `artifacts/base/provenance.json`, which records `model.license`),
  `library_name`, `pipeline_tag`, `tags`, then shape, cost and the recipe;
- `evaluate@<rung>` writes `artifacts/eval/<rung>/model_card.md` (`card_with_results`): the same
  card plus a `model-index` with the measured results and a results table. That is the card to
  publish with the rung.

Front matter goes through `huggingface_hub`'s `ModelCardData`, so the Hub (and `ModelCard.load`)
reads exactly what is written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

LIBRARY = "transformers"
PIPELINE_TAG = "text-generation"


def _tags(rung: str, report: dict, recipe: dict) -> list[str]:
    tags = ["ladder", "pruned" if rung != "dense" else "dense-base"]
    if report["relative"]["params"] < 1.0:  # layers, heads or channels really removed
        tags.append("structured-pruning")
    for step in recipe.get("steps", []):
        w = step.get("weights")
        if isinstance(w, dict):
            tags.append(f"{w.get('method', 'weight')}-sparsity")
            if w.get("pattern"):
                tags.append("n:m-sparsity")
        if "heal" in step:
            tags.append("distillation")
    return list(dict.fromkeys(tags))  # ordered, no repeats


def _front_matter(data) -> str:
    return "---\n" + data.to_yaml() + "\n---\n"


def base_facts(base_dir: str | Path) -> dict:
    """What a card says about the base: the `provenance.json` the base stage wrote (name, license,
    base_model), or, for a checkpoint this pipeline wrote (a rung used as the base), its own card."""
    base_dir = Path(base_dir)
    if (base_dir / "provenance.json").exists():
        return json.loads((base_dir / "provenance.json").read_text())
    if (base_dir / "README.md").exists():
        from huggingface_hub import ModelCard

        card = ModelCard.load(base_dir / "README.md")
        title = re.match(r"#\s+(.+?) — ladder rung", card.text.lstrip())
        return {"name": title.group(1) if title else base_dir.name,
                "license": card.data.license, "base_model": card.data.base_model}
    return {"name": base_dir.name}


def model_card(rung: str, report: dict, recipe: dict, provenance: dict) -> str:
    """The rung's card: Hub metadata from the base's provenance, then shape, cost and recipe."""
    from huggingface_hub import ModelCardData

    base_model = provenance.get("base_model")
    data = ModelCardData(
        base_model=base_model,
        license=provenance.get("license"),
        library_name=LIBRARY,
        pipeline_tag=PIPELINE_TAG,
        tags=_tags(rung, report, recipe),
    )
    r, c = report["relative"], report["counts"]
    base_name = provenance.get("name", "base")
    body = (
        f"# {base_name} — ladder rung `{rung}`\n\n"
        f"Pruned from `{report['parent'] or 'the base model'}`"
        + (f" (base model [`{base_model}`](https://huggingface.co/{base_model}))" if base_model else "")
        + " by the Ladder pipeline. Loads with `AutoModelForCausalLM.from_pretrained(<this dir>)`.\n\n"
        f"| | value | x dense |\n|---|---|---|\n"
        f"| layers | {c['layers']} | |\n| hidden size | {c['hidden']} | |\n"
        f"| KV heads x query heads per KV | {c['kv_heads']} x {c['q_heads']} | |\n"
        f"| MLP channels | {c['mlp']} | |\n"
        f"| parameters | {report['params']:,} | {r['params']:.3f} |\n"
        f"| non-zero parameters | {report['nonzero_params']:,} | {r['nonzero_params']:.3f} |\n"
        f"| FLOPs/token (dense kernels, context {report['context_for_flops']}) | {report['flops_per_token']:,} "
        f"| {r['flops']:.3f} |\n"
        f"| FLOPs/token counting non-zeros only | {report['nonzero_flops_per_token']:,} | {r['nonzero_flops']:.3f} |\n\n"
        "Zeros inside weight matrices (unstructured or N:M) make the checkpoint compressible but give "
        "no speed-up on dense CPU kernels; only removed layers, heads, channels and hidden size do.\n\n"
        + (f"Smoke test (greedy): `{report['smoke']['prompt']}` -> `{report['smoke']['completion'].strip()}`\n\n"
           if report.get("smoke") else "")
        + f"Layers removed (base indices): {report['layers_removed']}\n\n"
        "## Recipe\n\n```yaml\n" + yaml.safe_dump(recipe, sort_keys=False) + "```\n"
    )
    return _front_matter(data) + "\n" + body


def eval_results(metrics: dict, datasets: dict[str, tuple[str, str | None, str] | None]) -> list:
    """model-index entries (huggingface_hub `EvalResult`) for each task's acc and acc_norm.

    `datasets`: task -> (Hub dataset id, config, split) the items come from; a task without one is
    named by its task name."""
    from huggingface_hub import EvalResult

    results = []
    for task, m in metrics["tasks"].items():
        if task == "mean":
            continue
        path, config, split = datasets.get(task) or (task, None, None)
        for metric in ("acc", "acc_norm"):
            results.append(EvalResult(
                task_type=PIPELINE_TAG, task_name="multiple-choice log-likelihood (lm-evaluation-harness scoring)",
                dataset_type=path, dataset_name=task, dataset_config=config, dataset_split=split,
                metric_type=metric, metric_value=round(float(m[metric]), 4), metric_name=f"{metric} ({m['n']} items)",
            ))
    return results


def card_with_results(card_text: str, metrics: dict, datasets: dict[str, Any]) -> str:
    """The rung's card (as `model_card` wrote it) plus a model-index and a table of measured results."""
    from huggingface_hub import ModelCard

    card = ModelCard(card_text, ignore_metadata_errors=False)
    title = re.match(r"#\s+(.+?) — ladder rung `(.+?)`", card.text.lstrip())  # model_card's first line
    card.data.model_name = f"{title.group(1)}-{title.group(2)}" if title else metrics["rung"]
    card.data.eval_results = eval_results(metrics, datasets)
    ppl = metrics["perplexity"]
    rows = "".join(f"| {t} | {m['acc']:.3f} | {m['acc_norm']:.3f} | {m['n']} |\n"
                   for t, m in metrics["tasks"].items())
    cost = metrics["cost"]
    latency = ", ".join(f"{k} tokens: {v:.1f} ms" for k, v in cost["latency_ms"].items())
    results = (
        "\n## Results (measured by `evaluate@" + metrics["rung"] + "`)\n\n"
        "| task | acc | acc_norm | items |\n|---|---|---|---|\n" + rows +
        f"\nHeld-out perplexity: {ppl['perplexity']:.2f} over {ppl['tokens_predicted']:,} predicted tokens. "
        f"Latency (batch 1, this machine): {latency}; throughput {cost['throughput_tokens_per_s']:.0f} tokens/s; "
        f"checkpoint {cost['checkpoint_bytes'] / 2**20:.1f} MiB.\n"
    )
    return _front_matter(card.data) + card.text.rstrip("\n") + "\n" + results
