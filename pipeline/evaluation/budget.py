"""Per-task item caps set by tokens, so the evaluation budget buys the most queries.

Scoring cost is tokens, not items: a HellaSwag item (context and four long
endings) costs ~4x an ARC-Easy one. A task takes items in hash order while the
scored tokens of the items taken so far fit its token budget, i.e. its cap is
its budget divided by its mean tokens per item. Cheap tasks so give more items,
and an equal budget per task keeps every task represented (`min_items` is a
floor for the rare task whose items are each larger than its budget allows).

Taking a prefix of one fixed order, and stopping at the first item that does
not fit, makes the result monotone: a bigger budget or cap is a superset.
"""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


def take_within_budget(ordered: Iterable[T], cost: Callable[[T], int], budget: int | None,
                       min_items: int = 0, cap: int | None = None) -> list[tuple[T, int]]:
    """The longest prefix of `ordered` whose summed cost fits `budget` (at least `min_items`, at most
    `cap`), with each element's cost. `cost` is called once per element taken, plus one."""
    taken: list[tuple[T, int]] = []
    spent = 0
    for x in ordered:
        if cap is not None and len(taken) >= cap:
            break
        c = cost(x)
        if budget is not None and len(taken) >= min_items and spent + c > budget:
            break
        taken.append((x, c))
        spent += c
    return taken
