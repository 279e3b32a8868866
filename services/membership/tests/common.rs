//! Helpers shared by the membership integration tests: a started service,
//! a client, a program definition and events as other services send them.
// amounts are written as <yuan>_<fen> minor units (1_000_00 = 1000.00)
#![allow(clippy::inconsistent_digit_grouping)]
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use loyalty_common::calendar::to_timestamp;
use loyalty_common::events::new_envelope;
use loyalty_common::testing::{TestEngine, TestService, staff};
use loyalty_proto::common::Money;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{EventEnvelope, OrderRefunded, PurchaseCompleted};
use loyalty_proto::loyalty::membership::v1 as pb;
use loyalty_proto::loyalty::membership::v1::membership_service_client::MembershipServiceClient;
use tonic::transport::Channel;

pub type Client = MembershipServiceClient<Channel>;

pub struct Env {
    pub ts: TestService,
    pub client: Client,
}

impl Env {
    pub async fn start(engine: TestEngine) -> Self {
        let ts = TestService::start(&[loyalty_membership::SERVICE], engine).await;
        let client = MembershipServiceClient::new(ts.channel());
        Self { ts, client }
    }

    pub fn at(&self, s: &str) -> DateTime<Utc> {
        let t: DateTime<Utc> = s.parse().expect("instant");
        self.ts.clock().set(t);
        t
    }

    pub fn req<T>(&self, msg: T, program: &str) -> tonic::Request<T> {
        self.ts.request(msg, &staff(program))
    }

    pub async fn create_program(&self, p: pb::Program) -> pb::Program {
        let id = p.program_id.clone();
        self.client
            .clone()
            .create_program(self.req(
                pb::CreateProgramRequest {
                    program: Some(p),
                    ..Default::default()
                },
                &id,
            ))
            .await
            .expect("create program")
            .into_inner()
            .program
            .expect("program")
    }

    pub async fn enroll(
        &self,
        program: &str,
        external_id: &str,
        profile: pb::MemberProfile,
    ) -> pb::Member {
        self.client
            .clone()
            .enroll_member(self.req(
                pb::EnrollMemberRequest {
                    program_id: program.into(),
                    external_id: external_id.into(),
                    profile: Some(profile),
                    enrolment_channel: "app".into(),
                    tags: Vec::new(),
                },
                program,
            ))
            .await
            .expect("enrol")
            .into_inner()
            .member
            .expect("member")
    }

    pub async fn member(&self, program: &str, member_id: &str) -> pb::Member {
        self.client
            .clone()
            .get_member(self.req(
                pb::GetMemberRequest {
                    program_id: program.into(),
                    member_id: member_id.into(),
                },
                program,
            ))
            .await
            .expect("get member")
            .into_inner()
            .member
            .expect("member")
    }

    pub async fn progress(&self, program: &str, member_id: &str) -> pb::TierProgress {
        self.client
            .clone()
            .get_tier_progress(self.req(
                pb::GetTierProgressRequest {
                    program_id: program.into(),
                    member_id: member_id.into(),
                },
                program,
            ))
            .await
            .expect("progress")
            .into_inner()
            .progress
            .expect("progress")
    }

    pub async fn evaluate(&self, program: &str) -> pb::RunTierEvaluationResponse {
        let r = self
            .client
            .clone()
            .run_tier_evaluation(self.req(
                pb::RunTierEvaluationRequest {
                    program_id: program.into(),
                },
                program,
            ))
            .await
            .expect("evaluation")
            .into_inner();
        self.ts.settle().await;
        r
    }

    /// TierChanged events of a member, in order: (from, to, reason, bp).
    pub async fn tier_events(&self, member_id: &str) -> Vec<(String, String, String, i64)> {
        self.ts
            .outbox("membership")
            .await
            .into_iter()
            .filter(|e| e.member_id == member_id)
            .filter_map(|e| match e.payload {
                Some(Payload::TierChanged(t)) => {
                    Some((t.from_tier, t.to_tier, t.reason, t.points_multiplier_bp))
                }
                _ => None,
            })
            .collect()
    }
}

pub fn tiers() -> Vec<pb::TierDefinition> {
    [
        ("BASE", 0, 10_000),
        ("SILVER", 1_000_00, 12_000),
        ("GOLD", 5_000_00, 15_000),
        ("PLATINUM", 10_000_00, 20_000),
    ]
    .into_iter()
    .map(|(code, threshold, bp)| pb::TierDefinition {
        code: code.into(),
        name: code.to_lowercase(),
        threshold,
        privileges: vec![
            pb::TierPrivilege {
                benefit_code: "points_multiplier_bp".into(),
                value: bp,
                parameters: std::collections::HashMap::default(),
            },
            pb::TierPrivilege {
                benefit_code: "free_returns".into(),
                value: 0,
                parameters: std::collections::HashMap::default(),
            },
        ],
    })
    .collect()
}

/// A spend program in Asia/Shanghai: rolling 12 months, reviewed 12 months
/// after the tier was reached.
pub fn program(id: &str) -> pb::Program {
    pb::Program {
        program_id: id.into(),
        name: "Test program".into(),
        currency: "CNY".into(),
        time_zone: "Asia/Shanghai".into(),
        tiers: tiers(),
        qualifying_metric: pb::QualifyingMetric::Spend as i32,
        qualifying_window: Some(pb::QualifyingWindow {
            kind: Some(pb::qualifying_window::Kind::RollingMonths(12)),
        }),
        evaluation_policy: Some(pb::EvaluationPolicy {
            kind: Some(pb::evaluation_policy::Kind::AnniversaryMonths(12)),
        }),
        ..Default::default()
    }
}

pub fn profile(phone: &str, email: &str) -> pb::MemberProfile {
    pb::MemberProfile {
        given_name: "Na".into(),
        family_name: "Li".into(),
        phone: phone.into(),
        email: email.into(),
        birthday: "1990-05-17".into(),
        locale: "zh-CN".into(),
        card_number: String::new(),
        preferences: std::collections::HashMap::default(),
    }
}

pub fn purchase(
    program: &str,
    member: &str,
    order: &str,
    minor: i64,
    at: DateTime<Utc>,
) -> EventEnvelope {
    let mut e = new_envelope(
        "rewards",
        program,
        member,
        Payload::PurchaseCompleted(PurchaseCompleted {
            order_id: order.into(),
            amount: Some(Money {
                minor_units: minor,
                currency: "CNY".into(),
            }),
            lines: Vec::new(),
            channel: "store".into(),
            store_id: "S1".into(),
            purchased_at: Some(to_timestamp(at)),
        }),
    );
    e.occurred_at = Some(to_timestamp(at));
    e
}

pub fn refund(
    program: &str,
    member: &str,
    order: &str,
    refund_id: &str,
    minor: i64,
    at: DateTime<Utc>,
) -> EventEnvelope {
    new_envelope(
        "rewards",
        program,
        member,
        Payload::OrderRefunded(OrderRefunded {
            order_id: order.into(),
            refund_id: refund_id.into(),
            amount: Some(Money {
                minor_units: minor,
                currency: "CNY".into(),
            }),
            lines: Vec::new(),
            refunded_at: Some(to_timestamp(at)),
        }),
    )
}

/// The field named by an error's BadRequest / ErrorInfo details.
pub fn fields_of(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let mut f: Vec<String> = details
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    if let Some(info) = details.error_info()
        && let Some(field) = info.metadata.get("field")
    {
        f.push(field.clone());
    }
    f
}
