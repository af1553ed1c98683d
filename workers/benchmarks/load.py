"""Driving a benchmark run's load: each model of the run at once, each through its levels in order (a sweep), at
each level every (item, repeat) that has no result yet (a resumed run skips what landed).

  * ``c=N``: N lanes take the next (item, repeat) from one shared iterator, each sending its next request as
    soon as its last one ended (closed loop, as ``vllm bench serve --max-concurrency``);
  * ``rate=R``: one request started every 1/R s, fixed spacing, however many are still running (open loop).

Each result is scored (core.scoring; a ``judge`` scorer asks its model through the gateway, non-streamed, with the
run's key; a judge that fails leaves the score null) and handed to the recorder as it ends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from redis.asyncio import Redis

from core.benchstore import BenchRecord, ResultKey
from core.benchsuite import Suite, SuiteItem
from core.database import Database
from core.scoring import judge_messages, parse_judge, prompt_text, score
from workers.benchmarks.agent import run_task
from workers.benchmarks.client import BenchClient, Result, result_of
from workers.benchmarks.keys import RunKeys
from workers.benchmarks.recorder import Recorder
from workers.benchmarks.sandbox import Sandbox

Work = tuple[SuiteItem, int]  # (item, repeat)


@dataclass(slots=True)
class RunContext:
    run: BenchRecord
    suite: Suite
    db: Database
    redis: Redis
    client: BenchClient
    keys: RunKeys
    recorder: Recorder
    sandbox: Sandbox
    done: set[ResultKey]  # what already has a result (skipped)


def expected_keys(run: BenchRecord, suite: Suite, levels: list[str], repeat: int) -> set[ResultKey]:
    """Every (model, level, item, repeat) the run must have a result for."""
    return {(m, lvl, item.id, rep) for m in run.models for lvl in levels for rep in range(repeat)
            for item in suite.items}


async def drive(ctx: RunContext, levels: list[str], repeat: int) -> None:
    """Send every request of the run that has no result yet; returns when all have ended."""
    async with asyncio.TaskGroup() as tg:
        for model in ctx.run.models:
            tg.create_task(drive_model(ctx, model, levels, repeat))


async def drive_model(ctx: RunContext, model: str, levels: list[str], repeat: int) -> None:
    for level in levels:
        work = [(item, rep) for rep in range(repeat) for item in ctx.suite.items
                if (model, level, item.id, rep) not in ctx.done]
        if work:
            await drive_level(ctx, model, level, work)


async def drive_level(ctx: RunContext, model: str, level: str, work: list[Work]) -> None:
    kind, _, value = level.partition("=")
    if kind == "rate":
        await _at_rate(ctx, model, level, work, float(value))
    else:
        await _concurrent(ctx, model, level, work, max(1, int(value or 1)))


async def _concurrent(ctx: RunContext, model: str, level: str, work: list[Work], lanes: int) -> None:
    shared: Iterator[Work] = iter(work)

    async def lane() -> None:
        for item, rep in shared:  # the lanes share one iterator: each (item, repeat) is taken once
            await one(ctx, model, level, item, rep)

    async with asyncio.TaskGroup() as tg:
        for _ in range(min(lanes, len(work))):
            tg.create_task(lane())


async def _at_rate(ctx: RunContext, model: str, level: str, work: Iterable[Work], rate: float) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.TaskGroup() as tg:
        for n, (item, rep) in enumerate(work):
            wait = start + n / rate - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            tg.create_task(one(ctx, model, level, item, rep))


async def one(ctx: RunContext, model: str, level: str, item: SuiteItem, rep: int) -> None:
    """One request (or agent task): measured, scored, handed to the recorder."""
    if item.is_task:
        result, text = await run_task(keys=ctx.keys, sandbox=ctx.sandbox, db=ctx.db, redis=ctx.redis,
                                      gateway_url=ctx.run.gateway_url, model=model, item=item, level=level, rep=rep)
    else:
        bearer = await ctx.keys.for_model(model)
        streamed = await ctx.client.stream(bearer, model, item.chat_messages(), item.max_tokens)
        result, text = result_of(streamed, model, level, item.id, rep), streamed.output
    if result["status"] == "ok":
        result["score"] = await score_of(ctx, model, item, text, result)
    ctx.recorder.add(result)


async def score_of(ctx: RunContext, model: str, item: SuiteItem, text: str, result: Result) -> float | None:
    """The item's scorer on the answer (a task's stdout); a task without one: exit 0 → 1.0, else 0.0."""
    scorer = item.scorer
    if scorer is None:
        if item.is_task:
            return 1.0 if (result.get("task") or {}).get("exit_code") == 0 else 0.0
        return None
    if scorer.kind == "judge" and scorer.judge is not None:
        asked = prompt_text(item.chat_messages()) if not item.is_task else (item.prompt or " ".join(item.argv()))
        bearer = await ctx.keys.for_model(model)  # the run's key for this model may use the judges too
        answer = await ctx.client.complete(bearer, scorer.judge,
                                           judge_messages(scorer.rubric, asked, item.expected, text))
        return parse_judge(answer) if answer is not None else None
    try:
        return score(scorer, text, item.expected)
    except ValueError:
        return None
