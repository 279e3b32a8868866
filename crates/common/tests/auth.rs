//! Credentials: what is accepted, every way a token is refused, API keys,
//! and the one authorisation helper every handler uses.

use std::time::Duration;

use http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use loyalty_common::ServiceError;
use loyalty_common::auth::{ApiKeyRecord, Minter, Principal, Role, Secret, Verifier};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn verifier() -> Verifier {
    let key = ApiKeyRecord::for_key("pos1", "p1", Role::Backend, "lk_pos1_s3cr3tvalue");
    Verifier::new(&Secret::new(SECRET.to_vec()), vec![key])
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h
}

fn member() -> Principal {
    Principal::Member {
        program_id: "p1".into(),
        member_id: "m1".into(),
    }
}

/// Signs arbitrary claims with the suite secret, or another key/algorithm.
fn forge(claims: &serde_json::Value, alg: Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn claims(overrides: &[(&str, serde_json::Value)]) -> serde_json::Value {
    let now = jsonwebtoken::get_current_timestamp();
    let mut c = serde_json::json!({
        "iss": "loyalty", "aud": "loyalty-services", "sub": "m1", "kind": "member",
        "program_id": "p1", "member_id": "m1", "exp": now + 60, "nbf": now - 1, "iat": now, "jti": "j1"
    });
    for (k, v) in overrides {
        c[*k] = v.clone();
    }
    c
}

fn refused(headers: &HeaderMap) -> String {
    match verifier().verify(headers) {
        Err(ServiceError::Unauthenticated(msg)) => msg,
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
}

#[test]
fn minted_tokens_of_every_kind_are_accepted() {
    let minter = Minter::new(Secret::new(SECRET.to_vec()));
    let staff = Principal::Staff {
        program_id: "p1".into(),
        subject: "alice".into(),
        roles: vec![Role::SupportAgent, Role::Analyst],
    };
    let system = Principal::System {
        program_id: "p1".into(),
        key_id: "crm".into(),
        role: Role::Backend,
    };
    for p in [member(), staff, system] {
        let token = minter.mint(&p, Duration::from_mins(5)).unwrap();
        assert_eq!(verifier().verify(&bearer(&token)).unwrap(), p);
    }
}

#[test]
fn every_bad_token_is_refused_with_its_reason() {
    let now = jsonwebtoken::get_current_timestamp();
    let cases = [
        (
            forge(
                &claims(&[("exp", (now - 120).into())]),
                Algorithm::HS256,
                SECRET,
            ),
            "expired",
        ),
        (
            forge(
                &claims(&[("nbf", (now + 600).into())]),
                Algorithm::HS256,
                SECRET,
            ),
            "not yet valid",
        ),
        (
            forge(
                &claims(&[("aud", "someone-else".into())]),
                Algorithm::HS256,
                SECRET,
            ),
            "audience",
        ),
        (
            forge(&claims(&[("iss", "evil".into())]), Algorithm::HS256, SECRET),
            "issuer",
        ),
        (
            forge(
                &claims(&[]),
                Algorithm::HS256,
                b"another-secret-another-secret-xx",
            ),
            "signature",
        ),
        (forge(&claims(&[]), Algorithm::HS384, SECRET), "algorithm"),
        ("not.a.token".to_owned(), "malformed"),
    ];
    for (token, why) in cases {
        let msg = refused(&bearer(&token));
        assert!(msg.contains(why), "{why}: {msg}");
    }
}

#[test]
fn alg_none_and_rs256_headers_are_refused() {
    let body = base64_url(&claims(&[]).to_string());
    let none = format!("{}.{body}.", base64_url(r#"{"alg":"none","typ":"JWT"}"#));
    assert!(refused(&bearer(&none)).contains("invalid credential"));
    // an RS256 header over an HMAC signature: key confusion must not work
    let hs = forge(&claims(&[]), Algorithm::HS256, SECRET);
    let sig = hs.rsplit('.').next().unwrap();
    let confused = format!(
        "{}.{body}.{sig}",
        base64_url(r#"{"alg":"RS256","typ":"JWT"}"#)
    );
    assert!(refused(&bearer(&confused)).contains("invalid credential"));
}

fn base64_url(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, x)| acc | (u32::from(*x) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn missing_or_malformed_credentials_are_refused() {
    assert!(refused(&HeaderMap::new()).contains("missing credential"));
    let mut basic = HeaderMap::new();
    basic.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert!(refused(&basic).contains("Bearer"));
}

#[test]
fn api_keys_are_checked_against_their_hash() {
    let mut h = HeaderMap::new();
    h.insert("x-api-key", "lk_pos1_s3cr3tvalue".parse().unwrap());
    assert_eq!(
        verifier().verify(&h).unwrap(),
        Principal::System {
            program_id: "p1".into(),
            key_id: "pos1".into(),
            role: Role::Backend
        }
    );
    for bad in ["lk_pos1_wrong", "lk_other_s3cr3tvalue", "garbage"] {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", bad.parse().unwrap());
        refused(&h);
    }
}

#[test]
fn api_key_records_parse_from_configuration() {
    let hash = "a".repeat(64);
    let r: ApiKeyRecord = format!("pos1:p1:backend:{hash}").parse().unwrap();
    assert_eq!(r.key_id, "pos1");
    assert!(
        format!("pos1:p1:wizard:{hash}")
            .parse::<ApiKeyRecord>()
            .unwrap_err()
            .contains("role")
    );
    assert!("pos1:p1:backend:xyz".parse::<ApiKeyRecord>().is_err());
}

#[test]
fn members_act_only_on_themselves() {
    let m = member();
    assert!(m.authorize_member("p1", "m1").is_ok());
    let other = m.authorize_member("p1", "m2").unwrap_err();
    let elsewhere = m.authorize_member("p2", "m1").unwrap_err();
    // the same refusal whether or not the other member exists
    assert_eq!(other.to_string(), elsewhere.to_string());
    assert!(matches!(other, ServiceError::PermissionDenied(_)));
    assert!(m.require_role("p1", &[Role::ProgramAdmin]).is_err());
}

#[test]
fn staff_and_systems_stay_in_their_program_and_roles() {
    let agent = Principal::Staff {
        program_id: "p1".into(),
        subject: "bob".into(),
        roles: vec![Role::SupportAgent],
    };
    assert!(agent.authorize_member("p1", "m9").is_ok());
    assert!(agent.authorize_member("p2", "m9").is_err());
    assert!(
        agent
            .require_role("p1", &[Role::SupportAgent, Role::ProgramAdmin])
            .is_ok()
    );
    assert!(agent.require_role("p1", &[Role::ProgramAdmin]).is_err());
    let pos = Principal::System {
        program_id: "p1".into(),
        key_id: "pos1".into(),
        role: Role::Backend,
    };
    assert!(pos.require_role("p1", &[Role::Backend]).is_ok());
    assert!(pos.require_role("p2", &[Role::Backend]).is_err());
}

#[test]
fn the_secret_is_created_once_and_kept_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/auth.secret");
    let a = loyalty_common::auth::load_or_create_secret(&path).unwrap();
    let b = loyalty_common::auth::load_or_create_secret(&path).unwrap();
    let minter = Minter::new(a.clone());
    let token = minter.mint(&member(), Duration::from_mins(1)).unwrap();
    assert!(
        Verifier::new(&b, vec![]).verify(&bearer(&token)).is_ok(),
        "same secret after reload"
    );
    assert_eq!(format!("{a:?}"), "Secret(***)");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

/// A tiny hand-written gRPC service behind the layer:
/// `loyalty.testing.v1.WhoAmI/Get(Empty) -> string` answers the verified
/// caller's program, read with `auth::principal`.
#[derive(Clone)]
struct WhoAmI;

impl tonic::server::NamedService for WhoAmI {
    const NAME: &'static str = "loyalty.testing.v1.WhoAmI";
}

struct Get;

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tonic::server::UnaryService<()> for Get {
    type Response = String;
    type Future = BoxFuture<Result<tonic::Response<String>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<()>) -> Self::Future {
        let who = loyalty_common::auth::principal(&req).map(|p| p.program_id().to_owned());
        Box::pin(async move { Ok(tonic::Response::new(who?)) })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for WhoAmI {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Get, req).await)
        })
    }
}

async fn who_am_i(
    channel: tonic::transport::Channel,
    token: Option<&str>,
) -> Result<String, tonic::Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(());
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let path = http::uri::PathAndQuery::from_static("/loyalty.testing.v1.WhoAmI/Get");
    client
        .unary(req, path, tonic_prost::ProstCodec::<(), String>::default())
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn the_layer_guards_a_real_server_but_not_health() {
    use std::sync::Arc;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let layer = loyalty_common::auth::AuthLayer::new(Arc::new(verifier()));
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .add_service(WhoAmI)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let err = who_am_i(channel.clone(), None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("missing credential"), "{err:?}");
    let err = who_am_i(channel.clone(), Some("garbage"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    let token = Minter::new(Secret::new(SECRET.to_vec()))
        .mint(&member(), Duration::from_mins(5))
        .unwrap();
    assert_eq!(who_am_i(channel.clone(), Some(&token)).await.unwrap(), "p1");

    // health answers without a credential
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1, "SERVING");

    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}

#[test]
fn generated_api_keys_verify_and_round_trip_through_configuration() {
    let (key, record) = ApiKeyRecord::generate("crm", "p2", Role::Backend).unwrap();
    assert!(key.starts_with("lk_crm_"));
    let parsed: ApiKeyRecord = record.to_config().parse().unwrap();
    assert_eq!(parsed, record);
    assert!(
        !record.to_config().contains(&key[7..]),
        "only the hash is kept"
    );
    let v = Verifier::new(&Secret::new(SECRET.to_vec()), vec![parsed]);
    let mut h = HeaderMap::new();
    h.insert("x-api-key", key.parse().unwrap());
    assert_eq!(
        v.verify(&h).unwrap(),
        Principal::System {
            program_id: "p2".into(),
            key_id: "crm".into(),
            role: Role::Backend
        }
    );
    assert!(ApiKeyRecord::generate("bad_id", "p2", Role::Backend).is_err());
}

#[test]
fn bearer_scheme_is_case_insensitive_and_system_tokens_need_a_role() {
    let minter = Minter::new(Secret::new(SECRET.to_vec()));
    let token = minter.mint(&member(), Duration::from_mins(1)).unwrap();
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("bearer {token}").parse().unwrap());
    assert_eq!(verifier().verify(&h).unwrap(), member());
    let roleless = forge(
        &claims(&[("kind", "system".into()), ("key_id", "crm".into())]),
        Algorithm::HS256,
        SECRET,
    );
    assert!(refused(&bearer(&roleless)).contains("role"));
}

#[test]
fn tokens_from_the_minter_are_capped_at_an_hour() {
    let minter = Minter::new(Secret::new(SECRET.to_vec()));
    let token = minter.mint(&member(), Duration::from_hours(48)).unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&base64_url_decode(payload)).unwrap();
    let life = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(life <= 3600, "{life}");
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let vals: Vec<u32> = s
        .bytes()
        .map(|c| A.iter().position(|a| *a == c).unwrap() as u32)
        .collect();
    let mut out = Vec::new();
    for chunk in vals.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, v)| acc | (v << (18 - 6 * i)));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[test]
fn replicas_creating_the_secret_at_once_agree_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.secret");
    let secrets: Vec<Secret> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| loyalty_common::auth::load_or_create_secret(&path).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let token = Minter::new(secrets[0].clone())
        .mint(&member(), Duration::from_mins(1))
        .unwrap();
    for secret in &secrets {
        assert!(
            Verifier::new(secret, vec![])
                .verify(&bearer(&token))
                .is_ok()
        );
    }
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 1, "no temporary files left behind");
}
