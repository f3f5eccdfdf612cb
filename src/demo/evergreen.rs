//! A deterministic, Evergreen-shaped library for tests of Lethe's Evergreen
//! profile: patrons, staff, cards, addresses, copies, renewal chains of
//! circulations, bills and payments, holds, patron history settings, auditor rows,
//! aged circulations and holds.
//!
//! [`populate`] fills a PostgreSQL database loaded with
//! `tests/fixtures/evergreen_pg.sql` (Evergreen's table and column names; see
//! `tests/fixtures/EVERGREEN.md`). The fixture's triggers stay on while loading:
//! circulations go in through `maintain_usr_circ_history_tgr` (which writes
//! `action.usr_circ_history` for opted-in patrons), the aged rows are made by
//! deleting chain tails and holds through Evergreen's aging triggers, auditor rows
//! by real UPDATEs of `actor.usr` and `actor.usr_address`, and logically deleted
//! patrons by `DELETE FROM actor.usr` through the delete-protect rule.
//!
//! Everything derives from [`EvergreenOptions::seed`] and
//! [`EvergreenOptions::today`]: on a freshly loaded fixture equal options give
//! equal rows (ids from sequences follow insertion order, which is fixed), except
//! `actor.usr.last_update_time`, which Evergreen's `au_update_trig` sets to the
//! load time. Auditor rows get the time of the change they record, not the load
//! time.
//!
//! The hold-history and circulation-history settings are stored as Evergreen
//! stores them (JSON text): `history.circ.retention_start` = `"2023-04-02"`,
//! `history.circ.retention_age` = `"6 months"` (quotes included).
//!
//! Staff-side columns follow Evergreen's habits: an OPAC renewal's `circ_staff`
//! (and the renewed circulation's `checkin_staff`) is the patron's own id, as
//! Evergreen's Circulate.pm records it; these ids survive aging.
//!
//! All times are UTC (`TIMESTAMP WITH TIME ZONE` written with `+00`), relative to
//! `today` at 00:00 UTC ("now" for the data): history lies before it; expiry
//! dates, due dates of items still out and hold expiry times may lie after it.
//!
//! Personal text values carry [`CANARY`] so that a test can grep for them: names,
//! `usrname`, e-mail addresses, phones, identification values, guardian, alias,
//! preferred names, name keywords, photo URL, card barcodes, `street1`/`street2`,
//! hold notification phones and cancel notes. Not marked: city, county, state and
//! post code (coarse geography that Evergreen's aged tables keep on purpose, so
//! they look real), `dob` (a date) and `passwd` (MD5'd by the fixture's trigger).

use std::collections::HashSet;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sqlx::Row;
use sqlx::postgres::PgConnection;

/// The marker contained in every personal text value the generator writes
/// (see the module documentation for the list of columns).
pub const CANARY: &str = "EGPII";

/// What [`populate`] generates.
#[derive(Debug, Clone)]
pub struct EvergreenOptions {
    /// Seed of the random generator; equal options give identical data.
    pub seed: u64,
    /// `actor.usr` rows to add (ids 2 to `patrons + 1`; id 1 is the fixture's
    /// administrator), staff included (about 1 %, at least 3). At least 20.
    pub patrons: usize,
    /// `action.circulation` rows to insert, renewals included, over the 6 years
    /// before `today`. Some of them are then aged (see `aged_chains`), so
    /// `action.circulation` + `action.aged_circulation` = this number.
    pub circulations: usize,
    /// `action.hold_request` rows to insert; `aged_holds` of them are then aged.
    pub holds: usize,
    /// Renewal chains to age after loading, by deleting their tails (chains whose
    /// every circulation finished more than 3 years before `today`). Fewer are aged
    /// if fewer qualify.
    pub aged_chains: usize,
    /// Completed holds (completed more than 2 years before `today`) to age after
    /// loading by deleting them. Fewer are aged if fewer qualify.
    pub aged_holds: usize,
    /// The day the data is generated "on"; 00:00 UTC of it is "now".
    pub today: NaiveDate,
}

impl EvergreenOptions {
    /// The standard population: seed 4509, 5,000 patrons, 200,000 circulations
    /// (about 155,000 chains, 20 % of them with 1 to 3 renewals), 40,000 holds,
    /// 2,000 aged chains, 1,000 aged holds, relative to `today`.
    pub fn standard(today: NaiveDate) -> Self {
        EvergreenOptions {
            seed: 4509,
            patrons: 5000,
            circulations: 200_000,
            holds: 40_000,
            aged_chains: 2000,
            aged_holds: 1000,
            today,
        }
    }
}

/// Row counts of the database after [`populate`], read back from it (so they hold
/// whatever the triggers did). Counts of `actor.usr` include the fixture's
/// administrator (id 1) only where said.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EvergreenStats {
    /// `actor.usr` rows added (administrator not counted).
    pub patrons: i64,
    /// Added accounts with a `permission.usr_work_ou_map` row (staff).
    pub staff: i64,
    /// `actor.usr` rows with `super_user`, administrator included.
    pub super_users: i64,
    /// Added accounts flagged `deleted` (logically deleted, not purged).
    pub deleted_patrons: i64,
    /// Added accounts whose `expire_date` is before `today`.
    pub expired_patrons: i64,
    /// Added accounts whose `expire_date` is more than 2 years before `today`.
    pub long_expired_patrons: i64,
    /// Of those, accounts with a `money.billable_xact` row (circulation or grocery)
    /// whose `xact_finish` is NULL.
    pub long_expired_with_open_xact: i64,
    /// Of those, accounts with a pending hold (no fulfillment or cancel time).
    pub long_expired_with_pending_hold: i64,
    /// `actor.card` rows (administrator's included).
    pub cards: i64,
    /// `actor.usr_address` rows.
    pub addresses: i64,
    /// `asset.copy` rows.
    pub copies: i64,
    /// `action.circulation` rows left after aging.
    pub circulations: i64,
    /// Chains in `action.circulation` (rows with `parent_circ` NULL).
    pub chains: i64,
    /// Renewal rows in `action.circulation` (`parent_circ` set).
    pub renewals: i64,
    /// Chains in `action.circulation` that have at least one renewal.
    pub chains_with_renewals: i64,
    /// Circulations still out (`checkin_time` NULL).
    pub open_circulations: i64,
    /// Circulations returned (or renewed) but not finished: money still owed.
    pub returned_unfinished: i64,
    /// `money.grocery` rows (non-circulation bills).
    pub groceries: i64,
    /// `money.billing` rows.
    pub billings: i64,
    /// `money.payment` rows.
    pub payments: i64,
    /// `action.aged_circulation` rows.
    pub aged_circulations: i64,
    /// Aged chains (`action.aged_circulation` rows with `parent_circ` NULL).
    pub aged_chains: i64,
    /// `action.hold_request` rows left after aging.
    pub holds: i64,
    /// Pending holds (neither fulfilled nor canceled).
    pub pending_holds: i64,
    /// Fulfilled holds.
    pub fulfilled_holds: i64,
    /// Canceled holds.
    pub canceled_holds: i64,
    /// `action.aged_hold_request` rows.
    pub aged_holds: i64,
    /// `action.usr_circ_history` rows.
    pub circ_history: i64,
    /// Patrons with a `history.circ.retention_start` setting.
    pub circ_history_opted_in: i64,
    /// Of those, patrons who also have `history.circ.retention_age`.
    pub circ_history_with_age: i64,
    /// Patrons with `action.usr_circ_history` rows but no
    /// `history.circ.retention_start` setting (opted out, history left behind).
    pub circ_history_orphaned_patrons: i64,
    /// Patrons with a `history.hold.retention_start` setting.
    pub hold_history_opted_in: i64,
    /// `auditor.actor_usr_history` rows (the fixture's one included).
    pub audit_usr_rows: i64,
    /// `auditor.actor_usr_address_history` rows.
    pub audit_address_rows: i64,
}

/// Fills a database freshly loaded with `tests/fixtures/evergreen_pg.sql`, in one
/// transaction (all or nothing), and returns the counts read back from it.
///
/// Errors: [`sqlx::Error::InvalidArgument`] when the options are unusable (fewer
/// than 20 patrons) or the database already holds patrons besides the
/// administrator; any database error otherwise (nothing is left behind).
pub async fn populate(
    pool: &sqlx::PgPool,
    opts: &EvergreenOptions,
) -> Result<EvergreenStats, sqlx::Error> {
    if opts.patrons < 20 {
        return Err(sqlx::Error::InvalidArgument(
            "the Evergreen demo needs at least 20 patrons".into(),
        ));
    }
    let lib = generate(opts);
    let mut tx = pool.begin().await?;
    let others: i64 = sqlx::query_scalar("SELECT count(*) FROM actor.usr WHERE id <> 1")
        .fetch_one(&mut *tx)
        .await?;
    if others != 0 {
        return Err(sqlx::Error::InvalidArgument(format!(
            "the target already has {others} patrons besides the administrator"
        )));
    }
    load(&mut tx, &lib).await?;
    let stats = read_stats(&mut tx, opts.today).await?;
    tx.commit().await?;
    Ok(stats)
}

// ---------------------------------------------------------------------------
// Reference data

