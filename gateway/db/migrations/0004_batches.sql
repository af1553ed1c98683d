-- The Batch API (core/batches.py, core/batchstore.py). A batch row per POST /v1/batches; its input lines, once
-- validated, one row each in batch_lines, where each line's result lands exactly once (state 0 -> 1 or 2 only
-- while still 0). The runner in the workers drives every batch whose status is not final.
CREATE TABLE IF NOT EXISTS batches (
    id                text COLLATE "C" PRIMARY KEY,     -- batch_<12 hex: ms since 1970><12 hex: random>
    owner_id          text,                             -- as files.owner_id: who sees and cancels it (NULL: master)
    key_id            text,                             -- charged for its lines (spend_log)
    team_id           text,
    user_id           text,
    endpoint          text NOT NULL,
    input_file_id     text NOT NULL,
    completion_window text NOT NULL,
    metadata          jsonb,
    allowed_models    text[],                           -- the key's models when the batch was created; NULL: all
    tenant            text NOT NULL DEFAULT '',         -- its lines' fair-queuing tenant
    priority          smallint NOT NULL DEFAULT 128,
    status            text NOT NULL DEFAULT 'validating',
    errors            jsonb,                            -- validation errors: [{code, message, param, line}]
    total             integer NOT NULL DEFAULT 0,
    completed         integer NOT NULL DEFAULT 0,
    failed            integer NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    output_file_id    text,
    error_file_id     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    in_progress_at    timestamptz,
    finalizing_at     timestamptz,
    completed_at      timestamptz,
    failed_at         timestamptz,
    expired_at        timestamptz,
    cancelling_at     timestamptz,
    cancelled_at      timestamptz
);
CREATE INDEX IF NOT EXISTS batches_owner ON batches (owner_id, id);
CREATE INDEX IF NOT EXISTS batches_active ON batches (id)
    WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');

CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id  text COLLATE "C" NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    line      integer NOT NULL,                         -- counts from 1, as OpenAI's error lines do
    custom_id text NOT NULL,
    model     text NOT NULL,
    body      bytea NOT NULL,                           -- the request body, JSON
    state     smallint NOT NULL DEFAULT 0,              -- 0 pending, 1 answered (output file), 2 failed (error
                                                        -- file), 3 not run: cancelled or expired (error file)
    result    bytea,                                    -- its output or error file line, JSON
    tries     smallint NOT NULL DEFAULT 0,              -- times fed after being lost (a worker died under it)
    PRIMARY KEY (batch_id, line)
);
CREATE INDEX IF NOT EXISTS batch_lines_pending ON batch_lines (batch_id, line) WHERE state = 0;
