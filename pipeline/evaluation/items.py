"""The task set file (`artifacts/data/tasks.jsonl`) read strictly: every line checked, every error
naming the file and line, and an empty file refused before any model is loaded."""

from __future__ import annotations

from pathlib import Path

from pipeline.common.assets import AssetError
from pipeline.common.formats import read_jsonl
from pipeline.evaluation.splits import SPLITS

ITEM_KEYS = ("id", "task", "context", "choices", "gold", "split")


def item_problem(it: dict) -> str | None:
    """What is wrong with one task item, or None."""
    for key in ("id", "task", "context"):
        if not isinstance(it[key], str):
            return f"{key} must be a string, got {type(it[key]).__name__}"
    choices = it["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        return "choices must be a list of at least 2 strings"
    gold = it["gold"]
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        return f"gold must be an index into the {len(choices)} choices, got {gold!r}"
    if it["split"] not in SPLITS:
        return f"split {it['split']!r} is not one of {list(SPLITS)}"
    return None


def read_items(path: str | Path) -> list[dict]:
    path = Path(path)
    items = read_jsonl(path, ITEM_KEYS, item_problem)
    if not items:
        raise AssetError(f"{path} holds no task items: rebuild it with `dvc repro data` (check data.tasks caps)")
    return items
