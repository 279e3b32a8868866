//! Typed configuration, one way for every service: each setting has a name
//! (`database_url`), an environment variable (`LOYALTY_DATABASE_URL`), an
//! optional key in a TOML file (`database_url = "…"`, file named by
//! `LOYALTY_CONFIG` or `--config`) and, in the launcher, a flag
//! (`--database-url`). Precedence: flag, environment, file, default.
//!
//! A bad value stops start-up with a message naming the setting and where
//! its value came from, e.g.
//! `invalid setting LOYALTY_REQUEST_TIMEOUT (environment): "ten" is not a duration …`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::db::DatabaseUrl;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Environment,
    File(PathBuf),
    Default,
}

/// A configuration problem, naming the setting it is about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid setting {setting} ({origin}): {problem}")]
    Invalid {
        setting: String,
        origin: String,
        problem: String,
    },
    #[error("cannot read config file {path}: {problem}")]
    File { path: String, problem: String },
    #[error("unknown setting {key:?} in config file {path} (known settings: {known})")]
    UnknownKey {
        key: String,
        path: String,
        known: String,
    },
}

/// Every setting the platform knows, with its help text. The launcher
/// builds its `--help` from this table, so a setting is documented once.
pub const SETTINGS: &[(&str, &str)] = &[
    (
        "config",
        "TOML file with any of these settings (keys as named here)",
    ),
    (
        "listen",
        "gRPC listen address [default: 127.0.0.1:50051 for the suite; 127.0.0.1:5006x for one service]",
    ),
    (
        "http_listen",
        "gateway HTTP listen address [default: 127.0.0.1:8080]",
    ),
    (
        "data_dir",
        "directory for SQLite files and the generated auth secret and data key [default: ./data]",
    ),
    (
        "database_url",
        "database URL; `{service}` is replaced by the service name, so one value serves all four [default: sqlite://{data_dir}/{service}.db]",
    ),
    (
        "nats_url",
        "NATS JetStream URL; unset means the in-process event bus (all services in one process)",
    ),
    (
        "nats_stream",
        "JetStream stream holding domain events; its subjects are its name in lower case with dots (LOYALTY_EVENTS: loyalty.events.>) [default: LOYALTY_EVENTS]",
    ),
    (
        "auth_secret",
        "shared secret (>= 32 bytes) signing internal tokens; unset means one generated into {data_dir}/auth.secret",
    ),
    (
        "data_key",
        "key (>= 32 bytes, e.g. base64 of 32 random bytes) sealing coupon codes at rest; every replica of rewards needs the same one, and losing it makes issued codes unreadable; unset means one generated into {data_dir}/data.key",
    ),
    (
        "api_keys",
        "backend API keys, comma-separated `key_id:program_id:role:sha256-hex-of-key`",
    ),
    (
        "request_timeout",
        "deadline applied to calls that carry none, e.g. 10s, 500ms [default: 10s]",
    ),
    (
        "shutdown_grace",
        "how long shutdown waits for in-flight calls and the outbox [default: 20s]",
    ),
    (
        "db_max_connections",
        "connections per service database pool [default: 16]",
    ),
    ("log", "log filter in RUST_LOG syntax [default: info]"),
    ("log_format", "log format: text or json [default: text]"),
    (
        "membership_addr",
        "membership service address(es) for the gateway, comma-separated [default: the suite's own, or http://127.0.0.1:50061]",
    ),
    (
        "rewards_addr",
        "rewards service address(es) for the gateway [default: the suite's own, or http://127.0.0.1:50062]",
    ),
    (
        "feedback_addr",
        "feedback service address(es) for the gateway [default: the suite's own, or http://127.0.0.1:50063]",
    ),
    (
        "retention_addr",
        "retention service address(es) for the gateway [default: the suite's own, or http://127.0.0.1:50064]",
    ),
    (
        "member_jwt_issuer",
        "gateway: `iss` of member JWTs (RS256/ES256); unset means member JWTs are not accepted",
    ),
    (
        "member_jwt_audience",
        "gateway: required `aud` of member JWTs",
    ),
    (
        "member_jwt_keys",
        "gateway: PEM files (RSA or EC public keys), comma-separated, verifying member JWTs",
    ),
    (
        "member_jwt_jwks",
        "gateway: JWKS file verifying member JWTs (keys chosen by `kid`)",
    ),
    (
        "member_jwt_program_claim",
        "gateway: claim of member JWTs holding the program id (`sub` is the member id) [default: program_id]",
    ),
    (
        "staff_jwt_issuer",
        "gateway: `iss` of staff JWTs (RS256/ES256); unset means staff JWTs are not accepted",
    ),
    (
        "staff_jwt_audience",
        "gateway: required `aud` of staff JWTs",
    ),
    (
        "staff_jwt_keys",
        "gateway: PEM files (RSA or EC public keys), comma-separated, verifying staff JWTs",
    ),
    ("staff_jwt_jwks", "gateway: JWKS file verifying staff JWTs"),
    (
        "staff_jwt_program_claim",
        "gateway: claim of staff JWTs holding the program id [default: program_id]",
    ),
    (
        "staff_jwt_roles_claim",
        "gateway: claim of staff JWTs listing roles (program_admin, support_agent, analyst) [default: roles]",
    ),
    (
        "gateway_rate_limit",
        "gateway: requests per principal, e.g. 20/s or 600/m; 0 turns limiting off [default: 50/s]",
    ),
    (
        "gateway_rate_burst",
        "gateway: token-bucket size per principal [default: twice the per-second rate, at least 10]",
    ),
    (
        "gateway_rate_limit_redis",
        "gateway: redis://[user:password@]host:port[/db] of a Redis (or Valkey) shared by the gateway replicas, so that the rate limit holds across all of them; unreachable, each replica limits on its own until it is back [default: none, per replica]",
    ),
    (
        "gateway_rate_limit_redis_prefix",
        "gateway: prefix of the shared limiter's Redis keys [default: loyalty:ratelimit:]",
    ),
    (
        "gateway_body_limit",
        "gateway: largest request body in bytes (suffix k or m allowed) [default: 64k]",
    ),
    (
        "gateway_page_size_max",
        "gateway: largest page_size a request may ask for [default: 100]",
    ),
    (
        "gateway_cors_origins",
        "gateway: origins allowed by CORS, comma-separated, or * [default: none]",
    ),
    (
        "gateway_deadline",
        "gateway: deadline of a call to a service [default: request_timeout]",
    ),
    (
        "gateway_route_deadlines",
        "gateway: per-RPC deadlines, comma-separated `Method=duration` (full or short RPC name, e.g. RewardsService.GetBalance=2s)",
    ),
    (
        "gateway_home_deadline",
        "gateway: deadline of the member home endpoint, all sections together [default: 2s]",
    ),
    (
        "gateway_health_interval",
        "gateway: how often each service replica is probed with grpc.health.v1 [default: 2s]",
    ),
];

