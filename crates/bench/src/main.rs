//! `loyalty-bench`: prints the ceilings as markdown table rows.
//!
//! - `loyalty-bench hello [--concurrency 1,16,64] [--duration 10] [--warmup 2] [--channels N]`
//! - `loyalty-bench pgbench-earn [--url postgres://…] [--clients 1,8,32] [--seconds 10]`

use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgMatches, Command};
use loyalty_bench::load::{LoadConfig, Report};
use loyalty_bench::{client, hello, load_average, pgbench};

fn cli() -> Command {
    let list = |name: &'static str, default: &'static str, help: &'static str| {
        Arg::new(name).long(name).default_value(default).help(help)
    };
    Command::new("loyalty-bench")
        .about("Ceilings the platform's figures are compared with (docs/benchmarks/method.md)")
        .subcommand_required(true)
        .subcommand(
            Command::new("hello")
                .about("bare tonic unary hello-world, server and client in this process")
                .arg(list(
                    "concurrency",
                    "1,16,64",
                    "requests in flight, comma-separated list",
                ))
                .arg(list("duration", "10", "measured seconds per row"))
                .arg(list("warmup", "2", "seconds of load before measuring"))
                .arg(list(
                    "channels",
                    "0",
                    "HTTP/2 connections in the client pool (0: the standard pool)",
                )),
        )
        .subcommand(
            Command::new("pgbench-earn")
                .about(
                    "the raw durable earn transaction driven by pgbench (needs pgbench and psql)",
                )
                .arg(list(
                    "url",
                    "postgres://postgres@127.0.0.1:5432/postgres",
                    "PostgreSQL server (a scratch schema bench_earn is created and dropped)",
                ))
                .arg(list(
                    "clients",
                    "1,8,32",
                    "pgbench clients, comma-separated list",
                ))
                .arg(list(
                    "seconds",
                    "10",
                    "seconds per row (the first fifth, at most 1 s, is warm-up)",
                )),
        )
}

fn numbers(m: &ArgMatches, name: &str) -> Result<Vec<u64>, String> {
    m.get_one::<String>(name)
        .map_or("", String::as_str)
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .map_err(|_| format!("--{name}: {n:?} is not a whole number"))
        })
        .collect()
}

fn number(m: &ArgMatches, name: &str) -> Result<u64, String> {
    match numbers(m, name)?.as_slice() {
        [n] => Ok(*n),
        _ => Err(format!("--{name}: one number expected")),
    }
}

async fn hello_rows(m: &ArgMatches) -> Result<(), String> {
    let channels = match number(m, "channels")? {
        0 => client::CHANNELS,
        n => n as usize,
    };
    println!(
        "hello-world ceiling, {channels} channel(s); load before: {}",
        load_average()
    );
    println!("{}", Report::markdown_header());
    for concurrency in numbers(m, "concurrency")? {
        let cfg = LoadConfig {
            concurrency: concurrency as usize,
            duration: Duration::from_secs(number(m, "duration")?),
            warmup: Duration::from_secs(number(m, "warmup")?),
        };
        let report = hello::ceiling_with(&cfg, channels)
            .await
            .map_err(|e| e.to_string())?;
        println!("{}", report.markdown_row("hello-world"));
        if let Some(e) = &report.first_error {
            eprintln!("first error: {e}");
        }
    }
    println!("load after: {}", load_average());
    Ok(())
}

fn pgbench_rows(m: &ArgMatches) -> Result<(), String> {
    let url = m.get_one::<String>("url").map_or("", String::as_str);
    let seconds = number(m, "seconds")?;
    println!("pgbench earn ceiling; load before: {}", load_average());
    println!("{}", Report::markdown_header());
    let mut own = Vec::new();
    for clients in numbers(m, "clients")? {
        let r = pgbench::earn_ceiling(url, clients as usize, seconds).map_err(|e| e.to_string())?;
        println!("{}", r.report.markdown_row("pgbench earn"));
        own.push((clients, r.pgbench_tps, r.pgbench_latency_ms));
    }
    println!("load after: {}", load_average());
    for (clients, tps, lat) in own {
        println!(
            "pgbench's own summary, {clients} clients: tps {tps:.0}, latency average {lat:.3} ms"
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let matches = cli().get_matches();
    let outcome = match matches.subcommand() {
        Some(("hello", m)) => tokio::runtime::Runtime::new()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(hello_rows(m))),
        Some(("pgbench-earn", m)) => pgbench_rows(m),
        _ => Err("unknown subcommand".into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loyalty-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
