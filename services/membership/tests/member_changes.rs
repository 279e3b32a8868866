//! Tag and group changes are announced as MemberUpdated (naming the field
//! and each item that changed), and members are found by any part of their
//! name, ignoring case, page by page, through renames and erasure.

mod common;

use common::{Env, fields_of, profile, program};
use loyalty_common::db::Engine;
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::TestEngine;
use loyalty_proto::common::PageRequest;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::membership::v1 as pb;
use prost_types::FieldMask;
use tonic::Code;

test_on_both_engines!(
    tag_and_group_changes_are_announced_once,
    names_are_searched_by_any_part_ignoring_case,
    name_search_follows_renames_and_erasure,
);

/// changed_fields of the member's MemberUpdated events, in order.
async fn updates(env: &Env, member_id: &str) -> Vec<Vec<String>> {
    env.ts.settle().await;
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

async fn tag_and_group_changes_are_announced_once(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.at("2026-03-01T00:00:00Z");
    env.create_program(program("p1")).await;
    let m = env.enroll("p1", "u1", profile("+8613800000001", "")).await;
    let id = m.member_id.clone();
    let mut c = env.client.clone();
    let add = |tags: &[&str]| pb::AddMemberTagsRequest {
        program_id: "p1".into(),
        member_id: id.clone(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    };
    let remove = |tags: &[&str]| pb::RemoveMemberTagsRequest {
        program_id: "p1".into(),
        member_id: id.clone(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    };
    c.add_member_tags(env.req(add(&["vip", "runner"]), "p1"))
        .await
        .unwrap();
    // already there: nothing changed, nothing announced
    c.add_member_tags(env.req(add(&["vip"]), "p1"))
        .await
        .unwrap();
    let left = c
        .remove_member_tags(env.req(remove(&["vip", "never-had"]), "p1"))
        .await
        .unwrap()
        .into_inner()
        .tags;
    assert_eq!(left, ["runner"]);
    c.remove_member_tags(env.req(remove(&["vip"]), "p1"))
        .await
        .unwrap();

    c.create_group(env.req(
        pb::CreateGroupRequest {
            program_id: "p1".into(),
            group_id: "family-1".into(),
            name: "Family".into(),
            ..Default::default()
        },
        "p1",
    ))
    .await
    .unwrap();
    let join = pb::JoinGroupRequest {
        program_id: "p1".into(),
        group_id: "family-1".into(),
        member_id: id.clone(),
    };
    c.join_group(env.req(join.clone(), "p1")).await.unwrap();
    c.join_group(env.req(join, "p1")).await.unwrap();
    let leave = pb::LeaveGroupRequest {
        program_id: "p1".into(),
        group_id: "family-1".into(),
        member_id: id.clone(),
    };
    assert!(
        c.leave_group(env.req(leave.clone(), "p1"))
            .await
            .unwrap()
            .into_inner()
            .left
    );
    assert!(
        !c.leave_group(env.req(leave, "p1"))
            .await
            .unwrap()
            .into_inner()
            .left
    );

    let expected: Vec<Vec<String>> = [
        vec!["tags", "tags.vip", "tags.runner"],
        vec!["tags", "tags.vip"],
        vec!["groups", "groups.family-1"],
        vec!["groups", "groups.family-1"],
    ]
    .iter()
    .map(|f| f.iter().map(|s| (*s).to_owned()).collect())
    .collect();
    assert_eq!(updates(&env, &id).await, expected);
    env.ts.stop().await;
}

fn named(given: &str, family: &str, phone: &str) -> pb::MemberProfile {
    pb::MemberProfile {
        given_name: given.into(),
        family_name: family.into(),
        ..profile(phone, "")
    }
}

/// Every page of a name search in p1: the member ids found, in pages.
async fn search(env: &Env, text: &str, page_size: i32) -> Vec<Vec<String>> {
    search_in(env, "p1", text, page_size).await
}

/// Every page of a name search in `program`.
async fn search_in(env: &Env, program: &str, text: &str, page_size: i32) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let r = env
            .client
            .clone()
            .list_members(env.req(
                pb::ListMembersRequest {
                    program_id: program.into(),
                    name_contains: text.into(),
                    page: Some(PageRequest {
                        page_size,
                        page_token: token,
                    }),
                    ..Default::default()
                },
                program,
            ))
            .await
            .unwrap()
            .into_inner();
        pages.push(r.members.into_iter().map(|m| m.member_id).collect());
        token = r.page.unwrap_or_default().next_page_token;
        if token.is_empty() {
            return pages;
        }
    }
}

async fn names_are_searched_by_any_part_ignoring_case(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.at("2026-03-01T00:00:00Z");
    env.create_program(program("p1")).await;
    let hannah = env
        .enroll("p1", "u1", named("Hannah", "Lee", "+8613800000001"))
        .await;
    let ann = env
        .enroll("p1", "u2", named("ANN", "Wu", "+8613800000002"))
        .await;
    let mei = env
        .enroll("p1", "u3", named("Mei", "Annand", "+8613800000003"))
        .await;
    let bob = env
        .enroll("p1", "u4", named("Bob", "Stone", "+8613800000004"))
        .await;
    let zoe = env
        .enroll("p1", "u5", named("ZOË", "Ōta", "+8613800000005"))
        .await;
    let mut ids = vec![
        hannah.member_id.clone(),
        ann.member_id.clone(),
        mei.member_id.clone(),
    ];
    ids.sort();

    let pages = search(&env, "Ann", 2).await;
    assert_eq!(pages.len(), 2);
    assert_eq!(pages.concat(), ids);
    // across given and family name
    assert_eq!(
        search(&env, "ah le", 50).await.concat(),
        [hannah.member_id.as_str()]
    );
    // case of letters beyond ASCII
    assert_eq!(
        search(&env, "zoë ō", 50).await.concat(),
        [zoe.member_id.as_str()]
    );
    // LIKE wildcards are plain text
    assert!(search(&env, "n%", 50).await.concat().is_empty());
    assert!(search(&env, "__", 50).await.concat().is_empty());

    // a new name is found at once; the old one no longer
    env.client
        .clone()
        .update_member(env.req(
            pb::UpdateMemberRequest {
                program_id: "p1".into(),
                member_id: bob.member_id.clone(),
                profile: Some(pb::MemberProfile {
                    given_name: "Joanna".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["given_name".into()],
                }),
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap();
    ids.push(bob.member_id.clone());
    ids.sort();
    assert_eq!(search(&env, "ANN", 50).await.concat(), ids);
    assert!(search(&env, "bob", 50).await.concat().is_empty());

    let err = env
        .client
        .clone()
        .list_members(env.req(
            pb::ListMembersRequest {
                program_id: "p1".into(),
                name_contains: "a".into(),
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields_of(&err), ["name_contains"]);
    env.ts.stop().await;
}

async fn rename(env: &Env, member_id: &str, family: &str) {
    env.client
        .clone()
        .update_member(env.req(
            pb::UpdateMemberRequest {
                program_id: "p1".into(),
                member_id: member_id.into(),
                profile: Some(pb::MemberProfile {
                    family_name: family.into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["family_name".into()],
                }),
                ..Default::default()
            },
            "p1",
        ))
        .await
        .unwrap();
}

/// Searches of 3 or more characters (served by a trigram index on SQLite)
/// answer exactly what the scan answers: substrings ignoring case, `%` and
/// `_` as plain text, one program only, stable pages, and never an old name.
async fn name_search_follows_renames_and_erasure(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.at("2026-03-01T00:00:00Z");
    env.create_program(program("p1")).await;
    env.create_program(program("p2")).await;
    let anna = env
        .enroll("p1", "u1", named("Anna", "MÜLLER", "+8613800000001"))
        .await;
    let other = env
        .enroll("p2", "u1", named("Anna", "Müller", "+8613800000001"))
        .await;
    let literal = env
        .enroll("p1", "u2", named("Ed", "Ab%_cd", "+8613800000002"))
        .await;
    env.enroll("p1", "u3", named("Ed", "Abxycd", "+8613800000003"))
        .await;
    let mut smiths = Vec::new();
    for i in 0..5 {
        let m = env
            .enroll(
                "p1",
                &format!("s{i}"),
                named(&format!("N{i}"), "Smithson", &format!("+861390000000{i}")),
            )
            .await;
        smiths.push(m.member_id);
    }
    let renamed = smiths[1].clone(); // N1
    smiths.sort();

    assert_eq!(
        search(&env, "müll", 50).await.concat(),
        [anna.member_id.as_str()]
    );
    assert_eq!(
        search(&env, "mü", 50).await.concat(),
        [anna.member_id.as_str()]
    );
    assert_eq!(
        search_in(&env, "p2", "ÜLLER", 50).await.concat(),
        [other.member_id.as_str()]
    );
    assert_eq!(
        search(&env, "b%_c", 50).await.concat(),
        [literal.member_id.as_str()]
    );
    assert!(search(&env, "b%_d", 50).await.concat().is_empty());
    assert!(search(&env, "\"ab", 50).await.concat().is_empty());
    let pages = search(&env, "SMITH", 2).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(pages.concat(), smiths);

    rename(&env, &renamed, "Jones").await;
    let left: Vec<String> = smiths
        .iter()
        .filter(|id| **id != renamed)
        .cloned()
        .collect();
    assert_eq!(search(&env, "smith", 50).await.concat(), left);
    assert_eq!(
        search(&env, "n1 jon", 50).await.concat(),
        [renamed.as_str()]
    );

    env.client
        .clone()
        .erase_member(env.req(
            pb::EraseMemberRequest {
                program_id: "p1".into(),
                member_id: anna.member_id.clone(),
            },
            "p1",
        ))
        .await
        .unwrap();
    assert!(search(&env, "müller", 50).await.concat().is_empty());
    assert!(search(&env, "anna", 50).await.concat().is_empty());
    assert_eq!(
        search_in(&env, "p2", "müller", 50).await.concat(),
        [other.member_id.as_str()]
    );

    let db = &env.ts.rt("membership").db;
    if db.engine() == Engine::Sqlite {
        // the index matches its content, and the erased name left it
        sqlx::query("INSERT INTO member_names_fts (member_names_fts) VALUES ('integrity-check')")
            .execute(db.pool())
            .await
            .unwrap();
        let holders: Vec<String> = sqlx::query_scalar(
            "SELECT n.member_id FROM member_names_fts x JOIN member_names n ON n.doc = x.rowid \
             WHERE member_names_fts MATCH '\"müller\"'",
        )
        .fetch_all(db.pool())
        .await
        .unwrap();
        assert_eq!(holders, [other.member_id.as_str()]);
        // searches of 3 or more characters go through the index: emptied,
        // it finds nothing (2 characters still scan); rebuilt, all again
        sqlx::query("INSERT INTO member_names_fts (member_names_fts) VALUES ('delete-all')")
            .execute(db.pool())
            .await
            .unwrap();
        assert!(search(&env, "smith", 50).await.concat().is_empty());
        assert_eq!(search(&env, "n1", 50).await.concat(), [renamed.as_str()]);
        // text that many members hold (here in p2) is searched by walking
        // the program's members instead: p1's Smithsons again
        let mut tx = db.begin().await.unwrap();
        sqlx::query(
            "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 2001) \
             INSERT INTO members (member_id, program_id, external_id, status, tier_code, tier_since, \
             next_evaluation_at, enrol_fingerprint, version, enrolled_at, updated_at, family_name, name_search) \
             SELECT 'bulk' || i, 'p2', 'bulk' || i, 'active', 'BASE', 0, 0, '', 1, 0, 0, 'Smithy', ' smithy' FROM seq",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(search(&env, "smith", 50).await.concat(), left);
        assert!(search(&env, "smithy", 50).await.concat().is_empty());
        sqlx::query("INSERT INTO member_names_fts (member_names_fts) VALUES ('rebuild')")
            .execute(db.pool())
            .await
            .unwrap();
        assert_eq!(search(&env, "smith", 50).await.concat(), left);
        assert_eq!(
            search_in(&env, "p2", "smithy", 500).await.concat().len(),
            2001
        );
    }
    env.ts.stop().await;
}
