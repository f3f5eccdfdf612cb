//! Retention periods and cutoffs: calendar-aware, in the library's time zone.
//!
//! A retention period is a calendar period ("30 days", "18 months", "7 years"). A
//! month is a calendar month: 31 March minus one month is the last day of February
//! (chrono's `checked_sub_months` clamps to the month's last day). The cutoff is
//! computed on the library's local wall clock, because Koha stores its DATETIME
//! columns as local wall time (ILS-FACTS §5, "Time types"), and then resolved to an
//! instant in the zone for reporting and for `timestamptz` columns (Evergreen).

use std::fmt;

use chrono::{DateTime, Duration, Months, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// The unit of a [`Period`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeriodUnit {
    /// Hours (for short-lived records such as logs; whole hours of wall time).
    Hours,
    /// Calendar days.
    Days,
    /// Weeks of 7 calendar days.
    Weeks,
    /// Calendar months.
    Months,
    /// Calendar years (12 calendar months).
    Years,
}

/// A calendar retention period such as "30 days" or "7 years".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// How many units; always at least 1.
    pub count: u32,
    /// The unit.
    pub unit: PeriodUnit,
}

/// The largest count accepted for any unit: 200 years' worth of days. Larger values
/// are typos (and would overflow chrono's date range).
const MAX_DAYS: u64 = 200 * 366;

/// Why a period string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    /// Not of the form `<number> <unit>`.
    #[error("expected a period such as \"30 days\", \"18 months\" or \"7 years\", found {0:?}")]
    Syntax(String),
    /// The unit is not one of day(s), week(s), month(s), year(s).
    #[error("unknown unit {0:?} (use hours, days, weeks, months or years)")]
    Unit(String),
    /// Zero or negative.
    #[error("a retention period must be at least 1 {0}")]
    Zero(String),
    /// More than 200 years.
    #[error("a retention period of {0} is longer than 200 years")]
    TooLarge(String),
}

impl Period {
    /// Parses `"<count> <unit>"` where unit is `day[s]`, `week[s]`, `month[s]` or
    /// `year[s]`, or `hour[s]` (case-insensitive). The count is a positive integer of at most 200
    /// years' worth.
    ///
    /// # Errors
    /// [`PeriodError`] says what is wrong, without echoing more than the value given.
    pub fn parse(s: &str) -> Result<Period, PeriodError> {
        let trimmed = s.trim();
        let mut parts = trimmed.split_whitespace();
        let (Some(num), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(PeriodError::Syntax(trimmed.to_string()));
        };
        let unit_l = unit.to_ascii_lowercase();
        let unit = match unit_l.as_str() {
            "hour" | "hours" => PeriodUnit::Hours,
            "day" | "days" => PeriodUnit::Days,
            "week" | "weeks" => PeriodUnit::Weeks,
            "month" | "months" => PeriodUnit::Months,
            "year" | "years" => PeriodUnit::Years,
            _ => return Err(PeriodError::Unit(unit.to_string())),
        };
        if num.starts_with('-') {
            return Err(PeriodError::Zero(unit_l.trim_end_matches('s').to_string()));
        }
        if !num.chars().all(|c| c.is_ascii_digit()) {
            return Err(PeriodError::Syntax(trimmed.to_string()));
        }
        let count: u64 = num
            .parse()
            .map_err(|_| PeriodError::TooLarge(trimmed.to_string()))?;
        if count == 0 {
            return Err(PeriodError::Zero(unit_l.trim_end_matches('s').to_string()));
        }
        let p = Period {
            count: u32::try_from(count).map_err(|_| PeriodError::TooLarge(trimmed.to_string()))?,
            unit,
        };
        if p.approx_days() > MAX_DAYS {
            return Err(PeriodError::TooLarge(trimmed.to_string()));
        }
        Ok(p)
    }

    /// A lower bound on the period's length in hours (months as 28 days, years as 365),
    /// used to compare a period with the configured floor.
    pub fn min_hours(&self) -> u64 {
        let c = u64::from(self.count);
        match self.unit {
            PeriodUnit::Hours => c,
            PeriodUnit::Days => c * 24,
            PeriodUnit::Weeks => c * 7 * 24,
            PeriodUnit::Months => c * 28 * 24,
            PeriodUnit::Years => c * 365 * 24,
        }
    }

    fn approx_days(&self) -> u64 {
        let c = u64::from(self.count);
        match self.unit {
            PeriodUnit::Hours => c.div_ceil(24),
            PeriodUnit::Days => c,
            PeriodUnit::Weeks => c * 7,
            PeriodUnit::Months => c * 31,
            PeriodUnit::Years => c * 366,
        }
    }

