//! Purchases and refunds: the transactional work of RecordPurchase and
//! RecordRefund as functions of a transaction, so that they run alone, inside
//! a group commit, or inside an event consumer's transaction alike.
//!
//! A purchase is recorded once per (program, order id): it is evaluated by
//! the rules engine, credited as one lot, and what each line earned is
//! stored. A refund reverses exactly what the refunded lines earned (see
//! [`crate::domain::ledger_refund`]), from the order's own lot first.

use chrono::{DateTime, Utc};
use loyalty_common::ServiceError;
use loyalty_common::calendar::{from_timestamp_opt, to_timestamp};
use std::collections::{HashMap, HashSet};

use loyalty_common::db::{
    Engine, JsonType, Tx, engine_of, json_rows, json_rows_lookup, now_micros,
};
use loyalty_common::events::{new_envelope, outbox};
use loyalty_common::money::Money;
use loyalty_proto::events as ev;
use loyalty_proto::events::EventEnvelope;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::rewards::v1 as pb;
use prost::Message;

use super::ledger::{
    self, Cause, Deltas, EntryKind, LotTerms, NewEntry, PRODUCER, Posting, balance_row, lock_lane,
};
use super::ledger_lanes::{LockedLanes, lock_lanes};
use super::{ledger_policy, ledger_queries, rules_cache, rules_member};
use crate::domain::earning_rules::{CapUsage, Evaluation, Line, PurchaseFacts, evaluate_purchase};
use crate::domain::expiry::{Clawback, PointsPolicy};
use crate::domain::ledger_refund::{LineState, RefundAsk, plan_clawback, plan_refund};
use crate::validation::check_id;

const MAX_LINES: usize = 500;

/// A purchase, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PurchaseInput {
    pub program_id: String,
    pub member_id: String,
    pub order_id: String,
    pub amount: Money,
    pub lines: Vec<Line>,
    pub channel: String,
    pub store_id: String,
    pub purchased_at: DateTime<Utc>,
    /// SHA-256 of the request: a replay with other parameters is refused.
    pub fingerprint: String,
}

/// Validates a purchase (fields named as in RecordPurchaseRequest).
pub(crate) fn purchase_input(
    program_id: &str,
    member_id: &str,
    p: Option<&pb::Purchase>,
    now: DateTime<Utc>,
) -> Result<PurchaseInput, ServiceError> {
    let mut v = loyalty_common::error::Violations::new();
    check_id(&mut v, "program_id", program_id);
    check_id(&mut v, "member_id", member_id);
    let Some(p) = p else {
        v.add("purchase", "is required");
        v.finish()?;
        return Err(ServiceError::invalid("purchase", "is required"));
    };
    check_id(&mut v, "purchase.order_id", &p.order_id);
    let amount = v.check(
        "purchase.amount",
        Money::from_proto("purchase.amount", p.amount.as_ref()).map_err(|e| first(&e)),
    );
    if amount.is_some_and(|a| a.minor < 0) {
        v.add("purchase.amount.minor_units", "must not be negative");
    }
    if p.lines.len() > MAX_LINES {
        v.add("purchase.lines", format!("has more than {MAX_LINES} lines"));
    }
    let mut lines = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, l) in p.lines.iter().enumerate() {
        let f = format!("purchase.lines[{i}]");
        check_id(&mut v, &format!("{f}.line_id"), &l.line_id);
        if !seen.insert(l.line_id.clone()) {
            v.add(format!("{f}.line_id"), "is given twice");
        }
        let la = v.check(
            &format!("{f}.amount"),
            Money::from_proto(&format!("{f}.amount"), l.amount.as_ref()).map_err(|e| first(&e)),
        );
        if let (Some(la), Some(a)) = (la, amount) {
            if la.currency != a.currency {
                v.add(
                    format!("{f}.amount.currency"),
                    "differs from the order's currency",
                );
            }
            if la.minor < 0 {
                v.add(format!("{f}.amount.minor_units"), "must not be negative");
            }
        }
        lines.push(Line {
            line_id: l.line_id.clone(),
            sku: l.sku.clone(),
            category: l.category.clone(),
            amount_minor: la.map_or(0, |m| m.minor),
        });
    }
    if let Some(a) = amount
        && !lines.is_empty()
        && lines.iter().map(|l| l.amount_minor).sum::<i64>() != a.minor
    {
        v.add("purchase.amount", "must equal the sum of the lines");
    }
    let purchased_at = v
        .check(
            "purchase.purchased_at",
            from_timestamp_opt("purchase.purchased_at", p.purchased_at.as_ref())
                .map_err(|e| first(&e)),
        )
        .flatten()
        .unwrap_or(now);
    v.finish()?;
    let amount = amount.ok_or_else(|| ServiceError::invalid("purchase.amount", "is required"))?;
    if lines.is_empty() {
        lines.push(Line {
            line_id: "order".into(),
            sku: String::new(),
            category: String::new(),
            amount_minor: amount.minor,
        });
    }
    // The request as sent: a retry of an order sent without its time must
    // match, although "now" has moved on since the first attempt.
    let fingerprint = loyalty_common::idempotency::fingerprint(&pb::RecordPurchaseRequest {
        program_id: program_id.to_owned(),
        member_id: member_id.to_owned(),
        purchase: Some(p.clone()),
    });
    Ok(PurchaseInput {
        program_id: program_id.to_owned(),
        member_id: member_id.to_owned(),
        order_id: p.order_id.clone(),
        amount,
        lines,
        channel: p.channel.clone(),
        store_id: p.store_id.clone(),
        purchased_at,
        fingerprint,
    })
}

