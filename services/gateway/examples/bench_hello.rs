//! The ceiling for the gateway benchmarks: a bare tonic server answering
//! one unary call (grpc.health.v1 Check) with no layers at all.
//! `cargo run --release -p loyalty-gateway --example bench_hello -- 127.0.0.1:50090`

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50090".to_owned())
        .parse()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    println!("hello on {addr}");
    tonic::transport::Server::builder()
        .add_service(health)
        .serve(addr)
        .await?;
    Ok(())
}
