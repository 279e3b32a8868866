//! RedeemReward durable throughput and latency over real gRPC, on SQLite
//! and PostgreSQL: each call reserves stock (a conditional update of the
//! item row), checks the member's limit, debits points through the ledger
//! (FIFO over lots, hash-chained entry) and writes the order and its
//! outbox events, in one transaction.
//!
//! `cargo bench -p loyalty-rewards --bench redeem_reward` with
//! `LOYALTY_TEST_POSTGRES_URL` set for the PostgreSQL figures. Knobs:
//! `BENCH_SECONDS` (10), `BENCH_CONCURRENCY` (32), `BENCH_ENGINES`
//! (`sqlite,postgres`), `BENCH_MEMBERS` (200). With PostgreSQL, the pgbench
//! ceiling of the points core's earn writes is measured in the same run.

use std::sync::Arc;
use std::time::Duration;

use loyalty_bench::load::{self, LoadConfig, Report};
use loyalty_bench::{load_average, pgbench};
use loyalty_common::testing::{TestEngine, TestService, backend, member, staff};
use loyalty_proto::loyalty::rewards::v1 as pb;
use loyalty_proto::loyalty::rewards::v1::catalog_service_client::CatalogServiceClient;
use loyalty_proto::loyalty::rewards::v1::partner_service_client::PartnerServiceClient;

const PROGRAM: &str = "bench";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts the service, creates an item of unlimited stock and gives each
/// member enough points (through a 1:1 partner exchange in).
async fn setup(engine: TestEngine, members: u64) -> (TestService, String) {
    let t = TestService::start(&[loyalty_rewards::SERVICE], engine).await;
    let mut partners = PartnerServiceClient::new(t.channel());
    partners
        .create_partner(t.request(
            pb::CreatePartnerRequest {
                program_id: PROGRAM.into(),
                partner: Some(pb::Partner {
                    code: "seed".into(),
                    name: "Seed".into(),
                    unit_name: "points".into(),
                    rate_in: Some(pb::ExchangeRate {
                        from_units: 1,
                        to_units: 1,
                    }),
                    limit_period: pb::LimitPeriod::Day.into(),
                    ..pb::Partner::default()
                }),
            },
            &staff(PROGRAM),
        ))
        .await
        .expect("partner");
    for m in 0..members {
        partners
            .exchange_in(t.request(
                pb::ExchangeInRequest {
                    program_id: PROGRAM.into(),
                    member_id: format!("m{m}"),
                    partner_code: "seed".into(),
                    partner_units: 100_000_000,
                    partner_transaction_id: format!("seed-{m}"),
                },
                &backend(PROGRAM),
            ))
            .await
            .expect("seed points");
    }
    let item = CatalogServiceClient::new(t.channel())
        .create_catalog_item(t.request(
            pb::CreateCatalogItemRequest {
                program_id: PROGRAM.into(),
                item: Some(pb::CatalogItem {
                    kind: pb::CatalogItemKind::Goods.into(),
                    name: "Sticker".into(),
                    points_cost: 10,
                    unlimited_stock: true,
                    active: true,
                    ..pb::CatalogItem::default()
                }),
                idempotency_key: "bench-item".into(),
            },
            &staff(PROGRAM),
        ))
        .await
        .expect("item")
        .into_inner()
        .item
        .expect("item")
        .item_id;
    (t, item)
}

async fn redeem(engine: TestEngine, members: u64, cfg: &LoadConfig) -> Report {
    let (t, item) = setup(engine, members).await;
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..members)
            .map(|m| format!("Bearer {}", t.token(&member(PROGRAM, &format!("m{m}")))))
            .collect(),
    );
    let clients = loyalty_bench::client::Clients::connect(
        &format!("http://{}", t.addr()),
        loyalty_bench::client::CHANNELS,
    )
    .await
    .expect("connect");
    let run = uuid::Uuid::now_v7().simple().to_string();
    let report = load::run(cfg, move |i| {
        let mut c = CatalogServiceClient::new(clients.pick(i));
        let m = i % members;
        let token = tokens[usize::try_from(m).unwrap_or(0)].clone();
        let item = item.clone();
        let run = run.clone();
        async move {
            let mut req = tonic::Request::new(pb::RedeemRewardRequest {
                program_id: PROGRAM.into(),
                member_id: format!("m{m}"),
                item_id: item,
                quantity: 1,
                idempotency_key: format!("{run}-{i}"),
            });
            req.metadata_mut()
                .insert("authorization", token.parse().expect("token"));
            c.redeem_reward(req).await.map(|_| ())
        }
    })
    .await;
    t.stop().await;
    report
}

#[tokio::main]
async fn main() {
    let seconds = env_num("BENCH_SECONDS", 10);
    let concurrency = usize::try_from(env_num("BENCH_CONCURRENCY", 32)).unwrap_or(32);
    let members = env_num("BENCH_MEMBERS", 200).max(1);
    let engines = std::env::var("BENCH_ENGINES").unwrap_or_else(|_| "sqlite,postgres".into());
    let pg_url = std::env::var(loyalty_common::testing::POSTGRES_ENV).ok();
    let pg = pg_url.is_some();
    let cfg = LoadConfig {
        concurrency,
        duration: Duration::from_secs(seconds),
        warmup: Duration::from_secs(2),
    };
    println!(
        "RedeemReward, {concurrency} concurrent callers over {members} members, {seconds} s; load before: {}",
        load_average()
    );
    println!("{}", Report::markdown_header());
    for engine in engines.split(',') {
        let engine = match engine.trim() {
            "sqlite" => TestEngine::Sqlite,
            "postgres" if pg => TestEngine::Postgres,
            _ => continue,
        };
        let r = redeem(engine, members, &cfg).await;
        println!("{}", r.markdown_row(&format!("RedeemReward {engine:?}")));
        if let Some(e) = &r.first_error {
            println!("  first error: {e}");
        }
    }
    // the raw ceiling of one ledger-like write per commit, same run
    if let Some(url) = &pg_url {
        match pgbench::earn_ceiling(url, concurrency.min(64), seconds) {
            Ok(p) => println!(
                "{}",
                p.report.markdown_row(
                    "pgbench earn ceiling (ledger insert + balance update + outbox, 1 commit each)"
                )
            ),
            Err(e) => println!("pgbench ceiling failed: {e}"),
        }
    }
    println!("load after: {}", load_average());
}
