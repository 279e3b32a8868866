//! The tier evaluation job: applies reviews at members' evaluation dates
//! (keep, or down one level at most). A member is due from the local
//! midnight that starts its evaluation date in the program's zone, so a run
//! reviews, per program, exactly the members whose date has arrived there.
//! The scheduled run walks every program; a run asked for by a program's
//! administrator walks that program only. Due members are taken in id
//! order, in chunks; the [`Cursor`] is checkpointed with each chunk, so a
//! run resumes where it stopped and never holds more than one chunk in
//! memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use loyalty_common::ServiceError;
use loyalty_common::calendar::{from_micros, to_micros};
use loyalty_common::db::Tx;
use loyalty_common::jobs::{ChunkOutcome, Job, RunState, Schedule};
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

/// How often the scheduled run looks for due members: every program's
/// members are reviewed at most this long after their local day starts,
/// whatever the program's zone (a run that finds nobody due is one indexed
/// query per program).
pub const EVERY: Duration = Duration::from_secs(15 * 60);

/// The schedule of the scheduled run.
pub fn schedule() -> Schedule {
    Schedule::Every(EVERY)
}

/// Reviews due members; see the module doc.
pub struct TierEvaluationJob {
    rt: Arc<ServiceRuntime>,
    only: Option<String>,
}

impl TierEvaluationJob {
    /// Every program (the scheduled run).
    pub fn new(rt: Arc<ServiceRuntime>) -> Self {
        Self { rt, only: None }
    }

    /// One program (RunTierEvaluation of its administrator).
    pub fn for_program(rt: Arc<ServiceRuntime>, program_id: &str) -> Self {
        Self {
            rt,
            only: Some(program_id.to_owned()),
        }
    }
}

/// Where a run is: the program, the last member reviewed in it, and
/// whether the run is limited to that program. Encoded as
/// `<program_id>\n<member_id>` (every program) or with a third line
/// `only`. A run resumes by its own cursor, whichever job value resumes it
/// (all runs share one lease, so two never review a member concurrently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub program_id: String,
    pub after: String,
    pub only: bool,
}

impl Cursor {
    pub fn encode(&self) -> String {
        if self.only {
            format!("{}\n{}\nonly", self.program_id, self.after)
        } else {
            format!("{}\n{}", self.program_id, self.after)
        }
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.split('\n');
        let program_id = parts.next()?.to_owned();
        let after = parts.next()?.to_owned();
        let only = match parts.next() {
            None => false,
            Some("only") => true,
            Some(_) => return None,
        };
        (!program_id.is_empty()).then_some(Self {
            program_id,
            after,
            only,
        })
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
        let cursor = match (run.cursor.as_deref(), &self.only) {
            (Some(c), _) => Cursor::decode(c)
                .ok_or_else(|| ServiceError::internal(format!("bad {NAME} cursor {c:?}")))?,
            (None, Some(p)) => Cursor {
                program_id: p.clone(),
                after: String::new(),
                only: true,
            },
            (None, None) => match programs::next_program_after(tx, "").await? {
                Some(p) => Cursor {
                    program_id: p,
                    after: String::new(),
                    only: false,
                },
                None => {
                    return Ok(ChunkOutcome {
                        next_cursor: None,
                        processed: 0,
                    });
                }
            },
        };
        let program_id = cursor.program_id.clone();
        let program = programs::require(tx, &program_id).await?;
        let due = due_members(tx, &program_id, &cursor.after, now).await?;
        let Some(last) = due.last().map(|m| m.member_id.clone()) else {
            // this program is done: the next one, or the end of the run
            let next = if cursor.only {
                None
            } else {
                programs::next_program_after(tx, &program_id).await?
            };
            return Ok(ChunkOutcome {
                next_cursor: next.map(|p| {
                    Cursor {
                        program_id: p,
                        after: String::new(),
                        only: false,
                    }
                    .encode()
                }),
                processed: 0,
            });
        };
        let after = cursor.after.clone();
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
        self.rt.outbox.notify();
        Ok(ChunkOutcome {
            next_cursor: Some(
                Cursor {
                    after: last,
                    ..cursor
                }
                .encode(),
            ),
            processed: due.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn cursors_round_trip_and_keep_their_scope() {
        for only in [false, true] {
            let c = Cursor {
                program_id: "p1".into(),
                after: "m-9".into(),
                only,
            };
            assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
        // cursors written before scoped runs existed read as every program
        assert_eq!(
            Cursor::decode("p1\n"),
            Some(Cursor {
                program_id: "p1".into(),
                after: String::new(),
                only: false
            })
        );
        assert_eq!(Cursor::decode("p1"), None);
        assert_eq!(Cursor::decode("p1\nm\nother"), None);
    }
}
