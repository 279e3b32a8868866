//! Segments: definitions, and their rules compiled to SQL over the members
//! table (every value bound as a parameter, never spliced into the text).

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use loyalty_common::ServiceError;
use loyalty_common::calendar::{ProgramTz, from_micros, to_micros, to_timestamp};
use loyalty_common::db::Tx;
use loyalty_proto::loyalty::membership::v1 as pb;
use prost::Message;
use sqlx::AnyConnection;

use crate::domain::segment::{Condition, Field, Op, Rule, Value};

/// A bound SQL parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Int(i64),
}

/// A rule compiled to a boolean SQL expression over `members m`, with its
/// parameters numbered from `first`.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub sql: String,
    pub params: Vec<Param>,
}

/// The program's current date and zone: recency conditions count
/// calendar days there.
#[derive(Debug, Clone, Copy)]
pub struct Today<'a> {
    pub date: NaiveDate,
    pub tz: &'a ProgramTz,
}

impl<'a> Today<'a> {
    /// The date in `tz` at instant `now`.
    pub fn of(tz: &'a ProgramTz, now: DateTime<Utc>) -> Self {
        Self {
            date: tz.local_date(now),
            tz,
        }
    }

    /// Start (unix micros) of the local day `n` days before today. Day
    /// counts beyond any real history are clamped, so dates never overflow.
    fn start_of_day_ago(&self, n: i64) -> i64 {
        let n = n.clamp(-MAX_DAYS, MAX_DAYS);
        let day = self
            .date
            .checked_sub_signed(TimeDelta::days(n))
            .unwrap_or(self.date);
        to_micros(self.tz.start_of_day(day))
    }
}

/// Larger day counts than any history (about 270 years) are clamped.
const MAX_DAYS: i64 = 100_000;

/// Compiles `rule` for `today`; placeholders start at `$first`.
pub fn compile(rule: &Rule, today: &Today<'_>, first: usize) -> CompiledRule {
    let mut params = Vec::new();
    let sql = node(rule, today, first, &mut params);
    CompiledRule { sql, params }
}

fn push(params: &mut Vec<Param>, first: usize, p: Param) -> String {
    params.push(p);
    format!("${}", first + params.len() - 1)
}

fn node(rule: &Rule, today: &Today<'_>, first: usize, params: &mut Vec<Param>) -> String {
    match rule {
        Rule::Condition(c) => condition(c, today, first, params),
        Rule::All(rules) => {
            let parts: Vec<String> = rules
                .iter()
                .map(|r| node(r, today, first, params))
                .collect();
            format!("({})", parts.join(" AND "))
        }
        Rule::Any(rules) => {
            let parts: Vec<String> = rules
                .iter()
                .map(|r| node(r, today, first, params))
                .collect();
            format!("({})", parts.join(" OR "))
        }
    }
}

fn condition(c: &Condition, today: &Today<'_>, first: usize, params: &mut Vec<Param>) -> String {
    // Column expressions are fixed text chosen here, never caller input.
    let column = match c.field {
        Field::Tag => {
            let Value::Text(tag) = &c.value else {
                return "(1 = 0)".into();
            };
            let p = push(params, first, Param::Text(tag.clone()));
            let exists = format!(
                "EXISTS (SELECT 1 FROM member_tags t WHERE t.member_id = m.member_id AND t.tag = {p})"
            );
            return if c.op == Op::Has {
                exists
            } else {
                format!("NOT {exists}")
            };
        }
        Field::Tier => "m.tier_code".to_owned(),
        Field::Status => "m.status".to_owned(),
        Field::EnrolmentChannel => "m.enrolment_channel".to_owned(),
        Field::Locale => "m.locale".to_owned(),
        Field::BirthMonth => "m.birth_month".to_owned(),
        Field::DaysSinceEnrolment | Field::DaysSinceLastPurchase => {
            let since = if c.field == Field::DaysSinceEnrolment {
                "m.enrolled_at"
            } else {
                "COALESCE(m.last_purchase_at, m.enrolled_at)"
            };
            return days_since(since, c, today, first, params);
        }
    };
    let op = match c.op {
        Op::Eq => "=",
        Op::Ne => "<>",
        Op::Gt => ">",
        Op::Gte => ">=",
        Op::Lt => "<",
        Op::Lte => "<=",
        Op::In => {
            let list: Vec<String> = match &c.value {
                Value::Texts(ts) => ts
                    .iter()
                    .map(|t| push(params, first, Param::Text(t.clone())))
                    .collect(),
                Value::Numbers(ns) => ns
                    .iter()
                    .map(|n| push(params, first, Param::Int(*n)))
                    .collect(),
                _ => return "(1 = 0)".into(),
            };
            return format!("({column} IN ({}))", list.join(", "));
        }
        Op::Has | Op::NotHas => return "(1 = 0)".into(),
    };
    let p = match &c.value {
        Value::Text(t) => push(params, first, Param::Text(t.clone())),
        Value::Number(n) => push(params, first, Param::Int(*n)),
        _ => return "(1 = 0)".into(),
    };
    format!("({column} {op} {p})")
}

