//! External credentials, verified at the edge (ADR 3 and 5): member and
//! staff JWTs signed by the identity provider (RS256 or ES256 with the
//! configured public keys or JWKS; `iss`, `aud`, `exp`, `nbf` checked),
//! backend API keys (hashed at rest) and the suite's own internal tokens
//! (HS256 with the suite secret: the development credential and internal
//! callers). Any other algorithm, `none` included, is refused, so an HS256
//! token "signed" with a public key never passes. A JWKS file is re-read
//! when it changes (see [`JwksRefresh`]), so keys rotate without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use loyalty_common::auth::{Principal, Role, Verifier};
use loyalty_common::config::JwtIssuerSettings;
use serde_json::Value;

use crate::GatewayError;
use crate::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
}

struct Key {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

/// When a JWKS file is looked at again: every `poll` on the request path,
/// and at once (but at most every `min_interval`) when a token names a
/// `kid` the current keys lack: a rotation's new key works as soon as the
/// file has it, a removed key stops working within `poll`, and forged
/// `kid`s cannot make the gateway re-read the file on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksRefresh {
    pub poll: Duration,
    pub min_interval: Duration,
}

impl Default for JwksRefresh {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(10),
            min_interval: Duration::from_secs(1),
        }
    }
}

/// What tells that a file changed without reading it: modification time,
/// length and (on Unix) the inode, which a rotation by rename, or a
/// Kubernetes secret's symlink swap, always changes.
type Stamp = (Option<SystemTime>, u64, u64);

fn stamp(file: &Path) -> std::io::Result<Stamp> {
    let meta = std::fs::metadata(file)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok((meta.modified().ok(), meta.len(), inode))
}

/// A JWKS file, its keys and when it was last looked at.
struct Jwks {
    file: PathBuf,
    keys: RwLock<Arc<Vec<Key>>>,
    /// The stamp of the file the keys were read from, and the last look.
    seen: Mutex<(Stamp, Instant)>,
}

impl Jwks {
    fn open(kind: &'static str, file: &Path) -> Result<Self, GatewayError> {
        let before =
            stamp(file).map_err(|e| config_err(kind, format!("{}: {e}", file.display())))?;
        let keys = load_jwks(kind, file)?;
        Ok(Self {
            file: file.to_owned(),
            keys: RwLock::new(Arc::new(keys)),
            seen: Mutex::new((before, Instant::now())),
        })
    }

    fn keys(&self) -> Arc<Vec<Key>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the file if it changed and `interval` passed since the last
    /// look. A file that does not parse (a rotation half written) keeps the
    /// current keys and is tried again at the next look.
    fn refresh(&self, kind: &'static str, interval: Duration) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.1.elapsed() < interval {
            return;
        }
        seen.1 = Instant::now();
        let now = match stamp(&self.file) {
            Ok(s) if s == seen.0 => return,
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(kind, file = %self.file.display(), error = %e, "JWKS file unreadable; keeping its last keys");
                return;
            }
        };
        match load_jwks(kind, &self.file) {
            Ok(keys) => {
                tracing::info!(kind, file = %self.file.display(), keys = keys.len(), "JWKS file changed; keys reloaded");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                seen.0 = now;
            }
            Err(e) => {
                tracing::warn!(kind, error = %e, "JWKS file changed but does not load; keeping its last keys");
            }
        }
    }
}

/// One identity provider's token kind.
struct Issuer {
    kind: &'static str,
    issuer: String,
    audience: String,
    /// Keys from PEM files (fixed for the process).
    pem_keys: Vec<Key>,
    jwks: Option<Jwks>,
    refresh: JwksRefresh,
    program_claim: String,
    roles_claim: String,
}

/// Verifies every credential the gateway accepts.
#[derive(Clone)]
pub struct Authenticator {
    internal: Arc<Verifier>,
    member: Option<Arc<Issuer>>,
    staff: Option<Arc<Issuer>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("member_jwt", &self.member.is_some())
            .field("staff_jwt", &self.staff.is_some())
            .finish_non_exhaustive()
    }
}

fn config_err(kind: &str, problem: impl std::fmt::Display) -> GatewayError {
    GatewayError::Config(format!("{kind} JWT keys: {problem}"))
}

fn load_pem_keys(kind: &'static str, s: &JwtIssuerSettings) -> Result<Vec<Key>, GatewayError> {
    let mut keys = Vec::new();
    for file in &s.key_files {
        let pem = std::fs::read(file)
            .map_err(|e| config_err(kind, format!("{}: {e}", file.display())))?;
        let text = String::from_utf8_lossy(&pem);
        let (family, key) =
            if text.contains("BEGIN EC PUBLIC KEY") || DecodingKey::from_ec_pem(&pem).is_ok() {
                (
                    Family::Ec,
                    DecodingKey::from_ec_pem(&pem)
                        .map_err(|e| config_err(kind, format!("{}: {e}", file.display())))?,
                )
            } else {
                (
                    Family::Rsa,
                    DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                        config_err(
                            kind,
                            format!("{}: not an RSA or EC public key PEM ({e})", file.display()),
                        )
                    })?,
                )
            };
        keys.push(Key {
            kid: None,
            family,
            key,
        });
    }
    Ok(keys)
}

