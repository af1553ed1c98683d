-- The limits a batch's lines count against (core.usage.Scope as JSON: the creating key's, then its team's),
-- copied when the batch is created: the runner charges each line's tokens to their TPM windows and its cost to
-- their budgets, and stops feeding a batch whose budget is spent.
ALTER TABLE batches ADD COLUMN IF NOT EXISTS scopes jsonb NOT NULL DEFAULT '[]'::jsonb;
