-- Legal holds (issue: a court or investigator requires one patron's records be kept):
-- an open hold exempts every row of that patron from every class with a patron column,
-- counted as kept.legal_hold. Placing and releasing a hold are ledger entries
-- (kind legal-hold) whose `event` says which hold and what happened (no patron id).
ALTER TABLE lethe_runs ADD COLUMN event TEXT;
CREATE TABLE IF NOT EXISTS lethe_legal_holds (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    patron      BIGINT NOT NULL,        -- the library system's patron id
    case_ref    TEXT NOT NULL,          -- a docket or reference number
    placed_at   TEXT NOT NULL,          -- RFC 3339, UTC
    released_at TEXT                    -- RFC 3339, UTC; NULL while the hold stands
);
CREATE INDEX IF NOT EXISTS lethe_legal_holds_patron ON lethe_legal_holds (patron);
