//! gRPC adapter: take the verified caller, delegate to the operation in
//! `api`, map its error to a status in one place.

use std::sync::Arc;

use loyalty_common::auth;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::server::GrpcServer;
use loyalty_proto::loyalty::membership::v1 as pb;
use loyalty_proto::loyalty::membership::v1::membership_service_server::{
    MembershipService, MembershipServiceServer,
};
use tonic::{Request, Response, Status};

use crate::api::{consent, groups, members, privacy, programs, segments, tiers};

pub(crate) fn register(rt: Arc<ServiceRuntime>, server: &mut GrpcServer) {
    server.add_service(MembershipServiceServer::new(MembershipApi { rt }));
}

struct MembershipApi {
    rt: Arc<ServiceRuntime>,
}

#[tonic::async_trait]
impl MembershipService for MembershipApi {
    async fn get_service_info(
        &self,
        request: Request<pb::GetServiceInfoRequest>,
    ) -> Result<Response<pb::GetServiceInfoResponse>, Status> {
        auth::principal(&request)?;
        let info = self.rt.service_info().await?;
        Ok(Response::new(pb::GetServiceInfoResponse {
            info: Some(info),
        }))
    }

    async fn create_program(
        &self,
        request: Request<pb::CreateProgramRequest>,
    ) -> Result<Response<pb::CreateProgramResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            programs::create(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn get_program(
        &self,
        request: Request<pb::GetProgramRequest>,
    ) -> Result<Response<pb::GetProgramResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            programs::get(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn update_program(
        &self,
        request: Request<pb::UpdateProgramRequest>,
    ) -> Result<Response<pb::UpdateProgramResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            programs::update(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn enroll_member(
        &self,
        request: Request<pb::EnrollMemberRequest>,
    ) -> Result<Response<pb::EnrollMemberResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            members::enroll(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::GetMemberResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            members::get(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn lookup_member(
        &self,
        request: Request<pb::LookupMemberRequest>,
    ) -> Result<Response<pb::LookupMemberResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            members::lookup(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn update_member(
        &self,
        request: Request<pb::UpdateMemberRequest>,
    ) -> Result<Response<pb::UpdateMemberResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            members::update(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn suspend_member(
        &self,
        request: Request<pb::SuspendMemberRequest>,
    ) -> Result<Response<pb::SuspendMemberResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            members::suspend(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn reinstate_member(
        &self,
        request: Request<pb::ReinstateMemberRequest>,
    ) -> Result<Response<pb::ReinstateMemberResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            members::reinstate(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn close_member(
        &self,
        request: Request<pb::CloseMemberRequest>,
    ) -> Result<Response<pb::CloseMemberResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            members::close(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            members::list(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn set_consent(
        &self,
        request: Request<pb::SetConsentRequest>,
    ) -> Result<Response<pb::SetConsentResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            consent::set(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn get_consents(
        &self,
        request: Request<pb::GetConsentsRequest>,
    ) -> Result<Response<pb::GetConsentsResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            consent::get(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn list_consent_history(
        &self,
        request: Request<pb::ListConsentHistoryRequest>,
    ) -> Result<Response<pb::ListConsentHistoryResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            consent::history(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn check_consent(
        &self,
        request: Request<pb::CheckConsentRequest>,
    ) -> Result<Response<pb::CheckConsentResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            consent::check(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn get_tier_progress(
        &self,
        request: Request<pb::GetTierProgressRequest>,
    ) -> Result<Response<pb::GetTierProgressResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            tiers::progress_of(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn list_tier_history(
        &self,
        request: Request<pb::ListTierHistoryRequest>,
    ) -> Result<Response<pb::ListTierHistoryResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            tiers::history(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn run_tier_evaluation(
        &self,
        request: Request<pb::RunTierEvaluationRequest>,
    ) -> Result<Response<pb::RunTierEvaluationResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            tiers::run_evaluation(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn add_member_tags(
        &self,
        request: Request<pb::AddMemberTagsRequest>,
    ) -> Result<Response<pb::AddMemberTagsResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            members::add_tags(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn remove_member_tags(
        &self,
        request: Request<pb::RemoveMemberTagsRequest>,
    ) -> Result<Response<pb::RemoveMemberTagsResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            members::remove_tags(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn create_segment(
        &self,
        request: Request<pb::CreateSegmentRequest>,
    ) -> Result<Response<pb::CreateSegmentResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            segments::create(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn get_segment(
        &self,
        request: Request<pb::GetSegmentRequest>,
    ) -> Result<Response<pb::GetSegmentResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            segments::get(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn list_segments(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            segments::list(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn list_segment_members(
        &self,
        request: Request<pb::ListSegmentMembersRequest>,
    ) -> Result<Response<pb::ListSegmentMembersResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            segments::members_of(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn get_member_segments(
        &self,
        request: Request<pb::GetMemberSegmentsRequest>,
    ) -> Result<Response<pb::GetMemberSegmentsResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            segments::of_member(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::CreateGroupResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            groups::create(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            groups::list(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn join_group(
        &self,
        request: Request<pb::JoinGroupRequest>,
    ) -> Result<Response<pb::JoinGroupResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            groups::join(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn leave_group(
        &self,
        request: Request<pb::LeaveGroupRequest>,
    ) -> Result<Response<pb::LeaveGroupResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            groups::leave(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn list_group_members(
        &self,
        request: Request<pb::ListGroupMembersRequest>,
    ) -> Result<Response<pb::ListGroupMembersResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            groups::members_of(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn export_member_data(
        &self,
        request: Request<pb::ExportMemberDataRequest>,
    ) -> Result<Response<pb::ExportMemberDataResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            privacy::export(&self.rt, &principal, request.into_inner()).await?,
        ))
    }

    async fn erase_member(
        &self,
        request: Request<pb::EraseMemberRequest>,
    ) -> Result<Response<pb::EraseMemberResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        Ok(Response::new(
            privacy::erase(&self.rt, &principal, request.into_inner()).await?,
        ))
    }
}
