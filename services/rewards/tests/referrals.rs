//! Referrals over real gRPC and events on both engines: codes, the
//! referee's first qualifying purchase rewarding both sides once, refusal
//! of self-referral and of reused contact details, erasure of the contact
//! hashes, and both rewards taken back once when the qualifying order is
//! refunded in full (under each clawback policy).

mod catalog_support;

use catalog_support::*;
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::{TestEngine, TestService};
use loyalty_proto::common::Money;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{EventEnvelope, MemberEnrolled, MemberErased, PurchaseCompleted};
use loyalty_proto::loyalty::rewards::v1::rewards_service_client::RewardsServiceClient;
use loyalty_proto::loyalty::rewards::v1::{
    AdjustRequest, ApplyReferralCodeRequest, ClawbackPolicy, GetProgramPolicyRequest,
    GetReferralCodeRequest, ListReferralsRequest, RecordRefundRequest, Referral, ReferralState,
    ReferralTerms, SetProgramPolicyRequest, SetReferralTermsRequest,
};
use tonic::{Code, Status};

fn hash(c: char) -> String {
    c.to_string().repeat(64)
}

async fn enroll(t: &TestService, member_id: &str, hashes: &[String]) {
    t.publish(&[event(
        member_id,
        Payload::MemberEnrolled(MemberEnrolled {
            enrolment_channel: "app".into(),
            contact_hashes: hashes.to_vec(),
            ..MemberEnrolled::default()
        }),
    )])
    .await;
}

fn purchase_event(member_id: &str, order: &str, minor: i64) -> EventEnvelope {
    event(
        member_id,
        Payload::PurchaseCompleted(PurchaseCompleted {
            order_id: order.into(),
            amount: Some(Money {
                minor_units: minor,
                currency: "CNY".into(),
            }),
            channel: "store".into(),
            ..PurchaseCompleted::default()
        }),
    )
}

async fn purchase(t: &TestService, member_id: &str, order: &str, minor: i64) {
    t.publish(&[purchase_event(member_id, order, minor)]).await;
    t.settle().await;
}

async fn set_terms(t: &TestService, enabled: bool) {
    referrals(t)
        .set_referral_terms(t.request(
            SetReferralTermsRequest {
                program_id: PROGRAM.into(),
                terms: Some(ReferralTerms {
                    enabled,
                    referrer_points: 100,
                    referee_points: 50,
                    min_purchase: Some(Money {
                        minor_units: 5_000,
                        currency: "CNY".into(),
                    }),
                    ..ReferralTerms::default()
                }),
            },
            &admin(),
        ))
        .await
        .expect("terms");
}

async fn code_of(t: &TestService, member_id: &str) -> String {
    referrals(t)
        .get_referral_code(t.request(
            GetReferralCodeRequest {
                program_id: PROGRAM.into(),
                member_id: member_id.into(),
            },
            &member(member_id),
        ))
        .await
        .expect("code")
        .into_inner()
        .code
}

async fn apply(t: &TestService, referee: &str, code: &str) -> Result<Referral, Status> {
    referrals(t)
        .apply_referral_code(t.request(
            ApplyReferralCodeRequest {
                program_id: PROGRAM.into(),
                member_id: referee.into(),
                code: code.into(),
            },
            &member(referee),
        ))
        .await
        .map(|r| r.into_inner().referral.expect("referral"))
}

/// (member, points) of the ledger credits a referral caused.
async fn referral_credits(t: &TestService, referral_id: &str) -> Vec<(String, i64)> {
    let mut rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT member_id, points FROM ledger_entries WHERE program_id = $1 AND reference = $2",
    )
    .bind(PROGRAM)
    .bind(format!("referral:{referral_id}"))
    .fetch_all(t.rt("rewards").db.pool())
    .await
    .expect("ledger entries");
    rows.sort();
    rows
}

