-- Points core of the rewards service: policy, ledger (hash-chained per
-- program), lots, balances, purchases and their lines, refunds, rules,
-- member state for the rules engine, behaviour awards.

CREATE TABLE program_policies (
    program_id TEXT PRIMARY KEY,
    definition BLOB NOT NULL,
    version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The head of each program's hash chain; its row lock serialises the
-- program's ledger writers (always taken before any balance row).
CREATE TABLE ledger_heads (
    program_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);

CREATE TABLE ledger_entries (
    entry_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    member_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    points INTEGER NOT NULL,
    available_delta INTEGER NOT NULL,
    pending_delta INTEGER NOT NULL,
    lifetime_delta INTEGER NOT NULL,
    order_id TEXT NOT NULL DEFAULT '',
    rules TEXT NOT NULL DEFAULT '',
    staff_id TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    reference TEXT NOT NULL DEFAULT '',
    reverses TEXT,
    created_at INTEGER NOT NULL,
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
    points INTEGER NOT NULL,
    remaining INTEGER NOT NULL,
    released INTEGER NOT NULL,
    pending_until INTEGER,
    expires_at INTEGER,
    created_at INTEGER NOT NULL,
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
    points INTEGER NOT NULL,
    PRIMARY KEY (entry_id, lot_id)
);
CREATE INDEX lot_uses_lot ON lot_uses (lot_id);

CREATE TABLE balances (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    available INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 0,
    lifetime_earned INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (program_id, member_id)
);

CREATE TABLE purchases (
    program_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response BLOB NOT NULL,
    amount_minor INTEGER NOT NULL,
    points INTEGER NOT NULL,
    entry_id TEXT NOT NULL DEFAULT '',
    refunded_minor INTEGER NOT NULL DEFAULT 0,
    reversed_points INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (program_id, order_id)
);

CREATE TABLE purchase_lines (
    program_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    line_id TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    points INTEGER NOT NULL,
    refunded_minor INTEGER NOT NULL DEFAULT 0,
    reversed_points INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (program_id, order_id, line_id)
);

CREATE TABLE refunds (
    program_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    refund_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (program_id, order_id, refund_id)
);

CREATE TABLE earning_rules (
    program_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    enabled INTEGER NOT NULL,
    definition BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (program_id, rule_id, version)
);

-- points each rule gave each member per local day (caps)
CREATE TABLE rule_awards (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    local_day TEXT NOT NULL,
    points INTEGER NOT NULL,
    PRIMARY KEY (program_id, member_id, rule_id, local_day)
);

-- what the rules engine knows of a member
CREATE TABLE member_state (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    tier TEXT NOT NULL DEFAULT '',
    multiplier_bp INTEGER NOT NULL DEFAULT 10000,
    purchase_count INTEGER NOT NULL DEFAULT 0,
    last_check_in TEXT NOT NULL DEFAULT '',
    streak_days INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (program_id, member_id)
);

-- one reward per behaviour occurrence (check-in day, review id, campaign action)
CREATE TABLE behaviour_awards (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    behaviour TEXT NOT NULL,
    reference TEXT NOT NULL,
    response BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (program_id, member_id, behaviour, reference)
);
