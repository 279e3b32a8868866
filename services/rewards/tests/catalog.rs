//! The rewards catalog over real gRPC on both engines: items, stock,
//! per-member limits, validity, redemption orders that reserve stock and
//! points atomically and return them exactly on cancel, idempotency, and
//! concurrent redemptions that never oversell or pass a member's limit.

mod catalog_support;

use catalog_support::*;
use futures::future::join_all;
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::{TestEngine, TestService};
use loyalty_proto::common::PageRequest;
use loyalty_proto::events::TierChanged;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::rewards::v1::{
    CancelRedemptionRequest, CatalogItem, CatalogItemKind, CouponPool, CouponState,
    CreateCatalogItemRequest, CreateCouponPoolRequest, FulfilRedemptionRequest,
    GetCatalogItemRequest, ListCatalogItemsRequest, ListMemberCouponsRequest,
    ListRedemptionsRequest, RedeemRewardRequest, RedeemRewardResponse, RedemptionState,
    RestockCatalogItemRequest, UpdateCatalogItemRequest,
};
use prost_types::FieldMask;
use tonic::{Code, Status};

fn goods(cost: i64, stock: i64) -> CatalogItem {
    CatalogItem {
        kind: CatalogItemKind::Goods.into(),
        name: "Tote bag".into(),
        points_cost: cost,
        stock_remaining: stock,
        active: true,
        ..CatalogItem::default()
    }
}

async fn create(t: &TestService, item: CatalogItem) -> CatalogItem {
    catalog(t)
        .create_catalog_item(t.request(
            CreateCatalogItemRequest {
                program_id: PROGRAM.into(),
                item: Some(item),
                idempotency_key: uuid::Uuid::new_v4().to_string(),
            },
            &admin(),
        ))
        .await
        .expect("create item")
        .into_inner()
        .item
        .expect("item")
}

async fn stock(t: &TestService, item_id: &str) -> i64 {
    catalog(t)
        .get_catalog_item(t.request(
            GetCatalogItemRequest {
                program_id: PROGRAM.into(),
                item_id: item_id.into(),
            },
            &admin(),
        ))
        .await
        .expect("get item")
        .into_inner()
        .item
        .expect("item")
        .stock_remaining
}

