//! Rules from their contract form, validated: every bad part is reported
//! at once, named by its path in the request (`rule.purchase.condition.…`).

use std::collections::HashSet;

use chrono::{NaiveDate, Weekday};
use loyalty_common::ServiceError;
use loyalty_common::calendar::from_timestamp_opt;
use loyalty_common::error::Violations;
use loyalty_proto::loyalty::rewards::v1 as pb;

use super::{Behaviour, Cap, CapPeriod, PurchaseCondition, Reward, Rule, RuleKind};

const MAX_LIST: usize = 1000;
const MAX_POINTS: i64 = 100_000_000;

fn check_list(v: &mut Violations, field: &str, items: &[String]) -> Vec<String> {
    if items.len() > MAX_LIST {
        v.add(field, format!("has more than {MAX_LIST} items"));
    }
    for (i, s) in items.iter().enumerate() {
        if s.trim().is_empty() || s.len() > 128 {
            v.add(format!("{field}[{i}]"), "must be 1 to 128 characters");
        }
    }
    items.to_vec()
}

fn date(v: &mut Violations, field: &str, s: &str) -> Option<NaiveDate> {
    if s.is_empty() {
        return None;
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
    if d.is_none() {
        v.add(field, format!("{s:?} is not a date YYYY-MM-DD"));
    }
    d
}

fn weekday(w: i32) -> Option<Weekday> {
    match pb::Weekday::try_from(w).ok()? {
        pb::Weekday::Monday => Some(Weekday::Mon),
        pb::Weekday::Tuesday => Some(Weekday::Tue),
        pb::Weekday::Wednesday => Some(Weekday::Wed),
        pb::Weekday::Thursday => Some(Weekday::Thu),
        pb::Weekday::Friday => Some(Weekday::Fri),
        pb::Weekday::Saturday => Some(Weekday::Sat),
        pb::Weekday::Sunday => Some(Weekday::Sun),
        pb::Weekday::Unspecified => None,
    }
}

/// The behaviour of a contract enum value.
pub fn behaviour_from_proto(b: i32) -> Option<Behaviour> {
    match pb::Behaviour::try_from(b).ok()? {
        pb::Behaviour::CheckIn => Some(Behaviour::CheckIn),
        pb::Behaviour::ReviewSubmitted => Some(Behaviour::ReviewSubmitted),
        pb::Behaviour::SurveyCompleted => Some(Behaviour::SurveyCompleted),
        pb::Behaviour::ReferralQualified => Some(Behaviour::ReferralQualified),
        pb::Behaviour::Birthday => Some(Behaviour::Birthday),
        pb::Behaviour::ProfileCompleted => Some(Behaviour::ProfileCompleted),
        pb::Behaviour::Unspecified => None,
    }
}

fn in_range(v: &mut Violations, field: &str, n: i64, lo: i64, hi: i64) {
    if !(lo..=hi).contains(&n) {
        v.add(field, format!("must be within {lo}..={hi}"));
    }
}

#[allow(clippy::many_single_char_names)] // v, p, c, f: violations, rule, condition, field prefix
fn purchase_kind(v: &mut Violations, p: &pb::PurchaseRule) -> Option<RuleKind> {
    let c = p.condition.clone().unwrap_or_default();
    let f = "rule.purchase.condition";
    let mut weekdays = Vec::new();
    for (i, w) in c.weekdays.iter().enumerate() {
        match weekday(*w) {
            Some(d) => weekdays.push(d),
            None => v.add(
                format!("{f}.weekdays[{i}]"),
                "must be a day (MONDAY..SUNDAY)",
            ),
        }
    }
    let date_from = date(v, &format!("{f}.local_date_from"), &c.local_date_from);
    let date_to = date(v, &format!("{f}.local_date_to"), &c.local_date_to);
    if let (Some(a), Some(b)) = (date_from, date_to)
        && a > b
    {
        v.add(format!("{f}.local_date_to"), "is before local_date_from");
    }
    if c.min_order_minor_units < 0 {
        v.add(format!("{f}.min_order_minor_units"), "must not be negative");
    }
    if c.nth_purchase < 0 {
        v.add(format!("{f}.nth_purchase"), "must not be negative");
    }
    let condition = PurchaseCondition {
        skus: check_list(v, &format!("{f}.skus"), &c.skus),
        categories: check_list(v, &format!("{f}.categories"), &c.categories),
        channels: check_list(v, &format!("{f}.channels"), &c.channels),
        store_ids: check_list(v, &format!("{f}.store_ids"), &c.store_ids),
        tiers: check_list(v, &format!("{f}.tiers"), &c.tiers),
        weekdays,
        date_from,
        date_to,
        min_order_minor: c.min_order_minor_units,
        nth_purchase: u32::try_from(c.nth_purchase).unwrap_or(0),
    };
    let reward = match p.reward {
        Some(pb::purchase_rule::Reward::ExtraMultiplierBp(bp)) => {
            in_range(v, "rule.purchase.extra_multiplier_bp", bp, 1, 1_000_000);
            Reward::ExtraMultiplierBp(bp)
        }
        Some(pb::purchase_rule::Reward::ExtraPointsPerUnit(n)) => {
            in_range(v, "rule.purchase.extra_points_per_unit", n, 1, 1_000_000);
            Reward::ExtraPointsPerUnit(n)
        }
        Some(pb::purchase_rule::Reward::FixedPoints(n)) => {
            in_range(v, "rule.purchase.fixed_points", n, 1, MAX_POINTS);
            Reward::Fixed(n)
        }
        None => {
            v.add(
                "rule.purchase.reward",
                "is required (extra_multiplier_bp, extra_points_per_unit or fixed_points)",
            );
            return None;
        }
    };
    Some(RuleKind::Purchase { condition, reward })
}

fn behaviour_kind(v: &mut Violations, b: &pb::BehaviourRule) -> Option<RuleKind> {
    let behaviour = behaviour_from_proto(b.behaviour);
    if behaviour.is_none() {
        v.add(
            "rule.behaviour.behaviour",
            "is required (BEHAVIOUR_CHECK_IN, _REVIEW_SUBMITTED, _SURVEY_COMPLETED, _REFERRAL_QUALIFIED, _BIRTHDAY or _PROFILE_COMPLETED)",
        );
    }
    in_range(v, "rule.behaviour.points", b.points, 0, MAX_POINTS);
    let mut seen = HashSet::new();
    let mut bonuses = Vec::new();
    for (i, s) in b.streak_bonuses.iter().enumerate() {
        let f = format!("rule.behaviour.streak_bonuses[{i}]");
        if behaviour.is_some_and(|x| x != Behaviour::CheckIn) {
            v.add(&f, "streak bonuses apply to CHECK_IN rules only");
        }
        if !(2..=3660).contains(&s.streak_days) {
            v.add(format!("{f}.streak_days"), "must be within 2..=3660");
        } else if !seen.insert(s.streak_days) {
            v.add(format!("{f}.streak_days"), "is given twice");
        }
        in_range(
            v,
            &format!("{f}.bonus_points"),
            s.bonus_points,
            1,
            MAX_POINTS,
        );
        bonuses.push((u32::try_from(s.streak_days).unwrap_or(0), s.bonus_points));
    }
    if b.points == 0 && bonuses.is_empty() {
        v.add(
            "rule.behaviour.points",
            "must be greater than 0 (or give streak bonuses)",
        );
    }
    Some(RuleKind::Behaviour {
        behaviour: behaviour?,
        points: b.points,
        streak_bonuses: bonuses,
    })
}

/// Validates a rule's definition and builds it. `rule_id` and `version`
/// are taken as given (the store assigns them).
pub fn rule_from_proto(r: &pb::EarningRule) -> Result<Rule, ServiceError> {
    let mut v = Violations::new();
    if r.program_id.is_empty() {
        v.add("rule.program_id", "is required");
    }
    if r.name.trim().is_empty() || r.name.len() > 200 {
        v.add("rule.name", "must be 1 to 200 characters");
    }
    let valid_from = v
        .check(
            "rule.valid_from",
            from_timestamp_opt("rule.valid_from", r.valid_from.as_ref()).map_err(|e| e.to_string()),
        )
        .flatten();
    let valid_until = v
        .check(
            "rule.valid_until",
            from_timestamp_opt("rule.valid_until", r.valid_until.as_ref())
                .map_err(|e| e.to_string()),
        )
        .flatten();
    if let (Some(a), Some(b)) = (valid_from, valid_until)
        && a >= b
    {
        v.add("rule.valid_until", "must be after valid_from");
    }
    let kind = match &r.kind {
        Some(pb::earning_rule::Kind::Purchase(p)) => purchase_kind(&mut v, p),
        Some(pb::earning_rule::Kind::Behaviour(b)) => behaviour_kind(&mut v, b),
        None => {
            v.add("rule.kind", "is required (purchase or behaviour)");
            None
        }
    };
    let mut caps = Vec::new();
    let mut periods = HashSet::new();
    for (i, c) in r.caps.iter().enumerate() {
        let f = format!("rule.caps[{i}]");
        let period = match pb::CapPeriod::try_from(c.period) {
            Ok(pb::CapPeriod::Day) => Some(CapPeriod::Day),
            Ok(pb::CapPeriod::Month) => Some(CapPeriod::Month),
            Ok(pb::CapPeriod::RuleLifetime) => Some(CapPeriod::Lifetime),
            _ => None,
        };
        match period {
            None => v.add(
                format!("{f}.period"),
                "is required (CAP_PERIOD_DAY, _MONTH or _RULE_LIFETIME)",
            ),
            Some(p) if !periods.insert(p) => v.add(format!("{f}.period"), "is given twice"),
            Some(p) => caps.push(Cap {
                period: p,
                max_points: c.max_points,
            }),
        }
        in_range(
            &mut v,
            &format!("{f}.max_points"),
            c.max_points,
            1,
            MAX_POINTS,
        );
    }
    v.finish()?;
    let kind = kind.ok_or_else(|| ServiceError::invalid("rule.kind", "is invalid"))?;
    Ok(Rule {
        id: r.rule_id.clone(),
        version: r.version,
        name: r.name.clone(),
        valid_from,
        valid_until,
        enabled: r.enabled,
        kind,
        caps,
    })
}
