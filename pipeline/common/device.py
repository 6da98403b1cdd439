"""Which device a stage runs on (`model.device`), and the peak memory it used there.

`model.device: auto` is the first CUDA GPU when torch sees one, else the CPU. Asking for
`cuda[:N]` on a machine without it fails at stage start (`stage.begin` -> `resolve_device`),
naming the key and what this machine has, before any model loads.

Peak memory, as every stage reports it (`Stage.done`, its W&B summary): on a GPU: the most memory torch allocated on the accelerator (`torch.cuda.max_memory_allocated`,
summed over the GPUs this process used), kind 'cuda'. Otherwise: the process's peak resident set
size, kind 'rss'. Never imports torch: a stage that did not need it reports RSS without paying
for the import. The figure is noisy (allocator, threads): keep it out of hashed outputs.
"""

from __future__ import annotations

import re
import resource
import sys


class DeviceError(ValueError):
    """`model.device` names a device this machine does not have."""


def available_devices() -> list[str]:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu"] + [f"cuda:{i}" for i in range(n)]


def resolve_device(spec: str):
    """`auto|cpu|cuda|cuda:N` -> a torch.device this machine has; DeviceError otherwise."""
    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec):
        raise DeviceError(f"model.device={spec}: allowed: auto, cpu, cuda, cuda:N (N a GPU index)")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    have = ", ".join(available_devices())
    if not torch.cuda.is_available():
        raise DeviceError(f"model.device={spec}: torch sees no CUDA device on this machine (torch "
                          f"{torch.__version__}, CUDA build {torch.version.cuda}); available: {have}. "
                          "Use model.device=cpu or auto.")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= torch.cuda.device_count():
        raise DeviceError(f"model.device={spec}: this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s); available: {have}")
    return torch.device("cuda", index)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_memory() -> tuple[float, str]:
    """(megabytes, kind), kind 'cuda' or 'rss'."""
    t = sys.modules.get("torch")
    if t is not None and t.cuda.is_available() and t.cuda.is_initialized():
        mb = sum(t.cuda.max_memory_allocated(i) for i in range(t.cuda.device_count())) / 2**20
        if mb > 0:
            return mb, "cuda"
    return peak_rss_mb(), "rss"
