//! Evergreen shape on PostgreSQL: database `lethe_bench` with
//! tests/fixtures/evergreen_pg.sql, the Evergreen demo's patrons, addresses and
//! copies, and `action.circulation` generated server-side with `generate_series`.
//!
//! The class measured is the Evergreen profile's `circulation_history`: the table a
//! consortium has tens of millions of rows in, and the one Evergreen's own
//! `action.purge_circulations()` times out on. It deletes each eligible chain's last
//! circulation; Evergreen's BEFORE DELETE trigger copies it into
//! `action.aged_circulation` and its AFTER DELETE trigger deletes (ages) the renewed
//! parent, so every method pays the same per-row trigger work. Every 10th circulation
//! renews the one before it (chains of two); every 37th is returned but not paid
//! (`xact_finish` NULL: the chain is kept, reason obligations). `circ_staff` and
//! `checkin_staff` are the administrator, so the class's unlink step (OPAC renewals
//! recorded the patron as staff) finds nothing to rewrite and (b) is one DELETE.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, FixedOffset, Utc};
use sqlx::{AssertSqlSafe, PgPool};

use crate::{Bench, Change, age_days};

const ROOT: &str = "postgres://postgres@127.0.0.1:5432";
const DB: &str = "lethe_bench";
const CHUNK: u64 = 1_000_000;

/// The class's eligibility as written from src/config/profiles/evergreen.yaml: a chain's
/// last circulation (no renewal points to it), finished (or checked in) before the
/// cutoff `$1`, with no unfinished circulation anywhere up its chain. Lethe's legal-hold
/// exemption is left out: the benchmark places no hold.
/// The columns `action.age_circ_on_delete` fills in `action.aged_circulation`.
const AGED_COLUMNS: &str = "id, usr_post_code, usr_home_ou, usr_profile, usr_birth_year, copy_call_number, \
     copy_location, copy_owning_lib, copy_circ_lib, copy_bib_record, xact_start, xact_finish, unrecovered, \
     target_copy, circ_lib, circ_staff, checkin_staff, checkin_lib, renewal_remaining, grace_period, due_date, \
     stop_fines_time, checkin_time, create_time, duration, fine_interval, recurring_fine, max_fine, \
     phone_renewal, desk_renewal, opac_renewal, duration_rule, recurring_fine_rule, max_fine_rule, stop_fines, \
     workstation, checkin_workstation, checkin_scan_time, parent_circ, auto_renewal, auto_renewal_remaining";

const PREDICATE: &str = "NOT EXISTS (SELECT 1 FROM action.circulation r WHERE r.parent_circ = c.id) \
     AND COALESCE(c.xact_finish, c.checkin_time) IS NOT NULL \
     AND COALESCE(c.xact_finish, c.checkin_time) < $1 \
     AND NOT EXISTS (WITH RECURSIVE chain (id, parent) AS ( \
           SELECT c.id, c.parent_circ \
           UNION SELECT p.id, p.parent_circ FROM action.circulation p JOIN chain ON p.id = chain.parent) \
         SELECT 1 FROM action.circulation o JOIN chain ON o.id = chain.id WHERE o.xact_finish IS NULL)";

/// The PostgreSQL benchmark database.
pub struct Evergreen {
    pool: PgPool,
    shape: serde_json::Value,
}

async fn exec(pool: &PgPool, sql: &str) -> Result<()> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .with_context(|| format!("PostgreSQL: {}", &sql[..sql.len().min(120)]))?;
    Ok(())
}

async fn scalar(pool: &PgPool, sql: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(sql.to_string()))
            .fetch_one(pool)
            .await
            .with_context(|| format!("PostgreSQL: {sql}"))?
            .unwrap_or(0),
    )
}

fn utc(c: DateTime<FixedOffset>) -> DateTime<Utc> {
    c.with_timezone(&Utc)
}

impl Evergreen {
    /// Creates `lethe_bench` afresh (dropping an old one), loads the fixture and the
    /// demo's patrons and copies, then `rows` circulations, and keeps a pristine copy.
    pub async fn setup(rows: u64) -> Result<Evergreen> {
        match Self::build(rows).await {
            Ok(b) => Ok(b),
            Err(e) => {
                // Leave no half-built database behind.
                if let Ok(admin) = PgPool::connect(&format!("{ROOT}/postgres")).await {
                    let _ = exec(
                        &admin,
                        &format!("DROP DATABASE IF EXISTS \"{DB}\" WITH (FORCE)"),
                    )
                    .await;
                    admin.close().await;
                }
                Err(e)
            }
        }
    }

