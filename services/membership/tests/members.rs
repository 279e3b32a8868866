//! Programs and members over gRPC: validation with field details,
//! idempotent enrolment, uniqueness per program, lookups, authorisation,
//! status changes, and concurrent updates that never lose a write.
// amounts are written as <yuan>_<fen> minor units (1_000_00 = 1000.00)
#![allow(clippy::inconsistent_digit_grouping)]

mod common;

use std::collections::BTreeSet;

use common::{Env, fields_of, profile, program};
use loyalty_common::auth::Role;
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::{TestEngine, backend, member, staff_with};
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::membership::v1 as pb;
use pb::lookup_member_request::Key;
use prost_types::FieldMask;
use sha2::{Digest, Sha256};
use tonic::Code;

test_on_both_engines!(
    programs_are_validated_and_created_once,
    enrolment_is_idempotent_unique_and_announced,
    lookups_and_authorisation,
    concurrent_updates_never_lose_a_write,
    status_changes_and_list_paging,
    concurrent_enrolments_race_to_one_member_per_key,
);

async fn programs_are_validated_and_created_once(engine: TestEngine) {
    let env = Env::start(engine).await;
    let mut c = env.client.clone();
    // another program's admin may not create ours
    let err = c
        .create_program(env.req(
            pb::CreateProgramRequest {
                program: Some(program("p1")),
                ..Default::default()
            },
            "p2",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut bad = program("p1");
    bad.time_zone = "Mars/Olympus".into();
    bad.currency = "yuan".into();
    bad.tiers[2].threshold = 1;
    let err = c
        .create_program(env.req(
            pb::CreateProgramRequest {
                program: Some(bad),
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let f = fields_of(&err);
    for want in [
        "program.time_zone",
        "program.currency",
        "program.tiers[2].threshold",
    ] {
        assert!(f.contains(&want.to_owned()), "{want} not in {f:?}");
    }
    let created = c
        .create_program(env.req(
            pb::CreateProgramRequest {
                program: Some(program("p1")),
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);
    assert_eq!(created.program.unwrap().version, 1);
    let again = c
        .create_program(env.req(
            pb::CreateProgramRequest {
                program: Some(program("p1")),
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created, "same definition again is a replay");
    let mut other = program("p1");
    other.name = "Other".into();
    let err = c
        .create_program(env.req(
            pb::CreateProgramRequest {
                program: Some(other.clone()),
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(fields_of(&err).contains(&"program_id".to_owned()));
    // update by mask, with an expected version
    let upd = c
        .update_program(env.req(
            pb::UpdateProgramRequest {
                program: Some(other.clone()),
                update_mask: Some(FieldMask {
                    paths: vec!["name".into()],
                }),
                expected_version: 1,
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner()
        .program
        .unwrap();
    assert_eq!(
        (upd.name.as_str(), upd.version, upd.time_zone.as_str()),
        ("Other", 2, "Asia/Shanghai")
    );
    let err = c
        .update_program(env.req(
            pb::UpdateProgramRequest {
                program: Some(other),
                update_mask: Some(FieldMask {
                    paths: vec!["name".into()],
                }),
                expected_version: 1,
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let err = c
        .get_program(env.req(
            pb::GetProgramRequest {
                program_id: "p9".into(),
            },
            "p9",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    env.ts.stop().await;
}

async fn enrolment_is_idempotent_unique_and_announced(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.at("2026-11-25T03:00:00Z");
    env.create_program(program("p1")).await;
    let mut c = env.client.clone();
    let enrol = |ext: &str, prof: pb::MemberProfile| pb::EnrollMemberRequest {
        program_id: "p1".into(),
        external_id: ext.into(),
        profile: Some(prof),
        enrolment_channel: "store".into(),
        tags: vec!["vip".into()],
    };
    // every bad field at once
    let mut bad = profile("12345", "not-an-email");
    bad.birthday = "2026-11-26".into(); // tomorrow in Shanghai
    let err = c
        .enroll_member(env.req(enrol("", bad), "p1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let f = fields_of(&err);
    for want in [
        "external_id",
        "profile.phone",
        "profile.email",
        "profile.birthday",
    ] {
        assert!(f.contains(&want.to_owned()), "{want} not in {f:?}");
    }
    // staff of another program
    let err = c
        .enroll_member(env.ts.request(
            enrol("u1", profile("", "")),
            &staff_with("p9", &[Role::ProgramAdmin]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // an unknown program
    let mut to_p9 = enrol("u1", profile("", ""));
    to_p9.program_id = "p9".into();
    let err = c
        .enroll_member(
            env.ts
                .request(to_p9, &staff_with("p9", &[Role::ProgramAdmin])),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let first = c
        .enroll_member(env.req(
            enrol("u1", profile("+86 138 0000 0001", "Li.Na@Example.com")),
            "p1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let m = first.member.unwrap();
    let prof = m.profile.clone().unwrap();
    assert_eq!(
        (prof.phone.as_str(), prof.email.as_str()),
        ("+8613800000001", "li.na@example.com")
    );
    // the same enrolment again: same member, nothing new
    let again = c
        .enroll_member(env.req(
            enrol("u1", profile("+86 138 0000 0001", "Li.Na@Example.com")),
            "p1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.member.unwrap().member_id, m.member_id);
    // the same external id with other data
    let err = c
        .enroll_member(env.req(enrol("u1", profile("+8613800000009", "")), "p1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(fields_of(&err).contains(&"external_id".to_owned()));
    // another member with the same phone (other spelling) or e-mail (other case)
    let err = c
        .enroll_member(env.req(enrol("u2", profile("0086 13800000001", "")), "p1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        fields_of(&err).contains(&"profile.phone".to_owned()),
        "{:?}",
        fields_of(&err)
    );
    let err = c
        .enroll_member(env.req(enrol("u2", profile("", "LI.NA@example.COM")), "p1"))
        .await
        .unwrap_err();
    assert!(fields_of(&err).contains(&"profile.email".to_owned()));
    // the same phone in another program is fine
    env.create_program(program("p2")).await;
    let mut other = enrol("u1", profile("+8613800000001", ""));
    other.program_id = "p2".into();
    assert!(
        c.enroll_member(env.req(other, "p2"))
            .await
            .unwrap()
            .into_inner()
            .created
    );

    env.ts.settle().await;
    let events = env.ts.outbox("membership").await;
    let enrolled: Vec<_> = events
        .iter()
        .filter(|e| e.member_id == m.member_id)
        .filter_map(|e| match &e.payload {
            Some(Payload::MemberEnrolled(x)) => Some(x.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(enrolled.len(), 1, "one event per member, not per call");
    let want: BTreeSet<String> = ["p1:+8613800000001", "p1:li.na@example.com"]
        .iter()
        .map(|s| hex::encode(Sha256::digest(s.as_bytes())))
        .collect();
    assert_eq!(
        enrolled[0]
            .contact_hashes
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>(),
        want
    );
    assert_eq!(enrolled[0].tier_code, "BASE");
    // no personal data anywhere in the events
    for e in &events {
        let bytes = prost::Message::encode_to_vec(e);
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("8613800000001") && !text.contains("li.na") && !text.contains("Li"),
            "personal data in {}",
            e.event_type
        );
    }
    env.ts.stop().await;
}

async fn lookups_and_authorisation(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.create_program(program("p1")).await;
    let mut pr = profile("+8613800000001", "a@example.com");
    pr.card_number = "card0001".into();
    let m = env.enroll("p1", "ext-1", pr).await;
    let other = env
        .enroll("p1", "ext-2", profile("+8613800000002", "b@example.com"))
        .await;
    let mut c = env.client.clone();
    let tags = c
        .add_member_tags(env.req(
            pb::AddMemberTagsRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
                tags: vec!["vip".into(), "0-gold".into(), "a:b".into(), "a_b".into()],
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner()
        .tags;
    assert_eq!(tags, ["0-gold", "a:b", "a_b", "vip"]);
    // reads answer the member with its tags, in the same order
    let read = c
        .get_member(env.req(
            pb::GetMemberRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(read.tags, tags);
    let listed = c
        .list_members(env.req(
            pb::ListMembersRequest {
                program_id: "p1".into(),
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner()
        .members;
    let listed_tags: Vec<(&str, &[String])> = listed
        .iter()
        .map(|l| (l.member_id.as_str(), l.tags.as_slice()))
        .collect();
    let mut want: Vec<(&str, &[String])> = vec![
        (m.member_id.as_str(), tags.as_slice()),
        (other.member_id.as_str(), &[]),
    ];
    want.sort();
    assert_eq!(listed_tags, want);
    assert_eq!(
        listed.iter().find(|l| l.member_id == m.member_id),
        Some(&read)
    );
    for key in [
        Key::Phone("+86 138-0000-0001".into()),
        Key::Email("A@Example.com".into()),
        Key::ExternalId("ext-1".into()),
        Key::CardNumber("CARD0001".into()),
    ] {
        let got = c
            .lookup_member(env.ts.request(
                pb::LookupMemberRequest {
                    program_id: "p1".into(),
                    key: Some(key.clone()),
                },
                &backend("p1"),
            ))
            .await
            .unwrap_or_else(|e| panic!("{key:?}: {e}"))
            .into_inner()
            .member
            .unwrap();
        assert_eq!(got, read, "{key:?}");
    }
    let got = c
        .lookup_member(env.req(
            pb::LookupMemberRequest {
                program_id: "p1".into(),
                key: Some(Key::ExternalId("ext-2".into())),
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!((got.member_id, got.tags), (other.member_id.clone(), vec![]));
    let err = c
        .lookup_member(env.req(
            pb::LookupMemberRequest {
                program_id: "p1".into(),
                key: Some(Key::Phone("+8613899999999".into())),
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .lookup_member(env.req(
            pb::LookupMemberRequest {
                program_id: "p1".into(),
                key: Some(Key::Phone("123".into())),
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // a member sees itself only; the answer does not depend on existence
    let me = member("p1", &m.member_id);
    assert!(
        c.get_member(env.ts.request(
            pb::GetMemberRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone()
            },
            &me
        ))
        .await
        .is_ok()
    );
    for target in [other.member_id.clone(), "no-such-member".into()] {
        let err = c
            .get_member(env.ts.request(
                pb::GetMemberRequest {
                    program_id: "p1".into(),
                    member_id: target,
                },
                &me,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    let err = c
        .lookup_member(env.ts.request(
            pb::LookupMemberRequest {
                program_id: "p1".into(),
                key: Some(Key::ExternalId("ext-1".into())),
            },
            &me,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // staff of another program
    let err = c
        .get_member(env.req(
            pb::GetMemberRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
            },
            "p2",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // no credential
    let err = c
        .get_member(pb::GetMemberRequest {
            program_id: "p1".into(),
            member_id: m.member_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // an analyst may not suspend
    let err = c
        .suspend_member(env.ts.request(
            pb::SuspendMemberRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
                reason: String::new(),
                expected_version: 0,
                ..Default::default()
            },
            &staff_with("p1", &[Role::Analyst]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    env.ts.stop().await;
}

async fn concurrent_updates_never_lose_a_write(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.create_program(program("p1")).await;
    let m = env.enroll("p1", "ext-1", profile("", "")).await;
    let start_version = m.version;
    // 16 clients each set their own preference at the same time
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut c = env.client.clone();
        let mut prefs = std::collections::HashMap::new();
        prefs.insert(format!("k{i}"), format!("v{i}"));
        let req = env.req(
            pb::UpdateMemberRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
                profile: Some(pb::MemberProfile {
                    preferences: prefs,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec![format!("preferences.k{i}")],
                }),
                expected_version: 0,
                ..Default::default()
            },
            "p1",
        );
        tasks.push(tokio::spawn(async move { c.update_member(req).await }));
    }
    for t in tasks {
        t.await.unwrap().expect("every update applies");
    }
    let after = env.member("p1", &m.member_id).await;
    let prefs = after.profile.unwrap().preferences;
    assert_eq!(prefs.len(), 16, "{prefs:?}");
    assert_eq!(after.version, start_version + 16);

    // with an expected version, exactly one of the racers wins
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut c = env.client.clone();
        let req = env.req(
            pb::UpdateMemberRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
                profile: Some(pb::MemberProfile {
                    given_name: format!("N{i}"),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["given_name".into()],
                }),
                expected_version: after.version,
                ..Default::default()
            },
            "p1",
        );
        tasks.push(tokio::spawn(async move { c.update_member(req).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::Aborted),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(
        env.member("p1", &m.member_id).await.version,
        after.version + 1
    );
    // an unknown mask field is refused by name
    let err = env
        .client
        .clone()
        .update_member(env.req(
            pb::UpdateMemberRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
                profile: None,
                update_mask: Some(FieldMask {
                    paths: vec!["nickname".into()],
                }),
                expected_version: 0,
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert!(fields_of(&err).contains(&"update_mask".to_owned()));
    env.ts.settle().await;
    let updates = env
        .ts
        .outbox("membership")
        .await
        .into_iter()
        .filter(|e| matches!(e.payload, Some(Payload::MemberUpdated(_))))
        .count();
    assert_eq!(updates, 17, "one MemberUpdated per applied update");
    env.ts.stop().await;
}

async fn status_changes_and_list_paging(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.create_program(program("p1")).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            env.enroll("p1", &format!("e{i}"), profile("", ""))
                .await
                .member_id,
        );
    }
    let mut c = env.client.clone();
    let s = c
        .suspend_member(env.req(
            pb::SuspendMemberRequest {
                program_id: "p1".into(),
                member_id: ids[0].clone(),
                reason: "fraud check".into(),
                expected_version: 0,
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(s.status, pb::MemberStatus::Suspended as i32);
    c.close_member(env.req(
        pb::CloseMemberRequest {
            program_id: "p1".into(),
            member_id: ids[1].clone(),
            reason: String::new(),
            expected_version: 0,
            ..Default::default()
        },
        "p1",
    ))
    .await
    .unwrap();
    let err = c
        .reinstate_member(env.req(
            pb::ReinstateMemberRequest {
                program_id: "p1".into(),
                member_id: ids[1].clone(),
                expected_version: 0,
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "closed is final");
    // pages of 3 walk all active members once, in id order
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_members(env.req(
                pb::ListMembersRequest {
                    program_id: "p1".into(),
                    page: Some(loyalty_proto::common::PageRequest {
                        page_size: 3,
                        page_token: token.clone(),
                    }),
                    status: pb::MemberStatus::Active as i32,
                    ..Default::default()
                },
                "p1",
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(r.members.into_iter().map(|m| m.member_id));
        token = r.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let mut want = ids[2..].to_vec();
    want.sort();
    assert_eq!(seen, want);
    let err = c
        .list_members(env.req(
            pb::ListMembersRequest {
                program_id: "p1".into(),
                page: Some(loyalty_proto::common::PageRequest {
                    page_size: 501,
                    page_token: String::new(),
                }),
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert!(fields_of(&err).contains(&"page_size".to_owned()));
    let err = c
        .list_members(env.req(
            pb::ListMembersRequest {
                program_id: "p1".into(),
                tier_code: "DIAMOND".into(),
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert!(fields_of(&err).contains(&"tier_code".to_owned()));
    env.ts.stop().await;
}

async fn concurrent_enrolments_race_to_one_member_per_key(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.create_program(program("p1")).await;
    let enrol = |ext: String, phone: &str| pb::EnrollMemberRequest {
        program_id: "p1".into(),
        external_id: ext,
        profile: Some(profile(phone, "")),
        enrolment_channel: "app".into(),
        tags: Vec::new(),
    };
    // the same phone under different external ids: one member, the rest
    // ALREADY_EXISTS naming the phone
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut c = env.client.clone();
        let req = env.req(enrol(format!("x{i}"), "+8613800000077"), "p1");
        tasks.push(tokio::spawn(async move { c.enroll_member(req).await }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert!(r.into_inner().created);
                created += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::AlreadyExists);
                assert!(
                    fields_of(&e).contains(&"profile.phone".to_owned()),
                    "{:?}",
                    fields_of(&e)
                );
            }
        }
    }
    assert_eq!(created, 1);
    // the same enrolment sent 8 times at once (client retries): one member
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = env.client.clone();
        let req = env.req(enrol("same".into(), "+8613800000088"), "p1");
        tasks.push(tokio::spawn(async move { c.enroll_member(req).await }));
    }
    let mut ids = BTreeSet::new();
    let mut firsts = 0;
    for t in tasks {
        let r = t
            .await
            .unwrap()
            .expect("a replay answers like the first call")
            .into_inner();
        firsts += usize::from(r.created);
        ids.insert(r.member.unwrap().member_id);
    }
    assert_eq!((ids.len(), firsts), (1, 1));
    env.ts.stop().await;
}
