//! Segment rules: a small rule language as data (conditions on member
//! attributes, tier, tags and purchase recency, joined by AND / OR groups),
//! validated on the way in and evaluated here for one member. The storage
//! layer compiles the same rules to SQL for paging through a segment; tests
//! hold the two to agreeing on generated populations.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use loyalty_common::Violations;
use loyalty_proto::loyalty::membership::v1 as pb;

/// Deepest nesting of groups.
pub const MAX_DEPTH: usize = 8;
/// Most conditions in one rule.
pub const MAX_CONDITIONS: usize = 64;
/// Most values of an IN.
pub const MAX_IN_VALUES: usize = 100;

/// An attribute a condition tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Tier,
    Status,
    Tag,
    DaysSinceLastPurchase,
    DaysSinceEnrolment,
    EnrolmentChannel,
    Locale,
    BirthMonth,
}

impl Field {
    fn is_number(self) -> bool {
        matches!(
            self,
            Self::DaysSinceLastPurchase | Self::DaysSinceEnrolment | Self::BirthMonth
        )
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Has,
    NotHas,
}

/// The value a condition compares with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Number(i64),
    Texts(Vec<String>),
    Numbers(Vec<i64>),
}

/// One validated condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub field: Field,
    pub op: Op,
    pub value: Value,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Condition(Condition),
    All(Vec<Rule>),
    Any(Vec<Rule>),
}

/// What a rule is evaluated against: one member's attributes. Instants are
/// held as dates in the program's zone: recency counts calendar days there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberFacts {
    pub tier: String,
    pub status: String,
    pub tags: BTreeSet<String>,
    pub enrolled_on: NaiveDate,
    pub last_purchase_on: Option<NaiveDate>,
    pub enrolment_channel: String,
    pub locale: String,
    pub birth_month: Option<i64>,
}

/// Calendar days from `then` to `today` (dates in the program's zone): a
/// purchase late yesterday is 1 day ago just after midnight.
pub fn days_between(then: NaiveDate, today: NaiveDate) -> i64 {
    (today - then).num_days()
}

const STATUSES: [&str; 4] = ["active", "suspended", "closed", "erased"];

/// Parses and validates a rule; problems are recorded with their path
/// (`rule.all.rules[1].condition.number`).
pub fn parse_rule(rule: Option<&pb::SegmentRule>, path: &str, v: &mut Violations) -> Option<Rule> {
    let mut count = 0;
    let parsed = parse_node(rule, path, 1, &mut count, v);
    if count > MAX_CONDITIONS {
        v.add(path, format!("has more than {MAX_CONDITIONS} conditions"));
        return None;
    }
    parsed
}

fn parse_node(
    rule: Option<&pb::SegmentRule>,
    path: &str,
    depth: usize,
    count: &mut usize,
    v: &mut Violations,
) -> Option<Rule> {
    if depth > MAX_DEPTH {
        v.add(path, format!("nests deeper than {MAX_DEPTH} levels"));
        return None;
    }
    match rule.and_then(|r| r.node.as_ref()) {
        None => {
            v.add(path, "is required (condition, all or any)");
            None
        }
        Some(pb::segment_rule::Node::Condition(c)) => {
            *count += 1;
            parse_condition(c, &format!("{path}.condition"), v).map(Rule::Condition)
        }
        Some(pb::segment_rule::Node::All(g)) => {
            parse_group(g, &format!("{path}.all"), depth, count, v).map(Rule::All)
        }
        Some(pb::segment_rule::Node::Any(g)) => {
            parse_group(g, &format!("{path}.any"), depth, count, v).map(Rule::Any)
        }
    }
}

fn parse_group(
    g: &pb::SegmentRuleGroup,
    path: &str,
    depth: usize,
    count: &mut usize,
    v: &mut Violations,
) -> Option<Vec<Rule>> {
    if g.rules.is_empty() {
        v.add(format!("{path}.rules"), "needs at least one rule");
        return None;
    }
    let parsed: Vec<Option<Rule>> = g
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| parse_node(Some(r), &format!("{path}.rules[{i}]"), depth + 1, count, v))
        .collect();
    parsed.into_iter().collect()
}

