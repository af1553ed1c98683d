-- Benchmark runs (ADR 0018, core/benchstore.py). A run row per POST /v1/benchmarks: the suite as submitted, the
-- models, the load options, its owner and status; one benchmark_results row per (model, level, item, repeat),
-- written as each request ends. The primary key makes a result land once: a runner that resumes after a
-- restart skips what has a row. Figures are computed from the rows on read, never stored twice.
CREATE TABLE IF NOT EXISTS benchmark_runs (
    id            text COLLATE "C" PRIMARY KEY,         -- bench_<12 hex: ms since 1970><14 hex: random>
    owner_id      text,                                 -- as files.owner_id: who sees and cancels it (NULL: master)
    key_id        text,                                 -- the submitting key (the run's keys take its team)
    team_id       text,
    user_id       text,
    tenant        text NOT NULL DEFAULT '',             -- the submitter's fair-queuing tenant
    scopes        jsonb NOT NULL DEFAULT '[]'::jsonb,   -- the submitter's limits (core.usage.Scope as JSON)
    gateway_url   text NOT NULL,                        -- the gateway the run was submitted to: its calls go there
    suite         jsonb NOT NULL,                       -- core.benchsuite.Suite.to_json()
    models        text[] NOT NULL,
    options       jsonb NOT NULL,                       -- {parallel, rate, sweep, repeat, slo}
    metadata      jsonb,
    status        text NOT NULL DEFAULT 'queued',       -- queued, running, cancelling; completed, failed, cancelled
    errors        jsonb,                                -- why it failed: [{code, message}]
    total         integer NOT NULL DEFAULT 0,           -- items x models x repeat x levels
    completed     integer NOT NULL DEFAULT 0,           -- results with status ok (counted as they land)
    failed        integer NOT NULL DEFAULT 0,           -- results with status error
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    completed_at  timestamptz,
    failed_at     timestamptz,
    cancelling_at timestamptz,
    cancelled_at  timestamptz
);
CREATE INDEX IF NOT EXISTS benchmark_runs_owner ON benchmark_runs (owner_id, id);
CREATE INDEX IF NOT EXISTS benchmark_runs_active ON benchmark_runs (id)
    WHERE status IN ('queued', 'running', 'cancelling');

CREATE TABLE IF NOT EXISTS benchmark_results (
    run_id     text COLLATE "C" NOT NULL REFERENCES benchmark_runs (id) ON DELETE CASCADE,
    model      text NOT NULL,
    level      text NOT NULL,                           -- "c=4", "rate=2"
    item_id    text NOT NULL,
    rep        integer NOT NULL,                        -- the repeat, from 0
    status     text NOT NULL,                           -- ok | error
    data       jsonb NOT NULL,                          -- the RESULT object (docs/benchmark-runs-contract.md)
    seq        bigint GENERATED ALWAYS AS IDENTITY,     -- landing order: the results listing's cursor
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, model, level, item_id, rep)
);
CREATE INDEX IF NOT EXISTS benchmark_results_order ON benchmark_results (run_id, seq);
