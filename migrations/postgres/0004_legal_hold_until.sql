-- Legal holds with an end date (`lethe hold add --until DATE`: the hold stands through
-- that day in the library's time zone; the first run after it lapses releases it, and
-- says so in the ledger), and who placed and released each hold (the operator's login).
ALTER TABLE lethe_legal_holds ADD COLUMN held_until TEXT;
ALTER TABLE lethe_legal_holds ADD COLUMN placed_by TEXT;
ALTER TABLE lethe_legal_holds ADD COLUMN released_by TEXT;