fn first(e: &ServiceError) -> String {
    match e {
        ServiceError::InvalidArgument(v) => {
            v.first().map(|f| f.description.clone()).unwrap_or_default()
        }
        other => other.to_string(),
    }
}

fn check_currency(policy: &PointsPolicy, input: &PurchaseInput) -> Result<(), ServiceError> {
    if !policy.currency.is_empty() && policy.currency != input.amount.currency.as_str() {
        return Err(ServiceError::invalid(
            "purchase.amount.currency",
            format!("the program earns on {} only", policy.currency),
        ));
    }
    Ok(())
}

/// Evaluates a purchase for the member as things stand (no writes).
pub(crate) async fn evaluate(
    tx: &mut Tx,
    db: &str,
    input: &PurchaseInput,
) -> Result<Evaluation, ServiceError> {
    let terms = rules_cache::terms(tx, db, &input.program_id).await?;
    check_currency(&terms.policy, input)?;
    let mut member = rules_member::load(tx, &input.program_id, &input.member_id).await?;
    member.purchase_count += 1;
    let usage = if terms.capped {
        let day = terms.policy.tz.local_date(input.purchased_at);
        rules_member::cap_usage(tx, &input.program_id, &input.member_id, day).await?
    } else {
        CapUsage::default()
    };
    Ok(evaluate_with(&terms, input, &member, &usage))
}

/// Evaluates a purchase given the program's terms, the member's state
/// counting this purchase and what its capped rules gave already (no I/O).
fn evaluate_with(
    terms: &rules_cache::ProgramTerms,
    input: &PurchaseInput,
    member: &rules_member::MemberState,
    usage: &CapUsage,
) -> Evaluation {
    let policy = &terms.policy;
    let facts = PurchaseFacts {
        lines: input.lines.clone(),
        channel: input.channel.clone(),
        store_id: input.store_id.clone(),
        purchased_at: input.purchased_at,
        local_date: policy.tz.local_date(input.purchased_at),
        tier: member.tier.clone(),
        multiplier_bp: member.multiplier_bp,
        ordinal: u32::try_from(member.purchase_count).unwrap_or(u32::MAX),
        base_points_per_unit: policy.base_points_per_unit,
        unit_minor: policy.unit_minor,
        rounding: policy.rounding,
    };
    evaluate_purchase(&terms.rules, &facts, usage)
}

pub(crate) fn applications_to_proto(e: &Evaluation) -> Vec<pb::RuleApplication> {
    e.applications
        .iter()
        .map(|a| pb::RuleApplication {
            rule_id: a.rule_id.clone(),
            rule_version: a.version,
            rule_name: a.name.clone(),
            points: a.points,
            detail: a.detail.clone(),
            capped_points: a.capped,
        })
        .collect()
}

fn lines_to_proto(e: &Evaluation) -> Vec<pb::LineEarning> {
    e.lines
        .iter()
        .map(|(id, p)| pb::LineEarning {
            line_id: id.clone(),
            points: *p,
        })
        .collect()
}

/// Records a purchase in `tx`: idempotent on (program, order id), evaluates
/// the rules, credits the points as one lot, stores what each line earned.
/// With `emit`, also announces PurchaseCompleted (when the purchase came in
/// by RPC rather than as that event).
pub(crate) async fn record_purchase(
    tx: &mut Tx,
    db: &str,
    input: &PurchaseInput,
    now: DateTime<Utc>,
    emit: bool,
) -> Result<pb::RecordPurchaseResponse, ServiceError> {
    record_purchases(tx, db, std::slice::from_ref(input), now, emit)
        .await?
        .remove(0)
}

