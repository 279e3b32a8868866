//! Coupons over real gRPC on both engines: issue, validate and redeem once
//! at the point of sale, concurrent double redemption, expiry, per-caller
//! brute-force limits, campaign actions (coupons and points) applied once
//! however often they are delivered, the member's own list, the expiry job,
//! and the id and page-size rules shared with the points core.

mod catalog_support;

use std::time::Duration;

use catalog_support::*;
use futures::future::join_all;
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::{self, TestEngine, TestService};
use loyalty_proto::common::PageRequest;
use loyalty_proto::events::CampaignActionRequested;
use loyalty_proto::events::campaign_action_requested::Action;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::rewards::v1::rewards_service_client::RewardsServiceClient;
use loyalty_proto::loyalty::rewards::v1::{
    AdjustRequest, Coupon, CouponPool, CouponSource, CouponState, CreateCouponPoolRequest,
    GetBalanceRequest, IssueCouponRequest, ListLedgerEntriesRequest, ListMemberCouponsRequest,
    RedeemCouponRequest, RunCouponExpiryRequest, ValidateCouponRequest,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

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
    member_coupons(t, member_id, state).await.expect("list")
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

async fn a_burst_of_concurrent_guesses_cannot_pass_the_limit(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 30, 0).await;
    let c = issue(&t, &p.pool_id, "m1").await.expect("issue");
    let pos = testing::backend(PROGRAM);
    // successful attempts do not use up the budget
    for _ in 0..25 {
        validate_as(&t, &pos, &c.code).await.expect("valid code");
    }
    let symbols = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
    let guesses: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "{}{}{}",
                "B".repeat(14),
                char::from(symbols[i % 32]),
                char::from(symbols[i / 32])
            )
        })
        .collect();
    let results = join_all(guesses.iter().map(|g| validate_as(&t, &pos, g))).await;
    let codes: Vec<Code> = results
        .iter()
        .map(|r| r.as_ref().map_or_else(Status::code, |_| Code::Ok))
        .collect();
    let not_found = codes.iter().filter(|c| **c == Code::NotFound).count();
    let limited = codes
        .iter()
        .filter(|c| **c == Code::ResourceExhausted)
        .count();
    assert_eq!((not_found, limited), (20, 20), "{codes:?}");
    t.stop().await;
}

async fn run_expiry(t: &TestService, who: &loyalty_common::auth::Principal) -> Result<i64, Status> {
    coupons(t)
        .run_coupon_expiry(t.request(
            RunCouponExpiryRequest {
                program_id: PROGRAM.into(),
            },
            who,
        ))
        .await
        .map(|r| {
            let r = r.into_inner();
            assert!(r.ran, "{r:?}");
            r.processed
        })
}

/// When the expiry job marked the coupon (None: not marked).
async fn marked_expired(t: &TestService, coupon_id: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT expired_at FROM coupons WHERE coupon_id = $1")
        .bind(coupon_id)
        .fetch_one(t.rt("rewards").db.pool())
        .await
        .expect("coupon row")
}

