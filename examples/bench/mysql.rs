//! Koha shape on MariaDB: database `lethe_bench` with tests/fixtures/koha_mysql.sql,
//! the demo's patrons and items, and `old_issues` generated server-side from the
//! Sequence engine (`seq_1_to_N`).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, FixedOffset, NaiveDateTime};
use sqlx::{AssertSqlSafe, MySqlPool, Row};

use crate::{Bench, Change, age_days, koha_config, koha_predicate};

const ROOT: &str = "mysql://root@127.0.0.1:3306";
const DB: &str = "lethe_bench";
/// Rows generated per INSERT … SELECT (one transaction each).
const CHUNK: u64 = 1_000_000;

/// The MariaDB benchmark database.
pub struct Koha {
    pool: MySqlPool,
    anon: i64,
    /// `SHOW CREATE TABLE old_issues` as loaded, to recreate it (with its foreign keys,
    /// which `CREATE TABLE … LIKE` would drop).
    ddl: String,
    /// How `reset` puts the table back.
    pristine: Pristine,
    shape: serde_json::Value,
}

/// Where the generated `old_issues` is kept for `reset`.
enum Pristine {
    /// InnoDB's own export of the table (`FLUSH TABLES … FOR EXPORT`: its `.ibd` and
    /// `.cfg`), copied into this folder; a reset imports a copy with `ALTER TABLE …
    /// IMPORT TABLESPACE`. Needs the server's data directory on this machine, writable
    /// by this process. At 10M rows this takes seconds where reloading the rows took
    /// 190–233 s (through the default 128 MiB buffer pool).
    Tablespace {
        saved: std::path::PathBuf,
        live: std::path::PathBuf,
    },
    /// A copy table in the same database, reloaded with `INSERT … SELECT`.
    Table,
}

fn cutoff_local(c: DateTime<FixedOffset>) -> NaiveDateTime {
    // Koha's DATETIME holds the library's wall time; the benchmark's zone is UTC.
    c.naive_local()
}

async fn exec(pool: &MySqlPool, sql: &str) -> Result<()> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .with_context(|| format!("MariaDB: {}", &sql[..sql.len().min(120)]))?;
    Ok(())
}

/// One value of a one-row query, as a signed 64-bit integer (MariaDB's INT and
/// unsigned results do not decode as `i64` otherwise).
async fn scalar(pool: &MySqlPool, sql: &str) -> Result<i64> {
    let row = sqlx::query(AssertSqlSafe(format!("SELECT CAST(({sql}) AS SIGNED)")))
        .fetch_one(pool)
        .await
        .with_context(|| format!("MariaDB: {sql}"))?;
    Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
}

impl Koha {
    /// Creates `lethe_bench` afresh (dropping an old one), loads the fixture, the
    /// demo's patrons and items, then `rows` rows of `old_issues`, 2 % of them with an
    /// open fine, and keeps a pristine copy of the table.
    pub async fn setup(rows: u64, bench_dir: &std::path::Path, linked_index: bool) -> Result<Koha> {
        match Self::build(rows, bench_dir, linked_index).await {
            Ok(b) => Ok(b),
            Err(e) => {
                // Leave no half-built database behind.
                if let Ok(admin) = MySqlPool::connect(&format!("{ROOT}/")).await {
                    let _ = exec(&admin, &format!("DROP DATABASE IF EXISTS `{DB}`")).await;
                    admin.close().await;
                }
                Err(e)
            }
        }
    }

    async fn build(rows: u64, bench_dir: &std::path::Path, linked_index: bool) -> Result<Koha> {
        let admin = MySqlPool::connect(&format!("{ROOT}/"))
            .await
            .context("MariaDB at 127.0.0.1:3306 (root, no password)")?;
        exec(&admin, &format!("DROP DATABASE IF EXISTS `{DB}`")).await?;
        exec(
            &admin,
            &format!("CREATE DATABASE `{DB}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"),
        )
        .await?;
        admin.close().await;
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{ROOT}/{DB}"))
            .await?;
        let ddl = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/koha_mysql.sql"),
        )?;
        exec(&pool, &ddl).await?;