fn load_jwks(kind: &'static str, file: &Path) -> Result<Vec<Key>, GatewayError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| config_err(kind, format!("{}: {e}", file.display())))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| config_err(kind, format!("{}: not a JWKS: {e}", file.display())))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let family = match jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            // symmetric or other keys are never accepted from a JWKS
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| config_err(kind, format!("{}: {e}", file.display())))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            family,
            key,
        });
    }
    Ok(keys)
}

fn issuer(
    kind: &'static str,
    s: Option<&JwtIssuerSettings>,
    refresh: JwksRefresh,
) -> Result<Option<Arc<Issuer>>, GatewayError> {
    let Some(s) = s else { return Ok(None) };
    let pem_keys = load_pem_keys(kind, s)?;
    let jwks = s
        .jwks_file
        .as_deref()
        .map(|f| Jwks::open(kind, f))
        .transpose()?;
    if pem_keys.is_empty() && jwks.as_ref().is_none_or(|j| j.keys().is_empty()) {
        return Err(config_err(kind, "no usable public key configured"));
    }
    Ok(Some(Arc::new(Issuer {
        kind,
        issuer: s.issuer.clone(),
        audience: s.audience.clone(),
        pem_keys,
        jwks,
        refresh,
        program_claim: s.program_claim.clone(),
        roles_claim: s.roles_claim.clone(),
    })))
}

fn bad(why: &str) -> ApiError {
    ApiError::unauthenticated(format!("invalid credential: {why}"))
}

impl Authenticator {
    pub fn new(
        internal: Arc<Verifier>,
        member: Option<&JwtIssuerSettings>,
        staff: Option<&JwtIssuerSettings>,
    ) -> Result<Self, GatewayError> {
        Self::with_refresh(internal, member, staff, JwksRefresh::default())
    }

    /// As [`Authenticator::new`], with JWKS files looked at on `refresh`.
    pub fn with_refresh(
        internal: Arc<Verifier>,
        member: Option<&JwtIssuerSettings>,
        staff: Option<&JwtIssuerSettings>,
        refresh: JwksRefresh,
    ) -> Result<Self, GatewayError> {
        Ok(Self {
            internal,
            member: issuer("member", member, refresh)?,
            staff: issuer("staff", staff, refresh)?,
        })
    }

    /// The verified caller of a request.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if headers.contains_key("x-api-key") {
            return self.internal.verify(headers).map_err(|e| {
                let status: tonic::Status = e.into();
                bad(status.message().trim_start_matches("invalid credential: "))
            });
        }
        let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(ApiError::unauthenticated(
                "missing credential: send `authorization: Bearer <token>` or `x-api-key`",
            ));
        };
        let token = v
            .to_str()
            .ok()
            .and_then(|s| s.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| bad("expected `Bearer <token>`"))?;
        // `alg: none` and unknown algorithms fail to parse here
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed token"))?;
        match header.alg {
            // the suite's own tokens: pinned to the suite secret
            Algorithm::HS256 => self.internal.verify(headers).map_err(|e| {
                let status: tonic::Status = e.into();
                bad(status.message().trim_start_matches("invalid credential: "))
            }),
            Algorithm::RS256 | Algorithm::ES256 => self.external(token, &header),
            _ => Err(bad("algorithm not accepted")),
        }
    }

    fn external(&self, token: &str, header: &jsonwebtoken::Header) -> Result<Principal, ApiError> {
        // pick the issuer by the (unverified) `iss`; everything is verified below
        let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| bad("malformed token"))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let issuer = [&self.member, &self.staff]
            .into_iter()
            .flatten()
            .find(|i| i.issuer == iss)
            .ok_or_else(|| bad("wrong issuer"))?;
        let claims = issuer.verify(token, header)?;
        let program = claims
            .get(&issuer.program_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("token without program"))?
            .to_owned();
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("token without subject"))?
            .to_owned();
        if issuer.kind == "member" {
            return Ok(Principal::Member {
                program_id: program,
                member_id: sub,
            });
        }
        let roles = match claims.get(&issuer.roles_claim) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => s.split([' ', ',']).collect(),
            _ => Vec::new(),
        };
        let roles = roles
            .into_iter()
            .filter_map(|r| r.parse::<Role>().ok())
            // a staff token never grants the backend role
            .filter(|r| *r != Role::Backend)
            .collect();
        Ok(Principal::Staff {
            program_id: program,
            subject: sub,
            roles,
        })
    }
}