async fn both_sides_are_rewarded_once_on_the_first_qualifying_purchase(engine: TestEngine) {
    let t = start(engine).await;
    set_terms(&t, true).await;
    enroll(&t, "alice", &[hash('a')]).await;
    enroll(&t, "bob", &[hash('b')]).await;
    let code = code_of(&t, "alice").await;
    assert_eq!(code, code_of(&t, "alice").await, "one code per member");
    let pending = apply(&t, "bob", &code.to_lowercase()).await.expect("apply");
    assert_eq!(pending.state(), ReferralState::Pending);
    assert_eq!(pending.referrer_member_id, "alice");
    // applying the same code again is a replay
    assert_eq!(apply(&t, "bob", &code).await.expect("replay"), pending);

    purchase(&t, "bob", "o1", 4_999).await;
    assert!(referral_credits(&t, &pending.referral_id).await.is_empty());
    purchase(&t, "bob", "o2", 5_000).await;
    purchase(&t, "bob", "o3", 90_000).await;
    assert_eq!(
        referral_credits(&t, &pending.referral_id).await,
        [("alice".to_owned(), 100), ("bob".to_owned(), 50)]
    );
    let listed = referrals(&t)
        .list_referrals(t.request(
            ListReferralsRequest {
                program_id: PROGRAM.into(),
                member_id: "alice".into(),
                page: None,
            },
            &member("alice"),
        ))
        .await
        .expect("list")
        .into_inner()
        .referrals;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state(), ReferralState::Qualified);
    assert_eq!(listed[0].qualifying_order_id, "o2");
    assert_eq!(
        (listed[0].referrer_points, listed[0].referee_points),
        (100, 50)
    );
    let qualified = emitted(&t, "ReferralQualified").await;
    assert_eq!(qualified.len(), 1);
    assert_eq!(qualified[0].member_id, "alice");
    t.stop().await;
}

/// Purchases of many members delivered together (one group, recorded with
/// set-based statements): the referee's first qualifying order in delivery
/// order qualifies the referral, once; the others' purchases change nothing.
async fn purchases_delivered_together_qualify_once(engine: TestEngine) {
    let t = start(engine).await;
    set_terms(&t, true).await;
    enroll(&t, "alice", &[hash('a')]).await;
    enroll(&t, "bob", &[hash('b')]).await;
    let code = code_of(&t, "alice").await;
    let pending = apply(&t, "bob", &code).await.expect("apply");
    t.publish(&[
        purchase_event("carol", "c1", 90_000),
        purchase_event("bob", "o1", 4_999),
        purchase_event("dave", "d1", 90_000),
        purchase_event("bob", "o2", 5_000),
        purchase_event("bob", "o3", 90_000),
        purchase_event("carol", "c2", 90_000),
    ])
    .await;
    t.settle().await;
    assert_eq!(
        referral_credits(&t, &pending.referral_id).await,
        [("alice".to_owned(), 100), ("bob".to_owned(), 50)]
    );
    let referral = referral_of(&t, "alice").await;
    assert_eq!(referral.state(), ReferralState::Qualified);
    assert_eq!(referral.qualifying_order_id, "o2");
    assert_eq!(emitted(&t, "ReferralQualified").await.len(), 1);
    t.stop().await;
}

