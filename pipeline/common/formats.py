"""Strict readers for the pipeline's input files: each failure is one line naming the file.

JSON, JSONL (with the line), YAML (with line and column) and safetensors headers. The
safetensors check reads only the header and the file size, so stages run it on every weights file
they are about to load before any model is built: a truncated file, a corrupt header, or something
else (a pickle, a `torch.save` zip) under a `.safetensors` name fails naming the file instead of
as a bare "header too large" from deep inside a loader.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from collections.abc import Hashable
from typing import Any, Callable, Iterable

from pipeline.common.assets import AssetError

MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path} not found")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise AssetError(f"{path}: not valid UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise AssetError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None


def read_jsonl(path: str | Path, required: Iterable[str] = (),
               check: Callable[[dict], str | None] | None = None) -> list[dict]:
    """One JSON object per line (blank lines skipped); `required` keys must be on every line, and
    `check(obj)`, if given, returns what is wrong with a line (None when it is fine)."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path} not found")
    required = list(required)
    rows = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise AssetError(f"{path}:{n}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column "
                                 f"{exc.start + 1})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                what = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "nested too deep"
                raise AssetError(f"{path}:{n}: not valid JSON ({what})") from None
            if not isinstance(obj, dict):
                raise AssetError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in required if k not in obj]
            if missing:
                raise AssetError(f"{path}:{n}: missing key{'s' if len(missing) > 1 else ''} "
                                 f"{', '.join(map(repr, missing))}")
            problem = check(obj) if check else None
            if problem:
                raise AssetError(f"{path}:{n}: {problem}")
            rows.append(obj)
    return rows


def strict_yaml_load(text: str) -> Any:
    """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML keeps the
    last silently; DVC, which reads params.yaml with ruamel, refuses it)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, Hashable):
                    continue  # SafeLoader reports unhashable keys itself
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)


def yaml_error_line(path: str | Path, exc: Exception) -> str:
    """`<file>:<line>:<column>: not valid YAML (<problem>)`: one line, whatever PyYAML raised."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    return f"{where}: not valid YAML ({problem})"


def load_yaml(path: str | Path) -> Any:
    import yaml

    path = Path(path)
    try:
        return strict_yaml_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise AssetError(f"{path}: not valid UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except yaml.YAMLError as exc:
        raise AssetError(yaml_error_line(path, exc)) from None


def _sniff(head: bytes) -> str:
    """What a file that is not safetensors looks like, from its first bytes."""
    if head.startswith(b"PK\x03\x04"):
        return "; it is a zip archive, as torch.save writes (pickle inside)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "; it is a Python pickle"
    if head.startswith(b"GGUF"):
        return "; it is a GGUF file"
    if head.lstrip()[:1] in (b"{", b"["):
        return "; it looks like JSON text"
    return ""


def check_safetensors(path: str | Path) -> dict:
    """Check a safetensors file's structure from its header and size; return the header.

    Catches what the format can show without reading the tensors: a file that is not
    safetensors, a corrupt header, a tensor whose bytes run past the end (truncation) or a
    size that disagrees with the header. Bit flips inside tensor data need the sha256 check."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path} not found")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise AssetError(f"{path}: not a safetensors file ({size} bytes: empty or truncated)")
        n = int.from_bytes(head, "little")
        if n > MAX_SAFETENSORS_HEADER or n > size - 8:
            raise AssetError(f"{path}: not a safetensors file (its first 8 bytes announce a {n}-byte header in a "
                             f"{size}-byte file{_sniff(head)}); weights must be safetensors")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise AssetError(f"{path}: not a safetensors file (its header is not a JSON object: {exc}"
                         f"{_sniff(head)})") from None
    data_len = size - 8 - n
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in t["data_offsets"])
            nbytes = math.prod(int(d) for d in t["shape"]) * DTYPE_BYTES[t["dtype"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise AssetError(f"{path}: corrupt safetensors header (tensor {name!r}: {exc!r})") from None
        if stop - begin != nbytes or begin < 0:
            raise AssetError(f"{path}: corrupt safetensors header (tensor {name!r} has offsets {begin}..{stop} "
                             f"for {nbytes} bytes)")
        if stop > data_len:
            raise AssetError(f"{path}: truncated (tensor {name!r} ends at data byte {stop}, but the file holds "
                             f"{data_len} data bytes)")
        end = max(end, stop)
    if end != data_len:
        raise AssetError(f"{path}: corrupt safetensors file (the header covers {end} data bytes, the file holds "
                         f"{data_len})")
    return header
