//! gRPC adapter: decode, check the caller, delegate, encode.

use std::sync::Arc;

use loyalty_common::auth;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::server::GrpcServer;
use loyalty_proto::loyalty::rewards::v1::rewards_service_server::{
    RewardsService, RewardsServiceServer,
};
use loyalty_proto::loyalty::rewards::v1::{
    AdjustRequest, AdjustResponse, CheckInRequest, CheckInResponse, CreateEarningRuleRequest,
    CreateEarningRuleResponse, DeleteEarningRuleRequest, DeleteEarningRuleResponse,
    GetBalanceRequest, GetBalanceResponse, GetEarningRuleRequest, GetEarningRuleResponse,
    GetLifecycleJobStatusRequest, GetLifecycleJobStatusResponse, GetProgramPolicyRequest,
    GetProgramPolicyResponse, GetServiceInfoRequest, GetServiceInfoResponse,
    ListEarningRulesRequest, ListEarningRulesResponse, ListExpiryRemindersRequest,
    ListExpiryRemindersResponse, ListLedgerEntriesRequest, ListLedgerEntriesResponse,
    RecordActivityRequest, RecordActivityResponse, RecordPurchaseRequest, RecordPurchaseResponse,
    RecordRefundRequest, RecordRefundResponse, RedeemRequest, RedeemResponse,
    RunLifecycleJobRequest, RunLifecycleJobResponse, SetProgramPolicyRequest,
    SetProgramPolicyResponse, SimulatePurchaseRequest, SimulatePurchaseResponse, TransferRequest,
    TransferResponse, UpdateEarningRuleRequest, UpdateEarningRuleResponse, VerifyLedgerRequest,
    VerifyLedgerResponse,
};
use tonic::{Request, Response, Status};

/// Adds every gRPC service of the rewards service to `server`.
pub(crate) fn register(rt: Arc<ServiceRuntime>, server: &mut GrpcServer) {
    crate::engagement::register(&rt, server);
    server.add_service(RewardsServiceServer::new(RewardsApi { rt }));
}

struct RewardsApi {
    rt: Arc<ServiceRuntime>,
}

#[tonic::async_trait]
impl RewardsService for RewardsApi {
    async fn get_service_info(
        &self,
        request: Request<GetServiceInfoRequest>,
    ) -> Result<Response<GetServiceInfoResponse>, Status> {
        auth::principal(&request)?;
        let info = self.rt.service_info().await?;
        Ok(Response::new(GetServiceInfoResponse { info: Some(info) }))
    }

