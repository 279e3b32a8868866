//! A short-lived in-process cache of each program's policy and rules in
//! force, read on every purchase. Writes through this process drop the
//! entry at once; changes made by another replica are seen within
//! [`TTL`]. Keyed by database, so services of several databases in one
//! process (tests, the embedded suite) never share entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;

use crate::domain::earning_rules::Rule;
use crate::domain::expiry::PointsPolicy;

/// How long another replica's rule or policy change may go unseen.
pub(crate) const TTL: Duration = Duration::from_secs(1);

/// What a purchase needs of its program.
#[derive(Debug)]
pub(crate) struct ProgramTerms {
    pub policy: PointsPolicy,
    pub rules: Vec<Rule>,
    /// True when any rule in force has a cap (usage must be read).
    pub capped: bool,
}

type Key = (String, String);

fn cache() -> &'static Mutex<HashMap<Key, (Instant, Arc<ProgramTerms>)>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, (Instant, Arc<ProgramTerms>)>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn key(db: &str, program_id: &str) -> Key {
    (db.to_owned(), program_id.to_owned())
}

/// The program's policy and rules in force, from the cache when fresh.
pub(crate) async fn terms(
    tx: &mut Tx,
    db: &str,
    program_id: &str,
) -> Result<Arc<ProgramTerms>, ServiceError> {
    let k = key(db, program_id);
    if let Ok(map) = cache().lock()
        && let Some((at, terms)) = map.get(&k)
        && at.elapsed() < TTL
    {
        return Ok(terms.clone());
    }
    let policy = super::ledger_policy::load(&mut **tx, program_id).await?;
    let rules = super::rules::in_force(&mut **tx, program_id).await?;
    let capped = rules.iter().any(|r| !r.caps.is_empty());
    let terms = Arc::new(ProgramTerms {
        policy,
        rules,
        capped,
    });
    if let Ok(mut map) = cache().lock() {
        map.insert(k, (Instant::now(), terms.clone()));
    }
    Ok(terms)
}

/// Drops the program's entry (after a rule or policy write here).
pub(crate) fn forget(db: &str, program_id: &str) {
    if let Ok(mut map) = cache().lock() {
        map.remove(&key(db, program_id));
    }
}