/// The environment variable of a setting: `database_url` → `LOYALTY_DATABASE_URL`.
pub fn env_name(setting: &str) -> String {
    format!("LOYALTY_{}", setting.to_ascii_uppercase())
}

/// The flag of a setting: `database_url` → `--database-url`.
pub fn flag_name(setting: &str) -> String {
    format!("--{}", setting.replace('_', "-"))
}

/// Raw values from flags, environment and file, before typing.
#[derive(Debug, Default, Clone)]
pub struct Source {
    values: BTreeMap<String, (String, Origin)>,
}

impl Source {
    /// Layers the sources: `flags` (setting → value) over the given
    /// environment over the config file named by flag or environment.
    pub fn load(
        flags: &BTreeMap<String, String>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let mut values = BTreeMap::new();
        let config_file = flags
            .get("config")
            .map(|p| (p.clone(), Origin::Flag))
            .or_else(|| {
                env.get(&env_name("config"))
                    .map(|p| (p.clone(), Origin::Environment))
            });
        if let Some((path, _)) = &config_file {
            for (k, v) in read_file(Path::new(path))? {
                values.insert(k, (v, Origin::File(path.into())));
            }
        }
        for (name, _) in SETTINGS {
            if let Some(v) = env.get(&env_name(name)) {
                values.insert((*name).to_owned(), (v.clone(), Origin::Environment));
            }
        }
        for (k, v) in flags {
            values.insert(k.clone(), (v.clone(), Origin::Flag));
        }
        Ok(Self { values })
    }

