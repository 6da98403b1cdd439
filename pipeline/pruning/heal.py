"""Optional healing: a short knowledge distillation from the dense model.

The student matches the teacher's next-token distribution (KL at temperature T)
on calibration blocks. Zeros from weight pruning are kept zero by re-applying
each weight's mask after every optimiser step, so healing never densifies a rung.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from pipeline.common.config import HealConfig


def distill(student: nn.Module, teacher: nn.Module, blocks: torch.Tensor, cfg: HealConfig) -> dict:
    masks = {n: (p != 0) for n, p in student.named_parameters() if p.dim() == 2}
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    student.train()
    losses = []
    g = torch.Generator().manual_seed(0)
    for _ in tqdm(range(cfg.steps), desc="heal (distill)", unit="step"):
        idx = torch.randint(0, len(blocks), (cfg.batch_size,), generator=g)
        x = blocks[idx]
        with torch.no_grad():
            t_logits = teacher(input_ids=x, use_cache=False).logits.float() / cfg.temperature
        s_logits = student(input_ids=x, use_cache=False).logits.float() / cfg.temperature
        loss = nn.functional.kl_div(
            s_logits.log_softmax(-1), t_logits.log_softmax(-1), log_target=True, reduction="batchmean"
        ) * cfg.temperature**2 / x.shape[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n, p in student.named_parameters():
                if n in masks:
                    p.mul_(masks[n])
        losses.append(loss.item())
    student.eval()
    return {"steps": cfg.steps, "lr": cfg.lr, "temperature": cfg.temperature,
            "kl_first": losses[0], "kl_last": losses[-1]}
