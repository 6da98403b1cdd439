"""Check a rung directory before using it: files present, weights as the build wrote them."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.common.assets import AssetError, sha256_file

REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "pruning_report.json")


def verify_rung(rung_dir: str | Path) -> dict:
    """Return the rung's pruning report; raise AssetError if anything is missing or altered."""
    rung_dir = Path(rung_dir)
    if not rung_dir.is_dir():
        raise AssetError(f"rung directory {rung_dir} does not exist: run `dvc repro` to build the ladder")
    missing = [f for f in REQUIRED if not (rung_dir / f).exists()]
    if missing:
        raise AssetError(f"rung {rung_dir} is incomplete: missing {missing}")
    report = json.loads((rung_dir / "pruning_report.json").read_text())
    expected = report.get("weights_sha256", {})
    for name, digest in expected.items():
        actual = sha256_file(rung_dir / name)
        if actual != digest:
            raise AssetError(
                f"rung {rung_dir}: {name} has sha256 {actual}, but the build recorded {digest}; "
                "the checkpoint is corrupt or was modified: rebuild it with `dvc repro`"
            )
    return report
