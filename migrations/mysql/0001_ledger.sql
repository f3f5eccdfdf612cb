-- Lethe's own tables: the ledger of runs. Never the library's tables.
CREATE TABLE IF NOT EXISTS lethe_runs (
    id            BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    host          VARCHAR(255) NOT NULL,
    version       VARCHAR(64) NOT NULL,
    mode          VARCHAR(16) NOT NULL,
    started_at    VARCHAR(40) NOT NULL,
    finished_at   VARCHAR(40) NULL,
    status        VARCHAR(16) NOT NULL,
    policy_sha256 CHAR(64) NOT NULL,
    policy        MEDIUMTEXT NOT NULL,
    error         TEXT NULL,
    prev_hash     CHAR(64) NULL,
    hash          CHAR(64) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE TABLE IF NOT EXISTS lethe_run_classes (
    run_id           BIGINT NOT NULL,
    position         INT NOT NULL,
    class            VARCHAR(64) NOT NULL,
    table_name       VARCHAR(130) NOT NULL,
    action           VARCHAR(16) NOT NULL,
    cutoff           VARCHAR(40) NOT NULL,
    eligible         BIGINT NOT NULL DEFAULT 0,
    affected         BIGINT NOT NULL DEFAULT 0,
    kept_opt_in      BIGINT NOT NULL DEFAULT 0,
    kept_legal_hold  BIGINT NOT NULL DEFAULT 0,
    kept_obligations BIGINT NOT NULL DEFAULT 0,
    kept_protected   BIGINT NOT NULL DEFAULT 0,
    batches          BIGINT NOT NULL DEFAULT 0,
    status           VARCHAR(16) NOT NULL,
    error            TEXT NULL,
    PRIMARY KEY (run_id, class),
    CONSTRAINT lethe_run_classes_run FOREIGN KEY (run_id) REFERENCES lethe_runs (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
