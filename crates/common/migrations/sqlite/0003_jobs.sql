-- Scheduled jobs: one row per job. The lease makes each run happen once
-- across replicas; run_key + cursor make a run resumable after a crash.
CREATE TABLE jobs (
    name              TEXT   PRIMARY KEY,
    holder            TEXT,            -- replica holding the lease
    lease_until       BIGINT NOT NULL DEFAULT 0, -- unix micros
    run_key           TEXT,            -- the scheduled slot being run, e.g. "2026-11-24"
    cursor            TEXT,            -- where the current run resumes
    processed         BIGINT NOT NULL DEFAULT 0,
    started_at        BIGINT,
    last_run_key      TEXT,            -- last run (scheduled or manual) finished
    last_slot         TEXT,            -- last scheduled slot finished; slots sort by time
    last_finished_at  BIGINT,
    last_error        TEXT,
    updated_at        BIGINT NOT NULL
);
