"""The architecture a model source declares, read before anything heavy is loaded.

`base` checks it against `architecture.SUPPORTED` first, so an unsupported model (a GPT-2
directory, a Gemma GGUF) fails in well under a second instead of after loading and converting
gigabytes. What is read: a random source's `model_type`; a Hugging Face directory's
`config.json`; a GGUF file's `general.architecture`, parsed from the header only (the `gguf`
package's reader parses every tokenizer string first: 7 s on the 98 MB default); a hub model's
`config.json`, when it can be fetched. A source whose declaration cannot be read cheaply (a hub
GGUF, an unreachable hub) is checked on the loaded model's config instead.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from pipeline.common.assets import packaged_file
from pipeline.common.config import HubSource, LocalSource, PackageSource, RandomSource

# GGUF metadata value types -> struct format of a scalar (8: string, 9: array are handled apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def declared_model_type(src) -> tuple[str | None, str]:
    """(model_type or None when it cannot be read cheaply, where it was read)."""
    if isinstance(src, RandomSource):
        return src.model_type, "model.source.model_type"
    if isinstance(src, HubSource):
        return _hub_model_type(src)
    if isinstance(src, PackageSource):
        path = packaged_file(src.module, src.file, src.distribution)
    else:
        assert isinstance(src, LocalSource)
        path = Path(src.path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return _config_model_type(path / "config.json"), str(path / "config.json")
    if path.is_file() and path.suffix == ".gguf":
        return gguf_architecture(path), f"{path} (general.architecture)"
    return None, str(path)  # missing or malformed: the loader names the problem


def _config_model_type(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None  # the loader reports a broken config.json


def _hub_model_type(src: HubSource) -> tuple[str | None, str]:
    where = f"{src.repo_id}@{src.revision}"
    if src.gguf_file:
        return None, where
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(src.repo_id, "config.json", revision=src.revision)
    except Exception:  # offline or missing: load_base says what to do instead
        return None, where
    return _config_model_type(Path(path)), f"{where}/config.json"


def gguf_architecture(path: str | Path) -> str | None:
    """`general.architecture` from a GGUF header (v2/v3), reading only the metadata before it."""
    with open(path, "rb") as fh:
        try:
            magic, version = fh.read(4), struct.unpack("<I", fh.read(4))[0]
            if magic != b"GGUF" or version < 2:
                return None
            _n_tensors, n_kv = struct.unpack("<QQ", fh.read(16))
            for _ in range(n_kv):
                key = _string(fh)
                kind = struct.unpack("<I", fh.read(4))[0]
                if key == "general.architecture" and kind == 8:
                    return _string(fh)
                _skip(fh, kind)
        except (struct.error, UnicodeDecodeError, ValueError):
            return None  # truncated or corrupt: the loader reports it
    return None


def _string(fh) -> str:
    n = struct.unpack("<Q", fh.read(8))[0]
    data = fh.read(n)
    if len(data) != n:
        raise ValueError("truncated string")
    return data.decode("utf-8")


def _skip(fh, kind: int) -> None:
    if kind == 8:
        fh.seek(struct.unpack("<Q", fh.read(8))[0], 1)
    elif kind == 9:
        item, n = struct.unpack("<IQ", fh.read(12))
        if item in _SCALARS:
            fh.seek(n * struct.calcsize("<" + _SCALARS[item]), 1)
        else:
            for _ in range(n):
                _skip(fh, item)
    elif kind in _SCALARS:
        fh.seek(struct.calcsize("<" + _SCALARS[kind]), 1)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")