impl Issuer {
    fn verify(&self, token: &str, header: &jsonwebtoken::Header) -> Result<Value, ApiError> {
        use jsonwebtoken::errors::ErrorKind;
        let family = if header.alg == Algorithm::ES256 {
            Family::Ec
        } else {
            Family::Rsa
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        let jwks_keys = self.jwks.as_ref().map(|jwks| {
            jwks.refresh(self.kind, self.refresh.poll);
            let keys = jwks.keys();
            match &header.kid {
                // a kid the file lacks may be a rotation's new key
                Some(kid) if !keys.iter().any(|k| k.kid.as_ref() == Some(kid)) => {
                    jwks.refresh(self.kind, self.refresh.min_interval);
                    jwks.keys()
                }
                _ => keys,
            }
        });
        let candidates = self
            .pem_keys
            .iter()
            .chain(jwks_keys.as_deref().into_iter().flatten())
            .filter(|k| k.family == family)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            });
        let mut last = bad("no key for this token");
        for k in candidates {
            match jsonwebtoken::decode::<Value>(token, &k.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(bad("token expired")),
                        ErrorKind::ImmatureSignature => return Err(bad("token not yet valid")),
                        ErrorKind::InvalidAudience => return Err(bad("wrong audience")),
                        ErrorKind::InvalidIssuer => return Err(bad("wrong issuer")),
                        ErrorKind::MissingRequiredClaim(c) => {
                            return Err(bad(&format!("missing claim {c}")));
                        }
                        ErrorKind::InvalidSignature => bad("bad signature"),
                        _ => bad("malformed token"),
                    };
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use loyalty_common::auth::Secret;

    const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

    fn staff_token(kid: &str, pem_file: &str) -> HeaderMap {
        let pem = std::fs::read(format!("{KEYS}/{pem_file}")).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "iss": "https://staff.test", "aud": "console", "sub": "s1",
            "program_id": "p1", "roles": ["analyst"], "exp": now + 300,
        });
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    /// Replaces the file as a rotation would: write aside, then rename.
    fn rotate(file: &Path, contents: &[u8]) {
        let aside = file.with_extension("new");
        std::fs::write(&aside, contents).unwrap();
        std::fs::rename(&aside, file).unwrap();
    }

    #[test]
    fn a_rotated_jwks_file_is_picked_up_without_a_restart() {
        let dir = std::env::temp_dir().join(format!("loyalty-jwks-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("staff.jwks.json");
        let first = std::fs::read(format!("{KEYS}/staff_jwks.json")).unwrap();
        let rotated = std::fs::read(format!("{KEYS}/staff_jwks_rotated.json")).unwrap();
        std::fs::write(&file, &first).unwrap();
        let settings = JwtIssuerSettings {
            issuer: "https://staff.test".into(),
            audience: "console".into(),
            key_files: Vec::new(),
            jwks_file: Some(file.clone()),
            program_claim: "program_id".into(),
            roles_claim: "roles".into(),
        };
        let refresh = JwksRefresh {
            poll: Duration::from_millis(300),
            min_interval: Duration::from_millis(50),
        };
        let internal = Arc::new(Verifier::new(&Secret::new(vec![7; 32]), Vec::new()));
        let auth = Authenticator::with_refresh(internal, None, Some(&settings), refresh).unwrap();
        let old = || auth.authenticate(&staff_token("staff-1", "staff_ec_private.pem"));
        let new = || auth.authenticate(&staff_token("staff-2", "staff_ec2_private.pem"));
        assert!(old().is_ok());
        assert!(new().is_err());

        // the new key is taken on its first token once the file has it
        // (past the minimum interval), and the removed key is refused
        rotate(&file, &rotated);
        std::thread::sleep(refresh.min_interval * 2);
        assert!(new().is_ok(), "{:?}", new().err());
        let e = old().unwrap_err();
        assert!(e.message.contains("no key"), "{}", e.message);

        // a half-written file keeps the last good keys
        rotate(&file, b"{\"keys\": [");
        std::thread::sleep(refresh.poll * 2);
        assert!(new().is_ok());

        // a key removed while its tokens keep coming stops within the poll
        rotate(&file, &first);
        std::thread::sleep(refresh.poll * 2);
        assert!(new().is_err());
        assert!(old().is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn forged_kids_do_not_reread_the_file_on_every_request() {
        let dir = std::env::temp_dir().join(format!("loyalty-jwks-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("staff.jwks.json");
        std::fs::copy(format!("{KEYS}/staff_jwks.json"), &file).unwrap();
        let jwks = Jwks::open("staff", &file).unwrap();
        let looked = jwks.seen.lock().unwrap().1;
        // within the interval: no look at all
        jwks.refresh("staff", Duration::from_secs(60));
        assert_eq!(jwks.seen.lock().unwrap().1, looked);
        // past it: one look, and the file unchanged keeps the same key set
        std::thread::sleep(Duration::from_millis(2));
        let before = jwks.keys();
        jwks.refresh("staff", Duration::ZERO);
        assert!(jwks.seen.lock().unwrap().1 > looked);
        assert!(Arc::ptr_eq(&before, &jwks.keys()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