async fn expiry_starts_at_the_validity_end_and_the_job_marks_each_coupon_once(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 1, 0).await;
    let kept = issue(&t, &p.pool_id, "m1").await.expect("issue");
    let used = issue(&t, &p.pool_id, "m1").await.expect("issue");
    // the manual clock stands still: both end at the same instant
    assert_eq!(kept.expires_at, used.expires_at);
    let end = used.expires_at.expect("expires_at");
    let end =
        chrono::DateTime::from_timestamp(end.seconds, end.nanos.unsigned_abs()).expect("instant");

    // the last microsecond of validity: usable, nothing to mark
    t.clock().set(end - chrono::Duration::microseconds(1));
    validate_as(&t, &backend(), &kept.code)
        .await
        .expect("valid until its end");
    redeem(&t, &used.code, "order-1")
        .await
        .expect("redeem in time");
    assert_eq!(run_expiry(&t, &admin()).await.expect("run"), 0);

    // from the end on, refused with a stable reason before the job has run
    t.clock().set(end);
    assert_eq!(marked_expired(&t, &kept.coupon_id).await, None);
    let expired = validate_as(&t, &backend(), &kept.code).await.unwrap_err();
    assert_code(&expired, Code::FailedPrecondition);
    assert_eq!(reason(&expired), "COUPON_EXPIRED");
    let late = redeem(&t, &kept.code, "order-2").await.unwrap_err();
    assert_eq!(reason(&late), "COUPON_EXPIRED");
    // a redeemed coupon says so, whatever its validity
    let twice = redeem(&t, &used.code, "order-3").await.unwrap_err();
    assert_eq!(reason(&twice), "COUPON_ALREADY_REDEEMED");

    // only a program admin runs the job; it marks the unused coupon only, once
    let denied = run_expiry(&t, &backend()).await.unwrap_err();
    assert_code(&denied, Code::PermissionDenied);
    assert_eq!(run_expiry(&t, &admin()).await.expect("run"), 1);
    assert_eq!(run_expiry(&t, &admin()).await.expect("rerun"), 0);
    assert!(marked_expired(&t, &kept.coupon_id).await.is_some());
    assert_eq!(marked_expired(&t, &used.coupon_id).await, None);
    let listed = list(&t, "m1", CouponState::Expired).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].coupon_id, kept.coupon_id);
    assert_eq!(list(&t, "m1", CouponState::Redeemed).await.len(), 1);
    // a marked coupon stays expired (the mark is final, whatever the clock says)
    t.clock().set(end - chrono::Duration::hours(1));
    let still = validate_as(&t, &backend(), &kept.code).await.unwrap_err();
    assert_eq!(reason(&still), "COUPON_EXPIRED");
    assert!(list(&t, "m1", CouponState::Issued).await.is_empty());
    t.stop().await;
}

async fn campaign_grants_apply_once_however_often_delivered(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 30, 0).await;
    let grant = event(
        "m9",
        Payload::CampaignActionRequested(CampaignActionRequested {
            campaign_id: "winback".into(),
            action_id: "grant-1".into(),
            action: Some(Action::GrantPoints(250)),
        }),
    );
    let coupon = event(
        "m9",
        Payload::CampaignActionRequested(CampaignActionRequested {
            campaign_id: "winback".into(),
            action_id: "coupon-1".into(),
            action: Some(Action::IssueCouponPoolId(p.pool_id.clone())),
        }),
    );
    // each delivered twice as is (a redelivery), and once more under a new
    // event id (a campaign re-sending the same action)
    let resent = |e: &loyalty_proto::events::EventEnvelope| {
        let mut e = e.clone();
        e.event_id = uuid::Uuid::new_v4().to_string();
        e
    };
    t.publish(&[grant.clone(), coupon.clone()]).await;
    t.publish(&[
        grant.clone(),
        coupon.clone(),
        resent(&grant),
        resent(&coupon),
    ])
    .await;
    t.settle().await;

    let balance = RewardsServiceClient::new(t.channel())
        .get_balance(t.request(
            GetBalanceRequest {
                program_id: PROGRAM.into(),
                member_id: "m9".into(),
            },
            &member("m9"),
        ))
        .await
        .expect("balance")
        .into_inner();
    assert_eq!(balance.balance.expect("balance").available, 250);
    let entries = RewardsServiceClient::new(t.channel())
        .list_ledger_entries(t.request(
            ListLedgerEntriesRequest {
                program_id: PROGRAM.into(),
                member_id: "m9".into(),
                page: None,
            },
            &member("m9"),
        ))
        .await
        .expect("entries")
        .into_inner()
        .entries;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].points, 250);
    let earned = emitted(&t, "PointsEarned").await;
    assert_eq!(earned.len(), 1);
    assert_eq!(earned[0].member_id, "m9");

    let held = list(&t, "m9", CouponState::Issued).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].source(), CouponSource::Campaign);
    assert_eq!(emitted(&t, "CouponIssued").await.len(), 1);
    t.stop().await;
}

