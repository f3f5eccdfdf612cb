//! The demo library's rows in every other Koha table that names a patron, each covered
//! by a class of Lethe's Koha profile (ILS-FACTS §4–5): `statistics`, `message_queue`,
//! `action_logs`, `search_history`, `deletedborrowers`, `suggestions`, `illrequests`,
//! `return_claims`, `items_last_borrower`, `pseudonymized_transactions` and
//! `patron_consent` (read by `refused_processing`), and the `message_transport_types` reference rows
//! that Koha's `message_queue` foreign key needs.
//!
//! The rows follow from the patrons and the circulation generated before them: a
//! `statistics` row per checkout, renewal and return, an overdue notice for some late
//! returns, a hold-ready notice for some filled holds, `items_last_borrower` from each
//! item's last return, and so on. They draw from a random generator of their own, so
//! the older tables' rows (whose exact counts tests assert) are the same as before these
//! tables were seeded. Every table has rows past its class's default period and rows
//! within it; where Koha allows a NULL age column, a few rows have none.
//!
//! DATETIME and DATE columns hold the library's wall time; TIMESTAMP columns
//! (`time_queued`, `action_logs.timestamp`, `search_history.time`,
//! `deletedborrowers.updated_on`, `return_claims.resolved_on`,
//! `items_last_borrower.created_on`) hold the UTC instant ([`Clock::instant`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{NaiveDate, NaiveDateTime, TimeDelta};
use rand::Rng;
use sea_query::Value;
use sha2::{Digest, Sha256};

use super::{
    BCRYPT_ALPHABET, BRANCHES, Batch, CITIES, CLASSICS, Catalogue, Clock, Conflict, FEMALE_NAMES,
    Gen, Hold, Kind, Library, Loan, MALE_NAMES, NONFICTION_TOPICS, Population, SURNAMES,
    TITLE_ADJECTIVES, TITLE_NOUNS, cardnumber_for, date, datetime, email_for, g_suffix, int,
    new_patron, opt_date, opt_datetime, opt_int, opt_text, text,
};

/// What the rows are derived from: everything generated before them.
pub(super) struct Sources<'a> {
    pub(super) clock: &'a Clock,
    pub(super) cat: &'a Catalogue,
    pub(super) pop: &'a Population,
    /// Returned checkouts (old_issues), in issue_id order.
    pub(super) loans: &'a [Loan],
    /// Current checkouts (issues).
    pub(super) current: &'a [Loan],
    /// Holds history (old_reserves).
    pub(super) holds: &'a [Hold],
    /// Current holds (reserves).
    pub(super) pending: &'a [Hold],
}

// Column lists: every column exists in the SQLite schema, the MariaDB fixture and
// Koha's kohastructure.sql.
const TRANSPORT_COLS: &[&str] = &["message_transport_type"];
const STATISTICS_COLS: &[&str] = &[
    "datetime",
    "branch",
    "type",
    "itemnumber",
    "itemtype",
    "borrowernumber",
    "categorycode",
    "interface",
];
const MESSAGE_COLS: &[&str] = &[
    "message_id",
    "borrowernumber",
    "subject",
    "content",
    "letter_code",
    "message_transport_type",
    "status",
    "time_queued",
    "updated_on",
    "to_address",
    "from_address",
];
const LOG_COLS: &[&str] = &[
    "action_id",
    "timestamp",
    "user",
    "module",
    "action",
    "object",
    "info",
    "interface",
    "diff",
];
const SEARCH_COLS: &[&str] = &[
    "id",
    "userid",
    "sessionid",
    "query_desc",
    "query_cgi",
    "type",
    "total",
    "time",
];
const DELETED_COLS: &[&str] = &[
    "borrowernumber",
    "cardnumber",
    "surname",
    "firstname",
    "address",
    "city",
    "email",
    "phone",
    "dateofbirth",
    "branchcode",
    "categorycode",
    "dateexpiry",
    "userid",
    "updated_on",
];
const SUGGESTION_COLS: &[&str] = &[
    "suggestionid",
    "suggestedby",
    "suggesteddate",
    "managedby",
    "manageddate",
    "STATUS",
    "note",
    "author",
    "title",
    "patronreason",
    "branchcode",
];
const ILL_COLS: &[&str] = &[
    "illrequest_id",
    "borrowernumber",
    "branchcode",
    "status",
    "placed",
    "completed",
    "notesopac",
    "notesstaff",
];
const CLAIM_COLS: &[&str] = &[
    "id",
    "itemnumber",
    "issue_id",
    "borrowernumber",
    "notes",
    "created_on",
    "resolution",
    "resolved_on",
];
const LAST_BORROWER_COLS: &[&str] = &["id", "itemnumber", "borrowernumber", "created_on"];
const PSEUDONYMIZED_COLS: &[&str] = &[
    "id",
    "hashed_borrowernumber",
    "has_cardnumber",
    "categorycode",
    "branchcode",
    "datetime",
    "transaction_branchcode",
    "transaction_type",
    "itemnumber",
    "itemtype",
];
const CONSENT_COLS: &[&str] = &["id", "borrowernumber", "type", "given_on", "refused_on"];

