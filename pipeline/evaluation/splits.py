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
