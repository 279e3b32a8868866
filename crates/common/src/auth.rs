//! Caller identity, verified by every service itself (see docs/adr/0003).
//!
//! A call carries either an internal token (`authorization: Bearer <jwt>`,
//! HS256 with the suite secret, minted by the gateway) or a backend API key
//! (`x-api-key: lk_<key_id>_<secret>`, stored as a SHA-256 hash). The
//! [`AuthLayer`] verifies it and puts the [`Principal`] into the request;
//! handlers authorise with [`Principal::authorize_member`] and friends.
//! Unsigned claims in metadata are never trusted.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tower::{Layer, Service};

use crate::ServiceError;

const ISSUER: &str = "loyalty";
const AUDIENCE: &str = "loyalty-services";
/// Longest lifetime a minted internal token may have.
pub const MAX_TOKEN_TTL: Duration = Duration::from_hours(1);

/// A staff role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    ProgramAdmin,
    SupportAgent,
    Analyst,
    /// A backend system (POS, order system) acting for the program.
    Backend,
}

impl Role {
    /// The name used in tokens and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProgramAdmin => "program_admin",
            Self::SupportAgent => "support_agent",
            Self::Analyst => "analyst",
            Self::Backend => "backend",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "program_admin" => Ok(Self::ProgramAdmin),
            "support_agent" => Ok(Self::SupportAgent),
            "analyst" => Ok(Self::Analyst),
            "backend" => Ok(Self::Backend),
            other => Err(format!(
                "unknown role {other:?} (program_admin, support_agent, analyst, backend)"
            )),
        }
    }
}

/// Who is calling, as verified from the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A member acting for themselves (through an app and the gateway).
    Member {
        program_id: String,
        member_id: String,
    },
    /// A staff user of one program, with roles.
    Staff {
        program_id: String,
        subject: String,
        roles: Vec<Role>,
    },
    /// A backend system holding an API key of one program.
    System {
        program_id: String,
        key_id: String,
        role: Role,
    },
}

fn denied() -> ServiceError {
    // Same answer whether or not the object exists.
    ServiceError::PermissionDenied("the caller may not perform this call on this resource".into())
}

impl Principal {
    pub fn program_id(&self) -> &str {
        match self {
            Self::Member { program_id, .. }
            | Self::Staff { program_id, .. }
            | Self::System { program_id, .. } => program_id,
        }
    }

    /// Allows acting within `program_id` (any principal of that program).
    pub fn authorize_program(&self, program_id: &str) -> Result<(), ServiceError> {
        if self.program_id() == program_id {
            Ok(())
        } else {
            Err(denied())
        }
    }

    /// The one check every handler makes before touching a member's data:
    /// a member only itself; staff and systems only within their program.
    pub fn authorize_member(&self, program_id: &str, member_id: &str) -> Result<(), ServiceError> {
        self.authorize_program(program_id)?;
        match self {
            Self::Member { member_id: own, .. } if own != member_id => Err(denied()),
            _ => Ok(()),
        }
    }

    /// Allows staff or systems of `program_id` holding one of `roles`.
    pub fn require_role(&self, program_id: &str, roles: &[Role]) -> Result<(), ServiceError> {
        self.authorize_program(program_id)?;
        let ok = match self {
            Self::Member { .. } => false,
            Self::Staff { roles: held, .. } => held.iter().any(|r| roles.contains(r)),
            Self::System { role, .. } => roles.contains(role),
        };
        if ok { Ok(()) } else { Err(denied()) }
    }
}

/// The verified caller of a request (put there by [`AuthLayer`]).
pub fn principal<T>(request: &tonic::Request<T>) -> Result<&Principal, ServiceError> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| ServiceError::Unauthenticated("no verified credential".into()))
}

/// The secret signing internal tokens. Never printed.
#[derive(Clone)]
pub struct Secret(Arc<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Arc::new(bytes))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Reads the secret from `path`, or creates one there (32 random bytes from
/// the OS, hex, file mode 0600) so that tokens survive restarts; see
/// [`key_file::load_or_create`](crate::key_file::load_or_create).
pub fn load_or_create_secret(path: &std::path::Path) -> std::io::Result<Secret> {
    crate::key_file::load_or_create(path, "auth secret").map(Secret::new)
}

/// A configured backend API key: `key_id:program_id:role:sha256hex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub key_id: String,
    pub program_id: String,
    pub role: Role,
    sha256: [u8; 32],
}