/// Org units added below the fixture's consortium (id 1): (id, parent, type,
/// shortname, name). Types: 2 system, 3 branch, 5 bookmobile.
const ORG_UNITS: &[(i32, i32, i32, &str, &str)] = &[
    (2, 1, 2, "NRS", "Northern River System"),
    (3, 1, 2, "SHS", "Southern Hills System"),
    (4, 2, 3, "NRS-MAIN", "Northern River Main Library"),
    (5, 2, 3, "NRS-EAST", "Northern River East Branch"),
    (6, 2, 3, "NRS-WEST", "Northern River West Branch"),
    (7, 3, 3, "SHS-CTR", "Southern Hills Central Library"),
    (8, 3, 3, "SHS-LAKE", "Southern Hills Lakeside Branch"),
    (9, 7, 5, "SHS-BM", "Southern Hills Bookmobile"),
];
/// Branches where patrons live and circulations happen (bookmobile last, rare).
const BRANCHES: &[i32] = &[4, 5, 6, 7, 8, 9];
/// (city, county, state, ZIP prefix) per branch, same order as BRANCHES.
const PLACES: &[(&str, &str, &str, &str)] = &[
    ("Riverton", "Marsh County", "GA", "3060"),
    ("East Riverton", "Marsh County", "GA", "3061"),
    ("Westfield", "Marsh County", "GA", "3062"),
    ("Hillsboro", "Ridge County", "GA", "3070"),
    ("Lakeside", "Ridge County", "GA", "3071"),
    ("Hillsboro", "Ridge County", "GA", "3072"),
];
const FIRST: &[&str] = &[
    "Maria", "James", "Aisha", "Wei", "Olivia", "Mateo", "Priya", "Noah", "Fatima", "Liam",
    "Chloe", "Kofi", "Sofia", "Ethan", "Yuki", "Amara", "Lucas", "Ingrid", "Omar", "Grace",
    "Diego", "Hana", "Samuel", "Leila", "Arjun", "Emma", "Tomas", "Zainab", "Oscar", "Mei",
];
const FAMILY: &[&str] = &[
    "Garcia",
    "Okafor",
    "Nguyen",
    "Smith",
    "Kowalski",
    "Haddad",
    "Johansson",
    "Patel",
    "Moreau",
    "Tanaka",
    "Brown",
    "Silva",
    "Cohen",
    "Mensah",
    "Rossi",
    "Ivanova",
    "Kim",
    "O'Brien",
    "Fischer",
    "Dubois",
    "Mwangi",
    "Lopez",
    "Novak",
    "Ahmed",
    "Walker",
    "Chen",
];
const STREETS: &[&str] = &[
    "Elm St",
    "Oak Ave",
    "Maple Dr",
    "River Rd",
    "Mill Ln",
    "Cedar Ct",
    "Hill St",
    "Lake Shore Dr",
    "Church St",
    "Pine Way",
    "Orchard Rd",
    "Station Ave",
];
/// (patron setting value, as Evergreen stores it: a JSON string) for
/// history.*.retention_age.
const RETENTION_AGES: &[&str] = &["\"1 year\"", "\"6 months\"", "\"30 days\"", "\"2 years\""];
/// Staff profiles (permission.grp_tree ids), Circulators most often.
const STAFF_PROFILES: &[i32] = &[5, 5, 5, 5, 4, 9, 10, 12, 15];

const DAY: i64 = 86_400;

// ---------------------------------------------------------------------------
// The generated library (pure data)

struct Patron {
    id: i32,
    staff: bool,
    profile: i32,
    home: usize, // index into BRANCHES
    create: NaiveDateTime,
    expire: NaiveDateTime,
    /// When the patron could borrow, within the last 6 years; None: never.
    window: Option<(NaiveDateTime, NaiveDateTime)>,
    weight: u32,
    first: &'static str,
    family: &'static str,
    dob: Option<NaiveDate>,
    juvenile: bool,
    day_phone: Option<String>,
    email: Option<String>,
    mailing: Option<i32>,
    billing: Option<i32>,
    card: i32,
}

struct Address {
    id: i32,
    usr: i32,
    kind: &'static str,
    number: u32,
    street: &'static str,
    street2: Option<u32>,
    place: usize,
    zip_digit: u32,
    pending: bool,
    replaces: Option<i32>,
}

struct Card {
    id: i32,
    usr: i32,
    barcode: String,
    active: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChainKind {
    Normal,
    Open,
    Unpaid,
    PaidFine,
    Lost,
}

struct Circ {
    id: i64,
    usr: i32,
    copy: i64,
    circ_lib: i32,
    circ_staff: i32,
    checkin_staff: Option<i32>,
    checkin_lib: Option<i32>,
    renewal_remaining: i32,
    start: NaiveDateTime,
    due: NaiveDateTime,
    checkin: Option<NaiveDateTime>,
    stop_fines: Option<&'static str>,
    stop_fines_time: Option<NaiveDateTime>,
    finish: Option<NaiveDateTime>,
    workstation: Option<i32>,
    checkin_ws: Option<i32>,
    opac_renewal: bool,
    desk_renewal: bool,
    phone_renewal: bool,
    /// Index of the parent in `Library::circs` (before id assignment).
    parent: Option<usize>,
}

struct Bill {
    /// Index into `Library::circs`, or a grocery id when `grocery` is set.
    xact: usize,
    grocery: bool,
    cents: i64,
    btype: i32,
    name: &'static str,
    at: NaiveDateTime,
    period: Option<(NaiveDateTime, NaiveDateTime)>,
}

struct Payment {
    xact: usize,
    grocery: bool,
    cents: i64,
    at: NaiveDateTime,
}

struct Grocery {
    id: i64,
    usr: i32,
    start: NaiveDateTime,
    finish: Option<NaiveDateTime>,
    location: i32,
    note: &'static str,
}

struct Hold {
    id: i32,
    usr: i32,
    requestor: i32,
    request: NaiveDateTime,
    capture: Option<NaiveDateTime>,
    shelf: Option<NaiveDateTime>,
    shelf_expire: Option<NaiveDateTime>,
    fulfill: Option<NaiveDateTime>,
    fulfillment_staff: Option<i32>,
    cancel: Option<NaiveDateTime>,
    cancel_cause: Option<i32>,
    canceled_by: Option<i32>,
    cancel_note: Option<String>,
    expire: Option<NaiveDateTime>,
    hold_type: &'static str,
    target: i64,
    current_copy: Option<i64>,
    pickup: i32,
    phone: Option<String>,
    sms: Option<String>,
    email_notify: bool,
    frozen: bool,
    thaw: Option<NaiveDateTime>,
}

struct Setting {
    usr: i32,
    name: &'static str,
    value: String,
}

struct Library {
    patrons: Vec<Patron>,
    staff_ids: Vec<i32>,
    addresses: Vec<Address>,
    cards: Vec<Card>,
    work_ou: Vec<(i32, i32)>,
    copies: usize,
    circs: Vec<Circ>,
    bills: Vec<Bill>,
    payments: Vec<Payment>,
    groceries: Vec<Grocery>,
    holds: Vec<Hold>,
    settings: Vec<Setting>,
    /// Patrons whose history.circ.retention_start is removed after loading.
    opted_out: Vec<i32>,
    /// Chain tails (circulation ids) to delete after loading.
    aged_tails: Vec<i64>,
    /// Hold ids to delete after loading.
    aged_holds: Vec<i32>,
    /// Patron ids to delete (logically) after loading, with the deletion time.
    deletions: Vec<(i32, NaiveDateTime)>,
    /// (patron, new e-mail, time of change).
    email_changes: Vec<(i32, String, NaiveDateTime)>,
    /// (patron, new day phone, time of change).
    phone_changes: Vec<(i32, String, NaiveDateTime)>,
    /// (patron, new family name, time of change).
    name_changes: Vec<(i32, String, NaiveDateTime)>,
    /// (address id, new street1, new post code, time of change).
    moves: Vec<(i32, String, String, NaiveDateTime)>,
}

struct Gen {
    rng: StdRng,
    now: NaiveDateTime,
}

impl Gen {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..=hi)
        }
    }
    fn pick<T: Copy>(&mut self, list: &[T]) -> T {
        list[self.rng.random_range(0..list.len())]
    }
    /// A time uniformly in [a, b) (a when the range is empty).
    fn between(&mut self, a: NaiveDateTime, b: NaiveDateTime) -> NaiveDateTime {
        let span = (b - a).num_seconds();
        if span <= 1 {
            return a;
        }
        a + Duration::seconds(self.rng.random_range(0..span))
    }
    fn days_ago(&self, d: i64) -> NaiveDateTime {
        self.now - Duration::days(d)
    }
    /// A time during opening hours (09:00-20:00) of day `t`.
    fn open_hours(&mut self, day: NaiveDate) -> NaiveDateTime {
        let secs = self.rng.random_range(9 * 3600..20 * 3600);
        day.and_time(NaiveTime::MIN) + Duration::seconds(secs)
    }
}

fn midnight(d: NaiveDate) -> NaiveDateTime {
    d.and_time(NaiveTime::MIN)
}

/// Evergreen's push_circ_due_time: day-granular loans are due at 23:59:59.
fn due_after(start: NaiveDateTime, days: i64) -> NaiveDateTime {
    midnight(start.date() + Duration::days(days)) + Duration::seconds(DAY - 1)
}