async fn ids_and_page_sizes_follow_the_rules_of_the_points_core(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 30, 0).await;
    // the longest id the points core accepts is accepted here too, one more is not
    let longest = "m".repeat(128);
    let c = issue(&t, &p.pool_id, &longest)
        .await
        .expect("128 characters");
    assert_eq!(c.member_id, longest);
    let too_long = issue(&t, &p.pool_id, &"m".repeat(129)).await.unwrap_err();
    assert_eq!(violated_fields(&too_long), ["member_id"]);
    let control = issue(&t, &p.pool_id, "m\u{7}1").await.unwrap_err();
    assert_eq!(violated_fields(&control), ["member_id"]);
    let core = RewardsServiceClient::new(t.channel())
        .adjust(t.request(
            AdjustRequest {
                program_id: PROGRAM.into(),
                member_id: "m".repeat(129),
                points: 10,
                reason: "goodwill".into(),
                idempotency_key: "k".into(),
            },
            &admin(),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&core), ["member_id"]);

    // one page-size cap: 500 is served by both, 501 refused by both
    let coupons_page = |size: i32| {
        let mut client = coupons(&t);
        let req = t.request(
            ListMemberCouponsRequest {
                program_id: PROGRAM.into(),
                member_id: "m1".into(),
                state: 0,
                page: Some(PageRequest {
                    page_size: size,
                    page_token: String::new(),
                }),
            },
            &admin(),
        );
        async move { client.list_member_coupons(req).await.map(|_| ()) }
    };
    let entries_page = |size: i32| {
        let mut client = RewardsServiceClient::new(t.channel());
        let req = t.request(
            ListLedgerEntriesRequest {
                program_id: PROGRAM.into(),
                member_id: "m1".into(),
                page: Some(PageRequest {
                    page_size: size,
                    page_token: String::new(),
                }),
            },
            &admin(),
        );
        async move { client.list_ledger_entries(req).await.map(|_| ()) }
    };
    coupons_page(500).await.expect("at the cap");
    entries_page(500).await.expect("at the cap");
    let over = coupons_page(501).await.unwrap_err();
    assert_eq!(violated_fields(&over), ["page_size"]);
    let over_core = entries_page(501).await.unwrap_err();
    assert_eq!(violated_fields(&over_core), ["page_size"]);
    assert_eq!(over.message(), over_core.message());
    t.stop().await;
}

/// The stored row of a coupon: its clear `code` column, digest and sealed code.
async fn stored_code(
    t: &TestService,
    coupon_id: &str,
) -> (String, Option<Vec<u8>>, Option<Vec<u8>>) {
    sqlx::query_as("SELECT code, code_digest, code_sealed FROM coupons WHERE coupon_id = $1")
        .bind(coupon_id)
        .fetch_one(t.rt("rewards").db.pool())
        .await
        .expect("coupon row")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// True when `code` (canonical or displayed, as text or hex) appears in
/// the database: on SQLite anywhere in its files, on PostgreSQL in any
/// column of the coupons and idempotency tables and the outbox.
async fn code_is_stored(t: &TestService, code: &str) -> bool {
    let canonical = code.replace('-', "");
    let needles = [
        canonical.clone().into_bytes(),
        code.as_bytes().to_vec(),
        hex::encode(&canonical).into_bytes(),
    ];
    let db = &t.rt("rewards").db;
    let mut haystacks: Vec<Vec<u8>> = Vec::new();
    if let Some(path) = db.url().sqlite_path() {
        for suffix in ["", "-wal"] {
            let mut name = path.clone().into_os_string();
            name.push(suffix);
            if let Ok(bytes) = std::fs::read(&name) {
                haystacks.push(bytes);
            }
        }
        assert!(
            !haystacks.is_empty(),
            "no SQLite file at {}",
            path.display()
        );
    } else {
        for table in ["coupons", "idempotency_keys", "outbox"] {
            let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT CAST(t AS TEXT) FROM {table} t"
            )))
            .fetch_all(db.pool())
            .await
            .expect("rows as text");
            haystacks.extend(rows.into_iter().map(String::into_bytes));
        }
    }
    haystacks
        .iter()
        .any(|h| needles.iter().any(|n| contains(h, n)))
}

