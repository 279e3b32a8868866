//! Groups and segment definitions over gRPC: create once (replays
//! answer the same, other definitions are ALREADY_EXISTS), join and leave,
//! paged listings.

mod common;

use common::{Env, fields_of, profile, program};
use loyalty_common::auth::Role;
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::{TestEngine, member, staff_with};
use loyalty_proto::common::PageRequest;
use loyalty_proto::loyalty::membership::v1 as pb;
use tonic::Code;

test_on_both_engines!(
    groups_are_joined_left_and_listed,
    segment_definitions_are_created_once_and_listed
);

fn group(id: &str, name: &str) -> pb::CreateGroupRequest {
    pb::CreateGroupRequest {
        program_id: "p1".into(),
        group_id: id.into(),
        name: name.into(),
        description: "weekly runs".into(),
        ..Default::default()
    }
}

async fn groups_are_joined_left_and_listed(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.create_program(program("p1")).await;
    let mut c = env.client.clone();
    assert!(
        c.create_group(env.req(group("runners", "Runners"), "p1"))
            .await
            .unwrap()
            .into_inner()
            .created
    );
    assert!(
        !c.create_group(env.req(group("runners", "Runners"), "p1"))
            .await
            .unwrap()
            .into_inner()
            .created
    );
    let err = c
        .create_group(env.req(group("runners", "Walkers"), "p1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(fields_of(&err).contains(&"group_id".to_owned()));
    let err = c
        .create_group(env.req(group("Bad Id", ""), "p1"))
        .await
        .unwrap_err();
    let f = fields_of(&err);
    assert!(
        f.contains(&"group_id".to_owned()) && f.contains(&"name".to_owned()),
        "{f:?}"
    );
    let mut ids = Vec::new();
    for i in 0..5 {
        let m = env.enroll("p1", &format!("u{i}"), profile("", "")).await;
        c.join_group(env.ts.request(
            pb::JoinGroupRequest {
                program_id: "p1".into(),
                group_id: "runners".into(),
                member_id: m.member_id.clone(),
            },
            &member("p1", &m.member_id),
        ))
        .await
        .unwrap();
        ids.push(m.member_id);
    }
    // joining twice changes nothing; a member cannot add another member
    c.join_group(env.req(
        pb::JoinGroupRequest {
            program_id: "p1".into(),
            group_id: "runners".into(),
            member_id: ids[0].clone(),
        },
        "p1",
    ))
    .await
    .unwrap();
    let err = c
        .join_group(env.ts.request(
            pb::JoinGroupRequest {
                program_id: "p1".into(),
                group_id: "runners".into(),
                member_id: ids[1].clone(),
            },
            &member("p1", &ids[0]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .join_group(env.req(
            pb::JoinGroupRequest {
                program_id: "p1".into(),
                group_id: "nope".into(),
                member_id: ids[0].clone(),
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let left = c
        .leave_group(env.req(
            pb::LeaveGroupRequest {
                program_id: "p1".into(),
                group_id: "runners".into(),
                member_id: ids[2].clone(),
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(left.left);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_group_members(env.req(
                pb::ListGroupMembersRequest {
                    program_id: "p1".into(),
                    group_id: "runners".into(),
                    page: Some(PageRequest {
                        page_size: 2,
                        page_token: token,
                    }),
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
    let mut want: Vec<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, id)| id.clone())
        .collect();
    want.sort();
    assert_eq!(seen, want);
    let groups = c
        .list_groups(env.req(
            pb::ListGroupsRequest {
                program_id: "p1".into(),
                page: None,
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(groups.len(), 1);
    env.ts.stop().await;
}

async fn segment_definitions_are_created_once_and_listed(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.create_program(program("p1")).await;
    let mut c = env.client.clone();
    let rule = |tier: &str| pb::SegmentRule {
        node: Some(pb::segment_rule::Node::Condition(pb::SegmentCondition {
            field: pb::SegmentField::Tier as i32,
            operator: pb::SegmentOperator::Eq as i32,
            text: tier.into(),
            ..Default::default()
        })),
    };
    let create = |id: &str, tier: &str| pb::CreateSegmentRequest {
        program_id: "p1".into(),
        segment_id: id.into(),
        name: id.into(),
        rule: Some(rule(tier)),
    };
    for id in ["a", "b", "c"] {
        assert!(
            c.create_segment(env.req(create(id, "GOLD"), "p1"))
                .await
                .unwrap()
                .into_inner()
                .created
        );
    }
    assert!(
        !c.create_segment(env.req(create("a", "GOLD"), "p1"))
            .await
            .unwrap()
            .into_inner()
            .created
    );
    let err = c
        .create_segment(env.req(create("a", "SILVER"), "p1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // only admins and analysts define segments
    let err = c
        .create_segment(env.ts.request(
            create("d", "GOLD"),
            &staff_with("p1", &[Role::SupportAgent]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let got = c
        .get_segment(env.req(
            pb::GetSegmentRequest {
                program_id: "p1".into(),
                segment_id: "b".into(),
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    assert_eq!(got.rule, Some(rule("GOLD")));
    let err = c
        .get_segment(env.req(
            pb::GetSegmentRequest {
                program_id: "p1".into(),
                segment_id: "zz".into(),
            },
            "p1",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let first = c
        .list_segments(env.req(
            pb::ListSegmentsRequest {
                program_id: "p1".into(),
                page: Some(PageRequest {
                    page_size: 2,
                    page_token: String::new(),
                }),
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first
            .segments
            .iter()
            .map(|s| s.segment_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let token = first.page.unwrap().next_page_token;
    let second = c
        .list_segments(env.req(
            pb::ListSegmentsRequest {
                program_id: "p1".into(),
                page: Some(PageRequest {
                    page_size: 2,
                    page_token: token,
                }),
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.segments.len(), 1);
    assert!(second.page.unwrap().next_page_token.is_empty());
    env.ts.stop().await;
}
