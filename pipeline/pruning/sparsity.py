"""Weight-level pruning (unstructured or N:M): llmcompressor's SparseGPT / Wanda, or plain magnitude.

Notes from llmcompressor 0.14 (read in its source, checked on a tiny model):
- Modifiers target the model's decoder-layer class (found from the model, e.g.
  `LlamaDecoderLayer`, `Qwen2DecoderLayer`) with one sparsity per layer, so lm_head
  (and the embedding tied to it) is never touched and OWL ratios can be passed
  directly. Its built-in `sparsity_profile="owl"` raises "Cannot invoke event
  before initializing", so we compute OWL ratios ourselves, at the recipe's own
  outlier threshold `owl_m`, from calibration statistics (importance.py).
- SparseGPT updates the weights it keeps, so on a rung whose parent already has
  zeros it would refill them: `preserve_sparsity_mask=True` keeps them. Wanda only
  zeros weights (the parent's zeros score 0 and go first), so it nests as is.
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
from pipeline.models.architecture import LINEARS, decoder_layer_class, decoder_layers
from pipeline.pruning.importance import owl_layer_sparsity, owl_outlier_ratios
from pipeline.pruning.slicing import rows_of_heads


def inputs_kept(structure, arch) -> dict[tuple[int, str], torch.Tensor]:
    """Base feature index of every input of every linear, for a cut model (OWL needs them)."""
    out = {}
    hidden = torch.tensor(structure["hidden"])
    for l in structure["layers"]:
        q = sorted(structure["q_heads"][l], key=lambda h: (h // arch.group, h))
        for name in LINEARS:
            if name == "self_attn.o_proj":
                out[(l, name)] = rows_of_heads(q, arch.head_dim)
            elif name == "mlp.down_proj":
                out[(l, name)] = torch.tensor(structure["mlp"][l])
            else:
                out[(l, name)] = hidden
    return out


def layer_sparsities(step: WeightStep, model: nn.Module, structure=None, arch=None, imp=None) -> tuple[list[float], list[float] | None]:
    """Per decoder layer: the sparsity to reach, and the OWL outlier ratios it came from."""
    n_layers = len(decoder_layers(model))
    if not step.owl:
        return [step.sparsity] * n_layers, None
    if imp is None or structure is None:
        raise ValueError("owl needs calibration statistics")
    ratios = owl_outlier_ratios(model, structure["layers"], imp, step.owl_m, inputs_kept(structure, arch))
    return owl_layer_sparsity(ratios, step.sparsity, step.owl_lambda), [float(r) for r in ratios]


def _has_zeros(model: nn.Module, share: float = 0.01) -> bool:
    lin = [m for layer in decoder_layers(model) for m in layer.modules() if isinstance(m, nn.Linear)]
    zeros = sum(int((m.weight == 0).sum()) for m in lin)
    return zeros > share * sum(m.weight.numel() for m in lin)


def _modifier(step: WeightStep, sparsity: list[float], model: nn.Module):
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    nm = step.nm()
    kw = dict(
        sparsity=sparsity,
        mask_structure=f"{nm[1] - nm[0]}:{nm[1]}" if nm else "0:0",
        targets=[decoder_layer_class(model)],
    )
    if step.method == "sparsegpt":
        return SparseGPTModifier(**kw, preserve_sparsity_mask=_has_zeros(model))
    return WandaPruningModifier(**kw)


def prune_weights(model: nn.Module, step: WeightStep, blocks: torch.Tensor, structure=None, arch=None,
                  imp=None) -> dict:
    """Prune decoder-layer weights in place; return the recipe that was applied."""
    sparsity, ratios = layer_sparsities(step, model, structure, arch, imp)
    if step.method == "magnitude":
        magnitude_prune(model, sparsity, step.nm())
        return {"method": "magnitude", "layer_sparsity": sparsity, "owl_outlier_ratio": ratios,
                "pattern": step.pattern}

    # llmcompressor logs every layer's SparseGPT error at INFO; keep the build log readable.
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    import datasets
    import yaml
    from llmcompressor import oneshot
    from llmcompressor.core import active_session

    modifier = _modifier(step, sparsity, model)
    ds = datasets.Dataset.from_dict({"input_ids": blocks.tolist()})
    with tempfile.TemporaryDirectory() as cfg_dir:
        # llmcompressor reads name_or_path to validate the model and to look for a
        # recipe next to it; point it at a bare config so it finds only that.
        model.config.save_pretrained(cfg_dir)
        saved_name = model.name_or_path
        model.config._name_or_path = model.name_or_path = cfg_dir
        logging.getLogger("llmcompressor").setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()):
            oneshot(
                model=model, dataset=ds, recipe=modifier, processor=object(),
                num_calibration_samples=len(blocks), max_seq_length=blocks.shape[1],
                shuffle_calibration_samples=False, pipeline="sequential", output_dir=None,
            )
        recipe_yaml = active_session().lifecycle.recipe.yaml()
        model.config._name_or_path = model.name_or_path = saved_name
    return {"method": step.method, "layer_sparsity": sparsity, "owl_outlier_ratio": ratios,
            "owl_m": step.owl_m if step.owl else None, "pattern": step.pattern,
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
