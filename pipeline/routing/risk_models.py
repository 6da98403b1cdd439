"""Risk models: query -> per rung, the risk of answering with the rung instead of dense.

The accuracy drop of a routing policy against dense is the mean over queries of harm - help, where
*harm* is 1[rung wrong, dense right] and *help* is 1[rung right, dense wrong]. So the risk that
matters is the expected gap P(harm) - P(help) (`router.risk: gap`, the default): a rung that is
right where dense is right costs nothing, whatever its absolute accuracy, and on a task where
dense is no better than the rung (two-choice items near chance) harm and help cancel. With
`router.risk: harm` the router predicts P(harm) alone, which ignores help. For the gap, a model
is fitted to 2C binary targets (harm per candidate, then help per candidate) and the risk is the
difference of its two halves (`risk_targets` / `risk_of`).

Families (each `fit(x, task, y)` / `predict(x, task)`, x [N, D] query features, task [N] index
into the known tasks (-1: unknown), y [N, R] harm of each candidate rung):
- `base_rate`: each rung's harm rate on router-train (the reference every model must beat);
- `task_rate`: per-task rates shrunk towards the global rate (empirical Bayes: a beta prior per
  rung whose strength comes from the spread of the task rates, method of moments);
- `knn:<k>`: the k most similar router-train queries (cosine on the features), their harm rate
  shrunk towards the task rate with a pseudo-count of 5;
- `logistic:<l2>`: L2-penalised logistic regression on the features' top 64 principal components
  (standardised) + task one-hot, fitted by Newton's method in float64 (no library beyond numpy);
- `mlp`: a two-layer MLP on the same inputs (torch, one thread, seeded, epochs by early stopping).
`select` compares them by K-fold cross-validated log-loss on router-train and keeps the best.
Everything a model needs at serving time is in `state()` (arrays, saved as safetensors) and
`config()` (JSON); `restore` rebuilds it.
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-6
KNN_PSEUDO_COUNT = 5.0


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean()) if y.size else float("nan")


RISKS = ("gap", "harm")


def risk_targets(correct: np.ndarray, candidates: list[int], kind: str) -> np.ndarray:
    """What a risk model is fitted to, from correct [N, R] (column 0: dense): harm [N, C] of each
    candidate rung, then (kind gap) its help [N, C], as floats."""
    if kind not in RISKS:
        raise ValueError(f"unknown router risk '{kind}'; allowed: {', '.join(RISKS)}")
    dense, rung = correct[:, [0]], correct[:, candidates]
    harm = ~rung & dense
    return (harm if kind == "harm" else np.concatenate([harm, rung & ~dense], axis=1)).astype(np.float64)


def risk_of(p: np.ndarray, kind: str) -> np.ndarray:
    """The routing risk [N, C] from a model's outputs: P(harm), or P(harm) - P(help) for the gap."""
    if kind == "harm":
        return p
    c = p.shape[1] // 2
    return p[:, :c] - p[:, c:]


def one_hot(task: np.ndarray, n_tasks: int) -> np.ndarray:
    out = np.zeros((len(task), n_tasks))
    known = task >= 0
    out[np.nonzero(known)[0], task[known]] = 1.0
    return out


class BaseRate:
    name = "base_rate"

    def fit(self, x, task, y):
        self.rate = (y.sum(0) + 0.5) / (len(y) + 1.0)
        return self

    def predict(self, x, task):
        return np.broadcast_to(self.rate, (len(task), len(self.rate))).copy()

    def state(self):
        return {"rate": self.rate}

    def config(self):
        return {}

    @classmethod
    def restore(cls, config, state, n_tasks):
        m = cls()
        m.rate = state["rate"]
        return m


