-- Lanes: each program's ledger is split into a fixed number of hash
-- chains ("lanes"), a member always in the same one (a stable hash of its
-- id modulo the program's lane count). Writers of different lanes no
-- longer wait on one chain head, so a program's writes run in parallel;
-- a member's writes stay serial (its lane's head row). Programs that
-- already had entries keep one lane: their chain is lane 0 unchanged.
CREATE TABLE ledger_programs (
    program_id TEXT PRIMARY KEY,
    lanes BIGINT NOT NULL CHECK (lanes >= 1)
);
INSERT INTO ledger_programs (program_id, lanes) SELECT program_id, 1 FROM ledger_heads;

ALTER TABLE ledger_heads ADD COLUMN lane BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ledger_heads DROP CONSTRAINT ledger_heads_pkey;
ALTER TABLE ledger_heads ADD PRIMARY KEY (program_id, lane);

ALTER TABLE ledger_entries ADD COLUMN lane BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_program_id_seq_key;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_lane_seq UNIQUE (program_id, lane, seq);

-- the local day a purchase counted for, so that a refund gives back the
-- cap usage (rule_awards) of that day
ALTER TABLE purchases ADD COLUMN local_day TEXT NOT NULL DEFAULT '';