fn parse_condition(c: &pb::SegmentCondition, path: &str, v: &mut Violations) -> Option<Condition> {
    use pb::SegmentField as F;
    use pb::SegmentOperator as O;
    let field = match F::try_from(c.field) {
        Ok(F::Tier) => Field::Tier,
        Ok(F::Status) => Field::Status,
        Ok(F::Tag) => Field::Tag,
        Ok(F::DaysSinceLastPurchase) => Field::DaysSinceLastPurchase,
        Ok(F::DaysSinceEnrolment) => Field::DaysSinceEnrolment,
        Ok(F::EnrolmentChannel) => Field::EnrolmentChannel,
        Ok(F::Locale) => Field::Locale,
        Ok(F::BirthMonth) => Field::BirthMonth,
        _ => {
            v.add(format!("{path}.field"), "is required");
            return None;
        }
    };
    let op = match O::try_from(c.operator) {
        Ok(O::Eq) => Op::Eq,
        Ok(O::Ne) => Op::Ne,
        Ok(O::Gt) => Op::Gt,
        Ok(O::Gte) => Op::Gte,
        Ok(O::Lt) => Op::Lt,
        Ok(O::Lte) => Op::Lte,
        Ok(O::In) => Op::In,
        Ok(O::Has) => Op::Has,
        Ok(O::NotHas) => Op::NotHas,
        _ => {
            v.add(format!("{path}.operator"), "is required");
            return None;
        }
    };
    let allowed = match field {
        Field::Tag => matches!(op, Op::Has | Op::NotHas),
        f if f.is_number() => matches!(
            op,
            Op::Eq | Op::Ne | Op::Gt | Op::Gte | Op::Lt | Op::Lte | Op::In
        ),
        _ => matches!(op, Op::Eq | Op::Ne | Op::In),
    };
    if !allowed {
        v.add(
            format!("{path}.operator"),
            format!("{op:?} does not apply to {field:?}"),
        );
        return None;
    }
    let text_ok = |t: &str, vpath: &str, v: &mut Violations| -> bool {
        if t.is_empty() || t.len() > 64 {
            v.add(vpath, "must have 1 to 64 characters");
            return false;
        }
        if field == Field::Status && !STATUSES.contains(&t) {
            v.add(vpath, "must be one of active, suspended, closed, erased");
            return false;
        }
        true
    };
    let value = if op == Op::In {
        if c.values.is_empty() || c.values.len() > MAX_IN_VALUES {
            v.add(
                format!("{path}.values"),
                format!("IN needs 1 to {MAX_IN_VALUES} values"),
            );
            return None;
        }
        if field.is_number() {
            let mut nums = Vec::new();
            for (i, s) in c.values.iter().enumerate() {
                if let Ok(n) = s.trim().parse::<i64>() {
                    nums.push(n);
                } else {
                    v.add(format!("{path}.values[{i}]"), "must be a whole number");
                    return None;
                }
            }
            Value::Numbers(nums)
        } else {
            for (i, s) in c.values.iter().enumerate() {
                if !text_ok(s, &format!("{path}.values[{i}]"), v) {
                    return None;
                }
            }
            Value::Texts(c.values.clone())
        }
    } else if field.is_number() {
        if field == Field::BirthMonth && !(1..=12).contains(&c.number) {
            v.add(format!("{path}.number"), "a month is 1 to 12");
            return None;
        }
        if c.number < 0 {
            v.add(format!("{path}.number"), "must not be negative");
            return None;
        }
        Value::Number(c.number)
    } else {
        if !text_ok(&c.text, &format!("{path}.text"), v) {
            return None;
        }
        Value::Text(c.text.clone())
    };
    Some(Condition { field, op, value })
}

