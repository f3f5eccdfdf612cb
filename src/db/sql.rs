//! SQL for one class, built with sea-query from validated identifiers, with every value
//! bound as a parameter. Nothing from the config is ever pasted into SQL text.
//!
//! The shapes (the engine runs them in this order):
//! - counts: one scan of the class's in-period rows, `COUNT(CASE WHEN … THEN 1 END)` for
//!   eligible rows and for each exemption reason (a row counts under its first reason);
//! - key range: `MIN(key)`, `MAX(key)`, `COUNT(*)` of the table (primary-key lookups);
//! - a batch: `SELECT key … WHERE key >= lo AND key < hi AND <eligible> [FOR UPDATE]`,
//!   then `UPDATE`/`DELETE … WHERE key IN (<bound keys>) AND <eligible>`. Primary-key
//!   ranges keep the whole pass one scan of the table: STACK.md records a keyset loop
//!   that went quadratic on MariaDB and `IN (SELECT …)` running as a full scan.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{NaiveDateTime, Utc};
use sea_query::{
    Alias, Asterisk, CommonTableExpression, Cond, Condition as SqCond, DeleteStatement, Expr,
    ExprTrait, Func, LockType, Order, Query, SelectStatement, SubQueryOper, SubQueryStatement,
    UnionType, UpdateStatement, WithClause,
};

use crate::config::{
    AgeType, Backend, ClassDef, CmpOp, ColumnTest, Condition, Ident, PatronPeriod, Reason, Scalar,
    Strategy, TableName,
};
use crate::policy::Cutoff;

/// The alias of the other table inside `EXISTS` subqueries.
const OTHER: &str = "lethe_o";
/// The recursive common table expression of a chain condition, and its columns.
const CHAIN: &str = "lethe_chain";
const CHAIN_ID: &str = "lethe_id";
const CHAIN_PARENT: &str = "lethe_parent";
/// The alias of the table in a chain's recursive step.
const PREV: &str = "lethe_p";

/// Patrons' own periods, per source ([`PatronPeriod::key`]): each distinct stored value
/// with the cutoff it gives at the moment of the run. Values Lethe cannot read are left
/// out (their rows are kept).
pub type PatronCutoffs = Arc<HashMap<String, Vec<(String, Cutoff)>>>;

/// Everything the SQL of a class depends on besides the class itself.
#[derive(Debug, Clone)]
pub struct Bindings {
    /// The class's cutoff.
    pub cutoff: Cutoff,
    /// The anonymous patron's id, if the system has one.
    pub anonymous_patron: Option<i64>,
    /// The backend (SQLite compares dates as text and needs them in its own format).
    pub backend: Backend,
    /// Cutoffs from patrons' own periods, for `patron_period` conditions.
    pub patron_cutoffs: PatronCutoffs,
    /// PostgreSQL type names of the purge function's arguments (empty: no casts).
    pub purge_arg_types: Arc<Vec<String>>,
    /// Whether Lethe's legal-hold table exists yet (created by the first run's
    /// migration; before it, no hold can exist).
    pub legal_holds: bool,
    /// The pseudonym key, for classes that pseudonymize (redacted in `Debug`).
    pub pseudonym_key: Option<Arc<secrecy::SecretString>>,
    /// The library's time zone (aggregate months are local months).
    pub timezone: chrono_tz::Tz,
    /// For each `linked:` entry of the class, in order, whether an index serves its
    /// `column` (read from the catalog once per run; missing entries: no). See
    /// [`LinkedVia`].
    pub linked_indexed: Arc<Vec<bool>>,
    /// The batch's key range `[from, to)` when every statement built with these
    /// bindings is limited to it ([`Bindings::within`]); `None` elsewhere. See
    /// [`condition`]'s `exists`.
    pub key_range: Option<(i64, i64)>,
}

impl Bindings {
    /// These bindings for the statements of one batch over keys `[from, to)` (the
    /// range statements, and the key-list form, whose keys all lie in the range).
    pub fn within(&self, from: i64, to: i64) -> Bindings {
        Bindings {
            key_range: Some((from, to)),
            ..self.clone()
        }
    }
}

/// A (schema-qualified) table name for sea-query.
pub(crate) fn table_ref(t: &TableName) -> sea_query::TableName {
    match &t.schema {
        Some(s) => (Alias::new(s.as_str()), Alias::new(t.name.as_str())).into(),
        None => Alias::new(t.name.as_str()).into(),
    }
}

/// `table.column`, qualified with the class table's own name (UPDATE and DELETE take no
/// alias portably).
fn tcol(t: &TableName, c: &Ident) -> Expr {
    match &t.schema {
        Some(s) => Expr::col((
            Alias::new(s.as_str()),
            Alias::new(t.name.as_str()),
            Alias::new(c.as_str()),
        )),
        None => Expr::col((Alias::new(t.name.as_str()), Alias::new(c.as_str()))),
    }
}

fn ocol(c: &Ident) -> Expr {
    Expr::col((Alias::new(OTHER), Alias::new(c.as_str())))
}

fn scalar(v: &Scalar) -> Expr {
    match v {
        Scalar::Bool(x) => Expr::val(*x),
        Scalar::Int(i) => Expr::val(*i),
        Scalar::Float(f) => Expr::val(*f),
        Scalar::Text(s) => Expr::val(s.clone()),
    }
}

fn column_test(col: Expr, t: &ColumnTest) -> SqCond {
    match t {
        ColumnTest::IsNull(_) => Cond::all().add(col.is_null()),
        ColumnTest::NotNull(_) => Cond::all().add(col.is_not_null()),
        ColumnTest::Compare(_, op, v) => {
            let v = scalar(v);
            let cmp = match op {
                CmpOp::Eq => col.clone().eq(v),
                CmpOp::Ne => col.clone().ne(v),
                CmpOp::Gt => col.clone().gt(v),
                CmpOp::Ge => col.clone().gte(v),
                CmpOp::Lt => col.clone().lt(v),
                CmpOp::Le => col.clone().lte(v),
                CmpOp::Like => col.clone().binary(sea_query::BinOper::Like, v),
            };
            // NULL never matches: the condition is always true or false, never NULL, so
            // that NOT(condition) means what it says.
            Cond::all().add(col.is_not_null()).add(cmp)
        }
    }
}