async fn redeem(
    t: &TestService,
    member_id: &str,
    item_id: &str,
    quantity: i64,
    key: &str,
) -> Result<RedeemRewardResponse, Status> {
    catalog(t)
        .redeem_reward(t.request(
            RedeemRewardRequest {
                program_id: PROGRAM.into(),
                member_id: member_id.into(),
                item_id: item_id.into(),
                quantity,
                idempotency_key: key.into(),
            },
            &member(member_id),
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn redemption_reserves_then_cancel_returns_points_and_stock_exactly(engine: TestEngine) {
    let t = start(engine).await;
    let item = create(&t, goods(100, 5)).await;
    grant(&t, "m1", 350).await;

    let order = redeem(&t, "m1", &item.item_id, 2, "k1")
        .await
        .expect("redeem")
        .redemption
        .expect("order");
    assert_eq!(order.state(), RedemptionState::Reserved);
    assert_eq!(order.points, 200);
    assert_eq!(stock(&t, &item.item_id).await, 3);
    assert_eq!(available(&t, "m1").await, 150);
    // reserved is not redeemed: nothing is announced until fulfilment
    assert!(emitted(&t, "RewardRedeemed").await.is_empty());

    let cancel = |who| {
        t.request(
            CancelRedemptionRequest {
                program_id: PROGRAM.into(),
                redemption_id: order.redemption_id.clone(),
                reason: "changed my mind".into(),
            },
            &who,
        )
    };
    // another member can neither see nor cancel it
    let denied = catalog(&t)
        .cancel_redemption(cancel(member("m2")))
        .await
        .unwrap_err();
    assert_code(&denied, Code::PermissionDenied);

    let cancelled = catalog(&t)
        .cancel_redemption(cancel(member("m1")))
        .await
        .expect("cancel")
        .into_inner()
        .redemption
        .expect("order");
    assert_eq!(cancelled.state(), RedemptionState::Cancelled);
    assert_eq!(stock(&t, &item.item_id).await, 5);
    assert_eq!(available(&t, "m1").await, 350);
    // cancelling again changes nothing
    catalog(&t)
        .cancel_redemption(cancel(admin()))
        .await
        .expect("cancel replay");
    assert_eq!(available(&t, "m1").await, 350);
    assert_eq!(stock(&t, &item.item_id).await, 5);
    // the points came back through one reversing ledger entry, announced once
    let returned: Vec<_> = emitted(&t, "PointsEarned")
        .await
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(Payload::PointsEarned(p)) if p.entry_kind == "reverse" => Some(p.points),
            _ => None,
        })
        .collect();
    assert_eq!(returned, [200]);
    // a cancelled order cannot be fulfilled
    let late = catalog(&t)
        .fulfil_redemption(t.request(
            FulfilRedemptionRequest {
                program_id: PROGRAM.into(),
                redemption_id: order.redemption_id.clone(),
            },
            &backend(),
        ))
        .await
        .unwrap_err();
    assert_code(&late, Code::FailedPrecondition);
    assert!(emitted(&t, "RewardRedeemed").await.is_empty());
    t.stop().await;
}

async fn fulfilled_orders_are_final_and_only_operators_fulfil(engine: TestEngine) {
    let t = start(engine).await;
    let item = create(&t, goods(50, 2)).await;
    grant(&t, "m1", 100).await;
    let order = redeem(&t, "m1", &item.item_id, 1, "k1")
        .await
        .expect("redeem")
        .redemption
        .expect("order");
    let fulfil = |who| {
        t.request(
            FulfilRedemptionRequest {
                program_id: PROGRAM.into(),
                redemption_id: order.redemption_id.clone(),
            },
            &who,
        )
    };
    let denied = catalog(&t)
        .fulfil_redemption(fulfil(member("m1")))
        .await
        .unwrap_err();
    assert_code(&denied, Code::PermissionDenied);
    for _ in 0..2 {
        let done = catalog(&t)
            .fulfil_redemption(fulfil(backend()))
            .await
            .expect("fulfil (replay answers the same)")
            .into_inner()
            .redemption
            .expect("order");
        assert_eq!(done.state(), RedemptionState::Fulfilled);
    }
    // announced at fulfilment, once although fulfil was replayed
    let redeemed: Vec<_> = emitted(&t, "RewardRedeemed")
        .await
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(Payload::RewardRedeemed(r)) => Some((e.member_id, r)),
            _ => None,
        })
        .collect();
    assert_eq!(redeemed.len(), 1);
    let (who, r) = &redeemed[0];
    assert_eq!(who, "m1");
    assert_eq!(r.redemption_id, order.redemption_id);
    assert_eq!((r.points, r.quantity), (50, 1));
    assert_eq!(r.item_kind, "goods");
    let refused = catalog(&t)
        .cancel_redemption(t.request(
            CancelRedemptionRequest {
                program_id: PROGRAM.into(),
                redemption_id: order.redemption_id.clone(),
                reason: String::new(),
            },
            &member("m1"),
        ))
        .await
        .unwrap_err();
    assert_code(&refused, Code::FailedPrecondition);
    assert_eq!(available(&t, "m1").await, 50);
    t.stop().await;
}

async fn racing_members_never_oversell_the_last_units(engine: TestEngine) {
    let t = start(engine).await;
    let item = create(&t, goods(100, 3)).await;
    let members: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
    for m in &members {
        grant(&t, m, 100).await;
    }
    let results = join_all(
        members
            .iter()
            .map(|m| redeem(&t, m, &item.item_id, 1, "race")),
    )
    .await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 3, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_code(r, Code::FailedPrecondition);
        assert_eq!(reason(r), "INSUFFICIENT_BALANCE");
    }
    assert_eq!(stock(&t, &item.item_id).await, 0);
    let mut total = 0;
    for m in &members {
        total += available(&t, m).await;
    }
    assert_eq!(total, 12 * 100 - 3 * 100);
    t.stop().await;
}

