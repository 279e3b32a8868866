//! Durable write throughput with and without group commit, at 64 writes in
//! flight, on SQLite always and on PostgreSQL when LOYALTY_TEST_POSTGRES_URL
//! is set (then the pgbench earn ceiling is measured in the same run).
//!
//! cargo bench -p loyalty-bench --bench group_commit
//!
//! - tiny: one row insert per write (id, key, value).
//! - earn: the earn transaction's writes (ledger entry, balance update,
//!   outbox row), as scripts/pgbench/earn.sql does them.
//! - direct: each write in its own transaction (`db.begin()` … commit), on
//!   the service's default pool (16 connections);
//! - group commit: each write through `GroupCommitter::run` (fast path
//!   first, savepoint per item only for batches with a failing item);
//! - savepoints only (earn): the committer forced to run every batch with
//!   a savepoint per item, as before the fast path, for a same-run
//!   comparison.

use std::time::Duration;

use loyalty_bench::load::{self, LoadConfig, Report};
use loyalty_bench::{load_average, pgbench};
use loyalty_common::ServiceError;
use loyalty_common::db::{Db, Engine, Tx, now_micros};
use loyalty_common::group_commit::{GroupCommitSettings, GroupCommitter};
use loyalty_common::testing::{POSTGRES_ENV, TestDb, TestEngine};

const CONCURRENCY: usize = 64;
const MEMBERS: u64 = 10_000;

fn cfg() -> LoadConfig {
    LoadConfig {
        concurrency: CONCURRENCY,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Tiny,
    Earn,
}

impl Write {
    fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Earn => "earn",
        }
    }
}

async fn setup(engine: TestEngine) -> TestDb {
    let db = engine.database(&[]).await;
    let blob = if db.engine() == Engine::Postgres {
        "BYTEA"
    } else {
        "BLOB"
    };
    let ddl = [
        "CREATE TABLE tiny (id TEXT PRIMARY KEY, k TEXT NOT NULL, v BIGINT NOT NULL)".to_owned(),
        "CREATE TABLE accounts (member_id TEXT PRIMARY KEY, available BIGINT NOT NULL, \
         lifetime_earned BIGINT NOT NULL, version BIGINT NOT NULL, updated_at BIGINT NOT NULL)"
            .to_owned(),
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, program_id TEXT NOT NULL, member_id TEXT NOT NULL, \
         kind TEXT NOT NULL, points BIGINT NOT NULL, order_id TEXT, cause TEXT NOT NULL, \
         available_at BIGINT NOT NULL, expires_at BIGINT, hash TEXT NOT NULL, created_at BIGINT NOT NULL)"
            .to_owned(),
        "CREATE UNIQUE INDEX ledger_order ON ledger (program_id, order_id)".to_owned(),
        "CREATE INDEX ledger_member ON ledger (program_id, member_id, created_at)".to_owned(),
        format!(
            "CREATE TABLE bench_outbox (seq INTEGER PRIMARY KEY {}, event_id TEXT NOT NULL UNIQUE, \
             event_type TEXT NOT NULL, ordering_key TEXT NOT NULL, payload {blob} NOT NULL, \
             created_at BIGINT NOT NULL, published_at BIGINT)",
            if db.engine() == Engine::Postgres { "GENERATED ALWAYS AS IDENTITY" } else { "" }
        ),
    ];
    let mut tx = db.begin().await.expect("begin");
    for sql in ddl {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .expect("ddl");
    }
    for m in 0..MEMBERS {
        sqlx::query("INSERT INTO accounts VALUES ($1, 0, 0, 0, 0)")
            .bind(format!("m{m}"))
            .execute(&mut *tx)
            .await
            .expect("seed");
    }
    tx.commit().await.expect("commit");
    db
}