const LIBRARY_ADDRESS: &str = "circulation@centerville.example.org";

const SUGGESTION_NOTES: &[&str] = &[
    "My book club is reading this next month",
    "For my daughter's school project",
    "The sequel to one you already have",
    "Reviewed in the Sunday paper",
    "Large print edition, please",
];

const SUGGESTION_REASONS: &[&str] = &[
    "Not in the catalogue",
    "The only copy is always on hold",
    "Local author",
    "Requested by several readers",
];

const ILL_NOTES: &[&str] = &[
    "Needed for a class by the 20th",
    "Any edition is fine",
    "Chapter 3 only, a scan would do",
    "Please call rather than e-mail",
];

const ILL_STAFF_NOTES: &[&str] = &[
    "Requested from the state library",
    "Lender charges a fee; patron agreed",
    "Second lender asked after a refusal",
];

const CLAIM_NOTES: &[&str] = &[
    "Says it was returned to the book drop",
    "Says it was returned at another branch",
    "Remembers returning it with two others",
];

const SYSTEM_PREFERENCES: &[(&str, &str)] = &[
    ("OPACPrivacy", "1"),
    ("IssueLog", "1"),
    ("ReturnLog", "1"),
    ("BorrowersLog", "1"),
    ("StoreLastBorrower", "1"),
    ("Pseudonymization", "1"),
    ("OpacPasswordChange", "1"),
    ("CircControl", "ItemHomeLibrary"),
];

/// A `deletedborrowers` copy: the deleted patron's number and the deletion time.
struct Deleted {
    bn: i64,
    at: NaiveDateTime,
}

/// Fills every other table that names a patron (see the module doc).
pub(super) fn generate(g: &mut Gen, s: &Sources<'_>, out: &mut Library) {
    let deleted = deleted_patrons(g, s, out);
    statistics(g, s, &deleted, out);
    notices(g, s, out);
    logs(g, s, &deleted, out);
    searches(g, s, out);
    suggestions(g, s, out);
    ill_requests(g, s, out);
    return_claims(g, s, out);
    last_borrowers(s, out);
    pseudonymized(g, s, out);
    consents(g, s, out);
}

/// The rows of a table whose first column is its id, in the order of their sort key
/// (stable), numbered 1, 2, … as they go.
fn numbered<K: Ord>(
    table: &'static str,
    columns: &'static [&'static str],
    mut rows: Vec<(K, Vec<Value>)>,
) -> Batch {
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut batch = Batch::new(table, columns, Conflict::Fail);
    for (k, (_, mut row)) in rows.into_iter().enumerate() {
        row[0] = int(k as i64 + 1);
        batch.push(row);
    }
    batch
}

/// A wall time strictly before the end of yesterday's history (19:59:59).
fn clamp(s: &Sources<'_>, t: NaiveDateTime) -> NaiveDateTime {
    t.min(s.clock.yesterday_evening)
}

/// Copies of patrons Koha's own tools deleted (delete_patrons.pl keeps a copy in
/// `deletedborrowers`): numbers above every current patron's, one in ten deleted in
/// the last 20 days, the others up to six years ago. Returned by deletion time.
fn deleted_patrons(g: &mut Gen, s: &Sources<'_>, out: &mut Library) -> Vec<Deleted> {
    let today = s.clock.today;
    let first_bn = s.pop.patrons.len() as i64 + 1;
    let count = (s.pop.patrons.len() / 50).max(2);
    let mut batch = Batch::new("deletedborrowers", DELETED_COLS, Conflict::Fail);
    let mut deleted = Vec::with_capacity(count);
    for k in 0..count {
        let kind = if g.chance(0.15) {
            Kind::Child
        } else {
            Kind::Adult
        };
        let p = new_patron(g, kind, today, false);
        let bn = first_bn + k as i64;
        let back = if k % 10 == 0 {
            g.between(1, 20)
        } else {
            g.between(60, 6 * 365)
        };
        let at = g.at(g.days_ago(back), 8, 19);
        let expiry = at.date() - TimeDelta::days(g.between(0, 3 * 365));
        let (city, zip_prefix, _) = CITIES[p.home.city];
        let email = p
            .has_email
            .then(|| email_for(g, p.first, p.surname, g_suffix(bn), "example.com"));
        let userid = p.has_login.then(|| {
            g.tag(&format!(
                "{}.{}{bn}",
                super::ascii_slug(p.first),
                super::ascii_slug(p.surname)
            ))
        });
        batch.push(vec![
            int(bn),
            text(cardnumber_for(g, bn)),
            text(g.tag(p.surname)),
            text(g.tag(p.first)),
            text(g.tag(&format!("{} {}", p.home.number, p.home.street))),
            text(g.tag(&format!("{city} {zip_prefix}{}", p.home.number % 10))),
            opt_text(email),
            text(g.tag(&p.home.phone)),
            opt_date(p.dob),
            text(p.branch),
            text(p.kind.category()),
            date(expiry),
            opt_text(userid),
            s.clock.instant(at),
        ]);
        deleted.push(Deleted { bn, at });
    }
    out.stats.deleted_patrons = batch.rows.len() as u64;
    out.batches.push(batch);
    deleted.sort_by_key(|d| d.at);
    deleted
}

