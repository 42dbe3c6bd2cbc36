"""Start-up's objects are kept out of the cyclic collector's full passes."""

from __future__ import annotations

import gc

from chatd.server import freeze_startup_heap


def test_freeze_takes_startup_objects_out_of_every_generation() -> None:
    tables = [{"token": i} for i in range(50_000)]  # stands in for start-up's tables
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= len(tables)
        young = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
        assert id(tables) not in young and id(tables[-1]) not in young
        # A full pass now walks only what was made after start-up.
        assert len(gc.get_objects(2)) < len(tables)
    finally:
        gc.unfreeze()
