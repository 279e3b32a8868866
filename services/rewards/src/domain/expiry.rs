//! The program's points policy (time zone, currency, base earning, return
//! window, expiry, clawback, rounding) and the dates of a new lot: until
//! when it is pending and when it expires, in the program's time zone.

use chrono::{DateTime, Duration, Utc};
use loyalty_common::ServiceError;
use loyalty_common::calendar::ProgramTz;
use loyalty_common::error::Violations;
use loyalty_proto::loyalty::rewards::v1 as pb;

use super::earning_rules::Rounding;

/// When earned points expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Never,
    /// Exactly N months after earning (same local wall time).
    MonthsAfter(u32),
    /// At the end of the local month N months after earning.
    EndOfMonth(u32),
    /// At the end of the local year containing earning + N months.
    EndOfYear(u32),
}

impl Expiry {
    /// The instant points earned at `earned_at` expire (`None`: never).
    pub fn expires_at(self, tz: &ProgramTz, earned_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Never => None,
            Self::MonthsAfter(n) => Some(tz.add_months(earned_at, n)),
            Self::EndOfMonth(n) => Some(tz.start_of_next_month(tz.add_months(earned_at, n))),
            Self::EndOfYear(n) => Some(tz.start_of_next_year(tz.add_months(earned_at, n))),
        }
    }
}

/// What happens when a refund takes back points already spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clawback {
    /// Take what is available, write the rest off.
    WriteOff,
    /// Take everything; the available balance may go negative.
    NegativeBalance,
}

/// Terms of a lot: pending until (unset: available at once) and expiry
/// (unset: never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LotTerms {
    pub pending_until: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A program's points policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointsPolicy {
    pub program_id: String,
    pub tz: ProgramTz,
    /// ISO 4217 code; empty in the default policy (any currency).
    pub currency: String,
    pub base_points_per_unit: i64,
    pub unit_minor: i64,
    pub pending_days: u32,
    pub expiry: Expiry,
    pub clawback: Clawback,
    pub rounding: Rounding,
    pub version: i64,
}

impl PointsPolicy {
    /// The policy of a program that set none: UTC, any currency, one point
    /// per 100 minor units, no return window, no expiry, write-off, floor.
    pub fn default_for(program_id: &str) -> Self {
        Self {
            program_id: program_id.to_owned(),
            tz: ProgramTz::UTC,
            currency: String::new(),
            base_points_per_unit: 1,
            unit_minor: 100,
            pending_days: 0,
            expiry: Expiry::Never,
            clawback: Clawback::WriteOff,
            rounding: Rounding::Floor,
            version: 0,
        }
    }

    /// Lot terms of purchase points: pending for the return window from the
    /// purchase (none once it has passed), expiring by policy from `now`.
    pub fn purchase_lot(&self, purchased_at: DateTime<Utc>, now: DateTime<Utc>) -> LotTerms {
        let pending_until = (self.pending_days > 0)
            .then(|| purchased_at + Duration::days(i64::from(self.pending_days)))
            .filter(|until| *until > now);
        LotTerms {
            pending_until,
            expires_at: self.expiry.expires_at(&self.tz, now),
        }
    }

    /// Lot terms of points available at once (behaviour, campaign, adjust).
    pub fn immediate_lot(&self, now: DateTime<Utc>) -> LotTerms {
        LotTerms {
            pending_until: None,
            expires_at: self.expiry.expires_at(&self.tz, now),
        }
    }

