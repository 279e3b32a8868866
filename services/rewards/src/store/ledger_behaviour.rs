//! Points for behaviours (check-in, review, survey, referral, birthday,
//! profile completed) and campaign grants: each occurrence is rewarded once
//! (keyed by its reference), through the behaviour rules in force.

use chrono::{DateTime, Utc};
use loyalty_common::ServiceError;
use loyalty_common::db::{Tx, now_micros};
use loyalty_common::events::{new_envelope, outbox};
use loyalty_proto::events::CheckedIn;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::rewards::v1 as pb;
use prost::Message;

use super::ledger::{self, Cause, EntryId, EntryKind, PRODUCER, Posting, lock_lane};
use super::{ledger_policy, ledger_purchases, rules, rules_member};
use crate::domain::earning_rules::{Behaviour, BehaviourFacts, evaluate_behaviour, next_streak};

/// The stored answer for (behaviour, reference), if it was rewarded before.
async fn recorded(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    kind: &str,
    reference: &str,
) -> Result<Option<Vec<u8>>, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT response FROM behaviour_awards WHERE program_id = $1 AND member_id = $2 AND behaviour = $3 AND reference = $4",
    )
    .bind(program_id)
    .bind(member_id)
    .bind(kind)
    .bind(reference)
    .fetch_optional(&mut **tx)
    .await?)
}

async fn remember(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    kind: &str,
    reference: &str,
    response: &[u8],
) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO behaviour_awards (program_id, member_id, behaviour, reference, response, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(program_id)
    .bind(member_id)
    .bind(kind)
    .bind(reference)
    .bind(response)
    .bind(now_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Rewards a behaviour occurrence once per `reference` through the
/// behaviour rules in force (for the rewards service's own modules too:
/// e.g. a qualified referral). A repeated reference answers the first
/// result with `replayed` set.
pub(crate) async fn award_behaviour(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    behaviour: Behaviour,
    reference: &str,
    now: DateTime<Utc>,
) -> Result<pb::RecordActivityResponse, ServiceError> {
    lock_lane(tx, program_id, member_id).await?;
    if let Some(bytes) = recorded(tx, program_id, member_id, behaviour.as_str(), reference).await? {
        let mut r =
            pb::RecordActivityResponse::decode(bytes.as_slice()).map_err(ServiceError::internal)?;
        r.replayed = true;
        return Ok(r);
    }
    let (eval, entry) = award(tx, program_id, member_id, behaviour, 0, now).await?;
    let response = pb::RecordActivityResponse {
        entry_id: entry.0,
        points: eval.total,
        replayed: false,
        applications: ledger_purchases::applications_to_proto(&eval),
    };
    remember(
        tx,
        program_id,
        member_id,
        behaviour.as_str(),
        reference,
        &response.encode_to_vec(),
    )
    .await?;
    Ok(response)
}

async fn award(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    behaviour: Behaviour,
    streak_days: u32,
    now: DateTime<Utc>,
) -> Result<(crate::domain::earning_rules::Evaluation, EntryId), ServiceError> {
    let policy = ledger_policy::load(&mut **tx, program_id).await?;
    let today = policy.tz.local_date(now);
    let rules = rules::in_force(&mut **tx, program_id).await?;
    let usage = rules_member::cap_usage(tx, program_id, member_id, today).await?;
    let eval = evaluate_behaviour(
        &rules,
        &BehaviourFacts {
            behaviour,
            at: now,
            streak_days,
        },
        &usage,
    );
    let entry = if eval.total > 0 {
        let posting = Posting {
            program_id: program_id.to_owned(),
            member_id: member_id.to_owned(),
            kind: EntryKind::Earn,
            points: eval.total,
            cause: Cause {
                rules: eval.rule_refs(),
                reference: Some(format!("behaviour:{}", behaviour.as_str())),
                ..Cause::default()
            },
        };
        ledger::credit(tx, &posting, policy.immediate_lot(now)).await?
    } else {
        EntryId::default()
    };
    rules_member::record_awards(tx, program_id, member_id, today, &eval.applications).await?;
    Ok((eval, entry))
}

/// The daily check-in: once per local day; extends or restarts the streak,
/// awards the check-in rules, announces CheckedIn.
pub(crate) async fn check_in(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    now: DateTime<Utc>,
) -> Result<pb::CheckInResponse, ServiceError> {
    lock_lane(tx, program_id, member_id).await?;
    let policy = ledger_policy::load(&mut **tx, program_id).await?;
    let today = policy.tz.local_date(now);
    let state = rules_member::load(tx, program_id, member_id).await?;
    let Some(streak) = next_streak(state.last_check_in, state.streak_days, today) else {
        return Ok(pb::CheckInResponse {
            local_date: today.format("%Y-%m-%d").to_string(),
            streak_days: state.streak_days as i32,
            points: 0,
            already_checked_in: true,
            applications: Vec::new(),
        });
    };
    rules_member::set_check_in(tx, program_id, member_id, today, streak).await?;
    let (eval, _) = award(tx, program_id, member_id, Behaviour::CheckIn, streak, now).await?;
    let local_date = today.format("%Y-%m-%d").to_string();
    let event = new_envelope(
        PRODUCER,
        program_id,
        member_id,
        Payload::CheckedIn(CheckedIn {
            local_date: local_date.clone(),
            streak_days: streak as i32,
        }),
    );
    outbox::append(tx, &event).await?;
    Ok(pb::CheckInResponse {
        local_date,
        streak_days: streak as i32,
        points: eval.total,
        already_checked_in: false,
        applications: ledger_purchases::applications_to_proto(&eval),
    })
}

/// A campaign's bonus points, once per action id.
pub(crate) async fn grant_campaign_points(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    campaign_id: &str,
    action_id: &str,
    points: i64,
    now: DateTime<Utc>,
) -> Result<(), ServiceError> {
    lock_lane(tx, program_id, member_id).await?;
    if recorded(tx, program_id, member_id, "campaign", action_id)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let terms = ledger_purchases::immediate_terms(tx, program_id, now).await?;
    let posting = Posting {
        program_id: program_id.to_owned(),
        member_id: member_id.to_owned(),
        kind: EntryKind::Earn,
        points,
        cause: Cause {
            reference: Some(format!("campaign:{campaign_id}:{action_id}")),
            ..Cause::default()
        },
    };
    let entry = ledger::credit(tx, &posting, terms).await?;
    remember(
        tx,
        program_id,
        member_id,
        "campaign",
        action_id,
        entry.0.as_bytes(),
    )
    .await?;
    Ok(())
}