fn generate(opts: &EvergreenOptions) -> Library {
    let mut g = Gen {
        rng: StdRng::seed_from_u64(opts.seed),
        now: midnight(opts.today),
    };
    let mut lib = Library {
        patrons: Vec::new(),
        staff_ids: Vec::new(),
        addresses: Vec::new(),
        cards: Vec::new(),
        work_ou: Vec::new(),
        copies: (opts.circulations / 12).max(200),
        circs: Vec::new(),
        bills: Vec::new(),
        payments: Vec::new(),
        groceries: Vec::new(),
        holds: Vec::new(),
        settings: Vec::new(),
        opted_out: Vec::new(),
        aged_tails: Vec::new(),
        aged_holds: Vec::new(),
        deletions: Vec::new(),
        email_changes: Vec::new(),
        phone_changes: Vec::new(),
        name_changes: Vec::new(),
        moves: Vec::new(),
    };
    gen_patrons(&mut g, &mut lib, opts);
    gen_circulations(&mut g, &mut lib, opts);
    gen_groceries(&mut g, &mut lib);
    gen_holds(&mut g, &mut lib, opts);
    gen_afterlife(&mut g, &mut lib, opts);
    lib
}

fn tag(s: &str, id: i32) -> String {
    format!("{s}-{CANARY}{id}")
}

fn phone_for(g: &mut Gen, id: i32) -> String {
    let area = g.pick(&[404, 470, 678, 706]);
    format!("{area}-555-01{:02} {CANARY}{id}", id % 100)
}

fn gen_patrons(g: &mut Gen, lib: &mut Library, opts: &EvergreenOptions) {
    let staff_count = (opts.patrons / 100).max(3);
    let six_years_ago = g.days_ago(6 * 365);
    let mut address_id = 0;
    let mut card_id = 1; // the administrator's card is id 1
    for n in 0..opts.patrons {
        let id = n as i32 + 2;
        let staff = n < staff_count;
        let home = if g.chance(0.02) {
            BRANCHES.len() - 1
        } else {
            g.int(0, BRANCHES.len() as i64 - 2) as usize
        };
        let (create, expire) = if staff {
            let c = g.between(g.days_ago(10 * 365), g.days_ago(200));
            (c, g.between(g.days_ago(-300), g.days_ago(-3 * 365)))
        } else if g.chance(0.3) {
            // Expired, some of them long ago.
            let e = g.between(g.days_ago(8 * 365), g.days_ago(1));
            let c = e - Duration::days(g.int(365, 6 * 365));
            (c, e)
        } else {
            let c = g.between(g.days_ago(10 * 365), g.days_ago(10));
            (c, g.between(g.days_ago(-1), g.days_ago(-3 * 365)))
        };
        let win_start = create.max(six_years_ago);
        let win_end = expire.min(g.now - Duration::seconds(1));
        let window = (win_end - win_start > Duration::days(30)).then_some((win_start, win_end));
        let weight = if staff {
            1
        } else {
            g.pick(&[1u32, 1, 1, 3, 3, 10])
        };
        let juvenile = !staff && g.chance(0.08);
        let dob = if g.chance(0.06) {
            None
        } else {
            let years = if juvenile {
                g.int(5, 17)
            } else {
                g.int(18, 90)
            };
            let d = opts.today - Duration::days(years * 365 + g.int(0, 364));
            Some(d)
        };
        let first = g.pick(FIRST);
        let family = g.pick(FAMILY);
        let email = g.chance(if staff { 1.0 } else { 0.75 }).then(|| {
            let domain = if staff {
                "library.example.org"
            } else {
                g.pick(&["example.com", "example.net", "example.org"])
            };
            format!(
                "{}.{}.{id}.{CANARY}@{domain}",
                first.to_lowercase(),
                family.to_lowercase().replace('\'', "")
            )
        });
        let day_phone = g.chance(0.8).then(|| phone_for(g, id));
        // Addresses: most patrons one mailing address, some a separate billing one.
        let (mailing, billing) = if g.chance(0.95) {
            address_id += 1;
            let mail = address_id;
            lib.addresses
                .push(new_address(g, mail, id, "MAILING", home));
            let bill = if g.chance(0.1) {
                address_id += 1;
                lib.addresses
                    .push(new_address(g, address_id, id, "BILLING", home));
                address_id
            } else {
                mail
            };
            if g.chance(0.005) {
                // A pending change submitted through the OPAC, awaiting staff.
                address_id += 1;
                let mut pending = new_address(g, address_id, id, "MAILING", home);
                pending.pending = true;
                pending.replaces = Some(mail);
                lib.addresses.push(pending);
            }
            (Some(mail), Some(bill))
        } else {
            (None, None)
        };
        // Cards: some patrons replaced a lost card; the old one stays inactive.
        if g.chance(0.12) {
            card_id += 1;
            lib.cards.push(Card {
                id: card_id,
                usr: id,
                barcode: format!("{CANARY}2800{id:08}"),
                active: false,
            });
        }
        card_id += 1;
        lib.cards.push(Card {
            id: card_id,
            usr: id,
            barcode: format!("{CANARY}2900{id:08}"),
            active: true,
        });
        let profile = if staff { g.pick(STAFF_PROFILES) } else { 2 };
        if staff {
            lib.staff_ids.push(id);
            let branch = BRANCHES[home];
            lib.work_ou.push((id, branch));
            if profile == 12 {
                let system = if branch <= 6 { 2 } else { 3 };
                lib.work_ou.push((id, system));
            } else if g.chance(0.3) {
                let other = BRANCHES[(home + 1) % BRANCHES.len()];
                lib.work_ou.push((id, other));
            }
        }
        lib.patrons.push(Patron {
            id,
            staff,
            profile,
            home,
            create,
            expire,
            window,
            weight,
            first,
            family,
            dob,
            juvenile,
            day_phone,
            email,
            mailing,
            billing,
            card: card_id,
        });
    }
    // History settings, for patrons who borrow (not staff).
    for i in 0..lib.patrons.len() {
        let (id, staff, create, has_window) = {
            let p = &lib.patrons[i];
            (p.id, p.staff, p.create, p.window.is_some())
        };
        if staff || !has_window {
            continue;
        }
        let start = format!("\"{}\"", create.date().format("%Y-%m-%d"));
        let roll: f64 = g.rng.random();
        if roll < 0.15 {
            lib.settings.push(Setting {
                usr: id,
                name: "history.circ.retention_start",
                value: start.clone(),
            });
            if g.chance(0.4) {
                lib.settings.push(Setting {
                    usr: id,
                    name: "history.circ.retention_age",
                    value: g.pick(RETENTION_AGES).to_string(),
                });
            }
        } else if roll < 0.18 {
            // Opted in, later opted out: the setting goes after loading, the
            // history rows the trigger wrote stay.
            lib.settings.push(Setting {
                usr: id,
                name: "history.circ.retention_start",
                value: start.clone(),
            });
            lib.opted_out.push(id);
        }
        if g.chance(0.1) {
            lib.settings.push(Setting {
                usr: id,
                name: "history.hold.retention_start",
                value: start,
            });
            if g.chance(0.5) {
                lib.settings.push(Setting {
                    usr: id,
                    name: "history.hold.retention_age",
                    value: g.pick(RETENTION_AGES).to_string(),
                });
            }
        }
    }
}

fn new_address(g: &mut Gen, id: i32, usr: i32, kind: &'static str, home: usize) -> Address {
    Address {
        id,
        usr,
        kind,
        number: g.int(1, 4999) as u32,
        street: g.pick(STREETS),
        street2: g.chance(0.15).then(|| g.int(1, 40) as u32),
        place: home,
        zip_digit: g.int(0, 9) as u32,
        pending: false,
        replaces: None,
    }
}

/// Picks copies for items still out: the fixture forbids two open circulations of
/// one copy (only_one_concurrent_checkout_per_copy).
struct Copies {
    count: i64,
    out: HashSet<i64>,
}

impl Copies {
    fn any(&self, g: &mut Gen) -> i64 {
        g.int(1, self.count)
    }
    /// A copy not already out, or None after 1,000 tries (nearly all are out).
    fn free(&mut self, g: &mut Gen) -> Option<i64> {
        (0..1000).find_map(|_| {
            let c = g.int(1, self.count);
            self.out.insert(c).then_some(c)
        })
    }
}

fn gen_circulations(g: &mut Gen, lib: &mut Library, opts: &EvergreenOptions) {
    let mut copies = Copies {
        count: lib.copies as i64,
        out: HashSet::new(),
    };
    let borrowers: Vec<usize> = (0..lib.patrons.len())
        .filter(|&i| lib.patrons[i].window.is_some())
        .collect();
    if borrowers.is_empty() || opts.circulations == 0 {
        return;
    }
    let mut rows_left = opts.circulations;
    let two_years_ago = g.days_ago(2 * 365);
    // Patrons who expired long ago with an item never returned (marked lost).
    for &i in &borrowers {
        if rows_left == 0 {
            break;
        }
        let p = &lib.patrons[i];
        if !p.staff && p.expire < two_years_ago && g.chance(0.1) {
            rows_left -= add_chain(g, lib, &mut copies, i, 0, ChainKind::Lost);
        }
    }
    let weights: Vec<u32> = borrowers.iter().map(|&i| lib.patrons[i].weight).collect();
    if let Ok(dist) = WeightedIndex::new(&weights) {
        while rows_left > 0 {
            let i = borrowers[dist.sample(&mut g.rng)];
            let renewals = if g.chance(0.2) {
                g.int(1, 3) as usize
            } else {
                0
            };
            let renewals = renewals.min(rows_left - 1);
            let roll: f64 = g.rng.random();
            let kind = if roll < 0.03 {
                ChainKind::Open
            } else if roll < 0.05 {
                ChainKind::Unpaid
            } else if roll < 0.10 {
                ChainKind::PaidFine
            } else {
                ChainKind::Normal
            };
            rows_left -= add_chain(g, lib, &mut copies, i, renewals, kind);
        }
    }
    assign_circ_ids(lib);
}

