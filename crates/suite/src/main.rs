//! `loyalty`: the whole suite in one process (no arguments), or one service
//! alone (`loyalty serve <service>`). `loyalty --help` lists every option.

use std::net::SocketAddr;
use std::process::ExitCode;

use loyalty::cli::{self, Mode};
use loyalty::{Selection, start};
use loyalty_common::config::{Config, Source, standalone_port};
use loyalty_common::server::Shutdown;

fn main() -> ExitCode {
    let (mode, flags) = match cli::parse(std::env::args()) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    };
    let default_listen = match &mode {
        Mode::Suite => SocketAddr::from(([127, 0, 0, 1], 50051)),
        Mode::Serve(s) => SocketAddr::from(([127, 0, 0, 1], standalone_port(s))),
    };
    let config = match Source::load(&flags, std::env::vars())
        .and_then(|src| Config::from_source(&src, default_listen))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loyalty: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loyalty: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(mode, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loyalty: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mode: Mode, config: Config) -> anyhow::Result<()> {
    let service_name = match &mode {
        Mode::Suite => "loyalty".to_owned(),
        Mode::Serve(s) => format!("loyalty-{s}"),
    };
    let _telemetry =
        loyalty_common::telemetry::init(&service_name, &config.log, config.log_format)?;
    let selection = match &mode {
        Mode::Suite => Selection::suite(),
        Mode::Serve(s) => {
            Selection::one(s).ok_or_else(|| anyhow::anyhow!("unknown service {s}"))?
        }
    };
    let shutdown = Shutdown::on_signals();
    let running = start(&config, selection, shutdown).await?;
    print_banner(&running);
    running.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

fn print_banner(running: &loyalty::Running) {
    println!(
        "loyalty {} ready in {} ms ({})",
        env!("CARGO_PKG_VERSION"),
        running.startup.as_millis(),
        running.description
    );
    if let Some(addr) = running.grpc_addr {
        println!("  gRPC     {addr}   (health: grpc.health.v1.Health, reflection on)");
    }
    if let Some(addr) = running.http_addr {
        println!("  gateway  http://{addr}   (/healthz, /readyz)");
    }
    if let Some(dev) = &running.dev_credential {
        println!(
            "  development credential ({}), valid until {}:",
            dev.description, dev.expires_at
        );
        println!("    authorization: Bearer {}", dev.token);
        if let Some(addr) = running.grpc_addr {
            println!(
                "  try: grpcurl -plaintext -H 'authorization: Bearer <token>' {addr} loyalty.rewards.v1.RewardsService/GetServiceInfo"
            );
        }
    }
    println!("  stop with Ctrl-C (drains in-flight calls)");
}
