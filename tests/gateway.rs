//! The gateway end to end: the whole suite started as the launcher starts
//! it, talked to over real HTTP (REST/JSON, gRPC-Web) and gRPC through the
//! gateway's one listener.

#[path = "gateway_support.rs"]
mod support;

use std::time::{Duration, Instant};

use loyalty::{ALL_SERVICES, Selection};
use loyalty_proto::loyalty::rewards::v1::GetServiceInfoRequest;
use loyalty_proto::loyalty::rewards::v1::rewards_service_client::RewardsServiceClient;
use prost::Message as _;
use serde_json::{Value, json};
use support::*;

const SERVICES: [&str; 4] = ["membership", "rewards", "feedback", "retention"];

loyalty_common::test_on_both_engines!(
    rest_reaches_every_service_in_canonical_json_with_request_ids
);

async fn rest_reaches_every_service_in_canonical_json_with_request_ids(engine: TestEngine) {
    let suite = Suite::start_on(engine, &[]).await;
    let expected_engine = match engine {
        TestEngine::Sqlite => "sqlite",
        TestEngine::Postgres => "postgres",
    };
    for svc in SERVICES {
        let r = get(suite.http, &format!("/v1/{svc}/info"), &[api_key()]).await;
        assert_eq!(r.status, 200, "{svc}: {}", String::from_utf8_lossy(&r.body));
        let body = r.json();
        assert_eq!(body["info"]["service"], svc);
        assert_eq!(body["info"]["storageEngine"], expected_engine);
        // int64 travels as a string in canonical JSON
        assert!(body["info"]["schemaVersion"].is_string(), "{body}");
        assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
    }
    // the caller's request id is kept and echoed
    let r = get(
        suite.http,
        "/v1/rewards/info",
        &[api_key(), ("x-request-id", "req-42".into())],
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    // unknown query parameters are refused with the field named
    let r = get(suite.http, "/v1/rewards/info?colour=red", &[api_key()]).await;
    assert_eq!(r.status, 400);
    let body = r.json();
    assert_eq!(body["code"], "INVALID_ARGUMENT");
    assert_eq!(body["fieldViolations"][0]["field"], "colour");
    assert_eq!(body["requestId"], r.header("x-request-id").unwrap());
    // wrong method on a known path, unknown path
    let r = post(suite.http, "/v1/rewards/info", &[api_key()], &json!({})).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = get(suite.http, "/v1/nothing", &[api_key()]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "NOT_FOUND");
    suite.stop().await;
}

#[tokio::test]
async fn every_authentication_failure_is_refused() {
    let suite = Suite::start(&[]).await;
    let path = "/v1/membership/info";
    let ok = |t: String| vec![bearer(&t)];

    // valid member (RS256, PEM key) and staff (ES256, JWKS) tokens pass
    let r = get(suite.http, path, &ok(member_token(PROGRAM, "m1"))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = get(
        suite.http,
        path,
        &ok(staff_token(PROGRAM, "s1", &["analyst"])),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let refused = |claims: Value| member_token_with(&claims, "member_rsa_private.pem");
    let mut expired = member_claims(PROGRAM, "m1");
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 120);
    let mut not_yet = member_claims(PROGRAM, "m1");
    not_yet["nbf"] = json!(chrono::Utc::now().timestamp() + 600);
    let mut wrong_aud = member_claims(PROGRAM, "m1");
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = member_claims(PROGRAM, "m1");
    wrong_iss["iss"] = json!("https://evil.test");
    let mut no_program = member_claims(PROGRAM, "m1");
    no_program.as_object_mut().unwrap().remove("program_id");
    let wrong_key = member_token_with(&member_claims(PROGRAM, "m1"), "other_rsa_private.pem");
    // alg none: header {"alg":"none"}, no signature
    let b64 = |v: &Value| b64url(v.to_string().as_bytes());
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&member_claims(PROGRAM, "m1"))
    );
    // HS/RS confusion: HS256 "signed" with the public key as HMAC secret
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &member_claims(PROGRAM, "m1"),
        &jsonwebtoken::EncodingKey::from_secret(
            &std::fs::read(key("member_rsa_public.pem")).unwrap(),
        ),
    )
    .unwrap();
    let cases = [
        ("expired", refused(expired), "token expired"),
        ("not yet valid", refused(not_yet), "not yet valid"),
        ("wrong audience", refused(wrong_aud), "wrong audience"),
        ("wrong issuer", refused(wrong_iss), "wrong issuer"),
        ("no program", refused(no_program), "without program"),
        ("wrong key", wrong_key, "bad signature"),
        ("alg none", alg_none, "malformed"),
        ("HS/RS confusion", confused, "bad signature"),
    ];
    for (what, token, why) in cases {
        let r = get(suite.http, path, &[bearer(&token)]).await;
        assert_eq!(r.status, 401, "{what}");
        let body = r.json();
        assert_eq!(body["code"], "UNAUTHENTICATED", "{what}");
        assert!(
            body["message"].as_str().unwrap().contains(why),
            "{what}: {body}"
        );
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
    }
    let r = get(suite.http, path, &[]).await;
    assert_eq!(r.status, 401);
    let r = get(suite.http, path, &[("x-api-key", "lk_pos_wrong".into())]).await;
    assert_eq!(r.status, 401);
    suite.stop().await;
}