async fn self_referral_and_reused_contacts_are_refused(engine: TestEngine) {
    let t = start(engine).await;
    let closed = {
        let code = code_of(&t, "alice").await;
        apply(&t, "bob", &code).await.unwrap_err()
    };
    assert_code(&closed, Code::FailedPrecondition);
    set_terms(&t, true).await;
    enroll(&t, "alice", &[hash('a'), hash('c')]).await;
    enroll(&t, "bob", &[hash('b')]).await;
    enroll(&t, "carol", &[hash('c')]).await; // shares a contact with alice
    enroll(&t, "dave", &[hash('b'), hash('d')]).await; // shares one with bob
    enroll(&t, "erin", &[hash('e')]).await;
    let code = code_of(&t, "alice").await;

    let own = apply(&t, "alice", &code).await.unwrap_err();
    assert_eq!(violated_fields(&own), ["code"]);
    let twin = apply(&t, "carol", &code).await.unwrap_err();
    assert_code(&twin, Code::FailedPrecondition);
    assert!(twin.message().contains("contact"), "{twin:?}");
    apply(&t, "bob", &code).await.expect("bob is new");
    let again = apply(&t, "dave", &code).await.unwrap_err();
    assert_code(&again, Code::FailedPrecondition);
    // a member who already bought is not new
    purchase(&t, "erin", "e1", 100).await;
    let old = apply(&t, "erin", &code).await.unwrap_err();
    assert_code(&old, Code::FailedPrecondition);
    // bob was referred once; another referrer's code is refused
    let other = code_of(&t, "erin").await;
    let twice = apply(&t, "bob", &other).await.unwrap_err();
    assert_code(&twice, Code::AlreadyExists);
    let unknown = apply(&t, "erin", "ZZZZZZZZ").await.unwrap_err();
    assert_code(&unknown, Code::NotFound);
    let malformed = apply(&t, "erin", "abc").await.unwrap_err();
    assert_eq!(violated_fields(&malformed), ["code"]);
    // a member applies only for themselves
    let denied = referrals(&t)
        .apply_referral_code(t.request(
            ApplyReferralCodeRequest {
                program_id: PROGRAM.into(),
                member_id: "dave".into(),
                code: code.clone(),
            },
            &member("erin"),
        ))
        .await
        .unwrap_err();
    assert_code(&denied, Code::PermissionDenied);
    t.stop().await;
}

async fn erasure_removes_the_contact_hashes(engine: TestEngine) {
    let t = start(engine).await;
    set_terms(&t, true).await;
    enroll(&t, "alice", &[hash('a')]).await;
    enroll(&t, "bob", &[hash('b')]).await;
    enroll(&t, "dave", &[hash('b')]).await;
    let code = code_of(&t, "alice").await;
    apply(&t, "bob", &code).await.expect("bob");
    assert!(apply(&t, "dave", &code).await.is_err());
    t.publish(&[event(
        "bob",
        Payload::MemberErased(MemberErased { requested_at: None }),
    )])
    .await;
    let left: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM member_contact_hashes WHERE program_id = $1 AND member_id = $2",
    )
    .bind(PROGRAM)
    .bind("bob")
    .fetch_one(t.rt("rewards").db.pool())
    .await
    .expect("count");
    assert_eq!(left, 0);
    // bob's referral record (no personal data) stays; his hash no longer blocks dave
    apply(&t, "dave", &code).await.expect("dave after erasure");
    t.stop().await;
}

async fn refund(t: &TestService, order: &str, refund_id: &str, minor: i64) {
    RewardsServiceClient::new(t.channel())
        .record_refund(t.request(
            RecordRefundRequest {
                program_id: PROGRAM.into(),
                order_id: order.into(),
                refund_id: refund_id.into(),
                amount: Some(Money {
                    minor_units: minor,
                    currency: "CNY".into(),
                }),
                ..RecordRefundRequest::default()
            },
            &backend(),
        ))
        .await
        .expect("refund");
    t.settle().await;
}

async fn referral_of(t: &TestService, referrer: &str) -> Referral {
    let mut listed = referrals(t)
        .list_referrals(t.request(
            ListReferralsRequest {
                program_id: PROGRAM.into(),
                member_id: referrer.into(),
                page: None,
            },
            &member(referrer),
        ))
        .await
        .expect("list")
        .into_inner()
        .referrals;
    assert_eq!(listed.len(), 1);
    listed.remove(0)
}

async fn set_clawback(t: &TestService, clawback: ClawbackPolicy) {
    let mut client = RewardsServiceClient::new(t.channel());
    let mut policy = client
        .get_program_policy(t.request(
            GetProgramPolicyRequest {
                program_id: PROGRAM.into(),
            },
            &admin(),
        ))
        .await
        .expect("policy")
        .into_inner()
        .policy
        .expect("policy");
    policy.clawback_policy = clawback.into();
    policy.currency = "CNY".into();
    client
        .set_program_policy(t.request(
            SetProgramPolicyRequest {
                policy: Some(policy),
            },
            &admin(),
        ))
        .await
        .expect("set policy");
}