impl Rule {
    /// Does the member match on `today` (a date in the program's zone)?
    pub fn matches(&self, m: &MemberFacts, today: NaiveDate) -> bool {
        match self {
            Self::Condition(c) => c.matches(m, today),
            Self::All(rules) => rules.iter().all(|r| r.matches(m, today)),
            Self::Any(rules) => rules.iter().any(|r| r.matches(m, today)),
        }
    }
}

impl Condition {
    fn matches(&self, m: &MemberFacts, today: NaiveDate) -> bool {
        match self.field {
            Field::Tag => {
                let Value::Text(tag) = &self.value else {
                    return false;
                };
                let has = m.tags.contains(tag);
                if self.op == Op::Has { has } else { !has }
            }
            Field::Tier => self.text(&m.tier),
            Field::Status => self.text(&m.status),
            Field::EnrolmentChannel => self.text(&m.enrolment_channel),
            Field::Locale => self.text(&m.locale),
            Field::DaysSinceLastPurchase => self.number(Some(days_between(
                m.last_purchase_on.unwrap_or(m.enrolled_on),
                today,
            ))),
            Field::DaysSinceEnrolment => self.number(Some(days_between(m.enrolled_on, today))),
            Field::BirthMonth => self.number(m.birth_month),
        }
    }

    fn text(&self, actual: &str) -> bool {
        match (&self.op, &self.value) {
            (Op::Eq, Value::Text(t)) => actual == t,
            (Op::Ne, Value::Text(t)) => actual != t,
            (Op::In, Value::Texts(ts)) => ts.iter().any(|t| t == actual),
            _ => false,
        }
    }

