//! The start-up data key check on both engines (ADR 0009): the first start
//! records the key's identifier, a restart with the same key serves the
//! codes it sealed, a restart with another key on the same database is
//! refused with a message naming the setting (and no key), replicas starting
//! together with different keys leave one recorded, and a database sealed
//! before the check existed is accepted only with the key its codes open
//! with.

mod catalog_support;

use catalog_support::*;
use loyalty_common::data_key::DataKey;
use loyalty_common::db::{DatabaseUrl, Db, PoolSettings};
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::{TestEngine, TestService, error_chain};
use loyalty_proto::loyalty::rewards::v1::{Coupon, CouponState};

/// A database outliving the services started on it (a restart opens it
/// again, migrations included, as a new process would).
struct Database {
    url: DatabaseUrl,
    _dir: Option<tempfile::TempDir>,
}

impl Database {
    async fn fresh(engine: TestEngine) -> Self {
        let (url, dir) = engine.fresh_url().await;
        Self { url, _dir: dir }
    }

    async fn open(&self) -> Db {
        Db::open(
            &self.url,
            &PoolSettings::default(),
            loyalty_rewards::SERVICE.migrations,
        )
        .await
        .expect("open the rewards database")
    }

    /// Starts rewards on this database sealing with `key`, as a process
    /// starting with that `LOYALTY_DATA_KEY` would.
    async fn start(&self, key: &DataKey) -> Result<TestService, String> {
        let db = self.open().await;
        TestService::start_on(vec![(loyalty_rewards::SERVICE, db)], key)
            .await
            .map_err(|e| error_chain(&e))
    }

    /// The key identifiers recorded in the database.
    async fn recorded(&self) -> Vec<String> {
        let db = self.open().await;
        let ids = sqlx::query_scalar("SELECT key_id FROM data_key_check")
            .fetch_all(db.pool())
            .await
            .expect("read data_key_check");
        db.close().await;
        ids
    }
}

fn key(fill: &str) -> DataKey {
    DataKey::new(fill.repeat(40)).expect("data key")
}

async fn issue_one(t: &TestService) -> Coupon {
    let pool = pool(t, 30, 0).await;
    issue(t, &pool.pool_id, "m1").await.expect("issue")
}

async fn codes_of_m1(t: &TestService) -> Vec<String> {
    member_coupons(t, "m1", CouponState::Unspecified)
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.code)
        .collect()
}

/// The refusal names the setting and says why, and holds no key material.
fn assert_refused_for_another_key(err: &str, keys: &[&DataKey], fills: &[&str]) {
    assert!(err.contains("rewards service cannot start"), "{err}");
    assert!(err.contains("sealed with another data key"), "{err}");
    assert!(err.contains("LOYALTY_DATA_KEY"), "{err}");
    assert!(err.contains("data_key"), "{err}");
    for fill in fills {
        assert!(!err.contains(&fill.repeat(8)), "key material in: {err}");
    }
    for key in keys {
        assert!(!err.contains(key.id().as_str()), "key id in: {err}");
    }
}

async fn the_first_start_records_the_key_and_a_restart_with_it_serves_its_codes(
    engine: TestEngine,
) {
    let db = Database::fresh(engine).await;
    let ours = key("k");
    let first = db.start(&ours).await.expect("first start");
    let coupon = issue_one(&first).await;
    first.stop().await;
    let recorded = db.recorded().await;
    assert_eq!(recorded, vec![ours.id().to_string()]);
    assert_eq!(recorded[0].len(), 32, "16 bytes in hex");
    assert!(!recorded[0].contains(&hex::encode("kkkk")));

    let again = db.start(&ours).await.expect("restart with the same key");
    assert_eq!(codes_of_m1(&again).await, vec![coupon.code]);
    again.stop().await;
    assert_eq!(db.recorded().await, vec![ours.id().to_string()]);
}

async fn a_restart_with_another_key_is_refused_and_changes_nothing(engine: TestEngine) {
    let db = Database::fresh(engine).await;
    let (ours, other) = (key("k"), key("j"));
    let first = db.start(&ours).await.expect("first start");
    let coupon = issue_one(&first).await;
    first.stop().await;

    let err = db
        .start(&other)
        .await
        .expect_err("a start with another key is refused");
    assert_refused_for_another_key(&err, &[&ours, &other], &["k", "j"]);
    assert_eq!(db.recorded().await, vec![ours.id().to_string()]);

    // the right key again: everything as it was
    let back = db.start(&ours).await.expect("restart with the right key");
    assert_eq!(codes_of_m1(&back).await, vec![coupon.code]);
    back.stop().await;
}

async fn replicas_starting_together_with_different_keys_leave_one_recorded(engine: TestEngine) {
    let db = Database::fresh(engine).await;
    // migrate first, as the first replica would have
    db.open().await.close().await;
    let (ours, other) = (key("k"), key("j"));
    let (with_ours, with_other) = tokio::join!(db.start(&ours), db.start(&other));
    let recorded = db.recorded().await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    match (with_ours, with_other) {
        (Ok(started), Err(refusal)) => {
            assert_eq!(recorded, vec![ours.id().to_string()]);
            assert_refused_for_another_key(&refusal, &[&ours, &other], &["k", "j"]);
            started.stop().await;
        }
        (Err(refusal), Ok(started)) => {
            assert_eq!(recorded, vec![other.id().to_string()]);
            assert_refused_for_another_key(&refusal, &[&ours, &other], &["k", "j"]);
            started.stop().await;
        }
        (with_ours, with_other) => panic!(
            "exactly one replica must start: {:?} / {:?}",
            with_ours.as_ref().err(),
            with_other.as_ref().err()
        ),
    }
    // replicas with the recorded key all start
    let recorded_key = if recorded[0] == ours.id().as_str() {
        &ours
    } else {
        &other
    };
    let (first, second) = tokio::join!(db.start(recorded_key), db.start(recorded_key));
    first.expect("first replica").stop().await;
    second.expect("second replica").stop().await;
}

async fn a_database_sealed_before_the_check_is_recorded_only_with_its_key(engine: TestEngine) {
    let db = Database::fresh(engine).await;
    let (ours, other) = (key("k"), key("j"));
    let first = db.start(&ours).await.expect("first start");
    let coupon = issue_one(&first).await;
    first.stop().await;
    // as sealed by a version before migration 0055: no identifier recorded
    let raw = db.open().await;
    sqlx::query("DELETE FROM data_key_check")
        .execute(raw.pool())
        .await
        .expect("forget the identifier");
    raw.close().await;

    let err = db
        .start(&other)
        .await
        .expect_err("codes sealed with our key do not open with the other");
    assert_refused_for_another_key(&err, &[&ours, &other], &["k", "j"]);
    assert!(
        db.recorded().await.is_empty(),
        "nothing recorded for the other key"
    );

    let back = db.start(&ours).await.expect("the key the codes open with");
    assert_eq!(codes_of_m1(&back).await, vec![coupon.code]);
    back.stop().await;
    assert_eq!(db.recorded().await, vec![ours.id().to_string()]);
}

test_on_both_engines!(
    the_first_start_records_the_key_and_a_restart_with_it_serves_its_codes,
    a_restart_with_another_key_is_refused_and_changes_nothing,
    replicas_starting_together_with_different_keys_leave_one_recorded,
    a_database_sealed_before_the_check_is_recorded_only_with_its_key,
);