async fn one_member_racing_past_the_per_member_limit_never_exceeds_it(engine: TestEngine) {
    let t = start(engine).await;
    let item = create(
        &t,
        CatalogItem {
            unlimited_stock: true,
            per_member_limit: 2,
            ..goods(10, 0)
        },
    )
    .await;
    grant(&t, "m1", 1_000).await;
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let results = join_all(keys.iter().map(|k| redeem(&t, "m1", &item.item_id, 1, k))).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        2,
        "{results:?}"
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_code(r, Code::FailedPrecondition);
    }
    assert_eq!(available(&t, "m1").await, 980);
    // cancelling one order frees one unit of the limit
    let first = results
        .iter()
        .find_map(|r| r.as_ref().ok())
        .and_then(|r| r.redemption.clone())
        .expect("an order");
    catalog(&t)
        .cancel_redemption(t.request(
            CancelRedemptionRequest {
                program_id: PROGRAM.into(),
                redemption_id: first.redemption_id,
                reason: String::new(),
            },
            &member("m1"),
        ))
        .await
        .expect("cancel");
    redeem(&t, "m1", &item.item_id, 1, "after-cancel")
        .await
        .expect("within the limit again");
    let over = redeem(&t, "m1", &item.item_id, 1, "over")
        .await
        .unwrap_err();
    assert_code(&over, Code::FailedPrecondition);
    t.stop().await;
}

async fn a_replayed_redemption_charges_once(engine: TestEngine) {
    let t = start(engine).await;
    let item = create(&t, goods(40, 10)).await;
    let other = create(&t, goods(40, 10)).await;
    grant(&t, "m1", 100).await;
    let a = redeem(&t, "m1", &item.item_id, 1, "same")
        .await
        .expect("first");
    let b = redeem(&t, "m1", &item.item_id, 1, "same")
        .await
        .expect("replay");
    assert_eq!(a, b);
    assert_eq!(available(&t, "m1").await, 60);
    assert_eq!(stock(&t, &item.item_id).await, 9);
    let reused = redeem(&t, "m1", &other.item_id, 1, "same")
        .await
        .unwrap_err();
    assert_code(&reused, Code::FailedPrecondition);
    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED");
    let missing = redeem(&t, "m1", &item.item_id, 1, "").await.unwrap_err();
    assert_eq!(violated_fields(&missing), ["idempotency_key"]);
    t.stop().await;
}

async fn not_enough_points_reserves_nothing(engine: TestEngine) {
    let t = start(engine).await;
    let item = create(&t, goods(100, 1)).await;
    grant(&t, "m1", 99).await;
    let err = redeem(&t, "m1", &item.item_id, 1, "k").await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition);
    assert_eq!(reason(&err), "INSUFFICIENT_BALANCE");
    assert_eq!(stock(&t, &item.item_id).await, 1);
    assert_eq!(available(&t, "m1").await, 99);
    assert!(emitted(&t, "RewardRedeemed").await.is_empty());
    t.stop().await;
}

