//! Writes that are not naturally idempotent take an optional
//! `idempotency_key`: a retry after a lost answer gets the first answer and
//! writes nothing (no second event, no second history row), and the key
//! reused for another request is refused.

mod common;

use common::{Env, fields_of, profile, program};
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::TestEngine;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::membership::v1 as pb;
use prost_types::FieldMask;
use tonic::Code;

test_on_both_engines!(
    update_retry_with_a_key_gets_the_first_answer_not_a_conflict,
    status_changes_replay_without_writing_again,
    consent_replay_records_no_second_history_row,
    group_and_program_creation_replay_the_first_answer,
    keys_are_validated,
);

fn reason_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

async fn member_updates(env: &Env, member_id: &str) -> Vec<Vec<String>> {
    env.ts
        .outbox("membership")
        .await
        .into_iter()
        .filter(|e| e.member_id == member_id)
        .filter_map(|e| match e.payload {
            Some(Payload::MemberUpdated(u)) => Some(u.changed_fields),
            _ => None,
        })
        .collect()
}

fn rename(member_id: &str, name: &str, version: i64, key: &str) -> pb::UpdateMemberRequest {
    pb::UpdateMemberRequest {
        program_id: "p1".into(),
        member_id: member_id.into(),
        profile: Some(pb::MemberProfile {
            given_name: name.into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["given_name".into()],
        }),
        expected_version: version,
        idempotency_key: key.into(),
    }
}

