//! Shared by the gateway end-to-end tests: a suite started as the launcher
//! starts it with test identity providers configured, tokens signed with
//! the test-only keys under services/gateway/tests/keys, and a minimal
//! HTTP/1.1 client over a plain TCP stream.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use loyalty::{Running, Selection, start};
use loyalty_common::auth::{ApiKeyRecord, Role};
use loyalty_common::config::{Config, Source};
use loyalty_common::server::{Shutdown, ShutdownTrigger};
pub use loyalty_common::testing::TestEngine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const KEYS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../services/gateway/tests/keys"
);
pub const SECRET: &str = "gateway-tests-secret-0123456789abcdef0123";
pub const POS_KEY: &str = "lk_pos_00112233445566778899aabbccddeeff";
pub const PROGRAM: &str = "p1";
pub const MEMBER_ISS: &str = "https://id.test";
pub const MEMBER_AUD: &str = "loyalty-app";
pub const STAFF_ISS: &str = "https://staff.test";
pub const STAFF_AUD: &str = "loyalty-console";

pub fn key(name: &str) -> String {
    format!("{KEYS}/{name}")
}

/// The embedded default under `dir` on ephemeral ports, with the test
/// identity providers, a backend key of program p1, and `extra` settings.
pub fn config(dir: &std::path::Path, extra: &[(&str, &str)]) -> Config {
    let mut src = Source::default();
    src.set("data_dir", dir.display().to_string());
    src.set("listen", "127.0.0.1:0");
    src.set("http_listen", "127.0.0.1:0");
    src.set("auth_secret", SECRET);
    src.set(
        "api_keys",
        ApiKeyRecord::for_key("pos", PROGRAM, Role::Backend, POS_KEY).to_config(),
    );
    src.set("member_jwt_issuer", MEMBER_ISS);
    src.set("member_jwt_audience", MEMBER_AUD);
    src.set("member_jwt_keys", key("member_rsa_public.pem"));
    src.set("staff_jwt_issuer", STAFF_ISS);
    src.set("staff_jwt_audience", STAFF_AUD);
    src.set("staff_jwt_jwks", key("staff_jwks.json"));
    src.set("gateway_health_interval", "200ms");
    for (k, v) in extra {
        src.set(k, *v);
    }
    Config::from_source(&src, "127.0.0.1:0".parse().unwrap()).unwrap()
}

pub struct Suite {
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
    trigger: ShutdownTrigger,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

impl Suite {
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        Self::start_selection(extra, Selection::suite()).await
    }

    /// The whole suite on SQLite files or on fresh PostgreSQL databases.
    pub async fn start_on(engine: TestEngine, extra: &[(&str, &str)]) -> Self {
        let url = match engine {
            TestEngine::Sqlite => None,
            TestEngine::Postgres => Some(postgres_databases().await),
        };
        let mut all: Vec<(&str, &str)> = extra.to_vec();
        if let Some(u) = &url {
            all.push(("database_url", u.as_str()));
        }
        Self::start_selection(&all, Selection::suite()).await
    }

    pub async fn start_selection(extra: &[(&str, &str)], selection: Selection) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), extra);
        let (trigger, shutdown) = Shutdown::new();
        let running = start(&config, selection, shutdown).await.unwrap();
        Self {
            http: running
                .http_addr
                .unwrap_or_else(|| "127.0.0.1:1".parse().unwrap()),
            grpc: running.grpc_addr,
            trigger,
            running: Some(running),
            _dir: dir,
        }
    }

    /// One service alone on its own port (a replica the gateway can lose).
    pub async fn start_service(name: &str) -> Self {
        Self::start_selection(&[], Selection::one(name).unwrap()).await
    }

    pub async fn stop(self) {
        self.stop_within(Duration::from_secs(15)).await;
    }

    /// Stops, allowing `limit` for the outbox backlog to drain.
    pub async fn stop_within(mut self, limit: Duration) {
        self.trigger.fire();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(limit, r.wait())
                .await
                .expect("stops within 15 s")
                .expect("stops cleanly");
        }
    }
}

/// The Redis of the shared rate-limit tests.
pub const REDIS_ENV: &str = "LOYALTY_TEST_REDIS_URL";

pub fn redis_url() -> String {
    std::env::var(REDIS_ENV).unwrap_or_else(|_| {
        panic!("{REDIS_ENV} is not set: this test needs Redis, e.g. redis://127.0.0.1:6379")
    })
}

