//! The ceiling of a gRPC call on this machine: a bare tonic unary
//! hello-world, server and client in one process, driven by the same load
//! loop and client settings as every scenario.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::BenchError;
use crate::client::{self, Clients};
use crate::load::{self, LoadConfig, Report};

/// Generated from crates/bench/proto/hello.proto.
#[allow(clippy::pedantic)] // generated code
pub mod proto {
    tonic::include_proto!("loyalty.bench.v1");
}

use proto::hello_service_client::HelloServiceClient;
use proto::hello_service_server::{HelloService, HelloServiceServer};
use proto::{SayHelloRequest, SayHelloResponse};

struct Hello;

#[tonic::async_trait]
impl HelloService for Hello {
    async fn say_hello(
        &self,
        request: Request<SayHelloRequest>,
    ) -> Result<Response<SayHelloResponse>, Status> {
        Ok(Response::new(SayHelloResponse {
            message: format!("hello {}", request.into_inner().name),
        }))
    }
}

/// Serves hello-world on `addr` (port 0 picks one) until the task is
/// aborted; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
) -> Result<(SocketAddr, JoinHandle<Result<(), tonic::transport::Error>>), BenchError> {
    let listener = TcpListener::bind(addr).await.map_err(BenchError::Serve)?;
    let local = listener.local_addr().map_err(BenchError::Serve)?;
    // the same socket options as the services' server (crates/common)
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = Server::builder()
        .add_service(HelloServiceServer::new(Hello))
        .serve_with_incoming(incoming);
    Ok((local, tokio::spawn(server)))
}

/// The hello-world ceiling with the standard client ([`client::CHANNELS`]).
pub async fn ceiling(cfg: &LoadConfig) -> Result<Report, BenchError> {
    ceiling_with(cfg, client::CHANNELS).await
}

/// The hello-world ceiling with a pool of `channels` connections.
pub async fn ceiling_with(cfg: &LoadConfig, channels: usize) -> Result<Report, BenchError> {
    let (addr, server) = serve(([127, 0, 0, 1], 0).into()).await?;
    let clients = Clients::connect(&format!("http://{addr}"), channels).await?;
    let report = load::run(cfg, move |i| {
        let mut client = HelloServiceClient::new(clients.pick(i));
        async move {
            client
                .say_hello(SayHelloRequest {
                    name: "bench".into(),
                })
                .await
                .map(drop)
        }
    })
    .await;
    server.abort();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_server_answers_and_the_ceiling_counts_calls() {
        let (addr, server) = serve(([127, 0, 0, 1], 0).into()).await.unwrap();
        let mut client = HelloServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let answer = client
            .say_hello(SayHelloRequest { name: "ada".into() })
            .await
            .unwrap();
        assert_eq!(answer.into_inner().message, "hello ada");
        server.abort();

        let cfg = LoadConfig {
            concurrency: 4,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(100),
        };
        for channels in [1, 2] {
            let report = ceiling_with(&cfg, channels).await.unwrap();
            assert_eq!(report.errors, 0, "{report:?}");
            assert!(report.requests > 0);
            assert!(report.p50_us > 0 && report.p50_us <= report.max_us);
        }
    }
}
