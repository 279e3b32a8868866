//! Segments over gRPC on a generated population: ListSegmentMembers (rules
//! compiled to SQL, keyset pages) and GetMemberSegments (rules evaluated in
//! memory) both agree with a brute-force filter written here, for many
//! seeded random rules.
// amounts are written as <yuan>_<fen> minor units (1_000_00 = 1000.00)
#![allow(clippy::inconsistent_digit_grouping)]

mod common;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use common::{Env, fields_of, profile, program, purchase};
use loyalty_common::calendar::from_timestamp;
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::TestEngine;
use loyalty_proto::common::PageRequest;
use loyalty_proto::loyalty::membership::v1 as pb;
use pb::{SegmentField as F, SegmentOperator as O};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

test_on_both_engines!(
    segments_agree_with_a_brute_force_filter,
    recency_counts_calendar_days_in_the_program_zone,
);

const TAGS: [&str; 3] = ["vip", "student", "runner"];
const CHANNELS: [&str; 3] = ["app", "store", "web"];
const LOCALES: [&str; 3] = ["zh-CN", "en-US", "fr-FR"];
const TIERS: [&str; 4] = ["BASE", "SILVER", "GOLD", "PLATINUM"];
const STATUSES: [&str; 2] = ["active", "suspended"];
const DAY: i64 = 86_400_000_000;
/// The program's zone, Asia/Shanghai, is UTC+8 all year.
const SHANGHAI: i64 = 8 * 3_600_000_000;

/// Calendar days in Shanghai from `then` to `now` (unix micros).
fn days(then: i64, now: i64) -> i64 {
    (now + SHANGHAI).div_euclid(DAY) - (then + SHANGHAI).div_euclid(DAY)
}

struct Facts {
    id: String,
    tier: String,
    status: String,
    tags: Vec<String>,
    enrolled: i64,
    last_purchase: Option<i64>,
    channel: String,
    locale: String,
    birth_month: Option<i64>,
}

fn micros(ts: Option<&prost_types::Timestamp>) -> i64 {
    from_timestamp("t", ts).unwrap().timestamp_micros()
}

fn facts(m: &pb::Member) -> Facts {
    let p = m.profile.clone().unwrap();
    Facts {
        id: m.member_id.clone(),
        tier: m.tier_code.clone(),
        status: match pb::MemberStatus::try_from(m.status).unwrap() {
            pb::MemberStatus::Active => "active",
            pb::MemberStatus::Suspended => "suspended",
            _ => "other",
        }
        .into(),
        tags: m.tags.clone(),
        enrolled: micros(m.enrolled_at.as_ref()),
        last_purchase: m.last_purchase_at.as_ref().map(|t| micros(Some(t))),
        channel: m.enrolment_channel.clone(),
        locale: p.locale,
        birth_month: NaiveDate::parse_from_str(&p.birthday, "%Y-%m-%d")
            .ok()
            .map(|d| i64::from(d.month())),
    }
}

/// The brute-force filter: the rule's meaning, written out directly.
fn brute(rule: &pb::SegmentRule, f: &Facts, now: i64) -> bool {
    match rule.node.as_ref().unwrap() {
        pb::segment_rule::Node::All(g) => g.rules.iter().all(|r| brute(r, f, now)),
        pb::segment_rule::Node::Any(g) => g.rules.iter().any(|r| brute(r, f, now)),
        pb::segment_rule::Node::Condition(c) => {
            let op = O::try_from(c.operator).unwrap();
            let text = |actual: &str| match op {
                O::Eq => actual == c.text,
                O::Ne => actual != c.text,
                O::In => c.values.iter().any(|v| v == actual),
                _ => unreachable!(),
            };
            let num = |actual: Option<i64>| {
                actual.is_some_and(|a| match op {
                    O::Eq => a == c.number,
                    O::Ne => a != c.number,
                    O::Gt => a > c.number,
                    O::Gte => a >= c.number,
                    O::Lt => a < c.number,
                    O::Lte => a <= c.number,
                    O::In => c.values.iter().any(|v| v.parse::<i64>().unwrap() == a),
                    _ => unreachable!(),
                })
            };
            match F::try_from(c.field).unwrap() {
                F::Tier => text(&f.tier),
                F::Status => text(&f.status),
                F::EnrolmentChannel => text(&f.channel),
                F::Locale => text(&f.locale),
                F::Tag => f.tags.contains(&c.text) == (op == O::Has),
                F::DaysSinceLastPurchase => {
                    num(Some(days(f.last_purchase.unwrap_or(f.enrolled), now)))
                }
                F::DaysSinceEnrolment => num(Some(days(f.enrolled, now))),
                F::BirthMonth => num(f.birth_month),
                F::Unspecified => unreachable!(),
            }
        }
    }
}

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

