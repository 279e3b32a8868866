//! Gateway benchmark (docs/benchmarks/gateway.md), run by hand in release:
//! `cargo test --release -p loyalty --test gateway_bench -- --ignored --nocapture`
//! (GATEWAY_BENCH_SECONDS, GATEWAY_BENCH_CONCURRENCY to change the load).
//!
//! One process, one run: the bare tonic hello-world ceiling of the load
//! tool, then a GetBalance read and a RecordPurchase write, each straight
//! to the services over gRPC, through the gateway as gRPC pass-through, and
//! through the gateway as REST/JSON over HTTP/1.1 keep-alive connections.
//! Nothing is asserted about time; calls must succeed.

#[path = "gateway_support.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use loyalty_bench::load::{LoadConfig, Report, run};
use loyalty_proto::loyalty::rewards::v1 as rw;
use serde_json::json;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tonic::transport::Channel;

/// One HTTP/1.1 keep-alive connection.
struct H1(BufReader<tokio::net::TcpStream>);

impl H1 {
    async fn connect(addr: std::net::SocketAddr) -> std::io::Result<Self> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Self(BufReader::new(s)))
    }

    /// Sends one request and reads the answer; the status code.
    async fn call(&mut self, head: &str, body: &[u8]) -> std::io::Result<u16> {
        let s = self.0.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut line = String::new();
        self.0.read_line(&mut line).await?;
        let status: u16 = line.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            self.0.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut buf = vec![0; len];
        self.0.read_exact(&mut buf).await?;
        Ok(status)
    }
}

/// A pool of keep-alive connections, one per task in flight.
#[derive(Clone)]
struct Pool {
    addr: std::net::SocketAddr,
    idle: Arc<Mutex<Vec<H1>>>,
}

impl Pool {
    async fn call(&self, head: String, body: Vec<u8>) -> Result<(), String> {
        let conn = self.idle.lock().unwrap().pop();
        let mut conn = match conn {
            Some(c) => c,
            None => H1::connect(self.addr).await.map_err(|e| e.to_string())?,
        };
        let status = conn.call(&head, &body).await.map_err(|e| e.to_string())?;
        self.idle.lock().unwrap().push(conn);
        if status == 200 {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn with_key<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("x-api-key", POS_KEY.parse().unwrap());
    r
}

/// Members the purchases are spread over.
const BUYERS: u64 = 256;

fn buyer(i: u64) -> String {
    format!("bench-buyer-{}", i % BUYERS)
}

fn purchase(member: &str, order: &str) -> rw::RecordPurchaseRequest {
    rw::RecordPurchaseRequest {
        program_id: PROGRAM.into(),
        member_id: member.into(),
        purchase: Some(rw::Purchase {
            order_id: order.into(),
            amount: Some(loyalty_proto::common::Money {
                minor_units: 12_800,
                currency: "CNY".into(),
            }),
            channel: "store".into(),
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand in release (see the file's header)"]
async fn gateway_cost_against_direct_grpc_and_the_hello_world_ceiling() {
    let cfg = LoadConfig {
        concurrency: env("GATEWAY_BENCH_CONCURRENCY", 16) as usize,
        duration: Duration::from_secs(env("GATEWAY_BENCH_SECONDS", 10)),
        warmup: Duration::from_secs(2),
    };
    let suite = Suite::start(&[("gateway_rate_limit", "0"), ("log", "warn")]).await;
    let member = journey_setup(&suite).await;
    let direct = Channel::from_shared(format!("http://{}", suite.grpc.unwrap()))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let via_gw = Channel::from_shared(format!("http://{}", suite.http))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let pool = Pool {
        addr: suite.http,
        idle: Arc::new(Mutex::new(Vec::new())),
    };
    let mut rows: Vec<(String, Report)> = Vec::new();
    println!("load before: {}", loyalty_bench::load_average());
    rows.push((
        "hello-world (bare tonic, load tool)".into(),
        loyalty_bench::hello::ceiling(&cfg).await.unwrap(),
    ));

    for (name, ch) in [
        ("gRPC direct", direct.clone()),
        ("gRPC via gateway", via_gw.clone()),
    ] {
        let m = member.clone();
        let report = run(&cfg, move |_| {
            let mut c = rw::rewards_service_client::RewardsServiceClient::new(ch.clone());
            let req = with_key(rw::GetBalanceRequest {
                program_id: PROGRAM.into(),
                member_id: m.clone(),
            });
            async move { c.get_balance(req).await.map(|_| ()) }
        })
        .await;
        rows.push((format!("GetBalance, {name}"), report));
    }
    let (p, m) = (pool.clone(), member.clone());
    let report = run(&cfg, move |_| {
        let head = format!(
            "GET /v1/programs/{PROGRAM}/members/{m}/balance HTTP/1.1\r\nHost: bench\r\nx-api-key: {POS_KEY}\r\n\r\n"
        );
        let p = p.clone();
        async move { p.call(head, Vec::new()).await }
    })
    .await;
    rows.push(("GetBalance, REST via gateway".into(), report));

    // purchases spread over BUYERS members, as a shop's are: one member's
    // writes are serial by design (no double spending), and one member
    // buying thousands of times would measure that member's queue
    for (name, ch) in [("gRPC direct", direct), ("gRPC via gateway", via_gw)] {
        let tag = name.replace(' ', "-");
        let report = run(&cfg, move |i| {
            let mut c = rw::rewards_service_client::RewardsServiceClient::new(ch.clone());
            let req = with_key(purchase(&buyer(i), &format!("bench-{tag}-{i}")));
            async move { c.record_purchase(req).await.map(|_| ()) }
        })
        .await;
        rows.push((format!("RecordPurchase, {name}"), report));
    }
    let p = pool.clone();
    let report = run(&cfg, move |i| {
        let body = json!({
            "memberId": buyer(i),
            "purchase": {"orderId": format!("bench-rest-{i}"), "amount": {"minorUnits": "12800", "currency": "CNY"}, "channel": "store"}
        })
        .to_string()
        .into_bytes();
        let head = format!(
            "POST /v1/programs/{PROGRAM}/purchases HTTP/1.1\r\nHost: bench\r\nx-api-key: {POS_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let p = p.clone();
        async move { p.call(head, body).await }
    })
    .await;
    rows.push(("RecordPurchase, REST via gateway".into(), report));
    println!("load after: {}", loyalty_bench::load_average());

    println!("\n{}", Report::markdown_header());
    for (label, r) in &rows {
        println!("{}", r.markdown_row(label));
    }
    for (label, r) in &rows {
        assert_eq!(r.errors, 0, "{label}: {:?}", r.first_error);
    }
    // the outbox of thousands of purchases drains before the suite stops
    suite.stop_within(Duration::from_secs(300)).await;
}
