//! Coupons over real gRPC on both engines: issue, validate and redeem once
//! at the point of sale, concurrent double redemption, expiry, per-caller
//! brute-force limits, campaign issues deduplicated by action id, and the
//! member's own list.

mod catalog_support;

use std::time::Duration;

use catalog_support::*;
use futures::future::join_all;
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::{self, TestEngine, TestService};
use loyalty_proto::events::CampaignActionRequested;
use loyalty_proto::events::campaign_action_requested::Action;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::rewards::v1::{
    Coupon, CouponPool, CouponSource, CouponState, CreateCouponPoolRequest, IssueCouponRequest,
    ListMemberCouponsRequest, RedeemCouponRequest, ValidateCouponRequest,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

async fn pool(t: &TestService, valid_days: i32, max_issued: i64) -> CouponPool {
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

async fn issue(t: &TestService, pool_id: &str, member_id: &str) -> Result<Coupon, Status> {
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

async fn validate_as(
    t: &TestService,
    who: &loyalty_common::auth::Principal,
    code: &str,
) -> Result<Coupon, Status> {
    coupons(t)
        .validate_coupon(t.request(
            ValidateCouponRequest {
                program_id: PROGRAM.into(),
                code: code.into(),
            },
            who,
        ))
        .await
        .map(|r| r.into_inner().coupon.expect("coupon"))
}

async fn redeem(t: &TestService, code: &str, order_id: &str) -> Result<Coupon, Status> {
    coupons(t)
        .redeem_coupon(t.request(
            RedeemCouponRequest {
                program_id: PROGRAM.into(),
                code: code.into(),
                order_id: order_id.into(),
            },
            &backend(),
        ))
        .await
        .map(|r| r.into_inner().coupon.expect("coupon"))
}

async fn list(t: &TestService, member_id: &str, state: CouponState) -> Vec<Coupon> {
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
        .expect("list")
        .into_inner()
        .coupons
}

async fn a_coupon_is_validated_and_redeemed_exactly_once(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 30, 0).await;
    let c = issue(&t, &p.pool_id, "m1").await.expect("issue");
    assert_eq!(c.state(), CouponState::Issued);
    assert_eq!(c.source(), CouponSource::Direct);
    // typed in lower case without dashes, it is the same code
    let typed = c.code.replace('-', "").to_lowercase();
    let valid = validate_as(&t, &backend(), &typed).await.expect("valid");
    assert_eq!(valid.coupon_id, c.coupon_id);
    let used = redeem(&t, &c.code, "order-1").await.expect("redeem");
    assert_eq!(used.state(), CouponState::Redeemed);
    assert_eq!(used.redeemed_order_id, "order-1");
    // the same order again is a replay, another order is refused
    redeem(&t, &c.code, "order-1").await.expect("replay");
    let again = redeem(&t, &c.code, "order-2").await.unwrap_err();
    assert_code(&again, Code::FailedPrecondition);
    let gone = validate_as(&t, &backend(), &c.code).await.unwrap_err();
    assert_code(&gone, Code::FailedPrecondition);
    // members do not validate or redeem codes
    let denied = validate_as(&t, &member("m1"), &c.code).await.unwrap_err();
    assert_code(&denied, Code::PermissionDenied);
    assert_eq!(emitted(&t, "CouponIssued").await.len(), 1);
    t.stop().await;
}

async fn concurrent_redemptions_of_one_code_let_exactly_one_win(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 30, 0).await;
    let c = issue(&t, &p.pool_id, "m1").await.expect("issue");
    let orders: Vec<String> = (0..10).map(|i| format!("order-{i}")).collect();
    let results = join_all(orders.iter().map(|o| redeem(&t, &c.code, o))).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_code(r, Code::FailedPrecondition);
    }
    t.stop().await;
}

async fn coupons_expire_after_their_validity(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 1, 0).await;
    let c = issue(&t, &p.pool_id, "m1").await.expect("issue");
    t.clock().advance(chrono::Duration::hours(23));
    validate_as(&t, &backend(), &c.code)
        .await
        .expect("still valid");
    t.clock().advance(chrono::Duration::hours(2));
    let expired = validate_as(&t, &backend(), &c.code).await.unwrap_err();
    assert_code(&expired, Code::FailedPrecondition);
    assert!(expired.message().contains("expired"), "{expired:?}");
    let used = redeem(&t, &c.code, "o").await.unwrap_err();
    assert_code(&used, Code::FailedPrecondition);
    assert!(list(&t, "m1", CouponState::Issued).await.is_empty());
    let listed = list(&t, "m1", CouponState::Expired).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state(), CouponState::Expired);
    t.stop().await;
}

