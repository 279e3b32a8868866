//! Closed-loop load: `concurrency` tasks each issue requests back to back
//! (the next one as soon as the previous answered), for `warmup` and then
//! `duration`. Only requests that start after the warm-up and finish
//! before the end are counted, so neither cold connections nor requests
//! cut by the end skew the figures.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::histogram::Histogram;

/// How a load is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadConfig {
    /// Requests in flight at any time (one task each).
    pub concurrency: usize,
    /// Measured time, after the warm-up.
    pub duration: Duration,
    /// Time the load runs before measuring starts.
    pub warmup: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
        }
    }
}

/// What a load run measured. Latencies are of successful requests, in
/// microseconds; `requests` counts errors too.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub concurrency: usize,
    pub requests: u64,
    pub errors: u64,
    /// Completed requests (errors included) per second of measured time.
    pub rps: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The first error seen, to tell why `errors` is not zero.
    pub first_error: Option<String>,
}

impl Report {
    /// A report of `latencies` (successful requests) plus `errors` over
    /// `elapsed` of measured time.
    pub fn from_histogram(
        latencies: &Histogram,
        errors: u64,
        elapsed: Duration,
        concurrency: usize,
    ) -> Self {
        let requests = latencies.count() + errors;
        let secs = elapsed.as_secs_f64();
        Self {
            concurrency,
            requests,
            errors,
            rps: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            p50_us: latencies.quantile(0.5),
            p90_us: latencies.quantile(0.9),
            p99_us: latencies.quantile(0.99),
            p999_us: latencies.quantile(0.999),
            max_us: latencies.max(),
            first_error: None,
        }
    }

    /// Header (two lines) of the table [`markdown_row`](Self::markdown_row)
    /// fills.
    pub fn markdown_header() -> &'static str {
        "| scenario | conc. | requests | errors | rps | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n\
         |----------|------:|---------:|-------:|----:|-------:|-------:|-------:|---------:|-------:|"
    }

    /// One table row, latencies in milliseconds.
    pub fn markdown_row(&self, label: &str) -> String {
        let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
        format!(
            "| {label} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            self.concurrency,
            self.requests,
            self.errors,
            self.rps,
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
        )
    }
}

/// What one load task saw.
#[derive(Default)]
struct Tally {
    latencies: Histogram,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `make(i)` (i = 0, 1, 2, … across all tasks) in a closed loop as
/// `cfg` says and reports what was measured after the warm-up.
pub async fn run<F, Fut, E>(cfg: &LoadConfig, make: F) -> Report
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    let concurrency = cfg.concurrency.max(1);
    let make = Arc::new(make);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (make, next) = (make.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let outcome = make(next.fetch_add(1, Ordering::Relaxed)).await;
                let done = Instant::now();
                if sent < measure_from || done > end {
                    continue;
                }
                match outcome {
                    Ok(()) => tally.latencies.record((done - sent).as_micros() as u64),
                    Err(e) => {
                        tally.errors += 1;
                        if tally.first_error.is_none() {
                            tally.first_error = Some(e.to_string());
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        match t.await {
            Ok(tally) => {
                all.latencies.merge(&tally.latencies);
                all.errors += tally.errors;
                all.first_error = all.first_error.or(tally.first_error);
            }
            Err(e) => {
                all.errors += 1;
                all.first_error
                    .get_or_insert_with(|| format!("load task failed: {e}"));
            }
        }
    }
    let mut report = Report::from_histogram(&all.latencies, all.errors, cfg.duration, concurrency);
    report.first_error = all.first_error;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(concurrency: usize) -> LoadConfig {
        LoadConfig {
            concurrency,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(100),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_errors_and_excludes_the_warmup() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let report = run(&quick(4), move |i| {
            c.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if i % 2 == 0 {
                    Err(format!("failed {i}"))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        let issued = calls.load(Ordering::Relaxed);
        assert!(report.requests > 0);
        assert!(report.requests < issued, "warm-up calls are not counted");
        let ok = report.requests - report.errors;
        // the four tasks alternate over shared indices: about half fail
        assert!(
            report.errors.abs_diff(ok) <= report.requests / 4 + 4,
            "{report:?}"
        );
        assert!(
            report
                .first_error
                .as_deref()
                .is_some_and(|e| e.starts_with("failed "))
        );
        assert_eq!(report.concurrency, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn latencies_are_those_of_the_requests() {
        // every request sleeps at least 2 ms: no percentile can be lower
        let report = run(&quick(2), |_| async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<(), String>(())
        })
        .await;
        assert_eq!(report.errors, 0);
        assert!(report.p50_us >= 2000, "{report:?}");
        assert!(report.p50_us <= report.p90_us && report.p90_us <= report.p99_us);
        assert!(report.p99_us <= report.p999_us && report.p999_us <= report.max_us);
        // closed loop: at most `concurrency` requests per 2 ms
        assert!(report.rps <= 2.0 * 500.0 + 1.0, "{report:?}");
        let row = report.markdown_row("sleep");
        assert!(row.starts_with("| sleep | 2 | "), "{row}");
        assert_eq!(
            row.matches('|').count(),
            Report::markdown_header()
                .lines()
                .next()
                .unwrap()
                .matches('|')
                .count()
        );
    }
}
