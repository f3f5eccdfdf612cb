-- A ledger entry is a run, or a change of the effective policy between runs
-- (issue: configuration changes are entries of the same hash chain).
ALTER TABLE lethe_runs ADD COLUMN kind VARCHAR(16) NOT NULL DEFAULT 'run';