    async fn build(rows: u64) -> Result<Evergreen> {
        let admin = PgPool::connect(&format!("{ROOT}/postgres"))
            .await
            .context("PostgreSQL at 127.0.0.1:5432 (postgres, trust)")?;
        exec(
            &admin,
            &format!("DROP DATABASE IF EXISTS \"{DB}\" WITH (FORCE)"),
        )
        .await?;
        exec(&admin, &format!("CREATE DATABASE \"{DB}\"")).await?;
        admin.close().await;
        {
            let loader = PgPool::connect(&format!("{ROOT}/{DB}")).await?;
            let ddl = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/evergreen_pg.sql"),
            )?;
            exec(&loader, &ddl).await?;
            loader.close().await;
        }
        // New connections get the search_path the fixture set on the database.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{ROOT}/{DB}"))
            .await?;
        let mut opts = lethe::demo::evergreen::EvergreenOptions::standard(Utc::now().date_naive());
        opts.patrons = (rows / 50).clamp(1000, 200_000) as usize;
        opts.circulations = 0;
        opts.holds = 0;
        opts.aged_chains = 0;
        opts.aged_holds = 0;
        lethe::demo::evergreen::populate(&pool, &opts).await?;
        generate(&pool, rows).await?;
        exec(
            &pool,
            "CREATE TABLE public.bench_circ_pristine AS SELECT * FROM ONLY action.circulation; \
             CREATE TABLE public.bench_aged_pristine AS SELECT * FROM action.aged_circulation",
        )
        .await?;
        let shape = serde_json::json!({
            "patrons": scalar(&pool, "SELECT COUNT(*) FROM actor.usr WHERE id <> 1").await?,
            "copies": scalar(&pool, "SELECT COUNT(*) FROM asset.copy").await?,
            "circulations": scalar(&pool, "SELECT COUNT(*) FROM action.circulation").await?,
            "renewals": scalar(&pool, "SELECT COUNT(*) FROM action.circulation WHERE parent_circ IS NOT NULL").await?,
            "aged_before": scalar(&pool, "SELECT COUNT(*) FROM action.aged_circulation").await?,
            "unfinished": scalar(&pool, "SELECT COUNT(*) FROM action.circulation WHERE xact_finish IS NULL").await?,
            "shared_buffers": sqlx::query_scalar::<_, String>("SHOW shared_buffers").fetch_one(&pool).await?,
        });
        Ok(Evergreen { pool, shape })
    }
}