fn staff_at(g: &mut Gen, lib: &Library) -> (i32, Option<i32>) {
    let s = g.pick(&lib.staff_ids);
    // Workstations 1-6 are one per branch, in BRANCHES order.
    (s, Some(g.int(1, BRANCHES.len() as i64) as i32))
}

/// Adds one chain of circulations (a checkout and up to `renewals` renewals) for
/// the patron at `patron`; returns the number of rows added (fewer renewals when
/// the chain would reach "now", 0 when the patron never borrowed).
fn add_chain(
    g: &mut Gen,
    lib: &mut Library,
    copies: &mut Copies,
    patron: usize,
    renewals: usize,
    mut kind: ChainKind,
) -> usize {
    let (usr, home, (ws, we)) = {
        let p = &lib.patrons[patron];
        match p.window {
            Some(w) => (p.id, p.home, w),
            None => return 0,
        }
    };
    let latest_renewal = g.now - Duration::hours(1);
    if kind == ChainKind::Open && we < g.now - Duration::days(2) {
        kind = ChainKind::Normal;
    }
    let head_day = match kind {
        ChainKind::Open => {
            let back = Duration::days(15 * renewals as i64 + g.int(1, 40));
            (g.now - back).max(ws)
        }
        ChainKind::Lost => g.between((we - Duration::days(120)).max(ws), we - Duration::days(30)),
        _ => {
            let span_needed = Duration::days(25 * (renewals as i64 + 1));
            let latest = (we - span_needed).max(ws);
            g.between(ws, latest)
        }
    };
    let head_start = g
        .open_hours(head_day.date())
        .min(latest_renewal - Duration::hours(1));
    let copy = if matches!(kind, ChainKind::Open | ChainKind::Lost) {
        match copies.free(g) {
            Some(c) => c,
            None => {
                kind = ChainKind::Normal;
                copies.any(g)
            }
        }
    } else {
        copies.any(g)
    };
    let circ_lib = if g.chance(0.8) {
        BRANCHES[home]
    } else {
        g.pick(BRANCHES)
    };
    let billed = if matches!(kind, ChainKind::Unpaid | ChainKind::PaidFine) {
        Some(g.int(0, renewals as i64) as usize)
    } else {
        None
    };
    let (mut circ_staff, mut workstation) = staff_at(g, lib);
    let mut start = head_start;
    let mut parent: Option<usize> = None;
    let mut renewal_remaining = 3;
    let mut renewal_kind = (false, false, false); // opac, desk, phone
    let mut rows = 0;
    for pos in 0..=renewals {
        let due = due_after(start, 21);
        let wants_late = billed == Some(pos);
        // When the circulation ends (renewal or return), if it ends.
        let planned = if wants_late {
            due + Duration::days(g.int(2, 20)) + Duration::seconds(g.int(0, DAY - 1))
        } else {
            g.between(
                start + Duration::days(if pos == renewals { 1 } else { 10 }),
                due,
            )
        };
        // A renewal must lie in the past; otherwise this circulation is the last.
        let last = pos == renewals || planned >= latest_renewal;
        let end = planned
            .min(g.now - Duration::seconds(60))
            .max(start + Duration::seconds(60));
        let late = wants_late && end > due;
        let idx = lib.circs.len();
        let mut c = Circ {
            id: 0,
            usr,
            copy,
            circ_lib,
            circ_staff,
            checkin_staff: None,
            checkin_lib: None,
            renewal_remaining,
            start,
            due,
            checkin: None,
            stop_fines: None,
            stop_fines_time: None,
            finish: None,
            workstation,
            checkin_ws: None,
            opac_renewal: renewal_kind.0,
            desk_renewal: renewal_kind.1,
            phone_renewal: renewal_kind.2,
            parent,
        };
        let unpaid = late && kind == ChainKind::Unpaid;
        if !last {
            // Renewed at `end`: the old circulation is checked in, stop_fines RENEW.
            let r: f64 = g.rng.random();
            renewal_kind = if r < 0.6 {
                (true, false, false)
            } else if r < 0.9 {
                (false, true, false)
            } else {
                (false, false, true)
            };
            let (renew_staff, renew_ws) = if renewal_kind.0 {
                // Circulate.pm: "if a patron is renewing, 'requestor' will be the
                // patron", so OPAC renewals carry the patron's id as staff.
                (usr, None)
            } else {
                staff_at(g, lib)
            };
            c.checkin = Some(end);
            c.checkin_staff = Some(renew_staff);
            c.checkin_lib = Some(circ_lib);
            c.checkin_ws = renew_ws;
            c.stop_fines = Some("RENEW");
            c.stop_fines_time = Some(end);
            c.finish = (!unpaid).then_some(end);
            circ_staff = renew_staff;
            workstation = renew_ws;
        } else {
            match kind {
                ChainKind::Open => {}
                ChainKind::Lost => {
                    let lost_at = (due + Duration::days(g.int(30, 60))).min(g.now);
                    c.stop_fines = Some("LOST");
                    c.stop_fines_time = Some(lost_at);
                    for (cents, btype, name) in [
                        (2499, 3, "Lost Materials"),
                        (500, 4, "Lost Materials Processing Fee"),
                    ] {
                        lib.bills.push(Bill {
                            xact: idx,
                            grocery: false,
                            cents,
                            btype,
                            name,
                            at: lost_at,
                            period: None,
                        });
                    }
                }
                _ => {
                    let (s, w) = staff_at(g, lib);
                    c.checkin = Some(end);
                    c.checkin_staff = Some(s);
                    c.checkin_ws = w;
                    c.checkin_lib = Some(if g.chance(0.9) {
                        circ_lib
                    } else {
                        g.pick(BRANCHES)
                    });
                    c.stop_fines = Some("CHECKIN");
                    c.stop_fines_time = Some(end);
                    c.finish = (!unpaid).then_some(end);
                }
            }
        }
        let open = last && kind == ChainKind::Open;
        if late && !open {
            let days_late = (end - due).num_days().max(1);
            let cents = (days_late * 25).min(500);
            lib.bills.push(Bill {
                xact: idx,
                grocery: false,
                cents,
                btype: 1,
                name: "Overdue Materials",
                at: end,
                period: Some((due, end)),
            });
            if kind == ChainKind::PaidFine {
                let paid = g.between(end, (end + Duration::days(30)).min(g.now));
                lib.payments.push(Payment {
                    xact: idx,
                    grocery: false,
                    cents,
                    at: paid,
                });
                c.finish = Some(paid);
            }
        }
        if open && due < g.now - Duration::days(1) {
            // Overdue and still out: fines accrue up to yesterday.
            let until = g.now - Duration::days(1);
            let days_late = (until - due).num_days().max(1);
            lib.bills.push(Bill {
                xact: idx,
                grocery: false,
                cents: (days_late * 25).min(500),
                btype: 1,
                name: "Overdue Materials",
                at: until,
                period: Some((due, until)),
            });
        }
        lib.circs.push(c);
        rows += 1;
        if last {
            break;
        }
        parent = Some(idx);
        start = end;
        renewal_remaining -= 1;
    }
    rows
}

/// Ids in order of xact_start (as a live system hands them out).
fn assign_circ_ids(lib: &mut Library) {
    let mut order: Vec<usize> = (0..lib.circs.len()).collect();
    order.sort_by_key(|&i| (lib.circs[i].start, i));
    for (n, &i) in order.iter().enumerate() {
        lib.circs[i].id = n as i64 + 1;
    }
}

fn gen_groceries(g: &mut Gen, lib: &mut Library) {
    let first_id = lib.circs.len() as i64 + 1;
    for i in 0..lib.patrons.len() {
        let (usr, home, window) = {
            let p = &lib.patrons[i];
            (p.id, p.home, p.window)
        };
        let Some((ws, we)) = window else { continue };
        if !g.chance(0.02) {
            continue;
        }
        let start = g.between(ws, we);
        let (note, btype, name, cents) = if g.chance(0.5) {
            ("Printing", 101, "Printing", g.int(10, 300))
        } else {
            ("Replacement card", 102, "Lost Card Replacement", 300)
        };
        let paid = g.chance(0.5);
        let gid = first_id + lib.groceries.len() as i64;
        let idx = lib.groceries.len();
        let finish = paid.then(|| g.between(start, (start + Duration::days(20)).min(g.now)));
        lib.groceries.push(Grocery {
            id: gid,
            usr,
            start,
            finish,
            location: BRANCHES[home],
            note,
        });
        lib.bills.push(Bill {
            xact: idx,
            grocery: true,
            cents,
            btype,
            name,
            at: start,
            period: None,
        });
        if let Some(at) = finish {
            lib.payments.push(Payment {
                xact: idx,
                grocery: true,
                cents,
                at,
            });
        }
    }
}