        // Patrons and items from the demo generator (its own old_issues: none).
        let patrons = (rows / 50).clamp(1000, 200_000) as usize;
        let mut opts = lethe::demo::DemoOptions::standard(chrono::Utc::now().date_naive());
        opts.patrons = patrons;
        opts.returned_checkouts = 0;
        opts.timezone = chrono_tz::UTC;
        let stats = lethe::demo::populate(lethe::demo::DemoTarget::MySql(&pool), &opts).await?;
        let anon = stats.anonymous_patron;
        generate(&pool, rows, anon).await?;
        if linked_index {
            exec(
                &pool,
                "ALTER TABLE checkout_renewals ADD INDEX lethe_checkout_renewals_checkout_id (checkout_id)",
            )
            .await?;
        }

        let row = sqlx::query("SHOW CREATE TABLE old_issues")
            .fetch_one(&pool)
            .await?;
        let ddl: String = row.try_get(1)?;
        let pristine = match export_tablespace(&pool, bench_dir).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!(
                    "  no tablespace export ({e:#}); resets reload a copy table with INSERT … SELECT"
                );
                exec(
                    &pool,
                    "CREATE TABLE bench_old_issues_pristine LIKE old_issues; \
                     INSERT INTO bench_old_issues_pristine SELECT * FROM old_issues",
                )
                .await?;
                Pristine::Table
            }
        };
        let shape = serde_json::json!({
            "patrons": scalar(&pool, "SELECT COUNT(*) FROM borrowers").await?,
            "items": scalar(&pool, "SELECT COUNT(*) FROM items").await?,
            "old_issues": scalar(&pool, "SELECT COUNT(*) FROM old_issues").await?,
            "privacy_0_patrons": scalar(&pool, "SELECT COUNT(*) FROM borrowers WHERE privacy = 0").await?,
            "privacy_2_patrons": scalar(&pool, "SELECT COUNT(*) FROM borrowers WHERE privacy = 2").await?,
            "open_fines_on_old_issues": scalar(&pool, "SELECT COUNT(*) FROM accountlines WHERE old_issue_id IS NOT NULL AND amountoutstanding > 0").await?,
            "innodb_buffer_pool_mib": scalar(&pool, "SELECT @@innodb_buffer_pool_size DIV 1048576").await?,
            "index_on_returndate": false,
            "index_on_checkout_renewals_checkout_id": linked_index,
            "reset": match pristine {
                Pristine::Tablespace { .. } => "tablespace import",
                Pristine::Table => "INSERT … SELECT",
            },
        });
        Ok(Koha {
            pool,
            anon,
            ddl,
            pristine,
            shape,
        })
    }

    async fn drop_procedures(&self) -> Result<()> {
        exec(
            &self.pool,
            "DROP PROCEDURE IF EXISTS bench_ranges_anonymize; DROP PROCEDURE IF EXISTS bench_ranges_delete",
        )
        .await
    }
}

/// Exports `old_issues` with `FLUSH TABLES … FOR EXPORT` (the pool's one connection
/// holds the table's read lock while its files are copied) into
/// `<bench_dir>/mysql-pristine/`. Fails when the server's data directory is not on this
/// machine or not readable here.
async fn export_tablespace(pool: &MySqlPool, bench_dir: &std::path::Path) -> Result<Pristine> {
    let datadir: String = sqlx::query_scalar("SELECT @@datadir")
        .fetch_one(pool)
        .await?;
    let live = std::path::Path::new(&datadir).join(DB);
    if !live.join("old_issues.ibd").exists() {
        bail!("{} holds no old_issues.ibd", live.display());
    }
    let saved = bench_dir.join("mysql-pristine");
    std::fs::create_dir_all(&saved)?;
    exec(pool, "FLUSH TABLES old_issues FOR EXPORT").await?;
    let copied: Result<()> = ["ibd", "cfg"].iter().try_for_each(|ext| {
        std::fs::copy(
            live.join(format!("old_issues.{ext}")),
            saved.join(format!("old_issues.{ext}")),
        )
        .map(|_| ())
        .with_context(|| format!("copying old_issues.{ext}"))
    });
    exec(pool, "UNLOCK TABLES").await?;
    copied?;
    Ok(Pristine::Tablespace { saved, live })
}

