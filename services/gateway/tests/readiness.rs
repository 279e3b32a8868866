//! The gateway over real HTTP: liveness, readiness that names the service
//! that is down, and JSON errors for unknown routes.

use std::collections::BTreeMap;

use loyalty_common::config::{Config, Source};
use loyalty_common::server::Shutdown;
use loyalty_gateway::{Gateway, Upstreams, bind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await.unwrap();
    let status = buf[9..12].parse().unwrap();
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn readiness_names_the_service_that_is_down() {
    // nothing listens on these ports
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut addrs = BTreeMap::new();
    addrs.insert("rewards".to_owned(), vec![format!("http://{closed}")]);
    let config = Config::from_source(&Source::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let secret = loyalty_common::auth::Secret::new(vec![7; 32]);
    let gateway = Gateway::new(&addrs, &config.gateway, &secret, Vec::new()).unwrap();
    let (_trigger, shutdown) = Shutdown::new();
    let (addr, serve) = bind("127.0.0.1:0".parse().unwrap(), gateway, shutdown)
        .await
        .unwrap();
    tokio::spawn(serve);

    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");

    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["services"]["rewards"], "UNAVAILABLE");

    let (status, body) = get(addr, "/v1/nothing/here").await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "NOT_FOUND");
}

#[test]
fn a_bad_upstream_address_is_refused_at_start() {
    let mut addrs = BTreeMap::new();
    addrs.insert("rewards".to_owned(), vec!["http://bad host".to_owned()]);
    let err = Upstreams::new(&addrs, std::time::Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("rewards"), "{err}");
}
