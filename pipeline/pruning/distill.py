"""The dense model's next-token distribution, cached sparsely, and the KL against it.

Healing and the allocator both compare a candidate to the dense (teacher) model. Running the
teacher next to every student would hold two models and repeat the same forward passes, so the
`teacher` stage runs it once over the healing and allocator blocks and keeps, per position, its
top-k log-probabilities. The KL is then taken over those k tokens plus one bucket for the rest of
the vocabulary (the "sparse KD" form): exact when the teacher's tail is empty, close when it is
small (report the captured mass).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm


@torch.no_grad()
def teacher_topk(model: nn.Module, blocks: torch.Tensor, k: int, batch_size: int = 4,
                 desc: str = "teacher top-k") -> dict[str, torch.Tensor]:
    """Per position of every block: the teacher's top-k token ids and log-probabilities."""
    device = next(model.parameters()).device
    ids, logps = [], []
    for s in tqdm(range(0, len(blocks), batch_size), desc=desc, unit="batch"):
        logits = model(input_ids=blocks[s:s + batch_size].to(device), use_cache=False).logits.float()
        top = logits.log_softmax(-1).topk(k, dim=-1)
        ids.append(top.indices.to(torch.int32).cpu())
        logps.append(top.values.cpu())
    return {"input_ids": blocks.clone(), "topk_ids": torch.cat(ids), "topk_logp": torch.cat(logps)}


def sparse_kl(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logp: torch.Tensor) -> torch.Tensor:
    """Per-position KL(teacher || student) over the teacher's top-k tokens plus a tail bucket."""
    s_logp = student_logits.float().log_softmax(-1).gather(-1, topk_ids.long())
    t_logp = topk_logp.float()
    p_t = t_logp.exp()
    tail_t = (1.0 - p_t.sum(-1)).clamp_min(1e-8)
    tail_s = (1.0 - s_logp.exp().sum(-1)).clamp_min(1e-8)
    return (p_t * (t_logp - s_logp)).sum(-1) + tail_t * (tail_t.log() - tail_s.log())


@torch.no_grad()
def mean_kl(model: nn.Module, cache: dict[str, torch.Tensor], batch_size: int = 4,
            limit: int | None = None) -> float:
    """Mean sparse KL per position of `model` against a cached teacher, over (the first `limit`) blocks."""
    device = next(model.parameters()).device
    n = len(cache["input_ids"]) if limit is None else min(limit, len(cache["input_ids"]))
    total, count = 0.0, 0
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        logits = model(input_ids=cache["input_ids"][s:e].to(device), use_cache=False).logits
        kl = sparse_kl(logits, cache["topk_ids"][s:e].to(device), cache["topk_logp"][s:e].to(device))
        total += float(kl.sum())
        count += kl.numel()
    return total / max(count, 1)


def captured_mass(cache: dict[str, torch.Tensor]) -> float:
    """Mean teacher probability inside the cached top-k (1.0 = the KL is exact)."""
    return float(cache["topk_logp"].float().exp().sum(-1).mean())
