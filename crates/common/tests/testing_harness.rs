//! The test harness other crates build on: a service started on an
//! ephemeral port, its consumers fed from the bus, its outbox readable, its
//! clock movable, its calls authenticated as a chosen principal.

use std::sync::Arc;

use loyalty_common::db::Tx;
use loyalty_common::events::{self, Consumer, EventHandler, outbox};
use loyalty_common::runtime::{ServiceDef, ServiceRuntime, no_jobs, no_prepare};
use loyalty_common::server::GrpcServer;
use loyalty_common::testing::{TestEngine, TestService, staff};
use loyalty_common::{ServiceError, test_on_both_engines};
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{CheckedIn, EventEnvelope};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Echoes every CheckedIn it consumes back into its own outbox as a
/// PointsEarned, so one test sees consuming and producing.
struct Echo(Arc<ServiceRuntime>);

#[async_trait::async_trait]
impl EventHandler for Echo {
    async fn handle(&self, tx: &mut Tx, event: &EventEnvelope) -> Result<(), ServiceError> {
        let Some(Payload::CheckedIn(c)) = &event.payload else {
            return Ok(());
        };
        let earned = loyalty_proto::events::PointsEarned {
            points: i64::from(c.streak_days),
            cause: format!("echo at {}", self.0.clock.now().timestamp()),
            ..Default::default()
        };
        let env = events::new_envelope(
            "probe",
            &event.program_id,
            &event.member_id,
            Payload::PointsEarned(earned),
        );
        outbox::append(tx, &env).await?;
        Ok(())
    }
}

fn no_grpc(_: Arc<ServiceRuntime>, _: &mut GrpcServer) {}

fn echo_consumer(rt: &Arc<ServiceRuntime>) -> Vec<Consumer> {
    vec![
        Consumer::new("probe-echo", rt.db.clone(), Arc::new(Echo(rt.clone())))
            .with_event_types(&["CheckedIn"]),
    ]
}

const PROBE: ServiceDef = ServiceDef {
    name: "probe",
    migrations: &[],
    register: no_grpc,
    consumers: echo_consumer,
    jobs: no_jobs,
    prepare: no_prepare,
};

async fn harness_runs_a_service_end_to_end(engine: TestEngine) {
    let svc = TestService::start(&[PROBE], engine).await;

    let health = HealthClient::new(svc.channel())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1, "SERVING");

    // The manual clock moves for the service's runtime too.
    let start = svc.clock().now();
    svc.clock().advance(chrono::Duration::days(40));
    assert_eq!(
        svc.rt("probe").clock.now(),
        start + chrono::Duration::days(40)
    );

    let checked_in = events::new_envelope(
        "rewards",
        "p1",
        "m1",
        Payload::CheckedIn(CheckedIn {
            local_date: "2026-11-25".into(),
            streak_days: 3,
        }),
    );
    svc.publish(&[checked_in.clone(), checked_in]).await;
    svc.settle().await;
    let out = svc.outbox("probe").await;
    assert_eq!(out.len(), 1, "a duplicate delivery has no second effect");
    let Some(Payload::PointsEarned(p)) = &out[0].payload else {
        panic!("{out:?}")
    };
    assert_eq!(p.points, 3);
    assert!(
        p.cause
            .ends_with(&(start + chrono::Duration::days(40)).timestamp().to_string())
    );
    assert_eq!(outbox::pending(&svc.rt("probe").db).await.unwrap(), 0);

    // Requests carry a verified principal: an unknown method is reached
    // (UNIMPLEMENTED), not refused as unauthenticated.
    let mut grpc = tonic::client::Grpc::new(svc.channel());
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<_, (), _>(
            svc.request((), &staff("p1")),
            "/loyalty.none.v1.Nothing/Nope".parse().unwrap(),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    svc.stop().await;
}

test_on_both_engines!(harness_runs_a_service_end_to_end);