/// Alice refers bob; bob's 80.00 CNY order qualifies (alice +100, bob +50
/// and 80 purchase points); alice spends 70 of her 100 before the order is
/// refunded in two parts. Answers alice's ledger entries of the referral.
async fn refund_a_qualifying_order(t: &TestService) -> Vec<(String, i64)> {
    set_terms(t, true).await;
    enroll(t, "alice", &[hash('a')]).await;
    enroll(t, "bob", &[hash('b')]).await;
    let code = code_of(t, "alice").await;
    let referral = apply(t, "bob", &code).await.expect("apply");
    purchase(t, "bob", "o1", 8_000).await;
    assert_eq!(
        referral_of(t, "alice").await.state(),
        ReferralState::Qualified
    );
    RewardsServiceClient::new(t.channel())
        .adjust(t.request(
            AdjustRequest {
                program_id: PROGRAM.into(),
                member_id: "alice".into(),
                points: -70,
                reason: "spent".into(),
                idempotency_key: "spend".into(),
            },
            &admin(),
        ))
        .await
        .expect("alice spends");

    // a partial refund keeps the rewards; counted once however often it is
    // sent, even announced again under new event ids (3 x 30.00 would pass 80.00)
    refund(t, "o1", "r1", 3_000).await;
    refund(t, "o1", "r1", 3_000).await;
    let announced = emitted(t, "OrderRefunded").await;
    assert_eq!(announced.len(), 1);
    t.publish(&[announced[0].clone(), announced[0].clone()].map(|mut e| {
        e.event_id = uuid::Uuid::new_v4().to_string();
        e
    }))
    .await;
    assert_eq!(
        referral_of(t, "alice").await.state(),
        ReferralState::Qualified
    );
    assert_eq!(referral_credits(t, &referral.referral_id).await.len(), 2);

    // the rest of the order: refunded in full, both rewards are taken back
    refund(t, "o1", "r2", 5_000).await;
    let clawed = referral_of(t, "alice").await;
    assert_eq!(clawed.state(), ReferralState::ClawedBack);
    assert!(clawed.clawed_back_at.is_some());
    // bob had his 50 available: taken in full whatever the policy
    assert_eq!(available(t, "bob").await, 0);
    // a replayed refund, or a refund announced again, takes nothing more
    refund(t, "o1", "r2", 5_000).await;
    let again: Vec<_> = emitted(t, "OrderRefunded")
        .await
        .into_iter()
        .map(|mut e| {
            e.event_id = uuid::Uuid::new_v4().to_string();
            e
        })
        .collect();
    t.publish(&again).await;
    let credits = referral_credits(t, &referral.referral_id).await;
    let bob: Vec<_> = credits.iter().filter(|c| c.0 == "bob").cloned().collect();
    assert_eq!(bob, [("bob".to_owned(), -50), ("bob".to_owned(), 50)]);
    credits.into_iter().filter(|c| c.0 == "alice").collect()
}

async fn a_full_refund_takes_back_both_rewards_once_writing_off_what_was_spent(engine: TestEngine) {
    let t = start(engine).await;
    let alice = refund_a_qualifying_order(&t).await;
    // 30 were left to take; the 70 alice spent are written off
    assert_eq!(
        alice,
        [("alice".to_owned(), -30), ("alice".to_owned(), 100)]
    );
    assert_eq!(available(&t, "alice").await, 0);
    t.stop().await;
}

async fn a_full_refund_under_the_negative_balance_policy_leaves_a_debt(engine: TestEngine) {
    let t = start(engine).await;
    set_clawback(&t, ClawbackPolicy::NegativeBalance).await;
    let alice = refund_a_qualifying_order(&t).await;
    assert_eq!(
        alice,
        [("alice".to_owned(), -100), ("alice".to_owned(), 100)]
    );
    assert_eq!(available(&t, "alice").await, -70);
    t.stop().await;
}

test_on_both_engines!(
    both_sides_are_rewarded_once_on_the_first_qualifying_purchase,
    purchases_delivered_together_qualify_once,
    self_referral_and_reused_contacts_are_refused,
    erasure_removes_the_contact_hashes,
    a_full_refund_takes_back_both_rewards_once_writing_off_what_was_spent,
    a_full_refund_under_the_negative_balance_policy_leaves_a_debt,
);
