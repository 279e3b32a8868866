//! What the points-core suites share: a started rewards service, clients
//! as chosen principals, and short ways to set a policy, record purchases,
//! read balances and verify the ledger.
#![allow(dead_code, clippy::missing_panics_doc)]

use loyalty_common::testing::{TestEngine, TestService, backend, member, staff};
use loyalty_proto::common::Money;
use loyalty_proto::loyalty::rewards::v1 as pb;
use loyalty_proto::loyalty::rewards::v1::rewards_service_client::RewardsServiceClient;
use tonic::transport::Channel;

pub const PROGRAM: &str = "prog-1";

pub struct Rewards {
    pub t: TestService,
}

pub fn cny(minor: i64) -> Option<Money> {
    Some(Money {
        minor_units: minor,
        currency: "CNY".into(),
    })
}

pub fn policy() -> pb::ProgramPolicy {
    pb::ProgramPolicy {
        program_id: PROGRAM.into(),
        time_zone: "Asia/Shanghai".into(),
        currency: "CNY".into(),
        base_points_per_unit: 1,
        unit_minor_units: 100,
        pending_days: 0,
        expiry_mode: pb::ExpiryMode::Never as i32,
        expiry_months: 0,
        clawback_policy: pb::ClawbackPolicy::WriteOff as i32,
        rounding_mode: pb::RoundingMode::Floor as i32,
        version: 0,
    }
}

pub fn line(id: &str, category: &str, minor: i64) -> pb::PurchaseLine {
    pb::PurchaseLine {
        line_id: id.into(),
        sku: format!("sku-{id}"),
        category: category.into(),
        quantity: 1,
        amount: cny(minor),
    }
}

pub fn purchase(order: &str, lines: Vec<pb::PurchaseLine>) -> pb::Purchase {
    let total = lines
        .iter()
        .map(|l| l.amount.as_ref().map_or(0, |m| m.minor_units))
        .sum();
    pb::Purchase {
        order_id: order.into(),
        amount: cny(total),
        lines,
        channel: "app".into(),
        store_id: String::new(),
        purchased_at: None,
    }
}

impl Rewards {
    pub async fn start(engine: TestEngine) -> Self {
        let t = TestService::start(&[loyalty_rewards::SERVICE], engine).await;
        Self { t }
    }

    pub fn client(&self) -> RewardsServiceClient<Channel> {
        RewardsServiceClient::new(self.t.channel())
    }

    /// A client on its own connection (for concurrency tests).
    pub async fn own_client(&self) -> RewardsServiceClient<Channel> {
        let ch = Channel::from_shared(format!("http://{}", self.t.addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        RewardsServiceClient::new(ch)
    }

    pub fn as_staff<T>(&self, msg: T) -> tonic::Request<T> {
        self.t.request(msg, &staff(PROGRAM))
    }

    pub fn as_backend<T>(&self, msg: T) -> tonic::Request<T> {
        self.t.request(msg, &backend(PROGRAM))
    }

    pub fn as_member<T>(&self, member_id: &str, msg: T) -> tonic::Request<T> {
        self.t.request(msg, &member(PROGRAM, member_id))
    }

    pub async fn set_policy(&self, p: pb::ProgramPolicy) {
        self.client()
            .set_program_policy(self.as_staff(pb::SetProgramPolicyRequest { policy: Some(p) }))
            .await
            .unwrap();
    }

    pub async fn buy(&self, member_id: &str, p: pb::Purchase) -> pb::RecordPurchaseResponse {
        self.client()
            .record_purchase(self.as_backend(pb::RecordPurchaseRequest {
                program_id: PROGRAM.into(),
                member_id: member_id.into(),
                purchase: Some(p),
            }))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn adjust(&self, member_id: &str, points: i64, key: &str) -> pb::AdjustResponse {
        self.client()
            .adjust(self.as_staff(pb::AdjustRequest {
                program_id: PROGRAM.into(),
                member_id: member_id.into(),
                points,
                reason: "goodwill".into(),
                idempotency_key: key.into(),
            }))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn redeem(
        &self,
        member_id: &str,
        points: i64,
        key: &str,
    ) -> Result<pb::RedeemResponse, tonic::Status> {
        self.client()
            .redeem(self.as_member(
                member_id,
                pb::RedeemRequest {
                    program_id: PROGRAM.into(),
                    member_id: member_id.into(),
                    points,
                    reference: "test".into(),
                    idempotency_key: key.into(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn refund(
        &self,
        req: pb::RecordRefundRequest,
    ) -> Result<pb::RecordRefundResponse, tonic::Status> {
        self.client()
            .record_refund(self.as_backend(req))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn balance(&self, member_id: &str) -> pb::Balance {
        self.client()
            .get_balance(self.as_member(
                member_id,
                pb::GetBalanceRequest {
                    program_id: PROGRAM.into(),
                    member_id: member_id.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .balance
            .unwrap()
    }

    pub async fn verify(&self) -> pb::VerifyLedgerResponse {
        self.client()
            .verify_ledger(self.as_staff(pb::VerifyLedgerRequest {
                program_id: PROGRAM.into(),
            }))
            .await
            .unwrap()
            .into_inner()
    }

    /// VerifyLedger must find the chain intact and every balance equal to
    /// its ledger and lots (the stored invariant check).
    pub async fn assert_ledger_ok(&self) {
        let v = self.verify().await;
        assert!(v.ok, "ledger verification failed: {v:?}");
    }

    pub async fn run_job(&self, job: pb::LifecycleJob) -> pb::RunLifecycleJobResponse {
        self.client()
            .run_lifecycle_job(self.as_staff(pb::RunLifecycleJobRequest {
                program_id: PROGRAM.into(),
                job: job as i32,
            }))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn entries(&self, member_id: &str) -> Vec<pb::LedgerEntry> {
        self.client()
            .list_ledger_entries(self.as_member(
                member_id,
                pb::ListLedgerEntriesRequest {
                    program_id: PROGRAM.into(),
                    member_id: member_id.into(),
                    page: None,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .entries
    }
}

/// The ErrorInfo reason of a status.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// The first BadRequest field of a status.
pub fn bad_field(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .and_then(|b| b.field_violations.first().map(|f| f.field.clone()))
        .unwrap_or_default()
}