    /// Subtracts the period from a local wall-clock date and time, calendar-aware:
    /// months and years clamp to the last day of the target month. `None` only when the
    /// result is outside chrono's range.
    pub fn before(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        match self.unit {
            PeriodUnit::Hours => t.checked_sub_signed(Duration::hours(i64::from(self.count))),
            PeriodUnit::Days => t.checked_sub_signed(Duration::days(i64::from(self.count))),
            PeriodUnit::Weeks => t.checked_sub_signed(Duration::weeks(i64::from(self.count))),
            PeriodUnit::Months => t.checked_sub_months(Months::new(self.count)),
            PeriodUnit::Years => t.checked_sub_months(Months::new(self.count.checked_mul(12)?)),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (one, many) = match self.unit {
            PeriodUnit::Hours => ("hour", "hours"),
            PeriodUnit::Days => ("day", "days"),
            PeriodUnit::Weeks => ("week", "weeks"),
            PeriodUnit::Months => ("month", "months"),
            PeriodUnit::Years => ("year", "years"),
        };
        write!(
            f,
            "{} {}",
            self.count,
            if self.count == 1 { one } else { many }
        )
    }
}

/// A class's cutoff, in the three shapes the backends compare with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoff {
    /// Local wall time in the library's zone, whole seconds: for DATETIME columns that
    /// store local wall time (Koha). A row whose age equals it is kept (strict `<`).
    pub local: NaiveDateTime,
    /// The local date of the cutoff: for DATE columns. A row dated on the cutoff day is
    /// kept (strict `<`).
    pub date: NaiveDate,
    /// The cutoff as an instant in the library's zone: for `timestamptz` columns
    /// (Evergreen) and for reports.
    pub instant: DateTime<Tz>,
}

/// Resolves a local wall time in `tz` to an instant: the earlier instant of a
/// daylight-saving fold, and for a time inside a spring-forward gap the first instant
/// after the gap (STACK.md, "Time").
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Tz>> {
    match tz.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => Some(t),
        chrono::LocalResult::Ambiguous(earliest, _) => Some(earliest),
        chrono::LocalResult::None => {
            // Inside a gap: walk forward minute by minute (gaps are at most a few hours).
            let mut probe = local;
            for _ in 0..(24 * 60) {
                probe = probe.checked_add_signed(Duration::minutes(1))?;
                let probe_whole = probe.with_second(0)?;
                if let Some(t) = tz.from_local_datetime(&probe_whole).earliest() {
                    return Some(t);
                }
            }
            None
        }
    }
}

/// Computes the cutoff of `period` at the moment `now` (UTC) in the library's zone
/// `tz`: local now minus the period, on the local calendar, truncated to whole
/// seconds. `None` only when the result is outside chrono's range.
pub fn cutoff(now: DateTime<Utc>, tz: Tz, period: Period) -> Option<Cutoff> {
    if period.unit == PeriodUnit::Hours {
        // Hours are elapsed time, not wall-clock time: subtract on the instant.
        let instant = now
            .with_nanosecond(0)?
            .checked_sub_signed(Duration::hours(i64::from(period.count)))?;
        let instant = instant.with_timezone(&tz);
        let local = instant.naive_local();
        return Some(Cutoff {
            local,
            date: local.date(),
            instant,
        });
    }
    let local_now = now.with_timezone(&tz).naive_local().with_nanosecond(0)?;
    let local = period.before(local_now)?;
    let instant = resolve_local(tz, local)?;
    Some(Cutoff {
        local,
        date: local.date(),
        instant,
    })
}

/// Reads a period a patron chose, as Evergreen stores it in `actor.usr_setting.value`:
/// JSON text holding a PostgreSQL interval such as `"1 year"`, `"6 months"`, `"2 weeks"`,
/// `"30 days"`, `"1 mon"` or `"1 year 6 mons"` (the OPAC offers such values for
/// `history.circ.retention_age`). The value may also be unquoted. Returns the terms in
/// order, or `None` for anything else (an empty, zero, negative, fractional or
/// clock-time interval): the caller then keeps the rows (fail safe).
pub fn parse_patron_interval(value: &str) -> Option<Vec<Period>> {
    let text =
        serde_json::from_str::<String>(value.trim()).unwrap_or_else(|_| value.trim().to_string());
    let text = text.trim().trim_start_matches('@').trim();
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() || words.len() % 2 != 0 || words.len() > 8 {
        return None;
    }
    let mut out = Vec::new();
    for pair in words.chunks(2) {
        let unit = match pair[1].to_ascii_lowercase().as_str() {
            "day" | "days" => "days",
            "week" | "weeks" => "weeks",
            "mon" | "mons" | "month" | "months" => "months",
            "year" | "years" => "years",
            _ => return None,
        };
        out.push(Period::parse(&format!("{} {unit}", pair[0])).ok()?);
    }
    Some(out)
}

