//! Partner exchange over real gRPC on both engines: integer rates rounding
//! down, per-period limits per member and per program (also under
//! concurrency), exchange in idempotent on the partner's transaction id.

mod catalog_support;

use catalog_support::*;
use futures::future::join_all;
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::{TestEngine, TestService};
use loyalty_proto::common::PageRequest;
use loyalty_proto::loyalty::rewards::v1::{
    CreatePartnerRequest, ExchangeInRequest, ExchangeOutRequest, ExchangeRate, LimitPeriod,
    ListPartnerTransfersRequest, Partner, PartnerTransfer, TransferDirection,
};
use tonic::{Code, Status};

fn airline(member_limit_out: i64, program_limit_out: i64) -> Partner {
    Partner {
        code: "airline".into(),
        name: "Airline X".into(),
        unit_name: "miles".into(),
        rate_out: Some(ExchangeRate {
            from_units: 100,
            to_units: 30,
        }),
        rate_in: Some(ExchangeRate {
            from_units: 30,
            to_units: 100,
        }),
        limit_period: LimitPeriod::Day.into(),
        member_limit_out,
        program_limit_out,
        ..Partner::default()
    }
}

async fn define(t: &TestService, partner: Partner) -> Result<Partner, Status> {
    partners(t)
        .create_partner(t.request(
            CreatePartnerRequest {
                program_id: PROGRAM.into(),
                partner: Some(partner),
            },
            &admin(),
        ))
        .await
        .map(|r| r.into_inner().partner.expect("partner"))
}

async fn out(
    t: &TestService,
    member_id: &str,
    points: i64,
    key: &str,
) -> Result<PartnerTransfer, Status> {
    partners(t)
        .exchange_out(t.request(
            ExchangeOutRequest {
                program_id: PROGRAM.into(),
                member_id: member_id.into(),
                partner_code: "airline".into(),
                points,
                idempotency_key: key.into(),
            },
            &member(member_id),
        ))
        .await
        .map(|r| r.into_inner().transfer.expect("transfer"))
}

async fn exchange_in(
    t: &TestService,
    member_id: &str,
    units: i64,
    txn: &str,
) -> Result<PartnerTransfer, Status> {
    partners(t)
        .exchange_in(t.request(
            ExchangeInRequest {
                program_id: PROGRAM.into(),
                member_id: member_id.into(),
                partner_code: "airline".into(),
                partner_units: units,
                partner_transaction_id: txn.into(),
            },
            &backend(),
        ))
        .await
        .map(|r| r.into_inner().transfer.expect("transfer"))
}

async fn exchange_out_takes_only_points_that_buy_whole_units(engine: TestEngine) {
    let t = start(engine).await;
    define(&t, airline(0, 0)).await.expect("partner");
    grant(&t, "m1", 1_000).await;
    let sent = out(&t, "m1", 105, "k1").await.expect("out");
    assert_eq!(sent.direction(), TransferDirection::Out);
    assert_eq!((sent.partner_units, sent.points), (31, 104));
    assert_eq!(available(&t, "m1").await, 896);
    // a replay answers the same transfer and debits nothing more
    assert_eq!(out(&t, "m1", 105, "k1").await.expect("replay"), sent);
    assert_eq!(available(&t, "m1").await, 896);
    let tiny = out(&t, "m1", 3, "k2").await.unwrap_err();
    assert_eq!(violated_fields(&tiny), ["points"]);
    let broke = out(&t, "m1", 5_000, "k3").await.unwrap_err();
    assert_code(&broke, Code::FailedPrecondition);
    assert_eq!(reason(&broke), "INSUFFICIENT_BALANCE");
    assert_eq!(available(&t, "m1").await, 896);
    t.stop().await;
}

async fn member_and_program_limits_hold_per_period(engine: TestEngine) {
    let t = start(engine).await;
    define(&t, airline(200, 300)).await.expect("partner");
    grant(&t, "m1", 1_000).await;
    grant(&t, "m2", 1_000).await;
    out(&t, "m1", 150, "a").await.expect("within");
    let member_over = out(&t, "m1", 100, "b").await.unwrap_err();
    assert_code(&member_over, Code::ResourceExhausted);
    out(&t, "m2", 150, "c").await.expect("program at 300");
    let program_over = out(&t, "m2", 10, "d").await.unwrap_err();
    assert_code(&program_over, Code::ResourceExhausted);
    assert!(
        program_over.message().contains("program"),
        "{program_over:?}"
    );
    assert_eq!(available(&t, "m1").await, 850);
    // a new day, new allowances
    t.clock().advance(chrono::Duration::days(1));
    out(&t, "m1", 100, "e").await.expect("next day");
    t.stop().await;
}

