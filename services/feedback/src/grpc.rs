//! gRPC adapter: decode, check the caller, delegate, encode.

use std::sync::Arc;

use loyalty_common::auth;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::server::GrpcServer;
use loyalty_proto::loyalty::feedback::v1::feedback_service_server::{
    FeedbackService, FeedbackServiceServer,
};
use loyalty_proto::loyalty::feedback::v1::{GetServiceInfoRequest, GetServiceInfoResponse};
use tonic::{Request, Response, Status};

pub(crate) fn register(rt: Arc<ServiceRuntime>, server: &mut GrpcServer) {
    server.add_service(FeedbackServiceServer::new(FeedbackApi { rt }));
}

struct FeedbackApi {
    rt: Arc<ServiceRuntime>,
}

#[tonic::async_trait]
impl FeedbackService for FeedbackApi {
    async fn get_service_info(
        &self,
        request: Request<GetServiceInfoRequest>,
    ) -> Result<Response<GetServiceInfoResponse>, Status> {
        auth::principal(&request)?;
        let info = self.rt.service_info().await?;
        Ok(Response::new(GetServiceInfoResponse { info: Some(info) }))
    }
}
