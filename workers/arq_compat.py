"""The arq internals ``GatehouseWorker`` relies on, in one place (arq is pinned: ``ARQ_VERSION``).

``GatehouseWorker`` replaces arq's poll loop and end-of-job bookkeeping (docs/adr/0002). To do that it overrides
some of arq's methods and reads or writes some of its attributes. tests/unit/workers/test_arq_compat.py checks
this list against the installed arq — method names and signatures, attributes set by ``Worker.__init__`` — so
an arq upgrade that changes any of them fails loudly there instead of quietly changing the worker.
"""

from __future__ import annotations

ARQ_VERSION = "0.28.0"

# arq.worker.Worker methods GatehouseWorker overrides or calls, with the parameters it relies on
OVERRIDDEN = {
    "main": (),
    "_poll_iteration": (),
    "finish_job": ("job_id", "finish", "result_data", "result_timeout_s", "keep_result_forever", "incr_score",
                   "keep_in_progress"),
    "_release_sem_dec_counter_on_complete": (),
    "close": (),
    "run_job": ("job_id", "score"),
}
CALLED = {
    "_cancel_aborted_jobs": (),
    "heart_beat": (),
}

# attributes of an arq Worker that GatehouseWorker reads or changes
ATTRIBUTES = ("_pool", "pool", "ctx", "sem", "job_counter", "tasks", "job_tasks", "aborting_tasks", "allow_pick_jobs",
              "allow_abort_jobs", "max_jobs", "burst", "poll_delay_s", "queue_name", "queue_read_limit",
              "in_progress_timeout_s", "redis_settings", "job_serializer", "job_deserializer", "expires_extra_ms",
              "on_startup", "loop", "job_timeout_s", "max_tries", "jobs_complete", "jobs_failed")
