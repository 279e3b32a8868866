//! Exchange arithmetic with partner programs: integer rates, rounding down,
//! no floats. Going out, only the points that buy whole partner units are
//! taken; coming in, every partner unit the partner took is converted and
//! the fraction of a point below one is lost (in the program's favour, as
//! rates are set by the program).

use chrono::{DateTime, Datelike, Utc};

/// `from_units` of one currency buy `to_units` of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub from_units: i64,
    pub to_units: i64,
}

/// Largest value a rate side may take (keeps products inside i64 after the
/// i128 intermediate and rates sane).
pub const MAX_RATE_SIDE: i64 = 1_000_000_000;

impl Rate {
    pub fn new(from_units: i64, to_units: i64) -> Result<Self, String> {
        if !(1..=MAX_RATE_SIDE).contains(&from_units) || !(1..=MAX_RATE_SIDE).contains(&to_units) {
            return Err(format!(
                "both sides of a rate must be between 1 and {MAX_RATE_SIDE}"
            ));
        }
        Ok(Self {
            from_units,
            to_units,
        })
    }

    /// What `amount` converts to, rounded down.
    pub fn convert(self, amount: i64) -> Option<i64> {
        let v = i128::from(amount) * i128::from(self.to_units) / i128::from(self.from_units);
        i64::try_from(v).ok()
    }

    /// The least amount that converts to `target` (the inverse, rounded up).
    pub fn cost_of(self, target: i64) -> Option<i64> {
        let num = i128::from(target) * i128::from(self.from_units);
        let den = i128::from(self.to_units);
        i64::try_from((num + den - 1) / den).ok()
    }
}

/// An exchange out: the partner units bought and the points they cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    pub partner_units: i64,
    pub points_debited: i64,
}

/// Converts up to `points` into whole partner units.
pub fn exchange_out(rate: Rate, points: i64) -> Result<Outgoing, String> {
    if points <= 0 {
        return Err("must be a positive number of points".into());
    }
    let units = rate.convert(points).ok_or("is too large")?;
    if units == 0 {
        return Err(format!(
            "is less than the {} points one partner unit costs",
            rate.cost_of(1).unwrap_or(rate.from_units)
        ));
    }
    let cost = rate.cost_of(units).ok_or("is too large")?;
    debug_assert!(cost <= points);
    Ok(Outgoing {
        partner_units: units,
        points_debited: cost,
    })
}

/// Points credited for `partner_units` received.
pub fn exchange_in(rate: Rate, partner_units: i64) -> Result<i64, String> {
    if partner_units <= 0 {
        return Err("must be a positive number of partner units".into());
    }
    match rate.convert(partner_units) {
        Some(0) => Err("converts to less than one point".into()),
        Some(p) => Ok(p),
        None => Err("is too large".into()),
    }
}

/// The calendar period limits count over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    /// Key of the period holding `at` (UTC calendar): `2026-11-25`, `2026-11`.
    pub fn key(self, at: DateTime<Utc>) -> String {
        match self {
            Self::Day => at.format("%Y-%m-%d").to_string(),
            Self::Month => format!("{:04}-{:02}", at.year(), at.month()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn hundred_points_buy_thirty_miles() {
        let rate = Rate::new(100, 30).unwrap();
        assert_eq!(
            exchange_out(rate, 100).unwrap(),
            Outgoing {
                partner_units: 30,
                points_debited: 100
            }
        );
        // 105 points buy 31.5 miles: 31 miles, for 104 points (103.3 rounded up)
        assert_eq!(
            exchange_out(rate, 105).unwrap(),
            Outgoing {
                partner_units: 31,
                points_debited: 104
            }
        );
        assert!(exchange_out(rate, 3).unwrap_err().contains("4 points"));
        assert!(exchange_out(rate, 0).is_err());
    }

    #[test]
    fn incoming_units_round_down() {
        let rate = Rate::new(30, 100).unwrap(); // 30 miles = 100 points
        assert_eq!(exchange_in(rate, 30).unwrap(), 100);
        assert_eq!(exchange_in(rate, 31).unwrap(), 103);
        assert!(Rate::new(0, 1).is_err());
        assert!(Rate::new(1, MAX_RATE_SIDE + 1).is_err());
        assert!(exchange_in(Rate::new(1000, 1).unwrap(), 999).is_err());
    }

    #[test]
    fn periods_follow_the_utc_calendar() {
        let at = Utc.with_ymd_and_hms(2026, 1, 31, 23, 59, 59).unwrap();
        assert_eq!(Period::Day.key(at), "2026-01-31");
        assert_eq!(Period::Month.key(at), "2026-01");
        let next = at + chrono::Duration::seconds(1);
        assert_eq!(Period::Day.key(next), "2026-02-01");
        assert_eq!(Period::Month.key(next), "2026-02");
    }

    proptest! {
        #[test]
        fn out_never_takes_more_than_asked_nor_leaves_a_whole_unit(
            from in 1i64..10_000, to in 1i64..10_000, points in 1i64..10_000_000
        ) {
            let rate = Rate::new(from, to).unwrap();
            if let Ok(out) = exchange_out(rate, points) {
                prop_assert!(out.points_debited <= points);
                prop_assert!(out.points_debited > 0);
                // what was debited buys exactly the units sent
                prop_assert_eq!(rate.convert(out.points_debited), Some(out.partner_units));
                // one point less would not
                prop_assert!(rate.convert(out.points_debited - 1).unwrap() < out.partner_units);
                // what stays behind does not buy another unit
                prop_assert_eq!(rate.convert(points), Some(out.partner_units));
            } else {
                prop_assert_eq!(rate.convert(points), Some(0));
            }
        }

        #[test]
        fn in_is_floor_of_the_exact_ratio(
            from in 1i64..10_000, to in 1i64..10_000, units in 1i64..10_000_000
        ) {
            let rate = Rate::new(from, to).unwrap();
            if let Ok(points) = exchange_in(rate, units) {
                prop_assert!(i128::from(points) * i128::from(from) <= i128::from(units) * i128::from(to));
                prop_assert!(i128::from(points + 1) * i128::from(from) > i128::from(units) * i128::from(to));
            }
        }
    }
}