struct Stat {
    at: Option<NaiveDateTime>,
    branch: &'static str,
    kind: &'static str,
    item: Option<usize>,
    bn: Option<i64>,
    category: Option<&'static str>,
    interface: Option<&'static str>,
}

/// `statistics`: Koha writes a row for every checkout, renewal and return, with the
/// patron's borrowernumber and category, and never anonymizes it (a patron deleted
/// since keeps their number there: the loans of deleted patrons name a
/// `deletedborrowers` number). In-house use (`localuse`) has no patron; a few rows
/// brought over from an older system have no time.
fn statistics(g: &mut Gen, s: &Sources<'_>, deleted: &[Deleted], out: &mut Library) {
    let patrons = &s.pop.patrons;
    let mut stats: Vec<Stat> = Vec::with_capacity(s.loans.len() * 2 + s.current.len());
    for l in s.loans.iter().chain(s.current) {
        let (bn, category) = match l.patron {
            Some(i) => (Some(patrons[i].bn), Some(patrons[i].kind.category())),
            None => {
                // Deleted after this checkout: one of the deleted patrons, if any.
                let later = deleted.partition_point(|d| d.at <= l.issued);
                if later < deleted.len() {
                    let d = &deleted[later + g.index(deleted.len() - later)];
                    (Some(d.bn), Some("PT"))
                } else {
                    (None, None)
                }
            }
        };
        let desk = if l.issuer.is_some() {
            "intranet"
        } else {
            "sip"
        };
        let mut push = |at: NaiveDateTime, kind: &'static str, interface: &'static str| {
            stats.push(Stat {
                at: Some(at),
                branch: l.branch,
                kind,
                item: Some(l.item),
                bn,
                category,
                interface: Some(interface),
            });
        };
        push(l.issued, "issue", desk);
        if let Some(r) = l.renewed {
            push(r, "renew", "opac");
        }
        if let Some(r) = l.returned {
            push(r, "return", if g.chance(0.3) { "sip" } else { "intranet" });
        }
    }
    let items = s.cat.items.len();
    for _ in 0..(patrons.len() / 10).max(1) {
        let day = g.day_between(s.clock.history_start, s.clock.history_end);
        stats.push(Stat {
            at: Some(g.at(day, 9, 19)),
            branch: g.pick(BRANCHES).0,
            kind: "localuse",
            item: Some(g.index(items)),
            bn: None,
            category: None,
            interface: Some("intranet"),
        });
    }
    for _ in 0..8 {
        if let Some((i, _, _)) = s.pop.reader(g) {
            stats.push(Stat {
                at: None,
                branch: patrons[i].branch,
                kind: "issue",
                item: None,
                bn: Some(patrons[i].bn),
                category: Some(patrons[i].kind.category()),
                interface: None,
            });
        }
    }
    stats.sort_by_key(|r| r.at);
    let mut batch = Batch::new("statistics", STATISTICS_COLS, Conflict::Fail);
    for r in &stats {
        batch.push(vec![
            opt_datetime(r.at),
            text(r.branch),
            text(r.kind),
            opt_int(r.item.map(|i| i as i64 + 1)),
            opt_text(r.item.map(|_| "BK".to_string())),
            opt_int(r.bn),
            opt_text(r.category.map(str::to_string)),
            opt_text(r.interface.map(str::to_string)),
        ]);
    }
    out.stats.statistics = batch.rows.len() as u64;
    out.batches.push(batch);
}

struct Message {
    patron: usize,
    queued: NaiveDateTime,
    letter: &'static str,
    subject: &'static str,
    body: String,
}

