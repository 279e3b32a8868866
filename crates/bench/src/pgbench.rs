//! The database ceiling: the raw durable earn transaction
//! (scripts/pgbench/earn.sql: ledger insert, balance update, outbox insert,
//! one commit) driven by PostgreSQL's own `pgbench` with N clients, on a
//! scratch schema `bench_earn` (scripts/pgbench/earn_schema.sql) that this
//! module creates. One transaction per commit: what a service writing one
//! transaction per request can reach at best.
//!
//! Needs the `pgbench` and `psql` binaries (Debian: postgresql-client).
//! Percentiles come from pgbench's per-transaction log through the same
//! histogram as every other figure; the first second (a fifth of short
//! runs) is warm-up and not counted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::BenchError;
use crate::histogram::Histogram;
use crate::load::Report;

/// The transaction pgbench runs.
pub const EARN_SCRIPT: &str = include_str!("../../../scripts/pgbench/earn.sql");
/// The scratch schema it runs on.
pub const EARN_SCHEMA: &str = include_str!("../../../scripts/pgbench/earn_schema.sql");
/// Members in the scratch schema: enough that clients rarely meet on a row.
pub const EARN_MEMBERS: u32 = 10_000;

/// What a pgbench run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PgReport {
    /// Measured after the warm-up, from pgbench's transaction log.
    pub report: Report,
    /// pgbench's own figure over the whole run (warm-up included).
    pub pgbench_tps: f64,
    /// pgbench's own average latency over the whole run.
    pub pgbench_latency_ms: f64,
}

