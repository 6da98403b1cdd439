"""Load a causal LM the way the config says (`model.dtype`, `model.device`), and nothing else does.

Every stage that loads or places a model goes through `load_causal_lm` / `to_device`: weights
from safetensors only, in the configured dtype, on the configured device, in eval mode. It is
also the seam tests record: they wrap `place` to see the dtype and device of every model a stage
loads (tests/test_device_dtype.py), so a stage that forces float32 or the CPU fails a test.

Device names resolve in `pipeline/common/device.py` (`auto`: CUDA when torch sees a GPU); a
requested GPU that is missing fails at stage start, before this module is used.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from torch import nn

from pipeline.common.device import DeviceError, resolve_device  # noqa: F401  (DeviceError re-exported)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# safetensors header dtype codes -> config names
STORED = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def place(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model onto `device` (the one call tests wrap to record dtype and device)."""
    return model.to(device)


def to_device(model: nn.Module, model_cfg) -> nn.Module:
    """`model` on the configured device, in eval mode."""
    return place(model, resolve_device(model_cfg.device)).eval()


def load_causal_lm(path: str | Path, model_cfg, dtype: str | None = None) -> nn.Module:
    """A causal LM checkpoint directory in `model.dtype` (or `dtype`) on `model.device`, eval mode.

    On a GPU the weights load straight onto it (`device_map`), so an 8B model never sits in host
    memory whole; on the CPU they load in place."""
    from transformers import AutoModelForCausalLM

    device = resolve_device(model_cfg.device)
    kw = {"device_map": str(device)} if device.type == "cuda" else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype or model_cfg.dtype],
                                                 use_safetensors=True, **kw)
    return place(model, device).eval()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def stored_dtypes(ckpt_dir: str | Path) -> dict[str, int]:
    """How many tensors of each dtype the checkpoint's safetensors file(s) hold, read from their
    headers (no tensor is loaded). Sharded checkpoints: every `*.safetensors` file counts."""
    counts: dict[str, int] = {}
    files = sorted(Path(ckpt_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{ckpt_dir} holds no .safetensors file")
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                d = STORED.get(meta["dtype"], meta["dtype"].lower())
                counts[d] = counts.get(d, 0) + 1
    return counts


def stored_dtype(ckpt_dir: str | Path) -> str:
    """The one dtype the checkpoint stores, or e.g. 'mixed (bfloat16: 40, float32: 2)'."""
    counts = stored_dtypes(ckpt_dir)
    if len(counts) == 1:
        return next(iter(counts))
    return "mixed (" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ")"
