-- Legal holds (issue: a court or investigator requires one patron's records be kept):
-- an open hold exempts every row of that patron from every class with a patron column,
-- counted as kept.legal_hold. Placing and releasing a hold are ledger entries
-- (kind legal-hold) whose `event` says which hold and what happened (no patron id).
ALTER TABLE lethe_runs ADD COLUMN event TEXT NULL;
CREATE TABLE IF NOT EXISTS lethe_legal_holds (
    id          BIGINT AUTO_INCREMENT PRIMARY KEY,
    patron      BIGINT NOT NULL,
    case_ref    VARCHAR(200) NOT NULL,
    placed_at   VARCHAR(40) NOT NULL,
    released_at VARCHAR(40) NULL,
    KEY lethe_legal_holds_patron (patron)
);
