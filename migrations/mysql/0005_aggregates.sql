-- Monthly counts of rows that action aggregate deleted (issue: aggregated statistics
-- survive, the rows naming patrons do not). One row per class, month (YYYY-MM, the
-- library's time), library, item type, patron category and kind ('' when absent);
-- each batch adds its counts in the transaction that deletes its rows.
CREATE TABLE IF NOT EXISTS lethe_aggregates (
    id              BIGINT AUTO_INCREMENT PRIMARY KEY,
    class           VARCHAR(64) NOT NULL,
    month           VARCHAR(7) NOT NULL,
    library         VARCHAR(80) NOT NULL,
    item_type       VARCHAR(80) NOT NULL,
    patron_category VARCHAR(80) NOT NULL,
    kind            VARCHAR(80) NOT NULL,
    count           BIGINT NOT NULL,
    UNIQUE KEY lethe_aggregates_dims (class, month, library, item_type, patron_category, kind)
);