/// Creates the scratch schema, runs the earn transaction with `clients`
/// connections for `seconds`, and drops the schema. Two runs on one
/// database at once would share the schema: run one at a time.
pub fn earn_ceiling(pg_url: &str, clients: usize, seconds: u64) -> Result<PgReport, BenchError> {
    let clients = clients.max(1);
    let seconds = seconds.max(1);
    create_schema(pg_url)?;
    let dir = scratch_dir()?;
    let outcome = run_pgbench(pg_url, clients, seconds, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    // scratch only: leave the database as it was
    let _ = Command::new("psql")
        .arg(pg_url)
        .args(["-X", "-q", "-c", "DROP SCHEMA IF EXISTS bench_earn CASCADE"])
        .output();
    outcome
}

fn create_schema(pg_url: &str) -> Result<(), BenchError> {
    let mut psql = Command::new("psql")
        .arg(pg_url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("members={EARN_MEMBERS}"))
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool_error("psql", &e))?;
    if let Some(mut stdin) = psql.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(EARN_SCHEMA.as_bytes())
            .map_err(|e| tool_error("psql", &e))?;
    }
    let out = psql
        .wait_with_output()
        .map_err(|e| tool_error("psql", &e))?;
    if !out.status.success() {
        return Err(BenchError::Pgbench(format!(
            "creating the scratch schema failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn run_pgbench(
    pg_url: &str,
    clients: usize,
    seconds: u64,
    dir: &Path,
) -> Result<PgReport, BenchError> {
    let script = dir.join("earn.sql");
    std::fs::write(&script, EARN_SCRIPT).map_err(|e| tool_error("pgbench", &e))?;
    let out = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-f"])
        .arg(&script)
        .arg("-c")
        .arg(clients.to_string())
        // pgbench's own threads; more than the cores only adds switching
        .arg("-j")
        .arg(clients.min(2).to_string())
        .arg("-T")
        .arg(seconds.to_string())
        .arg("-D")
        .arg(format!("members={EARN_MEMBERS}"))
        .arg("-l")
        .arg("--log-prefix")
        .arg(dir.join("tx"))
        .arg(pg_url)
        .output()
        .map_err(|e| tool_error("pgbench", &e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(BenchError::Pgbench(format!(
            "pgbench failed: {}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let pgbench_tps = summary_figure(&stdout, "tps = ")?;
    let pgbench_latency_ms = summary_figure(&stdout, "latency average = ")?;
    let mut lines = String::new();
    for entry in std::fs::read_dir(dir).map_err(|e| tool_error("pgbench", &e))? {
        let path = entry.map_err(|e| tool_error("pgbench", &e))?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("tx"))
        {
            lines.push_str(&std::fs::read_to_string(&path).map_err(|e| tool_error("pgbench", &e))?);
        }
    }
    let mut report = report_from_log(&lines, Duration::from_secs(seconds));
    report.concurrency = clients;
    Ok(PgReport {
        report,
        pgbench_tps,
        pgbench_latency_ms,
    })
}

/// The number after `prefix` on the summary line that starts with it.
fn summary_figure(stdout: &str, prefix: &str) -> Result<f64, BenchError> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| BenchError::Pgbench(format!("no {prefix:?} in pgbench's output: {stdout}")))
}

/// Warm-up excluded from pgbench runs of `run` seconds.
pub fn warmup_of(run: Duration) -> Duration {
    (run / 5).min(Duration::from_secs(1))
}

/// A report from pgbench's per-transaction log lines
/// (`client tx latency_us script epoch_s epoch_us`, the end time last)
/// of a run of `run`: transactions that started after the warm-up and
/// ended within the run are counted; a latency that is not a number
/// (a failed transaction) is an error.
pub fn report_from_log(log: &str, run: Duration) -> Report {
    let entries: Vec<(Option<u64>, u64)> = log
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (latency, secs, micros) = (f.get(2)?, f.get(4)?, f.get(5)?);
            let end = secs.parse::<u64>().ok()? * 1_000_000 + micros.parse::<u64>().ok()?;
            Some((latency.parse::<u64>().ok(), end))
        })
        .collect();
    let warmup = warmup_of(run);
    let measured = run.saturating_sub(warmup);
    let Some(first_start) = entries
        .iter()
        .map(|(lat, end)| end - lat.unwrap_or(0))
        .min()
    else {
        return Report::from_histogram(&Histogram::new(), 0, measured, 0);
    };
    let from = first_start + warmup.as_micros() as u64;
    let until = first_start + run.as_micros() as u64;
    let mut latencies = Histogram::new();
    let mut errors = 0;
    for (lat, end) in entries {
        let start = end - lat.unwrap_or(0);
        if start < from || end > until {
            continue;
        }
        match lat {
            Some(us) => latencies.record(us),
            None => errors += 1,
        }
    }
    Report::from_histogram(&latencies, errors, measured, 0)
}

fn scratch_dir() -> Result<PathBuf, BenchError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("loyalty-pgbench-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| tool_error("pgbench", &e))?;
    Ok(dir)
}

fn tool_error(tool: &str, e: &std::io::Error) -> BenchError {
    BenchError::Pgbench(format!(
        "{tool}: {e} (Debian: apt-get install postgresql-client)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_measured_after_the_warmup() {
        // run of 5 s: warm-up 1 s. Times relative to 1000 s.
        let log = "\
0 1 2000 0 1000 2000
0 2 3000 0 1001 5000
1 1 4000 0 1002 0
1 2 failed 0 1003 0
1 3 9000 0 1005 1000
";
        let r = report_from_log(log, Duration::from_secs(5));
        // first start: 1000.000000; counted: started >= 1001.0 and ended <= 1005.0
        assert_eq!(r.requests, 3, "{r:?}");
        assert_eq!(r.errors, 1);
        assert_eq!(r.max_us, 4000);
        assert!((r.rps - 3.0 / 4.0).abs() < 1e-9);
    }

    #[test]
    fn summary_figures_are_read() {
        let out = "latency average = 1.867 ms\ninitial connection time = 22.366 ms\ntps = 1071.284578 (without initial connection time)\n";
        assert!((summary_figure(out, "tps = ").unwrap() - 1_071.284_578).abs() < 1e-9);
        assert!((summary_figure(out, "latency average = ").unwrap() - 1.867).abs() < 1e-9);
        assert!(summary_figure("nothing", "tps = ").is_err());
    }

    #[test]
    #[ignore = "needs PostgreSQL and pgbench: set LOYALTY_TEST_POSTGRES_URL and run with --include-ignored (CI does)"]
    fn pgbench_runs_the_earn_transaction() {
        let url = std::env::var("LOYALTY_TEST_POSTGRES_URL").expect("LOYALTY_TEST_POSTGRES_URL");
        let r = earn_ceiling(&url, 2, 2).unwrap();
        assert!(r.report.requests > 0, "{r:?}");
        assert_eq!(r.report.errors, 0);
        assert!(r.pgbench_tps > 0.0);
        assert_eq!(r.report.concurrency, 2);
    }
}