async fn codes_are_stored_sealed_and_found_by_what_is_typed(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 30, 0).await;
    let mut client = coupons(&t);
    let issue_once = IssueCouponRequest {
        program_id: PROGRAM.into(),
        pool_id: p.pool_id.clone(),
        member_id: "m1".into(),
        idempotency_key: "issue-once".into(),
    };
    let c = client
        .issue_coupon(t.request(issue_once.clone(), &backend()))
        .await
        .expect("issue")
        .into_inner()
        .coupon
        .expect("coupon");
    assert_eq!(c.code.len(), 19, "{}", c.code); // ABCD-EFGH-JKMN-PQRS
    // a replay answers the same code, though the kept answer holds none
    let replay = client
        .issue_coupon(t.request(issue_once, &backend()))
        .await
        .expect("replay")
        .into_inner()
        .coupon
        .expect("coupon");
    assert_eq!((&replay.coupon_id, &replay.code), (&c.coupon_id, &c.code));

    // the row: no clear code, a 32-byte digest, a sealed code (format byte,
    // 12-byte nonce, 16 bytes of code, 16-byte tag); nowhere the code
    let (clear, digest, sealed) = stored_code(&t, &c.coupon_id).await;
    assert_eq!(clear, "");
    assert_eq!(digest.expect("digest").len(), 32);
    let sealed = sealed.expect("sealed");
    assert_eq!((sealed.len(), sealed[0]), (45, 1));
    assert!(!contains(&sealed, c.code.replace('-', "").as_bytes()));
    assert!(
        !code_is_stored(&t, &c.code).await,
        "the code is stored in clear"
    );

    // the member sees it again
    let listed = list(&t, "m1", CouponState::Issued).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].code, c.code);

    // the point of sale types it with spaces, dashes, lower case
    let typed = c.code.to_lowercase().replacen('-', " ", 1);
    let valid = validate_as(&t, &backend(), &typed).await.expect("valid");
    assert_eq!((&valid.coupon_id, &valid.code), (&c.coupon_id, &c.code));
    let used = redeem(&t, &c.code.to_lowercase(), "order-1")
        .await
        .expect("redeem");
    assert_eq!(used.state(), CouponState::Redeemed);
    let again = redeem(&t, &typed, "order-2").await.unwrap_err();
    assert_code(&again, Code::FailedPrecondition);
    // the same code in another program is not this coupon
    let elsewhere = coupons(&t)
        .validate_coupon(t.request(
            ValidateCouponRequest {
                program_id: "p2".into(),
                code: c.code.clone(),
            },
            &testing::backend("p2"),
        ))
        .await
        .unwrap_err();
    assert_code(&elsewhere, Code::NotFound);
    assert!(
        !code_is_stored(&t, &c.code).await,
        "the code is stored in clear"
    );
    t.stop().await;
}

/// A code of the coupon alphabet, as earlier versions stored it.
fn legacy_code(i: usize) -> String {
    let symbols = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
    (0..16)
        .map(|k| char::from(symbols[(i * 7 + k * 13 + (i >> (k % 8))) % 32]))
        .collect()
}

/// Inserts `n` coupons of `pool_id` for `member_id` the way the versions
/// before migration 0054 stored them: the code in clear, no digest, nothing
/// sealed. Returns (coupon id, code) pairs.
async fn insert_legacy(
    t: &TestService,
    pool_id: &str,
    member_id: &str,
    n: usize,
) -> Vec<(String, String)> {
    let now = t.clock().now().timestamp_micros();
    let db = &t.rt("rewards").db;
    let mut tx = db.begin().await.expect("begin");
    let mut rows = Vec::new();
    for i in 0..n {
        let coupon_id = format!("legacy-{i:05}");
        let code = legacy_code(i);
        sqlx::query(
            "INSERT INTO coupons (coupon_id, program_id, pool_id, member_id, code, source, \
             issued_at, expires_at) VALUES ($1, $2, $3, $4, $5, 'direct', $6, $7)",
        )
        .bind(&coupon_id)
        .bind(PROGRAM)
        .bind(pool_id)
        .bind(member_id)
        .bind(&code)
        .bind(now)
        .bind(now + 86_400_000_000 * 30)
        .execute(&mut *tx)
        .await
        .expect("legacy row");
        rows.push((coupon_id, code));
    }
    tx.commit().await.expect("commit");
    rows
}