    /// Absent numbers never match (as SQL NULL comparisons).
    fn number(&self, actual: Option<i64>) -> bool {
        let Some(a) = actual else { return false };
        match (&self.op, &self.value) {
            (Op::Eq, Value::Number(n)) => a == *n,
            (Op::Ne, Value::Number(n)) => a != *n,
            (Op::Gt, Value::Number(n)) => a > *n,
            (Op::Gte, Value::Number(n)) => a >= *n,
            (Op::Lt, Value::Number(n)) => a < *n,
            (Op::Lte, Value::Number(n)) => a <= *n,
            (Op::In, Value::Numbers(ns)) => ns.contains(&a),
            _ => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn cond(
        field: pb::SegmentField,
        op: pb::SegmentOperator,
        text: &str,
        number: i64,
    ) -> pb::SegmentRule {
        pb::SegmentRule {
            node: Some(pb::segment_rule::Node::Condition(pb::SegmentCondition {
                field: field as i32,
                operator: op as i32,
                text: text.into(),
                number,
                values: Vec::new(),
            })),
        }
    }

    pub(crate) fn all(rules: Vec<pb::SegmentRule>) -> pb::SegmentRule {
        pb::SegmentRule {
            node: Some(pb::segment_rule::Node::All(pb::SegmentRuleGroup { rules })),
        }
    }

    fn facts(tier: &str, days_since_purchase: i64, tags: &[&str]) -> (MemberFacts, NaiveDate) {
        let now: NaiveDate = "2026-06-01".parse().unwrap();
        (
            MemberFacts {
                tier: tier.into(),
                status: "active".into(),
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                enrolled_on: now - chrono::TimeDelta::days(400),
                last_purchase_on: Some(now - chrono::TimeDelta::days(days_since_purchase)),
                enrolment_channel: "app".into(),
                locale: "zh-CN".into(),
                birth_month: None,
            },
            now,
        )
    }

    #[test]
    fn gold_members_without_a_purchase_for_60_days() {
        use pb::{SegmentField as F, SegmentOperator as O};
        let mut v = Violations::new();
        let rule = parse_rule(
            Some(&all(vec![
                cond(F::Tier, O::Eq, "GOLD", 0),
                cond(F::DaysSinceLastPurchase, O::Gt, "", 60),
            ])),
            "rule",
            &mut v,
        )
        .unwrap();
        let (m, now) = facts("GOLD", 61, &[]);
        assert!(rule.matches(&m, now));
        let (m, now) = facts("GOLD", 60, &[]);
        assert!(
            !rule.matches(&m, now),
            "exactly 60 days is not more than 60"
        );
        let (m, now) = facts("SILVER", 90, &[]);
        assert!(!rule.matches(&m, now));
    }

    #[test]
    fn never_bought_counts_days_since_enrolment_and_missing_birthdays_never_match() {
        use pb::{SegmentField as F, SegmentOperator as O};
        let mut v = Violations::new();
        let rule = parse_rule(
            Some(&cond(F::DaysSinceLastPurchase, O::Gte, "", 400)),
            "rule",
            &mut v,
        )
        .unwrap();
        let (mut m, now) = facts("GOLD", 1, &[]);
        m.last_purchase_on = None;
        assert!(rule.matches(&m, now));
        let bm = parse_rule(Some(&cond(F::BirthMonth, O::Ne, "", 3)), "rule", &mut v).unwrap();
        assert!(!bm.matches(&m, now));
        m.birth_month = Some(4);
        assert!(bm.matches(&m, now));
    }

    #[test]
    fn tags_and_in() {
        use pb::{SegmentField as F, SegmentOperator as O};
        let mut v = Violations::new();
        let has = parse_rule(Some(&cond(F::Tag, O::Has, "vip", 0)), "rule", &mut v).unwrap();
        let not_has = parse_rule(Some(&cond(F::Tag, O::NotHas, "vip", 0)), "rule", &mut v).unwrap();
        let mut inn = cond(F::Tier, O::In, "", 0);
        if let Some(pb::segment_rule::Node::Condition(c)) = &mut inn.node {
            c.values = vec!["GOLD".into(), "PLATINUM".into()];
        }
        let inn = parse_rule(Some(&inn), "rule", &mut v).unwrap();
        let (m, now) = facts("GOLD", 1, &["vip"]);
        assert!(has.matches(&m, now) && !not_has.matches(&m, now) && inn.matches(&m, now));
        let (m, now) = facts("BASE", 1, &[]);
        assert!(!has.matches(&m, now) && not_has.matches(&m, now) && !inn.matches(&m, now));
    }

    #[test]
    fn invalid_rules_name_the_path() {
        use pb::{SegmentField as F, SegmentOperator as O};
        let bad = all(vec![
            cond(F::Tier, O::Gt, "GOLD", 0),
            cond(F::BirthMonth, O::Eq, "", 13),
            cond(F::Status, O::Eq, "sleeping", 0),
            pb::SegmentRule { node: None },
            all(vec![]),
        ]);
        let mut v = Violations::new();
        assert!(parse_rule(Some(&bad), "rule", &mut v).is_none());
        let msg = v.finish().unwrap_err().to_string();
        for p in [
            "rule.all.rules[0].condition.operator",
            "rule.all.rules[1].condition.number",
            "rule.all.rules[2].condition.text",
            "rule.all.rules[3]",
            "rule.all.rules[4].all.rules",
        ] {
            assert!(msg.contains(p), "{p} missing: {msg}");
        }
    }

    #[test]
    fn depth_and_size_are_limited() {
        use pb::{SegmentField as F, SegmentOperator as O};
        let mut deep = cond(F::Tier, O::Eq, "GOLD", 0);
        for _ in 0..MAX_DEPTH {
            deep = all(vec![deep]);
        }
        let mut v = Violations::new();
        assert!(parse_rule(Some(&deep), "rule", &mut v).is_none());
        let wide = all((0..=MAX_CONDITIONS)
            .map(|_| cond(F::Tier, O::Eq, "GOLD", 0))
            .collect());
        let mut v = Violations::new();
        assert!(parse_rule(Some(&wide), "rule", &mut v).is_none());
    }
}
