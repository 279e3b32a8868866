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
