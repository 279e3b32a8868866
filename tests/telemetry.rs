//! The `loyalty` binary as an operator runs it: with
//! OTEL_EXPORTER_OTLP_ENDPOINT set it exports spans and metrics over OTLP,
//! a call's span joins the W3C trace the caller sent in its metadata, and
//! SIGTERM stops it cleanly (flushing the exporters).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// trace id, parent span id, name
type SpanSeen = (Vec<u8>, Vec<u8>, String);

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<SpanSeen>>>,
    metrics: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push((s.trace_id, s.parent_span_id, s.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut names = self.metrics.lock().unwrap();
        for rm in request.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                names.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_carries_the_callers_trace_and_sigterm_stops_cleanly() {
    use loyalty_proto::loyalty::membership::v1::GetServiceInfoRequest;
    use loyalty_proto::loyalty::membership::v1::membership_service_client::MembershipServiceClient;

    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loyalty"))
        .env("LOYALTY_DATA_DIR", dir.path())
        .env("LOYALTY_LISTEN", "127.0.0.1:0")
        .env("LOYALTY_HTTP_LISTEN", "127.0.0.1:0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp_addr}"))
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .take(6)
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(banner[0].contains("ready in"), "{banner:?}");
    let grpc = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("gRPC"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let token = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("authorization: Bearer "))
        .unwrap()
        .to_owned();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut client = MembershipServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut req = tonic::Request::new(GetServiceInfoRequest {});
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    client.get_service_info(req).await.unwrap();
    drop(client);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "SIGTERM ends the suite cleanly: {exit:?}");

    let spans = collector.spans.lock().unwrap().clone();
    let ours: Vec<_> = spans
        .iter()
        .filter(|(t, _, _)| hex(t) == trace_id)
        .collect();
    assert!(
        !ours.is_empty(),
        "no span joined the caller's trace; got {spans:?}"
    );
    assert!(
        ours.iter()
            .any(|(_, parent, _)| hex(parent) == "00f067aa0ba902b7"),
        "the call's span is a child of the caller's span: {ours:?}"
    );
    let metrics = collector.metrics.lock().unwrap().clone();
    assert!(
        metrics.iter().any(|m| m == "rpc.server.duration"),
        "call duration metric exported: {metrics:?}"
    );
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