async fn racing_exchanges_never_pass_the_member_limit(engine: TestEngine) {
    let t = start(engine).await;
    define(&t, airline(100, 0)).await.expect("partner");
    grant(&t, "m1", 1_000).await;
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let results = join_all(keys.iter().map(|k| out(&t, "m1", 30, k))).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        3,
        "{results:?}"
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_code(r, Code::ResourceExhausted);
    }
    assert_eq!(available(&t, "m1").await, 910);
    t.stop().await;
}

async fn exchange_in_is_idempotent_on_the_partner_transaction(engine: TestEngine) {
    let t = start(engine).await;
    define(&t, airline(0, 0)).await.expect("partner");
    let first = exchange_in(&t, "m1", 31, "air-777").await.expect("in");
    assert_eq!(first.direction(), TransferDirection::In);
    assert_eq!((first.partner_units, first.points), (31, 103));
    let again = exchange_in(&t, "m1", 31, "air-777").await.expect("replay");
    assert_eq!(again, first);
    assert_eq!(available(&t, "m1").await, 103);
    let changed = exchange_in(&t, "m1", 32, "air-777").await.unwrap_err();
    assert_code(&changed, Code::FailedPrecondition);
    assert_eq!(reason(&changed), "IDEMPOTENCY_KEY_REUSED");
    exchange_in(&t, "m1", 30, "air-778").await.expect("second");
    assert_eq!(available(&t, "m1").await, 203);
    let denied = partners(&t)
        .exchange_in(t.request(
            ExchangeInRequest {
                program_id: PROGRAM.into(),
                member_id: "m1".into(),
                partner_code: "airline".into(),
                partner_units: 30,
                partner_transaction_id: "self-credit".into(),
            },
            &member("m1"),
        ))
        .await
        .unwrap_err();
    assert_code(&denied, Code::PermissionDenied);
    // the member's transfers, page by page, newest first
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = partners(&t)
            .list_partner_transfers(t.request(
                ListPartnerTransfersRequest {
                    program_id: PROGRAM.into(),
                    member_id: "m1".into(),
                    page: Some(PageRequest {
                        page_size: 1,
                        page_token: token,
                    }),
                },
                &member("m1"),
            ))
            .await
            .expect("list")
            .into_inner();
        seen.extend(page.transfers.into_iter().map(|t| t.partner_reference));
        token = page.page.expect("page").next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["air-778", "air-777"]);
    t.stop().await;
}

async fn partner_definitions_are_validated_and_keyed_by_code(engine: TestEngine) {
    let t = start(engine).await;
    let a = define(&t, airline(10, 0)).await.expect("first");
    assert_eq!(define(&t, airline(10, 0)).await.expect("replay"), a);
    let clash = define(&t, airline(20, 0)).await.unwrap_err();
    assert_code(&clash, Code::AlreadyExists);
    let bad = define(
        &t,
        Partner {
            code: "bad".into(),
            rate_out: Some(ExchangeRate {
                from_units: 0,
                to_units: 3,
            }),
            limit_period: 0,
            member_limit_in: -1,
            ..Partner::default()
        },
    )
    .await
    .unwrap_err();
    let fields = violated_fields(&bad);
    for f in [
        "partner.name",
        "partner.rate_out",
        "partner.limit_period",
        "partner.member_limit_in",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} in {fields:?}");
    }
    let denied = partners(&t)
        .create_partner(t.request(
            CreatePartnerRequest {
                program_id: PROGRAM.into(),
                partner: Some(airline(0, 0)),
            },
            &member("m1"),
        ))
        .await
        .unwrap_err();
    assert_code(&denied, Code::PermissionDenied);
    t.stop().await;
}

test_on_both_engines!(
    exchange_out_takes_only_points_that_buy_whole_units,
    member_and_program_limits_hold_per_period,
    racing_exchanges_never_pass_the_member_limit,
    exchange_in_is_idempotent_on_the_partner_transaction,
    partner_definitions_are_validated_and_keyed_by_code,
);
