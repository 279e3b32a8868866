//! Calendar rules in a program's time zone, one way for every service:
//! month ends for expiry, rolling tier windows, local midnights for daily
//! caps and check-ins, birthdays. Instants are UTC everywhere; a program's
//! IANA zone only decides where local days, months and years begin.
//!
//! Instants are stored as BIGINT microseconds since the Unix epoch
//! ([`to_micros`] / [`from_micros`]) and travel as protobuf `Timestamp`s
//! ([`to_timestamp`] / [`from_timestamp`]).

use chrono::{
    DateTime, Datelike, LocalResult, Months, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc,
};
use chrono_tz::Tz;

use crate::ServiceError;

/// A program's time zone (an IANA name such as `Asia/Shanghai`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramTz(Tz);

impl Default for ProgramTz {
    fn default() -> Self {
        Self::UTC
    }
}

impl ProgramTz {
    pub const UTC: Self = Self(Tz::UTC);

    /// Parses an IANA zone name; `field` names the request field in the error.
    pub fn parse(field: &str, name: &str) -> Result<Self, ServiceError> {
        name.parse::<Tz>().map(Self).map_err(|_| {
            ServiceError::invalid(
                field,
                format!(
                    "{name:?} is not an IANA time zone name (e.g. \"Asia/Shanghai\", \"Europe/Paris\", \"UTC\")"
                ),
            )
        })
    }

    /// The IANA name, as stored.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// The wall-clock date and time of `at` in this zone.
    pub fn local(&self, at: DateTime<Utc>) -> NaiveDateTime {
        at.with_timezone(&self.0).naive_local()
    }

    /// The local date of `at` in this zone.
    pub fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        self.local(at).date()
    }

    /// The instant of a local wall time. In a daylight-saving gap (a wall
    /// time that never happens) it is the end of the gap; in an overlap
    /// (one that happens twice) the earlier instant.
    pub fn resolve(&self, local: NaiveDateTime) -> DateTime<Utc> {
        let mut probe = local;
        // Gaps are at most a few hours; step through them in quarter hours.
        for _ in 0..=24 {
            match self.0.from_local_datetime(&probe) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                    return t.with_timezone(&Utc);
                }
                LocalResult::None => {
                    probe = truncate_to_quarter(probe) + chrono::Duration::minutes(15);
                }
            }
        }
        // Unreachable with real zone data; fall back to reading it as UTC.
        Utc.from_utc_datetime(&local)
    }

    /// Local midnight starting `date`, as an instant.
    pub fn start_of_day(&self, date: NaiveDate) -> DateTime<Utc> {
        self.resolve(date.and_time(NaiveTime::MIN))
    }

    /// The same local wall time `months` later, the day clamped to the end
    /// of a shorter month (Jan 31 + 1 month = Feb 28/29).
    pub fn add_months(&self, at: DateTime<Utc>, months: u32) -> DateTime<Utc> {
        let local = self.local(at);
        local
            .checked_add_months(Months::new(months))
            .map_or(at, |l| self.resolve(l))
    }

    /// The same local wall time `months` earlier (clamped like [`Self::add_months`]):
    /// where a rolling window of N months that ends at `at` begins.
    pub fn sub_months(&self, at: DateTime<Utc>, months: u32) -> DateTime<Utc> {
        let local = self.local(at);
        local
            .checked_sub_months(Months::new(months))
            .map_or(at, |l| self.resolve(l))
    }

    /// Local midnight of the first day of the month holding `at`.
    pub fn start_of_month(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let d = self.local_date(at);
        self.start_of_day(d.with_day(1).unwrap_or(d))
    }

    /// Local midnight of the first day of the month after the one holding
    /// `at`: the exclusive end of that month.
    pub fn start_of_next_month(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let first = self.local_date(at).with_day(1).unwrap_or_default();
        first
            .checked_add_months(Months::new(1))
            .map_or(at, |d| self.start_of_day(d))
    }

    /// Local midnight of January 1st of the year holding `at`.
    pub fn start_of_year(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let year = self.local_date(at).year();
        NaiveDate::from_ymd_opt(year, 1, 1).map_or(at, |d| self.start_of_day(d))
    }

    /// Local midnight of January 1st of the next year: the exclusive end of
    /// the year holding `at`.
    pub fn start_of_next_year(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let year = self.local_date(at).year();
        NaiveDate::from_ymd_opt(year + 1, 1, 1).map_or(at, |d| self.start_of_day(d))
    }
}

fn truncate_to_quarter(t: NaiveDateTime) -> NaiveDateTime {
    let minute = t.time().minute_of_day() / 15 * 15;
    t.date()
        .and_time(NaiveTime::from_num_seconds_from_midnight_opt(minute * 60, 0).unwrap_or_default())
}

trait MinuteOfDay {
    fn minute_of_day(&self) -> u32;
}

impl MinuteOfDay for NaiveTime {
    fn minute_of_day(&self) -> u32 {
        use chrono::Timelike;
        self.hour() * 60 + self.minute()
    }
}

