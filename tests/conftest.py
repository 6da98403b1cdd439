"""Shared fixtures: the tiny preset, and a tiny base checkpoint built once per session."""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
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


def run_tiny_graph(root: Path, overrides: list[str] | None = None, wandb_mode: str = "offline") -> list[str]:
    """Run every stage of dvc.yaml in `root` as DVC runs it: each stage's own `cmd` from dvc.yaml as
    DVC resolves it, with DVC_ROOT / DVC_STAGE / DVC_EXP_NAME set and W&B in `wandb_mode` (offline: runs in
    <root>/wandb), on the tiny preset plus `overrides`. Returns the stage names in the order they ran."""
    from dvc.repo import Repo

    write_params(root / "params.yaml", tiny_config(overrides))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    Repo.init(str(root), no_scm=True).close()
    with Repo(str(root)) as repo:
        stages = [(s.name, s.cmd) for s in repo.index.stages]
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    for k, v in {"WANDB_MODE": wandb_mode, "DVC_ROOT": str(root), "DVC_EXP_NAME": "exp-lineage",
                 "WANDB_DATA_DIR": str(root / ".wandb-data"), "WANDB_CACHE_DIR": str(root / ".wandb-cache"),
                 "WANDB_CONFIG_DIR": str(root / ".wandb-config")}.items():
        mp.setenv(k, v)
    try:
        for name, cmd in stages:
            words = shlex.split(cmd)
            assert words[:2] == ["bin/python", "-m"], cmd
            mp.setenv("DVC_STAGE", name)
            importlib.import_module(words[2]).main(words[3:])
    finally:
        mp.undo()
    return [n for n, _ in stages]


# The tiny graph with one rung: hidden-state router features (the tiny dense model is far cheaper
# than MiniLM here); the base names a Hub base model, for the model cards.
ONE_RUNG = ["~ladder.rungs.f80", "~ladder.rungs.wanda50", "~ladder.rungs.nm24",
            "model.base_model=HuggingFaceTB/SmolLM2-135M-Instruct", "router.features=hidden_state", "router.epochs=20"]


@pytest.fixture(scope="session")
def tiny_graph(tmp_path_factory) -> tuple[Path, list[str]]:
    """The tiny graph with one rung, run stage by stage as DVC runs it (`run_tiny_graph`).
    Returns the root and the stage names in the order they ran."""
    root = tmp_path_factory.mktemp("tiny_graph")
    return root, run_tiny_graph(root, ONE_RUNG)
