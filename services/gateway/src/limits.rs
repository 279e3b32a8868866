//! Per-principal token buckets, per-RPC deadlines, CORS and the request id
//! and trace context every request carries from its first hop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};

/// Token buckets keyed by principal (or client address when anonymous).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` tokens per second (0: unlimited), at most `burst` saved.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token, or says after how many seconds one will be there.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > 100_000 {
            // forget callers whose bucket has refilled anyway
            let full = self.burst / self.rate;
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() < full);
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// The rate limit of the gateway: the buckets in Redis shared by every
/// replica when configured, else (and while Redis is unreachable) the
/// replica's own.
#[derive(Debug)]
pub struct Limiter {
    local: RateLimiter,
    shared: Option<crate::shared_limit::SharedLimiter>,
}

impl Limiter {
    pub fn new(settings: &loyalty_common::config::GatewaySettings) -> Self {
        let (rate, burst) = (settings.rate_per_second, settings.rate_burst);
        let shared = settings
            .rate_limit_redis
            .clone()
            .filter(|_| rate > 0.0)
            .map(|target| {
                crate::shared_limit::SharedLimiter::new(
                    target,
                    settings.rate_limit_redis_prefix.clone(),
                    rate,
                    burst,
                )
            });
        Self {
            local: RateLimiter::new(rate, burst),
            shared,
        }
    }

    /// Takes one token for `key`, or says after how many seconds one will
    /// be there.
    pub async fn check(&self, key: &str) -> Result<(), u64> {
        if let Some(shared) = &self.shared
            && let Some(answer) = shared.check(key).await
        {
            return answer;
        }
        self.local.check(key)
    }
}

/// Deadlines per RPC (full `pkg.Service.Method` or `Service.Method`).
#[derive(Debug, Clone)]
pub struct Deadlines {
    default: Duration,
    routes: Vec<(String, Duration)>,
}

impl Deadlines {
    pub fn new(default: Duration, routes: Vec<(String, Duration)>) -> Self {
        Self { default, routes }
    }

    pub fn of(&self, method: &prost_reflect::MethodDescriptor) -> Duration {
        let full = method.full_name();
        let short = format!("{}.{}", method.parent_service().name(), method.name());
        self.routes
            .iter()
            .find(|(n, _)| *n == full || *n == short || *n == method.name())
            .map_or(self.default, |(_, d)| *d)
    }
}

/// Allowed CORS origins.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<String>,
}

pub const EXPOSED_HEADERS: &str =
    "x-request-id, retry-after, grpc-status, grpc-message, grpc-status-details-bin";
pub const ALLOWED_HEADERS: &str = "authorization, content-type, x-api-key, x-request-id, traceparent, tracestate, x-grpc-web, x-user-agent, grpc-timeout";

impl Cors {
    pub fn new(origins: Vec<String>) -> Self {
        Self { origins }
    }

    /// The `access-control-allow-origin` value for this origin, if allowed.
    pub fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        if self.origins.iter().any(|o| o == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        let s = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(s))
            .then(|| origin.clone())
    }
}

/// The caller's `x-request-id` when sane, else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// The caller's W3C `traceparent` when well-formed, else a new trace
/// started here (the first hop).
pub fn traceparent(headers: &HeaderMap) -> String {
    let valid = |s: &str| {
        let parts: Vec<&str> = s.split('-').collect();
        parts.len() == 4
            && parts[0].len() == 2
            && parts[0] != "ff"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[3].len() == 2
            && parts.iter().all(|p| {
                p.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
            && parts[1].bytes().any(|b| b != b'0')
            && parts[2].bytes().any(|b| b != b'0')
    };
    if let Some(tp) = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|s| valid(s))
    {
        return tp.to_owned();
    }
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refuse_after_the_burst_and_say_when_to_retry() {
        let rl = RateLimiter::new(1.0, 3);
        for _ in 0..3 {
            assert!(rl.check("a").is_ok());
        }
        assert_eq!(rl.check("a"), Err(1));
        // another principal has its own bucket
        assert!(rl.check("b").is_ok());
        assert!(RateLimiter::new(0.0, 1).check("a").is_ok());
    }

    #[test]
    fn request_ids_and_traceparents_are_kept_when_sane() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(
            "x-request-id",
            HeaderValue::from_static("bad id with spaces"),
        );
        assert_ne!(request_id(&h), "bad id with spaces");
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert("traceparent", HeaderValue::from_static(tp));
        assert_eq!(traceparent(&h), tp);
        h.insert("traceparent", HeaderValue::from_static("00-zz-1-01"));
        let minted = traceparent(&h);
        assert_eq!(minted.len(), 55);
        assert!(minted.starts_with("00-"));
    }
}
