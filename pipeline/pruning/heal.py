"""Healing: a short knowledge distillation of a rung from the dense model, sized for a CPU.

The student matches the dense model's next-token distribution (the sparse top-k KL of
`pipeline/pruning/distill.py`, against the teacher cached once by the `teacher` stage and shared
by every rung) on the healing blocks: LAMBADA passages disjoint from the held-out perplexity set
and from every task item. What it may change:

- every linear and norm of the decoder; the (tied) embeddings are frozen by default, so a child
  cut from a healed parent still has its parent's embedding columns;
- never the structure, and never a weight that is exactly zero (weight-sparse rungs stay sparse:
  the mask is re-applied after every step).

A token budget fixes the number of steps; the learning rate warms up linearly then follows a
cosine to a tenth of its peak; every `eval_every` steps the KL on held-out healing blocks is
measured, the best state is kept, and training stops after `patience` checks without improvement.

Memory (how healing fits an 8B student on one 80 GB GPU; arithmetic in docs/notes/s13-dtype.md):
- no teacher in memory: its top-k log-probabilities were cached once by the `teacher` stage;
- the student trains in its own dtype (`model.dtype`): weights, gradients and both AdamW moments
  are bf16 when the model is (torch's AdamW keeps its state in the parameter's dtype), 8 bytes
  per trainable parameter, and there is no float32 master copy;
- the embeddings (and an untied `lm_head`) are frozen: no gradient or optimiser state for them;
- the best state so far is kept in host memory, not next to the model on the GPU.
The price of pure-bf16 AdamW: an update smaller than ~1/256 of a weight rounds away. At the
short, small-lr healing runs here that slows healing rather than breaking it; it has not been
measured on a GPU.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from tqdm import tqdm

from pipeline.pruning.distill import mean_kl, sparse_kl


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    w = max(1, int(round(total * warmup)))
    if step < w:
        return peak * (step + 1) / w
    progress = (step - w) / max(1, total - w)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def trainable_parameters(model: nn.Module, freeze_embeddings: bool) -> dict[str, nn.Parameter]:
    frozen = set()
    if freeze_embeddings:
        frozen.add(id(model.get_input_embeddings().weight))
        frozen.add(id(model.get_output_embeddings().weight))  # the same tensor when tied
    return {n: p for n, p in model.named_parameters() if id(p) not in frozen}


def heal(model: nn.Module, train: dict[str, torch.Tensor], val: dict[str, torch.Tensor], cfg, seed: int,
         on_check=None) -> dict:
    """Distil `model` in place on `train` (a cached teacher: input_ids, topk_ids, topk_logp);
    return the curve and what was kept. `on_check(step, tokens, model)` runs at every check."""
    device = next(model.parameters()).device
    params = trainable_parameters(model, cfg.freeze_embeddings)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    masks = {n: p.detach() != 0 for n, p in params.items() if p.dim() == 2 and bool((p == 0).any())}
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    n_blocks, block_len = train["input_ids"].shape
    steps = max(1, cfg.tokens // (cfg.batch_size * block_len))
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed))

    def check(step: int) -> float:
        model.eval()
        kl = mean_kl(model, val, batch_size=cfg.batch_size)
        if on_check is not None:
            on_check(step, step * cfg.batch_size * block_len, model)
        model.train()
        return kl

    t0 = time.perf_counter()
    best_kl = check(0)
    curve = [{"step": 0, "tokens": 0, "val_kl": best_kl}]
    best_state = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}  # host memory
    best_step, since_best, running = 0, 0, []
    model.train()
    bar = tqdm(range(steps), desc="heal (distil from dense)", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg.lr, cfg.warmup)
        pick = order[(torch.arange(cfg.batch_size) + step * cfg.batch_size) % n_blocks]
        logits = model(input_ids=train["input_ids"][pick].to(device), use_cache=False).logits
        loss = sparse_kl(logits, train["topk_ids"][pick].to(device), train["topk_logp"][pick].to(device)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n, m in masks.items():
                params[n].mul_(m)
        running.append(loss.item())
        if (step + 1) % cfg.eval_every == 0 or step + 1 == steps:
            kl = check(step + 1)
            curve.append({"step": step + 1, "tokens": (step + 1) * cfg.batch_size * block_len, "val_kl": kl,
                          "train_kl": sum(running) / len(running), "lr": opt.param_groups[0]["lr"]})
            running = []
            bar.set_postfix(val_kl=f"{kl:.4f}")
            if kl < best_kl - 1e-6:
                best_kl, best_step, since_best = kl, step + 1, 0
                best_state = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
            else:
                since_best += 1
                if since_best >= cfg.patience:
                    break
    bar.close()
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(best_state[n])
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    last = curve[-1]["step"]
    return {"tokens_budget": cfg.tokens, "steps_planned": steps, "steps_run": last,
            "tokens_seen": last * cfg.batch_size * block_len, "best_step": best_step,
            "best_tokens": best_step * cfg.batch_size * block_len, "val_kl_before": curve[0]["val_kl"],
            "val_kl_best": best_kl, "stopped_early": last < steps, "seconds": round(time.perf_counter() - t0, 1),
            "trainable_parameters": sum(p.numel() for p in params.values()),
            "frozen_embeddings": cfg.freeze_embeddings, "lr": cfg.lr, "warmup": cfg.warmup,
            "batch_size": cfg.batch_size, "curve": curve}
