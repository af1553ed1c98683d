-- One row per completed request with a cost. Written in batches by gateway/spend.py, never on the hot path.
CREATE TABLE IF NOT EXISTS spend_log (
    request_id        text NOT NULL,
    key_id            text,
    team_id           text,
    user_id           text,
    model             text NOT NULL,
    prompt_tokens     integer NOT NULL,
    completion_tokens integer NOT NULL,
    cost              numeric(18, 8) NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS spend_log_key_time ON spend_log (key_id, created_at) WHERE key_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS spend_log_team_time ON spend_log (team_id, created_at) WHERE team_id IS NOT NULL;

-- Spend per key, team and day.
CREATE OR REPLACE VIEW spend_daily AS
SELECT date_trunc('day', created_at) AS day, key_id, team_id, model,
       count(*) AS requests, sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
       sum(cost) AS cost
FROM spend_log GROUP BY 1, 2, 3, 4;