async fn validity_window_and_tiers_gate_redemption(engine: TestEngine) {
    let t = start(engine).await;
    let now = t.clock().now();
    let ts = |d: chrono::DateTime<chrono::Utc>| prost_types::Timestamp {
        seconds: d.timestamp(),
        nanos: 0,
    };
    let item = create(
        &t,
        CatalogItem {
            valid_from: Some(ts(now + chrono::Duration::days(1))),
            valid_until: Some(ts(now + chrono::Duration::days(3))),
            ..goods(10, 10)
        },
    )
    .await;
    let gold = create(
        &t,
        CatalogItem {
            eligible_tiers: vec!["GOLD".into()],
            ..goods(10, 10)
        },
    )
    .await;
    grant(&t, "m1", 100).await;
    let early = redeem(&t, "m1", &item.item_id, 1, "a").await.unwrap_err();
    assert_code(&early, Code::FailedPrecondition);
    t.clock().advance(chrono::Duration::days(2));
    redeem(&t, "m1", &item.item_id, 1, "b")
        .await
        .expect("inside the window");
    t.clock().advance(chrono::Duration::days(2));
    let late = redeem(&t, "m1", &item.item_id, 1, "c").await.unwrap_err();
    assert_code(&late, Code::FailedPrecondition);
    // a member without the tier is refused
    let tier = redeem(&t, "m1", &gold.item_id, 1, "d").await.unwrap_err();
    assert_code(&tier, Code::FailedPrecondition);
    assert!(tier.message().contains("tier"), "{tier:?}");
    // the tier comes from TierChanged events
    t.publish(&[event(
        "m1",
        Payload::TierChanged(TierChanged {
            from_tier: String::new(),
            to_tier: "GOLD".into(),
            reason: "threshold_reached".into(),
            points_multiplier_bp: 10_000,
        }),
    )])
    .await;
    redeem(&t, "m1", &gold.item_id, 1, "e")
        .await
        .expect("gold member");
    t.stop().await;
}

async fn coupon_items_issue_a_coupon_at_once(engine: TestEngine) {
    let t = start(engine).await;
    let pool = coupons(&t)
        .create_coupon_pool(t.request(
            CreateCouponPoolRequest {
                program_id: PROGRAM.into(),
                pool: Some(CouponPool {
                    name: "10 off".into(),
                    description: "10 CNY off".into(),
                    valid_days: 30,
                    ..CouponPool::default()
                }),
                idempotency_key: "pool-1".into(),
            },
            &admin(),
        ))
        .await
        .expect("pool")
        .into_inner()
        .pool
        .expect("pool");
    let item = create(
        &t,
        CatalogItem {
            kind: CatalogItemKind::Coupon.into(),
            coupon_pool_id: pool.pool_id.clone(),
            ..goods(30, 10)
        },
    )
    .await;
    grant(&t, "m1", 30).await;
    let r = redeem(&t, "m1", &item.item_id, 1, "k")
        .await
        .expect("redeem");
    let order = r.redemption.expect("order");
    assert_eq!(order.state(), RedemptionState::Fulfilled);
    assert!(!order.coupon_id.is_empty());
    assert_eq!(r.coupon_code.len(), 19, "XXXX-XXXX-XXXX-XXXX");
    let list = coupons(&t)
        .list_member_coupons(t.request(
            ListMemberCouponsRequest {
                program_id: PROGRAM.into(),
                member_id: "m1".into(),
                state: CouponState::Issued.into(),
                page: None,
            },
            &member("m1"),
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.coupons.len(), 1);
    assert_eq!(list.coupons[0].code, r.coupon_code);
    assert_eq!(emitted(&t, "CouponIssued").await.len(), 1);
    // fulfilled in the same call, so redeemed at once
    assert_eq!(emitted(&t, "RewardRedeemed").await.len(), 1);
    t.stop().await;
}

async fn bad_input_and_callers_are_refused(engine: TestEngine) {
    let t = start(engine).await;
    let err = catalog(&t)
        .create_catalog_item(t.request(
            CreateCatalogItemRequest {
                program_id: PROGRAM.into(),
                item: Some(CatalogItem {
                    points_cost: -5,
                    stock_remaining: -1,
                    ..CatalogItem::default()
                }),
                idempotency_key: "k".into(),
            },
            &admin(),
        ))
        .await
        .unwrap_err();
    let fields = violated_fields(&err);
    for f in [
        "item.name",
        "item.points_cost",
        "item.kind",
        "item.stock_remaining",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} in {fields:?}");
    }
    let denied = catalog(&t)
        .create_catalog_item(t.request(
            CreateCatalogItemRequest {
                program_id: PROGRAM.into(),
                item: Some(goods(1, 1)),
                idempotency_key: "k".into(),
            },
            &member("m1"),
        ))
        .await
        .unwrap_err();
    assert_code(&denied, Code::PermissionDenied);
    let item = create(&t, goods(10, 1)).await;
    // a member redeeming for another member
    let other = catalog(&t)
        .redeem_reward(t.request(
            RedeemRewardRequest {
                program_id: PROGRAM.into(),
                member_id: "m2".into(),
                item_id: item.item_id.clone(),
                quantity: 1,
                idempotency_key: "x".into(),
            },
            &member("m1"),
        ))
        .await
        .unwrap_err();
    assert_code(&other, Code::PermissionDenied);
    let qty = redeem(&t, "m1", &item.item_id, 101, "q").await.unwrap_err();
    assert_eq!(violated_fields(&qty), ["quantity"]);
    let unknown = redeem(&t, "m1", "nope", 1, "u").await.unwrap_err();
    assert_code(&unknown, Code::NotFound);
    let restock = catalog(&t)
        .restock_catalog_item(t.request(
            RestockCatalogItemRequest {
                program_id: PROGRAM.into(),
                item_id: item.item_id.clone(),
                delta: -2,
                idempotency_key: "r".into(),
            },
            &admin(),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&restock), ["delta"]);
    t.stop().await;
}

