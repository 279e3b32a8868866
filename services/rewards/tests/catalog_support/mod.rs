//! Shared by the engagement test suites (catalog, coupons, badges,
//! referrals, partners): starting the rewards service, clients, giving a
//! member points through a real path (a partner exchange in), reading a
//! balance, publishing events as other services would.

#![allow(dead_code)] // each suite uses a part

use loyalty_common::auth::Principal;
use loyalty_common::testing::{self, TestEngine, TestService};
use loyalty_proto::events::EventEnvelope;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::rewards::v1::badge_service_client::BadgeServiceClient;
use loyalty_proto::loyalty::rewards::v1::catalog_service_client::CatalogServiceClient;
use loyalty_proto::loyalty::rewards::v1::coupon_service_client::CouponServiceClient;
use loyalty_proto::loyalty::rewards::v1::partner_service_client::PartnerServiceClient;
use loyalty_proto::loyalty::rewards::v1::referral_service_client::ReferralServiceClient;
use loyalty_proto::loyalty::rewards::v1::{
    Coupon, CouponPool, CouponState, CreateCouponPoolRequest, CreatePartnerRequest,
    ExchangeInRequest, ExchangeRate, IssueCouponRequest, LimitPeriod, ListMemberCouponsRequest,
    Partner,
};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub const PROGRAM: &str = "p1";
/// The partner `grant` credits points through (1 unit = 1 point).
pub const BANK: &str = "test-bank";

pub async fn start(engine: TestEngine) -> TestService {
    TestService::start(&[loyalty_rewards::SERVICE], engine).await
}

pub fn admin() -> Principal {
    testing::staff(PROGRAM)
}

pub fn backend() -> Principal {
    testing::backend(PROGRAM)
}

pub fn member(id: &str) -> Principal {
    testing::member(PROGRAM, id)
}

pub fn catalog(t: &TestService) -> CatalogServiceClient<Channel> {
    CatalogServiceClient::new(t.channel())
}

pub fn coupons(t: &TestService) -> CouponServiceClient<Channel> {
    CouponServiceClient::new(t.channel())
}

/// The first page of a member's coupons, as the member asks for them.
pub async fn member_coupons(
    t: &TestService,
    member_id: &str,
    state: CouponState,
) -> Result<Vec<Coupon>, Status> {
    coupons(t)
        .list_member_coupons(t.request(
            ListMemberCouponsRequest {
                program_id: PROGRAM.into(),
                member_id: member_id.into(),
                state: state.into(),
                page: None,
            },
            &member(member_id),
        ))
        .await
        .map(|r| r.into_inner().coupons)
}

/// A coupon pool of 10 CNY off (`max_issued` 0: no limit).
pub async fn pool(t: &TestService, valid_days: i32, max_issued: i64) -> CouponPool {
    coupons(t)
        .create_coupon_pool(t.request(
            CreateCouponPoolRequest {
                program_id: PROGRAM.into(),
                pool: Some(CouponPool {
                    name: "Welcome".into(),
                    description: "10 CNY off".into(),
                    discount: Some(loyalty_proto::common::Money {
                        minor_units: 1_000,
                        currency: "CNY".into(),
                    }),
                    valid_days,
                    max_issued,
                    ..CouponPool::default()
                }),
                idempotency_key: uuid::Uuid::new_v4().to_string(),
            },
            &admin(),
        ))
        .await
        .expect("pool")
        .into_inner()
        .pool
        .expect("pool")
}

/// Issues a coupon of `pool_id` to `member_id`, as a backend would.
pub async fn issue(t: &TestService, pool_id: &str, member_id: &str) -> Result<Coupon, Status> {
    coupons(t)
        .issue_coupon(t.request(
            IssueCouponRequest {
                program_id: PROGRAM.into(),
                pool_id: pool_id.into(),
                member_id: member_id.into(),
                idempotency_key: uuid::Uuid::new_v4().to_string(),
            },
            &backend(),
        ))
        .await
        .map(|r| r.into_inner().coupon.expect("coupon"))
}

pub fn badges(t: &TestService) -> BadgeServiceClient<Channel> {
    BadgeServiceClient::new(t.channel())
}

pub fn referrals(t: &TestService) -> ReferralServiceClient<Channel> {
    ReferralServiceClient::new(t.channel())
}

pub fn partners(t: &TestService) -> PartnerServiceClient<Channel> {
    PartnerServiceClient::new(t.channel())
}

/// Credits `points` to `member_id` through the ledger, by a partner
/// exchange in at 1:1 (the partner is created on first use).
pub async fn grant(t: &TestService, member_id: &str, points: i64) {
    let mut client = partners(t);
    client
        .create_partner(t.request(
            CreatePartnerRequest {
                program_id: PROGRAM.into(),
                partner: Some(Partner {
                    code: BANK.into(),
                    name: "Test bank".into(),
                    unit_name: "points".into(),
                    rate_in: Some(ExchangeRate {
                        from_units: 1,
                        to_units: 1,
                    }),
                    limit_period: LimitPeriod::Day.into(),
                    ..Partner::default()
                }),
            },
            &admin(),
        ))
        .await
        .expect("create bank partner");
    client
        .exchange_in(t.request(
            ExchangeInRequest {
                program_id: PROGRAM.into(),
                member_id: member_id.into(),
                partner_code: BANK.into(),
                partner_units: points,
                partner_transaction_id: uuid::Uuid::new_v4().to_string(),
            },
            &backend(),
        ))
        .await
        .expect("grant points");
}

/// The member's available points, as the ledger's balance row says.
pub async fn available(t: &TestService, member_id: &str) -> i64 {
    let v: Option<i64> = sqlx::query_scalar(
        "SELECT available FROM balances WHERE program_id = $1 AND member_id = $2",
    )
    .bind(PROGRAM)
    .bind(member_id)
    .fetch_optional(t.rt("rewards").db.pool())
    .await
    .expect("read balance");
    v.unwrap_or(0)
}

/// An event of another service about `member_id`.
pub fn event(member_id: &str, payload: Payload) -> EventEnvelope {
    loyalty_common::events::new_envelope("test", PROGRAM, member_id, payload)
}

/// The events of one type the rewards service emitted.
pub async fn emitted(t: &TestService, short_type: &str) -> Vec<EventEnvelope> {
    t.outbox("rewards")
        .await
        .into_iter()
        .filter(|e| loyalty_common::events::short_type(e) == short_type)
        .collect()
}

/// Asserts `status` is `code`.
#[track_caller]
pub fn assert_code(status: &Status, code: Code) {
    assert_eq!(status.code(), code, "{status:?}");
}

/// The fields of the BadRequest violations of an INVALID_ARGUMENT.
pub fn violated_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default()
}

/// The ErrorInfo reason of an error.
pub fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}
