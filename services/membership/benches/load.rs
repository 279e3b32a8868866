//! Membership load scenarios (docs/benchmarks/membership.md):
//! member lookup (by phone) and GetTierProgress at a fixed concurrency over
//! 100k members, on SQLite and PostgreSQL, beside the tonic hello-world
//! ceiling of the same run; and the tier evaluation job over 1M due
//! members. Populations are bulk-loaded with SQL, not RPCs.
//!
//! `cargo bench -p loyalty-membership --bench load` (PostgreSQL rows need
//! `LOYALTY_TEST_POSTGRES_URL`). Settings: `MEMBERSHIP_BENCH_MEMBERS`
//! (100000), `MEMBERSHIP_BENCH_JOB_MEMBERS` (1000000, 0 skips),
//! `MEMBERSHIP_BENCH_CONCURRENCY` (16), `MEMBERSHIP_BENCH_SECS` (10),
//! `MEMBERSHIP_BENCH_ENGINES` (`sqlite,postgres`).

#[path = "support/bulk.rs"]
mod bulk;

use std::time::{Duration, Instant};

use chrono::TimeDelta;
use loyalty_bench::client::{CHANNELS, Clients};
use loyalty_bench::load::{LoadConfig, Report, run};
use loyalty_common::jobs::JobRunner;
use loyalty_common::testing::{TestEngine, TestService, staff};
use loyalty_membership::evaluation_job::TierEvaluationJob;
use loyalty_proto::loyalty::membership::v1 as pb;
use loyalty_proto::loyalty::membership::v1::membership_service_client::MembershipServiceClient;
use tonic::metadata::MetadataValue;

const PROGRAM: &str = "bench";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn program() -> pb::Program {
    let tier = |code: &str, threshold: i64, bp: i64| pb::TierDefinition {
        code: code.into(),
        name: code.to_lowercase(),
        threshold,
        privileges: vec![pb::TierPrivilege {
            benefit_code: "points_multiplier_bp".into(),
            value: bp,
            parameters: std::collections::HashMap::default(),
        }],
    };
    pb::Program {
        program_id: PROGRAM.into(),
        name: "Bench".into(),
        currency: "CNY".into(),
        time_zone: "Asia/Shanghai".into(),
        tiers: vec![
            tier("BASE", 0, 10_000),
            tier("SILVER", 100_000, 12_000),
            tier("GOLD", 500_000, 15_000),
            tier("PLATINUM", 1_000_000, 20_000),
        ],
        qualifying_metric: pb::QualifyingMetric::Spend as i32,
        qualifying_window: Some(pb::QualifyingWindow {
            kind: Some(pb::qualifying_window::Kind::RollingMonths(12)),
        }),
        evaluation_policy: Some(pb::EvaluationPolicy {
            kind: Some(pb::evaluation_policy::Kind::AnniversaryMonths(12)),
        }),
        ..Default::default()
    }
}

/// A service with `n` members bulk-loaded; `due_now` makes all of them due
/// for evaluation.
async fn populated(engine: TestEngine, n: i64, due_now: bool) -> (TestService, Duration) {
    let ts = TestService::start(&[loyalty_membership::SERVICE], engine).await;
    let mut client = MembershipServiceClient::new(ts.channel());
    client
        .create_program(ts.request(
            pb::CreateProgramRequest {
                program: Some(program()),
                ..Default::default()
            },
            &staff(PROGRAM),
        ))
        .await
        .expect("create program");
    let now = ts.clock().now();
    let due = if due_now {
        now - TimeDelta::days(1)
    } else {
        now + TimeDelta::days(200)
    };
    let started = Instant::now();
    bulk::load(
        &ts.rt("membership").db,
        PROGRAM,
        n,
        now - TimeDelta::days(400),
        due,
        now - TimeDelta::days(30),
    )
    .await
    .expect("bulk load");
    (ts, started.elapsed())
}

fn authorised<T>(msg: T, token: &MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", token.clone());
    req
}

