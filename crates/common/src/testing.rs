//! Test support shared by every crate's tests (feature `testing`): a fresh
//! database per test on SQLite (a temporary file) or PostgreSQL (a new
//! database on the server named by `LOYALTY_TEST_POSTGRES_URL`), and the NATS
//! server named by `LOYALTY_TEST_NATS_URL`.
//!
//! Suites that need PostgreSQL or NATS are `#[ignore]`d with a reason, so the
//! plain `cargo test` says which suites it skipped and why; CI runs them with
//! `--include-ignored` and the variables set, and then an unreachable server
//! fails the run.

use crate::db::{DatabaseUrl, Db, Migrations, PoolSettings};

/// Environment variable naming a PostgreSQL server for tests (any database
/// on it; each test creates its own).
pub const POSTGRES_ENV: &str = "LOYALTY_TEST_POSTGRES_URL";
/// Environment variable naming a NATS JetStream server for tests.
pub const NATS_ENV: &str = "LOYALTY_TEST_NATS_URL";

/// A database for one test; the SQLite file lives as long as this value.
#[derive(Debug)]
pub struct TestDb {
    pub db: Db,
    _dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for TestDb {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

/// Which engine a shared test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestEngine {
    Sqlite,
    Postgres,
}

impl TestEngine {
    /// A fresh, migrated database of this engine.
    pub async fn database(self, migrations: &[Migrations]) -> TestDb {
        let (url, dir) = self.fresh_url().await;
        let db = Db::open(&url, &PoolSettings::default(), migrations)
            .await
            .unwrap_or_else(|e| panic!("open test database: {e}"));
        TestDb { db, _dir: dir }
    }

    /// A URL of a fresh, empty database of this engine (not yet migrated),
    /// and the directory holding it for SQLite.
    pub async fn fresh_url(self) -> (DatabaseUrl, Option<tempfile::TempDir>) {
        match self {
            Self::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                (url.parse().expect("sqlite url"), Some(dir))
            }
            Self::Postgres => (fresh_postgres_database().await, None),
        }
    }
}

/// Creates a new database on the test PostgreSQL server and returns its URL.
pub async fn fresh_postgres_database() -> DatabaseUrl {
    use sqlx::Connection;
    let admin = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
        panic!("{POSTGRES_ENV} is not set: this suite needs a PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432/postgres")
    });
    let name = format!("loyalty_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("connect to {POSTGRES_ENV}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("create test database: {e}"));
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{name}").parse().expect("postgres url")
}

/// The NATS URL for tests; panics with the reason when unset.
pub fn nats_url() -> String {
    std::env::var(NATS_ENV).unwrap_or_else(|_| {
        panic!("{NATS_ENV} is not set: this suite needs NATS with JetStream, e.g. nats://127.0.0.1:4222")
    })
}

/// Defines one test per engine from an `async fn(TestEngine)`: `<name>_sqlite`
/// always runs; `<name>_postgres` is ignored unless asked for (CI asks).
#[macro_export]
macro_rules! test_on_both_engines {
    ($($name:ident),* $(,)?) => {
        $crate::__paste_engines! { $($name),* }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __paste_engines {
    ($($name:ident),*) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::testing::TestEngine::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PostgreSQL: set LOYALTY_TEST_POSTGRES_URL and run with --include-ignored (CI does)"]
                async fn postgres() {
                    super::$name($crate::testing::TestEngine::Postgres).await;
                }
            }
        )*
    };
}

/// Principals for tests: a program admin of `program`.
pub fn staff(program: &str) -> crate::auth::Principal {
    staff_with(program, &[crate::auth::Role::ProgramAdmin])
}

/// A staff principal of `program` holding `roles`.
pub fn staff_with(program: &str, roles: &[crate::auth::Role]) -> crate::auth::Principal {
    crate::auth::Principal::Staff {
        program_id: program.to_owned(),
        subject: "test-staff".to_owned(),
        roles: roles.to_vec(),
    }
}

/// A member acting for themselves.
pub fn member(program: &str, member_id: &str) -> crate::auth::Principal {
    crate::auth::Principal::Member {
        program_id: program.to_owned(),
        member_id: member_id.to_owned(),
    }
}

/// A backend system (POS, order system) of `program`.
pub fn backend(program: &str) -> crate::auth::Principal {
    crate::auth::Principal::System {
        program_id: program.to_owned(),
        key_id: "test-backend".to_owned(),
        role: crate::auth::Role::Backend,
    }
}

/// One or more services started as the launcher starts them (their own
/// fresh databases, the in-process bus, consumers subscribed before relays,
/// auth, health, reflection) on an ephemeral port, deciding by a manual
/// [`Clock`](crate::clock::Clock) that starts at the real now, sealing
/// with a random data key of their own. Scheduled jobs are not started:
/// tests trigger them.
pub struct TestService {
    addr: std::net::SocketAddr,
    channel: tonic::transport::Channel,
    runtimes: Vec<std::sync::Arc<crate::runtime::ServiceRuntime>>,
    bus: std::sync::Arc<dyn crate::events::EventBus>,
    clock: crate::clock::Clock,
    minter: crate::auth::Minter,
    trigger: crate::server::ShutdownTrigger,
    tasks: tokio::task::JoinSet<()>,
    /// The fresh databases of [`Self::start`], kept as long as the service.
    dbs: Vec<TestDb>,
}