class TaskRate:
    """Per-task harm rate with empirical-Bayes shrinkage; unknown tasks get the global rate."""

    name = "task_rate"

    def __init__(self, n_tasks: int):
        self.n_tasks = n_tasks

    def fit(self, x, task, y):
        n_rungs = y.shape[1]
        glob = (y.sum(0) + 0.5) / (len(y) + 1.0)
        rates = np.empty((self.n_tasks + 1, n_rungs))
        rates[-1] = glob
        counts = np.asarray([(task == t).sum() for t in range(self.n_tasks)], dtype=np.float64)
        hits = np.stack([y[task == t].sum(0) for t in range(self.n_tasks)]) if self.n_tasks else np.zeros((0, n_rungs))
        seen = counts > 0
        strength = np.full(n_rungs, 1e4)
        if seen.sum() >= 2:
            p = hits[seen] / counts[seen, None]
            w = counts[seen] / counts[seen].sum()
            between = (w[:, None] * (p - glob) ** 2).sum(0)  # observed spread of task rates
            sampling = (w[:, None] * glob * (1 - glob) / counts[seen, None]).sum(0)  # its part due to noise
            tau2 = np.maximum(between - sampling, 1e-8)
            strength = np.clip(glob * (1 - glob) / tau2 - 1.0, 1.0, 1e4)
        rates[:-1] = (hits + strength * glob) / (counts[:, None] + strength)
        self.rates, self.strength = rates, strength
        return self

    def predict(self, x, task):
        return self.rates[np.where(task >= 0, task, self.n_tasks)]

    def state(self):
        return {"rates": self.rates, "strength": self.strength}

    def config(self):
        return {}

    @classmethod
    def restore(cls, config, state, n_tasks):
        m = cls(n_tasks)
        m.rates, m.strength = state["rates"], state["strength"]
        return m


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class KNN:
    name = "knn"

    def __init__(self, n_tasks: int, k: int):
        self.n_tasks, self.k = n_tasks, int(k)

    def fit(self, x, task, y):
        self.train_x, self.train_y = _unit(x), np.asarray(y, dtype=np.float64)
        self.prior = TaskRate(self.n_tasks).fit(x, task, y)
        return self

    def predict(self, x, task):
        k = min(self.k, len(self.train_x))
        sims = _unit(x) @ self.train_x.T
        nbrs = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # ties: the earlier training query
        hits = self.train_y[nbrs].sum(1)
        return (hits + KNN_PSEUDO_COUNT * self.prior.predict(x, task)) / (k + KNN_PSEUDO_COUNT)

    def state(self):
        return {"train_x": self.train_x, "train_y": self.train_y, **{f"prior.{k}": v for k, v in self.prior.state().items()}}

    def config(self):
        return {"k": self.k, "pseudo_count": KNN_PSEUDO_COUNT, "similarity": "cosine"}

    @classmethod
    def restore(cls, config, state, n_tasks):
        m = cls(n_tasks, config["k"])
        m.train_x, m.train_y = state["train_x"], state["train_y"]
        m.prior = TaskRate.restore({}, {k[6:]: v for k, v in state.items() if k.startswith("prior.")}, n_tasks)
        return m


LOGISTIC_COMPONENTS = 64  # principal components of the features the logistic model sees


def _design(x, task, n_tasks, mean, basis, scale):
    z = ((np.asarray(x, dtype=np.float64) - mean) @ basis.T) / scale
    return np.concatenate([z, one_hot(task, n_tasks), np.ones((len(z), 1))], axis=1)


def principal_basis(x: np.ndarray, k: int) -> np.ndarray:
    """[min(k, D, N), D] the top principal directions of centred x, each signed so that its largest
    coordinate is positive (SVD's sign is arbitrary; this makes it reproducible)."""
    vals, vecs = np.linalg.eigh(x.T @ x)  # D x D: far cheaper than an SVD of N x D
    vt = vecs[:, np.argsort(-vals, kind="stable")[:min(k, x.shape[0], x.shape[1])]].T
    flip = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
    return vt * np.where(flip == 0, 1.0, flip)[:, None]


def fit_logistic(z: np.ndarray, y: np.ndarray, l2: float, iters: int = 50, tol: float = 1e-9) -> np.ndarray:
    """Weights [D] of an L2-penalised logistic regression (last column of z: the unpenalised
    intercept), by Newton's method: min sum log-loss + l2/2 |w[:-1]|^2."""
    d = z.shape[1]
    penalty = np.full(d, l2)
    penalty[-1] = 0.0
    w = np.zeros(d)
    rate = (y.sum() + 0.5) / (len(y) + 1.0)
    w[-1] = math.log(rate / (1 - rate))
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(d)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < tol:
            break
    return w


class Logistic:
    """L2-penalised logistic regression per rung on the features' top principal components
    (standardised) + task one-hot: a few hundred router-train queries cannot support hundreds of
    raw embedding weights, and Newton's method on 64 + tasks inputs takes a second, not a minute."""

    name = "logistic"

    def __init__(self, n_tasks: int, l2: float):
        self.n_tasks, self.l2 = n_tasks, float(l2)

    def fit(self, x, task, y):
        x = np.asarray(x, dtype=np.float64)
        self.mean = x.mean(0)
        self.basis = principal_basis(x - self.mean, LOGISTIC_COMPONENTS)
        self.scale = np.maximum(((x - self.mean) @ self.basis.T).std(0), 1e-6)
        z = _design(x, task, self.n_tasks, self.mean, self.basis, self.scale)
        self.weights = np.stack([fit_logistic(z, y[:, r], self.l2) for r in range(y.shape[1])], axis=1)
        return self

    def predict(self, x, task):
        return 1 / (1 + np.exp(-(_design(x, task, self.n_tasks, self.mean, self.basis, self.scale) @ self.weights)))

    def state(self):
        return {"weights": self.weights, "mean": self.mean, "basis": self.basis, "scale": self.scale}

    def config(self):
        return {"l2": self.l2, "components": int(self.basis.shape[0]),
                "inputs": "top principal components of the features (standardised), task one-hot, intercept"}

    @classmethod
    def restore(cls, config, state, n_tasks):
        m = cls(n_tasks, config["l2"])
        m.weights, m.mean, m.basis, m.scale = state["weights"], state["mean"], state["basis"], state["scale"]
        return m