/// [`record_purchase`] of several purchases at once, with set-based
/// statements: about ten statements for the lot, whatever their number.
/// Answers each purchase's result in input order; a refused purchase
/// writes nothing. `Err` of the whole when the database failed or when an
/// order id was just taken by a concurrent transaction for another member
/// (the group committer then records the purchases one by one).
///
/// Purchases run in rounds of distinct members and distinct orders, in
/// input order, so that a member's second purchase of the lot (or a
/// replayed order) sees the first, as it would one after the other.
pub(crate) async fn record_purchases<P>(
    tx: &mut Tx,
    db: &str,
    inputs: &[P],
    now: DateTime<Utc>,
    emit: bool,
) -> Result<Vec<Result<pb::RecordPurchaseResponse, ServiceError>>, ServiceError>
where
    P: std::borrow::Borrow<PurchaseInput>,
{
    let mut results: Vec<Option<Result<pb::RecordPurchaseResponse, ServiceError>>> =
        inputs.iter().map(|_| None).collect();
    // the members' lane heads order every writer of those members: a
    // concurrent duplicate of an order waits here and then sees it
    // recorded (a duplicate order id for another member, in another lane,
    // is caught by the insert). Every lane of the batch is locked at once,
    // in ascending order, before any round: no round locks another later.
    let mut lanes = lock_lanes(
        tx,
        inputs.iter().map(|p| {
            let p: &PurchaseInput = p.borrow();
            (p.program_id.as_str(), p.member_id.as_str())
        }),
    )
    .await?;
    let mut todo: Vec<usize> = (0..inputs.len()).collect();
    while !todo.is_empty() {
        let mut members = HashSet::new();
        let mut orders = HashSet::new();
        let mut round = Vec::new();
        let mut later = Vec::new();
        for i in todo {
            let p: &PurchaseInput = inputs[i].borrow();
            let member = (p.program_id.as_str(), p.member_id.as_str());
            let order = (p.program_id.as_str(), p.order_id.as_str());
            if members.contains(&member) || orders.contains(&order) {
                later.push(i);
            } else {
                members.insert(member);
                orders.insert(order);
                round.push((i, p));
            }
        }
        record_round(tx, db, &mut lanes, &round, now, emit, &mut results).await?;
        todo = later;
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ServiceError::internal("a purchase was not recorded"))))
        .collect())
}

/// A purchase of a round on its way to being recorded.
struct Earning<'a> {
    index: usize,
    input: &'a PurchaseInput,
    eval: Evaluation,
    /// The purchase's day in the program's zone (caps, the order's row).
    day: chrono::NaiveDate,
    lot: LotTerms,
    posting: Option<Posting>,
    entry_id: String,
}

/// One round of [`record_purchases`]: purchases of distinct members and
/// distinct orders.
async fn record_round(
    tx: &mut Tx,
    db: &str,
    lanes: &mut LockedLanes,
    round: &[(usize, &PurchaseInput)],
    now: DateTime<Utc>,
    emit: bool,
    results: &mut [Option<Result<pb::RecordPurchaseResponse, ServiceError>>],
) -> Result<(), ServiceError> {
    let recorded = recorded_orders(tx, round).await?;
    let mut live = Vec::with_capacity(round.len());
    for &(index, input) in round {
        if let Some((hash, response)) = recorded.get(&(&*input.program_id, &*input.order_id)) {
            results[index] = Some(if *hash == input.fingerprint {
                pb::RecordPurchaseResponse::decode(response.as_slice())
                    .map_err(ServiceError::internal)
            } else {
                Err(already_recorded(&input.order_id))
            });
            continue;
        }
        let terms = rules_cache::terms(tx, db, &input.program_id).await?;
        if let Err(e) = check_currency(&terms.policy, input) {
            results[index] = Some(Err(e));
            continue;
        }
        live.push((index, input, terms));
    }
    if live.is_empty() {
        return Ok(());
    }
    let members: Vec<(&str, &str)> = live
        .iter()
        .map(|(_, p, _)| (p.program_id.as_str(), p.member_id.as_str()))
        .collect();
    let mut states = rules_member::count_purchases_returning(tx, &members).await?;
    // what capped rules gave already, for the members of capped programs
    // (one statement for the round; its members are distinct)
    let capped: Vec<(&str, &str, chrono::NaiveDate)> = live
        .iter()
        .filter(|(_, _, terms)| terms.capped)
        .map(|(_, p, terms)| {
            (
                p.program_id.as_str(),
                p.member_id.as_str(),
                terms.policy.tz.local_date(p.purchased_at),
            )
        })
        .collect();
    let mut usage = rules_member::cap_usage_of(tx, &capped).await?;
    let mut earnings = Vec::with_capacity(live.len());
    for (index, input, terms) in live {
        let key = (input.program_id.clone(), input.member_id.clone());
        let member = states
            .remove(&key)
            .ok_or_else(|| ServiceError::internal("the purchase count answered no row"))?;
        let eval = evaluate_with(
            &terms,
            input,
            &member,
            &usage.remove(&key).unwrap_or_default(),
        );
        let lot = terms.policy.purchase_lot(input.purchased_at, now);
        let posting = (eval.total > 0).then(|| Posting {
            program_id: input.program_id.clone(),
            member_id: input.member_id.clone(),
            kind: EntryKind::Earn,
            points: eval.total,
            cause: Cause {
                rules: eval.rule_refs(),
                order_id: Some(input.order_id.clone()),
                ..Cause::default()
            },
        });
        let entry_id = if posting.is_some() {
            ledger::new_id()
        } else {
            String::new()
        };
        earnings.push(Earning {
            index,
            input,
            day: terms.policy.tz.local_date(input.purchased_at),
            eval,
            lot,
            posting,
            entry_id,
        });
    }
    let events = credit_earnings(tx, lanes, &earnings).await?;
    let awards: Vec<_> = earnings
        .iter()
        .map(|e| {
            (
                e.input.program_id.as_str(),
                e.input.member_id.as_str(),
                e.day,
                e.eval.applications.as_slice(),
            )
        })
        .collect();
    rules_member::record_awards_of(tx, &awards).await?;
    let responses: Vec<pb::RecordPurchaseResponse> = earnings.iter().map(response_of).collect();
    insert_purchases(tx, &earnings, &responses).await?;
    let mut events = events;
    if emit {
        events.extend(earnings.iter().map(|e| purchase_completed(e.input)));
    }
    outbox::append_all(tx, &events).await?;
    for (e, response) in earnings.iter().zip(responses) {
        results[e.index] = Some(Ok(response));
    }
    Ok(())
}