    /// Only the process environment (and its config file).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(&BTreeMap::new(), std::env::vars())
    }

    /// Sets a value as if given by flag (used by tests and the launcher).
    pub fn set(&mut self, setting: &str, value: impl Into<String>) {
        self.values
            .insert(setting.to_owned(), (value.into(), Origin::Flag));
    }

    /// The raw value and its origin.
    pub fn raw(&self, setting: &str) -> Option<(&str, &Origin)> {
        self.values.get(setting).map(|(v, o)| (v.as_str(), o))
    }

    /// The typed value of a setting, or `None` when unset (or empty).
    pub fn get<T>(&self, setting: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.values.get(setting) {
            None => Ok(None),
            Some((v, _)) if v.trim().is_empty() => Ok(None),
            Some((v, origin)) => v
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|e| invalid(setting, origin, e.to_string())),
        }
    }

    /// The typed value, or `default` when unset.
    pub fn get_or<T>(&self, setting: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        Ok(self.get(setting)?.unwrap_or(default))
    }

    /// An error about this setting, naming it as the user gave it.
    pub fn error(&self, setting: &str, problem: impl Into<String>) -> ConfigError {
        let origin = self
            .values
            .get(setting)
            .map_or(Origin::Default, |(_, o)| o.clone());
        invalid(setting, &origin, problem.into())
    }
}

fn invalid(setting: &str, origin: &Origin, problem: String) -> ConfigError {
    let (setting, origin) = match origin {
        Origin::Flag => (flag_name(setting), "flag".to_owned()),
        Origin::Environment => (env_name(setting), "environment".to_owned()),
        Origin::File(p) => (setting.to_owned(), format!("config file {}", p.display())),
        Origin::Default => (setting.to_owned(), "default".to_owned()),
    };
    ConfigError::Invalid {
        setting,
        origin,
        problem,
    }
}

fn read_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let file_err = |problem: String| ConfigError::File {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_err(e.to_string()))?;
    let mut out = Vec::new();
    for (k, v) in table {
        if !SETTINGS.iter().any(|(name, _)| *name == k) || k == "config" {
            return Err(ConfigError::UnknownKey {
                key: k,
                path: path.display().to_string(),
                known: SETTINGS
                    .iter()
                    .map(|(n, _)| *n)
                    .filter(|n| *n != "config")
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let value = match v {
            toml::Value::String(s) => s,
            toml::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        out.push((k, value));
    }
    Ok(out)
}

/// A duration setting: `10s`, `500ms`, `2m`, `1h`, or plain seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (use e.g. 10s, 500ms, 2m)"))?;
        let d = match unit.trim() {
            "" | "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
                ));
            }
        };
        Ok(Self(d))
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?} is not a log format (use text or json)")),
        }
    }
}

/// How the gateway verifies one kind of external JWT (member or staff).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIssuerSettings {
    pub issuer: String,
    pub audience: String,
    /// PEM files with RSA or EC public keys.
    pub key_files: Vec<PathBuf>,
    /// A JWKS file (keys chosen by `kid`).
    pub jwks_file: Option<PathBuf>,
    /// Claim holding the program id.
    pub program_claim: String,
    /// Claim listing staff roles (staff tokens only).
    pub roles_claim: String,
}

