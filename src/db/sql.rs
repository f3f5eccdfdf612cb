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

use chrono::{NaiveDateTime, Utc};
use sea_query::{
    Alias, Asterisk, Cond, Condition as SqCond, DeleteStatement, Expr, ExprTrait, Func, LockType,
    Order, Query, SelectStatement, UpdateStatement,
};

use crate::config::{
    AgeType, Backend, ClassDef, CmpOp, ColumnTest, Condition, Ident, Reason, Scalar, Strategy,
    TableName,
};
use crate::policy::Cutoff;

/// The alias of the other table inside `EXISTS` subqueries.
const OTHER: &str = "lethe_o";

/// Everything the SQL of a class depends on besides the class itself.
#[derive(Debug, Clone, Copy)]
pub struct Bindings {
    /// The class's cutoff.
    pub cutoff: Cutoff,
    /// The anonymous patron's id, if the system has one.
    pub anonymous_patron: Option<i64>,
    /// The backend (SQLite compares dates as text and needs them in its own format).
    pub backend: Backend,
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
    }
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

/// The row's age: its age column, or the first non-NULL of several (`COALESCE`).
fn age_expr(class: &ClassDef) -> Expr {
    if class.age.columns.len() == 1 {
        tcol(&class.table, &class.age.columns[0])
    } else {
        Func::coalesce(class.age.columns.iter().map(|c| tcol(&class.table, c))).into()
    }
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
    if class.action == crate::summary::Action::Anonymize && !class.anonymize.is_empty() {
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

/// One row of [`count_query`]: eligible rows and kept rows by reason.
pub const COUNT_COLUMNS: [&str; 5] = [
    "eligible",
    "opt_in",
    "legal_hold",
    "obligations",
    "protected",
];

/// `SELECT COUNT(CASE WHEN eligible THEN 1 END), COUNT(CASE WHEN <first reason> …) …
/// FROM table WHERE <in period>`: one scan, each row counted once.
pub fn count_query(class: &ClassDef, b: &Bindings) -> SelectStatement {
    let mut q = Query::select();
    q.from(table_ref(&class.table));
    let not_exempt = if class.exempt.is_empty() {
        Cond::all()
    } else {
        Cond::all().add(any_exemption(class, b).not())
    };
    q.expr_as(
        Func::count(Expr::case(not_exempt, 1)),
        Alias::new(COUNT_COLUMNS[0]),
    );
    for (i, reason) in Reason::ALL.iter().enumerate() {
        // Kept under this reason: some exemption of this reason holds, none of an
        // earlier reason does.
        let mut this = Cond::any();
        let mut earlier = Cond::any();
        let mut has_this = false;
        let mut has_earlier = false;
        for (r, c) in &class.exempt {
            if r == reason {
                this = this.add(condition(class, c, b));
                has_this = true;
            } else if r < reason {
                earlier = earlier.add(condition(class, c, b));
                has_earlier = true;
            }
        }
        let when = if !has_this {
            Cond::all().add(Expr::val(1).eq(0))
        } else if has_earlier {
            Cond::all().add(this).add(earlier.not())
        } else {
            Cond::all().add(this)
        };
        q.expr_as(
            Func::count(Expr::case(when, 1)),
            Alias::new(COUNT_COLUMNS[i + 1]),
        );
    }
    q.cond_where(in_period(class, b));
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
    as_i64(tcol(&class.table, &class.key), backend)
}

/// `SELECT MIN(key), MAX(key), COUNT(*) FROM table`, each as a 64-bit integer.
pub fn range_query(class: &ClassDef, backend: Backend) -> SelectStatement {
    let k = tcol(&class.table, &class.key);
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
    let m = as_i64(Func::min(tcol(&class.table, &class.key)).into(), backend);
    q.expr_as(m, Alias::new("k"))
        .from(table_ref(&class.table))
        .and_where(tcol(&class.table, &class.key).gte(from));
    q
}

/// The eligible keys in `[lo, hi)`, locked for update where the backend can.
pub fn batch_keys_query(class: &ClassDef, b: &Bindings, lo: i64, hi: i64) -> SelectStatement {
    let mut q = Query::select();
    q.expr_as(key_as_i64(class, b.backend), Alias::new("k"))
        .from(table_ref(&class.table))
        .and_where(tcol(&class.table, &class.key).gte(lo))
        .and_where(tcol(&class.table, &class.key).lt(hi))
        .cond_where(eligible(class, b))
        .order_by_expr(tcol(&class.table, &class.key), Order::Asc);
    if b.backend != Backend::Sqlite {
        q.lock(LockType::Update);
    }
    q
}

fn key_in(class: &ClassDef, keys: &[i64]) -> Expr {
    tcol(&class.table, &class.key).is_in(keys.iter().copied())
}

/// `UPDATE table SET <strategies> WHERE key IN (keys) AND <eligible>`: the predicate is
/// checked again so that a row that stopped being eligible since it was selected (a new
/// fine, a changed privacy setting) is left alone.
pub fn anonymize_statement(class: &ClassDef, b: &Bindings, keys: &[i64]) -> UpdateStatement {
    let mut u = Query::update();
    u.table(table_ref(&class.table));
    for (col, s) in &class.anonymize {
        let v: Expr = match s {
            Strategy::SetNull => Expr::null(),
            Strategy::AnonymousPatron => match b.anonymous_patron {
                Some(a) => Expr::val(a),
                None => Expr::null(),
            },
            Strategy::SetValue(v) => scalar(v),
        };
        u.value(Alias::new(col.as_str()), v);
    }
    u.and_where(key_in(class, keys))
        .cond_where(eligible(class, b));
    u
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
        .and_where(Expr::col(Alias::new(dep.column.as_str())).is_in(keys.iter().copied()));
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
