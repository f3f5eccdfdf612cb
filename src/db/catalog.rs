//! What the database's catalog says about a table's indexes and size, per backend, for
//! `lethe inventory` and the index advice of `lethe check`; and the one DDL statement
//! Lethe ever runs on a library's table, `CREATE INDEX` (`check --create-indexes`).
//!
//! Sources: MySQL/MariaDB `information_schema.STATISTICS` and `TABLES.TABLE_ROWS` (an
//! InnoDB estimate); PostgreSQL `pg_index`/`pg_am` (valid b-tree indexes; an expression
//! is read back with `pg_get_indexdef`) and `pg_class.reltuples` (-1 before the first
//! ANALYZE: then no estimate); SQLite `pragma_index_list`/`pragma_index_info` plus the
//! table's `INTEGER PRIMARY KEY`, which is the rowid and in no index list, and an exact
//! `COUNT(*)` (SQLite keeps no estimate).
//!
//! An age column is served by an index when it is the index's first column (the engine
//! compares it with the cutoff: a range on that column). A class whose age is several
//! columns is compared as `COALESCE(a, b, …)`: only an index on that very expression
//! serves it; PostgreSQL and SQLite have expression indexes, MariaDB/MySQL do not (a
//! stored generated column with an index would; Lethe gives no statement for that, it
//! changes the library system's table definition).

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sea_query::{Alias, Expr, Func, Index, IndexCreateStatement, Query};
use sqlx::{AssertSqlSafe, Row};

use super::{Db, DbError, Target, sql};
use crate::config::{Backend, Ident, TableName};

/// The longest index name per backend: PostgreSQL's `NAMEDATALEN - 1` (63 bytes),
/// MySQL/MariaDB's 64 characters; SQLite has no limit, 64 is kept for one rule.
pub fn name_limit(backend: Backend) -> usize {
    match backend {
        Backend::Postgres => 63,
        Backend::MySql | Backend::Sqlite => 64,
    }
}

/// How long `CREATE INDEX` may take (on Lethe's side and, where the server has a
/// statement limit, the server's): building an index reads the whole table, far
/// longer than any batch statement `safety.statement_timeout` bounds.
pub const INDEX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// One part of an index key, in key order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexPart {
    /// A column, by name as the catalog spells it.
    Column(String),
    /// An expression: PostgreSQL's text of it (`COALESCE(a, b)`), SQLite's
    /// `CREATE INDEX` statement (SQLite keeps no text per part).
    Expression(String),
}

/// One index of a table (only indexes a range comparison can use: on PostgreSQL
/// valid, non-partial b-trees; partial indexes are left out on every backend).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableIndex {
    /// Its name (`PRIMARY` on MySQL, `rowid` for SQLite's integer primary key).
    pub name: String,
    /// Whether it is the primary key.
    pub primary: bool,
    /// Its key, in order.
    pub parts: Vec<IndexPart>,
}

/// Lower case without blanks and quotes, for comparing expressions as catalogs print
/// them (`COALESCE(a, b)`, `coalesce("a","b")`).
fn normal(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != '"' && *c != '`')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The normalized text of `COALESCE(a, b, …)` over `columns`.
fn coalesce_text(columns: &[Ident]) -> String {
    let cols: Vec<String> = columns.iter().map(|c| c.as_str().to_lowercase()).collect();
    format!("coalesce({})", cols.join(","))
}

/// The index among `indexes` that serves a comparison of the age `columns` with a
/// cutoff: for one column, an index whose first part is that column; for several, an
/// index whose first part is `COALESCE` of them in that order. `None` when none does.
pub fn serving<'a>(indexes: &'a [TableIndex], columns: &[Ident]) -> Option<&'a TableIndex> {
    let want = coalesce_text(columns);
    indexes.iter().find(|ix| match (ix.parts.first(), columns) {
        (Some(IndexPart::Column(c)), [one]) => c.eq_ignore_ascii_case(one.as_str()),
        (Some(IndexPart::Expression(e)), [_, _, ..]) => {
            let e = normal(e);
            // PostgreSQL's text is the expression itself; SQLite's is the whole
            // statement, whose key list opens with it.
            e == want || e.contains(&format!("({want}"))
        }
        _ => false,
    })
}

/// The name Lethe gives the index it advises on `table`'s age `columns`:
/// `lethe_<table>_<column>[_<column>…]`, cut to the backend's limit.
pub fn index_name(backend: Backend, table: &TableName, columns: &[Ident]) -> String {
    let mut n = format!("lethe_{}", table.name.as_str());
    for c in columns {
        n.push('_');
        n.push_str(c.as_str());
    }
    // Identifiers are ASCII (Ident): byte truncation is character truncation.
    n.truncate(name_limit(backend));
    n
}