    /// Parses and validates a policy from its contract form; every bad
    /// field is reported at once (`policy.<field>`).
    pub fn from_proto(p: &pb::ProgramPolicy) -> Result<Self, ServiceError> {
        let mut v = Violations::new();
        if p.program_id.is_empty() {
            v.add("policy.program_id", "is required");
        }
        let tz = v.check(
            "policy.time_zone",
            ProgramTz::parse("policy.time_zone", &p.time_zone).map_err(|e| first_description(&e)),
        );
        if loyalty_common::money::Currency::parse(&p.currency).is_err() {
            v.add(
                "policy.currency",
                "must be an ISO 4217 code such as \"CNY\"",
            );
        }
        if !(1..=1_000_000).contains(&p.base_points_per_unit) {
            v.add("policy.base_points_per_unit", "must be within 1..=1000000");
        }
        if !(1..=1_000_000).contains(&p.unit_minor_units) {
            v.add("policy.unit_minor_units", "must be within 1..=1000000");
        }
        if !(0..=3650).contains(&p.pending_days) {
            v.add("policy.pending_days", "must be within 0..=3650");
        }
        let months = u32::try_from(p.expiry_months).ok().filter(|m| *m <= 1200);
        let expiry = match (pb::ExpiryMode::try_from(p.expiry_mode), months) {
            (Ok(pb::ExpiryMode::Never), _) => Some(Expiry::Never),
            (Ok(pb::ExpiryMode::MonthsAfterEarning), Some(m)) if m > 0 => {
                Some(Expiry::MonthsAfter(m))
            }
            (Ok(pb::ExpiryMode::EndOfMonth), Some(m)) => Some(Expiry::EndOfMonth(m)),
            (Ok(pb::ExpiryMode::EndOfYear), Some(m)) => Some(Expiry::EndOfYear(m)),
            (Ok(pb::ExpiryMode::Unspecified) | Err(_), _) => {
                v.add(
                    "policy.expiry_mode",
                    "is required (EXPIRY_MODE_NEVER, _MONTHS_AFTER_EARNING, _END_OF_MONTH or _END_OF_YEAR)",
                );
                None
            }
            _ => {
                v.add(
                    "policy.expiry_months",
                    "must be within 0..=1200 (at least 1 for MONTHS_AFTER_EARNING)",
                );
                None
            }
        };
        let clawback = match pb::ClawbackPolicy::try_from(p.clawback_policy) {
            Ok(pb::ClawbackPolicy::WriteOff) => Some(Clawback::WriteOff),
            Ok(pb::ClawbackPolicy::NegativeBalance) => Some(Clawback::NegativeBalance),
            _ => {
                v.add(
                    "policy.clawback_policy",
                    "is required (CLAWBACK_POLICY_WRITE_OFF or _NEGATIVE_BALANCE)",
                );
                None
            }
        };
        let rounding = match pb::RoundingMode::try_from(p.rounding_mode) {
            Ok(pb::RoundingMode::Floor) => Some(Rounding::Floor),
            Ok(pb::RoundingMode::HalfUp) => Some(Rounding::HalfUp),
            Ok(pb::RoundingMode::Ceil) => Some(Rounding::Ceil),
            _ => {
                v.add(
                    "policy.rounding_mode",
                    "is required (ROUNDING_MODE_FLOOR, _HALF_UP or _CEIL)",
                );
                None
            }
        };
        v.finish()?;
        match (tz, expiry, clawback, rounding) {
            (Some(tz), Some(expiry), Some(clawback), Some(rounding)) => Ok(Self {
                program_id: p.program_id.clone(),
                tz,
                currency: p.currency.clone(),
                base_points_per_unit: p.base_points_per_unit,
                unit_minor: p.unit_minor_units,
                pending_days: u32::try_from(p.pending_days).unwrap_or(0),
                expiry,
                clawback,
                rounding,
                version: p.version,
            }),
            _ => Err(ServiceError::invalid("policy", "is invalid")),
        }
    }

    pub fn to_proto(&self) -> pb::ProgramPolicy {
        let (mode, months) = match self.expiry {
            Expiry::Never => (pb::ExpiryMode::Never, 0),
            Expiry::MonthsAfter(m) => (pb::ExpiryMode::MonthsAfterEarning, m),
            Expiry::EndOfMonth(m) => (pb::ExpiryMode::EndOfMonth, m),
            Expiry::EndOfYear(m) => (pb::ExpiryMode::EndOfYear, m),
        };
        pb::ProgramPolicy {
            program_id: self.program_id.clone(),
            time_zone: self.tz.name().to_owned(),
            currency: self.currency.clone(),
            base_points_per_unit: self.base_points_per_unit,
            unit_minor_units: self.unit_minor,
            pending_days: self.pending_days as i32,
            expiry_mode: mode as i32,
            expiry_months: months as i32,
            clawback_policy: match self.clawback {
                Clawback::WriteOff => pb::ClawbackPolicy::WriteOff,
                Clawback::NegativeBalance => pb::ClawbackPolicy::NegativeBalance,
            } as i32,
            rounding_mode: match self.rounding {
                Rounding::Floor => pb::RoundingMode::Floor,
                Rounding::HalfUp => pb::RoundingMode::HalfUp,
                Rounding::Ceil => pb::RoundingMode::Ceil,
            } as i32,
            version: self.version,
        }
    }
}