/// [`cutoff`] for a sum of periods (a patron's interval such as "1 year 6 months"): the
/// terms are subtracted one after the other on the local calendar.
pub fn cutoff_of_terms(now: DateTime<Utc>, tz: Tz, terms: &[Period]) -> Option<Cutoff> {
    let mut local = now.with_timezone(&tz).naive_local().with_nanosecond(0)?;
    for t in terms {
        local = t.before(local)?;
    }
    let instant = resolve_local(tz, local)?;
    Some(Cutoff {
        local,
        date: local.date(),
        instant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_patron_intervals_as_evergreen_stores_them() {
        let one = |s: &str| {
            parse_patron_interval(s).map(|v| v.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(one("\"1 year\""), Some(vec!["1 year".to_string()]));
        assert_eq!(one("\"6 months\""), Some(vec!["6 months".to_string()]));
        assert_eq!(one("30 days"), Some(vec!["30 days".to_string()]));
        assert_eq!(
            one("\"1 year 6 mons\""),
            Some(vec!["1 year".to_string(), "6 months".to_string()])
        );
        for bad in [
            "",
            "\"\"",
            "\"0 days\"",
            "\"-1 year\"",
            "\"1.5 years\"",
            "\"01:00:00\"",
            "forever",
            "\"2 fortnights\"",
        ] {
            assert_eq!(parse_patron_interval(bad), None, "{bad}");
        }
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap();
        let c = cutoff_of_terms(
            now,
            chrono_tz::America::New_York,
            &parse_patron_interval("\"1 year 6 mons\"").unwrap(),
        )
        .unwrap();
        assert_eq!(c.local, dt("2024-12-15 08:00:00"));
    }

    fn dt(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn parses_periods() {
        assert_eq!(
            Period::parse("30 days").unwrap(),
            Period {
                count: 30,
                unit: PeriodUnit::Days
            }
        );
        assert_eq!(Period::parse("1 Year").unwrap().unit, PeriodUnit::Years);
        assert_eq!(Period::parse(" 18 months ").unwrap().count, 18);
        assert!(matches!(
            Period::parse("30 dyas"),
            Err(PeriodError::Unit(_))
        ));
        assert!(matches!(Period::parse("0 days"), Err(PeriodError::Zero(_))));
        assert!(matches!(
            Period::parse("-5 days"),
            Err(PeriodError::Zero(_))
        ));
        assert!(matches!(Period::parse("30"), Err(PeriodError::Syntax(_))));
        assert!(matches!(
            Period::parse("3.5 days"),
            Err(PeriodError::Syntax(_))
        ));
        assert!(matches!(
            Period::parse("999999999999 days"),
            Err(PeriodError::TooLarge(_))
        ));
        assert!(matches!(
            Period::parse("201 years"),
            Err(PeriodError::TooLarge(_))
        ));
    }

    #[test]
    fn month_is_a_calendar_month() {
        let p = Period::parse("1 month").unwrap();
        assert_eq!(
            p.before(dt("2026-03-31 10:00:00")),
            Some(dt("2026-02-28 10:00:00"))
        );
        assert_eq!(
            p.before(dt("2024-03-31 10:00:00")),
            Some(dt("2024-02-29 10:00:00"))
        );
        let y = Period::parse("1 year").unwrap();
        assert_eq!(
            y.before(dt("2024-02-29 00:00:00")),
            Some(dt("2023-02-28 00:00:00"))
        );
    }

    #[test]
    fn cutoff_is_local_wall_time() {
        let tz: Tz = "America/New_York".parse().unwrap();
        // 2026-07-01 06:30 UTC is 02:30 EDT.
        let now = Utc.with_ymd_and_hms(2026, 7, 1, 6, 30, 0).unwrap();
        let c = cutoff(now, tz, Period::parse("30 days").unwrap()).unwrap();
        assert_eq!(c.local, dt("2026-06-01 02:30:00"));
        assert_eq!(c.date, NaiveDate::from_ymd_opt(2026, 6, 1).unwrap());
        assert_eq!(c.instant.to_rfc3339(), "2026-06-01T02:30:00-04:00");
    }

    #[test]
    fn cutoff_in_spring_forward_gap_moves_after_the_gap() {
        let tz: Tz = "America/New_York".parse().unwrap();
        // Local 2026-04-08 02:30 EDT minus 30 days = 2026-03-09 02:30: fine. Pick a day
        // that lands in the gap: 2026-03-08 02:30 does not exist in New York.
        let now = tz
            .from_local_datetime(&dt("2026-04-07 02:30:00"))
            .unwrap()
            .with_timezone(&Utc);
        let c = cutoff(now, tz, Period::parse("30 days").unwrap()).unwrap();
        assert_eq!(c.local, dt("2026-03-08 02:30:00"));
        assert_eq!(c.instant.to_rfc3339(), "2026-03-08T03:00:00-04:00");
    }

    #[test]
    fn cutoff_in_fall_back_fold_takes_the_earlier_instant() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let now = tz
            .from_local_datetime(&dt("2026-12-01 01:30:00"))
            .unwrap()
            .with_timezone(&Utc);
        let c = cutoff(now, tz, Period::parse("30 days").unwrap()).unwrap();
        assert_eq!(c.local, dt("2026-11-01 01:30:00"));
        assert_eq!(c.instant.to_rfc3339(), "2026-11-01T01:30:00-04:00");
    }
}
