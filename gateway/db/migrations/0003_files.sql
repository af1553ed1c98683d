-- Files uploaded through /v1/files, and the batch API's result files (gateway/files/store.py).
-- A file is listed, read or deleted only once its upload completed; its content lives in file_chunks, about
-- 1 MiB a row, written and read one row per (bounded) call. Ids sort by creation time ("C" collation: byte
-- order), so pagination is `id > after`.
CREATE TABLE IF NOT EXISTS files (
    id          text COLLATE "C" PRIMARY KEY,         -- file-<12 hex: ms since 1970><12 hex: random>
    owner_id    text,                                 -- the virtual key (ak-…) or JWT subject (jwt:…); NULL: master key
    team_id     text,
    filename    text NOT NULL,
    purpose     text NOT NULL,                        -- batch | user_data | batch_output
    bytes       bigint NOT NULL DEFAULT 0,
    lines       bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    complete    boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS files_owner ON files (owner_id, id) WHERE complete;
CREATE INDEX IF NOT EXISTS files_unfinished ON files (created_at) WHERE NOT complete;
CREATE INDEX IF NOT EXISTS files_expiring ON files (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS file_chunks (
    file_id text COLLATE "C" NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    seq     integer NOT NULL,
    data    bytea NOT NULL,
    PRIMARY KEY (file_id, seq)
);
