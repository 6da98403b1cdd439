"""Log-likelihood scoring, as lm-evaluation-harness defines it, with the context shared.

Multiple choice: the score of a choice is `sum log P(continuation tokens | context)`.
Tokenisation follows lm-eval's `_encode_pair`: encode `context + continuation`
whole and take the tokens after the context's own encoding (so a merge across
the boundary is attributed to the continuation), with no special tokens.

Efficiency: each item is one sequence `context, choice_1, ..., choice_n` with a
4D attention mask in which every choice sees the context and itself only, and
position ids that restart after the context for every choice. The context is
encoded once for all its choices; items are padded and batched together.
The result equals scoring each `context + choice` separately (a test checks).

Perplexity: non-overlapping blocks, each scored on its own (the first token of
a block is context only); `exp(total NLL / total predicted tokens)`, i.e.
token-weighted over the whole held-out set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm


@dataclass
class Encoded:
    context: list[int]
    continuations: list[list[int]]

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(c) for c in self.continuations)


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing context whitespace moves to the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def encode_item(tok, context: str, choices: list[str], max_len: int) -> Encoded:
    pairs = [encode_pair(tok, context, c) for c in choices]
    # The context encoding does not depend on the choice (the split is at the context's own tokens).
    ctx = pairs[0][0]
    conts = [p[1] if p[1] else [tok.eos_token_id] for p in pairs]
    over = len(ctx) + sum(len(c) for c in conts) - max_len
    if over > 0:  # keep the end of the context, as lm-eval truncates from the left
        ctx = ctx[over:]
    return Encoded(ctx, conts)


def _pack(batch: list[Encoded], pad_id: int, dtype: torch.dtype):
    T = max(e.length for e in batch)
    B = len(batch)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    allow = torch.zeros((B, T, T), dtype=torch.bool)
    spans = []  # per item: list of (start, end) of each continuation in the packed row
    for b, e in enumerate(batch):
        L = len(e.context)
        ids[b, :L] = torch.tensor(e.context)
        pos[b, :L] = torch.arange(L)
        allow[b, :L, :L] = torch.ones(L, L, dtype=torch.bool).tril()
        s, item_spans = L, []
        for c in e.continuations:
            n = len(c)
            ids[b, s:s + n] = torch.tensor(c)
            pos[b, s:s + n] = torch.arange(L, L + n)
            allow[b, s:s + n, :L] = True
            allow[b, s:s + n, s:s + n] = torch.ones(n, n, dtype=torch.bool).tril()
            item_spans.append((s, s + n))
            s += n
        idx = torch.arange(s, T)
        allow[b, idx, idx] = True  # padding sees itself only: no empty softmax rows
        spans.append(item_spans)
    mask = torch.zeros((B, 1, T, T), dtype=dtype).masked_fill(~allow[:, None], torch.finfo(dtype).min)
    return ids, pos, mask, spans


@torch.no_grad()
def score_choices(model: nn.Module, encoded: list[Encoded], batch_tokens: int = 4096,
                  desc: str = "score", progress: bool = True) -> list[dict]:
    """Per item: log-likelihood and greediness of every choice, and tokens processed."""
    dtype, device = next(model.parameters()).dtype, next(model.parameters()).device
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
    results: list[dict | None] = [None] * len(encoded)
    batches, cur = [], []
    for i in order:  # similar lengths together: little padding
        if cur and (len(cur) + 1) * encoded[i].length > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    with tqdm(total=len(encoded), desc=desc, unit="item", disable=not progress) as bar:
        for idxs in batches:
            batch = [encoded[i] for i in idxs]
            ids, pos, mask, spans = (t.to(device) if isinstance(t, torch.Tensor) else t
                                     for t in _pack(batch, pad, dtype))  # packed on the CPU, run on the model's device
            hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
            for b, (i, e) in enumerate(zip(idxs, batch)):
                L = len(e.context)
                # Token k of a continuation is predicted at the position before it; the first one
                # from the context's last position. Only those rows go through lm_head: most
                # tokens are context, so this skips most of the vocabulary projection.
                prev = torch.tensor([i for s, t in spans[b] for i in [L - 1] + list(range(s, t - 1))], device=device)
                # float64 log-softmax whatever the model's dtype: a bf16 model's logits are summed in full precision
                logp = head(hidden[b, prev]).double().log_softmax(-1)
                lls, greedy, k = [], [], 0
                for cont in e.continuations:
                    rows, target = logp[k:k + len(cont)], torch.tensor(cont, device=device)
                    lls.append(float(rows.gather(1, target[:, None]).sum()))
                    greedy.append(bool((rows.argmax(-1) == target).all()))
                    k += len(cont)
                results[i] = {"loglik": lls, "greedy": greedy, "tokens": e.length}
            bar.update(len(idxs))
    return results  # type: ignore[return-value]


def confidence(scores: list[float]) -> dict[str, float]:
    """Confidence signals from per-choice scores: softmax over the choices."""
    s = torch.tensor(scores, dtype=torch.float64)
    p = s.softmax(0)
    top = p.topk(min(2, len(p))).values
    ent = float(-(p * p.clamp_min(1e-300).log()).sum())
    return {"msp": float(top[0]), "margin": float(top[0] - top[1]) if len(top) > 1 else 1.0,
            "entropy": ent, "entropy_normalised": ent / math.log(len(p)) if len(p) > 1 else 0.0}


@torch.no_grad()
def perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 4, desc: str = "perplexity",
               progress: bool = True) -> dict:
    total, n = 0.0, 0
    device = next(model.parameters()).device
    for s in tqdm(range(0, len(blocks), batch_size), desc=desc, unit="batch", disable=not progress):
        x = blocks[s:s + batch_size].to(device)
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()  # cross-entropy in float32 at least
        total += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                             reduction="sum").item()
        n += x[:, 1:].numel()
    return {"perplexity": math.exp(total / n), "nll_per_token": total / n, "tokens_predicted": n}
