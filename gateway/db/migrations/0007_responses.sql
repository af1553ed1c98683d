-- Stored Responses (POST /v1/responses with store: true; ADR 0020, core/responsestore.py). One row per response:
-- the Response object as it was answered, and the conversation it answered (the input items, after those of
-- the previous response it continued), so previous_response_id needs one read however long the chain.
CREATE TABLE IF NOT EXISTS responses (
    id          text COLLATE "C" PRIMARY KEY,           -- resp_… (translated) or the upstream's id (passed through)
    owner_id    text,                                   -- as files.owner_id: who reads, continues, deletes it (NULL: master)
    model       text NOT NULL,                          -- the public model name it was asked of
    passthrough boolean NOT NULL DEFAULT false,         -- answered by an upstream that speaks the Responses API
    input       jsonb NOT NULL,                         -- input items: the previous conversation's, then this request's
    response    jsonb NOT NULL,                         -- the Response object
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS responses_owner ON responses (owner_id, id);
