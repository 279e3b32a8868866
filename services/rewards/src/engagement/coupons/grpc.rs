//! gRPC adapter of coupons: decode, check the caller, delegate, encode.

use std::collections::HashMap;
use std::sync::Arc;

use loyalty_common::auth::{self, Principal, Role};
use loyalty_common::error::{ERROR_DOMAIN, reason_str};
use loyalty_common::idempotency::run_idempotent;
use loyalty_common::jobs::JobRunner;
use loyalty_common::money::Money;
use loyalty_common::paging;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::{ServiceError, Violations};
use loyalty_proto::common::ErrorReason;
use loyalty_proto::events::CouponIssued;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::rewards::v1::coupon_service_server::CouponService;
use loyalty_proto::loyalty::rewards::v1::{
    Coupon, CouponPool, CouponSource, CouponState, CreateCouponPoolRequest,
    CreateCouponPoolResponse, GetCouponPoolRequest, GetCouponPoolResponse, IssueCouponRequest,
    IssueCouponResponse, ListCouponPoolsRequest, ListCouponPoolsResponse, ListMemberCouponsRequest,
    ListMemberCouponsResponse, RedeemCouponRequest, RedeemCouponResponse, RunCouponExpiryRequest,
    RunCouponExpiryResponse, ValidateCouponRequest, ValidateCouponResponse,
};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::attempt_limit::AttemptPolicy;
use super::expiry::CouponExpiry;
use super::store::{self, CouponRow, IssueError, IssueRequest, PoolRow};
use super::vault::CodeVault;
use crate::engagement::codes;
use crate::engagement::support::{
    caller_key, check_id, check_text, emit, new_id, now_micros, page, page_response, ts,
};

pub(crate) struct CouponApi {
    pub rt: Arc<ServiceRuntime>,
    pub attempts: AttemptPolicy,
}

const ADMIN: &[Role] = &[Role::ProgramAdmin];
const ISSUERS: &[Role] = &[Role::ProgramAdmin, Role::SupportAgent, Role::Backend];
const POINT_OF_SALE: &[Role] = &[Role::Backend];
const STAFF: &[Role] = &[
    Role::ProgramAdmin,
    Role::SupportAgent,
    Role::Analyst,
    Role::Backend,
];
const MAX_VALID_DAYS: i32 = 3_660;

fn pool_proto(p: &PoolRow) -> CouponPool {
    CouponPool {
        pool_id: p.pool_id.clone(),
        program_id: p.program_id.clone(),
        name: p.name.clone(),
        description: p.description.clone(),
        discount: match (p.discount_minor, &p.discount_currency) {
            (Some(minor), Some(currency)) => Some(loyalty_proto::common::Money {
                minor_units: minor,
                currency: currency.clone(),
            }),
            _ => None,
        },
        valid_days: i32::try_from(p.valid_days).unwrap_or(i32::MAX),
        max_issued: p.max_issued,
        issued_count: p.issued_count,
        created_at: Some(ts(p.created_at)),
    }
}

fn state_of(c: &CouponRow, now: i64) -> CouponState {
    if c.redeemed_at.is_some() {
        CouponState::Redeemed
    } else if c.expired_at.is_some() || c.expires_at <= now {
        CouponState::Expired
    } else {
        CouponState::Issued
    }
}

fn source_proto(s: &str) -> CouponSource {
    match s {
        "redemption" => CouponSource::Redemption,
        "direct" => CouponSource::Direct,
        "campaign" => CouponSource::Campaign,
        _ => CouponSource::Unspecified,
    }
}

fn coupon_proto(c: &CouponRow, now: i64) -> Coupon {
    Coupon {
        coupon_id: c.coupon_id.clone(),
        program_id: c.program_id.clone(),
        pool_id: c.pool_id.clone(),
        member_id: c.member_id.clone(),
        code: codes::display(&c.code),
        state: state_of(c, now).into(),
        source: source_proto(&c.source).into(),
        issued_at: Some(ts(c.issued_at)),
        expires_at: Some(ts(c.expires_at)),
        redeemed_at: c.redeemed_at.map(ts),
        redeemed_order_id: c.redeemed_order_id.clone().unwrap_or_default(),
        description: c.description.clone(),
    }
}

/// RESOURCE_EXHAUSTED with ErrorInfo and RetryInfo (how long to wait).
fn exhausted(wait: std::time::Duration) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        reason_str(ErrorReason::ResourceExhausted),
        ERROR_DOMAIN,
        HashMap::new(),
    );
    details.set_retry_info(Some(wait));
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "too many failed coupon attempts by this caller; retry in {} s",
            wait.as_secs().max(1)
        ),
        details,
    )
}