/// `days(since) <op> n` in calendar days of the program's zone, written
/// as a range of the instant column (so it can use an index): `since` is
/// `n` days ago when it falls in the local day that started `n` days
/// before today, i.e. in [start(n), start(n - 1)).
fn days_since(
    since: &str,
    c: &Condition,
    today: &Today<'_>,
    first: usize,
    params: &mut Vec<Param>,
) -> String {
    let mut bound = |n: i64| push(params, first, Param::Int(today.start_of_day_ago(n)));
    let mut exactly = |n: i64| {
        let (from, until) = (bound(n), bound(n - 1));
        format!("({since} >= {from} AND {since} < {until})")
    };
    match (&c.op, &c.value) {
        (Op::Eq, Value::Number(n)) => exactly(*n),
        (Op::Ne, Value::Number(n)) => format!("(NOT {})", exactly(*n)),
        (Op::In, Value::Numbers(ns)) if !ns.is_empty() => {
            let parts: Vec<String> = ns.iter().map(|n| exactly(*n)).collect();
            format!("({})", parts.join(" OR "))
        }
        (Op::Gt, Value::Number(n)) => format!("({since} < {})", bound(*n)),
        (Op::Gte, Value::Number(n)) => format!("({since} < {})", bound(n - 1)),
        (Op::Lt, Value::Number(n)) => format!("({since} >= {})", bound(n - 1)),
        (Op::Lte, Value::Number(n)) => format!("({since} >= {})", bound(*n)),
        _ => "(1 = 0)".into(),
    }
}

/// One page of member ids matching `rule` after `after`, in id order.
pub async fn matching_members(
    c: &mut AnyConnection,
    program_id: &str,
    rule: &Rule,
    today: &Today<'_>,
    after: &str,
    limit: i64,
) -> Result<Vec<String>, ServiceError> {
    let compiled = compile(rule, today, 4);
    let sql = format!(
        "SELECT m.member_id FROM members m WHERE m.program_id = $1 AND m.member_id > $2 AND {} \
         ORDER BY m.member_id LIMIT $3",
        compiled.sql
    );
    let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
        .bind(program_id)
        .bind(after)
        .bind(limit);
    for p in compiled.params {
        q = match p {
            Param::Text(t) => q.bind(t),
            Param::Int(i) => q.bind(i),
        };
    }
    Ok(q.fetch_all(c).await?)
}

/// A stored segment.
#[derive(Debug, Clone)]
pub struct SegmentRecord {
    pub proto: pb::Segment,
}

fn record(
    (program_id, segment_id, name, rule, created_at): (String, String, String, Vec<u8>, i64),
) -> Result<SegmentRecord, ServiceError> {
    let rule = pb::SegmentRule::decode(rule.as_slice())
        .map_err(|e| super::decode_err("segment rule", e))?;
    Ok(SegmentRecord {
        proto: pb::Segment {
            program_id,
            segment_id,
            name,
            rule: Some(rule),
            created_at: Some(to_timestamp(from_micros(created_at))),
        },
    })
}

pub async fn get(
    c: &mut AnyConnection,
    program_id: &str,
    segment_id: &str,
) -> Result<Option<SegmentRecord>, ServiceError> {
    let row: Option<(String, String, String, Vec<u8>, i64)> = sqlx::query_as(
        "SELECT program_id, segment_id, name, rule, created_at FROM segments WHERE program_id = $1 AND segment_id = $2",
    )
    .bind(program_id)
    .bind(segment_id)
    .fetch_optional(c)
    .await?;
    row.map(record).transpose()
}

/// Segments after `after` (id order).
pub async fn list(
    c: &mut AnyConnection,
    program_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<SegmentRecord>, ServiceError> {
    let rows: Vec<(String, String, String, Vec<u8>, i64)> = sqlx::query_as(
        "SELECT program_id, segment_id, name, rule, created_at FROM segments WHERE program_id = $1 AND segment_id > $2 \
         ORDER BY segment_id LIMIT $3",
    )
    .bind(program_id)
    .bind(after)
    .bind(limit)
    .fetch_all(c)
    .await?;
    rows.into_iter().map(record).collect()
}

/// Inserts a segment; false when the id is taken.
pub async fn insert(tx: &mut Tx, s: &pb::Segment, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO segments (program_id, segment_id, name, rule, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(&s.program_id)
    .bind(&s.segment_id)
    .bind(&s.name)
    .bind(s.rule.clone().unwrap_or_default().encode_to_vec())
    .bind(to_micros(now))
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}