/// The statement that creates the index serving `table`'s age `columns` without
/// blocking writes where the backend can: PostgreSQL `CREATE INDEX CONCURRENTLY IF NOT
/// EXISTS` (several columns: on their `COALESCE`), MariaDB/MySQL `ALTER TABLE … ADD
/// INDEX …, ALGORITHM=INPLACE, LOCK=NONE`, SQLite `CREATE INDEX IF NOT EXISTS` (SQLite
/// locks the file while it builds). `None` where no index can serve: several columns on
/// MariaDB/MySQL (no expression indexes), or a schema-qualified table there.
///
/// Identifiers are [`Ident`]s (letters, digits and `_` only) the caller has checked
/// against the catalog; sea-query quotes them. sea-query has no `ADD INDEX` of `ALTER
/// TABLE`, so the MySQL statement is sea-query's `CREATE INDEX` key list re-framed as
/// the `ALTER TABLE` form, which takes the online options in every MySQL and MariaDB
/// version.
pub fn create_statement(backend: Backend, table: &TableName, columns: &[Ident]) -> Option<String> {
    use sea_query::{MysqlQueryBuilder, PostgresQueryBuilder, SqliteQueryBuilder};
    let name = index_name(backend, table, columns);
    let mut ix: IndexCreateStatement = Index::create();
    ix.name(&name).table(sql::table_ref(table));
    let coalesce = || Func::coalesce(columns.iter().map(|c| Expr::col(Alias::new(c.as_str()))));
    match (columns, backend) {
        ([one], _) => {
            ix.col(Alias::new(one.as_str()));
        }
        ([first, _, ..], Backend::Sqlite) => {
            // sea-query's SQLite index builder takes no expression: its statement for
            // the first column, with the key list replaced by the expression as
            // sea-query renders it in a query.
            ix.col(Alias::new(first.as_str())).if_not_exists();
            let create = ix.to_string(SqliteQueryBuilder);
            let head = &create[..create.find(" (")?];
            let mut q = Query::select();
            q.expr(coalesce());
            let select = q.to_string(SqliteQueryBuilder);
            let expr = select.strip_prefix("SELECT ")?;
            return Some(format!("{head} ({expr})"));
        }
        ([_, _, ..], Backend::Postgres) => {
            ix.col(coalesce());
        }
        _ => return None,
    }
    match backend {
        Backend::Postgres => {
            ix.concurrently().if_not_exists();
            Some(ix.to_string(PostgresQueryBuilder))
        }
        Backend::Sqlite => {
            ix.if_not_exists();
            Some(ix.to_string(SqliteQueryBuilder))
        }
        Backend::MySql => {
            if table.schema.is_some() {
                return None;
            }
            // `CREATE INDEX `n` ON `t` (`c`)` → `ALTER TABLE `t` ADD INDEX `n` (`c`), …`
            let create = ix.to_string(MysqlQueryBuilder);
            let keys = &create[create.find(" (")? + 1..];
            let mut t = Query::select();
            t.from(sql::table_ref(table));
            let select = t.to_string(MysqlQueryBuilder);
            let quoted_table = select.strip_prefix("SELECT  FROM ")?.trim();
            Some(format!(
                "ALTER TABLE {quoted_table} ADD INDEX `{name}` {keys}, ALGORITHM=INPLACE, LOCK=NONE"
            ))
        }
    }
}

impl Db {
    /// Whether an index of `table` serves `columns` ([`serving`]).
    ///
    /// # Errors
    /// The catalog query failed.
    pub async fn index_serves(
        &self,
        table: &TableName,
        columns: &[Ident],
    ) -> Result<bool, DbError> {
        Ok(serving(&self.indexes(table).await?, columns).is_some())
    }

