//! gRPC adapter of the points core: decode, check the caller, run the
//! storage/domain work in one transaction, encode. Write calls commit, then
//! wake the outbox relay.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use loyalty_common::ServiceError;
use loyalty_common::auth::{self, Principal, Role};
use loyalty_common::calendar::to_timestamp;
use loyalty_common::group_commit::{BulkWork, GroupCommitSettings, GroupCommitter, bulk_work};
use loyalty_common::idempotency::run_idempotent;
use loyalty_common::jobs::{self, JobRunner};
use loyalty_common::paging::{self, Page, PageLimits};
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::server::GrpcServer;
use loyalty_proto::common::PageRequest;
use loyalty_proto::loyalty::rewards::v1 as pb;
use loyalty_proto::loyalty::rewards::v1::rewards_service_server::{
    RewardsService, RewardsServiceServer,
};
use tonic::{Request, Response, Status};

use crate::domain::earning_rules::parse::behaviour_from_proto;
use crate::domain::earning_rules::{Behaviour, rule_from_proto};
use crate::domain::expiry::PointsPolicy;
use crate::jobs::{PendingRelease, PointsExpiry, Scope};
use crate::store::ledger::{self, Cause, EntryKind, LotTerms, Posting};
use crate::store::{
    ledger_behaviour, ledger_lanes, ledger_policy, ledger_purchases, ledger_queries, rules,
    rules_cache,
};
use crate::validation::require_id as check_id;

/// Adds every gRPC service of the rewards service to `server`.
pub(crate) fn register(rt: Arc<ServiceRuntime>, server: &mut GrpcServer) {
    crate::engagement::register(&rt, server);
    // RecordPurchase coalesces concurrent purchases into group commits, by
    // default one writer per ledger lane of a program (a lane's writes are
    // ordered by its head anyway), so the lanes of a program commit in
    // parallel, each on its own connection. A batch locks all its lanes at
    // once in ascending order, like every writer holding several lanes, so
    // fewer writers than lanes cannot deadlock either.
    // LOYALTY_REWARDS_GROUP_COMMIT=off gives each call its own transaction
    // (for comparisons in benchmarks); LOYALTY_REWARDS_PURCHASE_WRITERS sets
    // the writers (connections committing purchases in parallel).
    let writers = std::env::var(WRITERS_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|w| *w > 0)
        .unwrap_or(ledger_lanes::DEFAULT_LANES as usize);
    let committer = (std::env::var(GROUP_COMMIT_ENV).as_deref() != Ok("off")).then(|| {
        Arc::new(GroupCommitter::new(
            rt.db.clone(),
            GroupCommitSettings {
                writers,
                ..GroupCommitSettings::default()
            },
        ))
    });
    let purchases = purchase_work(&rt);
    server.add_service(RewardsServiceServer::new(RewardsApi {
        rt,
        committer,
        purchases,
    }));
}

/// Set to `off` to give every RecordPurchase its own transaction.
pub const GROUP_COMMIT_ENV: &str = "LOYALTY_REWARDS_GROUP_COMMIT";
/// Writers committing purchases in parallel on PostgreSQL (default: one per
/// ledger lane, 8).
pub const WRITERS_ENV: &str = "LOYALTY_REWARDS_PURCHASE_WRITERS";

const LIMITS: PageLimits = crate::validation::PAGE_LIMITS;
const MAX_POINTS: i64 = 1_000_000_000;

struct RewardsApi {
    rt: Arc<ServiceRuntime>,
    /// None when group commit is switched off (one transaction per call).
    committer: Option<Arc<GroupCommitter>>,
    /// Records the purchases a batch holds together (set-based writes).
    purchases: BulkWork<Arc<ledger_purchases::PurchaseInput>, pb::RecordPurchaseResponse>,
}

/// The bulk work of RecordPurchase in group commits: the purchases of a
/// batch are recorded together, "now" read once for them.
fn purchase_work(
    rt: &Arc<ServiceRuntime>,
) -> BulkWork<Arc<ledger_purchases::PurchaseInput>, pb::RecordPurchaseResponse> {
    let db = Arc::new(rt.db.url().as_str().to_owned());
    let clock = rt.clock.clone();
    bulk_work(move |tx, inputs| {
        let (db, now) = (db.clone(), clock.now());
        Box::pin(
            async move { ledger_purchases::record_purchases(tx, &db, inputs, now, true).await },
        )
    })
}