/// Four fresh databases `loyalty_test_<id>_<service>`; the URL template.
pub async fn postgres_databases() -> String {
    use sqlx::Connection;
    let admin = std::env::var(loyalty_common::testing::POSTGRES_ENV)
        .expect("LOYALTY_TEST_POSTGRES_URL for the PostgreSQL variant");
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
    format!("{base}/loyalty_test_{id}_{{service}}")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn sign(alg: Algorithm, kid: Option<&str>, pem_file: &str, claims: &Value) -> String {
    let pem = std::fs::read(key(pem_file)).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

pub fn member_claims(program: &str, member: &str) -> Value {
    json!({
        "iss": MEMBER_ISS, "aud": MEMBER_AUD, "sub": member, "program_id": program,
        "iat": now(), "nbf": now() - 1, "exp": now() + 300,
    })
}

/// An RS256 member token signed with `pem_file` (the configured key by default).
pub fn member_token_with(claims: &Value, pem_file: &str) -> String {
    sign(Algorithm::RS256, None, pem_file, claims)
}

pub fn member_token(program: &str, member: &str) -> String {
    member_token_with(&member_claims(program, member), "member_rsa_private.pem")
}

pub fn staff_token(program: &str, subject: &str, roles: &[&str]) -> String {
    let claims = json!({
        "iss": STAFF_ISS, "aud": STAFF_AUD, "sub": subject, "program_id": program,
        "roles": roles, "iat": now(), "nbf": now() - 1, "exp": now() + 300,
    });
    sign(
        Algorithm::ES256,
        Some("staff-1"),
        "staff_ec_private.pem",
        &claims,
    )
}

/// A staff analyst token of p1 signed with `pem_file` under `kid`.
pub fn staff_token_signed(kid: &str, pem_file: &str) -> String {
    let claims = json!({
        "iss": STAFF_ISS, "aud": STAFF_AUD, "sub": "s2", "program_id": PROGRAM,
        "roles": ["analyst"], "iat": now(), "nbf": now() - 1, "exp": now() + 300,
    });
    sign(Algorithm::ES256, Some(kid), pem_file, &claims)
}

pub fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

pub fn api_key() -> (&'static str, String) {
    ("x-api-key", POS_KEY.to_owned())
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            std::str::from_utf8(&body[..eol])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[eol + 2 + size + 2..];
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
) -> Resp {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || method != "GET" {
        let _ = write!(req, "Content-Length: {}\r\n", body.len());
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req.push_str("Content-Type: application/json\r\n");
        }
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf))
        .await
        .expect("answer within 20 s")
        .unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let raw = &buf[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Resp {
        status,
        headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> Resp {
    http(addr, "GET", path, headers, None).await
}

pub async fn post(addr: SocketAddr, path: &str, headers: &[(&str, String)], body: &Value) -> Resp {
    http(
        addr,
        "POST",
        path,
        headers,
        Some(body.to_string().as_bytes()),
    )
    .await
}

/// Unpadded base64url (to forge tokens by hand).
pub fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A program admin of p1 (staff JWT).
pub fn admin() -> [(&'static str, String); 1] {
    [bearer(&staff_token(PROGRAM, "admin-1", &["program_admin"]))]
}

/// Creates program p1 (staff admin: tiers by spend, GREEN from 0, GOLD
/// from 500.00) and its points policy (1 point per 1.00, no pending days,
/// points expire 12 months after earning), and enrols one member with the
/// backend key. The member id.
pub async fn journey_setup(suite: &Suite) -> String {
    let h = suite.http;
    let program = serde_json::json!({"program": {
        "programId": PROGRAM, "name": "Tea House", "currency": "CNY", "timeZone": "Asia/Shanghai",
        "tiers": [
            {"code": "GREEN", "name": "Green", "threshold": "0"},
            {"code": "GOLD", "name": "Gold", "threshold": "50000"}
        ],
        "qualifyingMetric": "QUALIFYING_METRIC_SPEND",
        "qualifyingWindow": {"rollingMonths": 12},
        "evaluationPolicy": {"anniversaryMonths": 12}
    }});
    let r = post(h, "/v1/programs", &admin(), &program).await;
    assert_eq!(
        r.status,
        200,
        "create program: {}",
        String::from_utf8_lossy(&r.body)
    );
    let policy = serde_json::json!({
        "programId": PROGRAM, "timeZone": "Asia/Shanghai", "currency": "CNY",
        "basePointsPerUnit": "1", "unitMinorUnits": "100", "pendingDays": 0,
        "expiryMode": "EXPIRY_MODE_MONTHS_AFTER_EARNING", "expiryMonths": 12,
        "clawbackPolicy": "CLAWBACK_POLICY_WRITE_OFF", "roundingMode": "ROUNDING_MODE_FLOOR"
    });
    let r = http(
        h,
        "PUT",
        &format!("/v1/programs/{PROGRAM}/points-policy"),
        &admin(),
        Some(policy.to_string().as_bytes()),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "points policy: {}",
        String::from_utf8_lossy(&r.body)
    );
    let r = post(
        h,
        &format!("/v1/programs/{PROGRAM}/members"),
        &[api_key()],
        &serde_json::json!({
            "externalId": format!("app-user-{}", uuid::Uuid::new_v4().simple()),
            "profile": {"givenName": "Lin", "locale": "zh-CN"},
            "enrolmentChannel": "app"
        }),
    )
    .await;
    assert_eq!(r.status, 200, "enrol: {}", String::from_utf8_lossy(&r.body));
    let member = r.json()["member"]["memberId"]
        .as_str()
        .expect("member id")
        .to_owned();
    assert!(!member.is_empty());
    member
}
