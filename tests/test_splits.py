"""Split assignment is a pure function of the item id: stable under additions."""

from __future__ import annotations

from collections import Counter

from pipeline.evaluation.splits import (
    SPLITS,
    assign_split,
    take_in_hash_order,
    unit_hash,
)

FRACTIONS = {"router_train": 0.5, "calibration": 0.25, "test": 0.25}


def test_adding_items_never_moves_existing_ones():
    ids = [f"task/{i}" for i in range(500)]
    before = {i: assign_split(i, FRACTIONS, "s") for i in ids}
    more = ids[::-1] + [f"other/{i}" for i in range(500)]  # reordered and extended
    after = {i: assign_split(i, FRACTIONS, "s") for i in more}
    assert all(after[i] == before[i] for i in ids)


def test_split_proportions_follow_fractions():
    counts = Counter(assign_split(f"x/{i}", FRACTIONS, "s") for i in range(20000))
    for name in SPLITS:
        assert abs(counts[name] / 20000 - FRACTIONS[name]) < 0.02


def test_salt_changes_assignment():
    ids = [f"x/{i}" for i in range(200)]
    a = [assign_split(i, FRACTIONS, "a") for i in ids]
    b = [assign_split(i, FRACTIONS, "b") for i in ids]
    assert a != b


def test_unit_hash_range_and_determinism():
    vals = [unit_hash("s", str(i)) for i in range(1000)]
    assert all(0.0 <= v < 1.0 for v in vals)
    assert vals == [unit_hash("s", str(i)) for i in range(1000)]


def test_bigger_cap_is_superset_and_order_independent():
    ids = [f"t/{i}" for i in range(300)]
    small = take_in_hash_order(ids, 50, "s")
    big = take_in_hash_order(list(reversed(ids)), 120, "s")
    assert len(small) == 50 and len(big) == 120
    assert set(small) <= set(big)
    assert take_in_hash_order(ids, None, "s") == take_in_hash_order(ids[::-1], None, "s")