/// May act on a member's points: the member itself, staff who serve
/// members, backend systems.
fn act_for_member(p: &Principal, program_id: &str, member_id: &str) -> Result<(), ServiceError> {
    p.authorize_member(program_id, member_id)?;
    match p {
        Principal::Member { .. } => Ok(()),
        _ => p.require_role(
            program_id,
            &[Role::ProgramAdmin, Role::SupportAgent, Role::Backend],
        ),
    }
}

fn staff_subject(p: &Principal) -> String {
    match p {
        Principal::Staff { subject, .. } => subject.clone(),
        Principal::System { key_id, .. } => format!("system:{key_id}"),
        Principal::Member { member_id, .. } => format!("member:{member_id}"),
    }
}

fn check_points(field: &str, points: i64) -> Result<(), ServiceError> {
    if !(1..=MAX_POINTS).contains(&points) {
        return Err(ServiceError::invalid(
            field,
            format!("must be within 1..={MAX_POINTS}"),
        ));
    }
    Ok(())
}

fn page(req: Option<&PageRequest>, fingerprint: &str) -> Result<Page, ServiceError> {
    let r = req.cloned().unwrap_or_default();
    paging::parse(r.page_size, &r.page_token, LIMITS, fingerprint)
}

use crate::engagement::support::page_response;

impl RewardsApi {
    fn now(&self) -> DateTime<Utc> {
        self.rt.clock.now()
    }

    /// This database, as the key of the program terms cache.
    fn db_key(&self) -> &str {
        self.rt.db.url().as_str()
    }

    async fn policy(&self, program_id: &str) -> Result<PointsPolicy, ServiceError> {
        ledger_policy::load(self.rt.db.pool(), program_id).await
    }

    /// Runs a lifecycle job for `program_id` only (the scheduled runs cover
    /// every program).
    async fn run_job(
        &self,
        program_id: &str,
        job: i32,
    ) -> Result<pb::RunLifecycleJobResponse, ServiceError> {
        let runner = JobRunner::new(self.rt.db.clone());
        let scope = Scope::program(program_id);
        let report = match lifecycle_job(job)? {
            LifecycleJob::Release => {
                runner
                    .trigger(&PendingRelease::new(self.rt.clone(), scope))
                    .await?
            }
            LifecycleJob::Expiry => {
                runner
                    .trigger(&PointsExpiry::new(self.rt.clone(), scope))
                    .await?
            }
        };
        self.rt.outbox.notify();
        Ok(
            report.map_or_else(pb::RunLifecycleJobResponse::default, |r| {
                pb::RunLifecycleJobResponse {
                    ran: true,
                    run_key: r.run_key,
                    processed: i64::try_from(r.processed).unwrap_or(i64::MAX),
                }
            }),
        )
    }
}

enum LifecycleJob {
    Release,
    Expiry,
}

fn lifecycle_job(job: i32) -> Result<LifecycleJob, ServiceError> {
    match pb::LifecycleJob::try_from(job) {
        Ok(pb::LifecycleJob::PendingRelease) => Ok(LifecycleJob::Release),
        Ok(pb::LifecycleJob::Expiry) => Ok(LifecycleJob::Expiry),
        _ => Err(ServiceError::invalid(
            "job",
            "must be PENDING_RELEASE or EXPIRY",
        )),
    }
}

/// The name of the job runs triggered for `program_id`.
fn job_name(job: &LifecycleJob, program_id: &str) -> String {
    let base = match job {
        LifecycleJob::Release => PendingRelease::NAME,
        LifecycleJob::Expiry => PointsExpiry::NAME,
    };
    Scope::program(program_id).named(base).job_name().to_owned()
}

