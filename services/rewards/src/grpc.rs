//! gRPC adapter: decode, check the caller, delegate, encode.

use std::sync::Arc;

use loyalty_common::auth;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::server::GrpcServer;
use loyalty_proto::loyalty::rewards::v1::rewards_service_server::{
    RewardsService, RewardsServiceServer,
};
use loyalty_proto::loyalty::rewards::v1::{GetServiceInfoRequest, GetServiceInfoResponse};
use tonic::{Request, Response, Status};

pub(crate) fn register(rt: Arc<ServiceRuntime>, server: &mut GrpcServer) {
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
}
