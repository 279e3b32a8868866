//! gRPC adapter: decode, check the caller, delegate, encode.

use std::sync::Arc;

use loyalty_common::auth;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::server::GrpcServer;
use loyalty_proto::loyalty::retention::v1::retention_service_server::{
    RetentionService, RetentionServiceServer,
};
use loyalty_proto::loyalty::retention::v1::{GetServiceInfoRequest, GetServiceInfoResponse};
use tonic::{Request, Response, Status};

pub(crate) fn register(rt: Arc<ServiceRuntime>, server: &mut GrpcServer) {
    server.add_service(RetentionServiceServer::new(RetentionApi { rt }));
}

struct RetentionApi {
    rt: Arc<ServiceRuntime>,
}

#[tonic::async_trait]
impl RetentionService for RetentionApi {
    async fn get_service_info(
        &self,
        request: Request<GetServiceInfoRequest>,
    ) -> Result<Response<GetServiceInfoResponse>, Status> {
        auth::principal(&request)?;
        let info = self.rt.service_info().await?;
        Ok(Response::new(GetServiceInfoResponse { info: Some(info) }))
    }
}