    /// The indexes of `table` that a range comparison can use, each with its key in
    /// order (see the module doc for each backend's source); empty when the table has
    /// none or does not exist.
    ///
    /// # Errors
    /// The catalog query failed.
    pub async fn indexes(&self, table: &TableName) -> Result<Vec<TableIndex>, DbError> {
        // (index, primary, position, column or None for an expression, expression text)
        type Part = (String, bool, i64, Option<String>, Option<String>);
        let mut tx = self.hold().await?;
        let parts: Vec<Part> = bounded!(tx, |t| match t {
            Target::Sqlite(p) => {
                let rows = sqlx::query(
                    "SELECT il.name, il.origin = 'pk', ii.seqno, ii.name, \
                            (SELECT m.sql FROM sqlite_master m WHERE m.type = 'index' AND m.name = il.name) \
                     FROM pragma_index_list(?1) il JOIN pragma_index_info(il.name) ii \
                     WHERE il.partial = 0 ORDER BY il.name, ii.seqno",
                )
                .bind(table.name.as_str())
                .fetch_all(&mut *p)
                .await?;
                let mut out = Vec::new();
                for r in rows {
                    let col: Option<String> = r.try_get(3)?;
                    let text: Option<String> = if col.is_none() { r.try_get(4)? } else { None };
                    out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, col, text));
                }
                // The INTEGER PRIMARY KEY is the rowid: in no index list, yet the
                // best index of all.
                let pk: Vec<(String, String)> = sqlx::query_as(
                    "SELECT name, lower(type) FROM pragma_table_info(?1) WHERE pk > 0",
                )
                .bind(table.name.as_str())
                .fetch_all(&mut *p)
                .await?;
                let pk_index = out.iter().any(|(_, primary, ..)| *primary);
                if let [(col, ty)] = pk.as_slice() {
                    if ty == "integer" && !pk_index {
                        out.push(("rowid".into(), true, 0, Some(col.clone()), None));
                    }
                }
                out
            }
            Target::MySql(p) => {
                let rows = sqlx::query(
                    "SELECT CAST(INDEX_NAME AS CHAR), CAST(SEQ_IN_INDEX AS SIGNED), CAST(COLUMN_NAME AS CHAR) \
                     FROM information_schema.STATISTICS \
                     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                     ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                )
                .bind(table.schema.as_ref().map(|s| s.as_str().to_string()))
                .bind(table.name.as_str())
                .fetch_all(&mut *p)
                .await?;
                let mut out = Vec::new();
                for r in rows {
                    let name: String = r.try_get(0)?;
                    let col: Option<String> = r.try_get(2)?;
                    let text = col.is_none().then(|| "(expression)".to_string());
                    out.push((name.clone(), name == "PRIMARY", r.try_get(1)?, col, text));
                }
                out
            }
            Target::Postgres(p) => {
                let rows = sqlx::query(
                    "SELECT c.relname::text, i.indisprimary, k.n::int8, \
                            CASE WHEN i.indkey[k.n - 1] = 0 THEN NULL \
                                 ELSE pg_get_indexdef(i.indexrelid, k.n, false) END, \
                            pg_get_indexdef(i.indexrelid, k.n, false) \
                     FROM pg_index i \
                     JOIN pg_class c ON c.oid = i.indexrelid \
                     JOIN pg_am am ON am.oid = c.relam \
                     CROSS JOIN LATERAL generate_series(1, i.indnkeyatts::int) AS k(n) \
                     WHERE i.indrelid = to_regclass($1) AND i.indisvalid AND i.indpred IS NULL \
                       AND am.amname = 'btree' \
                     ORDER BY c.relname, k.n",
                )
                .bind(table.to_string())
                .fetch_all(&mut *p)
                .await?;
                let mut out = Vec::new();
                for r in rows {
                    let col: Option<String> = r.try_get(3)?;
                    let text: Option<String> = if col.is_none() { r.try_get(4)? } else { None };
                    out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, col, text));
                }
                out
            }
        })?;
        let mut out: Vec<TableIndex> = Vec::new();
        for (name, primary, _, col, text) in parts {
            let part = match col {
                // PostgreSQL quotes a column name that needs it.
                Some(c) => IndexPart::Column(c.trim_matches('"').to_string()),
                None => IndexPart::Expression(text.unwrap_or_default()),
            };
            match out.last_mut() {
                Some(ix) if ix.name == name => ix.parts.push(part),
                _ => out.push(TableIndex {
                    name,
                    primary,
                    parts: vec![part],
                }),
            }
        }
        Ok(out)
    }

    /// The number of rows of `table`: MySQL/MariaDB's `TABLE_ROWS` and PostgreSQL's
    /// `reltuples` (estimates kept by the server: free to read, off by a few per cent
    /// or, before the first ANALYZE, absent: `None`); SQLite's exact `COUNT(*)`.
    ///
    /// # Errors
    /// The query failed.
    pub async fn row_estimate(&self, table: &TableName) -> Result<Option<u64>, DbError> {
        let mut tx = self.hold().await?;
        let n: Option<i64> = bounded!(tx, |t| match t {
            Target::Sqlite(p) => {
                let mut q = Query::select();
                q.expr(Expr::cust("COUNT(*)")).from(sql::table_ref(table));
                let (s, v) =
                    sea_query_sqlx::SqlxBinder::build_sqlx(&q, sea_query::SqliteQueryBuilder);
                Some(
                    sqlx::query_scalar_with::<_, i64, _>(AssertSqlSafe(s), v)
                        .fetch_one(&mut *p)
                        .await?,
                )
            }
            Target::MySql(p) => sqlx::query_scalar::<_, Option<i64>>(
                "SELECT CAST(TABLE_ROWS AS SIGNED) FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
            )
            .bind(table.schema.as_ref().map(|s| s.as_str().to_string()))
            .bind(table.name.as_str())
            .fetch_optional(&mut *p)
            .await?
            .flatten(),
            Target::Postgres(p) => sqlx::query_scalar::<_, Option<f32>>(
                "SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)"
            )
            .bind(table.to_string())
            .fetch_optional(&mut *p)
            .await?
            .flatten()
            .filter(|n| *n >= 0.0)
            .map(|n| n.round() as i64),
        })?;
        Ok(n.and_then(|n| u64::try_from(n).ok()))
    }

    /// The oldest age of `table`'s rows: the least non-NULL value of `columns` (the
    /// first non-NULL of several), as a date in `tz` (an instant is converted; a
    /// wall time or date is taken as written). `None` when every row's age is NULL or
    /// the table is empty. The columns must have been checked against the catalog.
    /// Reads the whole table when no index serves the columns.
    ///
    /// # Errors
    /// The query failed.
    pub async fn oldest(
        &self,
        table: &TableName,
        columns: &[Ident],
        tz: chrono_tz::Tz,
    ) -> Result<Option<NaiveDate>, DbError> {
        use sea_query_sqlx::SqlxBinder;
        let age: Expr = match columns {
            [one] => Expr::col(Alias::new(one.as_str())),
            _ => Func::coalesce(columns.iter().map(|c| Expr::col(Alias::new(c.as_str())))).into(),
        };
        let mut q = Query::select();
        q.expr(Func::min(age)).from(sql::table_ref(table));
        let mut tx = self.hold().await?;
        bounded!(tx, |t| {
            macro_rules! decode {
                ($row:expr) => {{
                    let r = $row;
                    if let Ok(v) = r.try_get::<Option<DateTime<Utc>>, _>(0) {
                        v.map(|v| v.with_timezone(&tz).date_naive())
                    } else if let Ok(v) = r.try_get::<Option<NaiveDateTime>, _>(0) {
                        v.map(|v| v.date())
                    } else if let Ok(v) = r.try_get::<Option<NaiveDate>, _>(0) {
                        v
                    } else {
                        // SQLite keeps dates as text: `YYYY-MM-DD…`.
                        r.try_get::<Option<String>, _>(0)?
                            .and_then(|s| NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d").ok())
                    }
                }};
            }
            match t {
                Target::Sqlite(p) => {
                    let (s, v) = q.build_sqlx(sea_query::SqliteQueryBuilder);
                    decode!(
                        sqlx::query_with(AssertSqlSafe(s), v)
                            .fetch_one(&mut *p)
                            .await?
                    )
                }
                Target::MySql(p) => {
                    let (s, v) = q.build_sqlx(sea_query::MysqlQueryBuilder);
                    decode!(
                        sqlx::query_with(AssertSqlSafe(s), v)
                            .fetch_one(&mut *p)
                            .await?
                    )
                }
                Target::Postgres(p) => {
                    let (s, v) = q.build_sqlx(sea_query::PostgresQueryBuilder);
                    decode!(
                        sqlx::query_with(AssertSqlSafe(s), v)
                            .fetch_one(&mut *p)
                            .await?
                    )
                }
            }
        })
    }

    /// Runs one statement [`create_statement`] built, outside any transaction
    /// (PostgreSQL's `CONCURRENTLY` refuses one; MySQL's DDL commits implicitly),
    /// bounded by [`INDEX_TIMEOUT`] on Lethe's side and on the server's (PostgreSQL's
    /// `statement_timeout`, MariaDB's `max_statement_time`, set for this statement and
    /// restored after). A PostgreSQL build that fails half-way leaves an invalid index,
    /// which [`Db::indexes`] does not count; drop it (`DROP INDEX CONCURRENTLY`) before
    /// trying again, since `IF NOT EXISTS` would keep it.
    ///
    /// # Errors
    /// The statement failed, or [`DbError::Timeout`].
    pub async fn create_index(&self, statement: &str) -> Result<(), DbError> {
        let mut tx = self.hold().await?;
        let normal_limit = tx.limit;
        tx.limit = INDEX_TIMEOUT.max(normal_limit);
        let long = INDEX_TIMEOUT.as_secs();
        let stmt = statement.to_string();
        bounded!(tx, |t| match t {
            Target::Sqlite(p) => {
                sqlx::raw_sql(AssertSqlSafe(stmt)).execute(&mut *p).await?;
            }
            Target::MySql(p) => {
                // MariaDB only; MySQL's max_execution_time bounds SELECTs alone.
                let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                    "SET SESSION max_statement_time = {long}"
                )))
                .execute(&mut *p)
                .await;
                let r = sqlx::raw_sql(AssertSqlSafe(stmt)).execute(&mut *p).await;
                super::set_mysql_statement_limit(p, normal_limit).await;
                r?;
            }
            Target::Postgres(p) => {
                sqlx::raw_sql(AssertSqlSafe(format!("SET statement_timeout = '{long}s'")))
                    .execute(&mut *p)
                    .await?;
                let r = sqlx::raw_sql(AssertSqlSafe(stmt)).execute(&mut *p).await;
                // Back to the value given at connect.
                sqlx::raw_sql("RESET statement_timeout")
                    .execute(&mut *p)
                    .await?;
                r?;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(cols: &[&str]) -> Vec<Ident> {
        cols.iter().map(|c| Ident::new(c).unwrap()).collect()
    }

    #[test]
    fn statements_per_backend() {
        let t = TableName::new("old_issues").unwrap();
        assert_eq!(
            create_statement(Backend::MySql, &t, &ids(&["returndate"])).unwrap(),
            "ALTER TABLE `old_issues` ADD INDEX `lethe_old_issues_returndate` (`returndate`), ALGORITHM=INPLACE, LOCK=NONE"
        );
        assert_eq!(
            create_statement(Backend::Sqlite, &t, &ids(&["returndate"])).unwrap(),
            r#"CREATE INDEX IF NOT EXISTS "lethe_old_issues_returndate" ON "old_issues" ("returndate")"#
        );
        let c = TableName::new("action.circulation").unwrap();
        assert_eq!(
            create_statement(
                Backend::Postgres,
                &c,
                &ids(&["xact_finish", "checkin_time"])
            )
            .unwrap(),
            r#"CREATE INDEX CONCURRENTLY IF NOT EXISTS "lethe_circulation_xact_finish_checkin_time" ON "action"."circulation" ((COALESCE("xact_finish", "checkin_time")))"#
        );
        assert_eq!(
            create_statement(Backend::MySql, &t, &ids(&["a", "b"])),
            None
        );
        assert_eq!(
            create_statement(Backend::Sqlite, &t, &ids(&["a", "b"])).unwrap(),
            r#"CREATE INDEX IF NOT EXISTS "lethe_old_issues_a_b" ON "old_issues" (COALESCE("a", "b"))"#
        );
    }

    #[test]
    fn names_are_cut_to_the_backend_limit() {
        let long = "t".repeat(63);
        let t = TableName::new(&long).unwrap();
        let n = index_name(Backend::Postgres, &t, &ids(&["returndate"]));
        assert_eq!(n.len(), 63);
        assert!(n.starts_with("lethe_ttt"));
        assert_eq!(index_name(Backend::MySql, &t, &ids(&["x"])).len(), 64);
    }

    #[test]
    fn an_index_serves_its_first_column_or_its_coalesce() {
        let ix = |parts: Vec<IndexPart>| TableIndex {
            name: "i".into(),
            primary: false,
            parts,
        };
        let second = [ix(vec![
            IndexPart::Column("borrowernumber".into()),
            IndexPart::Column("timestamp".into()),
        ])];
        assert!(serving(&second, &ids(&["timestamp"])).is_none());
        assert!(serving(&second, &ids(&["borrowernumber"])).is_some());
        let pg = [ix(vec![IndexPart::Expression(
            "COALESCE(xact_finish, checkin_time)".into(),
        )])];
        assert!(serving(&pg, &ids(&["xact_finish", "checkin_time"])).is_some());
        assert!(serving(&pg, &ids(&["checkin_time", "xact_finish"])).is_none());
        let lite = [ix(vec![IndexPart::Expression(
            r#"CREATE INDEX "x" ON "t" (COALESCE("a", "b"))"#.into(),
        )])];
        assert!(serving(&lite, &ids(&["a", "b"])).is_some());
        // A single column is not served by an expression index over it.
        assert!(serving(&lite, &ids(&["a"])).is_none());
    }
}
