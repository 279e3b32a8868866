-- Lanes: each program's ledger is split into a fixed number of hash
-- chains ("lanes"), a member always in the same one (a stable hash of its
-- id modulo the program's lane count). Programs that already had entries
-- keep one lane: their chain is lane 0 unchanged. (SQLite cannot change a
-- primary key or a table constraint in place: the two tables are rebuilt.)
CREATE TABLE ledger_programs (
    program_id TEXT PRIMARY KEY,
    lanes INTEGER NOT NULL CHECK (lanes >= 1)
);
INSERT INTO ledger_programs (program_id, lanes) SELECT program_id, 1 FROM ledger_heads;

CREATE TABLE ledger_heads_lanes (
    program_id TEXT NOT NULL,
    lane INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (program_id, lane)
);
INSERT INTO ledger_heads_lanes (program_id, lane, seq, hash) SELECT program_id, 0, seq, hash FROM ledger_heads;
DROP TABLE ledger_heads;
ALTER TABLE ledger_heads_lanes RENAME TO ledger_heads;

CREATE TABLE ledger_entries_lanes (
    entry_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    lane INTEGER NOT NULL DEFAULT 0,
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
    UNIQUE (program_id, lane, seq)
);
INSERT INTO ledger_entries_lanes (entry_id, program_id, lane, seq, member_id, kind, points,
    available_delta, pending_delta, lifetime_delta, order_id, rules, staff_id, reason, reference,
    reverses, created_at, prev_hash, hash)
SELECT entry_id, program_id, 0, seq, member_id, kind, points, available_delta, pending_delta,
    lifetime_delta, order_id, rules, staff_id, reason, reference, reverses, created_at, prev_hash, hash
FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_lanes RENAME TO ledger_entries;
CREATE INDEX ledger_entries_member ON ledger_entries (program_id, member_id, seq);
CREATE UNIQUE INDEX ledger_entries_reverses ON ledger_entries (program_id, reverses);

-- the local day a purchase counted for, so that a refund gives back the
-- cap usage (rule_awards) of that day
ALTER TABLE purchases ADD COLUMN local_day TEXT NOT NULL DEFAULT '';