/// Why a code cannot be used now (a failed attempt).
fn unusable(c: &CouponRow, now: i64) -> ServiceError {
    match state_of(c, now) {
        CouponState::Redeemed => ServiceError::FailedPrecondition {
            reason: ErrorReason::CouponAlreadyRedeemed,
            message: "the coupon was already redeemed".into(),
        },
        CouponState::Expired => ServiceError::FailedPrecondition {
            reason: ErrorReason::CouponExpired,
            message: "the coupon has expired".into(),
        },
        _ => ServiceError::precondition("the coupon cannot be used"),
    }
}

impl CouponApi {
    /// Runs a code attempt within the caller's budget of failures: the
    /// attempt takes a slot before it runs (refused with RESOURCE_EXHAUSTED
    /// and a retry delay when none is left) and gives it back unless it
    /// failed on a bad, unknown or unusable code.
    async fn attempt<T, F>(&self, p: &Principal, program_id: &str, work: F) -> Result<T, Status>
    where
        F: Future<Output = Result<T, ServiceError>>,
    {
        let caller = caller_key(p);
        let now = now_micros(&self.rt);
        let window = self.attempts.window_start(now);
        let mut tx = self.rt.db.begin().await.map_err(ServiceError::from)?;
        let taken = store::take_attempt(
            &mut tx,
            program_id,
            &caller,
            window,
            self.attempts.max_failures,
        )
        .await?;
        tx.commit().await.map_err(ServiceError::from)?;
        if !taken {
            let wait = self
                .attempts
                .retry_after(self.attempts.max_failures, now)
                .unwrap_or(self.attempts.window);
            return Err(exhausted(wait));
        }
        let outcome = work.await;
        let failed = matches!(
            outcome,
            Err(ServiceError::InvalidArgument(_)
                | ServiceError::NotFound { .. }
                | ServiceError::FailedPrecondition { .. })
        );
        if !failed {
            let mut tx = self.rt.db.begin().await.map_err(ServiceError::from)?;
            store::give_back_attempt(&mut tx, program_id, &caller, window).await?;
            tx.commit().await.map_err(ServiceError::from)?;
        }
        outcome.map_err(Status::from)
    }

    async fn validate(&self, req: &ValidateCouponRequest) -> Result<Coupon, ServiceError> {
        let code = codes::normalise(&req.code, codes::COUPON_CODE_LEN)
            .map_err(|e| ServiceError::invalid("code", e.to_string()))?;
        let now = now_micros(&self.rt);
        let vault = CodeVault::of(&self.rt)?;
        let c = store::by_code(self.rt.db.pool(), &vault, &req.program_id, &code)
            .await?
            .ok_or_else(|| ServiceError::not_found("coupon", "with this code"))?;
        if state_of(&c, now) == CouponState::Issued {
            Ok(coupon_proto(&c, now))
        } else {
            Err(unusable(&c, now))
        }
    }

    async fn redeem(&self, req: &RedeemCouponRequest) -> Result<Coupon, ServiceError> {
        let code = codes::normalise(&req.code, codes::COUPON_CODE_LEN)
            .map_err(|e| ServiceError::invalid("code", e.to_string()))?;
        let now = now_micros(&self.rt);
        let vault = CodeVault::of(&self.rt)?;
        let mut tx = self.rt.db.begin().await?;
        let redeemed =
            store::redeem(&mut tx, &vault, &req.program_id, &code, &req.order_id, now).await?;
        let c = store::by_code(&mut *tx, &vault, &req.program_id, &code)
            .await?
            .ok_or_else(|| ServiceError::not_found("coupon", "with this code"))?;
        tx.commit().await?;
        // a replay for the same order answers the same redemption
        if redeemed || c.redeemed_order_id.as_deref() == Some(req.order_id.as_str()) {
            Ok(coupon_proto(&c, now))
        } else {
            Err(unusable(&c, now))
        }
    }