/// A condition on the class table's row, as SQL.
pub fn condition(class: &ClassDef, c: &Condition, b: &Bindings) -> SqCond {
    match c {
        Condition::Column(t) => column_test(tcol(&class.table, t.column()), t),
        Condition::AnonymousPatron(col) => match b.anonymous_patron {
            Some(a) => Cond::all()
                .add(tcol(&class.table, col).is_not_null())
                .add(tcol(&class.table, col).eq(a)),
            // No anonymous patron: never true.
            None => Cond::all().add(Expr::val(1).eq(0)),
        },
        Condition::Exists {
            negated,
            table,
            column,
            matches,
            filter,
        } => {
            let mut sub = Query::select();
            sub.expr(Expr::val(1))
                .from_as(table_ref(table), Alias::new(OTHER))
                .and_where(ocol(column).eq(tcol(&class.table, matches)));
            let bounded = *matches == class.batch_key() && b.backend == Backend::Postgres;
            if let Some((from, to)) = b.key_range.filter(|_| bounded) {
                // `other.column = table.key` and the batch's `key >= from AND key < to`
                // imply the same bounds on `other.column`; PostgreSQL does not carry
                // them through an anti-join by itself. Without them, Evergreen's
                // chain-tail scope (no circulation whose parent_circ is this one) ran as
                // a merge anti-join reading circ_parent_idx from its first entry up to
                // the range, in every batch: 9.5 ms at id 100k, 90 ms at id 950k, and
                // 2.5 ms bounded (BENCHMARKS.md, "PostgreSQL: the chain-tail scope").
                // PostgreSQL only: there a column that compares equal to the integer
                // key compares with integer bounds the same way (a text column is an
                // error in the equality already). SQLite compares a TEXT-affinity
                // column with a bound integer as text ('1000' < '999'), while the
                // equality with the INTEGER key compares numerically: the bounds would
                // hide a matching row, and an exemption such as a fee still owed would
                // stop protecting it. MariaDB and SQLite plan these subqueries as
                // index lookups per row, which need no bounds.
                sub.and_where(ocol(column).gte(from))
                    .and_where(ocol(column).lt(to));
            }
            for f in filter {
                sub.cond_where(column_test(ocol(f.column()), f));
            }
            let e = Expr::exists(sub);
            if *negated {
                Cond::all().add(e.not())
            } else {
                Cond::all().add(e)
            }
        }
        Condition::All(list) => list
            .iter()
            .fold(Cond::all(), |acc, x| acc.add(condition(class, x, b))),
        Condition::Any(list) => list
            .iter()
            .fold(Cond::any(), |acc, x| acc.add(condition(class, x, b))),
        Condition::Not(x) => Cond::all().add(condition(class, x, b).not()),
        Condition::Chain { parent, filter } => chain_condition(class, parent, filter),
        Condition::PatronPeriod(pp) => patron_period_condition(class, pp, b),
        Condition::LegalHold(col) => {
            if !b.legal_holds {
                return Cond::all().add(Expr::val(1).eq(0));
            }
            let mut sub = Query::select();
            sub.expr(Expr::val(1))
                .from_as(Alias::new("lethe_legal_holds"), Alias::new(OTHER))
                .and_where(
                    Expr::col((Alias::new(OTHER), Alias::new("patron")))
                        .eq(tcol(&class.table, col)),
                )
                .and_where(Expr::col((Alias::new(OTHER), Alias::new("released_at"))).is_null());
            Cond::all().add(Expr::exists(sub))
        }
    }
}

/// `WITH RECURSIVE lethe_chain (lethe_id, lethe_parent) AS (<anchor> UNION SELECT p.key,
/// p.parent FROM table p JOIN lethe_chain ON p.key = lethe_chain.lethe_parent)`: the
/// anchor's rows and every row before them in their chains. `UNION` (not `UNION ALL`)
/// ends the recursion even on a cyclic chain. `anchor` selects `(key, parent)`.
fn chain_cte(class: &ClassDef, parent: &Ident, mut anchor: SelectStatement) -> WithClause {
    let mut step = Query::select();
    step.expr(Expr::col((
        Alias::new(PREV),
        Alias::new(class.batch_key().as_str()),
    )))
    .expr(Expr::col((Alias::new(PREV), Alias::new(parent.as_str()))))
    .from_as(table_ref(&class.table), Alias::new(PREV))
    .inner_join(
        Alias::new(CHAIN),
        Expr::col((Alias::new(PREV), Alias::new(class.batch_key().as_str())))
            .equals((Alias::new(CHAIN), Alias::new(CHAIN_PARENT))),
    );
    anchor.union(UnionType::Distinct, step);
    let cte = CommonTableExpression::new()
        .query(anchor)
        .columns([Alias::new(CHAIN_ID), Alias::new(CHAIN_PARENT)])
        .table_name(Alias::new(CHAIN))
        .to_owned();
    WithClause::new().recursive(true).cte(cte).to_owned()
}

/// `EXISTS (WITH RECURSIVE lethe_chain AS (SELECT row.key, row.parent UNION SELECT
/// p.key, p.parent FROM table p JOIN lethe_chain ON p.key = lethe_chain.parent) SELECT 1
/// FROM table o JOIN lethe_chain ON o.key = lethe_chain.id WHERE <filter on o>)`: the
/// row or one of its ancestors meets the filter. `UNION` (not `UNION ALL`) ends the
/// recursion even on a cyclic chain. The anchor refers to the outer row, which
/// PostgreSQL allows inside a sub-select (MariaDB does not: `check` refuses chain
/// conditions there).
fn chain_condition(class: &ClassDef, parent: &Ident, filter: &[ColumnTest]) -> SqCond {
    let mut anchor = Query::select();
    anchor
        .expr_as(tcol(&class.table, &class.batch_key()), Alias::new(CHAIN_ID))
        .expr_as(tcol(&class.table, parent), Alias::new(CHAIN_PARENT));
    let with = chain_cte(class, parent, anchor);
    let mut last = Query::select();
    last.expr(Expr::val(1))
        .from_as(table_ref(&class.table), Alias::new(OTHER))
        .inner_join(
            Alias::new(CHAIN),
            ocol(&class.batch_key()).equals((Alias::new(CHAIN), Alias::new(CHAIN_ID))),
        );
    for f in filter {
        last.cond_where(column_test(ocol(f.column()), f));
    }
    let e = Expr::SubQuery(
        Some(SubQueryOper::Exists),
        Box::new(SubQueryStatement::WithStatement(with.query(last))),
    );
    Cond::all().add(e)
}

/// The row is older than its patron's own period: for each distinct stored value `v`
/// with cutoff `c`, `EXISTS (SELECT 1 FROM settings o WHERE o.patron = row.patron AND
/// o.name = N AND o.value = v) AND age < c`, OR-ed. No readable value: never true.
fn patron_period_condition(class: &ClassDef, pp: &PatronPeriod, b: &Bindings) -> SqCond {
    let Some(values) = b.patron_cutoffs.get(&pp.key()).filter(|v| !v.is_empty()) else {
        return Cond::all().add(Expr::val(1).eq(0));
    };
    let age = age_expr(class);
    let mut any = Cond::any();
    for (value, cutoff) in values {
        let mut sub = Query::select();
        sub.expr(Expr::val(1))
            .from_as(table_ref(&pp.table), Alias::new(OTHER))
            .and_where(ocol(&pp.column).eq(tcol(&class.table, &pp.matches)))
            .and_where(ocol(&pp.name_column).eq(pp.name.clone()))
            .and_where(ocol(&pp.value_column).eq(value.clone()));
        let bc = Bindings {
            cutoff: *cutoff,
            ..b.clone()
        };
        any = any.add(
            Cond::all()
                .add(Expr::exists(sub))
                .add(age.clone().is_not_null())
                .add(age.clone().lt(cutoff_value(class.age.kind, &bc))),
        );
    }
    any
}

/// The bound cutoff value for the class's age type, in the backend's own format.
fn cutoff_value(kind: AgeType, b: &Bindings) -> Expr {
    match (kind, b.backend) {
        (AgeType::Datetime, Backend::Sqlite) => Expr::val(fmt_datetime(b.cutoff.local)),
        (AgeType::Datetime, _) => Expr::val(b.cutoff.local),
        (AgeType::Date, Backend::Sqlite) => Expr::val(b.cutoff.date.format("%Y-%m-%d").to_string()),
        (AgeType::Date, _) => Expr::val(b.cutoff.date),
        (AgeType::Timestamptz, Backend::Sqlite) => Expr::val(fmt_datetime(
            b.cutoff.instant.with_timezone(&Utc).naive_utc(),
        )),
        (AgeType::Timestamptz, _) => Expr::val(b.cutoff.instant.with_timezone(&Utc)),
    }
}

