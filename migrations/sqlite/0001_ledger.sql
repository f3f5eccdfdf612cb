-- Lethe's own tables: the ledger of runs. Never the library's tables.
CREATE TABLE IF NOT EXISTS lethe_runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    host          TEXT NOT NULL,
    version       TEXT NOT NULL,
    mode          TEXT NOT NULL,            -- enforce | dry-run
    started_at    TEXT NOT NULL,            -- RFC 3339, UTC
    finished_at   TEXT,                     -- RFC 3339, UTC; NULL while running
    status        TEXT NOT NULL,            -- running | ok | failed | tripped | interrupted
    policy_sha256 TEXT NOT NULL,
    policy        TEXT NOT NULL,            -- the effective policy, canonical JSON, no secrets
    error         TEXT,
    prev_hash     TEXT,
    hash          TEXT                      -- SHA-256 over the closed run and prev_hash
);
CREATE TABLE IF NOT EXISTS lethe_run_classes (
    run_id           INTEGER NOT NULL REFERENCES lethe_runs(id),
    position         INTEGER NOT NULL,
    class            TEXT NOT NULL,
    table_name       TEXT NOT NULL,
    action           TEXT NOT NULL,
    cutoff           TEXT NOT NULL,         -- RFC 3339 in the library's zone
    eligible         INTEGER NOT NULL DEFAULT 0,
    affected         INTEGER NOT NULL DEFAULT 0,
    kept_opt_in      INTEGER NOT NULL DEFAULT 0,
    kept_legal_hold  INTEGER NOT NULL DEFAULT 0,
    kept_obligations INTEGER NOT NULL DEFAULT 0,
    kept_protected   INTEGER NOT NULL DEFAULT 0,
    batches          INTEGER NOT NULL DEFAULT 0,
    status           TEXT NOT NULL,         -- running | ok | skipped | failed | tripped
    error            TEXT,
    PRIMARY KEY (run_id, class)
);