/// Gives `file` the owner and group of `dir` (the server's, so that it can open what
/// this process copied in).
fn chown_like(file: &std::path::Path, dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir)?;
    std::os::unix::fs::chown(file, Some(m.uid()), Some(m.gid()))
        .with_context(|| format!("chown {}", file.display()))
}

/// `rows` loans over the demo's patrons (not the AnonymousPatron) and items: 3 % of
/// patrons keep their history forever (privacy 0), 2 % never (privacy 2), and every
/// 50th loan has an open fine.
async fn generate(pool: &MySqlPool, rows: u64, anon: i64) -> Result<()> {
    exec(
        pool,
        "UPDATE borrowers SET privacy = CASE WHEN borrowernumber % 100 < 3 THEN 0 \
         WHEN borrowernumber % 100 < 5 THEN 2 ELSE 1 END",
    )
    .await?;
    sqlx::query("UPDATE borrowers SET privacy = 1 WHERE borrowernumber = ?")
        .bind(anon)
        .execute(pool)
        .await?;
    sqlx::query(
        "CREATE TABLE bench_p (n INT PRIMARY KEY, b INT NOT NULL) \
         SELECT ROW_NUMBER() OVER (ORDER BY borrowernumber) - 1 AS n, borrowernumber AS b \
         FROM borrowers WHERE borrowernumber <> ?",
    )
    .bind(anon)
    .execute(pool)
    .await?;
    exec(
        pool,
        "CREATE TABLE bench_i (n INT PRIMARY KEY, i INT NOT NULL, br VARCHAR(10)) \
         SELECT ROW_NUMBER() OVER (ORDER BY itemnumber) - 1 AS n, itemnumber AS i, homebranch AS br FROM items",
    )
    .await?;
    let np = scalar(pool, "SELECT COUNT(*) FROM bench_p").await?;
    let ni = scalar(pool, "SELECT COUNT(*) FROM bench_i").await?;
    if np == 0 || ni == 0 {
        bail!("the demo made no patrons or no items");
    }
    let age = age_days("s.seq");
    let mut lo = 1;
    while lo <= rows {
        let hi = (lo + CHUNK - 1).min(rows);
        let t = Instant::now();
        exec(
            pool,
            &format!(
                "SET SESSION foreign_key_checks = 0, unique_checks = 0; \
                 INSERT INTO old_issues (issue_id, borrowernumber, issuer_id, itemnumber, date_due, branchcode, \
                   returndate, renewals_count, timestamp, issuedate) \
                 SELECT s.seq, p.b, NULL, i.i, \
                   NOW() - INTERVAL {age} DAY - INTERVAL (s.seq % 86400) SECOND - INTERVAL 2 DAY, i.br, \
                   NOW() - INTERVAL {age} DAY - INTERVAL (s.seq % 86400) SECOND, s.seq % 3, \
                   NOW() - INTERVAL {age} DAY - INTERVAL (s.seq % 86400) SECOND, \
                   NOW() - INTERVAL {age} DAY - INTERVAL (s.seq % 86400) SECOND - INTERVAL 23 DAY \
                 FROM seq_{lo}_to_{hi} s \
                 JOIN bench_p p ON p.n = s.seq % {np} \
                 JOIN bench_i i ON i.n = (s.seq * 31) % {ni}; \
                 SET SESSION foreign_key_checks = 1, unique_checks = 1"
            ),
        )
        .await?;
        eprintln!(
            "  old_issues {lo}..{hi} in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        lo = hi + 1;
    }
    exec(
        pool,
        "INSERT INTO accountlines (old_issue_id, borrowernumber, itemnumber, date, amount, amountoutstanding, \
           description, interface) \
         SELECT issue_id, borrowernumber, itemnumber, returndate, 1.50, 1.50, 'Overdue fine', 'intranet' \
         FROM old_issues WHERE issue_id % 50 = 0; \
         DROP TABLE bench_p; DROP TABLE bench_i; \
         ANALYZE TABLE borrowers, items, accountlines, old_issues",
    )
    .await?;
    Ok(())
}

impl Bench for Koha {
    fn config_yaml(&self, change: Change, tuning: crate::Tuning) -> String {
        koha_config(&format!("{ROOT}/{DB}"), change, tuning)
    }

    fn changes(&self) -> Vec<Change> {
        vec![Change::Anonymize, Change::Delete]
    }

    fn table(&self) -> &'static str {
        "old_issues"
    }

    fn shape(&self) -> serde_json::Value {
        self.shape.clone()
    }

    async fn reset(&mut self) -> Result<()> {
        let t = Instant::now();
        // The table as loaded, empty (its foreign keys with it: checks off meanwhile).
        exec(
            &self.pool,
            &format!(
                "SET SESSION foreign_key_checks = 0; DROP TABLE old_issues; {}",
                self.ddl
            ),
        )
        .await?;
        match &self.pristine {
            Pristine::Tablespace { saved, live } => {
                exec(&self.pool, "ALTER TABLE old_issues DISCARD TABLESPACE").await?;
                for ext in ["ibd", "cfg"] {
                    let to = live.join(format!("old_issues.{ext}"));
                    std::fs::copy(saved.join(format!("old_issues.{ext}")), &to)
                        .with_context(|| format!("copying into {}", to.display()))?;
                    chown_like(&to, live)?;
                }
                exec(&self.pool, "ALTER TABLE old_issues IMPORT TABLESPACE").await?;
                // The .cfg is read by the import only.
                let _ = std::fs::remove_file(live.join("old_issues.cfg"));
            }
            Pristine::Table => {
                exec(
                    &self.pool,
                    "INSERT INTO old_issues SELECT * FROM bench_old_issues_pristine",
                )
                .await?;
            }
        }
        exec(
            &self.pool,
            "SET SESSION foreign_key_checks = 1; ANALYZE TABLE old_issues",
        )
        .await?;
        eprintln!("  reset in {:.1}s", t.elapsed().as_secs_f64());
        Ok(())
    }

    async fn count(&mut self, change: Change, cutoff: DateTime<FixedOffset>) -> Result<u64> {
        let sql = format!(
            "SELECT COUNT(*) FROM old_issues WHERE {}",
            koha_predicate(change)
        );
        let mut q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql));
        if change == Change::Anonymize {
            q = q.bind(self.anon);
        }
        Ok(q.bind(cutoff_local(cutoff)).fetch_one(&self.pool).await? as u64)
    }

    async fn single(&mut self, change: Change, cutoff: DateTime<FixedOffset>) -> Result<u64> {
        let pred = koha_predicate(change);
        let r = match change {
            Change::Anonymize => {
                sqlx::query(AssertSqlSafe(format!(
                    "UPDATE old_issues SET borrowernumber = ? WHERE {pred}"
                )))
                .bind(self.anon)
                .bind(self.anon)
                .bind(cutoff_local(cutoff))
                .execute(&self.pool)
                .await?
            }
            Change::Delete => {
                sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM old_issues WHERE {pred}"
                )))
                .bind(cutoff_local(cutoff))
                .execute(&self.pool)
                .await?
            }
        };
        Ok(r.rows_affected())
    }

    async fn ranges(
        &mut self,
        change: Change,
        cutoff: DateTime<FixedOffset>,
        step: u64,
    ) -> Result<u64> {
        // The procedure's parameters stand where the placeholders were.
        self.drop_procedures().await?;
        let (name, stmt) = match change {
            Change::Anonymize => (
                "bench_ranges_anonymize",
                koha_predicate(change)
                    .replacen('?', "anon", 1)
                    .replacen('?', "cutoff", 1),
            ),
            Change::Delete => (
                "bench_ranges_delete",
                koha_predicate(change).replacen('?', "cutoff", 1),
            ),
        };
        let change_sql = match change {
            Change::Anonymize => format!(
                "UPDATE old_issues SET borrowernumber = anon \
                 WHERE old_issues.issue_id >= s AND old_issues.issue_id < s + step AND {stmt}"
            ),
            Change::Delete => format!(
                "DELETE FROM old_issues \
                 WHERE old_issues.issue_id >= s AND old_issues.issue_id < s + step AND {stmt}"
            ),
        };
        exec(
            &self.pool,
            &format!(
                "CREATE PROCEDURE {name}(IN lo BIGINT, IN hi BIGINT, IN step BIGINT, IN cutoff DATETIME, \
                   IN anon INT, OUT total BIGINT) \
                 BEGIN \
                   DECLARE s BIGINT DEFAULT lo; \
                   SET total = 0; \
                   WHILE s <= hi DO \
                     START TRANSACTION; \
                     {change_sql}; \
                     SET total = total + ROW_COUNT(); \
                     COMMIT; \
                     SET s = s + step; \
                   END WHILE; \
                 END"
            ),
        )
        .await?;
        let lo = scalar(&self.pool, "SELECT MIN(issue_id) FROM old_issues").await?;
        let hi = scalar(&self.pool, "SELECT MAX(issue_id) FROM old_issues").await?;
        let mut conn = self.pool.acquire().await?;
        sqlx::query(AssertSqlSafe(format!(
            "CALL {name}(?, ?, ?, ?, ?, @bench_total)"
        )))
        .bind(lo)
        .bind(hi)
        .bind(step as i64)
        .bind(cutoff_local(cutoff))
        .bind(self.anon)
        .execute(&mut *conn)
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT CAST(@bench_total AS SIGNED)")
            .fetch_one(&mut *conn)
            .await?;
        drop(conn);
        self.drop_procedures().await?;
        Ok(total as u64)
    }

    async fn row_by_row(
        &mut self,
        change: Change,
        cutoff: DateTime<FixedOffset>,
        max_rows: u64,
        max_secs: f64,
    ) -> Result<(u64, f64)> {
        let sql = format!(
            "SELECT CAST(issue_id AS SIGNED) FROM old_issues WHERE {} ORDER BY issue_id LIMIT ?",
            koha_predicate(change)
        );
        let mut q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql));
        if change == Change::Anonymize {
            q = q.bind(self.anon);
        }
        let keys = q
            .bind(cutoff_local(cutoff))
            .bind(max_rows as i64)
            .fetch_all(&self.pool)
            .await?;
        let t = Instant::now();
        let mut n = 0;
        for k in keys {
            let r = match change {
                Change::Anonymize => {
                    sqlx::query("UPDATE old_issues SET borrowernumber = ? WHERE issue_id = ?")
                        .bind(self.anon)
                        .bind(k)
                        .execute(&self.pool)
                        .await?
                }
                Change::Delete => {
                    sqlx::query("DELETE FROM old_issues WHERE issue_id = ?")
                        .bind(k)
                        .execute(&self.pool)
                        .await?
                }
            };
            n += r.rows_affected();
            if t.elapsed().as_secs_f64() >= max_secs {
                break;
            }
        }
        Ok((n, t.elapsed().as_secs_f64()))
    }

    async fn table_rows(&mut self) -> Result<u64> {
        Ok(scalar(&self.pool, "SELECT COUNT(*) FROM old_issues").await? as u64)
    }

    async fn finish(self, keep: bool) -> Result<()> {
        self.pool.close().await;
        if let Pristine::Tablespace { saved, .. } = &self.pristine {
            let _ = std::fs::remove_dir_all(saved);
        }
        if !keep {
            let admin = MySqlPool::connect(&format!("{ROOT}/")).await?;
            exec(&admin, &format!("DROP DATABASE IF EXISTS `{DB}`")).await?;
            admin.close().await;
        } else {
            eprintln!("kept database {DB}");
        }
        Ok(())
    }
}