/// `YYYY-MM-DD HH:MM:SS`, the text form SQLite's date columns hold.
pub fn fmt_datetime(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The row's age: its age column, or the first non-NULL of several (`COALESCE`). With
/// `age.from`, the latest such age among the linked rows of the other table: `(SELECT
/// MAX(<age of o>) FROM other o WHERE o.column = row.matches AND <filter on o>)`, NULL
/// when there is none (so the row is never past its period by age).
fn age_expr(class: &ClassDef) -> Expr {
    let own = |col: &dyn Fn(&Ident) -> Expr| -> Expr {
        if class.age.columns.len() == 1 {
            col(&class.age.columns[0])
        } else {
            Func::coalesce(class.age.columns.iter().map(col)).into()
        }
    };
    match &class.age.from {
        None => own(&|c| tcol(&class.table, c)),
        Some(from) => {
            let mut sub = Query::select();
            sub.expr(Func::max(own(&ocol)))
                .from_as(table_ref(&from.table), Alias::new(OTHER))
                .and_where(ocol(&from.column).eq(tcol(&class.table, &from.matches)));
            for f in &from.filter {
                sub.cond_where(column_test(ocol(f.column()), f));
            }
            Expr::SubQuery(None, Box::new(SubQueryStatement::SelectStatement(sub)))
        }
    }
}

/// Whether the class reads its age from another table (`age.from`).
pub fn age_from_other_table(class: &ClassDef) -> bool {
    class.age.from.is_some()
}

/// The row's age is before the cutoff (strictly: a row at the cutoff is kept). A NULL
/// age is never past its period.
fn past_period(class: &ClassDef, b: &Bindings) -> SqCond {
    let age = age_expr(class);
    Cond::all()
        .add(age.clone().is_not_null())
        .add(age.lt(cutoff_value(class.age.kind, b)))
}

/// For anonymize: at least one column is not yet at its target, so a row already
/// anonymized is out of scope and a second run changes nothing.
fn needs_change(class: &ClassDef, b: &Bindings) -> SqCond {
    let mut any = Cond::any();
    for (col, s) in &class.anonymize {
        let c = tcol(&class.table, col);
        any = match s {
            Strategy::SetNull => any.add(c.is_not_null()),
            Strategy::AnonymousPatron => match b.anonymous_patron {
                Some(a) => any.add(Cond::any().add(c.clone().is_null()).add(c.ne(a))),
                None => any.add(c.is_not_null()),
            },
            Strategy::SetValue(v) => {
                any.add(Cond::any().add(c.clone().is_null()).add(c.ne(scalar(v))))
            }
            // Pseudonyms are negative (crate::pseudonym): a value >= 0 is still a real id.
            Strategy::Pseudonym => any.add(Cond::all().add(c.clone().is_not_null()).add(c.gte(0))),
        };
    }
    any
}

/// Rows the class considers: its scope, not yet anonymized, and past the period (or
/// eligible at once by its `immediate` conditions).
pub fn in_period(class: &ClassDef, b: &Bindings) -> SqCond {
    let mut all = Cond::all();
    for c in &class.scope {
        all = all.add(condition(class, c, b));
    }
    if matches!(
        class.action,
        crate::summary::Action::Anonymize | crate::summary::Action::Pseudonymize
    ) && !class.anonymize.is_empty()
    {
        all = all.add(needs_change(class, b));
    }
    let when = if class.immediate.is_empty() {
        past_period(class, b)
    } else {
        let mut imm = Cond::all();
        for c in &class.immediate {
            imm = imm.add(condition(class, c, b));
        }
        Cond::any().add(past_period(class, b)).add(imm)
    };
    all.add(when)
}

/// Any exemption of the class holds.
fn any_exemption(class: &ClassDef, b: &Bindings) -> SqCond {
    let mut any = Cond::any();
    for (_, c) in &class.exempt {
        any = any.add(condition(class, c, b));
    }
    any
}

/// In period and no exemption: the rows the class changes.
pub fn eligible(class: &ClassDef, b: &Bindings) -> SqCond {
    let mut c = in_period(class, b);
    if !class.exempt.is_empty() {
        c = c.add(any_exemption(class, b).not());
    }
    c
}

/// The reason column of [`count_query`]: 0 for an eligible row, `i + 1` for a row kept
/// under `Reason::ALL[i]`.
pub const REASON_COLUMN: &str = "lethe_reason";

/// `SELECT CASE WHEN <an exemption of the first reason> THEN 1 WHEN … ELSE 0 END AS
/// lethe_reason, COUNT(*) FROM table WHERE <in period> GROUP BY lethe_reason`: one scan,
/// each row counted once, under the first reason that keeps it (0: eligible); at most
/// five rows. The class count on SQLite, which evaluates a correlated `EXISTS` once
/// per candidate row wherever it stands, so one scan beats one per reason (1M Koha
/// loans: 1.5 s for four queries). The servers use [`eligible_count_query`] and
/// [`kept_count_query`] instead.
pub fn count_query(class: &ClassDef, b: &Bindings) -> SelectStatement {
    let mut case = sea_query::CaseStatement::new();
    let mut any = false;
    for (i, reason) in Reason::ALL.iter().enumerate() {
        if let Some(this) = reason_exemption(class, b, *reason) {
            case = case.case(this, Expr::val(i as i64 + 1));
            any = true;
        }
    }
    let reason: Expr = if any {
        case.finally(Expr::val(0i64)).into()
    } else {
        Expr::val(0i64)
    };
    let mut q = Query::select();
    q.expr_as(as_i64(reason, b.backend), Alias::new(REASON_COLUMN))
        .expr_as(Func::count(Expr::col(Asterisk)), Alias::new("n"))
        .from(table_ref(&class.table))
        .cond_where(in_period(class, b))
        .group_by_col(Alias::new(REASON_COLUMN));
    q
}

/// `SELECT COUNT(*) FROM table WHERE <in period> AND (<an exemption of reason>) AND NOT
/// (<an exemption of an earlier reason>)`: the rows kept under `reason`, each row
/// counted under the first reason of [`Reason::ALL`] that keeps it. `None` when the
/// class has no exemption of that reason. With [`eligible_count_query`] this is the
/// class's count: one query per reason with every exemption in the `WHERE` clause,
/// where the planner can drive it from the (small) set of exempt patrons as a
/// semi-join. A single scan with one `CASE WHEN EXISTS …` per row evaluated each
/// exemption as a dependent subquery per row instead: 1.9 s against 0.4 s for the
/// eligible count on 1M Koha loans in MariaDB (BENCHMARKS.md).
pub fn kept_count_query(class: &ClassDef, b: &Bindings, reason: Reason) -> Option<SelectStatement> {
    let this = reason_exemption(class, b, reason)?;
    let mut q = Query::select();
    q.expr_as(Func::count(Expr::col(Asterisk)), Alias::new("kept"))
        .from(table_ref(&class.table))
        .cond_where(in_period(class, b))
        .cond_where(this);
    for earlier in Reason::ALL.iter().filter(|r| **r < reason) {
        if let Some(e) = reason_exemption(class, b, *earlier) {
            q.cond_where(e.not());
        }
    }
    Some(q)
}

/// Any exemption of the class under `reason` holds; `None` when it has none.
fn reason_exemption(class: &ClassDef, b: &Bindings, reason: Reason) -> Option<SqCond> {
    let mut any = Cond::any();
    let mut has = false;
    for (r, c) in &class.exempt {
        if *r == reason {
            any = any.add(condition(class, c, b));
            has = true;
        }
    }
    has.then_some(any)
}

/// `SELECT COUNT(*) FROM table WHERE <eligible>`: the rows still to change, without
/// the kept-by-reason columns of [`count_query`] (the check after a pass needs only
/// this, and it is as cheap as the bare count of the same predicate).
pub fn eligible_count_query(class: &ClassDef, b: &Bindings) -> SelectStatement {
    let mut q = Query::select();
    q.expr_as(Func::count(Expr::col(Asterisk)), Alias::new("eligible"))
        .from(table_ref(&class.table))
        .cond_where(eligible(class, b));
    q
}

/// `expr` as a 64-bit integer on every backend (MySQL's INT decodes as `i32`,
/// PostgreSQL's `int4` will not decode as `i64`).
fn as_i64(e: Expr, backend: Backend) -> Expr {
    match backend {
        Backend::MySql => Func::cast_as(e, Alias::new("SIGNED")).into(),
        Backend::Postgres => Func::cast_as(e, Alias::new("BIGINT")).into(),
        Backend::Sqlite => e,
    }
}

fn key_as_i64(class: &ClassDef, backend: Backend) -> Expr {
    as_i64(tcol(&class.table, &class.batch_key()), backend)
}

/// `SELECT MIN(key), MAX(key), COUNT(*) FROM table`, each as a 64-bit integer.
pub fn range_query(class: &ClassDef, backend: Backend) -> SelectStatement {
    let k = tcol(&class.table, &class.batch_key());
    let mut q = Query::select();
    q.expr_as(
        as_i64(Func::min(k.clone()).into(), backend),
        Alias::new("lo"),
    )
    .expr_as(as_i64(Func::max(k).into(), backend), Alias::new("hi"))
    .expr_as(Func::count(Expr::col(Asterisk)), Alias::new("n"))
    .from(table_ref(&class.table));
    q
}

/// `SELECT MIN(key) FROM table WHERE key >= from`: skips gaps in the key space.
pub fn next_key_query(class: &ClassDef, from: i64, backend: Backend) -> SelectStatement {
    let mut q = Query::select();
    let m = as_i64(
        Func::min(tcol(&class.table, &class.batch_key())).into(),
        backend,
    );
    q.expr_as(m, Alias::new("k"))
        .from(table_ref(&class.table))
        .and_where(tcol(&class.table, &class.batch_key()).gte(from));
    q
}

/// The eligible keys in `[lo, hi)`, locked for update where the backend can.
pub fn batch_keys_query(class: &ClassDef, b: &Bindings, lo: i64, hi: i64) -> SelectStatement {
    let mut q = eligible_keys_query(class, b, lo, hi);
    if b.backend != Backend::Sqlite {
        q.lock(LockType::Update);
    }
    q
}

/// The eligible keys in `[lo, hi)`, in order, without locking them.
pub fn eligible_keys_query(class: &ClassDef, b: &Bindings, lo: i64, hi: i64) -> SelectStatement {
    let mut q = Query::select();
    q.expr_as(key_as_i64(class, b.backend), Alias::new("k"))
        .from(table_ref(&class.table))
        .and_where(tcol(&class.table, &class.batch_key()).gte(lo))
        .and_where(tcol(&class.table, &class.batch_key()).lt(hi))
        .cond_where(eligible(class, b))
        .order_by_expr(tcol(&class.table, &class.batch_key()), Order::Asc);
    q
}

fn key_in(class: &ClassDef, keys: &[i64]) -> Expr {
    tcol(&class.table, &class.batch_key()).is_in(padded(keys))
}

/// A list of values for `IN (…)`, padded by repeating its last value to one of a few
/// lengths: the next power of two up to 1,024, then the next multiple of 1,024 (at
/// most 1,023 more values, under SQLite's 32,766 parameters for 10,240 keys and as many
/// patrons). `IN` means the same with a value repeated. Without it, adaptive batches
/// made a new statement text for nearly every batch: sqlx's per-connection cache of
/// prepared statements then closed one statement for each new one, and sqlx sends the
/// close and the next prepare as two writes without waiting between them on a socket
/// without `TCP_NODELAY`, so Nagle's algorithm held the second for the server's delayed
/// ACK: about 40 ms twice per batch on MariaDB (BENCHMARKS.md, "Since the runs").
pub(crate) fn padded<T: Clone>(values: &[T]) -> Vec<T> {
    let n = values.len();
    let target = if n <= 1024 {
        n.next_power_of_two()
    } else {
        n.div_ceil(1024) * 1024
    };
    let mut out = values.to_vec();
    if let Some(last) = values.last() {
        out.resize(target, last.clone());
    }
    out
}

/// The `SET` list of anonymize or pseudonymize. `pseudonyms` maps each id found in the
/// pseudonym column of the rows at hand to its pseudonym (`CASE col WHEN id THEN p …
/// ELSE col END`; an id missing from the map keeps its value, and the row stays
/// eligible for the next batch).
fn set_values(class: &ClassDef, b: &Bindings, pseudonyms: &[(i64, i64)]) -> Vec<(Alias, Expr)> {
    let mut out = Vec::new();
    for (col, s) in &class.anonymize {
        let v: Expr = match s {
            Strategy::SetNull | Strategy::AnonymousPatron | Strategy::SetValue(_) => {
                fixed_value(s, b)
            }
            Strategy::Pseudonym => {
                let c = tcol(&class.table, col);
                let mut case = sea_query::CaseStatement::new();
                for (id, p) in pseudonyms {
                    case = case.case(c.clone().eq(*id), Expr::val(*p));
                }
                if pseudonyms.is_empty() {
                    c
                } else {
                    case.finally(c).into()
                }
            }
        };
        out.push((Alias::new(col.as_str()), v));
    }
    out
}

/// The value a strategy writes whatever the row held: NULL, the anonymous patron (NULL
/// where the system has none) or the fixed value. A pseudonym depends on the row: NULL
/// here (callers never ask: [`ClassDef::linked_value`] gives none).
fn fixed_value(s: &Strategy, b: &Bindings) -> Expr {
    match s {
        Strategy::SetNull | Strategy::Pseudonym => Expr::null(),
        Strategy::AnonymousPatron => match b.anonymous_patron {
            Some(a) => Expr::val(a),
            None => Expr::null(),
        },
        Strategy::SetValue(v) => scalar(v),
    }
}

/// The rows of a class one batch statement covers.
#[derive(Debug, Clone, Copy)]
pub enum BatchRows<'a> {
    /// The keys the key-list form selected (and locked) as eligible.
    Keys(&'a [i64]),
    /// The eligible rows with `from <= key < to`: the one-statement form, which
    /// selects no keys.
    Range(i64, i64),
}

impl BatchRows<'_> {
    /// `key IN (keys)`, or `key >= from AND key < to`.
    fn keys(self, class: &ClassDef) -> SqCond {
        match self {
            BatchRows::Keys(keys) => Cond::all().add(key_in(class, keys)),
            BatchRows::Range(from, to) => key_range(class, from, to),
        }
    }
}

