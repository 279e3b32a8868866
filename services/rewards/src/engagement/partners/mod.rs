//! Partner programs and points exchange with them.

use std::sync::Arc;

use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::server::GrpcServer;
use loyalty_proto::loyalty::rewards::v1::partner_service_server::PartnerServiceServer;

pub mod exchange;
mod grpc;
pub mod store;

pub(crate) fn register(rt: &Arc<ServiceRuntime>, server: &mut GrpcServer) {
    server.add_service(PartnerServiceServer::new(grpc::PartnerApi {
        rt: rt.clone(),
    }));
}