async fn legacy_clear_codes_are_sealed_by_the_start_up_job_and_stay_redeemable(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 30, 0).await;
    let legacy = insert_legacy(&t, &p.pool_id, "m1", 1_201).await;
    let (first_id, first_code) = legacy[0].clone();
    assert!(
        code_is_stored(&t, &first_code).await,
        "the probe finds a clear code"
    );
    // before the job ran: found by its clear code, shown as stored
    let valid = validate_as(&t, &backend(), &first_code.to_lowercase())
        .await
        .expect("legacy code valid before sealing");
    assert_eq!(valid.coupon_id, first_id);
    // a sealed coupon issued meanwhile is left as it is
    let fresh = issue(&t, &p.pool_id, "m2").await.expect("issue");
    let fresh_row = stored_code(&t, &fresh.coupon_id).await;

    let rt = t.rt("rewards");
    let report = loyalty_rewards::bench_support::seal_clear_coupon_codes(rt)
        .await
        .expect("sealing")
        .expect("ran");
    assert_eq!(report.processed, 1_201);
    assert!(report.chunks >= 3, "{report:?}");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupons WHERE code <> ''")
        .fetch_one(rt.db.pool())
        .await
        .expect("count");
    assert_eq!(left, 0);
    for (coupon_id, code) in legacy.iter().step_by(97) {
        let (clear, digest, sealed) = stored_code(&t, coupon_id).await;
        assert_eq!(clear, "");
        assert!(digest.is_some());
        assert!(!contains(&sealed.expect("sealed"), code.as_bytes()));
    }
    assert_eq!(stored_code(&t, &fresh.coupon_id).await, fresh_row);
    // idempotent: nothing left to seal
    let again = loyalty_rewards::bench_support::seal_clear_coupon_codes(rt)
        .await
        .expect("sealing")
        .expect("ran");
    assert_eq!(again.processed, 0);

    // the member still sees the codes; the point of sale still redeems them, once
    let shown = codes_of(&t, "m1").await;
    assert!(shown.contains(&display(&first_code)), "{:?}", &shown[..3]);
    let (second_id, second_code) = &legacy[1];
    let typed = display(second_code).to_lowercase();
    let used = redeem(&t, &typed, "order-1").await.expect("redeem");
    assert_eq!(&used.coupon_id, second_id);
    assert_eq!(used.code, display(second_code));
    let twice = redeem(&t, second_code, "order-2").await.unwrap_err();
    assert_code(&twice, Code::FailedPrecondition);
    t.stop().await;
}

fn display(code: &str) -> String {
    code.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// Every code `member_id` sees, page by page.
async fn codes_of(t: &TestService, member_id: &str) -> Vec<String> {
    let mut codes = Vec::new();
    let mut token = String::new();
    loop {
        let page = coupons(t)
            .list_member_coupons(t.request(
                ListMemberCouponsRequest {
                    program_id: PROGRAM.into(),
                    member_id: member_id.into(),
                    state: CouponState::Unspecified.into(),
                    page: Some(PageRequest {
                        page_size: 500,
                        page_token: token.clone(),
                    }),
                },
                &member(member_id),
            ))
            .await
            .expect("list")
            .into_inner();
        codes.extend(page.coupons.into_iter().map(|c| c.code));
        token = page.page.map(|p| p.next_page_token).unwrap_or_default();
        if token.is_empty() {
            return codes;
        }
    }
}

async fn a_row_holds_its_code_in_clear_or_sealed_never_both(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 30, 0).await;
    let c = issue(&t, &p.pool_id, "m1").await.expect("issue");
    let both = sqlx::query("UPDATE coupons SET code = $1 WHERE coupon_id = $2")
        .bind(c.code.replace('-', ""))
        .bind(&c.coupon_id)
        .execute(t.rt("rewards").db.pool())
        .await;
    assert!(
        both.is_err(),
        "a clear code beside a sealed one was accepted"
    );
    let neither = sqlx::query("UPDATE coupons SET code_sealed = NULL WHERE coupon_id = $1")
        .bind(&c.coupon_id)
        .execute(t.rt("rewards").db.pool())
        .await;
    assert!(neither.is_err(), "a row without its code was accepted");
    t.stop().await;
}

