-- Points core of the rewards service: policy, ledger (hash-chained per
-- program), lots, balances, purchases and their lines, refunds, rules,
-- member state for the rules engine, behaviour awards.

CREATE TABLE program_policies (
    program_id TEXT PRIMARY KEY,
    definition BYTEA NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The head of each program's hash chain; its row lock serialises the
-- program's ledger writers (always taken before any balance row).
CREATE TABLE ledger_heads (
    program_id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);

CREATE TABLE ledger_entries (
    entry_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    member_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    points BIGINT NOT NULL,
    available_delta BIGINT NOT NULL,
    pending_delta BIGINT NOT NULL,
    lifetime_delta BIGINT NOT NULL,
    order_id TEXT NOT NULL DEFAULT '',
    rules TEXT NOT NULL DEFAULT '',
    staff_id TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    reference TEXT NOT NULL DEFAULT '',
    reverses TEXT,
    created_at BIGINT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (program_id, seq)
);
CREATE INDEX ledger_entries_member ON ledger_entries (program_id, member_id, seq);
-- a debit is reversed at most once
CREATE UNIQUE INDEX ledger_entries_reverses ON ledger_entries (program_id, reverses);

CREATE TABLE lots (
    lot_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    points BIGINT NOT NULL,
    remaining BIGINT NOT NULL,
    released BIGINT NOT NULL,
    pending_until BIGINT,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    CHECK (remaining >= 0 AND remaining <= points)
);
-- FIFO over a member's available lots, soonest expiry first
CREATE INDEX lots_member_fifo ON lots (program_id, member_id, released, expires_at) WHERE remaining > 0;
-- the expiry job walks lots by expiry instant, a member's lots together
-- (one expire entry per member and boundary, not per lot)
CREATE INDEX lots_expiry ON lots (expires_at, program_id, member_id, lot_id) WHERE remaining > 0 AND expires_at IS NOT NULL;
-- the release job walks pending lots by release instant
CREATE INDEX lots_pending ON lots (pending_until, lot_id) WHERE released = 0;
CREATE INDEX lots_entry ON lots (entry_id);

CREATE TABLE lot_uses (
    entry_id TEXT NOT NULL,
    lot_id TEXT NOT NULL,
    points BIGINT NOT NULL,
    PRIMARY KEY (entry_id, lot_id)
);
CREATE INDEX lot_uses_lot ON lot_uses (lot_id);

CREATE TABLE balances (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    available BIGINT NOT NULL DEFAULT 0,
    pending BIGINT NOT NULL DEFAULT 0,
    lifetime_earned BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (program_id, member_id)
);

CREATE TABLE purchases (
    program_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response BYTEA NOT NULL,
    amount_minor BIGINT NOT NULL,
    points BIGINT NOT NULL,
    entry_id TEXT NOT NULL DEFAULT '',
    refunded_minor BIGINT NOT NULL DEFAULT 0,
    reversed_points BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (program_id, order_id)
);

CREATE TABLE purchase_lines (
    program_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    line_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    points BIGINT NOT NULL,
    refunded_minor BIGINT NOT NULL DEFAULT 0,
    reversed_points BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (program_id, order_id, line_id)
);

CREATE TABLE refunds (
    program_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    refund_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (program_id, order_id, refund_id)
);

CREATE TABLE earning_rules (
    program_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    enabled BIGINT NOT NULL,
    definition BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (program_id, rule_id, version)
);

-- points each rule gave each member per local day (caps)
CREATE TABLE rule_awards (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    local_day TEXT NOT NULL,
    points BIGINT NOT NULL,
    PRIMARY KEY (program_id, member_id, rule_id, local_day)
);

-- what the rules engine knows of a member
CREATE TABLE member_state (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    tier TEXT NOT NULL DEFAULT '',
    multiplier_bp BIGINT NOT NULL DEFAULT 10000,
    purchase_count BIGINT NOT NULL DEFAULT 0,
    last_check_in TEXT NOT NULL DEFAULT '',
    streak_days BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (program_id, member_id)
);

-- one reward per behaviour occurrence (check-in day, review id, campaign action)
CREATE TABLE behaviour_awards (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    behaviour TEXT NOT NULL,
    reference TEXT NOT NULL,
    response BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (program_id, member_id, behaviour, reference)
);