fn already_recorded(order_id: &str) -> ServiceError {
    ServiceError::precondition(format!(
        "order {order_id} was already recorded with other parameters"
    ))
}

/// Orders of the round already recorded: (request hash, response) by
/// (program, order id).
async fn recorded_orders<'a>(
    tx: &mut Tx,
    round: &[(usize, &'a PurchaseInput)],
) -> Result<HashMap<(&'a str, &'a str), (String, Vec<u8>)>, ServiceError> {
    let from = json_rows_lookup(
        engine_of(tx),
        1,
        &[("program_id", JsonType::Text), ("order_id", JsonType::Text)],
        "purchases",
        "t.program_id = r.program_id AND t.order_id = r.order_id",
    );
    let json = serde_json::Value::Array(
        round
            .iter()
            .map(|(_, p)| serde_json::json!({"program_id": p.program_id, "order_id": p.order_id}))
            .collect(),
    );
    let found: Vec<(String, String, String, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(
        format!("SELECT t.program_id, t.order_id, t.request_hash, t.response FROM {from}"),
    ))
    .bind(json.to_string())
    .fetch_all(&mut **tx)
    .await?;
    let mut recorded = HashMap::new();
    for (program_id, order_id, hash, response) in found {
        if let Some((_, p)) = round
            .iter()
            .find(|(_, p)| p.program_id == program_id && p.order_id == order_id)
        {
            recorded.insert(
                (p.program_id.as_str(), p.order_id.as_str()),
                (hash, response),
            );
        }
    }
    Ok(recorded)
}

/// Credits what the round earned: balances, lots and chained entries in
/// one statement each. Answers the PointsEarned events.
async fn credit_earnings(
    tx: &mut Tx,
    lanes: &mut LockedLanes,
    earnings: &[Earning<'_>],
) -> Result<Vec<EventEnvelope>, ServiceError> {
    // (purchase, its posting, its one lot)
    type Credit<'e, 'a> = (&'e Earning<'a>, &'e Posting, [(i64, LotTerms); 1]);
    let credits: Vec<Credit> = earnings
        .iter()
        .filter_map(|e| e.posting.as_ref().map(|p| (e, p, [(p.points, e.lot)])))
        .collect();
    if credits.is_empty() {
        return Ok(Vec::new());
    }
    let deltas: Vec<Deltas> = credits
        .iter()
        .map(|(_, p, parts)| ledger::credit_deltas(p, parts))
        .collect();
    let moves: Vec<(&str, &str, &Deltas)> = credits
        .iter()
        .zip(&deltas)
        .map(|((_, p, _), d)| (p.program_id.as_str(), p.member_id.as_str(), d))
        .collect();
    // the balances move first, their answers say how much debt each credit
    // pays before its lot holds anything
    let available = ledger::move_balances(tx, &moves).await?;
    let mut lots = Vec::with_capacity(credits.len());
    for ((e, p, parts), d) in credits.iter().zip(&deltas) {
        let after = available
            .get(&(p.program_id.clone(), p.member_id.clone()))
            .copied()
            .ok_or_else(|| ServiceError::internal("the balance move answered no row"))?;
        lots.extend(ledger::lots_of_credit(
            p,
            &e.entry_id,
            parts,
            after - d.available,
        ));
    }
    ledger::insert_lots(tx, &lots).await?;
    let mut entries = Vec::with_capacity(credits.len());
    for ((e, p, _), d) in credits.iter().zip(&deltas) {
        let head = lanes
            .index_of(&p.program_id, &p.member_id)
            .ok_or_else(|| ServiceError::internal("a purchase's lane was not locked"))?;
        entries.push((
            head,
            NewEntry {
                entry_id: &e.entry_id,
                member_id: &p.member_id,
                kind: p.kind,
                deltas: d,
                cause: &p.cause,
                reverses: None,
            },
        ));
    }
    ledger::chain_entries(tx, &mut lanes.heads_mut(), &entries).await?;
    Ok(credits
        .iter()
        .map(|(e, p, parts)| ledger::points_earned(p, &e.entry_id, parts))
        .collect())
}

fn response_of(e: &Earning<'_>) -> pb::RecordPurchaseResponse {
    let earned = e.eval.total > 0;
    pb::RecordPurchaseResponse {
        entry_id: e.entry_id.clone(),
        points: e.eval.total,
        pending_until: e.lot.pending_until.filter(|_| earned).map(to_timestamp),
        expires_at: e.lot.expires_at.filter(|_| earned).map(to_timestamp),
        applications: applications_to_proto(&e.eval),
        lines: lines_to_proto(&e.eval),
    }
}

fn purchase_completed(input: &PurchaseInput) -> EventEnvelope {
    new_envelope(
        PRODUCER,
        &input.program_id,
        &input.member_id,
        Payload::PurchaseCompleted(ev::PurchaseCompleted {
            order_id: input.order_id.clone(),
            amount: Some(input.amount.to_proto()),
            lines: input
                .lines
                .iter()
                .map(|l| ev::OrderLine {
                    line_id: l.line_id.clone(),
                    sku: l.sku.clone(),
                    category: l.category.clone(),
                    quantity: 0,
                    amount: Some(Money::new(l.amount_minor, input.amount.currency).to_proto()),
                })
                .collect(),
            channel: input.channel.clone(),
            store_id: input.store_id.clone(),
            purchased_at: Some(to_timestamp(input.purchased_at)),
        }),
    )
}

/// Stores the orders and what each line earned: one statement on
/// PostgreSQL, two on SQLite. `Err` when an order id was taken meanwhile.
async fn insert_purchases(
    tx: &mut Tx,
    earnings: &[Earning<'_>],
    responses: &[pb::RecordPurchaseResponse],
) -> Result<(), ServiceError> {
    let engine = engine_of(tx);
    let (text, int) = (JsonType::Text, JsonType::BigInt);
    let orders = json_rows(
        engine,
        1,
        "o",
        &[
            ("program_id", text),
            ("order_id", text),
            ("member_id", text),
            ("request_hash", text),
            ("response", text),
            ("amount_minor", int),
            ("points", int),
            ("entry_id", text),
            ("created_at", int),
            ("local_day", text),
        ],
    );
    // PostgreSQL binds the lines second (one statement), SQLite alone
    let lines_param = if engine == Engine::Postgres { 2 } else { 1 };
    let lines = json_rows(
        engine,
        lines_param,
        "l",
        &[
            ("program_id", text),
            ("order_id", text),
            ("line_id", text),
            ("amount_minor", int),
            ("points", int),
        ],
    );
    let created_at = now_micros();
    let mut order_rows = Vec::with_capacity(earnings.len());
    let mut line_rows = Vec::new();
    for (e, response) in earnings.iter().zip(responses) {
        let p = e.input;
        order_rows.push(serde_json::json!({
            "program_id": p.program_id, "order_id": p.order_id, "member_id": p.member_id,
            "request_hash": p.fingerprint, "response": hex::encode(response.encode_to_vec()),
            "amount_minor": p.amount.minor, "points": e.eval.total, "entry_id": response.entry_id,
            "created_at": created_at, "local_day": e.day.format("%Y-%m-%d").to_string(),
        }));
        for (line, (_, points)) in p.lines.iter().zip(&e.eval.lines) {
            line_rows.push(serde_json::json!({
                "program_id": p.program_id, "order_id": p.order_id, "line_id": line.line_id,
                "amount_minor": line.amount_minor, "points": points,
            }));
        }
    }
    // the response travels as hex (JSON has no bytes) and is decoded in SQL
    let unhex = match engine {
        Engine::Postgres => "decode(o.response, 'hex')",
        Engine::Sqlite => "unhex(o.response)",
    };
    let insert_orders = format!(
        "INSERT INTO purchases (program_id, order_id, member_id, request_hash, response, \
         amount_minor, points, entry_id, created_at, local_day) \
         SELECT o.program_id, o.order_id, o.member_id, o.request_hash, {unhex}, o.amount_minor, \
         o.points, o.entry_id, o.created_at, o.local_day FROM {orders} WHERE true \
         ON CONFLICT (program_id, order_id) DO NOTHING"
    );
    let insert_lines = "INSERT INTO purchase_lines (program_id, order_id, line_id, amount_minor, points) \
         SELECT l.program_id, l.order_id, l.line_id, l.amount_minor, l.points FROM";
    let orders_json = serde_json::Value::Array(order_rows).to_string();
    let lines_json = serde_json::Value::Array(line_rows);
    let expected_lines = lines_json.as_array().map_or(0, Vec::len) as u64;
    let lines_json = lines_json.to_string();
    let taken = || match earnings {
        [one] => already_recorded(&one.input.order_id),
        _ => ServiceError::precondition("an order id of the batch was taken meanwhile"),
    };
    if engine == Engine::Postgres {
        // lines of an order that was not inserted are left out: fewer lines
        // than sent means an order id was taken
        let sql = format!(
            "WITH p AS ({insert_orders} RETURNING program_id, order_id) \
             {insert_lines} {lines} JOIN p ON p.program_id = l.program_id AND p.order_id = l.order_id"
        );
        let inserted = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(orders_json)
            .bind(lines_json)
            .execute(&mut **tx)
            .await?;
        if inserted.rows_affected() != expected_lines {
            return Err(taken());
        }
        return Ok(());
    }
    let inserted = sqlx::query(sqlx::AssertSqlSafe(insert_orders))
        .bind(orders_json)
        .execute(&mut **tx)
        .await?;
    if inserted.rows_affected() != earnings.len() as u64 {
        return Err(taken());
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("{insert_lines} {lines}")))
        .bind(lines_json)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A refund, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefundInput {
    pub program_id: String,
    pub order_id: String,
    pub refund_id: String,
    pub ask: RefundAsk,
    pub currency: Option<String>,
    pub refunded_at: DateTime<Utc>,
    pub fingerprint: String,
}

/// Validates a refund (fields named as in RecordRefundRequest).
pub(crate) fn refund_input(
    req: &pb::RecordRefundRequest,
    now: DateTime<Utc>,
) -> Result<RefundInput, ServiceError> {
    let mut v = loyalty_common::error::Violations::new();
    check_id(&mut v, "program_id", &req.program_id);
    check_id(&mut v, "order_id", &req.order_id);
    check_id(&mut v, "refund_id", &req.refund_id);
    let mut currency = None;
    let ask = if req.lines.is_empty() {
        if let Ok(m) = Money::from_proto("amount", req.amount.as_ref()) {
            currency = Some(m.currency.as_str().to_owned());
            RefundAsk::Amount(m.minor)
        } else {
            v.add("amount", "is required when no lines are given");
            RefundAsk::Amount(0)
        }
    } else {
        let mut lines = Vec::new();
        for (i, l) in req.lines.iter().enumerate() {
            check_id(&mut v, &format!("lines[{i}].line_id"), &l.line_id);
            let amount = match &l.amount {
                None => None,
                Some(m) => match Money::from_proto(&format!("lines[{i}].amount"), Some(m)) {
                    Ok(m) => {
                        currency = Some(m.currency.as_str().to_owned());
                        Some(m.minor)
                    }
                    Err(e) => {
                        v.add(format!("lines[{i}].amount"), first(&e));
                        None
                    }
                },
            };
            lines.push((l.line_id.clone(), amount));
        }
        RefundAsk::Lines(lines)
    };
    let refunded_at = from_timestamp_opt("refunded_at", req.refunded_at.as_ref())?.unwrap_or(now);
    v.finish()?;
    Ok(RefundInput {
        program_id: req.program_id.clone(),
        order_id: req.order_id.clone(),
        refund_id: req.refund_id.clone(),
        ask,
        currency,
        refunded_at,
        fingerprint: loyalty_common::idempotency::fingerprint(req),
    })
}

/// Records a refund in `tx`: idempotent on (program, order, refund id);
/// reverses what the refunded part of the order earned, from the order's
/// own lot first, then from other available points, the rest by the
/// program's clawback policy. With `emit`, announces OrderRefunded.
pub(crate) async fn record_refund(
    tx: &mut Tx,
    input: &RefundInput,
    now: DateTime<Utc>,
    emit: bool,
) -> Result<pb::RecordRefundResponse, ServiceError> {
    // the order's member (never changes) names the lane to lock; the
    // refund's own replay check comes after the lock
    let member: Option<String> = sqlx::query_scalar(
        "SELECT member_id FROM purchases WHERE program_id = $1 AND order_id = $2",
    )
    .bind(&input.program_id)
    .bind(&input.order_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(member_id) = member else {
        return Err(ServiceError::not_found("order", &input.order_id));
    };
    let mut head = lock_lane(tx, &input.program_id, &member_id).await?;
    let existing: Option<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT request_hash, response FROM refunds WHERE program_id = $1 AND order_id = $2 AND refund_id = $3",
    )
    .bind(&input.program_id)
    .bind(&input.order_id)
    .bind(&input.refund_id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((hash, response)) = existing {
        if hash != input.fingerprint {
            return Err(ServiceError::precondition(format!(
                "refund {} of order {} was already recorded with other parameters",
                input.refund_id, input.order_id
            )));
        }
        return pb::RecordRefundResponse::decode(response.as_slice())
            .map_err(ServiceError::internal);
    }
    // read under the lock: an earlier refund may have moved it
    let (earn_entry, local_day, order_points, reversed_before, stored): (
        String,
        String,
        i64,
        i64,
        Vec<u8>,
    ) = sqlx::query_as(
        "SELECT entry_id, local_day, points, reversed_points, response FROM purchases \
         WHERE program_id = $1 AND order_id = $2",
    )
    .bind(&input.program_id)
    .bind(&input.order_id)
    .fetch_one(&mut **tx)
    .await?;
    let lines: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT line_id, amount_minor, points, refunded_minor, reversed_points FROM purchase_lines \
         WHERE program_id = $1 AND order_id = $2 ORDER BY line_id",
    )
    .bind(&input.program_id)
    .bind(&input.order_id)
    .fetch_all(&mut **tx)
    .await?;
    let states: Vec<LineState> = lines
        .into_iter()
        .map(
            |(line_id, amount_minor, points, refunded_minor, reversed_points)| LineState {
                line_id,
                amount_minor,
                points,
                refunded_minor,
                reversed_points,
            },
        )
        .collect();
    let plan = plan_refund(&states, &input.ask)?;
    let policy = ledger_policy::load(&mut **tx, &input.program_id).await?;
    let negative_allowed = policy.clawback == Clawback::NegativeBalance;
    let available = balance_row(tx, &input.program_id, &member_id)
        .await?
        .available;
    // the order's own lot: (lot id, remaining, released)
    let own_lot: Option<(String, i64, i64)> = sqlx::query_as(
        "SELECT lot_id, remaining, released FROM lots WHERE entry_id = $1 AND program_id = $2",
    )
    .bind(&earn_entry)
    .bind(&input.program_id)
    .fetch_optional(&mut **tx)
    .await?;
    let pending_in_lot = own_lot.as_ref().filter(|l| l.2 == 0).map_or(0, |l| l.1);
    let claw = plan_clawback(plan.points, pending_in_lot, available, negative_allowed);
    let entry_id = ledger::new_id();
    let mut taken = 0;
    if let Some((lot_id, remaining, released)) = &own_lot {
        let from_lot = if *released == 0 {
            claw.from_pending
        } else {
            claw.from_available.min(*remaining)
        };
        if from_lot > 0 {
            sqlx::query("UPDATE lots SET remaining = remaining - $1 WHERE lot_id = $2")
                .bind(from_lot)
                .bind(lot_id)
                .execute(&mut **tx)
                .await?;
            ledger::record_use(tx, &entry_id, lot_id, from_lot).await?;
            if *released != 0 {
                taken = from_lot;
            }
        }
    }
    if claw.from_available > taken {
        ledger::consume_lots(
            tx,
            &input.program_id,
            &member_id,
            &entry_id,
            claw.from_available - taken,
        )
        .await?;
    }
    let deltas = Deltas {
        available: -(claw.from_available + claw.debt),
        pending: -claw.from_pending,
        lifetime: -plan.points,
    };
    let cause = Cause {
        order_id: Some(input.order_id.clone()),
        reason: Some(if claw.written_off > 0 {
            format!("refund; {} already spent, written off", claw.written_off)
        } else {
            "refund".to_owned()
        }),
        reference: Some(format!("refund:{}", input.refund_id)),
        ..Cause::default()
    };
    let reversed_entry = if plan.points > 0 {
        ledger::append_entry(
            tx,
            &mut head,
            &entry_id,
            &member_id,
            EntryKind::Reverse,
            &deltas,
            &cause,
            None,
        )
        .await?;
        let moved = claw.from_available + claw.debt + claw.from_pending;
        if moved > 0 {
            let event = new_envelope(
                PRODUCER,
                &input.program_id,
                &member_id,
                Payload::PointsRedeemed(ev::PointsRedeemed {
                    entry_id: entry_id.clone(),
                    points: moved,
                    reference: cause.summary(),
                    entry_kind: EntryKind::Reverse.as_str().to_owned(),
                }),
            );
            outbox::append(tx, &event).await?;
        }
        entry_id
    } else {
        String::new()
    };
    for l in &plan.lines {
        sqlx::query(
            "UPDATE purchase_lines SET refunded_minor = refunded_minor + $1, reversed_points = reversed_points + $2 \
             WHERE program_id = $3 AND order_id = $4 AND line_id = $5",
        )
        .bind(l.refunded_minor)
        .bind(l.reversed_points)
        .bind(&input.program_id)
        .bind(&input.order_id)
        .bind(&l.line_id)
        .execute(&mut **tx)
        .await?;
    }
    release_cap_usage(
        tx,
        &input.program_id,
        &member_id,
        &local_day,
        &stored,
        CapShare {
            order_points,
            reversed_before,
            reversed_now: plan.points,
        },
    )
    .await?;
    sqlx::query(
        "UPDATE purchases SET refunded_minor = refunded_minor + $1, reversed_points = reversed_points + $2 \
         WHERE program_id = $3 AND order_id = $4",
    )
    .bind(plan.refunded_minor)
    .bind(plan.points)
    .bind(&input.program_id)
    .bind(&input.order_id)
    .execute(&mut **tx)
    .await?;
    let balance = ledger_queries::balance_in_tx(tx, &input.program_id, &member_id, now).await?;
    let response = pb::RecordRefundResponse {
        entry_id: reversed_entry,
        points_reversed: plan.points,
        points_written_off: claw.written_off,
        balance: Some(balance),
    };
    sqlx::query(
        "INSERT INTO refunds (program_id, order_id, refund_id, request_hash, response, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&input.program_id)
    .bind(&input.order_id)
    .bind(&input.refund_id)
    .bind(&input.fingerprint)
    .bind(response.encode_to_vec())
    .bind(now_micros())
    .execute(&mut **tx)
    .await?;
    if emit {
        let currency = input
            .currency
            .clone()
            .unwrap_or_else(|| policy.currency.clone());
        let event = new_envelope(
            PRODUCER,
            &input.program_id,
            &member_id,
            Payload::OrderRefunded(ev::OrderRefunded {
                order_id: input.order_id.clone(),
                refund_id: input.refund_id.clone(),
                amount: Some(loyalty_proto::common::Money {
                    minor_units: plan.refunded_minor,
                    currency,
                }),
                lines: plan
                    .lines
                    .iter()
                    .map(|l| ev::OrderLine {
                        line_id: l.line_id.clone(),
                        amount: Some(loyalty_proto::common::Money {
                            minor_units: l.refunded_minor,
                            currency: input.currency.clone().unwrap_or_default(),
                        }),
                        ..ev::OrderLine::default()
                    })
                    .collect(),
                refunded_at: Some(to_timestamp(input.refunded_at)),
            }),
        );
        outbox::append(tx, &event).await?;
    }
    Ok(response)
}

/// How much of an order's earning a refund reverses.
#[derive(Debug, Clone, Copy)]
struct CapShare {
    order_points: i64,
    reversed_before: i64,
    reversed_now: i64,
}

/// Gives back the cap usage (per member, rule and local day: `rule_awards`)
/// that a refunded order consumed, in proportion to the points the refund
/// reverses, so that a later purchase can earn under those caps again. The
/// shares are cumulative (what is given back after all refunds of a fully
/// refunded order is exactly what the order used), so rounding never
/// drifts. Orders recorded before their local day was stored give nothing
/// back (their day is unknown).
async fn release_cap_usage(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    local_day: &str,
    stored_response: &[u8],
    share: CapShare,
) -> Result<(), ServiceError> {
    if local_day.is_empty() || share.order_points <= 0 || share.reversed_now <= 0 {
        return Ok(());
    }
    let order =
        pb::RecordPurchaseResponse::decode(stored_response).map_err(ServiceError::internal)?;
    let part = |points: i64, reversed: i64| {
        let p = i128::from(points) * i128::from(reversed.min(share.order_points))
            / i128::from(share.order_points);
        i64::try_from(p).unwrap_or(points)
    };
    // the same applications record_awards counted: rules, not base or tier
    for a in order
        .applications
        .iter()
        .filter(|a| a.rule_version > 0 && a.points > 0)
    {
        let give = part(a.points, share.reversed_before + share.reversed_now)
            - part(a.points, share.reversed_before);
        if give <= 0 {
            continue;
        }
        sqlx::query(
            "UPDATE rule_awards SET points = CASE WHEN points > $1 THEN points - $1 ELSE 0 END \
             WHERE program_id = $2 AND member_id = $3 AND rule_id = $4 AND local_day = $5",
        )
        .bind(give)
        .bind(program_id)
        .bind(member_id)
        .bind(&a.rule_id)
        .bind(local_day)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Lot terms of points available at once under the program's policy.
pub(crate) async fn immediate_terms(
    tx: &mut Tx,
    program_id: &str,
    now: DateTime<Utc>,
) -> Result<LotTerms, ServiceError> {
    Ok(ledger_policy::load(&mut **tx, program_id)
        .await?
        .immediate_lot(now))
}
