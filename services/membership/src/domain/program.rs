//! A program's tier rules, parsed from the contract and validated once:
//! ordered tiers with thresholds and privileges, the qualifying metric, the
//! window and the evaluation policy.

use std::collections::{BTreeMap, HashSet};

use loyalty_common::Violations;
use loyalty_proto::loyalty::membership::v1 as pb;

/// What counts towards tier qualification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Purchases minus refunds, in minor units of the program currency.
    Spend,
    /// Qualifying points (growth value).
    Points,
    /// Completed orders.
    OrderCount,
}

/// Over which period qualifying activity counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    RollingMonths(u32),
    CalendarYear,
}

/// When a member's tier is reviewed for a downgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluation {
    /// N months after the member reached or last kept the tier.
    AnniversaryMonths(u32),
    /// On the first day of each calendar year.
    CalendarYearEnd,
}

/// A benefit of a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privilege {
    pub benefit_code: String,
    pub value: i64,
    pub parameters: BTreeMap<String, String>,
}

/// One tier level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub code: String,
    pub name: String,
    pub threshold: i64,
    pub privileges: Vec<Privilege>,
}

/// Benefit code of the points multiplier, in basis points.
pub const POINTS_MULTIPLIER_BP: &str = "points_multiplier_bp";
/// Multiplier of a tier without that privilege: 1x.
pub const DEFAULT_MULTIPLIER_BP: i64 = 10_000;

impl Tier {
    /// The tier's points multiplier in basis points (10000 when it has none).
    pub fn points_multiplier_bp(&self) -> i64 {
        self.privileges
            .iter()
            .find(|p| p.benefit_code == POINTS_MULTIPLIER_BP)
            .map_or(DEFAULT_MULTIPLIER_BP, |p| p.value)
    }

    pub fn to_proto(&self) -> pb::TierDefinition {
        pb::TierDefinition {
            code: self.code.clone(),
            name: self.name.clone(),
            threshold: self.threshold,
            privileges: self
                .privileges
                .iter()
                .map(|p| pb::TierPrivilege {
                    benefit_code: p.benefit_code.clone(),
                    value: p.value,
                    parameters: p.parameters.clone().into_iter().collect(),
                })
                .collect(),
        }
    }
}

/// The tier rules of a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierRules {
    /// Lowest first; the first has threshold 0; thresholds strictly increase.
    pub tiers: Vec<Tier>,
    pub metric: Metric,
    pub window: Window,
    pub evaluation: Evaluation,
}

impl TierRules {
    /// The level (index) of a tier code.
    pub fn level_of(&self, code: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.code == code)
    }

    /// The level of `code`, or the base level for a code the program no
    /// longer has (a tier removed by an update).
    pub fn level_or_base(&self, code: &str) -> usize {
        self.level_of(code).unwrap_or(0)
    }
}

/// Checks an id chosen by a caller (program, segment, group): 1-64 of
/// lower-case letters, digits, '-' and '_'.
pub fn check_id(raw: &str) -> Result<(), String> {
    if raw.is_empty() || raw.len() > 64 {
        return Err("must have 1 to 64 characters".into());
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err("may hold only lower-case letters, digits, '-' and '_'".into());
    }
    Ok(())
}

fn check_code(raw: &str) -> Result<(), String> {
    if raw.is_empty() || raw.len() > 32 {
        return Err("must have 1 to 32 characters".into());
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err("may hold only upper-case letters, digits and '_' (e.g. GOLD)".into());
    }
    Ok(())
}