async fn scenarios(engine: TestEngine, members: i64, cfg: &LoadConfig) -> Vec<(String, Report)> {
    let (ts, load_time) = populated(engine, members, false).await;
    eprintln!("{engine:?}: {members} members loaded in {load_time:.1?}");
    let clients = Clients::connect(&format!("http://{}", ts.addr()), CHANNELS)
        .await
        .expect("connect");
    let token: MetadataValue<_> = format!("Bearer {}", ts.token(&staff(PROGRAM)))
        .parse()
        .expect("token");
    // spread requests over the population
    let pick = move |seq: u64| (seq.wrapping_mul(7_919) % members.unsigned_abs()) as i64 + 1;
    let mut out = Vec::new();

    let (c, t) = (clients.clone(), token.clone());
    let lookup = run(cfg, move |seq| {
        let mut client = MembershipServiceClient::new(c.pick(seq));
        let phone = format!("+86139{:08}", pick(seq));
        let req = authorised(
            pb::LookupMemberRequest {
                program_id: PROGRAM.into(),
                key: Some(pb::lookup_member_request::Key::Phone(phone)),
            },
            &t,
        );
        async move { client.lookup_member(req).await.map(drop) }
    })
    .await;
    out.push((format!("{engine:?} LookupMember (phone)"), lookup));

    let (c, t) = (clients.clone(), token.clone());
    let get = run(cfg, move |seq| {
        let mut client = MembershipServiceClient::new(c.pick(seq));
        let req = authorised(
            pb::GetMemberRequest {
                program_id: PROGRAM.into(),
                member_id: bulk::member_id(pick(seq)),
            },
            &t,
        );
        async move { client.get_member(req).await.map(drop) }
    })
    .await;
    out.push((format!("{engine:?} GetMember (id)"), get));

    let (c, t) = (clients.clone(), token.clone());
    let progress = run(cfg, move |seq| {
        let mut client = MembershipServiceClient::new(c.pick(seq));
        let req = authorised(
            pb::GetTierProgressRequest {
                program_id: PROGRAM.into(),
                member_id: bulk::member_id(pick(seq)),
            },
            &t,
        );
        async move { client.get_tier_progress(req).await.map(drop) }
    })
    .await;
    out.push((format!("{engine:?} GetTierProgress"), progress));
    ts.stop().await;
    out
}

async fn evaluation(engine: TestEngine, members: i64) {
    let (ts, load_time) = populated(engine, members, true).await;
    eprintln!("{engine:?}: {members} due members loaded in {load_time:.1?}");
    let rt = ts.rt("membership").clone();
    let job = TierEvaluationJob::new(rt.clone());
    let started = Instant::now();
    let report = JobRunner::new(rt.db.clone())
        .with_lease(Duration::from_secs(300))
        .trigger(&job)
        .await
        .expect("job")
        .expect("ran");
    let took = started.elapsed();
    let changes: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM tier_history")
        .fetch_one(rt.db.pool())
        .await
        .expect("count");
    println!(
        "| {engine:?} | {members} | {} | {} | {changes} | {:.1} | {:.0} | {} |",
        report.processed,
        report.chunks,
        took.as_secs_f64(),
        report.processed as f64 / took.as_secs_f64(),
        loyalty_bench::load_average()
    );
    ts.stop().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let members = i64::try_from(env_or("MEMBERSHIP_BENCH_MEMBERS", 100_000)).unwrap_or(100_000);
        let job_members = i64::try_from(env_or("MEMBERSHIP_BENCH_JOB_MEMBERS", 1_000_000)).unwrap_or(0);
        let cfg = LoadConfig {
            concurrency: usize::try_from(env_or("MEMBERSHIP_BENCH_CONCURRENCY", 16)).unwrap_or(16),
            duration: Duration::from_secs(env_or("MEMBERSHIP_BENCH_SECS", 10)),
            warmup: Duration::from_secs(2),
        };
        let engines: Vec<TestEngine> = std::env::var("MEMBERSHIP_BENCH_ENGINES")
            .unwrap_or_else(|_| "sqlite,postgres".into())
            .split(',')
            .filter_map(|e| match e.trim() {
                "sqlite" => Some(TestEngine::Sqlite),
                "postgres" => Some(TestEngine::Postgres),
                _ => None,
            })
            .collect();
        println!("load average before: {}", loyalty_bench::load_average());
        let hello = loyalty_bench::hello::ceiling(&cfg).await.expect("hello-world ceiling");
        let mut rows = vec![("hello-world ceiling".to_owned(), hello)];
        for engine in &engines {
            rows.extend(scenarios(*engine, members, &cfg).await);
        }
        println!("\n{} members, {} measured s after {} s warm-up\n", members, cfg.duration.as_secs(), cfg.warmup.as_secs());
        println!("{}", Report::markdown_header());
        for (label, r) in &rows {
            println!("{}", r.markdown_row(label));
            if let Some(e) = &r.first_error {
                println!("  first error: {e}");
            }
        }
        println!("load average after load runs: {}", loyalty_bench::load_average());
        if job_members > 0 {
            println!("\n| engine | members | evaluated | chunks | tier changes | seconds | members/s | load avg |");
            println!("|--------|--------:|----------:|-------:|-------------:|--------:|----------:|----------|");
            for engine in &engines {
                evaluation(*engine, job_members).await;
            }
        }
    });
}