/// Parses a calendar date `YYYY-MM-DD` (birthdays, local dates).
pub fn parse_date(field: &str, value: &str) -> Result<NaiveDate, ServiceError> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| ServiceError::invalid(field, format!("{value:?} is not a date YYYY-MM-DD")))
}

/// An instant as stored: microseconds since the Unix epoch.
pub fn to_micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// An instant from its stored microseconds (saturating at the ends of
/// chrono's range, which stored values never reach).
pub fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or(if micros < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// An instant as a protobuf `Timestamp`.
pub fn to_timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// A required protobuf `Timestamp` field as an instant; `field` names it in
/// the error when it is missing or out of range.
pub fn from_timestamp(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<DateTime<Utc>, ServiceError> {
    from_timestamp_opt(field, ts)?.ok_or_else(|| ServiceError::invalid(field, "is required"))
}

/// An optional protobuf `Timestamp` field as an instant.
pub fn from_timestamp_opt(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, ServiceError> {
    let Some(ts) = ts else { return Ok(None) };
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| ServiceError::invalid(field, "nanos must be within 0..1e9"))?;
    // Years 1..9999, as protobuf's Timestamp defines.
    if !(-62_135_596_800..=253_402_300_799).contains(&ts.seconds) {
        return Err(ServiceError::invalid(
            field,
            "is outside 0001-01-01..9999-12-31",
        ));
    }
    DateTime::from_timestamp(ts.seconds, nanos)
        .map(Some)
        .ok_or_else(|| ServiceError::invalid(field, "is not a valid instant"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn unknown_zone_names_the_field() {
        let err = ProgramTz::parse("time_zone", "Mars/Olympus").unwrap_err();
        let ServiceError::InvalidArgument(v) = err else {
            panic!("{err:?}")
        };
        assert_eq!(v[0].field, "time_zone");
        assert_eq!(
            ProgramTz::parse("tz", "Asia/Shanghai").unwrap().name(),
            "Asia/Shanghai"
        );
    }

    #[test]
    fn local_midnight_differs_from_utc_midnight() {
        let sh = ProgramTz::parse("tz", "Asia/Shanghai").unwrap();
        // 23:30 UTC on the 31st is already the 1st in Shanghai (UTC+8).
        let at = utc("2026-01-31T23:30:00Z");
        assert_eq!(
            sh.local_date(at),
            NaiveDate::from_ymd_opt(2026, 2, 1).unwrap()
        );
        assert_eq!(sh.start_of_month(at), utc("2026-01-31T16:00:00Z"));
        assert_eq!(sh.start_of_next_month(at), utc("2026-02-28T16:00:00Z"));
        assert_eq!(sh.start_of_year(at), utc("2025-12-31T16:00:00Z"));
        assert_eq!(sh.start_of_next_year(at), utc("2026-12-31T16:00:00Z"));
    }

    #[test]
    fn months_clamp_to_shorter_months_at_the_same_wall_time() {
        let paris = ProgramTz::parse("tz", "Europe/Paris").unwrap();
        // Jan 31 10:00 local (UTC+1) + 1 month = Feb 28 10:00 local.
        let at = utc("2026-01-31T09:00:00Z");
        assert_eq!(paris.add_months(at, 1), utc("2026-02-28T09:00:00Z"));
        // Across the spring change the wall time stays, the offset moves.
        assert_eq!(paris.add_months(at, 3), utc("2026-04-30T08:00:00Z"));
        assert_eq!(
            paris.sub_months(utc("2026-04-30T08:00:00Z"), 3),
            utc("2026-01-30T09:00:00Z")
        );
    }

    #[test]
    fn wall_times_in_a_gap_resolve_to_the_gap_end() {
        let paris = ProgramTz::parse("tz", "Europe/Paris").unwrap();
        // 2026-03-29 02:30 does not exist in Paris (clocks jump 02:00 → 03:00).
        let gap = NaiveDate::from_ymd_opt(2026, 3, 29)
            .unwrap()
            .and_hms_opt(2, 30, 0)
            .unwrap();
        assert_eq!(paris.resolve(gap), utc("2026-03-29T01:00:00Z"));
        // Ambiguous 02:30 on 2026-10-25 resolves to the earlier instant.
        let overlap = NaiveDate::from_ymd_opt(2026, 10, 25)
            .unwrap()
            .and_hms_opt(2, 30, 0)
            .unwrap();
        assert_eq!(paris.resolve(overlap), utc("2026-10-25T00:30:00Z"));
    }

    #[test]
    fn timestamps_round_trip_and_are_checked() {
        let at = utc("2026-11-25T03:04:05.123456Z");
        assert_eq!(from_timestamp("t", Some(&to_timestamp(at))).unwrap(), at);
        assert_eq!(from_micros(to_micros(at)), at);
        assert!(from_timestamp("t", None).is_err());
        assert_eq!(from_timestamp_opt("t", None).unwrap(), None);
        let bad = prost_types::Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert!(from_timestamp("t", Some(&bad)).is_err());
        assert!(parse_date("birthday", "2026-02-30").is_err());
        assert!(parse_date("birthday", "2000-02-29").is_ok());
    }
}
