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
