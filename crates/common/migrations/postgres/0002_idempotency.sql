-- Idempotency keys of mutating calls. The key is claimed in the same
-- transaction as the work; the stored response answers replays.
CREATE TABLE idempotency_keys (
    scope        TEXT   NOT NULL, -- e.g. "rewards.Redeem/<program_id>"
    idem_key     TEXT   NOT NULL,
    request_hash TEXT   NOT NULL, -- sha256 of the canonical request
    response     BYTEA,              -- encoded response; NULL until the work is done
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (scope, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