    async fn set_program_policy(
        &self,
        _request: Request<SetProgramPolicyRequest>,
    ) -> Result<Response<SetProgramPolicyResponse>, Status> {
        Err(Status::unimplemented(
            "SetProgramPolicy lands with the points core",
        ))
    }
    async fn get_program_policy(
        &self,
        _request: Request<GetProgramPolicyRequest>,
    ) -> Result<Response<GetProgramPolicyResponse>, Status> {
        Err(Status::unimplemented(
            "GetProgramPolicy lands with the points core",
        ))
    }
    async fn record_purchase(
        &self,
        _request: Request<RecordPurchaseRequest>,
    ) -> Result<Response<RecordPurchaseResponse>, Status> {
        Err(Status::unimplemented(
            "RecordPurchase lands with the points core",
        ))
    }
    async fn record_refund(
        &self,
        _request: Request<RecordRefundRequest>,
    ) -> Result<Response<RecordRefundResponse>, Status> {
        Err(Status::unimplemented(
            "RecordRefund lands with the points core",
        ))
    }
    async fn simulate_purchase(
        &self,
        _request: Request<SimulatePurchaseRequest>,
    ) -> Result<Response<SimulatePurchaseResponse>, Status> {
        Err(Status::unimplemented(
            "SimulatePurchase lands with the points core",
        ))
    }
    async fn get_balance(
        &self,
        _request: Request<GetBalanceRequest>,
    ) -> Result<Response<GetBalanceResponse>, Status> {
        Err(Status::unimplemented(
            "GetBalance lands with the points core",
        ))
    }
    async fn list_ledger_entries(
        &self,
        _request: Request<ListLedgerEntriesRequest>,
    ) -> Result<Response<ListLedgerEntriesResponse>, Status> {
        Err(Status::unimplemented(
            "ListLedgerEntries lands with the points core",
        ))
    }
    async fn redeem(
        &self,
        _request: Request<RedeemRequest>,
    ) -> Result<Response<RedeemResponse>, Status> {
        Err(Status::unimplemented("Redeem lands with the points core"))
    }
    async fn transfer(
        &self,
        _request: Request<TransferRequest>,
    ) -> Result<Response<TransferResponse>, Status> {
        Err(Status::unimplemented("Transfer lands with the points core"))
    }
    async fn adjust(
        &self,
        _request: Request<AdjustRequest>,
    ) -> Result<Response<AdjustResponse>, Status> {
        Err(Status::unimplemented("Adjust lands with the points core"))
    }
    async fn verify_ledger(
        &self,
        _request: Request<VerifyLedgerRequest>,
    ) -> Result<Response<VerifyLedgerResponse>, Status> {
        Err(Status::unimplemented(
            "VerifyLedger lands with the points core",
        ))
    }
    async fn create_earning_rule(
        &self,
        _request: Request<CreateEarningRuleRequest>,
    ) -> Result<Response<CreateEarningRuleResponse>, Status> {
        Err(Status::unimplemented(
            "CreateEarningRule lands with the points core",
        ))
    }
    async fn update_earning_rule(
        &self,
        _request: Request<UpdateEarningRuleRequest>,
    ) -> Result<Response<UpdateEarningRuleResponse>, Status> {
        Err(Status::unimplemented(
            "UpdateEarningRule lands with the points core",
        ))
    }
    async fn get_earning_rule(
        &self,
        _request: Request<GetEarningRuleRequest>,
    ) -> Result<Response<GetEarningRuleResponse>, Status> {
        Err(Status::unimplemented(
            "GetEarningRule lands with the points core",
        ))
    }
    async fn list_earning_rules(
        &self,
        _request: Request<ListEarningRulesRequest>,
    ) -> Result<Response<ListEarningRulesResponse>, Status> {
        Err(Status::unimplemented(
            "ListEarningRules lands with the points core",
        ))
    }
    async fn delete_earning_rule(
        &self,
        _request: Request<DeleteEarningRuleRequest>,
    ) -> Result<Response<DeleteEarningRuleResponse>, Status> {
        Err(Status::unimplemented(
            "DeleteEarningRule lands with the points core",
        ))
    }
    async fn check_in(
        &self,
        _request: Request<CheckInRequest>,
    ) -> Result<Response<CheckInResponse>, Status> {
        Err(Status::unimplemented("CheckIn lands with the points core"))
    }
    async fn record_activity(
        &self,
        _request: Request<RecordActivityRequest>,
    ) -> Result<Response<RecordActivityResponse>, Status> {
        Err(Status::unimplemented(
            "RecordActivity lands with the points core",
        ))
    }
    async fn run_lifecycle_job(
        &self,
        _request: Request<RunLifecycleJobRequest>,
    ) -> Result<Response<RunLifecycleJobResponse>, Status> {
        Err(Status::unimplemented(
            "RunLifecycleJob lands with the points core",
        ))
    }
    async fn get_lifecycle_job_status(
        &self,
        _request: Request<GetLifecycleJobStatusRequest>,
    ) -> Result<Response<GetLifecycleJobStatusResponse>, Status> {
        Err(Status::unimplemented(
            "GetLifecycleJobStatus lands with the points core",
        ))
    }
    async fn list_expiry_reminders(
        &self,
        _request: Request<ListExpiryRemindersRequest>,
    ) -> Result<Response<ListExpiryRemindersResponse>, Status> {
        Err(Status::unimplemented(
            "ListExpiryReminders lands with the points core",
        ))
    }
}