fn random_condition(rng: &mut StdRng) -> pb::SegmentRule {
    let mut c = pb::SegmentCondition::default();
    let field = [
        F::Tier,
        F::Status,
        F::Tag,
        F::DaysSinceLastPurchase,
        F::DaysSinceEnrolment,
        F::EnrolmentChannel,
        F::Locale,
        F::BirthMonth,
    ][rng.random_range(0..8)];
    c.field = field as i32;
    let texts: &[&str] = match field {
        F::Tier => &TIERS,
        F::Status => &STATUSES,
        F::Tag => &TAGS,
        F::EnrolmentChannel => &CHANNELS,
        _ => &LOCALES,
    };
    match field {
        F::Tag => {
            c.operator = if rng.random_bool(0.5) {
                O::Has
            } else {
                O::NotHas
            } as i32;
            c.text = pick(rng, texts).into();
        }
        F::DaysSinceLastPurchase | F::DaysSinceEnrolment | F::BirthMonth => {
            let op = [O::Eq, O::Ne, O::Gt, O::Gte, O::Lt, O::Lte, O::In][rng.random_range(0..7)];
            c.operator = op as i32;
            let value = |rng: &mut StdRng| {
                if field == F::BirthMonth {
                    rng.random_range(1..=12)
                } else {
                    rng.random_range(0..400)
                }
            };
            if op == O::In {
                c.values = (0..rng.random_range(1..5))
                    .map(|_| value(rng).to_string())
                    .collect();
            } else {
                c.number = value(rng);
            }
        }
        _ => {
            let op = [O::Eq, O::Ne, O::In][rng.random_range(0..3)];
            c.operator = op as i32;
            if op == O::In {
                c.values = (0..rng.random_range(1..3))
                    .map(|_| pick(rng, texts).to_owned())
                    .collect();
            } else {
                c.text = pick(rng, texts).into();
            }
        }
    }
    pb::SegmentRule {
        node: Some(pb::segment_rule::Node::Condition(c)),
    }
}

fn random_rule(rng: &mut StdRng, depth: u32) -> pb::SegmentRule {
    if depth == 0 || rng.random_bool(0.4) {
        return random_condition(rng);
    }
    let rules = (0..rng.random_range(1..4))
        .map(|_| random_rule(rng, depth - 1))
        .collect();
    let group = pb::SegmentRuleGroup { rules };
    pb::SegmentRule {
        node: Some(if rng.random_bool(0.5) {
            pb::segment_rule::Node::All(group)
        } else {
            pb::segment_rule::Node::Any(group)
        }),
    }
}

