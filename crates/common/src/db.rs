//! One way for every service to open its own database from a URL
//! (`sqlite://…` for the embedded default, `postgres://…` in production),
//! run its embedded migrations, and hand repositories a pool.
//!
//! Storage code is written once against `sqlx::Any` (ids as TEXT, timestamps
//! as BIGINT microseconds, payloads as BLOB/BYTEA) and the same tests run on
//! both engines. The few places where dialects differ ask [`Db::engine`].

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Executor, Transaction};

/// A write transaction on a service database.
pub type Tx = Transaction<'static, Any>;

/// The storage engine behind a [`Db`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// A validated database URL: only the two engines we test against.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    url: String,
    engine: Engine,
}

impl std::fmt::Debug for DatabaseUrl {
    // never print credentials
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl DatabaseUrl {
    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The URL without a password, for logs and messages.
    pub fn redacted(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let creds = &self.url[s + 3..at];
                let user = creds.split(':').next().unwrap_or_default();
                format!("{}{}:***{}", &self.url[..s + 3], user, &self.url[at..])
            }
            _ => self.url.clone(),
        }
    }

    /// For SQLite, the file the URL points at (None for in-memory).
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        if self.engine != Engine::Sqlite {
            return None;
        }
        let rest = self
            .url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:");
        let path = rest.split('?').next().unwrap_or_default();
        (!path.is_empty() && path != ":memory:").then(|| path.into())
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let engine = if s.starts_with("sqlite:") {
            Engine::Sqlite
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Engine::Postgres
        } else {
            return Err(format!(
                "unsupported database URL {s:?}: expected sqlite://<file> or postgres://<user>@<host>/<db>"
            ));
        };
        Ok(Self {
            url: s.to_owned(),
            engine,
        })
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Migrations of one owner (the common tables, or one service), per engine.
/// Each owner keeps its own history table so their version numbers never
/// collide.
#[derive(Clone, Copy)]
pub struct Migrations {
    /// History table, e.g. `_loyalty_common_migrations`.
    pub table: &'static str,
    pub sqlite: fn() -> Migrator,
    pub postgres: fn() -> Migrator,
}

impl std::fmt::Debug for Migrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrations")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// The tables every service has: outbox, inbox, idempotency keys, job leases.
pub const COMMON_MIGRATIONS: Migrations = Migrations {
    table: "_loyalty_common_migrations",
    sqlite: || sqlx::migrate!("migrations/sqlite"),
    postgres: || sqlx::migrate!("migrations/postgres"),
};

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create directory for {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot migrate {url} ({table}): {source}")]
    Migrate {
        url: String,
        table: &'static str,
        source: sqlx::migrate::MigrateError,
    },
}

/// Pool settings; the defaults suit a service replica.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// A service's database: a pool for reads and a pool for write
/// transactions. On SQLite the writer is a single connection, so writers
/// queue in-process instead of spinning on SQLITE_BUSY; on PostgreSQL both
/// are the same pool.
#[derive(Clone)]
pub struct Db {
    engine: Engine,
    url: DatabaseUrl,
    read: AnyPool,
    write: AnyPool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens the database, creating an SQLite file (and its directory) if
    /// needed, and runs the common migrations then each of `migrations`.
    pub async fn open(
        url: &DatabaseUrl,
        settings: &PoolSettings,
        migrations: &[Migrations],
    ) -> Result<Self, DbError> {
        install_default_drivers();
        let connect_err = |source| DbError::Connect {
            url: url.redacted(),
            source,
        };
        let db = match url.engine() {
            Engine::Sqlite => {
                if let Some(path) = url.sqlite_path()
                    && let Some(dir) = path.parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                let conn_url = sqlite_url_with_create(url.as_str());
                let opts = |n: u32| {
                    AnyPoolOptions::new()
                        .max_connections(n)
                        .acquire_timeout(settings.acquire_timeout)
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                conn.execute(
                                    "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                                     PRAGMA synchronous = FULL;",
                                )
                                .await?;
                                Ok(())
                            })
                        })
                };
                let write = opts(1).connect(&conn_url).await.map_err(connect_err)?;
                // WAL lets readers run beside the writer; it is persistent.
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&write)
                    .await
                    .map_err(connect_err)?;
                let read = opts(settings.max_connections.max(2))
                    .connect(&conn_url)
                    .await
                    .map_err(connect_err)?;
                Self {
                    engine: Engine::Sqlite,
                    url: url.clone(),
                    read,
                    write,
                }
            }
            Engine::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(settings.max_connections)
                    .acquire_timeout(settings.acquire_timeout)
                    .connect(url.as_str())
                    .await
                    .map_err(connect_err)?;
                Self {
                    engine: Engine::Postgres,
                    url: url.clone(),
                    read: pool.clone(),
                    write: pool,
                }
            }
        };
        for m in std::iter::once(&COMMON_MIGRATIONS).chain(migrations) {
            db.migrate(m).await?;
        }
        Ok(db)
    }

    async fn migrate(&self, m: &Migrations) -> Result<(), DbError> {
        let mut migrator = match self.engine {
            Engine::Sqlite => (m.sqlite)(),
            Engine::Postgres => (m.postgres)(),
        };
        migrator.dangerous_set_table_name(m.table);
        migrator
            .run(&self.write)
            .await
            .map_err(|source| DbError::Migrate {
                url: self.url.redacted(),
                table: m.table,
                source,
            })
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// Pool for reads outside a transaction.
    pub fn pool(&self) -> &AnyPool {
        &self.read
    }

    /// Starts a write transaction. On SQLite it takes the write lock up
    /// front (`BEGIN IMMEDIATE`) so that it never fails half-way on a lock
    /// upgrade.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self.engine {
            Engine::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await,
            Engine::Postgres => self.write.begin().await,
        }
    }

    /// Highest migration version applied from the given owner's table.
    pub async fn schema_version(&self, m: &Migrations) -> Result<i64, sqlx::Error> {
        let sql = format!(
            "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM {}",
            m.table
        );
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .fetch_one(&self.read)
            .await
    }

    /// Closes both pools, waiting for connections to be returned.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

