-- Scratch schema for the pgbench earn ceiling (loyalty-bench pgbench-earn).
-- Tables as wide as the real ones: a balance row per member, an append-only
-- ledger unique on (program, order id), and the common outbox.
-- psql variable: members.
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bench_earn CASCADE;
CREATE SCHEMA bench_earn;

CREATE TABLE bench_earn.accounts (
    program_id      TEXT   NOT NULL,
    member_id       TEXT   NOT NULL,
    available       BIGINT NOT NULL DEFAULT 0,
    pending         BIGINT NOT NULL DEFAULT 0,
    lifetime_earned BIGINT NOT NULL DEFAULT 0,
    version         BIGINT NOT NULL DEFAULT 0,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (program_id, member_id)
);
INSERT INTO bench_earn.accounts (program_id, member_id, updated_at)
SELECT 'p1', 'm' || g, 0 FROM generate_series(1, :members) AS g;

CREATE TABLE bench_earn.ledger (
    id           TEXT   PRIMARY KEY,
    program_id   TEXT   NOT NULL,
    member_id    TEXT   NOT NULL,
    kind         TEXT   NOT NULL,
    points       BIGINT NOT NULL,
    order_id     TEXT,
    cause        TEXT   NOT NULL, -- rule ids and versions, as JSON
    available_at BIGINT NOT NULL,
    expires_at   BIGINT,
    hash         TEXT   NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX ledger_order ON bench_earn.ledger (program_id, order_id)
    WHERE order_id IS NOT NULL;
CREATE INDEX ledger_member ON bench_earn.ledger (program_id, member_id, created_at);

CREATE TABLE bench_earn.outbox (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     TEXT   NOT NULL UNIQUE,
    event_type   TEXT   NOT NULL,
    ordering_key TEXT   NOT NULL,
    payload      BYTEA  NOT NULL,
    created_at   BIGINT NOT NULL,
    published_at BIGINT
);
CREATE INDEX outbox_unpublished ON bench_earn.outbox (seq) WHERE published_at IS NULL;

VACUUM ANALYZE bench_earn.accounts;