/// `SELECT DISTINCT patron FROM table WHERE <rows> AND patron IS NOT NULL`: the
/// patrons a batch's rows name, for [`linked_statement`]. For [`BatchRows::Range`] the
/// rows are those in the range that are in period (exempt or not), read without
/// locking them (the statement that changes them locks them). `None` for a class
/// without a patron column.
pub fn batch_patrons_query(
    class: &ClassDef,
    b: &Bindings,
    rows: BatchRows<'_>,
) -> Option<SelectStatement> {
    let patron = class.patron.as_ref()?;
    let mut q = Query::select();
    q.distinct()
        .expr(tcol(&class.table, patron))
        .from(table_ref(&class.table))
        .cond_where(rows.keys(class))
        .and_where(tcol(&class.table, patron).is_not_null());
    if let BatchRows::Range(..) = rows {
        // In period, not the exemptions (opt-in, legal holds, obligations: the costly
        // part of the predicate): a superset of the eligible rows' patrons, for an
        // index lookup that [`linked_statement`] narrows with the whole predicate.
        q.cond_where(in_period(class, b));
    }
    Some(q)
}

/// How [`linked_statement`] finds the rows of one `linked:` entry.
#[derive(Debug, Clone, Copy)]
pub enum LinkedVia<'a> {
    /// By their `column` (the class's key), when an index serves it: `other.column IN
    /// (keys)` or `other.column >= from AND other.column < to`. Only the linked rows of
    /// the batch's own rows are read.
    Column,
    /// By their patron column, given the patrons of the batch's rows
    /// ([`batch_patrons_query`]): `other.patron IN (patrons)`. Reads every linked row
    /// of those patrons, of this batch's rows or not.
    Patrons(&'a [super::Cell]),
}

