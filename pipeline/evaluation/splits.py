"""Stable splits: an item's split is a function of its id alone.

`unit_hash(salt, id)` maps an id to a number in [0, 1) via sha256; the split is
the fraction bucket it falls in. Adding, removing or reordering other items
never moves an item, and raising a cap only adds items (caps take items in
hash order too, so a bigger cap is a superset of a smaller one).
"""

from __future__ import annotations

import hashlib

SPLITS = ("router_train", "calibration", "test")


def unit_hash(salt: str, key: str) -> float:
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(item_id: str, fractions: dict[str, float], salt: str) -> str:
    """The split whose cumulative-fraction bucket holds `unit_hash(salt, item_id)`."""
    u = unit_hash(salt, item_id)
    edge = 0.0
    for name in SPLITS:
        edge += fractions[name]
        if u < edge:
            return name
    return SPLITS[-1]  # float round-off at the top edge


def take_in_hash_order(ids: list[str], cap: int | None, salt: str) -> list[str]:
    """A deterministic, cap-monotone sample: sort by hash, keep the first `cap`."""
    ordered = sorted(ids, key=lambda i: unit_hash(salt + "/order", i))
    return ordered if cap is None else ordered[:cap]


def empty_split_problem(records: list[dict], caps: dict[str, int | None], fractions: dict[str, float]) -> str | None:
    """Why a task set cannot feed the later stages, naming the caps and fractions to change; None if it can.

    Router and cascade fit on router_train, choose thresholds on calibration and report on test:
    each split needs queries, and every configured task needs items."""
    per_task = {t: 0 for t in caps}
    per_split = {s: 0 for s in SPLITS}
    for r in records:
        per_task[r["task"]] = per_task.get(r["task"], 0) + 1
        per_split[r["split"]] = per_split.get(r["split"], 0) + 1
    caps_text = ", ".join(f"data.tasks.{t}.cap={c}" for t, c in caps.items())
    no_items = [t for t, n in per_task.items() if n == 0]
    if no_items:
        return (f"tasks {no_items} have no items ({caps_text}); raise their caps or remove them from data.tasks")
    empty = [s for s in SPLITS if per_split[s] == 0]
    if empty:
        return (f"the {', '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty: {len(records)} items "
                f"split as {per_split} by " + ", ".join(f"data.splits.{s}={fractions[s]:g}" for s in SPLITS)
                + f"; raise {', '.join(f'data.splits.{s}' for s in empty)} or the caps ({caps_text})")
    return None