class MLP:
    """The two-layer MLP of `router_model.py` on features + task one-hot, one sigmoid per rung."""

    name = "mlp"

    def __init__(self, n_tasks: int, hidden_dim: int, epochs: int, lr: float, weight_decay: float, seed: int):
        self.n_tasks, self.hidden_dim, self.epochs = n_tasks, hidden_dim, epochs
        self.lr, self.weight_decay, self.seed = lr, weight_decay, seed
        self.training: dict = {}

    def _inputs(self, x, task):
        import torch

        return torch.as_tensor(np.concatenate([np.asarray(x, dtype=np.float64), one_hot(task, self.n_tasks)], 1),
                               dtype=torch.float32)

    def fit(self, x, task, y):
        import torch

        from pipeline.routing.router_model import train_router

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same sums in the same order on every machine
        try:
            self.net, self.training = train_router(self._inputs(x, task), y, self.hidden_dim, self.epochs, self.lr,
                                                   self.weight_decay, self.seed)
        finally:
            torch.set_num_threads(threads)
        return self

    def predict(self, x, task):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.net.predict(self._inputs(x, task))
        finally:
            torch.set_num_threads(threads)

    def state(self):
        return {k: v.detach().numpy() for k, v in self.net.state_dict().items()}

    def config(self):
        return {"hidden_dim": self.hidden_dim, "in_dim": int(self.net.mean.shape[0]),
                "n_rungs": int(self.net.body[-1].out_features), "training": self.training}

    @classmethod
    def restore(cls, config, state, n_tasks):
        import torch

        from pipeline.routing.router_model import RouterNet

        m = cls(n_tasks, config["hidden_dim"], 0, 0.0, 0.0, 0)
        m.net = RouterNet(config["in_dim"], config["hidden_dim"], config["n_rungs"])
        m.net.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        m.net.eval()
        return m


def candidate_names(rc) -> list[str]:
    """The router config's families, with one candidate per knn k and per logistic strength."""
    names = []
    for fam in rc.models:
        if fam == "knn":
            names += [f"knn:{k}" for k in rc.knn_k]
        elif fam == "logistic":
            names += [f"logistic:{l2:g}" for l2 in rc.logistic_l2]
        else:
            names.append(fam)
    return names


def make(name: str, n_tasks: int, rc, seed: int):
    fam, _, arg = name.partition(":")
    if fam == "base_rate":
        return BaseRate()
    if fam == "task_rate":
        return TaskRate(n_tasks)
    if fam == "knn":
        return KNN(n_tasks, int(arg))
    if fam == "logistic":
        return Logistic(n_tasks, float(arg))
    if fam == "mlp":
        return MLP(n_tasks, rc.hidden_dim, rc.epochs, rc.lr, rc.weight_decay, seed)
    raise ValueError(f"unknown risk model '{name}'; allowed: base_rate, task_rate, knn:<k>, logistic:<l2>, mlp")


RESTORE = {"base_rate": BaseRate, "task_rate": TaskRate, "knn": KNN, "logistic": Logistic, "mlp": MLP}


def folds_of(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold index per query: a seeded permutation cut into `folds` near-equal parts."""
    out = np.empty(n, dtype=np.int64)
    out[np.random.default_rng([seed, 0xF01D]).permutation(n)] = np.arange(n) % folds
    return out


def cross_validate(names: list[str], x, task, y, n_tasks: int, rc, folds: int, seed: int) -> tuple[dict, dict]:
    """Out-of-fold predictions [N, R] and their log-loss, per candidate."""
    from tqdm import tqdm

    fold = folds_of(len(y), min(folds, len(y)), seed)
    oof = {name: np.zeros(y.shape) for name in names}
    for name in tqdm(names, desc="router: cross-validation", unit="model"):
        for f in range(fold.max() + 1):
            tr, va = fold != f, fold == f
            model = make(name, n_tasks, rc, seed).fit(x[tr], task[tr], y[tr])
            oof[name][va] = model.predict(x[va], task[va])
    return {name: log_loss(p, y) for name, p in oof.items()}, oof


def save_router(out_dir, model, meta: dict) -> None:
    """`router.safetensors` (the model's arrays) + `router.json` (everything else): no pickle."""
    import json
    from pathlib import Path

    from safetensors.numpy import save_file

    state = {k: np.ascontiguousarray(v) for k, v in model.state().items()}
    save_file(state or {"empty": np.zeros(1)}, str(Path(out_dir) / "router.safetensors"))
    (Path(out_dir) / "router.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_router(router_dir):
    """(model, meta) as `save_router` wrote them."""
    import json
    from pathlib import Path

    from safetensors.numpy import load_file

    router_dir = Path(router_dir)
    meta = json.loads((router_dir / "router.json").read_text())
    state = load_file(str(router_dir / "router.safetensors"))
    return restore_router(meta, state, router_dir / "router.json"), meta


def restore_router(meta: dict, state: dict, source="router.json"):
    """The risk model from `router.json`'s content and the weights' arrays (the runtime passes the
    copy of the config it checked, not a second read)."""
    fam = meta["model"]["family"]
    if fam not in RESTORE:
        raise ValueError(f"{source}: unknown model family '{fam}'; allowed: {sorted(RESTORE)}")
    return RESTORE[fam].restore(meta["model"], state, len(meta["tasks"]))
