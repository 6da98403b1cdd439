"""Weight-level pruning: llmcompressor's SparseGPT / Wanda, or plain magnitude.

Notes from llmcompressor 0.14 (read in its source, checked on a tiny model):
- Modifiers target `LlamaDecoderLayer` with one sparsity per layer, so lm_head
  (and the embedding tied to it) is never touched and OWL ratios can be passed
  directly. Its built-in `sparsity_profile="owl"` raises "Cannot invoke event
  before initializing", so we compute OWL ratios ourselves (importance.py).
- Its `mask_structure="N:M"` zeros N of every M; ours follows NVIDIA's "2:4 keeps
  2 of 4", so "N:M" here becomes "(M-N):M" there.
- `MagnitudePruningModifier` only applies masks on optimizer steps, so one-shot
  it prunes nothing; magnitude pruning is a few lines of torch below.
- `oneshot` validates `model.config.name_or_path` and builds a processor when
  none is given; we hand it a saved config path and a placeholder processor,
  since the calibration set is already token ids.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile

import torch
from torch import nn

from pipeline.common.config import WeightStep
from pipeline.pruning.importance import decoder_layers, owl_layer_sparsity


def layer_sparsities(step: WeightStep, outlier_ratio: torch.Tensor | None, n_layers: int) -> list[float]:
    if step.owl:
        if outlier_ratio is None:
            raise ValueError("owl needs calibration outlier ratios")
        return owl_layer_sparsity(outlier_ratio, step.sparsity, step.owl_lambda)
    return [step.sparsity] * n_layers


def _modifier(step: WeightStep, sparsity: list[float]):
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    nm = step.nm()
    kw = dict(
        sparsity=sparsity,
        mask_structure=f"{nm[1] - nm[0]}:{nm[1]}" if nm else "0:0",
        targets=["LlamaDecoderLayer"],
    )
    return SparseGPTModifier(**kw) if step.method == "sparsegpt" else WandaPruningModifier(**kw)


def prune_weights(model: nn.Module, step: WeightStep, blocks: torch.Tensor,
                  outlier_ratio: torch.Tensor | None = None) -> dict:
    """Prune decoder-layer weights in place; return the recipe that was applied."""
    sparsity = layer_sparsities(step, outlier_ratio, len(decoder_layers(model)))
    if step.method == "magnitude":
        magnitude_prune(model, sparsity, step.nm())
        return {"method": "magnitude", "layer_sparsity": sparsity, "pattern": step.pattern}

    # llmcompressor logs every layer's SparseGPT error at INFO; keep the build log readable.
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    import datasets
    import yaml
    from llmcompressor import oneshot
    from llmcompressor.core import active_session

    modifier = _modifier(step, sparsity)
    ds = datasets.Dataset.from_dict({"input_ids": blocks.tolist()})
    with tempfile.TemporaryDirectory() as cfg_dir:
        # llmcompressor reads name_or_path to validate the model and to look for a
        # recipe next to it; point it at a bare config so it finds only that.
        model.config.save_pretrained(cfg_dir)
        saved_name = model.name_or_path
        model.config._name_or_path = model.name_or_path = cfg_dir
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the build is defined on CPU
        logging.getLogger("llmcompressor").setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()):
            oneshot(
                model=model, dataset=ds, recipe=modifier, processor=object(),
                num_calibration_samples=len(blocks), max_seq_length=blocks.shape[1],
                shuffle_calibration_samples=False, pipeline="sequential", output_dir=None,
            )
        recipe_yaml = active_session().lifecycle.recipe.yaml()
        model.config._name_or_path = model.name_or_path = saved_name
    return {"method": step.method, "layer_sparsity": sparsity, "pattern": step.pattern,
            "llmcompressor_recipe": yaml.safe_load(recipe_yaml)}


@torch.no_grad()
def magnitude_prune(model: nn.Module, layer_sparsity: list[float], nm: tuple[int, int] | None) -> None:
    """Zero the smallest |w| per output row (unstructured) or per M-group (N:M)."""
    for layer, s in zip(decoder_layers(model), layer_sparsity):
        for m in layer.modules():
            if not isinstance(m, nn.Linear):
                continue
            w = m.weight
            if nm:
                keep, group = nm
                g = w.abs().view(w.shape[0], -1, group)
                drop = g.topk(group - keep, dim=-1, largest=False).indices
                mask = torch.ones_like(g, dtype=torch.bool).scatter_(-1, drop, False)
                w.mul_(mask.view_as(w))
            else:
                k = int(w.shape[1] * s)
                if k:
                    drop = w.abs().topk(k, dim=1, largest=False).indices
                    w.scatter_(1, drop, 0.0)
