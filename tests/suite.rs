//! End-to-end: the whole suite started as `loyalty` starts it (one process,
//! embedded default), on ephemeral ports, talked to with standard gRPC
//! clients (health, reflection) and plain HTTP.

use std::time::Duration;

use loyalty::{Running, Selection, start};
use loyalty_common::config::{Config, Source};
use loyalty_common::server::{Shutdown, ShutdownTrigger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SERVICE_NAMES: [&str; 4] = [
    "loyalty.membership.v1.MembershipService",
    "loyalty.rewards.v1.RewardsService",
    "loyalty.feedback.v1.FeedbackService",
    "loyalty.retention.v1.RetentionService",
];

struct Suite {
    running: Option<Running>,
    trigger: ShutdownTrigger,
    channel: Channel,
    _dir: tempfile::TempDir,
}

/// The embedded default with its data under `dir`, on ephemeral ports.
fn embedded_config(dir: &std::path::Path) -> Config {
    let mut src = Source::default();
    src.set("data_dir", dir.display().to_string());
    src.set("listen", "127.0.0.1:0");
    src.set("http_listen", "127.0.0.1:0");
    Config::from_source(&src, "127.0.0.1:0".parse().unwrap()).unwrap()
}

impl Suite {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = embedded_config(dir.path());
        let (trigger, shutdown) = Shutdown::new();
        let running = start(&config, Selection::suite(), shutdown).await.unwrap();
        let channel = Channel::from_shared(format!("http://{}", running.grpc_addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            running: Some(running),
            trigger,
            channel,
            _dir: dir,
        }
    }

    fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    async fn stop(mut self) {
        self.trigger.fire();
        tokio::time::timeout(Duration::from_secs(10), self.running.take().unwrap().wait())
            .await
            .expect("suite stops within 10 s")
            .expect("suite stops cleanly");
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await.unwrap();
    let status = buf[9..12].parse().unwrap();
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test]
async fn every_service_answers_health_to_a_standard_client() {
    let suite = Suite::start().await;
    let mut health = HealthClient::new(suite.channel.clone());
    for service in SERVICE_NAMES.iter().copied().chain([""]) {
        let resp = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?}: {e}"));
        assert_eq!(
            resp.into_inner().status(),
            ServingStatus::Serving,
            "{service}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "loyalty.billing.v1.BillingService".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    suite.stop().await;
}

#[tokio::test]
async fn reflection_lists_every_service_and_resolves_their_files() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let suite = Suite::start().await;
    let mut client = ServerReflectionClient::new(suite.channel.clone());
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "loyalty.rewards.v1.RewardsService".into(),
            )),
        },
    ];
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in SERVICE_NAMES {
        assert!(names.contains(&service), "{service} missing from {names:?}");
    }
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors")
    };
    assert!(!files.file_descriptor_proto.is_empty());
    suite.stop().await;
}