async fn repeated_failures_are_rate_limited_per_caller(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 30, 0).await;
    let c = issue(&t, &p.pool_id, "m1").await.expect("issue");
    let guesser = testing::backend(PROGRAM);
    for i in 0..20 {
        // well-formed codes nobody holds
        let symbols = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
        let guess = format!("{}{}", "A".repeat(15), char::from(symbols[i]));
        let err = validate_as(&t, &guesser, &guess).await.unwrap_err();
        assert_code(&err, Code::NotFound);
    }
    // the limit is reached: even a valid code is refused, with a retry delay
    let limited = validate_as(&t, &guesser, &c.code).await.unwrap_err();
    assert_code(&limited, Code::ResourceExhausted);
    let retry = limited
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(300),
        "{retry:?}"
    );
    let limited_redeem = redeem(&t, &c.code, "o1").await.unwrap_err();
    assert_code(&limited_redeem, Code::ResourceExhausted);
    // another caller is not affected
    let other = loyalty_common::auth::Principal::System {
        program_id: PROGRAM.into(),
        key_id: "pos-2".into(),
        role: loyalty_common::auth::Role::Backend,
    };
    validate_as(&t, &other, &c.code)
        .await
        .expect("other caller");
    // once the window has passed the caller may try again
    t.clock().advance(chrono::Duration::seconds(301));
    validate_as(&t, &guesser, &c.code)
        .await
        .expect("after the window");
    t.stop().await;
}

async fn campaign_actions_issue_one_coupon_per_action(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 30, 0).await;
    let action = |action_id: &str| {
        event(
            "m7",
            Payload::CampaignActionRequested(CampaignActionRequested {
                campaign_id: "spring".into(),
                action_id: action_id.into(),
                action: Some(Action::IssueCouponPoolId(p.pool_id.clone())),
            }),
        )
    };
    let first = action("a1");
    // the same event twice, and the same action under a new event id
    t.publish(&[first.clone(), first, action("a1"), action("a2")])
        .await;
    t.settle().await;
    let held = list(&t, "m7", CouponState::Unspecified).await;
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(held.iter().all(|c| c.source() == CouponSource::Campaign));
    let issued = emitted(&t, "CouponIssued").await;
    assert_eq!(issued.len(), 2);
    // events never carry the code
    for e in issued {
        let Some(Payload::CouponIssued(ci)) = e.payload else {
            panic!("payload")
        };
        assert_eq!(ci.campaign_id, "spring");
        assert_eq!(ci.source, "campaign");
    }
    t.stop().await;
}

async fn pools_stop_at_their_maximum_and_members_see_only_their_coupons(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 30, 2).await;
    issue(&t, &p.pool_id, "m1").await.expect("first");
    issue(&t, &p.pool_id, "m2").await.expect("second");
    let third = issue(&t, &p.pool_id, "m1").await.unwrap_err();
    assert_code(&third, Code::FailedPrecondition);
    let mine = list(&t, "m1", CouponState::Unspecified).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].member_id, "m1");
    let denied = coupons(&t)
        .list_member_coupons(t.request(
            ListMemberCouponsRequest {
                program_id: PROGRAM.into(),
                member_id: "m2".into(),
                state: 0,
                page: None,
            },
            &member("m1"),
        ))
        .await
        .unwrap_err();
    assert_code(&denied, Code::PermissionDenied);
    let bad = coupons(&t)
        .create_coupon_pool(t.request(
            CreateCouponPoolRequest {
                program_id: PROGRAM.into(),
                pool: Some(CouponPool {
                    valid_days: 0,
                    max_issued: -1,
                    ..CouponPool::default()
                }),
                idempotency_key: "bad".into(),
            },
            &admin(),
        ))
        .await
        .unwrap_err();
    let fields = violated_fields(&bad);
    for f in ["pool.name", "pool.valid_days", "pool.max_issued"] {
        assert!(fields.iter().any(|x| x == f), "{f} in {fields:?}");
    }
    t.stop().await;
}

test_on_both_engines!(
    a_coupon_is_validated_and_redeemed_exactly_once,
    concurrent_redemptions_of_one_code_let_exactly_one_win,
    coupons_expire_after_their_validity,
    repeated_failures_are_rate_limited_per_caller,
    campaign_actions_issue_one_coupon_per_action,
    pools_stop_at_their_maximum_and_members_see_only_their_coupons,
);