/// `message_queue`: overdue notices (ODUE) for some late returns and current overdue
/// checkouts, hold-ready notices (HOLD) for some filled or waiting holds, each with the
/// patron's name and the title in its text. E-mail where the patron has an address,
/// else SMS or print. Queued in the last day: `pending`; older: `sent`, some `failed`,
/// and a few print notices never printed (`pending`, which the profile keeps). A few
/// rows have no `time_queued`.
fn notices(g: &mut Gen, s: &Sources<'_>, out: &mut Library) {
    let mut transports = Batch::new(
        "message_transport_types",
        TRANSPORT_COLS,
        Conflict::Keep("message_transport_type"),
    );
    for t in ["email", "print", "sms", "phone"] {
        transports.push(vec![text(t)]);
    }
    out.batches.push(transports);

    let (patrons, cat) = (&s.pop.patrons, s.cat);
    let mut messages: Vec<Message> = Vec::new();
    let title_of = |item: usize| {
        let it = &cat.items[item];
        format!("{} ({})", cat.biblios[it.biblio].title, it.barcode)
    };
    let overdue = |g: &mut Gen, l: &Loan, i: usize| {
        let p = &patrons[i];
        Message {
            patron: i,
            queued: g.at(l.due.date() + TimeDelta::days(1), 1, 1),
            letter: "ODUE",
            subject: "Item overdue",
            body: format!(
                "Dear {} {},\n\nAccording to our records, the following item is overdue:\n\n{}, due {}\n\n\
                 Please return or renew it.\n\nCenterville Public Library",
                g.tag(p.first),
                g.tag(p.surname),
                title_of(l.item),
                l.due.format("%m/%d/%Y")
            ),
        }
    };
    for l in s.loans {
        if let (Some(i), Some(r)) = (l.patron, l.returned)
            && r > l.due + TimeDelta::days(1)
            && g.chance(0.35)
        {
            messages.push(overdue(g, l, i));
        }
    }
    for l in s.current {
        if let Some(i) = l.patron
            && l.due.date() < s.clock.today - TimeDelta::days(1)
        {
            messages.push(overdue(g, l, i));
        }
    }
    for h in s.holds.iter().chain(s.pending) {
        let (Some(i), Some(w), Some(item)) = (h.patron, h.waiting, h.item) else {
            continue;
        };
        if !g.chance(0.5) {
            continue;
        }
        let p = &patrons[i];
        messages.push(Message {
            patron: i,
            queued: clamp(s, g.at(w, 9, 19)),
            letter: "HOLD",
            subject: "Hold available for pickup",
            body: format!(
                "Dear {} {},\n\nYou have a hold available for pickup as of {}:\n\n{}\n\n\
                 Centerville Public Library",
                g.tag(p.first),
                g.tag(p.surname),
                w.format("%m/%d/%Y"),
                title_of(item)
            ),
        });
    }
    messages.sort_by_key(|m| m.queued);
    let recent = (s.clock.today - TimeDelta::days(1)).and_time(chrono::NaiveTime::MIN);
    let mut batch = Batch::new("message_queue", MESSAGE_COLS, Conflict::Fail);
    for (k, m) in messages.iter().enumerate() {
        let p = &patrons[m.patron];
        let (transport, to) = match &s.pop.emails[m.patron] {
            Some(e) => ("email", Some(e.clone())),
            None if g.chance(0.5) => ("sms", Some(g.tag(&p.home.phone))),
            None => ("print", None),
        };
        let status = if m.queued >= recent {
            "pending"
        } else if transport == "print" {
            if g.chance(0.15) { "pending" } else { "sent" }
        } else if g.chance(0.06) {
            "failed"
        } else {
            "sent"
        };
        // One in 200 has no time_queued (rows from before Koha filled it in).
        let queued = (k % 200 != 100).then_some(m.queued);
        let updated = m.queued + TimeDelta::minutes(g.between(1, 30));
        batch.push(vec![
            int(k as i64 + 1),
            int(p.bn),
            text(m.subject),
            text(g.tag(&m.body)),
            text(m.letter),
            text(transport),
            text(status),
            queued.map_or(opt_text(None), |q| s.clock.instant(q)),
            s.clock.instant(updated),
            opt_text(to),
            text(LIBRARY_ADDRESS),
        ]);
    }
    out.stats.notices = batch.rows.len() as u64;
    out.batches.push(batch);
}

struct Log {
    at: NaiveDateTime,
    user: i64,
    module: &'static str,
    action: &'static str,
    object: Option<i64>,
    info: String,
    interface: &'static str,
    diff: Option<String>,
}