#[tonic::async_trait]
impl RewardsService for RewardsApi {
    async fn get_service_info(
        &self,
        request: Request<pb::GetServiceInfoRequest>,
    ) -> Result<Response<pb::GetServiceInfoResponse>, Status> {
        auth::principal(&request)?;
        let info = self.rt.service_info().await?;
        Ok(Response::new(pb::GetServiceInfoResponse {
            info: Some(info),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn set_program_policy(
        &self,
        request: Request<pb::SetProgramPolicyRequest>,
    ) -> Result<Response<pb::SetProgramPolicyResponse>, Status> {
        let p = auth::principal(&request)?;
        let proto = request.get_ref().policy.clone().unwrap_or_default();
        p.require_role(&proto.program_id, &[Role::ProgramAdmin])?;
        let policy = PointsPolicy::from_proto(&proto)?;
        let mut tx = self.rt.db.begin().await.map_err(ServiceError::from)?;
        let stored = ledger_policy::save(&mut tx, &policy).await?;
        tx.commit().await.map_err(ServiceError::from)?;
        rules_cache::forget(self.db_key(), &stored.program_id);
        Ok(Response::new(pb::SetProgramPolicyResponse {
            policy: Some(stored.to_proto()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_program_policy(
        &self,
        request: Request<pb::GetProgramPolicyRequest>,
    ) -> Result<Response<pb::GetProgramPolicyResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        p.authorize_program(&req.program_id)?;
        let policy = self.policy(&req.program_id).await?;
        Ok(Response::new(pb::GetProgramPolicyResponse {
            policy: Some(policy.to_proto()),
        }))
    }

    #[tracing::instrument(skip_all, fields(member_id = %request.get_ref().member_id))]
    async fn record_purchase(
        &self,
        request: Request<pb::RecordPurchaseRequest>,
    ) -> Result<Response<pb::RecordPurchaseResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        p.require_role(&req.program_id, &[Role::Backend, Role::ProgramAdmin])?;
        let now = self.now();
        let input = Arc::new(ledger_purchases::purchase_input(
            &req.program_id,
            &req.member_id,
            req.purchase.as_ref(),
            now,
        )?);
        // answered after the batch's commit; a retried batch replays (the
        // order id is claimed inside the work)
        let response = if let Some(committer) = &self.committer {
            // each lane of a program on its own writer (see `register`)
            let lanes = ledger_lanes::cached_lane_count(&self.rt.db, &input.program_id).await?;
            let lane = ledger_lanes::lane_of(&input.member_id, lanes);
            let slot =
                (ledger_lanes::member_hash(&input.program_id) as u64).wrapping_add(lane as u64);
            committer.run_bulk_on(slot, &self.purchases, input).await?
        } else {
            let mut tx = self.rt.db.begin().await.map_err(ServiceError::from)?;
            let response =
                ledger_purchases::record_purchase(&mut tx, self.db_key(), &input, now, true)
                    .await?;
            tx.commit().await.map_err(ServiceError::from)?;
            response
        };
        self.rt.outbox.notify();
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn record_refund(
        &self,
        request: Request<pb::RecordRefundRequest>,
    ) -> Result<Response<pb::RecordRefundResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        p.require_role(
            &req.program_id,
            &[Role::Backend, Role::ProgramAdmin, Role::SupportAgent],
        )?;
        let now = self.now();
        let input = ledger_purchases::refund_input(req, now)?;
        let mut tx = self.rt.db.begin().await.map_err(ServiceError::from)?;
        let response = ledger_purchases::record_refund(&mut tx, &input, now, true).await?;
        tx.commit().await.map_err(ServiceError::from)?;
        self.rt.outbox.notify();
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(member_id = %request.get_ref().member_id))]
    async fn simulate_purchase(
        &self,
        request: Request<pb::SimulatePurchaseRequest>,
    ) -> Result<Response<pb::SimulatePurchaseResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        p.authorize_member(&req.program_id, &req.member_id)?;
        let now = self.now();
        let input = ledger_purchases::purchase_input(
            &req.program_id,
            &req.member_id,
            req.purchase.as_ref(),
            now,
        )?;
        // a transaction that is always rolled back: a dry run writes nothing
        let mut tx = self
            .rt
            .db
            .pool()
            .begin()
            .await
            .map_err(ServiceError::from)?;
        let eval = ledger_purchases::evaluate(&mut tx, self.db_key(), &input).await?;
        tx.rollback().await.map_err(ServiceError::from)?;
        Ok(Response::new(pb::SimulatePurchaseResponse {
            points: eval.total,
            applications: ledger_purchases::applications_to_proto(&eval),
            lines: eval
                .lines
                .iter()
                .map(|(id, p)| pb::LineEarning {
                    line_id: id.clone(),
                    points: *p,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(member_id = %request.get_ref().member_id))]
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        check_id("member_id", &req.member_id)?;
        p.authorize_member(&req.program_id, &req.member_id)?;
        let balance =
            ledger_queries::balance(&self.rt.db, &req.program_id, &req.member_id, self.now())
                .await?;
        Ok(Response::new(pb::GetBalanceResponse {
            balance: Some(balance),
        }))
    }

    #[tracing::instrument(skip_all, fields(member_id = %request.get_ref().member_id))]
    async fn list_ledger_entries(
        &self,
        request: Request<pb::ListLedgerEntriesRequest>,
    ) -> Result<Response<pb::ListLedgerEntriesResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        check_id("member_id", &req.member_id)?;
        p.authorize_member(&req.program_id, &req.member_id)?;
        let fingerprint = format!("entries/{}/{}", req.program_id, req.member_id);
        let page = page(req.page.as_ref(), &fingerprint)?;
        let rows =
            ledger_queries::entries(&self.rt.db, &req.program_id, &req.member_id, &page).await?;
        let (entries, token) =
            paging::finish(rows, &page, &fingerprint, |e| e.sequence.to_string());
        Ok(Response::new(pb::ListLedgerEntriesResponse {
            entries,
            page: Some(page_response(token)),
        }))
    }

    #[tracing::instrument(skip_all, fields(member_id = %request.get_ref().member_id))]
    async fn redeem(
        &self,
        request: Request<pb::RedeemRequest>,
    ) -> Result<Response<pb::RedeemResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref().clone();
        act_for_member(p, &req.program_id, &req.member_id)?;
        check_points("points", req.points)?;
        let now = self.now();
        let scope = format!("rewards.Redeem/{}", req.program_id);
        let key = req.idempotency_key.clone();
        let r = req.clone();
        let response = run_idempotent(&self.rt.db, &scope, &key, &req, move |tx| {
            Box::pin(async move {
                let posting = Posting {
                    program_id: r.program_id.clone(),
                    member_id: r.member_id.clone(),
                    kind: EntryKind::Redeem,
                    points: r.points,
                    cause: Cause {
                        reference: (!r.reference.is_empty()).then(|| r.reference.clone()),
                        ..Cause::default()
                    },
                };
                let outcome = ledger::debit(tx, &posting).await?;
                let balance =
                    ledger_queries::balance_in_tx(tx, &r.program_id, &r.member_id, now).await?;
                Ok(pb::RedeemResponse {
                    entry_id: outcome.entry_id.0,
                    lots: outcome
                        .lots
                        .into_iter()
                        .map(|l| pb::LotUse {
                            lot_id: l.lot_id,
                            points: l.points,
                        })
                        .collect(),
                    balance: Some(balance),
                })
            })
        })
        .await?;
        self.rt.outbox.notify();
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(member_id = %request.get_ref().member_id))]
    async fn transfer(
        &self,
        request: Request<pb::TransferRequest>,
    ) -> Result<Response<pb::TransferResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref().clone();
        act_for_member(p, &req.program_id, &req.member_id)?;
        check_id("to_member_id", &req.to_member_id)?;
        if req.to_member_id == req.member_id {
            return Err(ServiceError::invalid("to_member_id", "must be another member").into());
        }
        check_points("points", req.points)?;
        let now = self.now();
        let scope = format!("rewards.Transfer/{}", req.program_id);
        let key = req.idempotency_key.clone();
        let r = req.clone();
        let response = run_idempotent(&self.rt.db, &scope, &key, &req, move |tx| {
            Box::pin(async move {
                let debit = Posting {
                    program_id: r.program_id.clone(),
                    member_id: r.member_id.clone(),
                    kind: EntryKind::Transfer,
                    points: r.points,
                    cause: Cause {
                        reference: Some(format!("to:{}", r.to_member_id)),
                        ..Cause::default()
                    },
                };
                // both members' lanes, in lane order, before either balance
                let mut lanes = ledger_lanes::lock_lanes(
                    tx,
                    [
                        (r.program_id.as_str(), r.member_id.as_str()),
                        (r.program_id.as_str(), r.to_member_id.as_str()),
                    ],
                )
                .await?;
                let from_head = lanes
                    .head_of(&r.program_id, &r.member_id)
                    .ok_or_else(|| ServiceError::internal("transfer lost its lane lock"))?;
                let (out, expiries) = ledger::debit_in_lane(tx, from_head, &debit).await?;
                // the points keep the expiry of the lots they came from
                let parts: Vec<(i64, LotTerms)> = out
                    .lots
                    .iter()
                    .zip(&expiries)
                    .map(|(l, e)| {
                        (
                            l.points,
                            LotTerms {
                                pending_until: None,
                                expires_at: e.map(loyalty_common::calendar::from_micros),
                            },
                        )
                    })
                    .collect();
                let credit = Posting {
                    program_id: r.program_id.clone(),
                    member_id: r.to_member_id.clone(),
                    kind: EntryKind::Transfer,
                    points: r.points,
                    cause: Cause {
                        reference: Some(format!("from:{}", r.member_id)),
                        ..Cause::default()
                    },
                };
                // the same lane when both members share it: the head has moved
                let to_head = lanes
                    .head_of(&r.program_id, &r.to_member_id)
                    .ok_or_else(|| ServiceError::internal("transfer lost its lane lock"))?;
                let credit_entry = ledger::credit_in_lane(tx, to_head, &credit, &parts).await?;
                let balance =
                    ledger_queries::balance_in_tx(tx, &r.program_id, &r.member_id, now).await?;
                Ok(pb::TransferResponse {
                    debit_entry_id: out.entry_id.0,
                    credit_entry_id: credit_entry.0,
                    balance: Some(balance),
                })
            })
        })
        .await?;
        self.rt.outbox.notify();
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(member_id = %request.get_ref().member_id))]
    async fn adjust(
        &self,
        request: Request<pb::AdjustRequest>,
    ) -> Result<Response<pb::AdjustResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref().clone();
        p.require_role(&req.program_id, &[Role::ProgramAdmin, Role::SupportAgent])?;
        check_id("member_id", &req.member_id)?;
        check_points("points", req.points.abs())?;
        if req.reason.trim().is_empty() || req.reason.len() > 500 {
            return Err(ServiceError::invalid("reason", "must be 1 to 500 characters").into());
        }
        let staff = staff_subject(p);
        let now = self.now();
        let scope = format!("rewards.Adjust/{}", req.program_id);
        let key = req.idempotency_key.clone();
        let r = req.clone();
        let response = run_idempotent(&self.rt.db, &scope, &key, &req, move |tx| {
            Box::pin(async move {
                let posting = Posting {
                    program_id: r.program_id.clone(),
                    member_id: r.member_id.clone(),
                    kind: EntryKind::Adjust,
                    points: r.points.abs(),
                    cause: Cause {
                        staff_id: Some(staff),
                        reason: Some(r.reason.clone()),
                        ..Cause::default()
                    },
                };
                let entry_id = if r.points > 0 {
                    let terms = ledger_purchases::immediate_terms(tx, &r.program_id, now).await?;
                    ledger::credit(tx, &posting, terms).await?.0
                } else {
                    ledger::debit(tx, &posting).await?.entry_id.0
                };
                let balance =
                    ledger_queries::balance_in_tx(tx, &r.program_id, &r.member_id, now).await?;
                Ok(pb::AdjustResponse {
                    entry_id,
                    balance: Some(balance),
                })
            })
        })
        .await?;
        self.rt.outbox.notify();
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn verify_ledger(
        &self,
        request: Request<pb::VerifyLedgerRequest>,
    ) -> Result<Response<pb::VerifyLedgerResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        p.require_role(&req.program_id, &[Role::ProgramAdmin, Role::Analyst])?;
        let policy = self.policy(&req.program_id).await?;
        let v = ledger_queries::verify(&self.rt.db, &req.program_id, policy.clawback).await?;
        let ok = v.first_break.is_none() && v.mismatches.is_empty();
        let (id, seq, problem) = v
            .first_break
            .map_or((String::new(), 0, String::new()), |b| {
                (b.entry_id, b.seq, b.problem)
            });
        Ok(Response::new(pb::VerifyLedgerResponse {
            ok,
            entries_checked: v.entries_checked,
            first_bad_entry_id: id,
            first_bad_sequence: seq,
            first_bad_lane: v.first_break_lane,
            problem,
            mismatches: v
                .mismatches
                .into_iter()
                .take(100)
                .map(|(member_id, problem)| pb::BalanceMismatch { member_id, problem })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_earning_rule(
        &self,
        request: Request<pb::CreateEarningRuleRequest>,
    ) -> Result<Response<pb::CreateEarningRuleResponse>, Status> {
        let p = auth::principal(&request)?;
        let rule = request.get_ref().rule.clone().unwrap_or_default();
        p.require_role(&rule.program_id, &[Role::ProgramAdmin])?;
        rule_from_proto(&rule)?;
        let mut tx = self.rt.db.begin().await.map_err(ServiceError::from)?;
        let stored = rules::create(&mut tx, rule, self.now()).await?;
        tx.commit().await.map_err(ServiceError::from)?;
        rules_cache::forget(self.db_key(), &stored.program_id);
        Ok(Response::new(pb::CreateEarningRuleResponse {
            rule: Some(stored),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_earning_rule(
        &self,
        request: Request<pb::UpdateEarningRuleRequest>,
    ) -> Result<Response<pb::UpdateEarningRuleResponse>, Status> {
        let p = auth::principal(&request)?;
        let rule = request.get_ref().rule.clone().unwrap_or_default();
        p.require_role(&rule.program_id, &[Role::ProgramAdmin])?;
        check_id("rule.rule_id", &rule.rule_id)?;
        rule_from_proto(&rule)?;
        let mut tx = self.rt.db.begin().await.map_err(ServiceError::from)?;
        let stored = rules::update(&mut tx, rule, self.now()).await?;
        tx.commit().await.map_err(ServiceError::from)?;
        rules_cache::forget(self.db_key(), &stored.program_id);
        Ok(Response::new(pb::UpdateEarningRuleResponse {
            rule: Some(stored),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_earning_rule(
        &self,
        request: Request<pb::GetEarningRuleRequest>,
    ) -> Result<Response<pb::GetEarningRuleResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        p.require_role(
            &req.program_id,
            &[Role::ProgramAdmin, Role::Analyst, Role::SupportAgent],
        )?;
        let rule = rules::get(
            self.rt.db.pool(),
            &req.program_id,
            &req.rule_id,
            req.version,
        )
        .await?;
        Ok(Response::new(pb::GetEarningRuleResponse {
            rule: Some(rule),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_earning_rules(
        &self,
        request: Request<pb::ListEarningRulesRequest>,
    ) -> Result<Response<pb::ListEarningRulesResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        p.require_role(
            &req.program_id,
            &[Role::ProgramAdmin, Role::Analyst, Role::SupportAgent],
        )?;
        let fingerprint = format!("rules/{}", req.program_id);
        let page = page(req.page.as_ref(), &fingerprint)?;
        let rows = rules::list(self.rt.db.pool(), &req.program_id, &page).await?;
        let (rules, token) = paging::finish(rows, &page, &fingerprint, |r| r.rule_id.clone());
        Ok(Response::new(pb::ListEarningRulesResponse {
            rules,
            page: Some(page_response(token)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_earning_rule(
        &self,
        request: Request<pb::DeleteEarningRuleRequest>,
    ) -> Result<Response<pb::DeleteEarningRuleResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        p.require_role(&req.program_id, &[Role::ProgramAdmin])?;
        let mut tx = self.rt.db.begin().await.map_err(ServiceError::from)?;
        let rule = rules::retire(&mut tx, &req.program_id, &req.rule_id, self.now()).await?;
        tx.commit().await.map_err(ServiceError::from)?;
        rules_cache::forget(self.db_key(), &rule.program_id);
        Ok(Response::new(pb::DeleteEarningRuleResponse {
            rule: Some(rule),
        }))
    }

    #[tracing::instrument(skip_all, fields(member_id = %request.get_ref().member_id))]
    async fn check_in(
        &self,
        request: Request<pb::CheckInRequest>,
    ) -> Result<Response<pb::CheckInResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        act_for_member(p, &req.program_id, &req.member_id)?;
        check_id("member_id", &req.member_id)?;
        let mut tx = self.rt.db.begin().await.map_err(ServiceError::from)?;
        let response =
            ledger_behaviour::check_in(&mut tx, &req.program_id, &req.member_id, self.now())
                .await?;
        tx.commit().await.map_err(ServiceError::from)?;
        self.rt.outbox.notify();
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(member_id = %request.get_ref().member_id))]
    async fn record_activity(
        &self,
        request: Request<pb::RecordActivityRequest>,
    ) -> Result<Response<pb::RecordActivityResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        p.require_role(
            &req.program_id,
            &[Role::Backend, Role::ProgramAdmin, Role::SupportAgent],
        )?;
        check_id("member_id", &req.member_id)?;
        check_id("reference", &req.reference)?;
        let behaviour = match behaviour_from_proto(req.behaviour) {
            Some(Behaviour::CheckIn) => {
                return Err(
                    ServiceError::invalid("behaviour", "check-ins go through CheckIn").into(),
                );
            }
            Some(b) => b,
            None => return Err(ServiceError::invalid("behaviour", "is required").into()),
        };
        let mut tx = self.rt.db.begin().await.map_err(ServiceError::from)?;
        let response = ledger_behaviour::award_behaviour(
            &mut tx,
            &req.program_id,
            &req.member_id,
            behaviour,
            &req.reference,
            self.now(),
        )
        .await?;
        tx.commit().await.map_err(ServiceError::from)?;
        self.rt.outbox.notify();
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn run_lifecycle_job(
        &self,
        request: Request<pb::RunLifecycleJobRequest>,
    ) -> Result<Response<pb::RunLifecycleJobResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        p.require_role(&req.program_id, &[Role::ProgramAdmin])?;
        check_id("program_id", &req.program_id)?;
        Ok(Response::new(self.run_job(&req.program_id, req.job).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn get_lifecycle_job_status(
        &self,
        request: Request<pb::GetLifecycleJobStatusRequest>,
    ) -> Result<Response<pb::GetLifecycleJobStatusResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        p.require_role(&req.program_id, &[Role::ProgramAdmin, Role::Analyst])?;
        let job = lifecycle_job(req.job)?;
        let status = jobs::status(&self.rt.db, &job_name(&job, &req.program_id)).await?;
        Ok(Response::new(status.map_or_else(
            pb::GetLifecycleJobStatusResponse::default,
            |s| {
                pb::GetLifecycleJobStatusResponse {
                    run_key: s.run_key.unwrap_or_default(),
                    processed: i64::try_from(s.processed).unwrap_or(i64::MAX),
                    last_run_key: s.last_run_key.unwrap_or_default(),
                    last_finished_at: s
                        .last_finished_at
                        .map(|m| to_timestamp(loyalty_common::calendar::from_micros(m))),
                    last_error: s.last_error.unwrap_or_default(),
                }
            },
        )))
    }

    #[tracing::instrument(skip_all)]
    async fn list_expiry_reminders(
        &self,
        request: Request<pb::ListExpiryRemindersRequest>,
    ) -> Result<Response<pb::ListExpiryRemindersResponse>, Status> {
        let p = auth::principal(&request)?;
        let req = request.get_ref();
        p.require_role(
            &req.program_id,
            &[Role::ProgramAdmin, Role::Analyst, Role::Backend],
        )?;
        let days = match req.within_days {
            0 => 30,
            d if (1..=366).contains(&d) => i64::from(d),
            _ => return Err(ServiceError::invalid("within_days", "must be within 0..=366").into()),
        };
        let now = self.now();
        let fingerprint = format!("reminders/{}/{days}", req.program_id);
        let page = page(req.page.as_ref(), &fingerprint)?;
        let rows = ledger_queries::expiry_reminders(
            &self.rt.db,
            &req.program_id,
            now,
            now + chrono::Duration::days(days),
            &page,
        )
        .await?;
        let (reminders, token) = paging::finish(rows, &page, &fingerprint, |r| r.member_id.clone());
        Ok(Response::new(pb::ListExpiryRemindersResponse {
            reminders,
            page: Some(page_response(token)),
        }))
    }
}