/// Whether an index serves `linked:` entry `i` of the class's `column` (see
/// [`Bindings::linked_indexed`]).
pub fn linked_by_column(b: &Bindings, i: usize) -> bool {
    b.linked_indexed.get(i).copied().unwrap_or(false)
}

/// For one `linked:` entry, run in the batch's transaction before the class's change:
/// `UPDATE other SET patron = <value> WHERE <via> AND EXISTS (SELECT 1 FROM table
/// WHERE table.key = other.column AND table.patron = other.patron AND <rows> AND
/// <eligible>)`. Only rows that point at a row the batch changes, and name that row's
/// own patron, are rewritten (a renewal made by staff keeps the staff id). With
/// [`LinkedVia::Patrons`] the patrons are given as values, not as a subquery, so that
/// an index on the patron column finds the rows: Koha indexes
/// `checkout_renewals.renewer_id` and not `checkout_id`, and MariaDB 10.11 runs `IN
/// (SELECT …)` in an UPDATE as a dependent subquery per row of the whole table
/// (EXPLAIN: `index` over the primary key). `<value>`: [`ClassDef::linked_value`].
/// `None` when there is nothing to look up (no patron column, no patrons).
pub fn linked_statement(
    class: &ClassDef,
    b: &Bindings,
    linked: &crate::config::Linked,
    rows: BatchRows<'_>,
    via: LinkedVia<'_>,
) -> Option<UpdateStatement> {
    let patron = class.patron.as_ref()?;
    let found = match via {
        LinkedVia::Column => {
            let c = tcol(&linked.table, &linked.column);
            match rows {
                BatchRows::Keys(keys) => Cond::all().add(c.is_in(padded(keys))),
                BatchRows::Range(from, to) => Cond::all().add(c.clone().gte(from)).add(c.lt(to)),
            }
        }
        LinkedVia::Patrons(patrons) => {
            let values: Vec<Expr> = patrons
                .iter()
                .filter_map(|c| match c {
                    super::Cell::Null => None,
                    super::Cell::Int(i) => Some(Expr::val(*i)),
                    super::Cell::Text(t) => Some(Expr::val(t.clone())),
                })
                .collect();
            if values.is_empty() {
                return None;
            }
            Cond::all().add(tcol(&linked.table, &linked.patron).is_in(padded(&values)))
        }
    };
    let mut inner = Query::select();
    inner
        .expr(Expr::val(1))
        .from(table_ref(&class.table))
        .and_where(tcol(&class.table, &class.batch_key()).eq(tcol(&linked.table, &linked.column)))
        .and_where(tcol(&class.table, patron).eq(tcol(&linked.table, &linked.patron)))
        .cond_where(rows.keys(class))
        .cond_where(eligible(class, b));
    let mut u = Query::update();
    u.table(table_ref(&linked.table))
        .value(
            Alias::new(linked.patron.as_str()),
            fixed_value(&class.linked_value(), b),
        )
        .cond_where(found)
        .and_where(Expr::exists(inner));
    Some(u)
}

/// For a class with `linked:` rows, the one-statement form's guard: `NOT EXISTS
/// (SELECT 1 FROM other WHERE other.column = table.key AND other.patron = table.patron
/// [AND other.patron <> <value>])` for each entry. A row is changed only once no linked
/// row still names its patron: one that became eligible after [`linked_statement`] ran
/// (a patron who revoked an opt-in meanwhile) is left for the next batch pass rather
/// than changed with its renewals still naming the patron. `<value>` (what linked rows
/// are given, when not NULL) is excluded so that a row already holding it is not held
/// back by the linked rows that were given it before.
fn linked_guard(class: &ClassDef, b: &Bindings) -> SqCond {
    let mut all = Cond::all();
    let Some(patron) = class.patron.as_ref() else {
        return all;
    };
    let value = class.linked_value();
    for l in &class.linked {
        let mut inner = Query::select();
        inner
            .expr(Expr::val(1))
            .from(table_ref(&l.table))
            .and_where(tcol(&l.table, &l.column).eq(tcol(&class.table, &class.batch_key())))
            .and_where(tcol(&l.table, &l.patron).eq(tcol(&class.table, patron)));
        let given_nothing = matches!(value, Strategy::SetNull)
            || (value == Strategy::AnonymousPatron && b.anonymous_patron.is_none());
        if !given_nothing {
            inner.and_where(tcol(&l.table, &l.patron).ne(fixed_value(&value, b)));
        }
        all = all.add(Expr::exists(inner).not());
    }
    all
}

/// `UPDATE table SET <strategies> WHERE key IN (keys) AND <eligible>`: the predicate is
/// checked again so that a row that stopped being eligible since it was selected (a new
/// fine, a changed privacy setting) is left alone. `pseudonyms`: see [`set_values`].
pub fn anonymize_statement(
    class: &ClassDef,
    b: &Bindings,
    keys: &[i64],
    pseudonyms: &[(i64, i64)],
) -> UpdateStatement {
    let mut u = Query::update();
    u.table(table_ref(&class.table));
    for (col, v) in set_values(class, b, pseudonyms) {
        u.value(col, v);
    }
    u.and_where(key_in(class, keys))
        .cond_where(eligible(class, b));
    u
}

/// `key >= from AND key < to`: one batch's key range.
fn key_range(class: &ClassDef, from: i64, to: i64) -> SqCond {
    let k = tcol(&class.table, &class.batch_key());
    Cond::all().add(k.clone().gte(from)).add(k.lt(to))
}

/// `UPDATE table SET <strategies> WHERE key >= from AND key < to AND <eligible>`: a
/// whole batch in one statement, for a class that needs no list of the keys it changes
/// (no pseudonym to look up per row). The statement locks what it changes, as the
/// `SELECT … FOR UPDATE` of the key-list form does, and its affected-row count is the
/// batch's count. A class with `linked:` rows adds [`linked_guard`].
pub fn anonymize_range_statement(
    class: &ClassDef,
    b: &Bindings,
    from: i64,
    to: i64,
) -> UpdateStatement {
    let mut u = Query::update();
    u.table(table_ref(&class.table));
    for (col, v) in set_values(class, b, &[]) {
        u.value(col, v);
    }
    u.cond_where(key_range(class, from, to))
        .cond_where(eligible(class, b))
        .cond_where(linked_guard(class, b));
    u
}

/// `DELETE FROM table WHERE key >= from AND key < to AND <eligible>`: a whole batch in
/// one statement, for a delete class with no `delete_with` and no `unlink` (which need
/// the list of keys deleted). A class with `linked:` rows adds [`linked_guard`].
pub fn delete_range_statement(
    class: &ClassDef,
    b: &Bindings,
    from: i64,
    to: i64,
) -> DeleteStatement {
    let mut d = Query::delete();
    d.from_table(table_ref(&class.table))
        .cond_where(key_range(class, from, to))
        .cond_where(eligible(class, b))
        .cond_where(linked_guard(class, b));
    d
}

/// The class's pseudonym column, if it pseudonymizes.
pub fn pseudonym_column(class: &ClassDef) -> Option<&Ident> {
    class
        .anonymize
        .iter()
        .find(|(_, s)| *s == Strategy::Pseudonym)
        .map(|(c, _)| c)
}