impl ApiKeyRecord {
    /// Issues a new key `lk_<key_id>_<secret>` (secret: 32 random bytes from
    /// the OS, hex) and its record; only the record is kept in configuration.
    pub fn generate(
        key_id: &str,
        program_id: &str,
        role: Role,
    ) -> Result<(String, Self), ServiceError> {
        if key_id.is_empty() || key_id.contains(['_', ':']) {
            return Err(ServiceError::invalid(
                "key_id",
                "must be non-empty without '_' or ':'",
            ));
        }
        let secret = crate::key_file::os_random::<32>().map_err(ServiceError::internal)?;
        let key = format!("lk_{key_id}_{}", hex::encode(secret));
        let record = Self::for_key(key_id, program_id, role, &key);
        Ok((key, record))
    }

    /// The configuration form, `key_id:program_id:role:sha256hex` (parsed
    /// back by `FromStr`).
    pub fn to_config(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.key_id,
            self.program_id,
            self.role.as_str(),
            hex::encode(self.sha256)
        )
    }

    /// The record for a key given in clear (for tests and key issuance).
    pub fn for_key(key_id: &str, program_id: &str, role: Role, key: &str) -> Self {
        Self {
            key_id: key_id.to_owned(),
            program_id: program_id.to_owned(),
            role,
            sha256: Sha256::digest(key.as_bytes()).into(),
        }
    }
}

impl FromStr for ApiKeyRecord {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let [key_id, program_id, role, hash] = parts[..] else {
            return Err("expected key_id:program_id:role:sha256hex".into());
        };
        let bytes = hex::decode(hash).map_err(|_| format!("key {key_id}: hash is not hex"))?;
        let sha256: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("key {key_id}: hash is not 32 bytes"))?;
        if key_id.is_empty() || key_id.contains('_') {
            return Err(format!("key id {key_id:?} must be non-empty without '_'"));
        }
        Ok(Self {
            key_id: key_id.to_owned(),
            program_id: program_id.to_owned(),
            role: role.parse()?,
            sha256,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    kind: String,
    program_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    member_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
}

/// Mints internal tokens (the gateway; the development credential).
#[derive(Debug, Clone)]
pub struct Minter {
    secret: Secret,
}

impl Minter {
    pub fn new(secret: Secret) -> Self {
        Self { secret }
    }

    /// A token for `principal` valid for `ttl`, capped at [`MAX_TOKEN_TTL`]
    /// (only [`dev_credential`] mints longer ones).
    pub fn mint(&self, principal: &Principal, ttl: Duration) -> Result<String, ServiceError> {
        self.mint_inner(principal, ttl.min(MAX_TOKEN_TTL))
    }

    fn mint_inner(&self, principal: &Principal, ttl: Duration) -> Result<String, ServiceError> {
        let now = jsonwebtoken::get_current_timestamp();
        let (kind, sub, member_id, roles, key_id) = match principal {
            Principal::Member { member_id, .. } => (
                "member",
                member_id.clone(),
                Some(member_id.clone()),
                Vec::new(),
                None,
            ),
            Principal::Staff { subject, roles, .. } => {
                ("staff", subject.clone(), None, roles.clone(), None)
            }
            Principal::System { key_id, role, .. } => (
                "system",
                key_id.clone(),
                None,
                vec![*role],
                Some(key_id.clone()),
            ),
        };
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub,
            exp: now + ttl.as_secs(),
            nbf: now.saturating_sub(1),
            iat: now,
            jti: uuid::Uuid::now_v7().to_string(),
            kind: kind.into(),
            program_id: principal.program_id().to_owned(),
            member_id,
            roles,
            key_id,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.secret.0),
        )
        .map_err(ServiceError::internal)
    }
}

/// Verifies credentials of incoming calls.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    api_keys: Vec<ApiKeyRecord>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("api_keys", &self.api_keys.len())
            .finish_non_exhaustive()
    }
}

fn unauthenticated(why: &str) -> ServiceError {
    ServiceError::Unauthenticated(format!("invalid credential: {why}"))
}