async fn items_are_paged_updated_and_hidden_from_members_when_inactive(engine: TestEngine) {
    let t = start(engine).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(create(&t, goods(10, 1)).await.item_id);
    }
    let updated = catalog(&t)
        .update_catalog_item(t.request(
            UpdateCatalogItemRequest {
                program_id: PROGRAM.into(),
                item_id: ids[0].clone(),
                item: Some(CatalogItem {
                    active: false,
                    points_cost: 999,
                    ..CatalogItem::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["active".into()],
                }),
            },
            &admin(),
        ))
        .await
        .expect("update")
        .into_inner()
        .item
        .expect("item");
    assert!(!updated.active);
    assert_eq!(updated.points_cost, 10, "fields outside the mask stay");
    let list = |who, token: String, include_inactive| {
        let mut c = catalog(&t);
        let req = t.request(
            ListCatalogItemsRequest {
                program_id: PROGRAM.into(),
                page: Some(PageRequest {
                    page_size: 2,
                    page_token: token,
                }),
                include_inactive,
            },
            &who,
        );
        async move { c.list_catalog_items(req).await.expect("list").into_inner() }
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(member("m1"), token, false).await;
        seen.extend(page.items.into_iter().map(|i| i.item_id));
        token = page.page.expect("page").next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ids[1..]);
    let all = list(admin(), String::new(), true).await;
    assert_eq!(all.items.len(), 2);
    let denied = catalog(&t)
        .list_catalog_items(t.request(
            ListCatalogItemsRequest {
                program_id: PROGRAM.into(),
                page: None,
                include_inactive: true,
            },
            &member("m1"),
        ))
        .await
        .unwrap_err();
    assert_code(&denied, Code::PermissionDenied);
    let redemptions = catalog(&t)
        .list_redemptions(t.request(
            ListRedemptionsRequest {
                program_id: PROGRAM.into(),
                member_id: "m2".into(),
                page: None,
            },
            &member("m1"),
        ))
        .await
        .unwrap_err();
    assert_code(&redemptions, Code::PermissionDenied);
    t.stop().await;
}

test_on_both_engines!(
    redemption_reserves_then_cancel_returns_points_and_stock_exactly,
    fulfilled_orders_are_final_and_only_operators_fulfil,
    racing_members_never_oversell_the_last_units,
    one_member_racing_past_the_per_member_limit_never_exceeds_it,
    a_replayed_redemption_charges_once,
    not_enough_points_reserves_nothing,
    validity_window_and_tiers_gate_redemption,
    coupon_items_issue_a_coupon_at_once,
    bad_input_and_callers_are_refused,
    items_are_paged_updated_and_hidden_from_members_when_inactive,
);
