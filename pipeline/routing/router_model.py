"""The learned router: query features -> P(rung answers correctly), one output per rung.

A two-layer MLP over standardised features with a sigmoid per rung, trained with binary
cross-entropy on the router-train split (full batch, AdamW, seeded, epochs by early stopping). The decision rule:
the cheapest rung whose predicted success is at least `threshold`; dense if none is.

Saved as `router.safetensors` (weights and the feature standardisation) plus `router.json`
(architecture, rung order, costs, threshold): no pickle, loadable anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

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


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def route(probs: np.ndarray, cost: np.ndarray, threshold: float, fallback: int = 0) -> np.ndarray:
    """Per query: the cheapest rung with predicted success >= threshold, else `fallback` (dense)."""
    by_cost = np.argsort(cost, kind="stable")
    ok = probs[:, by_cost] >= threshold
    return np.where(ok.any(1), by_cost[ok.argmax(1)], fallback)


def candidate_thresholds(probs: np.ndarray) -> np.ndarray:
    """Every threshold that changes a decision on these probabilities, each placed halfway between
    neighbouring values (so a tiny float difference at serving time cannot flip a decision), plus
    0 (always the cheapest rung) and a value above 1 (always dense)."""
    v = np.unique(probs)
    mids = (v[1:] + v[:-1]) / 2
    return np.concatenate([[0.0], mids, [1.0 + 1e-9]])


def save_router(out_dir: Path, net: RouterNet, meta: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out_dir / "router.safetensors"))
    (out_dir / "router.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_router(router_dir: str | Path) -> tuple[RouterNet, dict]:
    from safetensors.torch import load_file

    router_dir = Path(router_dir)
    meta = json.loads((router_dir / "router.json").read_text())
    a = meta["architecture"]
    net = RouterNet(a["in_dim"], a["hidden_dim"], a["n_rungs"])
    net.load_state_dict(load_file(str(router_dir / "router.safetensors")))
    return net.eval(), meta
