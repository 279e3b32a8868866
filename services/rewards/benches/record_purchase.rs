//! RecordPurchase durable throughput and latency over real gRPC, on SQLite
//! and PostgreSQL, beside the pgbench ceiling of the same SQL writes
//! (ledger insert + balance update + outbox insert, one commit each)
//! measured in the same run; then the expiry job's time on a bulk of lots.
//!
//! `cargo bench -p loyalty-rewards --bench record_purchase` with
//! `LOYALTY_TEST_POSTGRES_URL` set for the PostgreSQL figures. Knobs:
//! `BENCH_SECONDS` (10; 0 skips RecordPurchase), `BENCH_CONCURRENCY` (64), `BENCH_ENGINES`
//! (`sqlite,postgres`), `BENCH_EXPIRY_LOTS` (10000000; 0 skips),
//! `BENCH_EXPIRY_MEMBERS` (100000). `LOYALTY_REWARDS_PURCHASE_WRITERS` sets the
//! writers (8). `LOYALTY_REWARDS_GROUP_COMMIT=off`
//! measures one transaction per call instead of group commits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use loyalty_bench::load::{self, LoadConfig, Report};
use loyalty_bench::{load_average, pgbench};
use loyalty_common::testing::{TestEngine, TestService, backend, staff};
use loyalty_proto::common::Money;
use loyalty_proto::loyalty::rewards::v1 as pb;
use loyalty_proto::loyalty::rewards::v1::rewards_service_client::RewardsServiceClient;

const PROGRAM: &str = "bench";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn money(minor: i64) -> Money {
    Money {
        minor_units: minor,
        currency: "CNY".into(),
    }
}

async fn record_purchases(engine: TestEngine, cfg: &LoadConfig) -> Report {
    let t = TestService::start(&[loyalty_rewards::SERVICE], engine).await;
    let admin = t.token(&staff(PROGRAM));
    let pos = format!("Bearer {}", t.token(&backend(PROGRAM)));
    let mut client = RewardsServiceClient::new(t.channel());
    let mut req = tonic::Request::new(pb::SetProgramPolicyRequest {
        policy: Some(pb::ProgramPolicy {
            program_id: PROGRAM.into(),
            time_zone: "Asia/Shanghai".into(),
            currency: "CNY".into(),
            base_points_per_unit: 1,
            unit_minor_units: 100,
            pending_days: 14,
            expiry_mode: pb::ExpiryMode::EndOfYear as i32,
            expiry_months: 12,
            clawback_policy: pb::ClawbackPolicy::WriteOff as i32,
            rounding_mode: pb::RoundingMode::Floor as i32,
            version: 0,
        }),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {admin}").parse().expect("token"),
    );
    client.set_program_policy(req).await.expect("policy");
    let clients = loyalty_bench::client::Clients::connect(
        &format!("http://{}", t.addr()),
        loyalty_bench::client::CHANNELS,
    )
    .await
    .expect("connect");
    let run = uuid::Uuid::now_v7().simple().to_string();
    let pos = Arc::new(pos);
    let report = load::run(cfg, move |i| {
        let mut c = RewardsServiceClient::new(clients.pick(i));
        let pos = pos.clone();
        let run = run.clone();
        async move {
            let mut req = tonic::Request::new(pb::RecordPurchaseRequest {
                program_id: PROGRAM.into(),
                member_id: format!("m{}", i % 10_000),
                purchase: Some(pb::Purchase {
                    order_id: format!("{run}-{i}"),
                    amount: Some(money(12_800)),
                    lines: vec![
                        pb::PurchaseLine {
                            line_id: "1".into(),
                            sku: "s1".into(),
                            category: "coffee".into(),
                            quantity: 1,
                            amount: Some(money(3_800)),
                        },
                        pb::PurchaseLine {
                            line_id: "2".into(),
                            sku: "s2".into(),
                            category: "food".into(),
                            quantity: 1,
                            amount: Some(money(9_000)),
                        },
                    ],
                    channel: "store".into(),
                    store_id: "s-1".into(),
                    purchased_at: None,
                }),
            });
            req.metadata_mut()
                .insert("authorization", pos.parse().expect("token"));
            c.record_purchase(req).await.map(|_| ())
        }
    })
    .await;
    t.stop().await;
    report
}

/// Bulk-generates `lots` available lots of `members` members, all expiring
/// at one instant in the past, with balances that hold them.
async fn seed_lots(db: &loyalty_common::db::Db, engine: TestEngine, lots: u64, members: u64) {
    let expired_at = chrono::Utc::now().timestamp_micros() - 1_000_000;
    let (lots_sql, balances_sql) = match engine {
        TestEngine::Postgres => (
            format!(
                "INSERT INTO lots (lot_id, program_id, member_id, entry_id, points, remaining, released, pending_until, expires_at, created_at) \
                 SELECT 'L' || g, '{PROGRAM}', 'm' || (g % {members}), 'seed', 10, 10, 1, NULL, {expired_at}, 0 \
                 FROM generate_series(1, {lots}) g"
            ),
            format!(
                "INSERT INTO balances (program_id, member_id, available, pending, lifetime_earned) \
                 SELECT '{PROGRAM}', 'm' || g, 10 * ({lots} / {members}), 0, 0 FROM generate_series(0, {members} - 1) g"
            ),
        ),
        TestEngine::Sqlite => (
            format!(
                "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < {lots}) \
                 INSERT INTO lots (lot_id, program_id, member_id, entry_id, points, remaining, released, pending_until, expires_at, created_at) \
                 SELECT 'L' || x, '{PROGRAM}', 'm' || (x % {members}), 'seed', 10, 10, 1, NULL, {expired_at}, 0 FROM g"
            ),
            format!(
                "WITH RECURSIVE g(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM g WHERE x < {members} - 1) \
                 INSERT INTO balances (program_id, member_id, available, pending, lifetime_earned) \
                 SELECT '{PROGRAM}', 'm' || x, 10 * ({lots} / {members}), 0, 0 FROM g"
            ),
        ),
    };
    let mut tx = db.begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(lots_sql))
        .execute(&mut *tx)
        .await
        .expect("seed lots");
    sqlx::query(sqlx::AssertSqlSafe(balances_sql))
        .execute(&mut *tx)
        .await
        .expect("seed balances");
    tx.commit().await.expect("commit");
    if engine == TestEngine::Postgres {
        sqlx::query("VACUUM ANALYZE lots")
            .execute(db.pool())
            .await
            .expect("analyze");
    }
}