fn gen_holds(g: &mut Gen, lib: &mut Library, opts: &EvergreenOptions) {
    let borrowers: Vec<usize> = (0..lib.patrons.len())
        .filter(|&i| lib.patrons[i].window.is_some())
        .collect();
    if borrowers.is_empty() || opts.holds == 0 {
        return;
    }
    let records = (lib.copies as i64 + 1) / 2;
    let mut on_shelf: HashSet<i64> = HashSet::new();
    let two_years_ago = g.days_ago(2 * 365);
    let mut wanted: Vec<(usize, bool)> = Vec::new();
    // Patrons who expired long ago with a hold never filled.
    for &i in &borrowers {
        let p = &lib.patrons[i];
        if !p.staff && p.expire < two_years_ago && g.chance(0.06) && wanted.len() < opts.holds {
            wanted.push((i, true));
        }
    }
    let weights: Vec<u32> = borrowers.iter().map(|&i| lib.patrons[i].weight).collect();
    let Ok(dist) = WeightedIndex::new(&weights) else {
        return;
    };
    while wanted.len() < opts.holds {
        wanted.push((borrowers[dist.sample(&mut g.rng)], false));
    }
    for (n, (i, stale)) in wanted.into_iter().enumerate() {
        let (usr, home, (ws, we), phone) = {
            let p = &lib.patrons[i];
            match p.window {
                Some(w) => (p.id, p.home, w, p.day_phone.clone()),
                None => continue,
            }
        };
        let request = if stale {
            g.between((we - Duration::days(90)).max(ws), we)
        } else {
            g.between(ws, we)
        };
        let request = g
            .open_hours(request.date())
            .min(g.now - Duration::seconds(60));
        let (hold_type, target) = {
            let r: f64 = g.rng.random();
            if r < 0.8 {
                ("T", g.int(1, records))
            } else if r < 0.95 {
                ("C", g.int(1, lib.copies as i64))
            } else {
                ("V", g.int(1, lib.copies as i64))
            }
        };
        let staff_placed = g.chance(0.25);
        let requestor = if staff_placed {
            g.pick(&lib.staff_ids)
        } else {
            usr
        };
        let pickup = if g.chance(0.85) {
            BRANCHES[home]
        } else {
            g.pick(BRANCHES)
        };
        let recent = request > g.now - Duration::days(90);
        let roll: f64 = g.rng.random();
        let state = if stale || request > g.now - Duration::days(2) {
            0
        } else if recent {
            if roll < 0.5 {
                0
            } else if roll < 0.85 {
                1
            } else {
                2
            }
        } else if roll < 0.7 {
            1
        } else {
            2
        };
        let mut h = Hold {
            id: n as i32 + 1,
            usr,
            requestor,
            request,
            capture: None,
            shelf: None,
            shelf_expire: None,
            fulfill: None,
            fulfillment_staff: None,
            cancel: None,
            cancel_cause: None,
            canceled_by: None,
            cancel_note: None,
            expire: (!staff_placed && !stale).then(|| request + Duration::days(365)),
            hold_type,
            target,
            current_copy: None,
            pickup,
            phone: phone.filter(|_| g.chance(0.25)),
            sms: None,
            email_notify: g.chance(0.6),
            frozen: false,
            thaw: None,
        };
        if g.chance(0.05) {
            h.sms = Some(phone_for(g, usr));
        }
        match state {
            0 => {
                // Pending; a few waiting on the hold shelf, some frozen.
                // (hold_request_capture_protect_idx: one open captured hold per copy)
                let shelf_copy = (!stale && g.chance(0.3))
                    .then(|| {
                        (0..1000).find_map(|_| {
                            let c = g.int(1, lib.copies as i64);
                            on_shelf.insert(c).then_some(c)
                        })
                    })
                    .flatten();
                if let Some(copy) = shelf_copy {
                    let cap = g.between(request, g.now - Duration::hours(3)).max(request);
                    h.capture = Some(cap);
                    h.shelf = Some(cap);
                    h.shelf_expire = Some(cap + Duration::days(7));
                    h.current_copy = Some(copy);
                } else if g.chance(0.1) {
                    h.frozen = true;
                    h.thaw = Some(g.now + Duration::days(g.int(5, 60)));
                }
            }
            1 => {
                let cap = request + Duration::days(g.int(1, 20)) + Duration::seconds(g.int(0, DAY));
                let cap = cap
                    .min(g.now - Duration::hours(12))
                    .max(request + Duration::hours(1));
                let fulfil =
                    (cap + Duration::hours(g.int(3, 6 * 24))).min(g.now - Duration::minutes(1));
                h.capture = Some(cap);
                h.shelf = Some(cap);
                h.shelf_expire = Some(cap + Duration::days(7));
                h.fulfill = Some(fulfil.max(cap));
                h.fulfillment_staff = Some(g.pick(&lib.staff_ids));
                h.current_copy = Some(g.int(1, lib.copies as i64));
            }
            _ => {
                let mut cause = g.pick(&[6, 6, 6, 2, 2, 5, 3, 4, 1]);
                if cause == 2 && request + Duration::days(10) > g.now {
                    cause = 6;
                }
                let min_days = if cause == 2 { 9 } else { 1 };
                let at = (request + Duration::days(g.int(min_days, 60)))
                    .min(g.now - Duration::hours(1))
                    .max(request + Duration::minutes(1));
                h.cancel = Some(at);
                h.cancel_cause = Some(cause);
                h.canceled_by = match cause {
                    6 => Some(usr),
                    3..=5 => Some(g.pick(&lib.staff_ids)),
                    _ => None,
                };
                if cause == 2 {
                    h.capture = Some(at - Duration::days(8));
                    h.shelf = Some(at - Duration::days(8));
                    h.shelf_expire = Some(at - Duration::days(1));
                    h.current_copy = Some(g.int(1, lib.copies as i64));
                }
                if matches!(cause, 3..=5) && g.chance(0.3) {
                    h.cancel_note = Some(format!("Patron asked to cancel {CANARY}{usr}"));
                }
            }
        }
        lib.holds.push(h);
    }
}

/// What happens after loading: aging, auditor-producing edits, logical deletions.
fn gen_afterlife(g: &mut Gen, lib: &mut Library, opts: &EvergreenOptions) {
    // Chains to age: every circulation finished more than 3 years ago.
    let cutoff = g.days_ago(3 * 365);
    let mut has_child = vec![false; lib.circs.len()];
    for c in &lib.circs {
        if let Some(p) = c.parent {
            has_child[p] = true;
        }
    }
    let mut tails: Vec<i64> = Vec::new();
    for (i, c) in lib.circs.iter().enumerate() {
        if has_child[i] {
            continue;
        }
        let mut ok = true;
        let mut at = Some(i);
        while let Some(j) = at {
            let cj = &lib.circs[j];
            if cj.finish.is_none_or(|f| f >= cutoff) {
                ok = false;
                break;
            }
            at = cj.parent;
        }
        if ok {
            tails.push(c.id);
        }
    }
    tails.sort_unstable();
    tails.shuffle(&mut g.rng);
    tails.truncate(opts.aged_chains);
    tails.sort_unstable();
    lib.aged_tails = tails;

    let hold_cutoff = g.days_ago(2 * 365);
    let mut holds: Vec<i32> = lib
        .holds
        .iter()
        .filter(|h| h.fulfill.or(h.cancel).is_some_and(|t| t < hold_cutoff))
        .map(|h| h.id)
        .collect();
    holds.shuffle(&mut g.rng);
    holds.truncate(opts.aged_holds);
    holds.sort_unstable();
    lib.aged_holds = holds;

    for p in &lib.patrons {
        if p.staff {
            continue;
        }
        let since = p.create.max(g.days_ago(8 * 365));
        if let Some(old) = &p.email
            && g.chance(0.04)
        {
            let at = g.between(since, g.now);
            lib.email_changes
                .push((p.id, format!("new.{old}").replace("@", ".2@"), at));
        }
        if p.day_phone.is_some() && g.chance(0.03) {
            let at = g.between(since, g.now);
            let phone = format!("770-555-02{:02} {CANARY}{}", p.id % 100, p.id);
            lib.phone_changes.push((p.id, phone, at));
        }
        if g.chance(0.01) {
            let at = g.between(since, g.now);
            let family = g.pick(FAMILY);
            lib.name_changes.push((p.id, tag(family, p.id), at));
        }
    }
    for a in &lib.addresses {
        if !a.pending && g.chance(0.02) {
            let at = g.between(g.days_ago(6 * 365), g.now);
            let street = format!("{} {} {CANARY}{}", g.int(1, 4999), g.pick(STREETS), a.usr);
            let zip = format!("{}{}", PLACES[a.place].3, g.int(0, 9));
            lib.moves.push((a.id, street, zip, at));
        }
    }
    // Logically deleted patrons (staff batch deletion sets deleted only), mostly
    // long-expired ones.
    for p in &lib.patrons {
        if p.staff {
            continue;
        }
        let p_del = if p.expire < g.days_ago(365) {
            0.06
        } else {
            0.005
        };
        if g.chance(p_del) {
            let at = g.between(p.expire.min(g.now - Duration::days(1)), g.now);
            lib.deletions.push((p.id, at));
        }
    }
}

// ---------------------------------------------------------------------------
// Loading

/// A COPY ... FROM STDIN (text format) writer: fields are appended to a buffer
/// that is sent in chunks.
struct CopyText {
    buf: String,
    first: bool,
}