/// `SELECT DISTINCT col FROM table WHERE key IN (keys) AND <eligible>`: the ids a
/// pseudonymize batch must map (as 64-bit integers).
pub fn pseudonym_ids_query(
    class: &ClassDef,
    col: &Ident,
    b: &Bindings,
    keys: &[i64],
) -> SelectStatement {
    let mut q = Query::select();
    q.distinct()
        .expr_as(as_i64(tcol(&class.table, col), b.backend), Alias::new("k"))
        .from(table_ref(&class.table))
        .and_where(key_in(class, keys))
        .cond_where(eligible(class, b));
    q
}

/// For a table without a key, on MySQL and PostgreSQL: the rows one batch may change,
/// at most `limit` of the eligible ones. PostgreSQL: `ctid IN (SELECT ctid … WHERE
/// <eligible> LIMIT n FOR UPDATE)` (the physical row address, stable inside the
/// transaction that locked the row); MySQL: `<eligible>` and the statement's own
/// `LIMIT n` (set by the caller: MySQL's UPDATE and DELETE take one, and refuse a
/// subquery on the table they change).
fn limited_rows(class: &ClassDef, b: &Bindings, limit: u64) -> SqCond {
    match b.backend {
        Backend::Postgres => {
            let mut sub = Query::select();
            sub.column(Alias::new("ctid"))
                .from(table_ref(&class.table))
                .cond_where(eligible(class, b))
                .limit(limit)
                .lock(LockType::Update);
            Cond::all()
                .add(Expr::col(Alias::new("ctid")).in_subquery(sub))
                .add(eligible(class, b))
        }
        _ => eligible(class, b),
    }
}

/// Keyless pseudonymize, MySQL and PostgreSQL: the ids in the pseudonym column among
/// at most `limit` eligible rows (locked), as 64-bit integers.
pub fn limited_pseudonym_ids_query(
    class: &ClassDef,
    col: &Ident,
    b: &Bindings,
    limit: u64,
) -> SelectStatement {
    let mut q = Query::select();
    q.expr_as(as_i64(tcol(&class.table, col), b.backend), Alias::new("k"))
        .from(table_ref(&class.table))
        .cond_where(eligible(class, b))
        .limit(limit)
        .lock(LockType::Update);
    q
}

/// Keyless anonymize or pseudonymize, MySQL and PostgreSQL: at most `limit` eligible rows
/// rewritten ([`limited_rows`]); with `pseudonyms`, only rows whose id is in the map.
pub fn limited_anonymize_statement(
    class: &ClassDef,
    b: &Bindings,
    limit: u64,
    pseudonyms: &[(i64, i64)],
) -> UpdateStatement {
    let mut u = Query::update();
    u.table(table_ref(&class.table));
    for (col, v) in set_values(class, b, pseudonyms) {
        u.value(col, v);
    }
    if let (Some(col), false) = (pseudonym_column(class), pseudonyms.is_empty()) {
        u.and_where(tcol(&class.table, col).is_in(padded(
            &pseudonyms.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        )));
    }
    u.cond_where(limited_rows(class, b, limit));
    if b.backend == Backend::MySql {
        u.limit(limit);
    }
    u
}

/// Keyless delete, MySQL and PostgreSQL: at most `limit` eligible rows ([`limited_rows`]).
pub fn limited_delete_statement(class: &ClassDef, b: &Bindings, limit: u64) -> DeleteStatement {
    let mut d = Query::delete();
    d.from_table(table_ref(&class.table))
        .cond_where(limited_rows(class, b, limit));
    if b.backend == Backend::MySql {
        d.limit(limit);
    }
    d
}

/// `SELECT COUNT(*) FROM table WHERE <scope> AND <age> IS NULL`: rows of the class that
/// no period ever reaches, since a NULL age is never past its period (`check` reports
/// them; only `immediate` conditions can make such a row eligible).
pub fn undated_query(class: &ClassDef, b: &Bindings) -> SelectStatement {
    let mut all = Cond::all();
    for c in &class.scope {
        all = all.add(condition(class, c, b));
    }
    let mut q = Query::select();
    q.expr_as(Func::count(Expr::col(Asterisk)), Alias::new("n"))
        .from(table_ref(&class.table))
        .cond_where(all.add(age_expr(class).is_null()));
    q
}

/// `expr` as text on every backend (an aggregate's age and dimensions are read as text).
fn as_text(e: Expr, backend: Backend) -> Expr {
    let to = match backend {
        Backend::MySql => "CHAR",
        _ => "TEXT",
    };
    Func::cast_as(e, Alias::new(to)).into()
}

/// For a keyless aggregate batch: `age <= CAST(upto AS <the age's type>)`, `upto` being
/// an age read back as text by [`aggregate_boundary_query`].
fn upto_cond(class: &ClassDef, b: &Bindings, upto: &str) -> SqCond {
    let ty = match (class.age.kind, b.backend) {
        (AgeType::Date, _) => "DATE",
        (AgeType::Timestamptz, Backend::Postgres) => "TIMESTAMPTZ",
        (_, Backend::Postgres) => "TIMESTAMP",
        _ => "DATETIME",
    };
    Cond::all().add(age_expr(class).lte(Func::cast_as(Expr::val(upto.to_string()), Alias::new(ty))))
}

/// Aggregate: the rows a batch deletes, as text: the age, then the four dimensions
/// ([`crate::config::AggregateBy::columns`]; `''` for one not configured). Either the
/// eligible rows among `keys` or (keyless) the eligible rows with age up to `upto`
/// (all of them when `None`); locked for update where the backend can.
pub fn aggregate_rows_query(
    class: &ClassDef,
    b: &Bindings,
    keys: Option<&[i64]>,
    upto: Option<&str>,
) -> SelectStatement {
    let mut q = Query::select();
    q.expr(as_text(age_expr(class), b.backend));
    let by = class.aggregate.clone().unwrap_or_default();
    for col in by.columns() {
        match col {
            Some(c) => q.expr(as_text(tcol(&class.table, c), b.backend)),
            None => q.expr(Expr::val("")),
        };
    }
    q.from(table_ref(&class.table))
        .cond_where(eligible(class, b));
    if let Some(keys) = keys {
        q.and_where(key_in(class, keys));
    }
    if let Some(u) = upto {
        q.cond_where(upto_cond(class, b, u));
    }
    if b.backend != Backend::Sqlite {
        q.lock(LockType::Update);
    }
    q
}

/// Keyless aggregate, MySQL and PostgreSQL: the age of the `limit`-th oldest eligible
/// row (as text), or none when fewer are left. A batch is then every eligible row up to
/// that age: the same predicate reads and deletes the same rows under lock, so the
/// counts are exact (ties at the boundary make a batch a little larger, never wrong).
pub fn aggregate_boundary_query(class: &ClassDef, b: &Bindings, limit: u64) -> SelectStatement {
    let mut q = Query::select();
    q.expr(as_text(age_expr(class), b.backend))
        .from(table_ref(&class.table))
        .cond_where(eligible(class, b))
        .and_where(age_expr(class).is_not_null())
        .order_by_expr(age_expr(class), Order::Asc)
        .limit(1)
        .offset(limit.saturating_sub(1));
    q
}

/// Keyless aggregate: `DELETE … WHERE <eligible> [AND age <= upto]`.
pub fn aggregate_upto_delete(
    class: &ClassDef,
    b: &Bindings,
    upto: Option<&str>,
) -> DeleteStatement {
    let mut d = Query::delete();
    d.from_table(table_ref(&class.table))
        .cond_where(eligible(class, b));
    if let Some(u) = upto {
        d.cond_where(upto_cond(class, b, u));
    }
    d
}