/// The gateway's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySettings {
    pub member_jwt: Option<JwtIssuerSettings>,
    pub staff_jwt: Option<JwtIssuerSettings>,
    /// Requests per second per principal; 0.0 means no limit.
    pub rate_per_second: f64,
    pub rate_burst: u32,
    /// The Redis holding the token buckets of all replicas (None: each
    /// replica limits on its own).
    pub rate_limit_redis: Option<RedisTarget>,
    /// Prefix of the shared limiter's keys.
    pub rate_limit_redis_prefix: String,
    pub body_limit: usize,
    pub page_size_max: i64,
    /// Allowed CORS origins (`*` allows any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    pub deadline: Duration,
    /// RPC name (full `pkg.Service.Method` or `Service.Method`) → deadline.
    pub route_deadlines: Vec<(String, Duration)>,
    pub home_deadline: Duration,
    pub health_interval: Duration,
}

/// A Redis server as `redis://[user:password@]host:port[/db]` names it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// `host:port` (port 6379 when not given).
    pub addr: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .finish()
    }
}

impl FromStr for RedisTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("redis://").ok_or_else(|| {
            if s.starts_with("rediss://") {
                "TLS (rediss://) is not supported; use redis:// on a private network".to_owned()
            } else {
                "must start with redis://".to_owned()
            }
        })?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => (
                h,
                d.parse::<u32>()
                    .map_err(|_| format!("database {d:?} is not a number"))?,
            ),
            None => (rest, 0),
        };
        if hostport.is_empty() {
            return Err("names no host".into());
        }
        let addr = match hostport.rsplit_once(':') {
            // an IPv6 literal without a port: [::1]
            Some((_, p)) if !hostport.ends_with(']') => {
                p.parse::<u16>()
                    .map_err(|_| format!("port {p:?} is not a number"))?;
                hostport.to_owned()
            }
            _ => format!("{hostport}:6379"),
        };
        let decode = |v: &str| percent_decode(v).ok_or_else(|| "malformed %-escape".to_owned());
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (Some(decode(u)?).filter(|u| !u.is_empty()), Some(decode(p)?)),
                None => (Some(decode(a)?).filter(|u| !u.is_empty()), None),
            },
        };
        Ok(Self {
            addr,
            username,
            password,
            db,
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn comma_list(v: Option<String>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

fn jwt_issuer(src: &Source, kind: &str) -> Result<Option<JwtIssuerSettings>, ConfigError> {
    let name = |s: &str| format!("{kind}_jwt_{s}");
    let Some(issuer) = src.get::<String>(&name("issuer"))? else {
        return Ok(None);
    };
    let audience = src
        .get::<String>(&name("audience"))?
        .ok_or_else(|| src.error(&name("issuer"), format!("needs {kind}_jwt_audience too")))?;
    let key_files: Vec<PathBuf> = comma_list(src.get(&name("keys"))?)
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let jwks_file: Option<PathBuf> = src.get(&name("jwks"))?;
    if key_files.is_empty() && jwks_file.is_none() {
        return Err(src.error(
            &name("issuer"),
            format!("needs {kind}_jwt_keys or {kind}_jwt_jwks to verify tokens"),
        ));
    }
    let roles_claim = if kind == "staff" {
        src.get_or(&name("roles_claim"), "roles".to_owned())?
    } else {
        "roles".to_owned()
    };
    Ok(Some(JwtIssuerSettings {
        issuer,
        audience,
        key_files,
        jwks_file,
        program_claim: src.get_or(&name("program_claim"), "program_id".to_owned())?,
        roles_claim,
    }))
}

/// A rate: `20/s`, `600/m`, `0` (off) or plain per-second numbers.
fn parse_rate(s: &str) -> Result<f64, String> {
    let (n, per) = s.split_once('/').unwrap_or((s, "s"));
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (use e.g. 20/s or 600/m)"))?;
    let secs = match per.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown rate unit {other:?} (use s, m or h)")),
    };
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{s:?} must not be negative"));
    }
    Ok(n / secs)
}

/// A size in bytes: `65536`, `64k`, `1m`.
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = s.strip_suffix('k') {
        (n, 1024)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 1024 * 1024)
    } else {
        (s.as_str(), 1)
    };
    num.trim()
        .parse::<usize>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a size (use e.g. 65536, 64k or 1m)"))
}

