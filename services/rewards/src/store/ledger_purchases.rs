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
use loyalty_common::db::{Tx, now_micros};
use loyalty_common::events::{new_envelope, outbox};
use loyalty_common::money::Money;
use loyalty_proto::events as ev;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::rewards::v1 as pb;
use prost::Message;

use super::ledger::{
    self, Cause, Deltas, EntryKind, LotTerms, PRODUCER, Posting, balance_row, lock_lane,
};
use super::{ledger_policy, ledger_queries, rules_cache, rules_member};
use crate::domain::earning_rules::{Evaluation, Line, PurchaseFacts, evaluate_purchase};
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
    let mut member = rules_member::load(tx, &input.program_id, &input.member_id).await?;
    member.purchase_count += 1;
    evaluate_for(tx, &terms, input, &member).await
}

/// Evaluates a purchase given the program's terms and the member's state
/// counting this purchase.
async fn evaluate_for(
    tx: &mut Tx,
    terms: &rules_cache::ProgramTerms,
    input: &PurchaseInput,
    member: &rules_member::MemberState,
) -> Result<Evaluation, ServiceError> {
    let policy = &terms.policy;
    check_currency(policy, input)?;
    let local_date = policy.tz.local_date(input.purchased_at);
    let usage = if terms.capped {
        rules_member::cap_usage(tx, &input.program_id, &input.member_id, local_date).await?
    } else {
        crate::domain::earning_rules::CapUsage::default()
    };
    let facts = PurchaseFacts {
        lines: input.lines.clone(),
        channel: input.channel.clone(),
        store_id: input.store_id.clone(),
        purchased_at: input.purchased_at,
        local_date,
        tier: member.tier.clone(),
        multiplier_bp: member.multiplier_bp,
        ordinal: u32::try_from(member.purchase_count).unwrap_or(u32::MAX),
        base_points_per_unit: policy.base_points_per_unit,
        unit_minor: policy.unit_minor,
        rounding: policy.rounding,
    };
    Ok(evaluate_purchase(&terms.rules, &facts, &usage))
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
    // the member's lane head orders every writer of the member: a
    // concurrent duplicate of this order waits here and then sees it
    // recorded (a duplicate order id for another member, in another lane,
    // is caught by the insert below)
    let mut head = lock_lane(tx, &input.program_id, &input.member_id).await?;
    let existing: Option<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT request_hash, response FROM purchases WHERE program_id = $1 AND order_id = $2",
    )
    .bind(&input.program_id)
    .bind(&input.order_id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((hash, response)) = existing {
        if hash != input.fingerprint {
            return Err(ServiceError::precondition(format!(
                "order {} was already recorded with other parameters",
                input.order_id
            )));
        }
        return pb::RecordPurchaseResponse::decode(response.as_slice())
            .map_err(ServiceError::internal);
    }
    let program = rules_cache::terms(tx, db, &input.program_id).await?;
    check_currency(&program.policy, input)?;
    let member =
        rules_member::count_purchase_returning(tx, &input.program_id, &input.member_id).await?;
    let eval = evaluate_for(tx, &program, input, &member).await?;
    let policy = &program.policy;
    let terms = policy.purchase_lot(input.purchased_at, now);
    // PointsEarned and PurchaseCompleted go to the outbox in one statement
    let mut events = Vec::with_capacity(2);
    let entry_id = if eval.total > 0 {
        let posting = Posting {
            program_id: input.program_id.clone(),
            member_id: input.member_id.clone(),
            kind: EntryKind::Earn,
            points: eval.total,
            cause: Cause {
                rules: eval.rule_refs(),
                order_id: Some(input.order_id.clone()),
                ..Cause::default()
            },
        };
        let (entry, event) =
            ledger::credit_unannounced(tx, &mut head, &posting, &[(posting.points, terms)]).await?;
        events.push(event);
        entry.0
    } else {
        String::new()
    };
    let local_date = policy.tz.local_date(input.purchased_at);
    rules_member::record_awards(
        tx,
        &input.program_id,
        &input.member_id,
        local_date,
        &eval.applications,
    )
    .await?;
    let earned = eval.total > 0;
    let response = pb::RecordPurchaseResponse {
        entry_id: entry_id.clone(),
        points: eval.total,
        pending_until: terms.pending_until.filter(|_| earned).map(to_timestamp),
        expires_at: terms.expires_at.filter(|_| earned).map(to_timestamp),
        applications: applications_to_proto(&eval),
        lines: lines_to_proto(&eval),
    };
    let recorded = insert_purchase(
        tx,
        input,
        &response,
        &eval,
        &local_date.format("%Y-%m-%d").to_string(),
    )
    .await?;
    if !recorded {
        // the same order id was just recorded for another member
        return Err(ServiceError::precondition(format!(
            "order {} was already recorded with other parameters",
            input.order_id
        )));
    }
    if emit {
        events.push(new_envelope(
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
        ));
    }
    outbox::append_all(tx, &events).await?;
    Ok(response)
}

/// Stores the order and what each line earned: one statement on
/// PostgreSQL, two on SQLite. False when the order id is taken already.
async fn insert_purchase(
    tx: &mut Tx,
    input: &PurchaseInput,
    response: &pb::RecordPurchaseResponse,
    eval: &Evaluation,
    local_day: &str,
) -> Result<bool, ServiceError> {
    let purchase = "INSERT INTO purchases (program_id, order_id, member_id, request_hash, response, \
         amount_minor, points, entry_id, created_at, local_day) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (program_id, order_id) DO NOTHING";
    let postgres = ledger::is_postgres(tx);
    // the lines (a CTE named v) with their parameters from `first` on
    let lines = |first: usize| {
        (0..input.lines.len())
            .map(|i| {
                let n = 3 * i + first;
                format!(
                    "(${n}, CAST(${} AS BIGINT), CAST(${} AS BIGINT))",
                    n + 1,
                    n + 2
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let insert_lines = "INSERT INTO purchase_lines (program_id, order_id, line_id, amount_minor, points) \
         SELECT $1, $2, v.line_id, v.amount_minor, v.points FROM v";
    let sql = if postgres {
        format!(
            "WITH p AS ({purchase} RETURNING order_id), \
             v (line_id, amount_minor, points) AS (VALUES {}) {insert_lines} CROSS JOIN p",
            lines(11)
        )
    } else {
        purchase.to_owned()
    };
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&input.program_id)
        .bind(&input.order_id)
        .bind(&input.member_id)
        .bind(&input.fingerprint)
        .bind(response.encode_to_vec())
        .bind(input.amount.minor)
        .bind(eval.total)
        .bind(&response.entry_id)
        .bind(now_micros())
        .bind(local_day);
    if postgres {
        for (line, (_, points)) in input.lines.iter().zip(&eval.lines) {
            q = q.bind(&line.line_id).bind(line.amount_minor).bind(*points);
        }
        // no line row means no order row: the order id was taken
        return Ok(q.execute(&mut **tx).await?.rows_affected() > 0);
    }
    if q.execute(&mut **tx).await?.rows_affected() == 0 {
        return Ok(false);
    }
    let sql = format!(
        "WITH v (line_id, amount_minor, points) AS (VALUES {}) {insert_lines}",
        lines(3)
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&input.program_id)
        .bind(&input.order_id);
    for (line, (_, points)) in input.lines.iter().zip(&eval.lines) {
        q = q.bind(&line.line_id).bind(line.amount_minor).bind(*points);
    }
    q.execute(&mut **tx).await?;
    Ok(true)
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