async fn segments_agree_with_a_brute_force_filter(engine: TestEngine) {
    let env = Env::start(engine).await;
    let start: DateTime<Utc> = env.at("2025-01-01T00:00:00Z");
    env.create_program(program("p1")).await;
    let mut rng = StdRng::seed_from_u64(0x5e9_0001);
    let mut c = env.client.clone();
    for i in 0..120 {
        let enrolled = start + TimeDelta::minutes(rng.random_range(0..400 * 24 * 60));
        env.ts.clock().set(enrolled);
        let mut pr = profile("", "");
        pr.locale = pick(&mut rng, &LOCALES).into();
        pr.birthday = if rng.random_bool(0.7) {
            format!("1990-{:02}-15", rng.random_range(1..=12))
        } else {
            String::new()
        };
        let tags: Vec<String> = TAGS
            .iter()
            .filter(|_| rng.random_bool(0.4))
            .map(|t| (*t).to_owned())
            .collect();
        let m = c
            .enroll_member(env.req(
                pb::EnrollMemberRequest {
                    program_id: "p1".into(),
                    external_id: format!("u{i}"),
                    profile: Some(pr),
                    enrolment_channel: pick(&mut rng, &CHANNELS).into(),
                    tags,
                },
                "p1",
            ))
            .await
            .unwrap()
            .into_inner()
            .member
            .unwrap();
        if rng.random_bool(0.7) {
            let at = enrolled + TimeDelta::minutes(rng.random_range(0..60 * 24 * 30));
            env.ts.clock().set(at);
            let amount = [100_00, 1_200_00, 6_000_00, 12_000_00][rng.random_range(0..4)];
            env.ts
                .publish(&[purchase("p1", &m.member_id, &format!("o{i}"), amount, at)])
                .await;
        }
        if rng.random_bool(0.15) {
            c.suspend_member(env.req(
                pb::SuspendMemberRequest {
                    program_id: "p1".into(),
                    member_id: m.member_id.clone(),
                    reason: String::new(),
                    expected_version: 0,
                    ..Default::default()
                },
                "p1",
            ))
            .await
            .unwrap();
        }
    }
    let now = env.at("2026-03-01T08:00:00Z").timestamp_micros();
    let mut population = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_members(env.req(
                pb::ListMembersRequest {
                    program_id: "p1".into(),
                    page: Some(PageRequest {
                        page_size: 500,
                        page_token: token,
                    }),
                    ..Default::default()
                },
                "p1",
            ))
            .await
            .unwrap()
            .into_inner();
        population.extend(r.members.iter().map(facts));
        token = r.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(population.len(), 120);
    assert!(
        population
            .iter()
            .map(|f| f.tier.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            >= 3,
        "tiers vary"
    );

    let mut non_trivial = 0;
    let mut rules = Vec::new();
    for s in 0..60 {
        let rule = random_rule(&mut rng, 3);
        let id = format!("s{s:02}");
        c.create_segment(env.req(
            pb::CreateSegmentRequest {
                program_id: "p1".into(),
                segment_id: id.clone(),
                name: id.clone(),
                rule: Some(rule.clone()),
            },
            "p1",
        ))
        .await
        .unwrap_or_else(|e| panic!("{rule:?}: {e}"));
        let mut want: Vec<String> = population
            .iter()
            .filter(|f| brute(&rule, f, now))
            .map(|f| f.id.clone())
            .collect();
        want.sort();
        if !want.is_empty() && want.len() < population.len() {
            non_trivial += 1;
        }
        let mut got = Vec::new();
        let mut token = String::new();
        loop {
            let r = c
                .list_segment_members(env.req(
                    pb::ListSegmentMembersRequest {
                        program_id: "p1".into(),
                        segment_id: id.clone(),
                        page: Some(PageRequest {
                            page_size: 7,
                            page_token: token,
                        }),
                    },
                    "p1",
                ))
                .await
                .unwrap()
                .into_inner();
            got.extend(r.member_ids);
            token = r.page.unwrap().next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(got, want, "segment {id} rule {rule:?}");
        rules.push((id, rule));
    }
    assert!(
        non_trivial >= 20,
        "the generated rules should split the population ({non_trivial})"
    );
    // GetMemberSegments (in-memory evaluation) agrees too
    for f in population.iter().step_by(9) {
        let got = c
            .get_member_segments(env.req(
                pb::GetMemberSegmentsRequest {
                    program_id: "p1".into(),
                    member_id: f.id.clone(),
                },
                "p1",
            ))
            .await
            .unwrap()
            .into_inner()
            .segment_ids;
        let want: Vec<String> = rules
            .iter()
            .filter(|(_, r)| brute(r, f, now))
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(got, want, "member {}", f.id);
    }
    // an invalid rule is refused with its path
    let bad = pb::SegmentRule {
        node: Some(pb::segment_rule::Node::All(pb::SegmentRuleGroup {
            rules: vec![pb::SegmentRule {
                node: Some(pb::segment_rule::Node::Condition(pb::SegmentCondition {
                    field: F::Tier as i32,
                    operator: O::Gt as i32,
                    text: "GOLD".into(),
                    ..Default::default()
                })),
            }],
        })),
    };
    let err = c
        .create_segment(env.req(
            pb::CreateSegmentRequest {
                program_id: "p1".into(),
                segment_id: "bad".into(),
                name: "bad".into(),
                rule: Some(bad),
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(fields_of(&err).contains(&"rule.all.rules[0].condition.operator".to_owned()));
    env.ts.stop().await;
}

fn days_rule(op: O, n: i64) -> pb::SegmentRule {
    pb::SegmentRule {
        node: Some(pb::segment_rule::Node::Condition(pb::SegmentCondition {
            field: F::DaysSinceLastPurchase as i32,
            operator: op as i32,
            number: n,
            ..Default::default()
        })),
    }
}

/// A purchase at 23:50 in Shanghai is 0 days ago at 23:55 and 1 day ago
/// at 00:10, twenty minutes later: by SQL (ListSegmentMembers) and in
/// memory (GetMemberSegments) alike.
async fn recency_counts_calendar_days_in_the_program_zone(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.at("2026-03-01T00:00:00Z");
    env.create_program(program("p1")).await;
    let m = env.enroll("p1", "u1", profile("+8613800000001", "")).await;
    let bought: DateTime<Utc> = "2026-03-10T15:50:00Z".parse().unwrap(); // 23:50 local
    env.at("2026-03-10T15:51:00Z");
    env.ts
        .publish(&[purchase("p1", &m.member_id, "o1", 100_00, bought)])
        .await;
    env.ts.settle().await;
    let mut c = env.client.clone();
    let segments = [
        ("eq-0", days_rule(O::Eq, 0)),
        ("eq-1", days_rule(O::Eq, 1)),
        ("gt-0", days_rule(O::Gt, 0)),
        ("gte-1", days_rule(O::Gte, 1)),
        ("lt-1", days_rule(O::Lt, 1)),
        ("lte-0", days_rule(O::Lte, 0)),
        ("ne-1", days_rule(O::Ne, 1)),
    ];
    for (id, rule) in &segments {
        c.create_segment(env.req(
            pb::CreateSegmentRequest {
                program_id: "p1".into(),
                segment_id: (*id).into(),
                name: (*id).into(),
                rule: Some(rule.clone()),
            },
            "p1",
        ))
        .await
        .unwrap();
    }
    for (at, want) in [
        (
            "2026-03-10T15:55:00Z",
            vec!["eq-0", "lt-1", "lte-0", "ne-1"],
        ),
        ("2026-03-10T16:10:00Z", vec!["eq-1", "gt-0", "gte-1"]),
        ("2026-03-11T15:59:00Z", vec!["eq-1", "gt-0", "gte-1"]),
        ("2026-03-11T16:00:00Z", vec!["gt-0", "gte-1", "ne-1"]),
    ] {
        env.at(at);
        let in_memory = c
            .get_member_segments(env.req(
                pb::GetMemberSegmentsRequest {
                    program_id: "p1".into(),
                    member_id: m.member_id.clone(),
                },
                "p1",
            ))
            .await
            .unwrap()
            .into_inner()
            .segment_ids;
        assert_eq!(in_memory, want, "in memory at {at}");
        let mut by_sql = Vec::new();
        for (id, _) in &segments {
            let ids = c
                .list_segment_members(env.req(
                    pb::ListSegmentMembersRequest {
                        program_id: "p1".into(),
                        segment_id: (*id).into(),
                        page: None,
                    },
                    "p1",
                ))
                .await
                .unwrap()
                .into_inner()
                .member_ids;
            if ids == [m.member_id.clone()] {
                by_sql.push(*id);
            }
        }
        assert_eq!(by_sql, want, "by SQL at {at}");
    }
    env.ts.stop().await;
}