/// `action_logs`: CIRCULATION ISSUE/RETURN (IssueLog, ReturnLog, on for the last two
/// years; object = borrowernumber, info = itemnumber), MEMBERS CREATE/MODIFY/DELETE
/// (BorrowersLog; MODIFY's diff holds the old and new values), FINES, and the staff-only
/// modules that name no patron and must stay: CATALOGUING (object = biblionumber or
/// itemnumber) and SYSTEMPREFERENCE.
fn logs(g: &mut Gen, s: &Sources<'_>, deleted: &[Deleted], out: &mut Library) {
    let (patrons, today) = (&s.pop.patrons, s.clock.today);
    let since = today - TimeDelta::days(2 * 365);
    let mut logs: Vec<Log> = Vec::new();
    for l in s.loans.iter().chain(s.current) {
        let Some(i) = l.patron else { continue };
        if l.issued.date() < since || !g.chance(0.3) {
            continue;
        }
        let bn = patrons[i].bn;
        let item = (l.item as i64 + 1).to_string();
        logs.push(Log {
            at: l.issued,
            user: l.issuer.unwrap_or(0),
            module: "CIRCULATION",
            action: "ISSUE",
            object: Some(bn),
            info: item.clone(),
            interface: if l.issuer.is_some() {
                "intranet"
            } else {
                "sip"
            },
            diff: None,
        });
        if let Some(r) = l.returned {
            logs.push(Log {
                at: r,
                user: s.pop.staff(g),
                module: "CIRCULATION",
                action: "RETURN",
                object: Some(bn),
                info: item,
                interface: "intranet",
                diff: None,
            });
        }
    }
    for p in patrons {
        if p.kind == Kind::Anonymous {
            continue;
        }
        if p.enrolled >= today - TimeDelta::days(3 * 365) {
            logs.push(Log {
                at: g.at(p.enrolled, 9, 19),
                user: s.pop.staff(g),
                module: "MEMBERS",
                action: "CREATE",
                object: Some(p.bn),
                info: String::new(),
                interface: "intranet",
                diff: None,
            });
        }
        let end = p.expiry.min(today - TimeDelta::days(1));
        if end > p.enrolled && g.chance(0.2) {
            let day = g.day_between(p.enrolled, end);
            let (city, _, area) = CITIES[g.index(CITIES.len())];
            let new_phone = format!("({area}) 555-01{:02}", g.between(0, 99));
            let diff = serde_json::json!({
                "phone": { "after": g.tag(&new_phone), "before": g.tag(&p.home.phone) },
                "city": { "after": g.tag(city) },
            });
            let opac = p.has_login && g.chance(0.4);
            logs.push(Log {
                at: g.at(day, 9, 21),
                user: if opac { p.bn } else { s.pop.staff(g) },
                module: "MEMBERS",
                action: "MODIFY",
                object: Some(p.bn),
                info: diff.to_string(),
                interface: if opac { "opac" } else { "intranet" },
                diff: Some(diff.to_string()),
            });
        }
        if end > p.enrolled && g.chance(0.05) {
            let day = g.day_between(p.enrolled, end);
            logs.push(Log {
                at: g.at(day, 9, 19),
                user: s.pop.staff(g),
                module: "FINES",
                action: "CREATE",
                object: Some(p.bn),
                info: format!(
                    "{{\"amount\":\"{:.2}\",\"type\":\"MANUAL\"}}",
                    g.between(100, 2000) as f64 / 100.0
                ),
                interface: "intranet",
                diff: None,
            });
        }
    }
    for d in deleted {
        logs.push(Log {
            at: d.at,
            user: s.pop.staff(g),
            module: "MEMBERS",
            action: "DELETE",
            object: Some(d.bn),
            info: String::new(),
            interface: "commandline",
            diff: None,
        });
    }
    // Staff-only modules: no patron in them.
    for (b, biblio) in s.cat.biblios.iter().enumerate() {
        if !g.chance(0.3) {
            continue;
        }
        let day = g.days_ago_between(1, 4 * 365);
        logs.push(Log {
            at: g.at(day, 9, 17),
            user: s.pop.staff(g),
            module: "CATALOGUING",
            action: if g.chance(0.5) { "ADD" } else { "MODIFY" },
            object: Some(b as i64 + 1),
            info: "biblio".to_string(),
            interface: "intranet",
            diff: None,
        });
        if g.chance(0.3) {
            let item = biblio.first_item + g.index(biblio.items);
            logs.push(Log {
                at: g.at(day, 9, 17),
                user: s.pop.staff(g),
                module: "CATALOGUING",
                action: "MODIFY",
                object: Some(item as i64 + 1),
                info: format!("item {}", s.cat.items[item].barcode),
                interface: "intranet",
                diff: None,
            });
        }
    }
    let admin = s.pop.staff_bns.first().copied().unwrap_or(0);
    for (name, value) in SYSTEM_PREFERENCES {
        let day = g.days_ago_between(1, 5 * 365);
        logs.push(Log {
            at: g.at(day, 9, 17),
            user: admin,
            module: "SYSTEMPREFERENCE",
            action: "MODIFY",
            object: None,
            info: format!("{name} | {value}"),
            interface: "intranet",
            diff: None,
        });
    }
    logs.sort_by_key(|l| l.at);
    let mut batch = Batch::new("action_logs", LOG_COLS, Conflict::Fail);
    for (k, l) in logs.into_iter().enumerate() {
        batch.push(vec![
            int(k as i64 + 1),
            s.clock.instant(l.at),
            int(l.user),
            text(l.module),
            text(l.action),
            opt_int(l.object),
            text(l.info),
            text(l.interface),
            opt_text(l.diff),
        ]);
    }
    out.stats.action_logs = batch.rows.len() as u64;
    out.batches.push(batch);
}