    async fn issue(
        &self,
        p: &Principal,
        req: IssueCouponRequest,
    ) -> Result<IssueCouponResponse, ServiceError> {
        p.require_role(&req.program_id, ISSUERS)?;
        let mut v = Violations::new();
        check_id(&mut v, "pool_id", &req.pool_id);
        check_id(&mut v, "member_id", &req.member_id);
        v.finish()?;
        let now = now_micros(&self.rt);
        let vault = Arc::new(CodeVault::of(&self.rt)?);
        let program_id = req.program_id.clone();
        let scope = format!("rewards.IssueCoupon/{}", req.program_id);
        let key = req.idempotency_key.clone();
        let sealing = vault.clone();
        let mut response = run_idempotent(&self.rt.db, &scope, &key, &req.clone(), move |tx| {
            Box::pin(async move {
                let issued = store::issue(
                    tx,
                    &sealing,
                    &IssueRequest {
                        program_id: &req.program_id,
                        pool_id: &req.pool_id,
                        member_id: &req.member_id,
                        source: "direct",
                        issue_key: None,
                        campaign_id: None,
                        now,
                    },
                )
                .await;
                let coupon = match issued {
                    Ok((c, _)) => c,
                    Err(IssueError::PoolNotFound) => {
                        return Err(ServiceError::not_found("coupon pool", &req.pool_id));
                    }
                    Err(e) => return Err(e.into()),
                };
                emit(
                    tx,
                    &req.program_id,
                    &req.member_id,
                    Payload::CouponIssued(CouponIssued {
                        coupon_id: coupon.coupon_id.clone(),
                        pool_id: coupon.pool_id.clone(),
                        expires_at: Some(ts(coupon.expires_at)),
                        source: "direct".into(),
                        campaign_id: String::new(),
                    }),
                )
                .await?;
                // the answer kept for replays holds no code: it is
                // opened from the coupon when answering
                let mut kept = coupon_proto(&coupon, now);
                kept.code.clear();
                Ok(IssueCouponResponse { coupon: Some(kept) })
            })
        })
        .await?;
        self.rt.outbox.notify();
        if let Some(c) = response.coupon.as_mut() {
            let stored = store::by_id(self.rt.db.pool(), &vault, &program_id, &c.coupon_id)
                .await?
                .ok_or_else(|| ServiceError::internal("an issued coupon is gone"))?;
            c.code = codes::display(&stored.code);
        }
        Ok(response)
    }

