//! The rewards catalog and its redemption orders.

use std::sync::Arc;

use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::server::GrpcServer;
use loyalty_proto::loyalty::rewards::v1::catalog_service_server::CatalogServiceServer;

pub mod eligibility;
mod grpc;
pub mod store;

pub(crate) fn register(rt: &Arc<ServiceRuntime>, server: &mut GrpcServer) {
    server.add_service(CatalogServiceServer::new(grpc::CatalogApi {
        rt: rt.clone(),
    }));
}
