//! GetTierProgress, ListTierHistory, RunTierEvaluation.

use std::sync::Arc;

use loyalty_common::ServiceError;
use loyalty_common::auth::Principal;
use loyalty_common::calendar::{from_micros, to_timestamp};
use loyalty_common::jobs::JobRunner;
use loyalty_common::paging;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_proto::loyalty::membership::v1 as pb;

use super::{ADMIN, MEMBER_PAGES, now, page, page_response, required};
use crate::domain::program::Metric;
use crate::domain::tiers::{progress, review_window, window_start};
use crate::evaluation_job::TierEvaluationJob;
use crate::store::{activity, members, programs};

fn metric_proto(m: Metric) -> pb::QualifyingMetric {
    match m {
        Metric::Spend => pb::QualifyingMetric::Spend,
        Metric::Points => pb::QualifyingMetric::Points,
        Metric::OrderCount => pb::QualifyingMetric::OrderCount,
    }
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn progress_of(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::GetTierProgressRequest,
) -> Result<pb::GetTierProgressResponse, ServiceError> {
    required("member_id", &req.member_id)?;
    p.authorize_member(&req.program_id, &req.member_id)?;
    let at = now(rt);
    let mut c = rt.db.pool().acquire().await?;
    let (program, m) =
        members::require_with_program(&mut c, &req.program_id, &req.member_id).await?;
    let rules = &program.rules;
    let start = window_start(rules.window, &program.tz, at);
    let evaluation_at = from_micros(m.next_evaluation_at);
    let (review_from, _) = review_window(rules, &program.tz, evaluation_at);
    let (value, still) = activity::values_since(
        &mut c,
        &m.program_id,
        &m.member_id,
        rules.metric,
        start,
        review_from,
    )
    .await?;
    let level = rules.level_or_base(&m.tier_code);
    let pr = progress(&rules.tiers, level, value, still);
    Ok(pb::GetTierProgressResponse {
        progress: Some(pb::TierProgress {
            current_tier: Some(rules.tiers[pr.current].to_proto()),
            next_tier: pr.next.map(|n| rules.tiers[n].to_proto()),
            qualifying_metric: metric_proto(rules.metric) as i32,
            qualifying_value: pr.value,
            remaining_to_next: pr.remaining_to_next,
            percent_to_next: pr.percent_to_next,
            remaining_to_keep: pr.remaining_to_keep,
            evaluation_at: Some(to_timestamp(evaluation_at)),
            window_start: Some(to_timestamp(start)),
        }),
    })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn history(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::ListTierHistoryRequest,
) -> Result<pb::ListTierHistoryResponse, ServiceError> {
    required("member_id", &req.member_id)?;
    p.authorize_member(&req.program_id, &req.member_id)?;
    let query = format!("tiers|{}|{}", req.program_id, req.member_id);
    let pg = page(req.page.as_ref(), MEMBER_PAGES, &query)?;
    let before: i64 = pg
        .after
        .as_deref()
        .map_or(Ok(i64::MAX), str::parse)
        .map_err(|_| ServiceError::invalid("page.page_token", "is not valid"))?;
    let mut c = rt.db.pool().acquire().await?;
    members::require(&mut c, &req.program_id, &req.member_id).await?;
    let rows = activity::tier_history(&mut c, &req.member_id, before, pg.fetch_limit()).await?;
    let (rows, next) = paging::finish(rows, &pg, &query, |(seq, _)| seq.to_string());
    Ok(pb::ListTierHistoryResponse {
        changes: rows.into_iter().map(|(_, c)| c).collect(),
        page: page_response(next),
    })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id))]
pub async fn run_evaluation(
    rt: &Arc<ServiceRuntime>,
    p: &Principal,
    req: pb::RunTierEvaluationRequest,
) -> Result<pb::RunTierEvaluationResponse, ServiceError> {
    required("program_id", &req.program_id)?;
    p.require_role(&req.program_id, ADMIN)?;
    {
        let mut c = rt.db.pool().acquire().await?;
        programs::require(&mut c, &req.program_id).await?;
    }
    // the caller's program only: an administrator reviews its own members
    let job = TierEvaluationJob::for_program(rt.clone(), &req.program_id);
    let runner = JobRunner::new(rt.db.clone());
    // Its own task: a caller that gives up (deadline, disconnect) does not
    // cut the run between checkpoints; it finishes and releases its lease.
    let report = tokio::spawn(async move { runner.trigger(&job).await })
        .await
        .map_err(ServiceError::internal)??;
    rt.outbox.notify();
    Ok(match report {
        Some(r) => pb::RunTierEvaluationResponse {
            ran: true,
            run_key: r.run_key,
            evaluated: i64::try_from(r.processed).unwrap_or(i64::MAX),
        },
        None => pb::RunTierEvaluationResponse {
            ran: false,
            run_key: String::new(),
            evaluated: 0,
        },
    })
}
