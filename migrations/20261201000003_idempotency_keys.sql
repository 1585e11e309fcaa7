-- Idempotency-Key: the first answer to a write, kept for IDEMPOTENCY_TTL_SECONDS,
-- so that a retry, from any replica, gets that answer again instead of
-- writing twice. A row is reserved (status NULL) before the write starts, in
-- its own statement: a racing retry finds it and waits for the answer.
CREATE TABLE idempotency_keys (
    -- The caller's scope ("admin" or a user id): keys of different users never meet.
    owner text NOT NULL,
    key text NOT NULL,
    -- SHA-256 of the method, the path and the body's bytes.
    fingerprint bytea NOT NULL,
    -- NULL while the first request runs.
    status smallint,
    headers jsonb,
    body bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (owner, key)
);

CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
