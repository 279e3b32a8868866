//! Consent, export and erasure over gRPC.
// amounts are written as <yuan>_<fen> minor units (1_000_00 = 1000.00)
#![allow(clippy::inconsistent_digit_grouping)]

mod common;

use common::{Env, profile, program, purchase};
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::{TestEngine, backend, member};
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::membership::v1 as pb;
use pb::lookup_member_request::Key;
use tonic::Code;

test_on_both_engines!(
    consent_withdrawal_stops_contact,
    export_holds_everything_and_erasure_propagates,
    concurrent_consent_and_erasure_requests_apply_once
);

fn consent(member_id: &str, purpose: &str, channel: &str, granted: bool) -> pb::SetConsentRequest {
    pb::SetConsentRequest {
        program_id: "p1".into(),
        member_id: member_id.into(),
        purpose: purpose.into(),
        channel: channel.into(),
        granted,
        policy_version: "2026-01".into(),
        source: "app".into(),
        occurred_at: None,
        ..Default::default()
    }
}

async fn consent_withdrawal_stops_contact(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.create_program(program("p1")).await;
    let m = env.enroll("p1", "u1", profile("+8613800000001", "")).await;
    let mut client = env.client.clone();
    let me = member("p1", &m.member_id);
    let check = |channel: &str| pb::CheckConsentRequest {
        program_id: "p1".into(),
        member_id: m.member_id.clone(),
        purpose: "marketing".into(),
        channel: channel.into(),
    };
    // nothing recorded: no
    assert!(
        !client
            .check_consent(env.ts.request(check("sms"), &backend("p1")))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // the member grants marketing on every channel, then withdraws SMS
    let granted = client
        .set_consent(
            env.ts
                .request(consent(&m.member_id, "marketing", "any", true), &me),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(granted.changed);
    assert!(
        client
            .check_consent(env.ts.request(check("sms"), &backend("p1")))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let again = client
        .set_consent(
            env.ts
                .request(consent(&m.member_id, "marketing", "any", true), &me),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed, "a retry records nothing");
    client
        .set_consent(
            env.ts
                .request(consent(&m.member_id, "marketing", "sms", false), &me),
        )
        .await
        .unwrap();
    let sms = client
        .check_consent(env.ts.request(check("sms"), &backend("p1")))
        .await
        .unwrap()
        .into_inner();
    assert!(!sms.allowed);
    assert_eq!(sms.consent.unwrap().channel, "sms");
    assert!(
        client
            .check_consent(env.ts.request(check("email"), &backend("p1")))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // a suspended member is not contacted whatever the consent
    client
        .suspend_member(env.req(
            pb::SuspendMemberRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
                reason: String::new(),
                expected_version: 0,
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap();
    assert!(
        !client
            .check_consent(env.ts.request(check("email"), &backend("p1")))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // history kept, oldest first
    let history = client
        .list_consent_history(env.ts.request(
            pb::ListConsentHistoryRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
                page: None,
            },
            &me,
        ))
        .await
        .unwrap()
        .into_inner()
        .changes;
    let got: Vec<(&str, bool)> = history
        .iter()
        .map(|c| (c.channel.as_str(), c.granted))
        .collect();
    assert_eq!(got, [("any", true), ("sms", false)]);
    // bad input
    let mut bad = consent(&m.member_id, "spam", "fax", true);
    bad.policy_version = String::new();
    let err = client
        .set_consent(env.ts.request(bad, &me))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let f = common::fields_of(&err);
    for want in ["purpose", "channel", "policy_version"] {
        assert!(f.contains(&want.to_owned()), "{want}: {f:?}");
    }
    env.ts.settle().await;
    let changes: Vec<(String, bool)> = env
        .ts
        .outbox("membership")
        .await
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(Payload::ConsentChanged(c)) => Some((c.channel, c.granted)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        [("any".to_owned(), true), ("sms".to_owned(), false)]
    );
    env.ts.stop().await;
}

async fn export_holds_everything_and_erasure_propagates(engine: TestEngine) {
    let env = Env::start(engine).await;
    let t = env.at("2026-02-01T02:00:00Z");
    env.create_program(program("p1")).await;
    let mut pr = profile("+8613800000001", "a@example.com");
    pr.card_number = "CARD1".into();
    pr.preferences.insert("store".into(), "S1".into());
    let m = env.enroll("p1", "u1", pr).await;
    let mut c = env.client.clone();
    let me = member("p1", &m.member_id);
    c.set_consent(
        env.ts
            .request(consent(&m.member_id, "marketing", "email", true), &me),
    )
    .await
    .unwrap();
    c.add_member_tags(env.req(
        pb::AddMemberTagsRequest {
            program_id: "p1".into(),
            member_id: m.member_id.clone(),
            tags: vec!["vip".into()],
        },
        "p1",
    ))
    .await
    .unwrap();
    c.create_group(env.req(
        pb::CreateGroupRequest {
            program_id: "p1".into(),
            group_id: "runners".into(),
            name: "Runners".into(),
            description: String::new(),
            ..Default::default()
        },
        "p1",
    ))
    .await
    .unwrap();
    c.join_group(env.ts.request(
        pb::JoinGroupRequest {
            program_id: "p1".into(),
            group_id: "runners".into(),
            member_id: m.member_id.clone(),
        },
        &me,
    ))
    .await
    .unwrap();
    c.create_segment(env.req(
        pb::CreateSegmentRequest {
            program_id: "p1".into(),
            segment_id: "vips".into(),
            name: "VIPs".into(),
            rule: Some(pb::SegmentRule {
                node: Some(pb::segment_rule::Node::Condition(pb::SegmentCondition {
                    field: pb::SegmentField::Tag as i32,
                    operator: pb::SegmentOperator::Has as i32,
                    text: "vip".into(),
                    ..Default::default()
                })),
            }),
        },
        "p1",
    ))
    .await
    .unwrap();
    env.ts
        .publish(&[purchase("p1", &m.member_id, "o1", 1_500_00, t)])
        .await;

    let export = c
        .export_member_data(env.ts.request(
            pb::ExportMemberDataRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
            },
            &me,
        ))
        .await
        .unwrap()
        .into_inner()
        .export
        .unwrap();
    let em = export.member.unwrap();
    let ep = em.profile.unwrap();
    assert_eq!(
        (
            ep.phone.as_str(),
            ep.email.as_str(),
            ep.card_number.as_str(),
            ep.birthday.as_str()
        ),
        ("+8613800000001", "a@example.com", "CARD1", "1990-05-17")
    );
    assert_eq!(ep.preferences.get("store").map(String::as_str), Some("S1"));
    assert_eq!(
        (em.tags, em.tier_code.as_str(), em.external_id.as_str()),
        (vec!["vip".to_owned()], "SILVER", "u1")
    );
    assert_eq!(export.consents.len(), 1);
    assert_eq!(export.consent_history.len(), 1);
    let tiers: Vec<&str> = export
        .tier_history
        .iter()
        .map(|t| t.to_tier.as_str())
        .collect();
    assert_eq!(tiers, ["BASE", "SILVER"]);
    assert_eq!(export.groups.len(), 1);
    assert_eq!(export.segment_ids, ["vips"]);
    assert_eq!(export.qualifying_activity.len(), 1);
    assert_eq!(export.qualifying_activity[0].amount, 1_500_00);

    // erasure
    let erased = c
        .erase_member(env.ts.request(
            pb::EraseMemberRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
            },
            &me,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(erased.erased);
    let em = erased.member.unwrap();
    assert_eq!(em.status, pb::MemberStatus::Erased as i32);
    assert_eq!(em.member_id, m.member_id, "the pseudonymous id stays");
    assert_eq!(em.profile.unwrap(), pb::MemberProfile::default());
    assert!(em.external_id.is_empty() && em.tags.is_empty());
    for key in [
        Key::Phone("+8613800000001".into()),
        Key::Email("a@example.com".into()),
        Key::ExternalId("u1".into()),
        Key::CardNumber("CARD1".into()),
    ] {
        let err = c
            .lookup_member(env.req(
                pb::LookupMemberRequest {
                    program_id: "p1".into(),
                    key: Some(key),
                },
                "p1",
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    let again = c
        .erase_member(env.req(
            pb::EraseMemberRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.erased);
    // amounts stay for accounting under the pseudonymous id
    let export = c
        .export_member_data(env.req(
            pb::ExportMemberDataRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner()
        .export
        .unwrap();
    assert_eq!(export.qualifying_activity.len(), 1);
    assert!(export.groups.is_empty());
    // MemberErased went out, once
    env.ts.settle().await;
    let erasures = env
        .ts
        .outbox("membership")
        .await
        .into_iter()
        .filter(|e| {
            e.member_id == m.member_id && matches!(e.payload, Some(Payload::MemberErased(_)))
        })
        .count();
    assert_eq!(erasures, 1);
    // the same phone may enrol again, as a new member
    let again = env
        .enroll("p1", "u1", profile("+8613800000001", "a@example.com"))
        .await;
    assert_ne!(again.member_id, m.member_id);
    // an erased member's profile cannot be updated
    let err = c
        .update_member(env.req(
            pb::UpdateMemberRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
                profile: Some(pb::MemberProfile {
                    given_name: "X".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["given_name".into()],
                }),
                expected_version: 0,
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    env.ts.stop().await;
}

async fn concurrent_consent_and_erasure_requests_apply_once(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.create_program(program("p1")).await;
    let m = env.enroll("p1", "u1", profile("+8613800000001", "")).await;
    // the same grant sent 8 times at once: one change, one event
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = env.client.clone();
        let req = env.req(consent(&m.member_id, "marketing", "sms", true), "p1");
        tasks.push(tokio::spawn(async move { c.set_consent(req).await }));
    }
    let mut changed = 0;
    for t in tasks {
        changed += usize::from(t.await.unwrap().unwrap().into_inner().changed);
    }
    assert_eq!(changed, 1);
    // the same erasure sent 8 times at once: one erasure, one event
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = env.client.clone();
        let req = env.req(
            pb::EraseMemberRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
            },
            "p1",
        );
        tasks.push(tokio::spawn(async move { c.erase_member(req).await }));
    }
    let mut erased = 0;
    for t in tasks {
        erased += usize::from(t.await.unwrap().unwrap().into_inner().erased);
    }
    assert_eq!(erased, 1);
    env.ts.settle().await;
    let outbox = env.ts.outbox("membership").await;
    let consents = outbox
        .iter()
        .filter(|e| matches!(e.payload, Some(Payload::ConsentChanged(_))))
        .count();
    let erasures = outbox
        .iter()
        .filter(|e| matches!(e.payload, Some(Payload::MemberErased(_))))
        .count();
    assert_eq!((consents, erasures), (1, 1));
    env.ts.stop().await;
}