impl std::fmt::Debug for TestService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestService")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestService {
    /// Starts `defs` on `engine`; panics with the cause if anything fails.
    pub async fn start(defs: &[crate::runtime::ServiceDef], engine: TestEngine) -> Self {
        let mut dbs = Vec::new();
        let mut opened = Vec::new();
        for def in defs {
            let db = engine.database(def.migrations).await;
            opened.push((*def, db.db.clone()));
            dbs.push(db);
        }
        let data_key = crate::data_key::DataKey::random().expect("OS random source");
        let mut svc = Self::start_on(opened, &data_key)
            .await
            .unwrap_or_else(|e| panic!("start test services: {}", error_chain(&e)));
        svc.dbs = dbs;
        svc
    }

    /// Starts `services` on databases the test opened itself (to start a
    /// service again on the database of an earlier one), sealing with
    /// `data_key`. A service refusing to start
    /// ([`ServiceDef::prepare`](crate::runtime::ServiceDef::prepare)) is
    /// the error; anything else panics with the cause.
    pub async fn start_on(
        services: Vec<(crate::runtime::ServiceDef, Db)>,
        data_key: &crate::data_key::DataKey,
    ) -> Result<Self, crate::runtime::StartError> {
        use std::sync::Arc;

        use crate::auth::{Minter, Secret, Verifier};
        use crate::events::{EventBus, InProcessBus};
        use crate::server::{GrpcServer, Shutdown};

        let secret = Secret::new(uuid::Uuid::new_v4().as_bytes().repeat(2));
        let verifier = Arc::new(Verifier::new(&secret, Vec::new()));
        let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new());
        let clock = crate::clock::Clock::manual(chrono::Utc::now());
        let (trigger, shutdown) = Shutdown::new();
        let mut server = GrpcServer::new(
            verifier,
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(5),
        );
        let assembled =
            crate::runtime::assemble(services, &bus, &clock, data_key, &mut server, &shutdown)
                .await;
        let runtimes: Vec<_> = match assembled {
            Ok(started) => started.into_iter().map(|(_, rt)| rt).collect(),
            Err(e) => {
                // stop what the services before it subscribed
                trigger.fire();
                return Err(e);
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for rt in &runtimes {
            let relay = rt
                .relay()
                .with_poll_interval(std::time::Duration::from_millis(20));
            tasks.spawn(relay.run(shutdown.clone()));
        }
        let (addr, serve) = server
            .bind("127.0.0.1:0".parse().expect("loopback"), shutdown)
            .await
            .unwrap_or_else(|e| panic!("bind test server: {e}"));
        tasks.spawn(async move {
            if let Err(e) = serve.await {
                panic!("test server failed: {e}");
            }
        });
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to test server: {e}"));
        Ok(Self {
            addr,
            channel,
            runtimes,
            bus,
            clock,
            minter: Minter::new(secret),
            trigger,
            tasks,
            dbs: Vec::new(),
        })
    }

    /// Where the gRPC server listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// A channel to the server (cheap to clone; HTTP/2 multiplexed).
    pub fn channel(&self) -> tonic::transport::Channel {
        self.channel.clone()
    }

    /// The runtime of the service named `name`.
    pub fn rt(&self, name: &str) -> &std::sync::Arc<crate::runtime::ServiceRuntime> {
        self.runtimes
            .iter()
            .find(|rt| rt.name == name)
            .unwrap_or_else(|| panic!("service {name} is not started in this test"))
    }

    /// The manual clock every started service decides by.
    pub fn clock(&self) -> &crate::clock::Clock {
        &self.clock
    }

    /// An internal token for `principal`, as the gateway would mint it.
    pub fn token(&self, principal: &crate::auth::Principal) -> String {
        self.minter
            .mint(principal, std::time::Duration::from_secs(3600))
            .expect("mint test token")
    }

    /// `msg` as a request from `principal`.
    pub fn request<T>(&self, msg: T, principal: &crate::auth::Principal) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        let value = format!("Bearer {}", self.token(principal))
            .parse()
            .expect("ascii token");
        req.metadata_mut().insert("authorization", value);
        req
    }

    /// Puts `events` on the bus as if another service had produced them;
    /// returns once every subscribed consumer applied them.
    pub async fn publish(&self, events: &[loyalty_proto::events::EventEnvelope]) {
        self.bus
            .publish(events)
            .await
            .unwrap_or_else(|e| panic!("publish test events: {e}"));
    }

    /// Every event `service` has written to its outbox, in commit order.
    pub async fn outbox(&self, service: &str) -> Vec<loyalty_proto::events::EventEnvelope> {
        use prost::Message;
        let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox ORDER BY seq")
            .fetch_all(self.rt(service).db.pool())
            .await
            .unwrap_or_else(|e| panic!("read {service} outbox: {e}"));
        rows.iter()
            .map(|b| loyalty_proto::events::EventEnvelope::decode(b.as_slice()).expect("envelope"))
            .collect()
    }

    /// Waits until every started service's outbox is published (so, on the
    /// in-process bus, applied by every consumer); panics after 10 s.
    pub async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        for rt in &self.runtimes {
            loop {
                rt.outbox.notify();
                let pending = crate::events::outbox::pending(&rt.db)
                    .await
                    .unwrap_or_else(|e| panic!("read {} outbox: {e}", rt.name));
                if pending == 0 {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} still has {pending} unpublished events after 10 s",
                    rt.name
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }

    /// Stops the server and relays (flushing what is pending).
    pub async fn stop(mut self) {
        self.trigger.fire();
        while let Some(res) = self.tasks.join_next().await {
            if let Err(e) = res
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// `err` and its causes, `: `-separated (what `{:#}` of anyhow prints), for
/// asserting on and reporting a start-up error.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}