async fn expiry(engine: TestEngine, lots: u64, members: u64) {
    let t = TestService::start(&[loyalty_rewards::SERVICE], engine).await;
    let rt = t.rt("rewards").clone();
    let seeded = Instant::now();
    seed_lots(&rt.db, engine, lots, members).await;
    println!(
        "seeded {lots} lots of {members} members in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );
    let load_before = load_average();
    let started = Instant::now();
    let report = loyalty_rewards::bench_support::run_points_expiry(&rt)
        .await
        .expect("expiry job");
    let took = started.elapsed();
    let report = report.expect("the job ran");
    println!(
        "| expiry {engine:?} | {lots} lots / {members} members | {} lots expired | {} chunks | {:.1} s | {:.0} lots/s | load {load_before} → {} |",
        report.processed,
        report.chunks,
        took.as_secs_f64(),
        report.processed as f64 / took.as_secs_f64(),
        load_average()
    );
    let entries: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM ledger_entries")
        .fetch_one(rt.db.pool())
        .await
        .expect("count");
    let left: i64 =
        sqlx::query_scalar("SELECT CAST(COALESCE(SUM(available), 0) AS BIGINT) FROM balances")
            .fetch_one(rt.db.pool())
            .await
            .expect("sum");
    println!("  expire entries written: {entries}; points left in balances: {left}");
    t.stop().await;
}

#[tokio::main]
async fn main() {
    let seconds = env_num("BENCH_SECONDS", 10);
    let concurrency = usize::try_from(env_num("BENCH_CONCURRENCY", 64)).unwrap_or(64);
    let engines = std::env::var("BENCH_ENGINES").unwrap_or_else(|_| "sqlite,postgres".into());
    let pg_url = std::env::var(loyalty_common::testing::POSTGRES_ENV).ok();
    let mode = if std::env::var(loyalty_rewards::GROUP_COMMIT_ENV).as_deref() == Ok("off") {
        "one transaction per call"
    } else {
        "group commit"
    };
    let cfg = LoadConfig {
        concurrency,
        duration: Duration::from_secs(seconds),
        warmup: Duration::from_secs(2),
    };
    println!(
        "RecordPurchase ({mode}), {concurrency} concurrent callers, {seconds} s; load before: {}",
        load_average()
    );
    println!("{}", Report::markdown_header());
    for engine in engines.split(',').filter(|_| seconds > 0) {
        let engine = match engine.trim() {
            "sqlite" => TestEngine::Sqlite,
            "postgres" if pg_url.is_some() => TestEngine::Postgres,
            _ => continue,
        };
        let r = record_purchases(engine, &cfg).await;
        println!(
            "{}",
            r.markdown_row(&format!("RecordPurchase {engine:?} ({mode})"))
        );
        if let Some(e) = &r.first_error {
            println!("  first error: {e}");
        }
    }
    if let Some(url) = pg_url.as_ref().filter(|_| seconds > 0) {
        match pgbench::earn_ceiling(url, concurrency.min(64), seconds) {
            Ok(p) => println!(
                "{}",
                p.report
                    .markdown_row("pgbench earn ceiling (same SQL writes, 1 commit each)")
            ),
            Err(e) => println!("pgbench ceiling failed: {e}"),
        }
    }
    println!("load after: {}", load_average());
    let lots = env_num("BENCH_EXPIRY_LOTS", 10_000_000);
    let members = env_num("BENCH_EXPIRY_MEMBERS", 100_000).max(1);
    if lots > 0 {
        for engine in engines.split(',') {
            let engine = match engine.trim() {
                "sqlite" => TestEngine::Sqlite,
                "postgres" if pg_url.is_some() => TestEngine::Postgres,
                _ => continue,
            };
            expiry(engine, lots, members).await;
        }
    }
}