async fn update_retry_with_a_key_gets_the_first_answer_not_a_conflict(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.at("2026-03-01T00:00:00Z");
    env.create_program(program("p1")).await;
    let m = env.enroll("p1", "u1", profile("+8613800000001", "")).await;
    assert_eq!(m.version, 1);
    let mut c = env.client.clone();

    let first = c
        .update_member(env.req(rename(&m.member_id, "Mei", 1, "upd-1"), "p1"))
        .await
        .unwrap()
        .into_inner();
    let after = first.member.clone().unwrap();
    assert_eq!(after.version, 2);
    // the answer was lost; the client sends the same request again
    let again = c
        .update_member(env.req(rename(&m.member_id, "Mei", 1, "upd-1"), "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(env.member("p1", &m.member_id).await.version, 2);
    env.ts.settle().await;
    assert_eq!(member_updates(&env, &m.member_id).await.len(), 1);

    // without a key the same retry meets the version check
    let err = c
        .update_member(env.req(rename(&m.member_id, "Mei", 1, ""), "p1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);

    // the key with another request is refused and changes nothing
    let err = c
        .update_member(env.req(rename(&m.member_id, "Lan", 2, "upd-1"), "p1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&err), "IDEMPOTENCY_KEY_REUSED");
    let now = env.member("p1", &m.member_id).await;
    assert_eq!(
        (now.version, now.profile.unwrap().given_name.as_str()),
        (2, "Mei")
    );

    // a failed call stores nothing: the key stays usable
    let err = c
        .update_member(env.req(rename(&m.member_id, "Lan", 9, "upd-2"), "p1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let ok = c
        .update_member(env.req(rename(&m.member_id, "Lan", 9, "upd-2"), "p1"))
        .await;
    assert_eq!(ok.unwrap_err().code(), Code::Aborted, "still judged anew");
    let done = c
        .update_member(env.req(rename(&m.member_id, "Lan", 2, "upd-3"), "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.member.unwrap().version, 3);
    env.ts.stop().await;
}

async fn status_changes_replay_without_writing_again(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.at("2026-03-01T00:00:00Z");
    env.create_program(program("p1")).await;
    let m = env.enroll("p1", "u1", profile("+8613800000001", "")).await;
    let mut c = env.client.clone();
    let suspend = pb::SuspendMemberRequest {
        program_id: "p1".into(),
        member_id: m.member_id.clone(),
        reason: "fraud check".into(),
        expected_version: 1,
        idempotency_key: "sus-1".into(),
    };
    let first = c
        .suspend_member(env.req(suspend.clone(), "p1"))
        .await
        .unwrap()
        .into_inner();
    let suspended = first.member.clone().unwrap();
    assert_eq!(suspended.status, pb::MemberStatus::Suspended as i32);
    c.reinstate_member(env.req(
        pb::ReinstateMemberRequest {
            program_id: "p1".into(),
            member_id: m.member_id.clone(),
            idempotency_key: "rein-1".into(),
            ..Default::default()
        },
        "p1",
    ))
    .await
    .unwrap();
    // a late duplicate of the suspension answers as before and does not
    // suspend the member again
    let replay = c
        .suspend_member(env.req(suspend, "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, first);
    let now = env.member("p1", &m.member_id).await;
    assert_eq!(now.status, pb::MemberStatus::Active as i32);
    assert_eq!(now.version, 3);

    let close = pb::CloseMemberRequest {
        program_id: "p1".into(),
        member_id: m.member_id.clone(),
        reason: "asked".into(),
        expected_version: 3,
        idempotency_key: "close-1".into(),
    };
    let closed = c
        .close_member(env.req(close.clone(), "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        c.close_member(env.req(close, "p1"))
            .await
            .unwrap()
            .into_inner(),
        closed
    );
    env.ts.settle().await;
    let statuses = member_updates(&env, &m.member_id).await;
    assert_eq!(statuses.len(), 3, "suspend, reinstate, close: {statuses:?}");
    env.ts.stop().await;
}

async fn consent_replay_records_no_second_history_row(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.at("2026-03-01T00:00:00Z");
    env.create_program(program("p1")).await;
    let m = env.enroll("p1", "u1", profile("+8613800000001", "")).await;
    let mut c = env.client.clone();
    let consent = |granted: bool, key: &str| pb::SetConsentRequest {
        program_id: "p1".into(),
        member_id: m.member_id.clone(),
        purpose: "marketing".into(),
        channel: "sms".into(),
        granted,
        policy_version: "v1".into(),
        source: "app".into(),
        occurred_at: None,
        idempotency_key: key.into(),
    };
    let grant = c
        .set_consent(env.req(consent(true, "c-1"), "p1"))
        .await
        .unwrap()
        .into_inner();
    assert!(grant.changed);
    c.set_consent(env.req(consent(false, "c-2"), "p1"))
        .await
        .unwrap();
    // the grant's retry arrives after the withdrawal: it must not grant again
    let replay = c
        .set_consent(env.req(consent(true, "c-1"), "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, grant);
    let history = c
        .list_consent_history(env.req(
            pb::ListConsentHistoryRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
                page: None,
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(
        history.iter().map(|h| h.granted).collect::<Vec<_>>(),
        [true, false]
    );
    let check = c
        .check_consent(env.req(
            pb::CheckConsentRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
                purpose: "marketing".into(),
                channel: "sms".into(),
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!check.allowed);
    env.ts.stop().await;
}

async fn group_and_program_creation_replay_the_first_answer(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.at("2026-03-01T00:00:00Z");
    let mut c = env.client.clone();
    let create = pb::CreateProgramRequest {
        program: Some(program("p1")),
        idempotency_key: "prog-1".into(),
    };
    let first = c
        .create_program(env.req(create.clone(), "p1"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let replay = c
        .create_program(env.req(create, "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, first, "the replay is the first answer: created");
    let mut other = program("p1");
    other.name = "Another name".into();
    let err = c
        .create_program(env.req(
            pb::CreateProgramRequest {
                program: Some(other),
                idempotency_key: "prog-1".into(),
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), "IDEMPOTENCY_KEY_REUSED");

    let group = |name: &str| pb::CreateGroupRequest {
        program_id: "p1".into(),
        group_id: "family-1".into(),
        name: name.into(),
        description: String::new(),
        idempotency_key: "grp-1".into(),
    };
    let first = c
        .create_group(env.req(group("Family"), "p1"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    assert_eq!(
        c.create_group(env.req(group("Family"), "p1"))
            .await
            .unwrap()
            .into_inner(),
        first
    );
    let err = c
        .create_group(env.req(group("Renamed"), "p1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&err), "IDEMPOTENCY_KEY_REUSED");
    // keys are scoped by method: the same key on another write is new
    let m = env.enroll("p1", "u1", profile("+8613800000001", "")).await;
    c.update_member(env.req(rename(&m.member_id, "Mei", 1, "grp-1"), "p1"))
        .await
        .unwrap();
    env.ts.stop().await;
}

async fn keys_are_validated(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.at("2026-03-01T00:00:00Z");
    env.create_program(program("p1")).await;
    let m = env.enroll("p1", "u1", profile("+8613800000001", "")).await;
    let mut c = env.client.clone();
    for bad in ["has space".to_owned(), "k".repeat(129)] {
        let err = c
            .update_member(env.req(rename(&m.member_id, "Mei", 1, &bad), "p1"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(fields_of(&err), ["idempotency_key"]);
    }
    assert_eq!(env.member("p1", &m.member_id).await.version, 1);
    env.ts.stop().await;
}