impl GatewaySettings {
    fn from_source(src: &Source, request_timeout: Duration) -> Result<Self, ConfigError> {
        let rate_per_second = match src.get::<String>("gateway_rate_limit")? {
            None => 50.0,
            Some(v) => parse_rate(&v).map_err(|e| src.error("gateway_rate_limit", e))?,
        };
        let default_burst = ((rate_per_second * 2.0).ceil() as u32).max(10);
        let body_limit = match src.get::<String>("gateway_body_limit")? {
            None => 64 * 1024,
            Some(v) => parse_size(&v).map_err(|e| src.error("gateway_body_limit", e))?,
        };
        let mut route_deadlines = Vec::new();
        for item in comma_list(src.get("gateway_route_deadlines")?) {
            let (name, d) = item.split_once('=').ok_or_else(|| {
                src.error(
                    "gateway_route_deadlines",
                    format!("{item:?} is not Method=duration"),
                )
            })?;
            let d: HumanDuration = d
                .parse()
                .map_err(|e: String| src.error("gateway_route_deadlines", e))?;
            route_deadlines.push((name.trim().to_owned(), d.0));
        }
        let page_size_max: i64 = src.get_or("gateway_page_size_max", 100)?;
        if page_size_max < 1 {
            return Err(src.error("gateway_page_size_max", "must be at least 1"));
        }
        Ok(Self {
            member_jwt: jwt_issuer(src, "member")?,
            staff_jwt: jwt_issuer(src, "staff")?,
            rate_per_second,
            rate_burst: src.get_or("gateway_rate_burst", default_burst)?.max(1),
            rate_limit_redis: src.get("gateway_rate_limit_redis")?,
            rate_limit_redis_prefix: src.get_or(
                "gateway_rate_limit_redis_prefix",
                "loyalty:ratelimit:".to_owned(),
            )?,
            body_limit,
            page_size_max,
            cors_origins: comma_list(src.get("gateway_cors_origins")?),
            deadline: src
                .get_or("gateway_deadline", HumanDuration(request_timeout))?
                .0,
            route_deadlines,
            home_deadline: src
                .get_or(
                    "gateway_home_deadline",
                    HumanDuration(Duration::from_secs(2)),
                )?
                .0,
            health_interval: src
                .get_or(
                    "gateway_health_interval",
                    HumanDuration(Duration::from_secs(2)),
                )?
                .0,
        })
    }
}

/// The four domain services.
pub const SERVICES: [&str; 4] = ["membership", "rewards", "feedback", "retention"];

/// The port each service listens on when it runs alone.
pub fn standalone_port(service: &str) -> u16 {
    match service {
        "membership" => 50061,
        "rewards" => 50062,
        "feedback" => 50063,
        "retention" => 50064,
        _ => 50051,
    }
}

/// Settings shared by every service and the launcher, typed and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    database_url: String,
    pub nats_url: Option<String>,
    pub nats_stream: String,
    /// Internal token secret; `None` means generate one under `data_dir`.
    pub auth_secret: Option<String>,
    /// Key sealing data at rest (ADR 0009); `None` means generate one
    /// under `data_dir`.
    pub data_key: Option<crate::data_key::DataKey>,
    /// Raw API key records (`key_id:program_id:role:sha256hex`).
    pub api_keys: Vec<String>,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    pub db_max_connections: u32,
    pub log: String,
    pub log_format: LogFormat,
    /// Service name → addresses the gateway calls (empty: the suite's own).
    pub upstreams: BTreeMap<String, Vec<String>>,
    /// The gateway's settings (external credentials, limits, deadlines).
    pub gateway: GatewaySettings,
}