impl Verifier {
    pub fn new(secret: &Secret, api_keys: Vec<ApiKeyRecord>) -> Self {
        // The algorithm is pinned: `none`, RS*/ES* and other HS sizes are refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Self {
            key: DecodingKey::from_secret(&secret.0),
            validation,
            api_keys,
        }
    }

    /// The verified principal of a call's metadata.
    pub fn verify(&self, headers: &http::HeaderMap) -> Result<Principal, ServiceError> {
        if let Some(v) = headers.get("x-api-key") {
            let key = v
                .to_str()
                .map_err(|_| unauthenticated("malformed API key"))?;
            return self.verify_api_key(key);
        }
        let Some(v) = headers.get(http::header::AUTHORIZATION) else {
            return Err(ServiceError::Unauthenticated(
                "missing credential: send `authorization: Bearer <token>` or `x-api-key`".into(),
            ));
        };
        // the scheme is case-insensitive (RFC 9110)
        let token = v
            .to_str()
            .ok()
            .and_then(|s| s.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| unauthenticated("expected `Bearer <token>`"))?;
        self.verify_token(token)
    }

    fn verify_token(&self, token: &str) -> Result<Principal, ServiceError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => unauthenticated("token expired"),
                ErrorKind::ImmatureSignature => unauthenticated("token not yet valid"),
                ErrorKind::InvalidAudience => unauthenticated("wrong audience"),
                ErrorKind::InvalidIssuer => unauthenticated("wrong issuer"),
                ErrorKind::InvalidSignature => unauthenticated("bad signature"),
                ErrorKind::InvalidAlgorithm => unauthenticated("algorithm not accepted"),
                _ => unauthenticated("malformed token"),
            },
        )?;
        let c = data.claims;
        match c.kind.as_str() {
            "member" => Ok(Principal::Member {
                program_id: c.program_id,
                member_id: c
                    .member_id
                    .ok_or_else(|| unauthenticated("member token without member_id"))?,
            }),
            "staff" => Ok(Principal::Staff {
                program_id: c.program_id,
                subject: c.sub,
                roles: c.roles,
            }),
            // exactly one role, never a default: a role is never implied
            "system" => match c.roles[..] {
                [role] => Ok(Principal::System {
                    program_id: c.program_id,
                    key_id: c.key_id.unwrap_or(c.sub),
                    role,
                }),
                _ => Err(unauthenticated("system token without exactly one role")),
            },
            _ => Err(unauthenticated("unknown token kind")),
        }
    }

    fn verify_api_key(&self, key: &str) -> Result<Principal, ServiceError> {
        let key_id = key
            .strip_prefix("lk_")
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .ok_or_else(|| unauthenticated("malformed API key"))?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let record = self
            .api_keys
            .iter()
            .find(|r| r.key_id == key_id && constant_time_eq(&r.sha256, &digest))
            .ok_or_else(|| unauthenticated("unknown API key"))?;
        Ok(Principal::System {
            program_id: record.program_id.clone(),
            key_id: record.key_id.clone(),
            role: record.role,
        })
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The development credential printed at start on the embedded default.
#[derive(Debug, Clone)]
pub struct DevCredential {
    pub token: String,
    pub description: String,
    pub expires_at: String,
}

/// A staff program_admin token for program `dev`, valid for 12 hours.
pub fn dev_credential(minter: &Minter) -> Result<DevCredential, ServiceError> {
    let ttl = Duration::from_hours(12);
    let principal = Principal::Staff {
        program_id: "dev".into(),
        subject: "developer".into(),
        roles: vec![Role::ProgramAdmin],
    };
    let token = minter.mint_inner(&principal, ttl)?;
    let expires_at = (chrono::Utc::now() + ttl)
        .format("%Y-%m-%d %H:%M UTC")
        .to_string();
    Ok(DevCredential {
        token,
        description: "staff program_admin of program \"dev\"".into(),
        expires_at,
    })
}

/// Tower layer verifying every call but health and reflection.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Arc<Verifier>,
}

impl AuthLayer {
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self { verifier }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Arc<Verifier>,
}

fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

impl<S, B, RB> Service<http::Request<B>> for Authenticate<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !is_public(req.uri().path()) {
            match self.verifier.verify(req.headers()) {
                Ok(p) => {
                    req.extensions_mut().insert(p);
                }
                Err(e) => {
                    let status: tonic::Status = e.into();
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}
