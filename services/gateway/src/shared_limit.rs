//! The rate limit shared by every gateway replica: the same token bucket as
//! [`crate::limits::RateLimiter`], kept in Redis (or Valkey) and updated by
//! one Lua script, so N replicas together allow the configured rate, not N
//! times it. The script reads the server's clock (`TIME`), so replicas'
//! clocks do not matter, and it runs atomically: two replicas taking the
//! last token at once cannot both get it. A bucket expires once it would be
//! full again.
//!
//! Redis is an optimisation of fairness, never a dependency of serving:
//! when it cannot be reached (or answers late, or with an error), the
//! replica limits with its own in-memory bucket, logs that once, tries
//! Redis again at most once a second, and logs again when it is back. No
//! request fails because of Redis.
//!
//! The client is a minimal RESP2 one over tokio (AUTH, SELECT, SCRIPT LOAD,
//! EVALSHA/EVAL): a small pool of connections, one command at a time each.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use loyalty_common::config::RedisTarget;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Takes one token from the bucket `KEYS[1]`; `ARGV`: rate per second,
/// burst. Answers `{1, 0}` when taken, `{0, ms}` with the wait in
/// milliseconds until a token is there. The bucket (`t` tokens, `at` the
/// server time in ms) expires once it would have refilled.
pub const SCRIPT: &str = r"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
if now > at then tokens = math.min(burst, tokens + (now - at) * rate / 1000) end
local taken, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(math.max(now, at)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {taken, wait}
";

/// How long a connect or a command may take before the replica limits on
/// its own for this request.
const TIMEOUT: Duration = Duration::from_millis(200);
/// How long after a failure Redis is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Idle connections kept.
const POOL: usize = 16;
/// Connections open at once (more callers wait, within [`TIMEOUT`]).
const MAX_CONNECTIONS: usize = 64;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn protocol(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

/// Reads one reply (nesting at most 4 deep, bulk strings at most 1 MiB:
/// the limiter's replies are two integers).
pub async fn read_reply<R: AsyncBufRead + Unpin + Send>(r: &mut R) -> std::io::Result<Reply> {
    read_at(r, 0).await
}

/// A boxed future of one reply.
type ReplyFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Reply>> + Send + 'a>>;

fn read_at<R: AsyncBufRead + Unpin + Send>(r: &mut R, depth: usize) -> ReplyFuture<'_> {
    Box::pin(async move {
        let mut line = Vec::new();
        let n = (&mut *r)
            .take(64 * 1024)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let Some(body) = line.strip_suffix(b"\r\n") else {
            return Err(protocol("reply line without CRLF"));
        };
        let (kind, rest) = body.split_first().ok_or_else(|| protocol("empty reply"))?;
        let text = std::str::from_utf8(rest).map_err(|_| protocol("reply is not UTF-8"))?;
        let int = || {
            text.parse::<i64>()
                .map_err(|_| protocol(format!("bad length or integer {text:?}")))
        };
        Ok(match kind {
            b'+' => Reply::Simple(text.to_owned()),
            b'-' => Reply::Error(text.to_owned()),
            b':' => Reply::Int(int()?),
            b'$' => match int()? {
                -1 => Reply::Bulk(None),
                n if (0..=1 << 20).contains(&n) => {
                    let mut buf = vec![0; n as usize + 2];
                    r.read_exact(&mut buf).await?;
                    if !buf.ends_with(b"\r\n") {
                        return Err(protocol("bulk string without CRLF"));
                    }
                    buf.truncate(n as usize);
                    Reply::Bulk(Some(buf))
                }
                n => return Err(protocol(format!("bulk length {n}"))),
            },
            b'*' => match int()? {
                -1 => Reply::Array(None),
                n if (0..=1024).contains(&n) && depth < 4 => {
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(read_at(r, depth + 1).await?);
                    }
                    Reply::Array(Some(items))
                }
                n => return Err(protocol(format!("array of {n} at depth {depth}"))),
            },
            other => return Err(protocol(format!("unknown reply type {:?}", *other as char))),
        })
    })
}

