"""The micro-batcher behind the local embedding model: concurrent requests share one call, each gets its own
results in order; large requests are split, failures and cancellations stay with the requests they concern."""

from __future__ import annotations

import asyncio
import time

import pytest

from workers.microbatch import MicroBatcher


class Recorder:
    """A batch function that records each call's inputs and answers each input x with x * 10."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None):
        self.calls: list[list[int]] = []
        self.delay = delay
        self.fail_on = fail_on

    async def __call__(self, batch: list[int]) -> list[int]:
        self.calls.append(list(batch))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in batch:
            raise RuntimeError(f"input {self.fail_on} broke the batch")
        return [x * 10 for x in batch]


async def test_concurrent_requests_share_one_call_and_get_their_own_results() -> None:
    run = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=64, max_wait_s=0.05)
    a, b, c = await asyncio.gather(batcher.submit([1, 2, 3]), batcher.submit([4]), batcher.submit([5, 6]))
    assert (a, b, c) == ([10, 20, 30], [40], [50, 60])
    assert run.calls == [[1, 2, 3, 4, 5, 6]]  # one forward pass, inputs in arrival order
    assert (batcher.calls, batcher.items, batcher.waiting) == (1, 6, 0)


async def test_a_full_batch_runs_at_once_without_waiting_for_the_window() -> None:
    run = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=4, max_wait_s=30.0)
    t0 = time.monotonic()
    out = await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3, 4]))
    assert out == [[10, 20], [30, 40]] and time.monotonic() - t0 < 5.0
    assert run.calls == [[1, 2, 3, 4]]


async def test_a_lone_request_waits_for_the_window_then_runs() -> None:
    run = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=64, max_wait_s=0.05)
    t0 = time.monotonic()
    assert await batcher.submit([7]) == [70]
    assert time.monotonic() - t0 >= 0.045  # it waited for company (sleeps are never shorter than asked)
    zero: MicroBatcher[int, int] = MicroBatcher(run, max_items=64, max_wait_s=0.0)
    assert await zero.submit([8]) == [80]


async def test_a_request_larger_than_a_batch_is_split_in_order() -> None:
    run = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=4, max_wait_s=0.01)
    big, small = await asyncio.gather(batcher.submit(list(range(10))), batcher.submit([100]))
    assert big == [x * 10 for x in range(10)] and small == [1000]
    assert run.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 100]]  # first come, first served; no call over 4


async def test_requests_arriving_during_a_call_run_together_next() -> None:
    run = Recorder(delay=0.1)
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=64, max_wait_s=0.001)
    first = asyncio.create_task(batcher.submit([1]))
    await asyncio.sleep(0.03)  # the first call is running now
    rest = await asyncio.gather(*(batcher.submit([x]) for x in (2, 3, 4)))
    assert await first == [10] and rest == [[20], [30], [40]]
    assert run.calls == [[1], [2, 3, 4]]


async def test_a_failed_call_fails_only_the_requests_in_it() -> None:
    run = Recorder(fail_on=3)
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=2, max_wait_s=0.01)
    results = await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3, 4, 5]), batcher.submit([6]),
                                   return_exceptions=True)
    assert results[0] == [10, 20]
    assert isinstance(results[1], RuntimeError) and "input 3" in str(results[1])
    assert results[2] == [60]
    assert [3, 4] in run.calls and not any(5 in call for call in run.calls)  # the failed request's rest never ran
    assert await batcher.submit([9]) == [90]  # the batcher goes on


async def test_a_cancelled_request_loses_its_inputs_not_yet_run() -> None:
    run = Recorder(delay=0.05)
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=2, max_wait_s=0.001)
    doomed = asyncio.create_task(batcher.submit([1, 2, 3, 4, 5, 6]))
    await asyncio.sleep(0.02)  # its first two inputs are in a call
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert await batcher.submit([7]) == [70]
    assert run.calls == [[1, 2], [7]]
    assert batcher.waiting == 0


async def test_a_wrong_number_of_results_is_an_error_not_a_mismatch() -> None:
    async def short(batch: list[int]) -> list[int]:
        return batch[:-1]

    batcher: MicroBatcher[int, int] = MicroBatcher(short, max_items=8, max_wait_s=0.0)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 inputs"):
        await batcher.submit([1, 2])


async def test_close_cancels_waiting_requests() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(Recorder(delay=0.2), max_items=1, max_wait_s=0.0)
    waiting = asyncio.create_task(batcher.submit([1, 2]))
    await asyncio.sleep(0.05)
    await batcher.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await batcher.submit([]) == []
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_items=0)