impl CopyText {
    fn new() -> Self {
        CopyText {
            buf: String::with_capacity(1 << 20),
            first: true,
        }
    }
    fn sep(&mut self) {
        if !self.first {
            self.buf.push('\t');
        }
        self.first = false;
    }
    fn null(&mut self) -> &mut Self {
        self.sep();
        self.buf.push_str("\\N");
        self
    }
    fn text(&mut self, s: &str) -> &mut Self {
        self.sep();
        for ch in s.chars() {
            match ch {
                '\\' => self.buf.push_str("\\\\"),
                '\t' => self.buf.push_str("\\t"),
                '\n' => self.buf.push_str("\\n"),
                '\r' => self.buf.push_str("\\r"),
                c => self.buf.push(c),
            }
        }
        self
    }
    fn opt_text(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }
    fn int(&mut self, n: i64) -> &mut Self {
        self.sep();
        self.buf.push_str(&n.to_string());
        self
    }
    fn opt_int(&mut self, n: Option<i64>) -> &mut Self {
        match n {
            Some(n) => self.int(n),
            None => self.null(),
        }
    }
    fn boolean(&mut self, b: bool) -> &mut Self {
        self.sep();
        self.buf.push(if b { 't' } else { 'f' });
        self
    }
    fn ts(&mut self, t: NaiveDateTime) -> &mut Self {
        self.sep();
        self.buf
            .push_str(&t.format("%Y-%m-%d %H:%M:%S+00").to_string());
        self
    }
    fn opt_ts(&mut self, t: Option<NaiveDateTime>) -> &mut Self {
        match t {
            Some(t) => self.ts(t),
            None => self.null(),
        }
    }
    fn date(&mut self, d: Option<NaiveDate>) -> &mut Self {
        match d {
            Some(d) => {
                self.sep();
                self.buf.push_str(&d.format("%Y-%m-%d").to_string());
                self
            }
            None => self.null(),
        }
    }
    fn money(&mut self, cents: i64) -> &mut Self {
        self.sep();
        self.buf
            .push_str(&format!("{}.{:02}", cents / 100, cents % 100));
        self
    }
    fn end(&mut self) {
        self.buf.push('\n');
        self.first = true;
    }
}

/// Runs `COPY <target> FROM STDIN` with the rows `fill` writes, sending about a
/// megabyte at a time.
async fn copy_in<F>(
    conn: &mut PgConnection,
    target: &str,
    rows: usize,
    mut fill: F,
) -> Result<(), sqlx::Error>
where
    F: FnMut(usize, &mut CopyText),
{
    let mut copy = conn
        .copy_in_raw(&format!("COPY {target} FROM STDIN"))
        .await?;
    let mut w = CopyText::new();
    for i in 0..rows {
        fill(i, &mut w);
        if w.buf.len() >= 1 << 20 {
            let chunk = std::mem::take(&mut w.buf);
            if let Err(e) = copy.send(chunk.into_bytes()).await {
                let _ = copy.abort("send failed").await;
                return Err(e);
            }
        }
    }
    if !w.buf.is_empty() {
        let chunk = std::mem::take(&mut w.buf);
        if let Err(e) = copy.send(chunk.into_bytes()).await {
            let _ = copy.abort("send failed").await;
            return Err(e);
        }
    }
    copy.finish().await?;
    Ok(())
}

async fn exec(conn: &mut PgConnection, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(conn).await?;
    Ok(())
}

/// The highest audit_id of an auditor table (0 when empty).
async fn max_audit_id(conn: &mut PgConnection, history: &'static str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COALESCE(max(audit_id), 0) FROM {history}"
    )))
    .fetch_one(conn)
    .await
}

/// Gives the auditor rows written since `before` (audit_id above it) the time of
/// the change they record, instead of the load time (`now()` in the trigger).
async fn date_audit_rows(
    conn: &mut PgConnection,
    history: &'static str,
    before: i64,
    changes: &[(i32, NaiveDateTime)],
) -> Result<(), sqlx::Error> {
    let ids: Vec<i32> = changes.iter().map(|c| c.0).collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = changes.iter().map(|c| c.1.and_utc()).collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {history} h SET audit_time = v.t FROM unnest($1::int[], $2::timestamptz[]) AS v(id, t) \
         WHERE h.id = v.id AND h.audit_id > $3"
    )))
    .bind(&ids)
    .bind(&times)
    .bind(before)
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs `update` (binding $1 patron ids, $2 new values) as an audited staff edit
/// of actor.usr and dates the auditor rows it writes.
async fn audited_usr_update(
    conn: &mut PgConnection,
    update: &'static str,
    changes: &[(i32, String, NaiveDateTime)],
) -> Result<(), sqlx::Error> {
    const HISTORY: &str = "auditor.actor_usr_history";
    let before = max_audit_id(conn, HISTORY).await?;
    let ids: Vec<i32> = changes.iter().map(|c| c.0).collect();
    let values: Vec<&str> = changes.iter().map(|c| c.1.as_str()).collect();
    sqlx::query(update)
        .bind(&ids)
        .bind(&values)
        .execute(&mut *conn)
        .await?;
    let times: Vec<(i32, NaiveDateTime)> = changes.iter().map(|c| (c.0, c.2)).collect();
    date_audit_rows(conn, HISTORY, before, &times).await
}