impl Config {
    /// Types and checks every setting. `default_listen` differs between the
    /// suite (one port for all) and a service run alone.
    pub fn from_source(src: &Source, default_listen: SocketAddr) -> Result<Self, ConfigError> {
        let data_dir: PathBuf = src.get_or("data_dir", PathBuf::from("./data"))?;
        let database_url = src
            .get::<String>("database_url")?
            .unwrap_or_else(|| format!("sqlite://{}/{{service}}.db", data_dir.display()));
        let auth_secret: Option<String> = src.get("auth_secret")?;
        if let Some(s) = &auth_secret
            && s.len() < 32
        {
            return Err(src.error("auth_secret", "must be at least 32 bytes long"));
        }
        let data_key = match src.get::<String>("data_key")? {
            None => None,
            Some(k) if auth_secret.as_deref() == Some(k.as_str()) => {
                return Err(src.error(
                    "data_key",
                    "must differ from auth_secret (one key, one purpose)",
                ));
            }
            Some(k) => Some(
                crate::data_key::DataKey::new(k)
                    .map_err(|e| src.error("data_key", e.to_string()))?,
            ),
        };
        let api_keys: Vec<String> = src
            .get::<String>("api_keys")?
            .map(|s| {
                s.split(',')
                    .map(|k| k.trim().to_owned())
                    .filter(|k| !k.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for k in &api_keys {
            if k.split(':').count() != 4 {
                return Err(src.error(
                    "api_keys",
                    format!(
                        "record {:?} is not key_id:program_id:role:sha256hex",
                        k.split(':').next().unwrap_or_default()
                    ),
                ));
            }
        }
        let mut upstreams = BTreeMap::new();
        for s in SERVICES {
            let key = format!("{s}_addr");
            if let Some(v) = src.get::<String>(&key)? {
                let addrs: Vec<String> = v.split(',').map(|a| a.trim().to_owned()).collect();
                for a in &addrs {
                    if !(a.starts_with("http://") || a.starts_with("https://")) {
                        return Err(
                            src.error(&key, format!("{a:?} must start with http:// or https://"))
                        );
                    }
                }
                upstreams.insert(s.to_owned(), addrs);
            }
        }
        let request_timeout = src
            .get_or("request_timeout", HumanDuration(Duration::from_secs(10)))?
            .0;
        let gateway = GatewaySettings::from_source(src, request_timeout)?;
        let db_max_connections: u32 = src.get_or("db_max_connections", 16)?;
        if db_max_connections == 0 {
            return Err(src.error("db_max_connections", "must be at least 1"));
        }
        let config = Self {
            listen: src.get_or("listen", default_listen)?,
            http_listen: src.get_or("http_listen", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            data_dir,
            database_url,
            nats_url: src.get("nats_url")?,
            nats_stream: src.get_or("nats_stream", "LOYALTY_EVENTS".to_owned())?,
            auth_secret,
            data_key,
            api_keys,
            request_timeout,
            shutdown_grace: src
                .get_or("shutdown_grace", HumanDuration(Duration::from_secs(20)))?
                .0,
            db_max_connections,
            log: src.get_or("log", "info".to_owned())?,
            log_format: src.get_or("log_format", LogFormat::Text)?,
            upstreams,
            gateway,
        };
        if let Some(url) = &config.nats_url
            && !url.starts_with("nats://")
            && !url.starts_with("tls://")
        {
            return Err(src.error(
                "nats_url",
                format!("{url:?} must start with nats:// or tls://"),
            ));
        }
        // Check the database URL of every service now, not at first use.
        for s in SERVICES {
            config
                .database_url(s)
                .map_err(|e| src.error("database_url", e))?;
        }
        Ok(config)
    }

    /// The database URL of one service.
    pub fn database_url(&self, service: &str) -> Result<DatabaseUrl, String> {
        self.database_url.replace("{service}", service).parse()
    }

    /// True when services run on the embedded default (SQLite + in-process bus).
    pub fn is_embedded(&self) -> bool {
        self.nats_url.is_none()
            && self
                .database_url("membership")
                .is_ok_and(|u| u.engine() == crate::db::Engine::Sqlite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let src = Source::load(
            &BTreeMap::new(),
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )?;
        Config::from_source(&src, "127.0.0.1:50051".parse().unwrap())
    }

    #[test]
    fn defaults_are_the_embedded_suite() {
        let c = load(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.database_url("rewards").unwrap().as_str(),
            "sqlite://./data/rewards.db"
        );
        assert!(c.is_embedded());
        assert_eq!(c.request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn a_bad_value_names_the_setting_and_its_origin() {
        let err = load(&[("LOYALTY_REQUEST_TIMEOUT", "ten")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("LOYALTY_REQUEST_TIMEOUT"), "{msg}");
        assert!(msg.contains("environment"), "{msg}");
        assert!(msg.contains("\"ten\" is not a duration"), "{msg}");

        let err = load(&[("LOYALTY_LISTEN", "localhost")]).unwrap_err();
        assert!(err.to_string().contains("LOYALTY_LISTEN"), "{err}");

        let err = load(&[("LOYALTY_DATABASE_URL", "mysql://db/{service}")]).unwrap_err();
        assert!(err.to_string().contains("LOYALTY_DATABASE_URL"), "{err}");
        assert!(err.to_string().contains("sqlite://"), "{err}");
    }

    #[test]
    fn flags_win_over_environment_and_name_the_flag() {
        let mut flags = BTreeMap::new();
        flags.insert("log_format".to_owned(), "yaml".to_owned());
        let src = Source::load(
            &flags,
            [("LOYALTY_LOG_FORMAT".to_owned(), "json".to_owned())],
        )
        .unwrap();
        let err = Config::from_source(&src, "127.0.0.1:1".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("--log-format (flag)"), "{err}");
    }

    #[test]
    fn file_values_are_used_and_unknown_keys_refused() {
        let dir = std::env::temp_dir().join(format!("loyalty-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "request_timeout = \"250ms\"\ndb_max_connections = 4\n",
        )
        .unwrap();
        let c = load(&[("LOYALTY_CONFIG", good.to_str().unwrap())]).unwrap();
        assert_eq!(c.request_timeout, Duration::from_millis(250));
        assert_eq!(c.db_max_connections, 4);

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "db_max_connections = 0\n").unwrap();
        let err = load(&[("LOYALTY_CONFIG", bad.to_str().unwrap())]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("db_max_connections (config file"), "{msg}");

        let typo = dir.join("typo.toml");
        std::fs::write(&typo, "databse_url = \"x\"\n").unwrap();
        let err = load(&[("LOYALTY_CONFIG", typo.to_str().unwrap())]).unwrap_err();
        assert!(
            err.to_string().contains("unknown setting \"databse_url\""),
            "{err}"
        );
    }

    #[test]
    fn short_auth_secret_is_refused() {
        let err = load(&[("LOYALTY_AUTH_SECRET", "short")]).unwrap_err();
        assert!(err.to_string().contains("LOYALTY_AUTH_SECRET"), "{err}");
        // the value itself is never echoed
        assert!(!err.to_string().contains("short\""), "{err}");
    }

    #[test]
    fn the_data_key_is_checked_and_never_echoed() {
        assert!(load(&[]).unwrap().data_key.is_none());
        let err = load(&[("LOYALTY_DATA_KEY", "short-key-material")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("LOYALTY_DATA_KEY (environment)"), "{msg}");
        assert!(msg.contains("at least 32 bytes"), "{msg}");
        assert!(!msg.contains("short-key-material"), "{msg}");
        let key = "q83vEjRWeJ+rze8SNFZ4mqvN7xI0VniaWq3vEjRWeJo=";
        let c = load(&[("LOYALTY_DATA_KEY", key)]).unwrap();
        assert!(c.data_key.is_some());
        assert!(!format!("{c:?}").contains(key));
        let err = load(&[("LOYALTY_DATA_KEY", key), ("LOYALTY_AUTH_SECRET", key)]).unwrap_err();
        assert!(err.to_string().contains("LOYALTY_DATA_KEY"), "{err}");
        assert!(err.to_string().contains("auth_secret"), "{err}");
    }

    #[test]
    fn gateway_settings_parse_and_name_bad_values() {
        let c = load(&[]).unwrap();
        assert!(c.gateway.member_jwt.is_none());
        assert!((c.gateway.rate_per_second - 50.0).abs() < f64::EPSILON);
        assert_eq!(c.gateway.body_limit, 64 * 1024);
        assert_eq!(c.gateway.deadline, Duration::from_secs(10));

        let c = load(&[
            ("LOYALTY_MEMBER_JWT_ISSUER", "https://id.example"),
            ("LOYALTY_MEMBER_JWT_AUDIENCE", "loyalty-app"),
            ("LOYALTY_MEMBER_JWT_KEYS", "a.pem, b.pem"),
            ("LOYALTY_GATEWAY_RATE_LIMIT", "600/m"),
            ("LOYALTY_GATEWAY_BODY_LIMIT", "1m"),
            (
                "LOYALTY_GATEWAY_CORS_ORIGINS",
                "https://app.example,https://web.example",
            ),
            (
                "LOYALTY_GATEWAY_ROUTE_DEADLINES",
                "RewardsService.GetBalance=500ms",
            ),
        ])
        .unwrap();
        let m = c.gateway.member_jwt.unwrap();
        assert_eq!(m.key_files.len(), 2);
        assert_eq!(m.program_claim, "program_id");
        assert!((c.gateway.rate_per_second - 10.0).abs() < f64::EPSILON);
        assert_eq!(c.gateway.rate_burst, 20);
        assert_eq!(c.gateway.body_limit, 1024 * 1024);
        assert_eq!(c.gateway.cors_origins.len(), 2);
        assert_eq!(
            c.gateway.route_deadlines,
            vec![(
                "RewardsService.GetBalance".to_owned(),
                Duration::from_millis(500)
            )]
        );

        let err = load(&[
            ("LOYALTY_MEMBER_JWT_ISSUER", "x"),
            ("LOYALTY_MEMBER_JWT_AUDIENCE", "y"),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("LOYALTY_MEMBER_JWT_ISSUER"),
            "{err}"
        );
        let err = load(&[("LOYALTY_GATEWAY_RATE_LIMIT", "fast")]).unwrap_err();
        assert!(
            err.to_string().contains("LOYALTY_GATEWAY_RATE_LIMIT"),
            "{err}"
        );
    }

    #[test]
    fn redis_targets_parse_without_echoing_passwords() {
        let c = load(&[]).unwrap();
        assert!(c.gateway.rate_limit_redis.is_none());
        assert_eq!(c.gateway.rate_limit_redis_prefix, "loyalty:ratelimit:");
        let c = load(&[
            (
                "LOYALTY_GATEWAY_RATE_LIMIT_REDIS",
                "redis://127.0.0.1:6380/2",
            ),
            ("LOYALTY_GATEWAY_RATE_LIMIT_REDIS_PREFIX", "edge:"),
        ])
        .unwrap();
        let r = c.gateway.rate_limit_redis.unwrap();
        assert_eq!(r.addr, "127.0.0.1:6380");
        assert_eq!((r.username, r.password, r.db), (None, None, 2));
        assert_eq!(c.gateway.rate_limit_redis_prefix, "edge:");
        let r: RedisTarget = "redis://gw:s%40cret@cache.internal".parse().unwrap();
        assert_eq!(r.addr, "cache.internal:6379");
        assert_eq!(r.username.as_deref(), Some("gw"));
        assert_eq!(r.password.as_deref(), Some("s@cret"));
        assert!(!format!("{r:?}").contains("cret"));
        let r: RedisTarget = "redis://:pw@[::1]".parse().unwrap();
        assert_eq!((r.addr.as_str(), r.username), ("[::1]:6379", None));
        for bad in [
            "rediss://h:6379",
            "http://h",
            "redis://",
            "redis://h:x",
            "redis://h/x",
        ] {
            assert!(bad.parse::<RedisTarget>().is_err(), "{bad}");
        }
        let err = load(&[("LOYALTY_GATEWAY_RATE_LIMIT_REDIS", "redis://:hunter2@h:x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("LOYALTY_GATEWAY_RATE_LIMIT_REDIS"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            "500ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            "2m".parse::<HumanDuration>().unwrap().0,
            Duration::from_mins(2)
        );
        assert_eq!(
            "7".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(7)
        );
        assert!("5 days".parse::<HumanDuration>().is_err());
    }
}
