-- Virtual API keys. A key is an id (public, "ak-...") plus a secret ("as-..."); only a hash of the secret
-- is stored. The Bearer form is "sk-gh-<id>.<secret>" (see gateway/keys/secrets.py).
CREATE TABLE IF NOT EXISTS virtual_keys (
    key_id                text PRIMARY KEY,
    secret_hash           bytea NOT NULL,
    key_alias             text,
    user_id               text,
    team_id               text,
    models                text[],                -- NULL: every model
    max_budget            numeric(18, 6),
    budget_duration       text,                  -- e.g. "30d", "1h"; NULL: the budget never resets
    rpm_limit             integer CHECK (rpm_limit >= 0),
    tpm_limit             integer CHECK (tpm_limit >= 0),
    max_parallel_requests integer CHECK (max_parallel_requests >= 0),
    metadata              jsonb NOT NULL DEFAULT '{}'::jsonb,
    is_admin              boolean NOT NULL DEFAULT false,
    expires_at            timestamptz,
    revoked_at            timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS virtual_keys_team_id ON virtual_keys (team_id) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS virtual_keys_alias ON virtual_keys (key_alias)
    WHERE key_alias IS NOT NULL AND revoked_at IS NULL;