#[tokio::test]
async fn calls_need_a_verified_credential() {
    use loyalty_proto::loyalty::rewards::v1::GetServiceInfoRequest;
    use loyalty_proto::loyalty::rewards::v1::rewards_service_client::RewardsServiceClient;

    let suite = Suite::start().await;
    let mut client = RewardsServiceClient::new(suite.channel.clone());
    let err = client
        .get_service_info(GetServiceInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // an unsigned claim is not a credential
    let mut forged = tonic::Request::new(GetServiceInfoRequest {});
    forged.metadata_mut().insert(
        "authorization",
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."
            .parse()
            .unwrap(),
    );
    assert_eq!(
        client.get_service_info(forged).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let token = &suite
        .running()
        .dev_credential
        .as_ref()
        .expect("dev credential on embedded")
        .token;
    let mut req = tonic::Request::new(GetServiceInfoRequest {});
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let resp = client.get_service_info(req).await.unwrap();
    assert!(
        resp.metadata().get("x-request-id").is_some(),
        "request id echoed"
    );
    let info = resp.into_inner().info.unwrap();
    assert_eq!(info.service, "rewards");
    assert_eq!(info.storage_engine, "sqlite");
    assert_eq!(info.event_transport, "in-process");
    assert!(info.schema_version >= 1);
    suite.stop().await;
}

#[tokio::test]
async fn gateway_is_ready_when_every_service_serves() {
    let suite = Suite::start().await;
    let http = suite.running().http_addr.unwrap();
    let (status, body) = http_get(http, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(http, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    for s in ["membership", "rewards", "feedback", "retention"] {
        assert_eq!(ready["services"][s], "SERVING", "{body}");
    }
    suite.stop().await;
}

#[tokio::test]
async fn restart_keeps_data_and_the_secret() {
    use loyalty_proto::loyalty::retention::v1::GetServiceInfoRequest;
    use loyalty_proto::loyalty::retention::v1::retention_service_client::RetentionServiceClient;

    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(dir.path());
    let mut first_token = None;
    for run in 0..2 {
        let (trigger, shutdown) = Shutdown::new();
        let running = start(&config, Selection::suite(), shutdown).await.unwrap();
        let token = first_token
            .get_or_insert_with(|| running.dev_credential.clone().unwrap().token)
            .clone();
        let mut client =
            RetentionServiceClient::connect(format!("http://{}", running.grpc_addr.unwrap()))
                .await
                .unwrap();
        let mut req = tonic::Request::new(GetServiceInfoRequest {});
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let info = client.get_service_info(req).await;
        assert!(
            info.is_ok(),
            "run {run}: a token minted before the restart still verifies: {info:?}"
        );
        drop(client);
        trigger.fire();
        running.wait().await.unwrap();
    }
    for s in ["membership", "rewards", "feedback", "retention"] {
        assert!(dir.path().join(format!("{s}.db")).exists(), "{s}.db");
    }
    assert!(dir.path().join("auth.secret").exists());
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS JetStream: set LOYALTY_TEST_POSTGRES_URL and LOYALTY_TEST_NATS_URL and run with --include-ignored (CI does)"]
async fn suite_runs_on_postgres_and_nats() {
    use loyalty_proto::loyalty::membership::v1::GetServiceInfoRequest;
    use loyalty_proto::loyalty::membership::v1::membership_service_client::MembershipServiceClient;
    use sqlx::Connection;

    let admin = std::env::var(loyalty_common::testing::POSTGRES_ENV).unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&admin).await.unwrap();
    for s in ["membership", "rewards", "feedback", "retention"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE loyalty_test_{id}_{s}"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let base = admin.rsplit_once('/').unwrap().0;
    let dir = tempfile::tempdir().unwrap();
    let mut src = Source::default();
    src.set("data_dir", dir.path().display().to_string());
    src.set("listen", "127.0.0.1:0");
    src.set("http_listen", "127.0.0.1:0");
    src.set(
        "database_url",
        format!("{base}/loyalty_test_{id}_{{service}}"),
    );
    src.set("nats_url", loyalty_common::testing::nats_url());
    src.set("nats_stream", format!("TEST_{id}"));
    src.set(
        "auth_secret",
        "an-operator-chosen-secret-of-32-bytes-or-more",
    );
    let config = Config::from_source(&src, "127.0.0.1:0".parse().unwrap()).unwrap();
    assert!(!config.is_embedded());
    let (trigger, shutdown) = Shutdown::new();
    let running = start(&config, Selection::suite(), shutdown).await.unwrap();
    assert!(
        running.dev_credential.is_none(),
        "no development credential outside the embedded default"
    );

    let secret = loyalty_common::auth::Secret::new(
        b"an-operator-chosen-secret-of-32-bytes-or-more".to_vec(),
    );
    let token = loyalty_common::auth::Minter::new(secret)
        .mint(
            &loyalty_common::auth::Principal::System {
                program_id: "p1".into(),
                key_id: "ops".into(),
                role: loyalty_common::auth::Role::Backend,
            },
            Duration::from_secs(60),
        )
        .unwrap();
    let mut client =
        MembershipServiceClient::connect(format!("http://{}", running.grpc_addr.unwrap()))
            .await
            .unwrap();
    let mut req = tonic::Request::new(GetServiceInfoRequest {});
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let info = client
        .get_service_info(req)
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(info.storage_engine, "postgres");
    assert_eq!(info.event_transport, "nats");
    trigger.fire();
    running.wait().await.unwrap();
    loyalty_common::events::NatsBus::connect(
        &loyalty_common::testing::nats_url(),
        &format!("TEST_{id}"),
    )
    .await
    .unwrap()
    .delete_stream()
    .await
    .unwrap();
}
