//! The tier evaluation job: applies reviews at members' evaluation dates
//! (keep, or down one level at most). It walks programs, then each
//! program's due members in id order, in chunks; the cursor
//! `<program_id>\n<member_id>` is checkpointed with each chunk, so a run
//! resumes where it stopped and never holds more than one chunk in memory.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use loyalty_common::ServiceError;
use loyalty_common::calendar::{from_micros, to_micros};
use loyalty_common::db::Tx;
use loyalty_common::jobs::{ChunkOutcome, Job, RunState};
use loyalty_common::runtime::ServiceRuntime;

use crate::domain::tiers::{
    Activity, Review, next_evaluation, qualifying_value, review, review_window,
};
use crate::store::members::{self, COLUMNS, MemberRecord, from_row};
use crate::store::{activity, programs};
use crate::tiering::{EVALUATION_DOWNGRADE, EVALUATION_UPGRADE, TierMove, change_tier};

/// The job's name (lease and progress row).
pub const NAME: &str = "tier-evaluation";
/// Members reviewed per chunk (one transaction).
pub const CHUNK: i64 = 500;

/// Reviews due members; see the module doc.
pub struct TierEvaluationJob {
    rt: Arc<ServiceRuntime>,
}

impl TierEvaluationJob {
    pub fn new(rt: Arc<ServiceRuntime>) -> Self {
        Self { rt }
    }
}

fn split(cursor: Option<&str>) -> (String, String) {
    match cursor.and_then(|c| c.split_once('\n')) {
        Some((p, m)) => (p.to_owned(), m.to_owned()),
        None => (String::new(), String::new()),
    }
}

async fn due_members(
    tx: &mut Tx,
    program_id: &str,
    after: &str,
    now: DateTime<Utc>,
) -> Result<Vec<MemberRecord>, ServiceError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM members WHERE program_id = $1 AND member_id > $2 AND next_evaluation_at <= $3 \
         AND status IN ('active', 'suspended') ORDER BY member_id LIMIT $4"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(program_id)
        .bind(after)
        .bind(to_micros(now))
        .bind(CHUNK)
        .fetch_all(&mut **tx)
        .await?;
    rows.iter().map(from_row).collect()
}

#[async_trait::async_trait]
impl Job for TierEvaluationJob {
    fn name(&self) -> &str {
        NAME
    }

    async fn run_chunk(&self, tx: &mut Tx, run: &RunState) -> Result<ChunkOutcome, ServiceError> {
        let now = self.rt.clock.now();
        let (mut program_id, mut after) = split(run.cursor.as_deref());
        if program_id.is_empty() {
            match programs::next_program_after(tx, "").await? {
                Some(p) => program_id = p,
                None => {
                    return Ok(ChunkOutcome {
                        next_cursor: None,
                        processed: 0,
                    });
                }
            }
        }
        let program = programs::require(tx, &program_id).await?;
        let due = due_members(tx, &program_id, &after, now).await?;
        let Some(last) = due.last().map(|m| m.member_id.clone()) else {
            // this program is done: the next one, or the end of the run
            let next = programs::next_program_after(tx, &program_id).await?;
            return Ok(ChunkOutcome {
                next_cursor: next.map(|p| format!("{p}\n")),
                processed: 0,
            });
        };
        let rules = &program.rules;
        // every due member's review window, and the activity of the chunk
        let windows: Vec<(DateTime<Utc>, DateTime<Utc>)> = due
            .iter()
            .map(|m| review_window(rules, &program.tz, from_micros(m.next_evaluation_at)))
            .collect();
        let earliest = windows.iter().map(|w| w.0).min().unwrap_or(now);
        let mut acts: HashMap<String, Vec<Activity>> = HashMap::new();
        for (m, a) in activity::of_member_range(tx, &program_id, &after, &last, earliest).await? {
            acts.entry(m).or_default().push(a);
        }
        let mut keeps = Vec::with_capacity(due.len());
        for (m, (from, to)) in due.iter().zip(windows) {
            let value = qualifying_value(
                rules.metric,
                acts.get(&m.member_id).into_iter().flatten(),
                from,
                to,
            );
            let current = rules.level_or_base(&m.tier_code);
            // the next review counts from the date that was due, so a late
            // run does not shift a member's calendar
            let mut next = next_evaluation(rules.evaluation, &program.tz, to);
            if next <= now {
                next = next_evaluation(rules.evaluation, &program.tz, now);
            }
            match review(&rules.tiers, current, value) {
                Review::Keep(_) => keeps.push((m.member_id.clone(), to_micros(next))),
                Review::Downgrade(level) => {
                    let to = TierMove {
                        level,
                        reason: EVALUATION_DOWNGRADE,
                        value,
                        at: now,
                        next_evaluation_at: next,
                    };
                    change_tier(tx, &program, m, &to).await?;
                }
                Review::Upgrade(level) => {
                    let to = TierMove {
                        level,
                        reason: EVALUATION_UPGRADE,
                        value,
                        at: now,
                        next_evaluation_at: next,
                    };
                    change_tier(tx, &program, m, &to).await?;
                }
            }
        }
        members::set_next_evaluations(tx, &keeps).await?;
        after = last;
        self.rt.outbox.notify();
        Ok(ChunkOutcome {
            next_cursor: Some(format!("{program_id}\n{after}")),
            processed: due.len() as u64,
        })
    }
}