async fn load(conn: &mut PgConnection, lib: &Library) -> Result<(), sqlx::Error> {
    // Reference rows: org units, workstations, locations, bill types, a carrier,
    // one library setting (Southern Hills does not keep birth years on aged circs).
    copy_in(
        conn,
        "actor.org_unit (id, parent_ou, ou_type, shortname, name)",
        ORG_UNITS.len(),
        |i, w| {
            let (id, parent, ty, short, name) = ORG_UNITS[i];
            w.int(id.into())
                .int(parent.into())
                .int(ty.into())
                .text(short)
                .text(name)
                .end();
        },
    )
    .await?;
    copy_in(
        conn,
        "actor.workstation (id, name, owning_lib)",
        BRANCHES.len(),
        |i, w| {
            let short = ORG_UNITS
                .iter()
                .find(|o| o.0 == BRANCHES[i])
                .map_or("WS", |o| o.3);
            w.int(i as i64 + 1)
                .text(&format!("{short}-circ1"))
                .int(BRANCHES[i].into())
                .end();
        },
    )
    .await?;
    exec(
        conn,
        "INSERT INTO asset.copy_location (id, name, owning_lib) VALUES \
           (2, 'Adult Fiction', 1), (3, 'Adult Nonfiction', 1), (4, 'Children', 1), (5, 'Media', 1);\
         INSERT INTO config.billing_type (id, name, owner) VALUES (101, 'Printing', 1), (102, 'Lost Card Replacement', 1);\
         INSERT INTO config.sms_carrier (id, region, name, email_gateway) VALUES (1, 'USA', 'Example Wireless', 'opensrf+$number@sms.example.net');\
         INSERT INTO actor.org_unit_setting (org_unit, name, value) VALUES (3, 'circ.do_not_retain_year_of_birth_on_aged', 'true');",
    )
    .await?;

    // Copies, one call number each, two copies per bib record.
    let copies = lib.copies;
    copy_in(
        conn,
        "asset.call_number (id, creator, editor, record, owning_lib, label)",
        copies,
        |i, w| {
            let id = i as i64 + 1;
            let lib_id = BRANCHES[i % (BRANCHES.len() - 1)];
            w.int(id)
                .int(1)
                .int(1)
                .int((id + 1) / 2)
                .int(lib_id.into())
                .text(&format!("FIC {:05}", (id + 1) / 2))
                .end();
        },
    )
    .await?;
    copy_in(conn, "asset.copy (id, circ_lib, creator, call_number, editor, location, loan_duration, fine_level, barcode)", copies, |i, w| {
        let id = i as i64 + 1;
        let lib_id = BRANCHES[i % (BRANCHES.len() - 1)];
        w.int(id).int(lib_id.into()).int(1).int(id).int(1).int(2 + (id % 4)).int(2).int(2)
            .text(&format!("3900{id:010}")).end();
    })
    .await?;

    // Patrons, with card and address references (the foreign keys are deferred).
    copy_in(
        conn,
        "actor.usr (id, card, profile, usrname, email, passwd, ident_type, ident_value, ident_type2, ident_value2, \
         photo_url, prefix, first_given_name, second_given_name, family_name, suffix, guardian, guardian_email, \
         pref_first_given_name, pref_family_name, name_keywords, alias, day_phone, evening_phone, other_phone, \
         mailing_address, billing_address, home_ou, dob, active, super_user, barred, juvenile, create_date, expire_date, locale, standing)",
        lib.patrons.len(),
        |i, w| {
            let p = &lib.patrons[i];
            let id = p.id;
            let h = hash(id as u64);
            w.int(id.into())
                .int(p.card.into())
                .int(p.profile.into())
                .text(&format!("{}{}{id}-{CANARY}", p.first.to_lowercase(), p.family.to_lowercase().replace('\'', "")))
                .opt_text(p.email.as_deref())
                .text(&format!("pw{id}"));
            if h % 10 < 6 {
                w.int(1).text(&format!("DL-{CANARY}-{id:06}"));
            } else {
                w.int(3).null();
            }
            if h % 50 == 7 {
                w.int(3).text(&format!("STUDENT-{CANARY}-{id}"));
            } else {
                w.null().null();
            }
            w.opt_text((h % 100 == 3).then(|| format!("https://photos.example.org/{CANARY}{id}.jpg")).as_deref())
                .opt_text((h % 40 == 1).then(|| format!("Dr. {CANARY}{id}")).as_deref())
                .text(&tag(p.first, id))
                .opt_text((h % 10 < 3).then(|| tag(FIRST[(h as usize / 7) % FIRST.len()], id)).as_deref())
                .text(&tag(p.family, id))
                .opt_text((h % 60 == 2).then(|| format!("Jr. {CANARY}{id}")).as_deref())
                .opt_text(p.juvenile.then(|| format!("{} {}", tag("Parent", id), p.family)).as_deref())
                .opt_text(p.juvenile.then(|| format!("parent.{id}.{CANARY}@example.com")).as_deref())
                .opt_text((h % 20 == 4).then(|| tag("Sam", id)).as_deref())
                .opt_text((h % 20 == 4).then(|| tag(p.family, id)).as_deref())
                .opt_text((h % 50 == 9).then(|| format!("nickname {CANARY}{id}")).as_deref())
                .opt_text((h % 33 == 5).then(|| tag("Reader", id)).as_deref())
                .opt_text(p.day_phone.as_deref())
                .opt_text((h % 10 > 6).then(|| format!("404-555-03{:02} {CANARY}{id}", id % 100)).as_deref())
                .opt_text((h % 20 == 11).then(|| format!("678-555-04{:02} {CANARY}{id}", id % 100)).as_deref())
                .opt_int(p.mailing.map(i64::from))
                .opt_int(p.billing.map(i64::from))
                .int(BRANCHES[p.home].into())
                .date(p.dob)
                .boolean(h % 50 != 13)
                .boolean(p.staff && i == 1)
                .boolean(!p.staff && h % 100 == 17)
                .boolean(p.juvenile)
                .ts(p.create)
                .ts(p.expire)
                .opt_text((h % 4 == 0).then_some("en-US"))
                .int(if !p.staff && h % 100 == 17 { 2 } else { 1 });
            w.end();
        },
    )
    .await?;
    copy_in(
        conn,
        "actor.usr_address (id, valid, within_city_limits, address_type, usr, street1, street2, city, county, state, country, post_code, pending, replaces)",
        lib.addresses.len(),
        |i, w| {
            let a = &lib.addresses[i];
            let (city, county, state, zip) = PLACES[a.place];
            w.int(a.id.into())
                .boolean(true)
                .boolean(a.number % 3 != 0)
                .text(a.kind)
                .int(a.usr.into())
                .text(&format!("{} {} {CANARY}{}", a.number, a.street, a.usr))
                .opt_text(a.street2.map(|n| format!("Apt {n} {CANARY}{}", a.usr)).as_deref())
                .text(city)
                .text(county)
                .text(state)
                .text("USA")
                .text(&format!("{zip}{}", a.zip_digit))
                .boolean(a.pending)
                .opt_int(a.replaces.map(i64::from))
                .end();
        },
    )
    .await?;
    copy_in(
        conn,
        "actor.card (id, usr, barcode, active)",
        lib.cards.len(),
        |i, w| {
            let c = &lib.cards[i];
            w.int(c.id.into())
                .int(c.usr.into())
                .text(&c.barcode)
                .boolean(c.active)
                .end();
        },
    )
    .await?;
    copy_in(
        conn,
        "permission.usr_work_ou_map (usr, work_ou)",
        lib.work_ou.len(),
        |i, w| {
            let (u, o) = lib.work_ou[i];
            w.int(u.into()).int(o.into()).end();
        },
    )
    .await?;
    // Settings before circulations: maintain_usr_circ_history_tgr reads them.
    copy_in(
        conn,
        "actor.usr_setting (usr, name, value)",
        lib.settings.len(),
        |i, w| {
            let s = &lib.settings[i];
            w.int(s.usr.into()).text(s.name).text(&s.value).end();
        },
    )
    .await?;

    // Circulations in id order (a chain's head before its renewals).
    let mut order: Vec<usize> = (0..lib.circs.len()).collect();
    order.sort_by_key(|&i| lib.circs[i].id);
    copy_in(
        conn,
        "action.circulation (id, usr, xact_start, xact_finish, target_copy, circ_lib, circ_staff, checkin_staff, \
         checkin_lib, renewal_remaining, grace_period, due_date, stop_fines_time, checkin_time, create_time, duration, \
         fine_interval, recurring_fine, max_fine, phone_renewal, desk_renewal, opac_renewal, duration_rule, \
         recurring_fine_rule, max_fine_rule, stop_fines, workstation, checkin_workstation, checkin_scan_time, parent_circ)",
        order.len(),
        |k, w| {
            let c = &lib.circs[order[k]];
            w.int(c.id)
                .int(c.usr.into())
                .ts(c.start)
                .opt_ts(c.finish)
                .int(c.copy)
                .int(c.circ_lib.into())
                .int(c.circ_staff.into())
                .opt_int(c.checkin_staff.map(i64::from))
                .opt_int(c.checkin_lib.map(i64::from))
                .int(c.renewal_remaining.into())
                .text("1 day")
                .ts(c.due)
                .opt_ts(c.stop_fines_time)
                .opt_ts(c.checkin)
                .ts(c.start)
                .text("21 days")
                .text("1 day")
                .money(25)
                .money(500)
                .boolean(c.phone_renewal)
                .boolean(c.desk_renewal)
                .boolean(c.opac_renewal)
                .text("default")
                .text("overdue_mid")
                .text("overdue_mid")
                .opt_text(c.stop_fines)
                .opt_int(c.workstation.map(i64::from))
                .opt_int(c.checkin_ws.map(i64::from))
                .opt_ts(c.checkin)
                .opt_int(c.parent.map(|p| lib.circs[p].id))
                .end();
        },
    )
    .await?;
    copy_in(
        conn,
        "money.grocery (id, usr, xact_start, xact_finish, billing_location, note)",
        lib.groceries.len(),
        |i, w| {
            let gr = &lib.groceries[i];
            w.int(gr.id)
                .int(gr.usr.into())
                .ts(gr.start)
                .opt_ts(gr.finish)
                .int(gr.location.into())
                .text(gr.note)
                .end();
        },
    )
    .await?;
    let xact_id = |xact: usize, grocery: bool| {
        if grocery {
            lib.groceries[xact].id
        } else {
            lib.circs[xact].id
        }
    };
    copy_in(
        conn,
        "money.billing (xact, billing_ts, amount, billing_type, btype, create_date, period_start, period_end)",
        lib.bills.len(),
        |i, w| {
            let b = &lib.bills[i];
            w.int(xact_id(b.xact, b.grocery))
                .ts(b.at)
                .money(b.cents)
                .text(b.name)
                .int(b.btype.into())
                .ts(b.at)
                .opt_ts(b.period.map(|p| p.0))
                .opt_ts(b.period.map(|p| p.1))
                .end();
        },
    )
    .await?;
    copy_in(
        conn,
        "money.payment (xact, payment_ts, amount)",
        lib.payments.len(),
        |i, w| {
            let p = &lib.payments[i];
            w.int(xact_id(p.xact, p.grocery))
                .ts(p.at)
                .money(p.cents)
                .end();
        },
    )
    .await?;
    copy_in(
        conn,
        "action.hold_request (id, request_time, capture_time, fulfillment_time, expire_time, cancel_time, cancel_cause, \
         cancel_note, canceled_by, target, current_copy, fulfillment_staff, fulfillment_lib, request_lib, requestor, usr, \
         selection_ou, selection_depth, pickup_lib, hold_type, phone_notify, email_notify, sms_notify, sms_carrier, frozen, \
         thaw_date, shelf_time, shelf_expire_time, current_shelf_lib)",
        lib.holds.len(),
        |i, w| {
            let h = &lib.holds[i];
            w.int(h.id.into())
                .ts(h.request)
                .opt_ts(h.capture)
                .opt_ts(h.fulfill)
                .opt_ts(h.expire)
                .opt_ts(h.cancel)
                .opt_int(h.cancel_cause.map(i64::from))
                .opt_text(h.cancel_note.as_deref())
                .opt_int(h.canceled_by.map(i64::from))
                .int(h.target)
                .opt_int(h.current_copy)
                .opt_int(h.fulfillment_staff.map(i64::from))
                .opt_int(h.fulfill.map(|_| i64::from(h.pickup)))
                .int(h.pickup.into())
                .int(h.requestor.into())
                .int(h.usr.into())
                .int(1)
                .int(0)
                .int(h.pickup.into())
                .text(h.hold_type)
                .opt_text(h.phone.as_deref())
                .boolean(h.email_notify)
                .opt_text(h.sms.as_deref())
                .opt_int(h.sms.as_ref().map(|_| 1))
                .boolean(h.frozen)
                .opt_ts(h.thaw)
                .opt_ts(h.shelf)
                .opt_ts(h.shelf_expire)
                .opt_int(h.shelf.map(|_| i64::from(h.pickup)))
                .end();
        },
    )
    .await?;

    // Opted out after the fact: the setting goes, the history rows stay.
    sqlx::query(
        "DELETE FROM actor.usr_setting WHERE name = 'history.circ.retention_start' AND usr = ANY($1)",
    )
    .bind(&lib.opted_out)
    .execute(&mut *conn)
    .await?;

    // Aging, through Evergreen's triggers: deleting a tail ages its chain.
    sqlx::query("DELETE FROM action.circulation WHERE id = ANY($1)")
        .bind(&lib.aged_tails)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM action.hold_request WHERE id = ANY($1)")
        .bind(&lib.aged_holds)
        .execute(&mut *conn)
        .await?;

    // Staff edits, recorded by the auditor as staff user / workstation 1.
    let editor = lib.staff_ids.first().copied().unwrap_or(1);
    sqlx::query("SELECT auditor.set_audit_info($1, 1)")
        .bind(editor)
        .execute(&mut *conn)
        .await?;
    audited_usr_update(
        conn,
        "UPDATE actor.usr u SET email = v.x FROM unnest($1::int[], $2::text[]) AS v(id, x) WHERE u.id = v.id",
        &lib.email_changes,
    )
    .await?;
    audited_usr_update(
        conn,
        "UPDATE actor.usr u SET day_phone = v.x FROM unnest($1::int[], $2::text[]) AS v(id, x) WHERE u.id = v.id",
        &lib.phone_changes,
    )
    .await?;
    audited_usr_update(
        conn,
        "UPDATE actor.usr u SET family_name = v.x FROM unnest($1::int[], $2::text[]) AS v(id, x) WHERE u.id = v.id",
        &lib.name_changes,
    )
    .await?;
    // Patrons who moved: the old address goes to auditor.actor_usr_address_history.
    let before = max_audit_id(conn, "auditor.actor_usr_address_history").await?;
    let ids: Vec<i32> = lib.moves.iter().map(|m| m.0).collect();
    let streets: Vec<&str> = lib.moves.iter().map(|m| m.1.as_str()).collect();
    let zips: Vec<&str> = lib.moves.iter().map(|m| m.2.as_str()).collect();
    sqlx::query(
        "UPDATE actor.usr_address a SET street1 = v.s, post_code = v.z \
         FROM unnest($1::int[], $2::text[], $3::text[]) AS v(id, s, z) WHERE a.id = v.id",
    )
    .bind(&ids)
    .bind(&streets)
    .bind(&zips)
    .execute(&mut *conn)
    .await?;
    let times: Vec<(i32, NaiveDateTime)> = lib.moves.iter().map(|m| (m.0, m.3)).collect();
    date_audit_rows(conn, "auditor.actor_usr_address_history", before, &times).await?;
    // Logical deletion through the delete-protect rule (the auditor sees an UPDATE).
    let before = max_audit_id(conn, "auditor.actor_usr_history").await?;
    let ids: Vec<i32> = lib.deletions.iter().map(|d| d.0).collect();
    sqlx::query("DELETE FROM actor.usr WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    date_audit_rows(conn, "auditor.actor_usr_history", before, &lib.deletions).await?;
    exec(conn, "SELECT auditor.clear_audit_info()").await?;

    exec(
        conn,
        "SELECT setval('actor.usr_id_seq', (SELECT max(id) FROM actor.usr));\
         SELECT setval('actor.card_id_seq', (SELECT max(id) FROM actor.card));\
         SELECT setval('actor.usr_address_id_seq', GREATEST(1, (SELECT max(id) FROM actor.usr_address)));\
         SELECT setval('actor.workstation_id_seq', (SELECT max(id) FROM actor.workstation));\
         SELECT setval('asset.call_number_id_seq', (SELECT max(id) FROM asset.call_number));\
         SELECT setval('asset.copy_id_seq', (SELECT max(id) FROM asset.copy));\
         SELECT setval('money.billable_xact_id_seq', GREATEST(1, (SELECT max(id) FROM money.billable_xact), (SELECT max(id) FROM action.aged_circulation)));\
         SELECT setval('action.hold_request_id_seq', GREATEST(1, (SELECT max(id) FROM action.hold_request), (SELECT max(id) FROM action.aged_hold_request)));",
    )
    .await?;
    Ok(())
}

/// A small deterministic mix of a number (SplitMix64), for per-patron choices
/// that must not depend on the random stream's position.
fn hash(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn read_stats(
    conn: &mut PgConnection,
    today: NaiveDate,
) -> Result<EvergreenStats, sqlx::Error> {
    let now = midnight(today).and_utc();
    let long_ago = midnight(
        today
            .with_year(today.year() - 2)
            .unwrap_or(today - Duration::days(730)),
    )
    .and_utc();
    let row = sqlx::query(
        "SELECT
           (SELECT count(*) FROM actor.usr WHERE id <> 1) AS patrons,
           (SELECT count(DISTINCT usr) FROM permission.usr_work_ou_map WHERE usr <> 1) AS staff,
           (SELECT count(*) FROM actor.usr WHERE super_user) AS super_users,
           (SELECT count(*) FROM actor.usr WHERE id <> 1 AND deleted) AS deleted_patrons,
           (SELECT count(*) FROM actor.usr WHERE id <> 1 AND expire_date < $1) AS expired_patrons,
           (SELECT count(*) FROM actor.usr WHERE id <> 1 AND expire_date < $2) AS long_expired_patrons,
           (SELECT count(*) FROM actor.usr u WHERE u.id <> 1 AND u.expire_date < $2
              AND EXISTS (SELECT 1 FROM money.billable_xact x WHERE x.usr = u.id AND x.xact_finish IS NULL))
              AS long_expired_with_open_xact,
           (SELECT count(*) FROM actor.usr u WHERE u.id <> 1 AND u.expire_date < $2
              AND EXISTS (SELECT 1 FROM action.hold_request h WHERE h.usr = u.id
                          AND h.fulfillment_time IS NULL AND h.cancel_time IS NULL))
              AS long_expired_with_pending_hold,
           (SELECT count(*) FROM actor.card) AS cards,
           (SELECT count(*) FROM actor.usr_address) AS addresses,
           (SELECT count(*) FROM asset.copy) AS copies,
           (SELECT count(*) FROM action.circulation) AS circulations,
           (SELECT count(*) FROM action.circulation WHERE parent_circ IS NULL) AS chains,
           (SELECT count(*) FROM action.circulation WHERE parent_circ IS NOT NULL) AS renewals,
           (SELECT count(*) FROM action.circulation c WHERE c.parent_circ IS NULL
              AND EXISTS (SELECT 1 FROM action.circulation r WHERE r.parent_circ = c.id)) AS chains_with_renewals,
           (SELECT count(*) FROM action.circulation WHERE checkin_time IS NULL) AS open_circulations,
           (SELECT count(*) FROM action.circulation WHERE checkin_time IS NOT NULL AND xact_finish IS NULL)
              AS returned_unfinished,
           (SELECT count(*) FROM money.grocery) AS groceries,
           (SELECT count(*) FROM money.billing) AS billings,
           (SELECT count(*) FROM money.payment) AS payments,
           (SELECT count(*) FROM action.aged_circulation) AS aged_circulations,
           (SELECT count(*) FROM action.aged_circulation WHERE parent_circ IS NULL) AS aged_chains,
           (SELECT count(*) FROM action.hold_request) AS holds,
           (SELECT count(*) FROM action.hold_request WHERE fulfillment_time IS NULL AND cancel_time IS NULL)
              AS pending_holds,
           (SELECT count(*) FROM action.hold_request WHERE fulfillment_time IS NOT NULL) AS fulfilled_holds,
           (SELECT count(*) FROM action.hold_request WHERE cancel_time IS NOT NULL) AS canceled_holds,
           (SELECT count(*) FROM action.aged_hold_request) AS aged_holds,
           (SELECT count(*) FROM action.usr_circ_history) AS circ_history,
           (SELECT count(*) FROM actor.usr_setting WHERE name = 'history.circ.retention_start') AS circ_history_opted_in,
           (SELECT count(*) FROM actor.usr_setting s WHERE s.name = 'history.circ.retention_age'
              AND EXISTS (SELECT 1 FROM actor.usr_setting t WHERE t.usr = s.usr
                          AND t.name = 'history.circ.retention_start')) AS circ_history_with_age,
           (SELECT count(DISTINCT h.usr) FROM action.usr_circ_history h
              WHERE NOT EXISTS (SELECT 1 FROM actor.usr_setting s WHERE s.usr = h.usr
                                AND s.name = 'history.circ.retention_start')) AS circ_history_orphaned_patrons,
           (SELECT count(*) FROM actor.usr_setting WHERE name = 'history.hold.retention_start') AS hold_history_opted_in,
           (SELECT count(*) FROM auditor.actor_usr_history) AS audit_usr_rows,
           (SELECT count(*) FROM auditor.actor_usr_address_history) AS audit_address_rows",
    )
    .bind(now)
    .bind(long_ago)
    .fetch_one(&mut *conn)
    .await?;
    let get = |name: &str| row.try_get::<i64, _>(name);
    Ok(EvergreenStats {
        patrons: get("patrons")?,
        staff: get("staff")?,
        super_users: get("super_users")?,
        deleted_patrons: get("deleted_patrons")?,
        expired_patrons: get("expired_patrons")?,
        long_expired_patrons: get("long_expired_patrons")?,
        long_expired_with_open_xact: get("long_expired_with_open_xact")?,
        long_expired_with_pending_hold: get("long_expired_with_pending_hold")?,
        cards: get("cards")?,
        addresses: get("addresses")?,
        copies: get("copies")?,
        circulations: get("circulations")?,
        chains: get("chains")?,
        renewals: get("renewals")?,
        chains_with_renewals: get("chains_with_renewals")?,
        open_circulations: get("open_circulations")?,
        returned_unfinished: get("returned_unfinished")?,
        groceries: get("groceries")?,
        billings: get("billings")?,
        payments: get("payments")?,
        aged_circulations: get("aged_circulations")?,
        aged_chains: get("aged_chains")?,
        holds: get("holds")?,
        pending_holds: get("pending_holds")?,
        fulfilled_holds: get("fulfilled_holds")?,
        canceled_holds: get("canceled_holds")?,
        aged_holds: get("aged_holds")?,
        circ_history: get("circ_history")?,
        circ_history_opted_in: get("circ_history_opted_in")?,
        circ_history_with_age: get("circ_history_with_age")?,
        circ_history_orphaned_patrons: get("circ_history_orphaned_patrons")?,
        hold_history_opted_in: get("hold_history_opted_in")?,
        audit_usr_rows: get("audit_usr_rows")?,
        audit_address_rows: get("audit_address_rows")?,
    })
}