    async fn create_pool(
        &self,
        p: &Principal,
        req: CreateCouponPoolRequest,
    ) -> Result<CreateCouponPoolResponse, ServiceError> {
        p.require_role(&req.program_id, ADMIN)?;
        let Some(pool) = req.pool.as_ref() else {
            return Err(ServiceError::invalid("pool", "is required"));
        };
        let mut v = Violations::new();
        check_text(&mut v, "pool.name", &pool.name, true);
        check_text(&mut v, "pool.description", &pool.description, false);
        if !(1..=MAX_VALID_DAYS).contains(&pool.valid_days) {
            v.add(
                "pool.valid_days",
                format!("must be between 1 and {MAX_VALID_DAYS}"),
            );
        }
        if pool.max_issued < 0 {
            v.add("pool.max_issued", "must not be negative (0 = no limit)");
        }
        let discount = pool
            .discount
            .as_ref()
            .and_then(|d| v.check("pool.discount", Money::from_proto("pool.discount", Some(d))));
        v.finish()?;
        let row = PoolRow {
            pool_id: new_id(),
            program_id: req.program_id.clone(),
            name: pool.name.trim().to_owned(),
            description: pool.description.clone(),
            discount_minor: discount.map(|d| d.minor),
            discount_currency: discount.map(|d| d.currency.as_str().to_owned()),
            valid_days: i64::from(pool.valid_days),
            max_issued: pool.max_issued,
            issued_count: 0,
            created_at: now_micros(&self.rt),
        };
        let scope = format!("rewards.CreateCouponPool/{}", req.program_id);
        let key = req.idempotency_key.clone();
        run_idempotent(&self.rt.db, &scope, &key, &req, move |tx| {
            Box::pin(async move {
                store::insert_pool(tx, &row).await?;
                Ok(CreateCouponPoolResponse {
                    pool: Some(pool_proto(&row)),
                })
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl CouponService for CouponApi {
    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn create_coupon_pool(
        &self,
        request: Request<CreateCouponPoolRequest>,
    ) -> Result<Response<CreateCouponPoolResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(
            self.create_pool(&p, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn get_coupon_pool(
        &self,
        request: Request<GetCouponPoolRequest>,
    ) -> Result<Response<GetCouponPoolResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.require_role(&req.program_id, STAFF)?;
        let mut v = Violations::new();
        check_id(&mut v, "pool_id", &req.pool_id);
        v.finish()?;
        let pool = store::get_pool(self.rt.db.pool(), &req.program_id, &req.pool_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("coupon pool", &req.pool_id))?;
        Ok(Response::new(GetCouponPoolResponse {
            pool: Some(pool_proto(&pool)),
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn list_coupon_pools(
        &self,
        request: Request<ListCouponPoolsRequest>,
    ) -> Result<Response<ListCouponPoolsResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.require_role(&req.program_id, STAFF)?;
        let print = format!("coupon-pools:{}", req.program_id);
        let pg = page(req.page.as_ref(), &print)?;
        let rows = store::list_pools(
            self.rt.db.pool(),
            &req.program_id,
            pg.after.as_deref().unwrap_or_default(),
            pg.fetch_limit(),
        )
        .await?;
        let (rows, next) = paging::finish(rows, &pg, &print, |r| r.pool_id.clone());
        Ok(Response::new(ListCouponPoolsResponse {
            pools: rows.iter().map(pool_proto).collect(),
            page: Some(page_response(next)),
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id, member_id = %request.get_ref().member_id))]
    async fn issue_coupon(
        &self,
        request: Request<IssueCouponRequest>,
    ) -> Result<Response<IssueCouponResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        Ok(Response::new(self.issue(&p, request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn validate_coupon(
        &self,
        request: Request<ValidateCouponRequest>,
    ) -> Result<Response<ValidateCouponResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.require_role(&req.program_id, POINT_OF_SALE)?;
        let coupon = self
            .attempt(&p, &req.program_id, self.validate(&req))
            .await?;
        Ok(Response::new(ValidateCouponResponse {
            coupon: Some(coupon),
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn redeem_coupon(
        &self,
        request: Request<RedeemCouponRequest>,
    ) -> Result<Response<RedeemCouponResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.require_role(&req.program_id, POINT_OF_SALE)?;
        // a missing order id is the caller's bug, not a guess: not counted
        let mut v = Violations::new();
        check_id(&mut v, "order_id", &req.order_id);
        v.finish()?;
        let coupon = self.attempt(&p, &req.program_id, self.redeem(&req)).await?;
        Ok(Response::new(RedeemCouponResponse {
            coupon: Some(coupon),
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id, member_id = %request.get_ref().member_id))]
    async fn list_member_coupons(
        &self,
        request: Request<ListMemberCouponsRequest>,
    ) -> Result<Response<ListMemberCouponsResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.authorize_member(&req.program_id, &req.member_id)?;
        let state = match CouponState::try_from(req.state) {
            Ok(CouponState::Unspecified) => 0,
            Ok(CouponState::Issued) => 1,
            Ok(CouponState::Redeemed) => 2,
            Ok(CouponState::Expired) => 3,
            Err(_) => return Err(ServiceError::invalid("state", "is not a coupon state").into()),
        };
        let print = format!("coupons:{}:{}:{state}", req.program_id, req.member_id);
        let pg = page(req.page.as_ref(), &print)?;
        let now = now_micros(&self.rt);
        let vault = CodeVault::of(&self.rt)?;
        let rows = store::list_member_coupons(
            self.rt.db.pool(),
            &vault,
            &store::MemberCoupons {
                program_id: &req.program_id,
                member_id: &req.member_id,
                state,
                now,
                before: pg.after.as_deref(),
                limit: pg.fetch_limit(),
            },
        )
        .await?;
        let (rows, next) = paging::finish(rows, &pg, &print, |r| r.coupon_id.clone());
        Ok(Response::new(ListMemberCouponsResponse {
            coupons: rows.iter().map(|c| coupon_proto(c, now)).collect(),
            page: Some(page_response(next)),
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn run_coupon_expiry(
        &self,
        request: Request<RunCouponExpiryRequest>,
    ) -> Result<Response<RunCouponExpiryResponse>, Status> {
        let p = auth::principal(&request)?.clone();
        let req = request.into_inner();
        p.require_role(&req.program_id, ADMIN)?;
        let job = CouponExpiry::program(self.rt.clone(), &req.program_id);
        let report = JobRunner::new(self.rt.db.clone()).trigger(&job).await?;
        Ok(Response::new(report.map_or_else(
            RunCouponExpiryResponse::default,
            |r| RunCouponExpiryResponse {
                ran: true,
                run_key: r.run_key,
                processed: i64::try_from(r.processed).unwrap_or(i64::MAX),
            },
        )))
    }
}
