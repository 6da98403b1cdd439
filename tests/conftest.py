"""Shared fixtures: the tiny preset, and a tiny base checkpoint built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

# Tests never reach a hub and never log to W&B.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["WANDB_MODE"] = "disabled"

REPO = Path(__file__).resolve().parent.parent


def tiny_config(overrides: list[str] | None = None) -> dict:
    from pipeline.common.config import compose

    return compose(["+experiment=tiny", *(overrides or [])])


def write_params(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def tiny_raw() -> dict:
    return tiny_config()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """artifacts/base of the tiny preset, built by the real stage entry point."""
    from pipeline import base

    tmp = tmp_path_factory.mktemp("tiny")
    params = write_params(tmp / "params.yaml", tiny_config())
    base.main(["--params", str(params), "--out", str(tmp / "base")])
    return tmp / "base"