/// `search_history`: the catalogue searches of some patrons who log in to the OPAC,
/// over the last two years of their account (userid = borrowernumber).
fn searches(g: &mut Gen, s: &Sources<'_>, out: &mut Library) {
    let today = s.clock.today;
    let mut rows: Vec<(NaiveDateTime, i64, String, String)> = Vec::new();
    for p in &s.pop.patrons {
        if !p.has_login || p.kind == Kind::Anonymous || !g.chance(0.35) {
            continue;
        }
        let start = p.enrolled.max(today - TimeDelta::days(2 * 365));
        let end = p.expiry.min(today - TimeDelta::days(1));
        if end < start {
            continue;
        }
        for _ in 0..g.between(1, 8) {
            let term = match g.index(3) {
                0 => g.pick(NONFICTION_TOPICS).0.to_string(),
                1 => {
                    let a = g.pick(CLASSICS).1;
                    a.split(',').next().unwrap_or(a).to_string()
                }
                _ => format!(
                    "{} {}",
                    g.pick(TITLE_ADJECTIVES).to_lowercase(),
                    g.pick(TITLE_NOUNS).to_lowercase()
                ),
            };
            let day = g.day_between(start, end);
            rows.push((g.at(day, 7, 22), p.bn, g.hex_token(), term));
        }
    }
    rows.sort();
    let mut batch = Batch::new("search_history", SEARCH_COLS, Conflict::Fail);
    for (k, (at, bn, session, term)) in rows.into_iter().enumerate() {
        batch.push(vec![
            int(k as i64 + 1),
            int(bn),
            text(session),
            text(g.tag(&format!("kw,wrdl: {term}"))),
            text(g.tag(&format!("idx=kw&q={}", term.replace(' ', "+")))),
            text("biblio"),
            int(g.between(0, 120)),
            s.clock.instant(at),
        ]);
    }
    out.stats.searches = batch.rows.len() as u64;
    out.batches.push(batch);
}

/// An invented title and author ("Surname, First"), canary-tagged like the catalogue's.
fn invented_book(g: &mut Gen) -> (String, String) {
    let title = format!(
        "The {} {}",
        g.pick(TITLE_ADJECTIVES).to_lowercase(),
        g.pick(TITLE_NOUNS).to_lowercase()
    );
    let first = if g.chance(0.5) {
        g.pick(FEMALE_NAMES)
    } else {
        g.pick(MALE_NAMES)
    };
    let author = format!("{}, {first}", g.pick(SURNAMES));
    (g.tag(&title), g.tag(&author))
}

/// `suggestions`: purchase suggestions of the last four years in every status. ASKED
/// ones are recent and not yet managed; the others were managed by staff a few days
/// after; some CHECKED ones have no managed date. A suggestion by a patron deleted
/// since has no `suggestedby` (Koha's ON DELETE SET NULL).
fn suggestions(g: &mut Gen, s: &Sources<'_>, out: &mut Library) {
    let (patrons, today) = (&s.pop.patrons, s.clock.today);
    let yesterday = today - TimeDelta::days(1);
    let mut rows: Vec<(NaiveDate, Vec<Value>)> = Vec::new();
    for _ in 0..(patrons.len() / 25).max(4) {
        let Some((i, start, end)) = s.pop.reader(g) else {
            break;
        };
        let start = start.max(today - TimeDelta::days(4 * 365));
        if end < start {
            continue;
        }
        let mut status = g.pick(&[
            "ASKED",
            "ASKED",
            "CHECKED",
            "ACCEPTED",
            "ACCEPTED",
            "REJECTED",
            "REJECTED",
            "ORDERED",
            "AVAILABLE",
            "AVAILABLE",
        ]);
        let recent = end >= today - TimeDelta::days(60);
        if status == "ASKED" && !recent {
            status = "REJECTED";
        }
        let suggested = if status == "ASKED" {
            g.days_ago_between(1, 60).max(start)
        } else {
            g.day_between(start, end)
        };
        let managed = match status {
            "ASKED" => None,
            "CHECKED" if g.chance(0.3) => None,
            _ => Some((suggested + TimeDelta::days(g.between(1, 30))).min(yesterday)),
        };
        let (title, author) = invented_book(g);
        let bn = (!g.chance(0.03)).then_some(patrons[i].bn);
        let note = g.pick(SUGGESTION_NOTES);
        let reason = g.pick(SUGGESTION_REASONS);
        rows.push((
            suggested,
            vec![
                Value::BigInt(None), // the id, set below
                opt_int(bn),
                date(suggested),
                opt_int(managed.map(|_| s.pop.staff(g))),
                opt_date(managed),
                text(status),
                text(g.tag(note)),
                text(author),
                text(title),
                text(g.tag(reason)),
                text(patrons[i].branch),
            ],
        ));
    }
    let batch = numbered("suggestions", SUGGESTION_COLS, rows);
    out.stats.suggestions = batch.rows.len() as u64;
    out.batches.push(batch);
}