/// The writes of request `i`, in `tx`.
async fn write(tx: &mut Tx, kind: Write, run: &str, i: u64) -> Result<(), ServiceError> {
    let member = format!("m{}", i % MEMBERS);
    let id = format!("{run}-{i}");
    let now = now_micros();
    match kind {
        Write::Tiny => {
            sqlx::query("INSERT INTO tiny (id, k, v) VALUES ($1, $2, $3)")
                .bind(&id)
                .bind(&member)
                .bind(i as i64)
                .execute(&mut **tx)
                .await?;
        }
        Write::Earn => {
            let points = (i % 500 + 1) as i64;
            sqlx::query(
                "INSERT INTO ledger (id, program_id, member_id, kind, points, order_id, cause, \
                 available_at, expires_at, hash, created_at) \
                 VALUES ($1, 'p1', $2, 'earn', $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&id)
            .bind(&member)
            .bind(points)
            .bind(format!("o-{id}"))
            .bind(format!(
                r#"{{"rules":[{{"id":"base-rate","version":3,"points":{points}}}]}}"#
            ))
            .bind(now)
            .bind(now + 31_536_000_000_000)
            .bind(format!("{:064x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15))
            .bind(now)
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "UPDATE accounts SET available = available + $1, lifetime_earned = lifetime_earned + $1, \
                 version = version + 1, updated_at = $2 WHERE member_id = $3",
            )
            .bind(points)
            .bind(now)
            .bind(&member)
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "INSERT INTO bench_outbox (event_id, event_type, ordering_key, payload, created_at) \
                 VALUES ($1, 'loyalty.events.v1.PointsEarned', $2, $3, $4)",
            )
            .bind(format!("ev-{id}"))
            .bind(&member)
            .bind(vec![b'x'; 180])
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

async fn direct(db: &Db, kind: Write) -> Report {
    let (db, run) = (db.clone(), format!("d{}", now_micros()));
    load::run(&cfg(), move |i| {
        let (db, run) = (db.clone(), run.clone());
        async move {
            let mut tx = db.begin().await?;
            write(&mut tx, kind, &run, i).await?;
            tx.commit().await?;
            Ok::<(), ServiceError>(())
        }
    })
    .await
}

async fn grouped(db: &Db, kind: Write, writers: usize, savepoints_only: bool) -> (Report, f64) {
    let gc = std::sync::Arc::new(GroupCommitter::new(
        db.clone(),
        GroupCommitSettings {
            writers,
            max_batch: 64,
        },
    ));
    if savepoints_only {
        gc.always_use_savepoints();
    }
    let run = format!("g{}", now_micros());
    let g = gc.clone();
    let report = load::run(&cfg(), move |i| {
        let (gc, run) = (g.clone(), run.clone());
        async move {
            let key = format!("m{}", i % MEMBERS);
            gc.run(&key, move |tx: &mut Tx| {
                let run = run.clone();
                Box::pin(async move { write(tx, kind, &run, i).await })
            })
            .await
        }
    })
    .await;
    let stats = gc.stats();
    (report, stats.items as f64 / stats.batches.max(1) as f64)
}

async fn engine_rows(engine: TestEngine, label: &str) {
    let db = setup(engine).await;
    for kind in [Write::Tiny, Write::Earn] {
        let r = direct(&db, kind).await;
        println!(
            "{}",
            r.markdown_row(&format!("{label} {} direct", kind.name()))
        );
        let writer_counts: &[usize] = if engine == TestEngine::Postgres {
            &[1, 2, 4]
        } else {
            &[1]
        };
        for &w in writer_counts {
            let (r, avg) = grouped(&db, kind, w, false).await;
            println!(
                "{}",
                r.markdown_row(&format!(
                    "{label} {} group commit, {w} writer(s), avg batch {avg:.1}",
                    kind.name()
                ))
            );
        }
        // the savepoint-per-item mode alone (the code before the fast
        // path), same run, for the earn write
        if kind == Write::Earn {
            for &w in writer_counts {
                let (r, avg) = grouped(&db, kind, w, true).await;
                println!(
                    "{}",
                    r.markdown_row(&format!(
                        "{label} {} savepoints only, {w} writer(s), avg batch {avg:.1}",
                        kind.name()
                    ))
                );
            }
        }
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "group commit at {CONCURRENCY} in flight; load before: {}",
        load_average()
    );
    println!("{}", Report::markdown_header());
    rt.block_on(engine_rows(TestEngine::Sqlite, "sqlite"));
    match std::env::var(POSTGRES_ENV) {
        Ok(url) => {
            rt.block_on(engine_rows(TestEngine::Postgres, "postgres"));
            for clients in [32, 64] {
                match pgbench::earn_ceiling(&url, clients, 6) {
                    Ok(r) => println!("{}", r.report.markdown_row("pgbench earn ceiling")),
                    Err(e) => eprintln!("pgbench earn ceiling: {e}"),
                }
            }
        }
        Err(_) => eprintln!("{POSTGRES_ENV} not set: PostgreSQL rows skipped"),
    }
    println!("load after: {}", load_average());
}
