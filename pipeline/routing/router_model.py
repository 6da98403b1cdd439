"""The router's MLP family (`risk_models.MLP`): features -> one probability per rung.

A two-layer MLP over standardised features with a sigmoid per output, trained with binary
cross-entropy (full batch, AdamW, seeded, epochs by early stopping on a held-out quarter, then
refitted on everything). What it predicts, and how the router uses it, is `risk_models.py`'s business.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class RouterNet(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, n_rungs: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.body = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(0.1),
                                  nn.Linear(hidden_dim, n_rungs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, one per rung."""
        return self.body((x - self.mean) / self.std)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> np.ndarray:
        self.eval()
        return torch.sigmoid(self(x.float())).double().numpy()


def _fit(x: torch.Tensor, y: torch.Tensor, hidden_dim: int, epochs: int, lr: float, weight_decay: float,
         seed: int, val: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[RouterNet, list[float]]:
    torch.manual_seed(seed)
    net = RouterNet(x.shape[1], hidden_dim, y.shape[1])
    net.mean.copy_(x.mean(0))
    net.std.copy_(x.std(0).clamp_min(1e-6))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    val_losses = []
    for _ in range(epochs):
        net.train()
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
        if val is not None:
            net.eval()
            with torch.no_grad():
                val_losses.append(float(loss_fn(net(val[0]), val[1])))
    return net.eval(), val_losses


def train_router(x: torch.Tensor, y: np.ndarray, hidden_dim: int, epochs: int, lr: float,
                 weight_decay: float, seed: int, val_fraction: float = 0.25) -> tuple[RouterNet, dict]:
    """Fit on features x [N, D] and outcomes y [N, R] (1 = the rung answered correctly).

    A few hundred queries against hundreds of feature dimensions overfit within tens of epochs,
    so the epoch count is chosen by early stopping on a held-out share of the training queries
    (seeded), and the router is then refitted on all of them for that many epochs."""
    x, target = x.float(), torch.as_tensor(y, dtype=torch.float32)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(val_fraction * len(x)))) if len(x) >= 8 else 0
    best_epochs = epochs
    val_curve: list[float] = []
    if n_val:
        va, tr = perm[:n_val], perm[n_val:]
        _, val_curve = _fit(x[tr], target[tr], hidden_dim, epochs, lr, weight_decay, seed, (x[va], target[va]))
        best_epochs = int(np.argmin(val_curve)) + 1
    net, _ = _fit(x, target, hidden_dim, best_epochs, lr, weight_decay, seed)
    return net, {"epochs": best_epochs, "max_epochs": epochs, "val_queries": n_val,
                 "val_loss_best": min(val_curve) if val_curve else None}
