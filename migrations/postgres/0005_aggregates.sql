-- Monthly counts of rows that action aggregate deleted (issue: aggregated statistics
-- survive, the rows naming patrons do not). One row per class, month (YYYY-MM, the
-- library's time), library, item type, patron category and kind ('' when absent);
-- each batch adds its counts in the transaction that deletes its rows.
CREATE TABLE IF NOT EXISTS lethe_aggregates (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    class           TEXT NOT NULL,
    month           TEXT NOT NULL,
    library         TEXT NOT NULL,
    item_type       TEXT NOT NULL,
    patron_category TEXT NOT NULL,
    kind            TEXT NOT NULL,
    count           BIGINT NOT NULL,
    UNIQUE (class, month, library, item_type, patron_category, kind)
);
