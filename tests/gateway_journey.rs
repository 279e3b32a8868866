//! The member journey through the gateway, over HTTP, with real services:
//! a program admin (staff JWT) sets up the program, the POS (backend API
//! key) enrols a member and records a purchase, the member (member JWT)
//! sees points and tier progress, redeems, checks in, and sees the coupon
//! an admin issued, and the home endpoint assembles it all. Plus the
//! object-level refusals on real member routes, the page-size cap, and a
//! home whose sections degrade alone when a service is down.

#[path = "gateway_support.rs"]
mod support;

use std::time::{Duration, Instant};

use loyalty::{ALL_SERVICES, Selection};
use serde_json::{Value, json};
use support::*;

loyalty_common::test_on_both_engines!(member_journey);

async fn member_journey(engine: TestEngine) {
    let suite = Suite::start_on(engine, &[]).await;
    let h = suite.http;
    let member = journey_setup(&suite).await;
    let me = [bearer(&member_token(PROGRAM, &member))];
    let base = format!("/v1/programs/{PROGRAM}/members/{member}");

    // the POS records a purchase of 128.00 CNY
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let r = post(
        h,
        &format!("/v1/programs/{PROGRAM}/purchases"),
        &[api_key()],
        &json!({"memberId": member, "purchase": {
            "orderId": "order-1", "amount": {"minorUnits": "12800", "currency": "CNY"},
            "channel": "store", "storeId": "s-1", "purchasedAt": at
        }}),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "purchase: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["points"], "128");
    // the same order again is a replay, not a second earning
    let again = post(
        h,
        &format!("/v1/programs/{PROGRAM}/purchases"),
        &[api_key()],
        &json!({"memberId": member, "purchase": {
            "orderId": "order-1", "amount": {"minorUnits": "12800", "currency": "CNY"},
            "channel": "store", "storeId": "s-1", "purchasedAt": at
        }}),
    )
    .await;
    assert_eq!(
        again.status,
        200,
        "replay: {}",
        String::from_utf8_lossy(&again.body)
    );

    // the member sees the points
    let r = get(h, &format!("{base}/balance"), &me).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["balance"]["available"], "128", "{}", r.json());

    // tier progress follows the purchase (an event from rewards to membership)
    let started = Instant::now();
    let progress = loop {
        let r = get(h, &format!("{base}/tier-progress"), &me).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let p = r.json()["progress"].clone();
        if p["qualifyingValue"] == "12800" {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "tier progress: {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(progress["currentTier"]["code"], "GREEN");
    assert_eq!(progress["nextTier"]["code"], "GOLD");
    assert_eq!(progress["remainingToNext"], "37200");

    // an admin puts a reward worth 100 points in the catalog; the member
    // redeems it (POST …/members/{member_id}/redemptions)
    let r = post(
        h,
        &format!("/v1/programs/{PROGRAM}/catalog/items"),
        &admin(),
        &json!({"item": {"kind": "CATALOG_ITEM_KIND_GOODS", "name": "Tea cup", "pointsCost": "100", "unlimitedStock": true, "active": true}, "idempotencyKey": "item-1"}),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "catalog item: {}",
        String::from_utf8_lossy(&r.body)
    );
    let item = r.json()["item"]["itemId"].as_str().unwrap().to_owned();
    let r = post(
        h,
        &format!("{base}/redemptions"),
        &me,
        &json!({"itemId": item, "quantity": "1", "idempotencyKey": "redeem-1"}),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "redeem: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["redemption"]["points"], "100", "{}", r.json());
    let r = get(h, &format!("{base}/balance"), &me).await;
    assert_eq!(r.json()["balance"]["available"], "28", "{}", r.json());
    let r = post(h, &format!("{base}:check-in"), &me, &json!({})).await;
    assert_eq!(
        r.status,
        200,
        "check-in: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["streakDays"], 1);
    // more than the balance: the service's refusal, mapped
    let r = post(
        h,
        &format!("{base}/redemptions"),
        &me,
        &json!({"itemId": item, "quantity": "1", "idempotencyKey": "redeem-2"}),
    )
    .await;
    assert!(matches!(r.status, 400 | 409), "{}", r.status);
    assert_eq!(r.json()["reason"], "INSUFFICIENT_BALANCE", "{}", r.json());

    // an admin issues a coupon; the member sees it
    let r = post(
        h,
        &format!("/v1/programs/{PROGRAM}/coupon-pools"),
        &admin(),
        &json!({"pool": {"name": "Welcome", "description": "5 off", "discount": {"minorUnits": "500", "currency": "CNY"}, "validDays": 30, "maxIssued": "100"}, "idempotencyKey": "pool-1"}),
    )
    .await;
    assert_eq!(r.status, 200, "pool: {}", String::from_utf8_lossy(&r.body));
    let pool = r.json()["pool"]["poolId"].as_str().unwrap().to_owned();
    let r = post(
        h,
        &format!("/v1/programs/{PROGRAM}/coupon-pools/{pool}:issue"),
        &admin(),
        &json!({"memberId": member, "idempotencyKey": "issue-1"}),
    )
    .await;
    assert_eq!(r.status, 200, "issue: {}", String::from_utf8_lossy(&r.body));
    let r = get(h, &format!("{base}/coupons"), &me).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["coupons"].as_array().unwrap().len(),
        1,
        "{}",
        r.json()
    );

    // the home: every section of the existing services answers
    let r = get(h, &format!("{base}/home"), &me).await;
    assert_eq!(r.status, 200);
    let home = r.json();
    let s = &home["sections"];
    assert_eq!(s["profile"]["status"], "OK", "{home}");
    assert_eq!(s["profile"]["data"]["member"]["memberId"], member.as_str());
    assert_eq!(
        s["tierProgress"]["data"]["progress"]["currentTier"]["code"],
        "GREEN"
    );
    assert_eq!(s["balance"]["data"]["balance"]["available"], "28");
    assert!(
        s["balance"]["data"]["balance"]["nextExpiryAt"].is_string(),
        "{home}"
    );
    assert_eq!(s["coupons"]["data"]["coupons"].as_array().unwrap().len(), 1);

    // a member never touches another member: path, body (gRPC), query
    let other = journey_member(&suite).await;
    let r = get(
        h,
        &format!("/v1/programs/{PROGRAM}/members/{other}/balance"),
        &me,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "PERMISSION_DENIED");
    // a member may not record purchases or issue coupons (program-level routes)
    let r = post(
        h,
        &format!("/v1/programs/{PROGRAM}/purchases"),
        &me,
        &json!({"memberId": member, "purchase": {"orderId": "self", "amount": {"minorUnits": "1", "currency": "CNY"}}}),
    )
    .await;
    assert_eq!(r.status, 403);
    let mut client =
        loyalty_proto::loyalty::rewards::v1::rewards_service_client::RewardsServiceClient::new(
            tonic::transport::Channel::from_shared(format!("http://{h}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    let mut req = tonic::Request::new(loyalty_proto::loyalty::rewards::v1::GetBalanceRequest {
        program_id: PROGRAM.into(),
        member_id: other.clone(),
    });
    req.metadata_mut()
        .insert("authorization", me[0].1.parse().unwrap());
    let err = client.get_balance(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // another member's id in a query parameter is refused, even where the
    // path binds the field (the transcoder would not apply it), on every
    // member GET route; the member's own id passes
    let doc = get(h, "/openapi.json", &[]).await.json();
    let mut queried = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let Some(op) = ops.get("get") else { continue };
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        if !params
            .iter()
            .any(|p| p["in"] == "path" && p["name"] == "member_id")
        {
            continue;
        }
        let concrete = fill_path(path, &params, &member);
        for name in ["member_id", "memberId"] {
            let url = format!("{concrete}?{name}={other}");
            let r = get(h, &url, &me).await;
            assert_eq!(r.status, 403, "{url}");
            assert_eq!(r.json()["code"], "PERMISSION_DENIED", "{url}");
        }
        let url = format!("{concrete}?member_id={member}");
        let r = get(h, &url, &me).await;
        assert!(
            r.status != 403 && r.status < 500,
            "{url}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        queried += 1;
    }
    assert!(queried >= 5, "member GET routes checked: {queried}");
    let r = get(h, &format!("{base}/balance?member_id={member}"), &me).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["balance"]["available"], "28", "{}", r.json());
    // a write whose body is the whole message, and the home endpoint
    let r = post(
        h,
        &format!("{base}:check-in?memberId={other}"),
        &me,
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = get(h, &format!("{base}/home?member_id={other}"), &me).await;
    assert_eq!(r.status, 403);
    let r = get(h, &format!("{base}/home?member_id={member}"), &me).await;
    assert_eq!(r.status, 200);
    // the page-size cap, naming the field
    let r = get(h, &format!("{base}/coupons?page.page_size=1000"), &me).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["fieldViolations"][0]["field"], "page.page_size");

    suite.stop().await;
}

/// A second member, enrolled by the backend key.
async fn journey_member(suite: &Suite) -> String {
    let r = post(
        suite.http,
        &format!("/v1/programs/{PROGRAM}/members"),
        &[api_key()],
        &json!({"externalId": format!("app-user-{}", uuid::Uuid::new_v4().simple()), "enrolmentChannel": "app"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["member"]["memberId"].as_str().unwrap().to_owned()
}

/// A concrete path for a documented template: program p1, the member, "x".
fn fill_path(template: &str, params: &[Value], member: &str) -> String {
    let mut out = template.to_owned();
    for p in params.iter().filter(|p| p["in"] == "path") {
        let name = p["name"].as_str().unwrap();
        let value = match name {
            "program_id" => PROGRAM,
            "member_id" => member,
            _ => "x",
        };
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

#[tokio::test]
async fn home_sections_degrade_alone_when_a_service_is_down() {
    // rewards alone on its own port; the rest of the suite beside it
    let rewards = Suite::start_service("rewards").await;
    let addr = format!("http://{}", rewards.grpc.unwrap());
    let selection = Selection {
        services: ALL_SERVICES
            .iter()
            .filter(|s| s.name != "rewards")
            .copied()
            .collect(),
        gateway: true,
    };
    let suite = Suite::start_selection(
        &[
            ("rewards_addr", addr.as_str()),
            ("gateway_home_deadline", "1500ms"),
        ],
        selection,
    )
    .await;
    let h = suite.http;
    let r = post(h, "/v1/programs", &admin(), &json!({"program": {
        "programId": PROGRAM, "name": "Tea House", "currency": "CNY", "timeZone": "Asia/Shanghai",
        "tiers": [{"code": "GREEN", "name": "Green", "threshold": "0"}],
        "qualifyingMetric": "QUALIFYING_METRIC_SPEND",
        "qualifyingWindow": {"rollingMonths": 12},
        "evaluationPolicy": {"anniversaryMonths": 12}
    }})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let member = journey_member(&suite).await;
    let me = [bearer(&member_token(PROGRAM, &member))];
    let home = format!("/v1/programs/{PROGRAM}/members/{member}/home");
    let r = get(h, &home, &me).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["sections"]["balance"]["status"],
        "OK",
        "{}",
        r.json()
    );

    rewards.stop().await;
    let started = Instant::now();
    loop {
        let r = get(h, &home, &me).await;
        assert_eq!(r.status, 200, "the home answers while rewards is down");
        let s = r.json()["sections"].clone();
        if s["balance"]["status"] == "UNAVAILABLE" {
            assert_eq!(s["coupons"]["status"], "UNAVAILABLE");
            assert_eq!(s["profile"]["status"], "OK", "{s}");
            assert_eq!(s["tierProgress"]["status"], "OK", "{s}");
            assert!(s["balance"].get("data").is_none());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // and the rewards routes answer 503 while membership's keep working
    let r = get(
        h,
        &format!("/v1/programs/{PROGRAM}/members/{member}/balance"),
        &me,
    )
    .await;
    assert_eq!(r.status, 503);
    let r = get(h, &format!("/v1/programs/{PROGRAM}/members/{member}"), &me).await;
    assert_eq!(r.status, 200);
    suite.stop().await;
}

#[tokio::test]
async fn a_slow_service_costs_the_home_its_section_not_the_deadline() {
    // rewards answers nothing (accepts connections, never replies)
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let addr = format!("http://{hole_addr}");
    let selection = Selection {
        services: ALL_SERVICES
            .iter()
            .filter(|s| s.name != "rewards")
            .copied()
            .collect(),
        gateway: true,
    };
    let suite = Suite::start_selection(
        &[
            ("rewards_addr", addr.as_str()),
            ("gateway_home_deadline", "400ms"),
            ("gateway_health_interval", "30s"),
        ],
        selection,
    )
    .await;
    let started = Instant::now();
    let r = get(
        suite.http,
        &format!("/v1/programs/{PROGRAM}/members/m1/home"),
        &[bearer(&member_token(PROGRAM, "m1"))],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    let s = r.json()["sections"].clone();
    // the first probe of the hole takes a second: until then rewards is
    // tried and times out within the home deadline
    if took < Duration::from_millis(900) {
        assert_eq!(s["balance"]["status"], "DEADLINE_EXCEEDED", "{s}");
    }
    // membership answered (the member does not exist: NOT_FOUND, not a timeout)
    assert_eq!(s["profile"]["status"], "NOT_FOUND", "{s}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    suite.stop().await;
}