#[tokio::test]
async fn staff_keys_rotate_in_the_jwks_file_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("staff.jwks.json");
    std::fs::copy(key("staff_jwks.json"), &jwks).unwrap();
    let suite = Suite::start(&[("staff_jwt_jwks", jwks.to_str().unwrap())]).await;
    let path = "/v1/membership/info";
    let old = || bearer(&staff_token(PROGRAM, "s1", &["analyst"]));
    let new = || bearer(&staff_token_signed("staff-2", "staff_ec2_private.pem"));
    let r = get(suite.http, path, &[old()]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = get(suite.http, path, &[new()]).await;
    assert_eq!(r.status, 401, "a key the file lacks");

    // the identity provider rotates: staff-2 replaces staff-1 (write, rename)
    let aside = dir.path().join("staff.jwks.json.new");
    std::fs::copy(key("staff_jwks_rotated.json"), &aside).unwrap();
    std::fs::rename(&aside, &jwks).unwrap();
    // past the minimum interval between two looks at the file
    tokio::time::sleep(loyalty_gateway::identity::JwksRefresh::default().min_interval).await;
    let r = get(suite.http, path, &[new()]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = get(suite.http, path, &[old()]).await;
    assert_eq!(r.status, 401, "the removed key");
    assert!(
        r.json()["message"].as_str().unwrap().contains("no key"),
        "{}",
        r.json()
    );
    suite.stop().await;
}

#[tokio::test]
async fn a_member_cannot_reach_another_members_home() {
    let suite = Suite::start(&[]).await;
    let m1 = [bearer(&member_token(PROGRAM, "m1"))];
    let own = get(suite.http, "/v1/programs/p1/members/m1/home", &m1).await;
    assert_eq!(own.status, 200, "{}", String::from_utf8_lossy(&own.body));
    for path in [
        "/v1/programs/p1/members/m2/home",
        "/v1/programs/p2/members/m1/home",
    ] {
        let r = get(suite.http, path, &m1).await;
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.json()["code"], "PERMISSION_DENIED");
    }
    // staff of another program neither
    let other = [bearer(&staff_token("p2", "s", &["program_admin"]))];
    let r = get(suite.http, "/v1/programs/p1/members/m1/home", &other).await;
    assert_eq!(r.status, 403);
    suite.stop().await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_per_principal() {
    let suite = Suite::start(&[("gateway_rate_limit", "1/s"), ("gateway_rate_burst", "3")]).await;
    let path = "/v1/rewards/info";
    for i in 0..3 {
        let r = get(suite.http, path, &[api_key()]).await;
        assert_eq!(r.status, 200, "call {i}");
    }
    let r = get(suite.http, path, &[api_key()]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["code"], "RESOURCE_EXHAUSTED");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // another principal has its own bucket
    let r = get(suite.http, path, &[bearer(&member_token(PROGRAM, "m9"))]).await;
    assert_eq!(r.status, 200);
    // gRPC callers share the bucket and get RESOURCE_EXHAUSTED with retry-after
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", suite.http))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut req = tonic::Request::new(GetServiceInfoRequest {});
    req.metadata_mut()
        .insert("x-api-key", POS_KEY.parse().unwrap());
    let err = RewardsServiceClient::new(channel)
        .get_service_info(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let retry: u64 = err
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    suite.stop().await;
}

/// A gateway alone (no services of its own) forwarding to `upstream`'s
/// listener, with `extra` settings; ready once its probes found the services.
async fn second_gateway(upstream: &Suite, extra: &[(&str, &str)]) -> Suite {
    let grpc = format!("http://{}", upstream.grpc.unwrap());
    let mut all: Vec<(&str, &str)> = extra.to_vec();
    for addr in [
        "membership_addr",
        "rewards_addr",
        "feedback_addr",
        "retention_addr",
    ] {
        all.push((addr, grpc.as_str()));
    }
    let gw = Suite::start_selection(&all, Selection::one("gateway").unwrap()).await;
    let until = Instant::now() + Duration::from_secs(10);
    while get(gw.http, "/readyz", &[]).await.status != 200 {
        assert!(
            Instant::now() < until,
            "the second gateway never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_to_the_replicas_own_limit() {
    // a port nothing listens on
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("redis://{closed}");
    let suite = Suite::start(&[
        ("gateway_rate_limit", "1/m"),
        ("gateway_rate_burst", "3"),
        ("gateway_rate_limit_redis", url.as_str()),
    ])
    .await;
    // requests never fail because of Redis, and the limit still holds
    for i in 0..3 {
        let r = get(suite.http, "/v1/rewards/info", &[api_key()]).await;
        assert_eq!(r.status, 200, "call {i}");
    }
    let r = get(suite.http, "/v1/rewards/info", &[api_key()]).await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    suite.stop().await;
}

/// Sends one command to Redis and reads the reply.
async fn redis(
    conn: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    args: &[&str],
) -> loyalty_gateway::shared_limit::Reply {
    use tokio::io::AsyncWriteExt;
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    conn.get_mut()
        .write_all(&loyalty_gateway::shared_limit::encode(&args))
        .await
        .unwrap();
    loyalty_gateway::shared_limit::read_reply(conn)
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "needs Redis: LOYALTY_TEST_REDIS_URL"]
async fn two_gateways_share_one_rate_limit_in_redis() {
    use loyalty_gateway::shared_limit::Reply;
    let url = redis_url();
    // this test's own keys: runs never share buckets
    let prefix = format!("loyalty-test:{}:", uuid::Uuid::new_v4().simple());
    let limits = [
        ("gateway_rate_limit", "1/m"),
        ("gateway_rate_burst", "4"),
        ("gateway_rate_limit_redis", url.as_str()),
        ("gateway_rate_limit_redis_prefix", prefix.as_str()),
    ];
    let a = Suite::start(&limits).await;
    let b = second_gateway(&a, &limits).await;
    let path = "/v1/rewards/info";
    // alone, each replica would allow 4: together they allow 4
    for i in 0..4 {
        let gw = if i % 2 == 0 { a.http } else { b.http };
        let r = get(gw, path, &[api_key()]).await;
        assert_eq!(r.status, 200, "call {i}");
    }
    for gw in [a.http, b.http] {
        let r = get(gw, path, &[api_key()]).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.json()["code"], "RESOURCE_EXHAUSTED");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // another principal has its own bucket, on both replicas
    let member = [bearer(&member_token(PROGRAM, "m9"))];
    assert_eq!(get(a.http, path, &member).await.status, 200);
    assert_eq!(get(b.http, path, &member).await.status, 200);
    // the script is atomic: 20 calls at once through both replicas, 4 pass
    let racer = [bearer(&member_token(PROGRAM, "m7"))];
    let calls = (0..20).map(|i| {
        let gw = if i % 2 == 0 { a.http } else { b.http };
        let racer = racer.clone();
        async move { get(gw, path, &racer).await.status }
    });
    let statuses = futures::future::join_all(calls).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        16,
        "{statuses:?}"
    );
    // the buckets are in Redis, under the prefix, and expire
    let target: loyalty_common::config::RedisTarget = url.parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(&target.addr).await.unwrap();
    let mut conn = tokio::io::BufReader::new(tcp);
    if let Some(pw) = &target.password {
        let user = target.username.clone().unwrap_or_else(|| "default".into());
        redis(&mut conn, &["AUTH", &user, pw]).await;
    }
    redis(&mut conn, &["SELECT", &target.db.to_string()]).await;
    let Reply::Array(Some(keys)) = redis(&mut conn, &["KEYS", &format!("{prefix}*")]).await else {
        panic!("KEYS answered no array");
    };
    let mut keys: Vec<String> = keys
        .into_iter()
        .map(|k| match k {
            Reply::Bulk(Some(k)) => String::from_utf8(k).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("{prefix}k:pos"),
            format!("{prefix}m:{PROGRAM}:m7"),
            format!("{prefix}m:{PROGRAM}:m9")
        ]
    );
    for k in &keys {
        let Reply::Int(ttl) = redis(&mut conn, &["PTTL", k]).await else {
            panic!("PTTL");
        };
        assert!(ttl > 0 && ttl <= 5 * 60_000, "{k}: {ttl}");
        redis(&mut conn, &["DEL", k]).await;
    }
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn bodies_over_the_cap_get_413() {
    let suite = Suite::start(&[("gateway_body_limit", "1k")]).await;
    let big = vec![b' '; 4096];
    let r = http(
        suite.http,
        "GET",
        "/v1/rewards/info",
        &[api_key()],
        Some(&big),
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["code"], "RESOURCE_EXHAUSTED");
    let small = vec![b' '; 512];
    let r = http(
        suite.http,
        "GET",
        "/v1/rewards/info",
        &[api_key()],
        Some(&small),
    )
    .await;
    assert_eq!(r.status, 200);
    suite.stop().await;
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let suite = Suite::start(&[("gateway_cors_origins", "https://app.test")]).await;
    let pre = |origin: &str| {
        vec![
            ("origin", origin.to_owned()),
            ("access-control-request-method", "GET".to_owned()),
            ("access-control-request-headers", "authorization".to_owned()),
        ]
    };
    let r = http(
        suite.http,
        "OPTIONS",
        "/v1/rewards/info",
        &pre("https://app.test"),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    assert!(
        r.header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    let r = http(
        suite.http,
        "OPTIONS",
        "/v1/rewards/info",
        &pre("https://evil.test"),
        None,
    )
    .await;
    assert!(r.header("access-control-allow-origin").is_none());
    let r = get(
        suite.http,
        "/v1/rewards/info",
        &[api_key(), ("origin", "https://app.test".into())],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    assert!(
        r.header("access-control-expose-headers")
            .unwrap()
            .contains("x-request-id")
    );
    suite.stop().await;
}

#[tokio::test]
async fn grpc_and_grpc_web_share_the_listener() {
    let suite = Suite::start(&[]).await;
    // gRPC pass-through (h2c) with a backend key
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", suite.http))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RewardsServiceClient::new(channel);
    let mut req = tonic::Request::new(GetServiceInfoRequest {});
    req.metadata_mut()
        .insert("x-api-key", POS_KEY.parse().unwrap());
    let info = client.get_service_info(req).await.unwrap().into_inner();
    assert_eq!(info.info.unwrap().service, "rewards");
    let err = client
        .get_service_info(GetServiceInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // a member token works through gRPC too (minted into an internal one)
    let mut req = tonic::Request::new(GetServiceInfoRequest {});
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", member_token(PROGRAM, "m1"))
            .parse()
            .unwrap(),
    );
    assert!(client.get_service_info(req).await.is_ok());

    // gRPC-Web over HTTP/1.1: one data frame in, data + trailer frames out
    let mut frame = vec![0u8, 0, 0, 0, 0];
    let msg = GetServiceInfoRequest {}.encode_to_vec();
    frame[1..5].copy_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let r = http(
        suite.http,
        "POST",
        "/loyalty.rewards.v1.RewardsService/GetServiceInfo",
        &[
            api_key(),
            ("content-type", "application/grpc-web+proto".into()),
            ("x-grpc-web", "1".into()),
        ],
        Some(&frame),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/grpc-web")
    );
    let body = &r.body;
    assert_eq!(body[0], 0, "first frame is data");
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let answer =
        loyalty_proto::loyalty::rewards::v1::GetServiceInfoResponse::decode(&body[5..5 + len])
            .unwrap();
    assert_eq!(answer.info.unwrap().service, "rewards");
    let trailers = String::from_utf8_lossy(&body[5 + len + 5..]).to_ascii_lowercase();
    assert_eq!(body[5 + len], 0x80, "then the trailer frame");
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    suite.stop().await;
}

#[tokio::test]
async fn openapi_documents_every_route_and_the_docs_page_lists_them() {
    let suite = Suite::start(&[]).await;
    let r = get(suite.http, "/openapi.json", &[]).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["components"]["securitySchemes"]["bearerAuth"].is_object());
    assert!(doc["components"]["securitySchemes"]["apiKey"].is_object());
    let docs = get(suite.http, "/docs", &[]).await;
    assert_eq!(docs.status, 200);
    let html = String::from_utf8_lossy(&docs.body).to_string();
    // every documented GET route without path variables answers, and its
    // answer has exactly the documented properties
    let schemas = &doc["components"]["schemas"];
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (verb, op) in ops.as_object().unwrap() {
            // listed as "GET /v1/...", with its own section
            let line = format!("<code>{} {path}</code>", verb.to_ascii_uppercase());
            assert!(html.contains(&line), "{line} missing from /docs");
            let id = op["operationId"].as_str().unwrap();
            assert!(html.contains(&format!("<section class=\"op\" id=\"{id}\">")));
        }
        let Some(op) = ops.get("get") else { continue };
        if path.contains('{') {
            continue;
        }
        let r = get(suite.http, path, &[api_key()]).await;
        assert_eq!(r.status, 200, "{path}");
        let schema_ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap();
        let schema = &schemas[schema_ref.rsplit('/').next().unwrap()];
        for (k, _) in r.json().as_object().unwrap() {
            assert!(
                schema["properties"].get(k).is_some(),
                "{path}: {k} undocumented"
            );
        }
        checked += 1;
    }
    assert!(checked >= 4, "{checked}");
    suite.stop().await;
}

#[tokio::test]
async fn a_stopped_service_gives_503_for_its_routes_only() {
    let retention = Suite::start_service("retention").await;
    let addr = format!("http://{}", retention.grpc.unwrap());
    let selection = Selection {
        services: ALL_SERVICES[..3].to_vec(),
        gateway: true,
    };
    let suite = Suite::start_selection(&[("retention_addr", addr.as_str())], selection).await;
    let r = get(suite.http, "/v1/retention/info", &[api_key()]).await;
    assert_eq!(r.status, 200);
    retention.stop().await;
    // the prober notices within its interval (200 ms here)
    let started = Instant::now();
    loop {
        let r = get(suite.http, "/v1/retention/info", &[api_key()]).await;
        if r.status == 503 {
            assert_eq!(r.json()["code"], "UNAVAILABLE");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for svc in ["membership", "rewards", "feedback"] {
        let r = get(suite.http, &format!("/v1/{svc}/info"), &[api_key()]).await;
        assert_eq!(r.status, 200, "{svc}");
    }
    let r = get(suite.http, "/readyz", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["services"]["retention"], "UNAVAILABLE");
    assert_eq!(r.json()["services"]["rewards"], "SERVING");
    suite.stop().await;
}

#[tokio::test]
async fn replicas_are_balanced_and_a_down_one_is_skipped() {
    let a = Suite::start_service("retention").await;
    let b = Suite::start_service("retention").await;
    let addrs = format!("http://{},http://{}", a.grpc.unwrap(), b.grpc.unwrap());
    let selection = Selection {
        services: ALL_SERVICES[..3].to_vec(),
        gateway: true,
    };
    let suite = Suite::start_selection(&[("retention_addr", addrs.as_str())], selection).await;
    let r = get(suite.http, "/readyz", &[]).await;
    assert_eq!(
        r.json()["replicas"]["retention"].as_object().unwrap().len(),
        2
    );
    b.stop().await;
    // reads keep working: retried on UNAVAILABLE, then the replica is skipped
    for i in 0..30 {
        let r = get(suite.http, "/v1/retention/info", &[api_key()]).await;
        assert_eq!(
            r.status,
            200,
            "call {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = get(suite.http, "/readyz", &[]).await;
    assert_eq!(r.json()["services"]["retention"], "SERVING");
    suite.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn the_route_deadline_reaches_the_call() {
    // a replica that accepts connections and never answers
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let addr = format!("http://{hole_addr}");
    let selection = Selection {
        services: ALL_SERVICES[..3].to_vec(),
        gateway: true,
    };
    let suite = Suite::start_selection(
        &[
            ("retention_addr", addr.as_str()),
            (
                "gateway_route_deadlines",
                "RetentionService.GetServiceInfo=300ms",
            ),
            ("gateway_health_interval", "10s"),
        ],
        selection,
    )
    .await;
    let started = Instant::now();
    let r = get(suite.http, "/v1/retention/info", &[api_key()]).await;
    let took = started.elapsed();
    // 504 once the 300 ms deadline passes (503 if the prober already gave up)
    assert!(matches!(r.status, 504 | 503), "{}", r.status);
    assert!(took < Duration::from_secs(2), "{took:?}");
    if r.status == 504 {
        assert_eq!(r.json()["code"], "DEADLINE_EXCEEDED");
        assert!(took >= Duration::from_millis(290), "{took:?}");
    }
    suite.stop().await;
}

/// Records the metadata of every call it receives and serves health (as
/// the retention service) and nothing else.
async fn recording_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<tonic::metadata::MetadataMap>>>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(
            "loyalty.retention.v1.RetentionService",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let interceptor = move |req: tonic::Request<()>| {
        record.lock().unwrap().push(req.metadata().clone());
        Ok(req)
    };
    tokio::spawn(async move {
        let _keep = reporter;
        tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(interceptor))
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (addr, seen)
}

#[tokio::test]
async fn the_verified_principal_request_id_trace_and_deadline_travel_upstream() {
    let (addr, seen) = recording_upstream().await;
    let upstream = format!("http://{addr}");
    let selection = Selection {
        services: ALL_SERVICES[..3].to_vec(),
        gateway: true,
    };
    let suite = Suite::start_selection(
        &[
            ("retention_addr", upstream.as_str()),
            (
                "gateway_route_deadlines",
                "RetentionService.GetServiceInfo=1500ms",
            ),
        ],
        selection,
    )
    .await;
    let member = member_token(PROGRAM, "m1");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get(
        suite.http,
        "/v1/retention/info",
        &[
            bearer(&member),
            ("x-request-id", "trace-me-1".into()),
            ("traceparent", tp.into()),
        ],
    )
    .await;
    // the recording upstream implements no loyalty RPC
    assert_eq!(r.status, 501, "{}", String::from_utf8_lossy(&r.body));
    let md = seen
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m.get("x-request-id").is_some_and(|v| v == "trace-me-1"))
        .cloned()
        .expect("the call reached the upstream with the request id");
    assert_eq!(md.get("traceparent").unwrap(), tp);
    let auth = md.get("authorization").unwrap().to_str().unwrap();
    let internal = auth.strip_prefix("Bearer ").unwrap();
    assert_ne!(
        internal, member,
        "the external token never travels upstream"
    );
    // the internal token carries the verified member, signed with the suite secret
    let verifier = loyalty_common::auth::Verifier::new(
        &loyalty_common::auth::Secret::new(SECRET.as_bytes().to_vec()),
        Vec::new(),
    );
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", auth.parse().unwrap());
    assert_eq!(
        verifier.verify(&headers).unwrap(),
        loyalty_common::auth::Principal::Member {
            program_id: PROGRAM.into(),
            member_id: "m1".into()
        }
    );
    // grpc-timeout: the route's deadline, counted down
    let t = md.get("grpc-timeout").unwrap().to_str().unwrap();
    let (n, unit) = t.split_at(t.len() - 1);
    let n: u64 = n.parse().unwrap();
    let ms = match unit {
        "m" => n,
        "u" => n / 1000,
        "n" => n / 1_000_000,
        "S" => n * 1000,
        other => panic!("unit {other}"),
    };
    assert!((1000..=1500).contains(&ms), "{t}");

    // gRPC pass-through: a request id is minted at the first hop
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", suite.http))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = loyalty_proto::loyalty::retention::v1::retention_service_client::RetentionServiceClient::new(channel);
    let mut req =
        tonic::Request::new(loyalty_proto::loyalty::retention::v1::GetServiceInfoRequest {});
    req.metadata_mut()
        .insert("x-api-key", POS_KEY.parse().unwrap());
    let before = seen.lock().unwrap().len();
    let err = client.get_service_info(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    let md = seen.lock().unwrap()[before..]
        .iter()
        .find(|m| m.get("x-request-id").is_some())
        .cloned()
        .expect("forwarded");
    assert!(
        md.get("x-api-key").is_none(),
        "the API key stays at the edge"
    );
    assert!(md.get("traceparent").is_some());
    assert!(md.get("grpc-timeout").is_some());
    suite.stop().await;
}

#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_access_log_names_routes_never_ids_query_values_or_tokens() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .try_init()
        .expect("the only subscriber of this test binary");
    let suite = Suite::start(&[]).await;
    let token = member_token(PROGRAM, "member-7f3e");
    let r = get(
        suite.http,
        "/v1/programs/p1/members/member-7f3e/home?note=purple-secret",
        &[bearer(&token), ("x-request-id", "log-check-1".into())],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = get(
        suite.http,
        "/v1/rewards/info?colour=green-secret",
        &[api_key(), ("x-request-id", "log-check-2".into())],
    )
    .await;
    assert_eq!(r.status, 400);
    suite.stop().await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let access: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("loyalty_gateway::access"))
        .collect();
    let home = access
        .iter()
        .find(|l| l.contains("log-check-1"))
        .expect("one access line per request");
    assert!(
        home.contains("/v1/programs/{program_id}/members/{member_id}/home"),
        "{home}"
    );
    assert!(home.contains("status=200"), "{home}");
    assert!(
        home.contains("principal=\"member\"") || home.contains("principal=member"),
        "{home}"
    );
    let info = access.iter().find(|l| l.contains("log-check-2")).unwrap();
    assert!(
        info.contains("GET /v1/rewards/info") && info.contains("status=400"),
        "{info}"
    );
    for line in &access {
        for secret in [
            "member-7f3e",
            "purple-secret",
            "green-secret",
            token.as_str(),
            POS_KEY,
        ] {
            assert!(!line.contains(secret), "{secret} leaked into {line}");
        }
    }
}