/// `illrequests`: interlibrary loans of the last three years, completed (`COMP`, with a
/// completed date) or still open (`NEW`, `REQ`) or cancelled (`CANCREQ`), neither of
/// which has a completed date.
fn ill_requests(g: &mut Gen, s: &Sources<'_>, out: &mut Library) {
    let (patrons, today) = (&s.pop.patrons, s.clock.today);
    let yesterday = today - TimeDelta::days(1);
    let mut rows: Vec<(NaiveDate, Vec<Value>)> = Vec::new();
    for _ in 0..(patrons.len() / 50).max(4) {
        let Some((i, start, end)) = s.pop.reader(g) else {
            break;
        };
        let start = start.max(today - TimeDelta::days(3 * 365));
        if end < start {
            continue;
        }
        let placed = g.day_between(start, end);
        let done = placed + TimeDelta::days(g.between(7, 45));
        let (status, completed) = match g.index(10) {
            0 | 1 => ("REQ", None),
            2 => ("NEW", None),
            3 => ("CANCREQ", None),
            _ if done <= yesterday => ("COMP", Some(done)),
            _ => ("REQ", None),
        };
        let bn = (!g.chance(0.03)).then_some(patrons[i].bn);
        let (note, staff_note) = (g.pick(ILL_NOTES), g.pick(ILL_STAFF_NOTES));
        rows.push((
            placed,
            vec![
                Value::BigInt(None), // the id, set below
                opt_int(bn),
                text(patrons[i].branch),
                text(status),
                date(placed),
                opt_date(completed),
                text(g.tag(note)),
                text(g.tag(staff_note)),
            ],
        ));
    }
    let batch = numbered("illrequests", ILL_COLS, rows);
    out.stats.ill_requests = batch.rows.len() as u64;
    out.batches.push(batch);
}

/// `return_claims`: patrons who said they had returned an overdue item (a third of
/// them in the last 300 days). Most were resolved within two months; one in five is
/// still open (no `resolved_on`).
fn return_claims(g: &mut Gen, s: &Sources<'_>, out: &mut Library) {
    let patrons = &s.pop.patrons;
    let mut claimed: HashSet<i64> = HashSet::new();
    let mut rows: Vec<(NaiveDateTime, Vec<Value>)> = Vec::new();
    if s.loans.is_empty() {
        return;
    }
    // Loans are in checkout order: one claim in three is on a loan of the last 300 days.
    let recent = s
        .loans
        .partition_point(|l| l.issued.date() < s.clock.today - TimeDelta::days(300));
    for k in 0..(patrons.len() / 100).max(10) {
        let l = if k % 3 == 0 && recent < s.loans.len() {
            &s.loans[recent + g.index(s.loans.len() - recent)]
        } else {
            &s.loans[g.index(s.loans.len())]
        };
        let (Some(i), Some(_)) = (l.patron, l.returned) else {
            continue;
        };
        if !claimed.insert(l.id) {
            continue;
        }
        let day = l.due.date() + TimeDelta::days(g.between(1, 20));
        let created = clamp(s, g.at(day, 9, 19));
        let resolved = (rows.len() % 5 != 4)
            .then(|| clamp(s, created + TimeDelta::hours(g.between(2, 60 * 24))));
        let resolution = resolved.map(|_| {
            g.pick(&["RET_BY_PATRON", "FOUND_IN_LIB", "NOT_FOUND"])
                .to_string()
        });
        let note = g.pick(CLAIM_NOTES);
        rows.push((
            created,
            vec![
                Value::BigInt(None), // the id, set below
                int(l.item as i64 + 1),
                int(l.id),
                int(patrons[i].bn),
                text(g.tag(note)),
                s.clock.instant(created),
                opt_text(resolution),
                resolved.map_or(opt_text(None), |r| s.clock.instant(r)),
            ],
        ));
    }
    let batch = numbered("return_claims", CLAIM_COLS, rows);
    out.stats.return_claims = batch.rows.len() as u64;
    out.batches.push(batch);
}