/// One connection, ready for the script.
struct Conn {
    io: BufReader<TcpStream>,
    /// SHA1 of [`SCRIPT`] as the server loaded it.
    sha: String,
}

impl Conn {
    async fn open(target: &RedisTarget) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(&target.addr).await?;
        tcp.set_nodelay(true)?;
        let mut c = Self {
            io: BufReader::new(tcp),
            sha: String::new(),
        };
        if let Some(pw) = &target.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = &target.username {
                args.push(u.as_bytes());
            }
            args.push(pw.as_bytes());
            c.expect_ok(&args).await?;
        }
        if target.db != 0 {
            c.expect_ok(&[b"SELECT", target.db.to_string().as_bytes()])
                .await?;
        }
        c.sha = match c.call(&[b"SCRIPT", b"LOAD", SCRIPT.as_bytes()]).await? {
            Reply::Bulk(Some(sha)) => {
                String::from_utf8(sha).map_err(|_| protocol("SCRIPT LOAD answer"))?
            }
            other => return Err(protocol(format!("SCRIPT LOAD answered {other:?}"))),
        };
        Ok(c)
    }

    async fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.io.get_mut().write_all(&encode(args)).await?;
        read_reply(&mut self.io).await
    }

    async fn expect_ok(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        match self.call(args).await? {
            Reply::Simple(_) => Ok(()),
            Reply::Error(e) => Err(std::io::Error::other(format!(
                "{} refused: {e}",
                String::from_utf8_lossy(args[0])
            ))),
            other => Err(protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// Runs the script on `key`: `Ok(None)` when a token was taken, else
    /// the wait in milliseconds.
    async fn take(&mut self, key: &str, rate: &str, burst: &str) -> std::io::Result<Option<u64>> {
        let sha = self.sha.clone();
        let mut reply = self
            .call(&[
                b"EVALSHA",
                sha.as_bytes(),
                b"1",
                key.as_bytes(),
                rate.as_bytes(),
                burst.as_bytes(),
            ])
            .await?;
        // the script cache was flushed (SCRIPT FLUSH, a restart behind a proxy)
        if matches!(&reply, Reply::Error(e) if e.starts_with("NOSCRIPT")) {
            reply = self
                .call(&[
                    b"EVAL",
                    SCRIPT.as_bytes(),
                    b"1",
                    key.as_bytes(),
                    rate.as_bytes(),
                    burst.as_bytes(),
                ])
                .await?;
        }
        match reply {
            Reply::Array(Some(v)) => match v.as_slice() {
                [Reply::Int(1), _] => Ok(None),
                [Reply::Int(0), Reply::Int(ms)] => Ok(Some(u64::try_from(*ms).unwrap_or(0))),
                _ => Err(protocol(format!("script answered {v:?}"))),
            },
            Reply::Error(e) => Err(std::io::Error::other(format!("script failed: {e}"))),
            other => Err(protocol(format!("script answered {other:?}"))),
        }
    }
}

/// The shared token buckets, with what to do while Redis is away.
pub struct SharedLimiter {
    target: RedisTarget,
    prefix: String,
    rate: String,
    burst: String,
    idle: Mutex<Vec<Conn>>,
    in_use: tokio::sync::Semaphore,
    /// Set while Redis is failing: when it is tried again.
    down_until: Mutex<Option<Instant>>,
    /// Whether the fall-back was logged (once per outage).
    logged: AtomicBool,
}

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl SharedLimiter {
    /// `rate` tokens per second (above 0), at most `burst` saved, in keys
    /// `prefix` + the principal's key.
    pub fn new(target: RedisTarget, prefix: String, rate: f64, burst: u32) -> Self {
        Self {
            target,
            prefix,
            rate: format!("{rate}"),
            burst: burst.max(1).to_string(),
            idle: Mutex::new(Vec::new()),
            in_use: tokio::sync::Semaphore::new(MAX_CONNECTIONS),
            down_until: Mutex::new(None),
            logged: AtomicBool::new(false),
        }
    }

    /// Takes one token: `Ok(())`, or `Err(seconds)` until one is there;
    /// `None` when Redis could not answer (the caller limits locally).
    pub async fn check(&self, key: &str) -> Option<Result<(), u64>> {
        let now = Instant::now();
        {
            let down = self
                .down_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if down.is_some_and(|until| now < until) {
                return None;
            }
        }
        let full_key = format!("{}{key}", self.prefix);
        let result = tokio::time::timeout(TIMEOUT, async {
            let _permit = self
                .in_use
                .acquire()
                .await
                .map_err(|_| std::io::Error::other("limiter closed"))?;
            let pooled = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => Conn::open(&self.target).await?,
            };
            let taken = conn.take(&full_key, &self.rate, &self.burst).await?;
            let mut idle = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if idle.len() < POOL {
                idle.push(conn);
            }
            Ok::<_, std::io::Error>(taken)
        })
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        match result {
            Ok(taken) => {
                if self.logged.swap(false, Ordering::Relaxed) {
                    tracing::info!(redis = %self.target.addr, "shared rate limiter reachable again");
                }
                Some(taken.map_or(Ok(()), |ms| Err(ms.div_ceil(1000).max(1))))
            }
            Err(e) => {
                *self
                    .down_until
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Instant::now() + RETRY_AFTER_FAILURE);
                if !self.logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        redis = %self.target.addr,
                        error = %e,
                        "shared rate limiter unreachable: each gateway replica limits on its own until it is back"
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> std::io::Result<Reply> {
        read_reply(&mut BufReader::new(bytes)).await
    }

    #[tokio::test]
    async fn replies_parse_and_bad_ones_are_errors() {
        assert_eq!(parse(b"+OK\r\n").await.unwrap(), Reply::Simple("OK".into()));
        assert_eq!(
            parse(b"-NOSCRIPT No matching script\r\n").await.unwrap(),
            Reply::Error("NOSCRIPT No matching script".into())
        );
        assert_eq!(parse(b":-42\r\n").await.unwrap(), Reply::Int(-42));
        assert_eq!(
            parse(b"$3\r\nabc\r\n").await.unwrap(),
            Reply::Bulk(Some(b"abc".to_vec()))
        );
        assert_eq!(parse(b"$-1\r\n").await.unwrap(), Reply::Bulk(None));
        assert_eq!(
            parse(b"*2\r\n:0\r\n:1500\r\n").await.unwrap(),
            Reply::Array(Some(vec![Reply::Int(0), Reply::Int(1500)]))
        );
        assert_eq!(
            parse(b"*1\r\n*1\r\n$0\r\n\r\n").await.unwrap(),
            Reply::Array(Some(vec![Reply::Array(Some(vec![Reply::Bulk(Some(
                vec![]
            ))]))]))
        );
        for bad in [
            &b""[..],
            b"+OK\n",
            b"?x\r\n",
            b":x\r\n",
            b"$3\r\nabcd\r\n",
            b"$99999999\r\n",
            b"*1\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(
                parse(bad).await.is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            encode(&[b"EVALSHA", b"ab", b"1", b"k:\r\n"]),
            b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$4\r\nk:\r\n\r\n".to_vec()
        );
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_reported_as_none_and_not_retried_at_once() {
        // a port nothing listens on
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let target: RedisTarget = format!("redis://{addr}").parse().unwrap();
        let shared = SharedLimiter::new(target, "t:".into(), 1.0, 1);
        assert_eq!(shared.check("a").await, None);
        let started = Instant::now();
        assert_eq!(shared.check("a").await, None);
        assert!(started.elapsed() < Duration::from_millis(50));
    }
}
