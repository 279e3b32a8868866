//! The serving bootstrap over real gRPC on an ephemeral port: graceful
//! shutdown completes in-flight calls, default deadlines apply, request ids
//! are echoed, and health answers without a credential.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use loyalty_common::auth::{Minter, Principal, Role, Secret, Verifier};
use loyalty_common::server::{GrpcServer, Shutdown, ShutdownTrigger};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A tiny hand-written gRPC service: `Sleep(Duration) -> Duration` answers
/// after sleeping that long, so a call can be kept in flight.
#[derive(Clone)]
struct SlowService;

impl tonic::server::NamedService for SlowService {
    const NAME: &'static str = "loyalty.testing.v1.SlowService";
}

struct Sleep;

impl tonic::server::UnaryService<prost_types::Duration> for Sleep {
    type Response = prost_types::Duration;
    type Future = BoxFuture<Result<tonic::Response<prost_types::Duration>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<prost_types::Duration>) -> Self::Future {
        Box::pin(async move {
            let d = req.into_inner();
            tokio::time::sleep(Duration::new(d.seconds as u64, d.nanos as u32)).await;
            Ok(tonic::Response::new(d))
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for SlowService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Sleep, req).await)
        })
    }
}

struct Server {
    addr: std::net::SocketAddr,
    trigger: ShutdownTrigger,
    serving: tokio::task::JoinHandle<()>,
    token: String,
}

async fn start(request_timeout: Duration) -> Server {
    let secret = Secret::new(b"0123456789abcdef0123456789abcdef".to_vec());
    let verifier = Arc::new(Verifier::new(&secret, Vec::new()));
    let mut server = GrpcServer::new(verifier, request_timeout, Duration::from_secs(5));
    server.add_service(SlowService);
    let (trigger, shutdown) = Shutdown::new();
    let (addr, serve) = server
        .bind("127.0.0.1:0".parse().unwrap(), shutdown)
        .await
        .unwrap();
    let serving = tokio::spawn(async move { serve.await.unwrap() });
    let token = Minter::new(secret)
        .mint(
            &Principal::Staff {
                program_id: "p1".into(),
                subject: "ops".into(),
                roles: vec![Role::ProgramAdmin],
            },
            Duration::from_mins(1),
        )
        .unwrap();
    Server {
        addr,
        trigger,
        serving,
        token,
    }
}

async fn sleep_call(
    channel: Channel,
    token: &str,
    sleep: Duration,
    request_id: Option<&str>,
) -> Result<tonic::Response<prost_types::Duration>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(prost_types::Duration {
        seconds: sleep.as_secs() as i64,
        nanos: sleep.subsec_nanos() as i32,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(id) = request_id {
        req.metadata_mut()
            .insert("x-request-id", id.parse().unwrap());
    }
    grpc.unary(
        req,
        http::uri::PathAndQuery::from_static("/loyalty.testing.v1.SlowService/Sleep"),
        tonic_prost::ProstCodec::default(),
    )
    .await
}

async fn connect(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn graceful_shutdown_completes_an_in_flight_call() {
    let server = start(Duration::from_secs(10)).await;
    let channel = connect(server.addr).await;
    let token = server.token.clone();
    let in_flight = tokio::spawn({
        let channel = channel.clone();
        async move { sleep_call(channel, &token, Duration::from_millis(800), None).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let fired_at = Instant::now();
    server.trigger.fire();

    let answer = in_flight.await.unwrap().expect("in-flight call completes");
    assert_eq!(answer.into_inner().nanos, 800_000_000);
    tokio::time::timeout(Duration::from_secs(5), server.serving)
        .await
        .expect("server stops after draining")
        .unwrap();
    // it waited for the call rather than cutting it
    assert!(fired_at.elapsed() >= Duration::from_millis(500));
    // and no longer accepts connections
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn calls_without_a_deadline_get_the_default_one() {
    let server = start(Duration::from_millis(200)).await;
    let channel = connect(server.addr).await;
    let started = Instant::now();
    let err = sleep_call(channel, &server.token, Duration::from_secs(3), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    server.trigger.fire();
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let server = start(Duration::from_secs(5)).await;
    let channel = connect(server.addr).await;
    let resp = sleep_call(
        channel.clone(),
        &server.token,
        Duration::ZERO,
        Some("req-42"),
    )
    .await
    .unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "req-42");
    // a hostile id (spaces, too long) is replaced by a fresh one
    let resp = sleep_call(channel, &server.token, Duration::ZERO, Some("a b"))
        .await
        .unwrap();
    let made = resp
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_ne!(made, "a b");
    assert_eq!(made.len(), 36, "a UUID: {made}");
    server.trigger.fire();
}

#[tokio::test]
async fn health_needs_no_credential_but_services_do() {
    let server = start(Duration::from_secs(5)).await;
    let channel = connect(server.addr).await;
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "loyalty.testing.v1.SlowService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let err = sleep_call(channel, "not-a-token", Duration::ZERO, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    server.trigger.fire();
}