/// The dimension columns of `lethe_aggregates`, in order.
pub const AGGREGATE_DIMS: [&str; 4] = ["library", "item_type", "patron_category", "kind"];

/// `UPDATE lethe_aggregates SET count = count + n WHERE <class, month, dims>`.
pub fn aggregate_add_statement(
    class: &str,
    month: &str,
    dims: &[String; 4],
    n: i64,
) -> UpdateStatement {
    let mut u = Query::update();
    u.table(Alias::new("lethe_aggregates"))
        .value(Alias::new("count"), Expr::col(Alias::new("count")).add(n))
        .and_where(Expr::col(Alias::new("class")).eq(class))
        .and_where(Expr::col(Alias::new("month")).eq(month));
    for (name, v) in AGGREGATE_DIMS.iter().zip(dims) {
        u.and_where(Expr::col(Alias::new(*name)).eq(v.clone()));
    }
    u
}

/// `INSERT INTO lethe_aggregates …` for a group not counted before.
pub fn aggregate_insert_statement(
    class: &str,
    month: &str,
    dims: &[String; 4],
    n: i64,
) -> sea_query::InsertStatement {
    let mut i = Query::insert();
    i.into_table(Alias::new("lethe_aggregates"))
        .columns(
            ["class", "month"]
                .into_iter()
                .chain(AGGREGATE_DIMS)
                .chain(["count"])
                .map(Alias::new),
        )
        .values_panic(
            [Expr::val(class.to_string()), Expr::val(month.to_string())]
                .into_iter()
                .chain(dims.iter().map(|d| Expr::val(d.clone())))
                .chain([Expr::val(n)]),
        );
    i
}

/// `SELECT COUNT(*) FROM table`: the size of a keyless table, for the circuit breaker.
pub fn table_size_query(class: &ClassDef) -> SelectStatement {
    let mut q = Query::select();
    q.expr_as(Func::count(Expr::col(Asterisk)), Alias::new("n"))
        .from(table_ref(&class.table));
    q
}

/// `DELETE FROM table WHERE key IN (keys) AND <eligible>`.
pub fn delete_statement(class: &ClassDef, b: &Bindings, keys: &[i64]) -> DeleteStatement {
    let mut d = Query::delete();
    d.from_table(table_ref(&class.table))
        .and_where(key_in(class, keys))
        .cond_where(eligible(class, b));
    d
}

/// `DELETE FROM dependent WHERE column IN (keys)`.
pub fn delete_dependent_statement(dep: &crate::config::Dependent, keys: &[i64]) -> DeleteStatement {
    let mut d = Query::delete();
    d.from_table(table_ref(&dep.table))
        .and_where(Expr::col(Alias::new(dep.column.as_str())).is_in(padded(keys)));
    d
}

/// The keys among `keys` that still exist in the class's table.
pub fn existing_keys_query(class: &ClassDef, keys: &[i64], backend: Backend) -> SelectStatement {
    let mut q = Query::select();
    q.expr_as(key_as_i64(class, backend), Alias::new("k"))
        .from(table_ref(&class.table))
        .and_where(key_in(class, keys));
    q
}

/// `SELECT MIN(<age>) FROM table WHERE <eligible>` as text: the oldest row past its
/// period that no exemption keeps (for `lethe verify`).
pub fn oldest_eligible_query(class: &ClassDef, b: &Bindings) -> SelectStatement {
    let age = age_expr(class);
    let as_text = match b.backend {
        Backend::MySql => "CHAR",
        _ => "TEXT",
    };
    let mut q = Query::select();
    q.expr_as(
        Func::cast_as(Func::min(age), Alias::new(as_text)),
        Alias::new("oldest"),
    )
    .from(table_ref(&class.table))
    .cond_where(eligible(class, b));
    q
}

/// `SELECT schema.function(args…)` for one row: the row's key and the configured values
/// are bound. The function name is made of validated identifiers, quoted here for the
/// backend (sea-query writes a custom function's name as given).
pub fn purge_statement(call: &crate::config::PurgeCall, key: i64, b: &Bindings) -> SelectStatement {
    let backend = b.backend;
    let q = |s: &str| match backend {
        Backend::MySql => format!("`{s}`"),
        _ => format!("\"{s}\""),
    };
    let name = match &call.function.schema {
        Some(schema) => format!("{}.{}", q(schema.as_str()), q(call.function.name.as_str())),
        None => q(call.function.name.as_str()),
    };
    let args: Vec<Expr> = call
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let v = match a {
                crate::config::PurgeArg::Key => Expr::val(key),
                crate::config::PurgeArg::Value(v) => scalar(v),
            };
            match b.purge_arg_types.get(i) {
                Some(ty) => Func::cast_as(v, Alias::new(ty.as_str())).into(),
                None => v,
            }
        })
        .collect();
    let mut s = Query::select();
    s.expr(Func::cust(Alias::new(name)).args(args));
    s
}

/// `SELECT DISTINCT value FROM settings WHERE name = N`: the values patrons chose for one
/// setting, at most `limit` of them.
pub fn patron_period_values_query(pp: &PatronPeriod, limit: u64) -> SelectStatement {
    let mut q = Query::select();
    q.distinct()
        .column(Alias::new(pp.value_column.as_str()))
        .from(table_ref(&pp.table))
        .and_where(Expr::col(Alias::new(pp.name_column.as_str())).eq(pp.name.clone()))
        .and_where(Expr::col(Alias::new(pp.value_column.as_str())).is_not_null())
        .limit(limit);
    q
}

/// Rows of `dep` still linked to rows of the class the action has already handled
/// (`purged:`): traces a purge left behind, such as Evergreen's audit rows of a purged
/// patron. `SELECT COUNT(*) FROM dep o WHERE EXISTS (SELECT 1 FROM table WHERE key =
/// o.column AND <purged>)`.
pub fn traces_query(
    class: &ClassDef,
    dep: &crate::config::Dependent,
    b: &Bindings,
) -> SelectStatement {
    let mut inner = Query::select();
    inner
        .expr(Expr::val(1))
        .from(table_ref(&class.table))
        .and_where(tcol(&class.table, &class.batch_key()).eq(ocol(&dep.column)));
    for c in &class.purged {
        inner.cond_where(condition(class, c, b));
    }
    let mut q = Query::select();
    q.expr(as_i64(Func::count(Expr::col(Asterisk)).into(), b.backend))
        .from_as(table_ref(&dep.table), Alias::new(OTHER))
        .and_where(Expr::exists(inner));
    q
}