/// `items_last_borrower` (StoreLastBorrower, on for the last three years): for each
/// item, the patron of its last return since then, stamped at that return.
fn last_borrowers(s: &Sources<'_>, out: &mut Library) {
    let since = s.clock.today - TimeDelta::days(3 * 365);
    let mut last: BTreeMap<usize, (NaiveDateTime, i64)> = BTreeMap::new();
    for l in s.loans {
        let (Some(i), Some(r)) = (l.patron, l.returned) else {
            continue;
        };
        if r.date() < since {
            continue;
        }
        let e = last.entry(l.item).or_insert((r, s.pop.patrons[i].bn));
        if r >= e.0 {
            *e = (r, s.pop.patrons[i].bn);
        }
    }
    let mut batch = Batch::new("items_last_borrower", LAST_BORROWER_COLS, Conflict::Fail);
    for (k, (item, (at, bn))) in last.into_iter().enumerate() {
        batch.push(vec![
            int(k as i64 + 1),
            int(item as i64 + 1),
            int(bn),
            s.clock.instant(at),
        ]);
    }
    out.stats.last_borrowers = batch.rows.len() as u64;
    out.batches.push(batch);
}

/// A bcrypt-shaped pseudonym of `bn`, the same for every row of a patron (Koha's is
/// `bcrypt(borrowernumber, bcrypt_settings)`; here SHA-256 under a per-demo salt).
fn pseudonym(salt: u64, bn: i64) -> String {
    let mut s = String::from("$2a$10$");
    let mut block = Sha256::new()
        .chain_update(salt.to_le_bytes())
        .chain_update(bn.to_le_bytes())
        .finalize()
        .to_vec();
    block.extend(Sha256::digest(&block));
    for b in block.iter().take(53) {
        s.push(BCRYPT_ALPHABET[usize::from(*b) % BCRYPT_ALPHABET.len()] as char);
    }
    s
}

/// `pseudonymized_transactions` (Pseudonymization, on for the last three years): a
/// quarter of the checkouts and their returns, with the patron's pseudonym, category
/// and library; a few rows have no time.
fn pseudonymized(g: &mut Gen, s: &Sources<'_>, out: &mut Library) {
    let (patrons, since) = (&s.pop.patrons, s.clock.today - TimeDelta::days(3 * 365));
    let salt: u64 = g.rng.random();
    let mut names: HashMap<i64, String> = HashMap::new();
    let mut rows: Vec<(Option<NaiveDateTime>, Vec<Value>)> = Vec::new();
    for l in s.loans.iter().chain(s.current) {
        let Some(i) = l.patron else { continue };
        if l.issued.date() < since || !g.chance(0.25) {
            continue;
        }
        let p = &patrons[i];
        let hashed = names
            .entry(p.bn)
            .or_insert_with(|| pseudonym(salt, p.bn))
            .clone();
        let events = [Some((l.issued, "issue")), l.returned.map(|r| (r, "return"))];
        for (at, kind) in events.into_iter().flatten() {
            // One in a thousand has no time.
            let at = (rows.len() % 1000 != 500).then_some(at);
            rows.push((
                at,
                vec![
                    Value::BigInt(None), // the id, set below
                    text(hashed.clone()),
                    int(1),
                    text(p.kind.category()),
                    text(p.branch),
                    opt_datetime(at),
                    text(l.branch),
                    text(kind),
                    int(l.item as i64 + 1),
                    text("BK"),
                ],
            ));
        }
    }
    let batch = numbered("pseudonymized_transactions", PSEUDONYMIZED_COLS, rows);
    out.stats.pseudonymized_transactions = batch.rows.len() as u64;
    out.batches.push(batch);
}

/// `patron_consent` (GDPR_Policy): a quarter of the patrons who log in answered the
/// data-processing consent form: most gave consent, one in ten refused.
fn consents(g: &mut Gen, s: &Sources<'_>, out: &mut Library) {
    let today = s.clock.today;
    let mut batch = Batch::new("patron_consent", CONSENT_COLS, Conflict::Fail);
    for p in &s.pop.patrons {
        if !p.has_login || p.kind == Kind::Anonymous || !g.chance(0.25) {
            continue;
        }
        let start = p.enrolled.max(today - TimeDelta::days(6 * 365));
        let end = p.expiry.min(today - TimeDelta::days(1));
        if end < start {
            continue;
        }
        let day = g.day_between(start, end);
        let at = g.at(day, 8, 21);
        let refused = g.chance(0.1);
        batch.push(vec![
            int(batch.rows.len() as i64 + 1),
            int(p.bn),
            text("GDPR_PROCESSING"),
            if refused {
                opt_datetime(None)
            } else {
                datetime(at)
            },
            opt_datetime(refused.then_some(at)),
        ]);
    }
    out.stats.consents = batch.rows.len() as u64;
    out.batches.push(batch);
}
