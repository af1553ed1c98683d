"""The arq internals GatehouseWorker relies on (workers/arq_compat.py) still have the shape it expects."""

from __future__ import annotations

import inspect

import arq
from arq.connections import RedisSettings
from arq.worker import Worker

from workers import arq_compat
from workers.runner import run_request
from workers.worker import GatehouseWorker


def test_arq_is_the_pinned_version() -> None:
    assert arq.VERSION == arq_compat.ARQ_VERSION, (
        f"arq {arq.VERSION} is installed; GatehouseWorker was checked against {arq_compat.ARQ_VERSION}: review "
        "workers/arq_compat.py and the overrides in workers/worker.py before changing the pin")


def test_methods_keep_their_names_and_parameters() -> None:
    for name, params in {**arq_compat.OVERRIDDEN, **arq_compat.CALLED}.items():
        method = getattr(Worker, name, None)
        assert method is not None, f"arq's Worker has no {name} any more"
        got = tuple(p for p in inspect.signature(method).parameters if p != "self")
        assert got == params, f"arq's Worker.{name}{got} changed (expected {params})"
        assert inspect.iscoroutinefunction(method) == inspect.iscoroutinefunction(getattr(GatehouseWorker, name))


def test_the_overrides_are_the_listed_ones() -> None:
    """Every arq method GatehouseWorker redefines is in the list (so the check above covers it)."""
    ours = {n for n, v in vars(GatehouseWorker).items()
            if callable(v) and n in vars(Worker) and not n.startswith("__")}  # __init__ only passes through
    assert ours == set(arq_compat.OVERRIDDEN)


async def test_attributes_exist_after_init() -> None:
    w = Worker(functions=[run_request], redis_settings=RedisSettings(), max_jobs=4, queue_read_limit=10)
    missing = [a for a in arq_compat.ATTRIBUTES if a != "pool" and not hasattr(w, a)]
    assert not missing, f"arq's Worker no longer sets {missing}"
    assert isinstance(inspect.getattr_static(Worker, "pool"), property)