/// For a class with `unlink:`: one `UPDATE table SET col = value WHERE col = patron AND
/// key IN (<keys, and with a chain the rows before them: WITH RECURSIVE … UNION>)` per
/// column, run in the batch's transaction before the delete.
pub fn unlink_statements(class: &ClassDef, keys: &[i64]) -> Vec<UpdateStatement> {
    let (Some(u), Some(patron)) = (&class.unlink, &class.patron) else {
        return Vec::new();
    };
    let targets: Expr = match &u.chain {
        None => Expr::val(0).eq(0),
        Some(parent) => {
            let mut anchor = Query::select();
            anchor
                .expr_as(
                    Expr::col(Alias::new(class.batch_key().as_str())),
                    Alias::new(CHAIN_ID),
                )
                .expr_as(
                    Expr::col(Alias::new(parent.as_str())),
                    Alias::new(CHAIN_PARENT),
                )
                .from(table_ref(&class.table))
                .and_where(Expr::col(Alias::new(class.batch_key().as_str())).is_in(padded(keys)));
            let with = chain_cte(class, parent, anchor);
            let mut last = Query::select();
            last.column(Alias::new(CHAIN_ID)).from(Alias::new(CHAIN));
            tcol(&class.table, &class.batch_key()).binary(
                sea_query::BinOper::In,
                Expr::SubQuery(
                    None,
                    Box::new(SubQueryStatement::WithStatement(with.query(last))),
                ),
            )
        }
    };
    u.columns
        .iter()
        .map(|col| {
            let mut up = Query::update();
            up.table(table_ref(&class.table))
                .value(Alias::new(col.as_str()), scalar(&u.value))
                .and_where(tcol(&class.table, col).eq(tcol(&class.table, patron)));
            if u.chain.is_some() {
                up.and_where(targets.clone());
            } else {
                up.and_where(key_in(class, keys));
            }
            up
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Class `visits` (key `id`, patron `member_id`, deleted 30 days after `left_at`)
    /// with `extra` YAML lines added to it, parsed as `retention.yaml` would be, and its
    /// bindings (SQLite) with `linked_indexed` as given.
    fn visits_class(extra: &str, indexed: bool) -> (ClassDef, Bindings) {
        let yaml = format!(
            "library: T\ndatabase:\n  url: \"sqlite:///tmp/lethe-unit.db\"\n\
             schedule:\n  cron: \"30 2 * * *\"\n  timezone: UTC\n\
             report:\n  outbox: outbox\nprofile: none\nclasses:\n  visits:\n    table: visits\n    \
             key: id\n    patron: member_id\n    age: {{ columns: [left_at], type: datetime }}\n    \
             retain: 30 days\n    action: delete\n{extra}"
        );
        let cfg =
            crate::config::parse_str(&yaml, "t.yaml", std::path::Path::new("/tmp"), &|_| None)
                .unwrap_or_else(|e| panic!("{e}"));
        let class = cfg.classes[0].clone();
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .map(|t| t.with_timezone(&chrono::Utc))
            .expect("time");
        let b = Bindings {
            cutoff: crate::policy::cutoff(now, chrono_tz::UTC, class.retain).expect("cutoff"),
            anonymous_patron: None,
            backend: Backend::Sqlite,
            patron_cutoffs: Arc::default(),
            purge_arg_types: Arc::default(),
            legal_holds: false,
            pseudonym_key: None,
            timezone: chrono_tz::UTC,
            linked_indexed: Arc::new(vec![indexed]),
            key_range: None,
        };
        (class, b)
    }

    /// [`visits_class`] with one `linked:` entry.
    fn linked_class(indexed: bool) -> (ClassDef, Bindings) {
        visits_class(
            "    linked:\n      - { table: visit_notes, column: visit_id, patron: author_id }\n",
            indexed,
        )
    }

    #[test]
    fn a_postgresql_batch_bounds_subqueries_that_match_its_key_and_no_others() {
        let (class, b) = visits_class(
            "    scope:\n      - not_exists: { table: visits, column: parent_id, matches: id }\n    \
             exempt:\n      - reason: obligations\n        \
             exists: { table: fees, column: member_id, matches: member_id, where: [ { column: owed, gt: 0 } ] }\n",
            false,
        );
        let bounds = r#""lethe_o"."parent_id" >= 100 AND "lethe_o"."parent_id" < 200"#;
        // SQLite: never bounded (a TEXT-affinity column compares with integer bounds as
        // text, so they could hide the row the equality finds).
        let sql = eligible_keys_query(&class, &b.within(100, 200), 100, 200)
            .to_string(sea_query::SqliteQueryBuilder);
        assert!(!sql.contains(r#""lethe_o"."parent_id" >="#), "{sql}");
        let b = Bindings {
            backend: Backend::Postgres,
            ..b
        };
        let sql = eligible_keys_query(&class, &b.within(100, 200), 100, 200)
            .to_string(sea_query::PostgresQueryBuilder);
        assert!(sql.contains(bounds), "{sql}");
        // The fee lookup matches the patron, not the key: no bounds on it.
        assert!(!sql.contains(r#""lethe_o"."member_id" >="#), "{sql}");
        assert!(!sql.contains(r#""lethe_o"."member_id" <"#), "{sql}");
        // Outside a batch (counts, plan) nothing is bounded.
        let count = eligible_count_query(&class, &b).to_string(sea_query::PostgresQueryBuilder);
        assert!(!count.contains(r#""lethe_o"."parent_id" >="#), "{count}");
        // The key-list form's keys all lie in the batch's range: same bounds.
        let d = delete_statement(&class, &b.within(100, 200), &[101, 150])
            .to_string(sea_query::PostgresQueryBuilder);
        assert!(d.contains(bounds), "{d}");
    }

    #[test]
    fn linked_rows_are_found_by_their_column_when_it_is_indexed_else_by_patron() {
        let (class, b) = linked_class(true);
        assert!(linked_by_column(&b, 0));
        let l = &class.linked[0];
        let sql = linked_statement(&class, &b, l, BatchRows::Range(100, 200), LinkedVia::Column)
            .expect("statement")
            .to_string(sea_query::SqliteQueryBuilder);
        assert!(
            sql.contains(r#""visit_notes"."visit_id" >= 100 AND "visit_notes"."visit_id" < 200"#),
            "{sql}"
        );
        assert!(!sql.contains(r#""author_id" IN"#), "{sql}");
        let (_, unindexed) = linked_class(false);
        assert!(!linked_by_column(&unindexed, 0));
        let patrons = [super::super::Cell::Int(7), super::super::Cell::Null];
        let sql = linked_statement(
            &class,
            &unindexed,
            l,
            BatchRows::Range(100, 200),
            LinkedVia::Patrons(&patrons),
        )
        .expect("statement")
        .to_string(sea_query::SqliteQueryBuilder);
        assert!(sql.contains(r#""visit_notes"."author_id" IN (7)"#), "{sql}");
        // No patron to look up: no statement.
        assert!(
            linked_statement(
                &class,
                &unindexed,
                l,
                BatchRows::Range(1, 2),
                LinkedVia::Patrons(&[])
            )
            .is_none()
        );
        // The class's own statement waits for linked rows still naming its patron.
        let d =
            delete_range_statement(&class, &b, 100, 200).to_string(sea_query::SqliteQueryBuilder);
        assert!(
            d.contains(r#"NOT EXISTS(SELECT 1 FROM "visit_notes" WHERE "visit_notes"."visit_id" = "visits"."id" AND "visit_notes"."author_id" = "visits"."member_id")"#),
            "{d}"
        );
    }

    #[test]
    fn in_lists_are_padded_to_a_few_lengths_with_the_last_value() {
        assert!(padded::<i64>(&[]).is_empty());
        assert_eq!(padded(&[7]), [7]);
        assert_eq!(padded(&[1, 2, 3]), [1, 2, 3, 3]);
        assert_eq!(padded(&[1, 2, 3, 4, 5]), [1, 2, 3, 4, 5, 5, 5, 5]);
        let k: Vec<i64> = (0..1000).collect();
        assert_eq!(padded(&k).len(), 1024);
        let k: Vec<i64> = (0..1025).collect();
        let p = padded(&k);
        assert_eq!(p.len(), 2048);
        assert_eq!(p[..1025], k[..]);
        assert!(p[1025..].iter().all(|&x| x == 1024));
        let k: Vec<i64> = (0..10_000).collect();
        assert_eq!(padded(&k).len(), 10_240);
        // Every length from 1 to 10,000 gives one of 20 texts.
        let lengths: std::collections::BTreeSet<usize> =
            (1..=10_000).map(|n| padded(&vec![0u8; n]).len()).collect();
        assert_eq!(lengths.len(), 20);
    }
}