fn sqlite_url_with_create(url: &str) -> String {
    if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// Now as microseconds since the Unix epoch: how every timestamp is stored.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The engine a transaction runs on.
pub fn engine_of(tx: &mut Tx) -> Engine {
    let conn: &mut sqlx::AnyConnection = tx;
    if conn.backend_name().eq_ignore_ascii_case("postgresql") {
        Engine::Postgres
    } else {
        Engine::Sqlite
    }
}

/// The SQL type of a column of [`json_rows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    Text,
    BigInt,
}

/// A FROM item (aliased `alias`) reading rows that are bound as ONE
/// parameter `$param`: a JSON array of objects with the given columns
/// (null for SQL NULL). A set-based write then binds one value however many
/// rows it writes, so its SQL and its prepared statement stay the same for
/// every batch size.
pub fn json_rows(
    engine: Engine,
    param: usize,
    alias: &str,
    columns: &[(&str, JsonType)],
) -> String {
    match engine {
        Engine::Postgres => {
            let cols = columns
                .iter()
                .map(|(name, ty)| match ty {
                    JsonType::Text => format!("{name} text"),
                    JsonType::BigInt => format!("{name} bigint"),
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("jsonb_to_recordset(CAST(${param} AS jsonb)) AS {alias}({cols})")
        }
        Engine::Sqlite => {
            let cols = columns
                .iter()
                .map(|(name, ty)| match ty {
                    JsonType::Text => format!("CAST(value ->> '{name}' AS TEXT) AS {name}"),
                    JsonType::BigInt => format!("CAST(value ->> '{name}' AS INTEGER) AS {name}"),
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("(SELECT {cols} FROM json_each(${param})) AS {alias}")
        }
    }
}

/// A FROM clause of the JSON rows (alias `r`, see [`json_rows`]) each with
/// the row of `table` (alias `t`) it names by a unique key (`on`, over `r`
/// and `t`). On PostgreSQL a lateral lookup per row: one index probe each,
/// whatever the planner believes of the table's size (a plan made while a
/// table was small would otherwise scan it whole). On SQLite a plain join,
/// which its planner runs as index probes anyway.
pub fn json_rows_lookup(
    engine: Engine,
    param: usize,
    columns: &[(&str, JsonType)],
    table: &str,
    on: &str,
) -> String {
    let rows = json_rows(engine, param, "r", columns);
    match engine {
        Engine::Postgres => {
            format!("{rows} CROSS JOIN LATERAL (SELECT * FROM {table} t WHERE {on} LIMIT 1) t")
        }
        Engine::Sqlite => format!("{rows} JOIN {table} t ON {on}"),
    }
}

/// True when the error is a unique-constraint violation (both engines).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        let u: DatabaseUrl = "postgres://app:s3cret@db:5432/rewards".parse().unwrap();
        assert_eq!(u.redacted(), "postgres://app:***@db:5432/rewards");
        assert!(!format!("{u:?}").contains("s3cret"));
    }

    #[test]
    fn refuses_other_engines() {
        let err = "mysql://x".parse::<DatabaseUrl>().unwrap_err();
        assert!(err.contains("sqlite://"), "{err}");
    }

    #[test]
    fn sqlite_path_is_extracted() {
        let u: DatabaseUrl = "sqlite://./data/m.db?cache=shared".parse().unwrap();
        assert_eq!(
            u.sqlite_path().unwrap(),
            std::path::PathBuf::from("./data/m.db")
        );
    }
}
