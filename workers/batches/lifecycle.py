"""A batch's life outside its lines' runs: validation of the input file, and the end (output and error files,
then ``completed``, ``cancelled`` or ``expired``). Each step is written so that running it again after a crash
(a new runner taking over) finishes the job instead of doing it twice."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

from core import batches as b
from core.batchstore import ANSWERED, FAILED, NOT_RUN, BatchRecord, BatchStore
from core.files import FileStore

log = logging.getLogger("gatehouse.batches")
PAGE = 1_000  # validated lines stored per call
YIELD_EVERY = 200  # lines validated between yields to the event loop (the worker is running jobs meanwhile)
RESULT_FILE_TTL_S = 30 * 86_400


async def validate(store: BatchStore, files: FileStore, batch: BatchRecord, models: Collection[str],
                   max_tokens_limit: int) -> bool:
    """Read and check the input file; store its lines and start the batch, or fail it naming the bad lines.
    True when the batch is now in progress."""
    record = await files.get(batch.input_file_id, None)
    if record is None:
        await store.fail(batch.id, [{"code": "invalid_file", "line": None, "param": "input_file_id",
                                     "message": f"The input file {batch.input_file_id} no longer exists."}])
        return False
    checker = b.LineValidator(batch.endpoint, models, batch.allowed_models, max_tokens_limit)
    errors: list[dict[str, Any]] = []
    bad = 0
    page: list[b.Line] = []
    total = 0
    n = 0
    async for raw in files.lines(record):
        n += 1
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        if not raw.strip():
            continue  # blank lines (a trailing one above all) carry no request
        checked = checker.check(n, raw)
        if isinstance(checked, b.LineError):
            bad += 1
            if len(errors) < b.MAX_ERRORS:
                errors.append(checked.to_json())
            continue
        total += 1
        if not errors:
            page.append(checked)
            if len(page) >= PAGE:
                await store.add_lines(batch.id, page)
                page = []
    return await _conclude(store, batch, errors, bad, total, page)


async def _conclude(store: BatchStore, batch: BatchRecord, errors: list[dict[str, Any]], bad: int, total: int,
                    page: list[b.Line]) -> bool:
    if errors:
        if bad > len(errors):
            errors.append({"code": "too_many_errors", "line": None, "param": None,
                           "message": f"{bad} lines are invalid; the first {b.MAX_ERRORS} are listed."})
        await store.fail(batch.id, errors)
        await store.db.fetchval("DELETE FROM batch_lines WHERE batch_id = $1", batch.id)
        log.info("batch %s failed validation: %d bad line(s)", batch.id, bad)
        return False
    if total == 0:
        await store.fail(batch.id, [{"code": "empty_file", "line": None, "param": "input_file_id",
                                     "message": "The input file has no requests."}])
        return False
    if page:
        await store.add_lines(batch.id, page)
    started = await store.start(batch.id, total)
    if started:
        log.info("batch %s validated: %d line(s)", batch.id, total)
    return started


async def close_unfinished(store: BatchStore, batch: BatchRecord, code: str, message: str) -> int:
    """Every line still pending goes to the error file as not run (``batch_cancelled``, ``batch_expired``)."""
    closed = 0
    while True:
        pending = await store.pending(batch.id, 0, PAGE)
        if not pending:
            return closed
        await store.close_pending(batch.id, [b.not_run(ln.line, ln.custom_id, code, message) for ln in pending])
        closed += len(pending)


async def finish(store: BatchStore, files: FileStore, batch: BatchRecord, status: str, stamp: str) -> None:
    """Write the output file (answered lines) and the error file (failed and not run), then the final status."""
    fresh = await store.get(batch.id)
    if fresh is None:
        return
    output_id = fresh.output_file_id
    error_id = fresh.error_file_id
    if output_id is None and fresh.completed:
        out = await files.create_from_lines(store.results(batch.id, [ANSWERED]), filename=f"{batch.id}_output.jsonl",
                                            owner_id=batch.owner_id, team_id=batch.team_id, purpose="batch_output",
                                            expires_after_s=RESULT_FILE_TTL_S)
        output_id = out.id
    if error_id is None and await _has_errors(store, batch.id):
        err = await files.create_from_lines(store.results(batch.id, [FAILED, NOT_RUN]),
                                            filename=f"{batch.id}_error.jsonl", owner_id=batch.owner_id,
                                            team_id=batch.team_id, purpose="batch_output",
                                            expires_after_s=RESULT_FILE_TTL_S)
        error_id = err.id
    await store.set_status(batch.id, status, stamp=stamp, where=["finalizing", "cancelling", "in_progress"],
                           output_file_id=output_id, error_file_id=error_id)
    log.info("batch %s %s: %d answered, %d failed", batch.id, status, fresh.completed, fresh.failed)


async def _has_errors(store: BatchStore, batch_id: str) -> bool:
    return bool(await store.db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM batch_lines WHERE batch_id = $1 AND state IN (2, 3))", batch_id))
