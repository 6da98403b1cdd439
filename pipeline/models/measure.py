"""Measured cost on this machine: latency, throughput, peak memory, size on disk.

Latency: one forward pass over a prompt of fixed length (batch 1, no cache), the
median of `repeats` runs after `warmup` runs. Throughput: tokens per second of
batched forward passes (batch x length tokens per pass), median over repeats.
Peak memory: on a GPU, the most accelerator memory torch allocated (`max_memory_allocated`,
summed over the GPUs it used); on the CPU, the process's maximum resident set size (one stage =
one rung = one process, so it covers loading the rung and every measurement above).
Timings synchronise the device first and last, so a GPU's queued kernels are inside the interval.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn

from pipeline.common.device import peak_memory, peak_rss_mb  # noqa: F401  (re-exported for stages)


def synchronize(model: nn.Module) -> None:
    """Wait for the model's device to finish its queued work (a no-op on the CPU)."""
    dev = next(model.parameters()).device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _clock(model: nn.Module) -> float:
    synchronize(model)
    return time.perf_counter()


@torch.no_grad()
def _median_seconds(model: nn.Module, ids: torch.Tensor, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        model(input_ids=ids, use_cache=False)
    times = []
    for _ in range(repeats):
        t = _clock(model)
        model(input_ids=ids, use_cache=False)
        times.append(_clock(model) - t)
    return statistics.median(times)


def measure_speed(model: nn.Module, vocab: int, prompt_lengths: list[int], batch: int, batch_len: int,
                  warmup: int, repeats: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)  # ids drawn on the CPU (same ids on any device), then moved
    dev = next(model.parameters()).device
    latency = {}
    for n in prompt_lengths:
        ids = torch.randint(0, vocab, (1, n), generator=g).to(dev)
        latency[str(n)] = 1000 * _median_seconds(model, ids, warmup, repeats)
    ids = torch.randint(0, vocab, (batch, batch_len), generator=g).to(dev)
    secs = _median_seconds(model, ids, warmup=1, repeats=max(1, repeats // 2))
    return {"latency_ms": latency, "throughput_tokens_per_s": batch * batch_len / secs,
            "throughput_shape": [batch, batch_len], "threads": torch.get_num_threads()}


def checkpoint_bytes(rung_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(rung_dir).glob("*.safetensors"))


@torch.no_grad()
def time_forward(model: nn.Module, ids: torch.Tensor, logits_to_keep: int) -> float:
    """Milliseconds of one forward pass (no cache), logits only for the last `logits_to_keep` positions."""
    t = _clock(model)
    model(input_ids=ids, use_cache=False, logits_to_keep=logits_to_keep)
    return 1000 * (_clock(model) - t)


@torch.no_grad()
def time_decode(model: nn.Module, prompt: torch.Tensor, tokens: int) -> float:
    """Milliseconds per generated token: prefill `prompt` (not timed), then `tokens` greedy steps of
    batch 1 with the KV cache (timed)."""
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    t = _clock(model)
    for _ in range(tokens):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return 1000 * (_clock(model) - t) / tokens