/// `rows` circulations over the demo's patrons and copies, ids after the demo's
/// transactions; triggers and foreign keys off while loading (replica role), the
/// copy location filled as `fill_circ_copy_location` would.
async fn generate(pool: &PgPool, rows: u64) -> Result<()> {
    exec(
        pool,
        "CREATE TABLE public.bench_p AS SELECT (ROW_NUMBER() OVER (ORDER BY id)) - 1 AS n, id AS u \
           FROM actor.usr WHERE id <> 1 AND NOT deleted; \
         CREATE UNIQUE INDEX ON public.bench_p (n); \
         CREATE TABLE public.bench_c AS SELECT (ROW_NUMBER() OVER (ORDER BY id)) - 1 AS n, id AS c, \
           circ_lib, location FROM asset.copy; \
         CREATE UNIQUE INDEX ON public.bench_c (n)",
    )
    .await?;
    let np = scalar(pool, "SELECT COUNT(*) FROM public.bench_p").await?;
    let nc = scalar(pool, "SELECT COUNT(*) FROM public.bench_c").await?;
    if np == 0 || nc == 0 {
        bail!("the demo made no patrons or no copies");
    }
    let base = scalar(pool, "SELECT COALESCE(MAX(id), 0) FROM money.billable_xact").await?;
    let age = age_days("g");
    let fin = format!("(now() - ({age}) * interval '1 day' - (g % 86400) * interval '1 second')");
    let mut lo = 1;
    while lo <= rows {
        let hi = (lo + CHUNK - 1).min(rows);
        let t = Instant::now();
        exec(
            pool,
            &format!(
                "SET session_replication_role = replica; \
                 INSERT INTO action.circulation (id, usr, xact_start, xact_finish, unrecovered, target_copy, \
                   circ_lib, circ_staff, checkin_staff, checkin_lib, renewal_remaining, grace_period, due_date, \
                   stop_fines_time, checkin_time, create_time, duration, fine_interval, recurring_fine, max_fine, \
                   duration_rule, recurring_fine_rule, max_fine_rule, stop_fines, copy_location, \
                   checkin_scan_time, parent_circ) \
                 SELECT {base} + g, p.u, {fin} - interval '21 days', \
                   CASE WHEN g % 37 = 0 THEN NULL ELSE {fin} END, NULL, c.c, \
                   c.circ_lib, 1, 1, c.circ_lib, CASE WHEN g % 10 = 9 THEN 1 ELSE 2 END, '1 day', {fin}, \
                   {fin}, {fin}, {fin} - interval '21 days', '21 days', '1 day', 0.25, 5.00, \
                   'default', 'overdue_mid', 'overdue_mid', CASE WHEN g % 10 = 9 THEN 'RENEW' ELSE 'CHECKIN' END, \
                   c.location, {fin}, CASE WHEN g % 10 = 0 AND g > 1 THEN {base} + g - 1 END \
                 FROM generate_series({lo}::bigint, {hi}::bigint) AS g \
                 JOIN public.bench_p p ON p.n = g % {np} \
                 JOIN public.bench_c c ON c.n = (g * 31) % {nc}; \
                 SET session_replication_role = origin"
            ),
        )
        .await?;
        eprintln!(
            "  action.circulation {lo}..{hi} in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        lo = hi + 1;
    }
    exec(
        pool,
        "DROP TABLE public.bench_p; DROP TABLE public.bench_c; \
         SELECT setval('money.billable_xact_id_seq', (SELECT MAX(id) FROM money.billable_xact))",
    )
    .await?;
    // Earlier aged history, as an installation that has purged before has it: with
    // action.aged_circulation empty (and analyzed so), the aging trigger's lookup
    // `all_circulation WHERE id = $1` is planned as a scan of the aged table, which the
    // purge itself then fills: every method slowed quadratically (measured at 100k
    // rows: 258 rows/s for the single DELETE). Ids after the live ones.
    let off = base + rows as i64 + 1;
    exec(
        pool,
        &format!(
            "INSERT INTO action.aged_circulation ({AGED_COLUMNS}) \
             SELECT id + {off}, usr_post_code, usr_home_ou, usr_profile, usr_birth_year, copy_call_number, \
               copy_location, copy_owning_lib, copy_circ_lib, copy_bib_record, xact_start - interval '2 years', \
               checkin_time - interval '2 years', NULL, target_copy, circ_lib, circ_staff, checkin_staff, \
               checkin_lib, renewal_remaining, grace_period, due_date - interval '2 years', \
               stop_fines_time - interval '2 years', checkin_time - interval '2 years', \
               create_time - interval '2 years', duration, fine_interval, recurring_fine, max_fine, \
               phone_renewal, desk_renewal, opac_renewal, duration_rule, recurring_fine_rule, max_fine_rule, \
               stop_fines, workstation, checkin_workstation, checkin_scan_time - interval '2 years', \
               parent_circ + {off}, auto_renewal, auto_renewal_remaining \
             FROM action.all_circulation WHERE id > {base} AND id <= {base} + {half}",
            half = rows / 2
        ),
    )
    .await?;
    // VACUUM cannot run in the implicit transaction of a multi-statement query.
    exec(pool, "VACUUM ANALYZE action.circulation").await?;
    exec(pool, "VACUUM ANALYZE action.aged_circulation").await?;
    Ok(())
}

impl Bench for Evergreen {
    fn config_yaml(&self, _change: Change, tuning: crate::Tuning) -> String {
        let safety = crate::safety_yaml(tuning);
        format!(
            "library: Lethe benchmark\n\
             database:\n  url: \"{ROOT}/{DB}\"\n\
             schedule:\n  cron: \"30 2 * * *\"\n  timezone: UTC\n\
             {safety}\
             report:\n  outbox: outbox\n  on: failures\n\
             profile: evergreen\n\
             classes:\n  circulation_history:\n    retain: 30 days\n  \
             holds_history: {{ enabled: false }}\n  reading_history: {{ enabled: false }}\n  \
             expired_patrons: {{ enabled: false }}\n"
        )
    }

    fn changes(&self) -> Vec<Change> {
        vec![Change::Delete]
    }

    fn table(&self) -> &'static str {
        "action.circulation"
    }

    fn shape(&self) -> serde_json::Value {
        self.shape.clone()
    }

    async fn reset(&mut self) -> Result<()> {
        let t = Instant::now();
        exec(
            &self.pool,
            "SET session_replication_role = replica; \
             TRUNCATE action.circulation, action.aged_circulation, action.usr_circ_history; \
             INSERT INTO action.circulation SELECT * FROM public.bench_circ_pristine; \
             INSERT INTO action.aged_circulation SELECT * FROM public.bench_aged_pristine; \
             SET session_replication_role = origin; \
             ANALYZE action.circulation; ANALYZE action.aged_circulation",
        )
        .await?;
        eprintln!("  reset in {:.1}s", t.elapsed().as_secs_f64());
        Ok(())
    }

    async fn count(&mut self, _change: Change, cutoff: DateTime<FixedOffset>) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM action.circulation c WHERE {PREDICATE}"
        )))
        .bind(utc(cutoff))
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    async fn single(&mut self, _change: Change, cutoff: DateTime<FixedOffset>) -> Result<u64> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM action.circulation AS c WHERE {PREDICATE}"
        )))
        .bind(utc(cutoff))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn ranges(
        &mut self,
        _change: Change,
        cutoff: DateTime<FixedOffset>,
        step: u64,
    ) -> Result<u64> {
        // The chain-tail scope bounded to the range as well, as Lethe's batches bound it:
        // without it PostgreSQL plans a merge anti-join that reads circ_parent_idx from
        // its first entry in every range (BENCHMARKS.md, "PostgreSQL: the chain-tail
        // scope").
        let pred = PREDICATE.replace("$1", "cutoff").replace(
            "r.parent_circ = c.id)",
            "r.parent_circ = c.id AND r.parent_circ >= s AND r.parent_circ < s + step)",
        );
        exec(
            &self.pool,
            &format!(
                "CREATE OR REPLACE PROCEDURE public.bench_ranges(lo BIGINT, hi BIGINT, step BIGINT, \
                   cutoff TIMESTAMPTZ, INOUT total BIGINT DEFAULT 0) LANGUAGE plpgsql AS $p$ \
                 DECLARE s BIGINT := lo; n BIGINT; \
                 BEGIN \
                   total := 0; \
                   WHILE s <= hi LOOP \
                     DELETE FROM action.circulation AS c WHERE c.id >= s AND c.id < s + step AND {pred}; \
                     GET DIAGNOSTICS n = ROW_COUNT; \
                     total := total + n; \
                     COMMIT; \
                     s := s + step; \
                   END LOOP; \
                 END $p$"
            ),
        )
        .await?;
        let lo = scalar(&self.pool, "SELECT MIN(id) FROM action.circulation").await?;
        let hi = scalar(&self.pool, "SELECT MAX(id) FROM action.circulation").await?;
        // PL/pgSQL plans each range's DELETE once per call with the recursive predicate
        // costed far above `jit_above_cost`, so with JIT on (PostgreSQL 15's default)
        // every range paid a compile: 351 s against the single DELETE's 86 s at 1M rows.
        // A DBA writing this loop would switch JIT off for it; the pool has one
        // connection, so the setting holds for the CALL and is reset after.
        exec(&self.pool, "SET jit = off").await?;
        let total: i64 = sqlx::query_scalar("CALL public.bench_ranges($1, $2, $3, $4, NULL)")
            .bind(lo)
            .bind(hi)
            .bind(step as i64)
            .bind(utc(cutoff))
            .fetch_one(&self.pool)
            .await
            .context("CALL public.bench_ranges")?;
        exec(&self.pool, "RESET jit").await?;
        exec(&self.pool, "DROP PROCEDURE public.bench_ranges").await?;
        Ok(total as u64)
    }

    async fn row_by_row(
        &mut self,
        _change: Change,
        cutoff: DateTime<FixedOffset>,
        max_rows: u64,
        max_secs: f64,
    ) -> Result<(u64, f64)> {
        let keys: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT c.id FROM action.circulation c WHERE {PREDICATE} ORDER BY c.id LIMIT $2"
        )))
        .bind(utc(cutoff))
        .bind(max_rows as i64)
        .fetch_all(&self.pool)
        .await?;
        let t = Instant::now();
        let mut n = 0;
        for k in keys {
            n += sqlx::query("DELETE FROM action.circulation WHERE id = $1")
                .bind(k)
                .execute(&self.pool)
                .await?
                .rows_affected();
            if t.elapsed().as_secs_f64() >= max_secs {
                break;
            }
        }
        Ok((n, t.elapsed().as_secs_f64()))
    }

    async fn table_rows(&mut self) -> Result<u64> {
        Ok(scalar(&self.pool, "SELECT COUNT(*) FROM action.circulation").await? as u64)
    }

    async fn finish(self, keep: bool) -> Result<()> {
        self.pool.close().await;
        if keep {
            eprintln!("kept database {DB}");
            return Ok(());
        }
        let admin = PgPool::connect(&format!("{ROOT}/postgres")).await?;
        exec(
            &admin,
            &format!("DROP DATABASE IF EXISTS \"{DB}\" WITH (FORCE)"),
        )
        .await?;
        admin.close().await;
        Ok(())
    }
}