/// Parses tier rules from a program, recording every problem with its
/// field path (`program.tiers[1].threshold`).
pub fn parse_tier_rules(p: &pb::Program, v: &mut Violations) -> Option<TierRules> {
    let mut tiers = Vec::new();
    let mut codes = HashSet::new();
    if p.tiers.is_empty() {
        v.add("program.tiers", "at least one tier is required");
    }
    if p.tiers.len() > 20 {
        v.add("program.tiers", "at most 20 tiers");
    }
    let mut ok = true;
    for (i, t) in p.tiers.iter().enumerate() {
        let f = format!("program.tiers[{i}]");
        if let Err(e) = check_code(&t.code) {
            v.add(format!("{f}.code"), e);
            ok = false;
        } else if !codes.insert(t.code.clone()) {
            v.add(format!("{f}.code"), "appears twice");
            ok = false;
        }
        if t.name.trim().is_empty() || t.name.chars().count() > 100 {
            v.add(format!("{f}.name"), "must have 1 to 100 characters");
            ok = false;
        }
        if i == 0 && t.threshold != 0 {
            v.add(
                format!("{f}.threshold"),
                "the first tier's threshold must be 0 (every member starts there)",
            );
            ok = false;
        }
        if i > 0 && t.threshold <= p.tiers[i - 1].threshold {
            v.add(
                format!("{f}.threshold"),
                "must be greater than the previous tier's threshold",
            );
            ok = false;
        }
        let mut privileges = Vec::new();
        for (j, pr) in t.privileges.iter().enumerate() {
            let pf = format!("{f}.privileges[{j}]");
            if check_id(&pr.benefit_code).is_err() || pr.benefit_code.contains('-') {
                v.add(
                    format!("{pf}.benefit_code"),
                    "must be lower snake case, 1 to 64 characters",
                );
                ok = false;
            }
            if pr.benefit_code == POINTS_MULTIPLIER_BP && !(0..=1_000_000).contains(&pr.value) {
                v.add(
                    format!("{pf}.value"),
                    "points multiplier must be 0 to 1000000 basis points",
                );
                ok = false;
            }
            if pr.parameters.len() > 20 {
                v.add(format!("{pf}.parameters"), "at most 20 parameters");
                ok = false;
            }
            privileges.push(Privilege {
                benefit_code: pr.benefit_code.clone(),
                value: pr.value,
                parameters: pr.parameters.clone().into_iter().collect(),
            });
        }
        tiers.push(Tier {
            code: t.code.clone(),
            name: t.name.clone(),
            threshold: t.threshold,
            privileges,
        });
    }
    let metric = match pb::QualifyingMetric::try_from(p.qualifying_metric) {
        Ok(pb::QualifyingMetric::Spend) => Some(Metric::Spend),
        Ok(pb::QualifyingMetric::Points) => Some(Metric::Points),
        Ok(pb::QualifyingMetric::OrderCount) => Some(Metric::OrderCount),
        _ => {
            v.add(
                "program.qualifying_metric",
                "is required (QUALIFYING_METRIC_SPEND, _POINTS or _ORDER_COUNT)",
            );
            None
        }
    };
    let window = match p.qualifying_window.as_ref().and_then(|w| w.kind) {
        Some(pb::qualifying_window::Kind::RollingMonths(n)) if (1..=36).contains(&n) => {
            Some(Window::RollingMonths(n.unsigned_abs()))
        }
        Some(pb::qualifying_window::Kind::RollingMonths(_)) => {
            v.add(
                "program.qualifying_window.rolling_months",
                "must be 1 to 36",
            );
            None
        }
        Some(pb::qualifying_window::Kind::CalendarYear(true)) => Some(Window::CalendarYear),
        _ => {
            v.add(
                "program.qualifying_window",
                "is required (rolling_months or calendar_year)",
            );
            None
        }
    };
    let evaluation = match p.evaluation_policy.as_ref().and_then(|e| e.kind) {
        Some(pb::evaluation_policy::Kind::AnniversaryMonths(n)) if (1..=36).contains(&n) => {
            Some(Evaluation::AnniversaryMonths(n.unsigned_abs()))
        }
        Some(pb::evaluation_policy::Kind::AnniversaryMonths(_)) => {
            v.add(
                "program.evaluation_policy.anniversary_months",
                "must be 1 to 36",
            );
            None
        }
        Some(pb::evaluation_policy::Kind::CalendarYearEnd(true)) => {
            Some(Evaluation::CalendarYearEnd)
        }
        _ => {
            v.add(
                "program.evaluation_policy",
                "is required (anniversary_months or calendar_year_end)",
            );
            None
        }
    };
    if !ok || tiers.is_empty() {
        return None;
    }
    Some(TierRules {
        tiers,
        metric: metric?,
        window: window?,
        evaluation: evaluation?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn program(tiers: &[(&str, i64, i64)]) -> pb::Program {
        pb::Program {
            program_id: "p1".into(),
            name: "P".into(),
            currency: "CNY".into(),
            time_zone: "Asia/Shanghai".into(),
            tiers: tiers
                .iter()
                .map(|(code, threshold, bp)| pb::TierDefinition {
                    code: (*code).into(),
                    name: code.to_lowercase(),
                    threshold: *threshold,
                    privileges: vec![pb::TierPrivilege {
                        benefit_code: POINTS_MULTIPLIER_BP.into(),
                        value: *bp,
                        parameters: std::collections::HashMap::default(),
                    }],
                })
                .collect(),
            qualifying_metric: pb::QualifyingMetric::Spend as i32,
            qualifying_window: Some(pb::QualifyingWindow {
                kind: Some(pb::qualifying_window::Kind::RollingMonths(12)),
            }),
            evaluation_policy: Some(pb::EvaluationPolicy {
                kind: Some(pb::evaluation_policy::Kind::AnniversaryMonths(12)),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn valid_rules_parse_with_multipliers() {
        let mut v = Violations::new();
        let rules = parse_tier_rules(
            &program(&[("BASE", 0, 10_000), ("GOLD", 50_000, 15_000)]),
            &mut v,
        )
        .unwrap();
        assert!(v.is_empty());
        assert_eq!(rules.tiers[1].points_multiplier_bp(), 15_000);
        assert_eq!(rules.window, Window::RollingMonths(12));
        assert_eq!(rules.level_of("GOLD"), Some(1));
    }

    #[test]
    fn bad_tiers_are_named_by_field() {
        let mut p = program(&[("BASE", 10, 10_000), ("GOLD", 5, 15_000), ("gold", 20, 0)]);
        p.qualifying_metric = 0;
        p.qualifying_window = Some(pb::QualifyingWindow {
            kind: Some(pb::qualifying_window::Kind::RollingMonths(0)),
        });
        let mut v = Violations::new();
        assert!(parse_tier_rules(&p, &mut v).is_none());
        let err = v.finish().unwrap_err().to_string();
        for field in [
            "program.tiers[0].threshold",
            "program.tiers[1].threshold",
            "program.tiers[2].code",
            "program.qualifying_metric",
            "program.qualifying_window.rolling_months",
        ] {
            assert!(err.contains(field), "{field} missing in {err}");
        }
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("dev").is_ok());
        assert!(check_id("vip-club_2").is_ok());
        assert!(check_id("Dev").is_err());
        assert!(check_id("").is_err());
        assert!(check_id(&"a".repeat(65)).is_err());
    }
}