fn first_description(e: &ServiceError) -> String {
    match e {
        ServiceError::InvalidArgument(v) => {
            v.first().map(|f| f.description.clone()).unwrap_or_default()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn shanghai() -> ProgramTz {
        ProgramTz::parse("tz", "Asia/Shanghai").unwrap()
    }

    #[test]
    fn end_of_month_is_local_midnight_of_the_next_month() {
        // 2026-01-31 20:00 UTC is already 2026-02-01 04:00 in Shanghai
        let earned = at("2026-01-31T20:00:00Z");
        let exp = Expiry::EndOfMonth(0)
            .expires_at(&shanghai(), earned)
            .unwrap();
        assert_eq!(
            exp,
            at("2026-02-28T16:00:00Z"),
            "end of February, Shanghai time"
        );
        let exp = Expiry::EndOfMonth(0)
            .expires_at(&ProgramTz::UTC, earned)
            .unwrap();
        assert_eq!(exp, at("2026-02-01T00:00:00Z"), "end of January, UTC");
    }

    #[test]
    fn end_of_year_and_months_after() {
        let earned = at("2026-03-10T10:00:00Z");
        assert_eq!(
            Expiry::EndOfYear(12)
                .expires_at(&shanghai(), earned)
                .unwrap(),
            at("2027-12-31T16:00:00Z")
        );
        assert_eq!(
            Expiry::MonthsAfter(6)
                .expires_at(&shanghai(), earned)
                .unwrap(),
            at("2026-09-10T10:00:00Z")
        );
        assert_eq!(Expiry::Never.expires_at(&shanghai(), earned), None);
    }

    #[test]
    fn return_window_counts_from_the_purchase() {
        let mut p = PointsPolicy::default_for("p");
        p.pending_days = 7;
        let bought = at("2026-03-01T10:00:00Z");
        let t = p.purchase_lot(bought, at("2026-03-02T00:00:00Z"));
        assert_eq!(t.pending_until, Some(at("2026-03-08T10:00:00Z")));
        // recorded after the window: available at once
        let late = p.purchase_lot(bought, at("2026-03-09T00:00:00Z"));
        assert_eq!(late.pending_until, None);
    }

    #[test]
    fn policy_validation_names_each_bad_field() {
        let bad = pb::ProgramPolicy {
            program_id: "p".into(),
            time_zone: "Mars/Olympus".into(),
            currency: "yuan".into(),
            base_points_per_unit: 0,
            unit_minor_units: 100,
            pending_days: -1,
            expiry_mode: pb::ExpiryMode::MonthsAfterEarning as i32,
            expiry_months: 0,
            clawback_policy: 0,
            rounding_mode: 1,
            version: 0,
        };
        let ServiceError::InvalidArgument(v) = PointsPolicy::from_proto(&bad).unwrap_err() else {
            panic!()
        };
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "policy.time_zone",
                "policy.currency",
                "policy.base_points_per_unit",
                "policy.pending_days",
                "policy.expiry_months",
                "policy.clawback_policy"
            ]
        );
        let good = pb::ProgramPolicy {
            time_zone: "Asia/Shanghai".into(),
            currency: "CNY".into(),
            base_points_per_unit: 1,
            pending_days: 14,
            expiry_months: 12,
            clawback_policy: 2,
            ..bad
        };
        let p = PointsPolicy::from_proto(&good).unwrap();
        assert_eq!(p.to_proto(), good);
    }
}
