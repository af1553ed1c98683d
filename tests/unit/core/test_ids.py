"""core.ids: ids made back to back sort in the order they were made."""

from __future__ import annotations

from core.ids import sortable_id


def test_ids_made_in_the_same_millisecond_still_sort_in_order() -> None:
    ids = [sortable_id("x_", 4) for _ in range(1000)]  # far more than one per millisecond
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(i.startswith("x_") and len(i) == 2 + 12 + 8 for i in ids)
