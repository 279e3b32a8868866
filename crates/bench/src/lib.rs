//! The project's load tool. Every throughput figure in docs/benchmarks is
//! taken with [`load::run`] (closed loop, warm-up excluded, percentiles
//! from [`histogram::Histogram`]) and set beside two ceilings measured in
//! the same run on the same machine: a bare tonic unary call
//! ([`hello::ceiling`]) and the raw durable earn transaction driven by
//! `pgbench` ([`pgbench::earn_ceiling`]). Method: docs/benchmarks/method.md.

pub mod client;
pub mod hello;
pub mod histogram;
pub mod load;
pub mod pgbench;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot start the server: {0}")]
    Serve(std::io::Error),
    #[error("cannot connect to {uri}: {reason}")]
    Connect { uri: String, reason: String },
    #[error("{0}")]
    Pgbench(String),
}

/// The machine's load averages (1, 5, 15 minutes) as `uptime` shows them,
/// to print beside figures: other builds share the cores.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(", "),
    )
}
