//! External credentials, verified at the edge (ADR 3 and 5): member and
//! staff JWTs signed by the identity provider (RS256 or ES256 with the
//! configured public keys or JWKS; `iss`, `aud`, `exp`, `nbf` checked),
//! backend API keys (hashed at rest) and the suite's own internal tokens
//! (HS256 with the suite secret: the development credential and internal
//! callers). Any other algorithm, `none` included, is refused, so an HS256
//! token "signed" with a public key never passes.

use std::path::Path;
use std::sync::Arc;

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

/// One identity provider's token kind.
struct Issuer {
    kind: &'static str,
    issuer: String,
    audience: String,
    keys: Vec<Key>,
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

fn load_keys(kind: &'static str, s: &JwtIssuerSettings) -> Result<Vec<Key>, GatewayError> {
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
    if let Some(file) = &s.jwks_file {
        keys.extend(load_jwks(kind, file)?);
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
) -> Result<Option<Arc<Issuer>>, GatewayError> {
    let Some(s) = s else { return Ok(None) };
    let keys = load_keys(kind, s)?;
    if keys.is_empty() {
        return Err(config_err(kind, "no usable public key configured"));
    }
    Ok(Some(Arc::new(Issuer {
        kind,
        issuer: s.issuer.clone(),
        audience: s.audience.clone(),
        keys,
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
        Ok(Self {
            internal,
            member: issuer("member", member)?,
            staff: issuer("staff", staff)?,
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
        let candidates = self.keys.iter().filter(|k| k.family == family).filter(|k| {
            match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            }
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