async fn a_sealed_code_copied_onto_another_coupon_does_not_open(engine: TestEngine) {
    let t = start(engine).await;
    let p = pool(&t, 30, 0).await;
    let a = issue(&t, &p.pool_id, "m1").await.expect("issue");
    let b = issue(&t, &p.pool_id, "m1").await.expect("issue");
    let (_, _, sealed_a) = stored_code(&t, &a.coupon_id).await;
    sqlx::query("UPDATE coupons SET code_sealed = $1 WHERE coupon_id = $2")
        .bind(sealed_a)
        .bind(&b.coupon_id)
        .execute(t.rt("rewards").db.pool())
        .await
        .expect("copy the sealed code");
    // showing b fails loudly; it never shows a's code as b's
    let err = member_coupons(&t, "m1", CouponState::Unspecified)
        .await
        .unwrap_err();
    assert_code(&err, Code::Internal);
    for code in [&a.code, &b.code] {
        assert!(!err.message().contains(code.as_str()), "{err:?}");
        assert!(!err.message().contains(&code.replace('-', "")), "{err:?}");
    }
    // b's own code still finds b's row, whose sealed code is not b's: refused
    let typed_b = validate_as(&t, &backend(), &b.code).await.unwrap_err();
    assert_code(&typed_b, Code::Internal);
    let redeemed_b = redeem(&t, &b.code, "order-b").await.unwrap_err();
    assert_code(&redeemed_b, Code::Internal);
    // a is untouched
    validate_as(&t, &backend(), &a.code).await.expect("a valid");
    t.stop().await;
}

async fn codes_sealed_under_another_data_key_are_an_error_not_a_wrong_code(engine: TestEngine) {
    // two services, each with its own random data key: a row moved from
    // one to the other is a database restored beside the wrong key
    let old = start(engine).await;
    let new = start(engine).await;
    let p_old = pool(&old, 30, 0).await;
    let p_new = pool(&new, 30, 0).await;
    let c = issue(&old, &p_old.pool_id, "m1").await.expect("issue");
    let (_, digest, sealed) = stored_code(&old, &c.coupon_id).await;
    sqlx::query(
        "INSERT INTO coupons (coupon_id, program_id, pool_id, member_id, code, code_digest, \
         code_sealed, source, issued_at, expires_at) \
         VALUES ($1, $2, $3, 'm1', '', $4, $5, 'direct', 0, $6)",
    )
    .bind(&c.coupon_id)
    .bind(PROGRAM)
    .bind(&p_new.pool_id)
    .bind(digest)
    .bind(sealed)
    .bind(i64::MAX)
    .execute(new.rt("rewards").db.pool())
    .await
    .expect("restore the row");
    let err = member_coupons(&new, "m1", CouponState::Unspecified)
        .await
        .unwrap_err();
    assert_code(&err, Code::Internal);
    assert!(!err.message().contains(&c.code.replace('-', "")), "{err:?}");
    // typed codes are looked up by a digest under the other key: not found
    let typed = validate_as(&new, &backend(), &c.code).await.unwrap_err();
    assert_code(&typed, Code::NotFound);
    old.stop().await;
    new.stop().await;
}

test_on_both_engines!(
    expiry_starts_at_the_validity_end_and_the_job_marks_each_coupon_once,
    campaign_grants_apply_once_however_often_delivered,
    ids_and_page_sizes_follow_the_rules_of_the_points_core,
    a_coupon_is_validated_and_redeemed_exactly_once,
    concurrent_redemptions_of_one_code_let_exactly_one_win,
    coupons_expire_after_their_validity,
    repeated_failures_are_rate_limited_per_caller,
    campaign_actions_issue_one_coupon_per_action,
    pools_stop_at_their_maximum_and_members_see_only_their_coupons,
    a_burst_of_concurrent_guesses_cannot_pass_the_limit,
    codes_are_stored_sealed_and_found_by_what_is_typed,
    legacy_clear_codes_are_sealed_by_the_start_up_job_and_stay_redeemable,
    a_row_holds_its_code_in_clear_or_sealed_never_both,
    a_sealed_code_copied_onto_another_coupon_does_not_open,
    codes_sealed_under_another_data_key_are_an_error_not_a_wrong_code,
);
