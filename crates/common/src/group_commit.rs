//! Group commit for durable writes: concurrent callers' small transactions
//! share one database transaction, so many writes pay for one durable
//! commit (one fsync) instead of one each.
//!
//! Each caller hands [`GroupCommitter::run`] a unit of work and a key (the
//! member id, say). A writer task takes everything queued for it (up to
//! `max_batch`) as one batch, begins ONE transaction, runs the items and
//! commits once. Every caller gets its answer only after the commit
//! succeeded: an `Ok` means durable, exactly as with a transaction of its
//! own.
//!
//! - **Fast path.** A batch first runs its items one after the other with
//!   no savepoint (no extra round trip, no subtransaction per item). If
//!   every item answers Ok and the transaction is still usable (on
//!   PostgreSQL one `SELECT 1` before COMMIT: it fails in a transaction
//!   aborted by an error some work swallowed, whose COMMIT would otherwise
//!   silently roll back), the batch commits.
//! - **Savepoint mode.** Otherwise (an item refused, or the transaction was
//!   found aborted) the batch is rolled back and run again from its first
//!   item with each item inside its own `SAVEPOINT`: an item that fails is
//!   rolled back to its savepoint and gets its own error; the others are
//!   unaffected. A batch that fell back stays in savepoint mode for its
//!   retries. Items before and at the first failure therefore run twice
//!   (the first run rolled back), which work allows anyway (see Retries).
//!
//! - **Retries.** If the batch as a whole fails (begin or commit error, a
//!   deadlock or serialization failure reported by the database, a lost
//!   connection), the whole batch is rolled back and run again, up to
//!   [`MAX_ATTEMPTS`] times, which is why work is `Fn` and not `FnOnce`;
//!   then each caller gets `Unavailable`. A connection lost while COMMIT
//!   was in flight leaves its outcome unknown: the retry may then run items
//!   whose first attempt did commit. Items must therefore be idempotent (an
//!   idempotency key or natural key claimed inside the work), which every
//!   write on the platform is anyway; the retry then replays.
//! - **Ordering per key.** Items with the same key always go to the same
//!   writer (`hash(key) % writers`), so one member's writes never race each
//!   other across writers. Items touching several keys (a transfer between
//!   two members) can still meet another writer's batch on the same rows;
//!   the database then detects the deadlock and the victim batch is retried.
//! - **Pipelining.** While a writer's batch runs and commits, the next batch
//!   forms in its queue; several writers (PostgreSQL) commit in parallel on
//!   their own connections. On SQLite there is one write connection, so
//!   `writers` is forced to 1.
//! - **Shutdown.** Once queued, an item runs even if its caller stops
//!   waiting. Dropping the committer closes the queues; the writers drain
//!   what is queued, then stop ([`GroupCommitter::shutdown`] also waits for
//!   that).
//!
//! [`GroupCommitter::run_idempotent`] adds an idempotency key claimed in
//! the item, the way most platform writes need it.
//!
//! - **Bulk work.** [`GroupCommitter::run_bulk_on`] queues an input for a
//!   [`BulkWork`]: in the fast path, consecutive items of the same bulk
//!   work run in ONE call that writes them all with set-based statements
//!   (a few statements per batch instead of several per item). The work
//!   answers one result per input and writes nothing for an input it
//!   refuses, so a refusal is that input's answer and the others commit.
//!   If the call fails as a whole, the batch goes to savepoint mode as
//!   above, where each item runs alone (the work called with one input)
//!   and finds its own answer.
//!
//! Work runs in the batch's transaction and must not call `db.begin()`
//! itself (on SQLite that waits for the writer it is running on), nor
//! change the transaction (no COMMIT, no isolation level).
//!
//! Consumers ([`crate::events::inbox`]) group-commit differently on purpose:
//! events of a key must apply in order, so a failing event stops the group
//! and the rest are replayed one by one behind it, whereas items here are
//! independent requests.

use std::any::Any;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use opentelemetry::metrics::{Counter, Histogram};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::ServiceError;
use crate::db::{Db, Engine, Tx};
use crate::idempotency::{self, Claim, WorkFuture};

/// Work that records many queued inputs in one call, answering one result
/// per input in input order. An input it refuses (`Err` in its place) must
/// have written nothing. `Err` of the whole: the transaction failed, or
/// the inputs cannot be told apart together (each then runs alone). See
/// [`GroupCommitter::run_bulk_on`].
pub type BulkWork<I, T> = Arc<
    dyn for<'t> Fn(&'t mut Tx, &'t [I]) -> WorkFuture<'t, Vec<Result<T, ServiceError>>>
        + Send
        + Sync,
>;

/// Makes a [`BulkWork`] of a closure (which then gets the right signature):
/// `bulk_work(move |tx, inputs| Box::pin(async move { … }))`.
pub fn bulk_work<I, T, F>(work: F) -> BulkWork<I, T>
where
    F: for<'t> Fn(&'t mut Tx, &'t [I]) -> WorkFuture<'t, Vec<Result<T, ServiceError>>>
        + Send
        + Sync
        + 'static,
{
    Arc::new(work)
}

/// Attempts of one batch before its callers get `Unavailable`.
pub const MAX_ATTEMPTS: u32 = 4;
/// Pause before the first retry of a batch; doubled at each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);

/// How many writers commit in parallel and how large a batch may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitSettings {
    /// Writer tasks, each committing its own batches on its own connection
    /// (forced to 1 on SQLite).
    pub writers: usize,
    /// Most items in one transaction. On PostgreSQL keep it at 64 or
    /// below: in savepoint mode (a batch with a failing item) each item is
    /// a subtransaction, and a transaction with more than 64 of them
    /// overflows PostgreSQL's per-backend cache of subtransaction ids,
    /// which slows every other session's snapshots.
    pub max_batch: usize,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        Self {
            writers: 2,
            max_batch: 64,
        }
    }
}

/// Counters since the committer started (also exported as metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Batches committed.
    pub batches: u64,
    /// Items in committed batches (failed items included: they were
    /// answered after the commit like the others).
    pub items: u64,
    /// Batch attempts that failed and were run again.
    pub retries: u64,
    /// Batches given up after [`MAX_ATTEMPTS`].
    pub failed_batches: u64,
}

/// Coalesces concurrent writes into group commits; see the module docs.
pub struct GroupCommitter {
    queues: Vec<mpsc::Sender<Box<dyn Pending>>>,
    writers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter")
            .field("writers", &self.queues.len())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    batches: AtomicU64,
    items: AtomicU64,
    retries: AtomicU64,
    failed_batches: AtomicU64,
    /// Batches taken from the queues so far.
    taken: AtomicU64,
    /// Batches that left the fast path for savepoint mode.
    fallbacks: AtomicU64,
    /// Test and benchmark hook: skip the fast path.
    savepoints_only: AtomicBool,
    /// Test hook: commits of batches taken from `fail_from` on fail, this
    /// many times.
    fail_from: AtomicU64,
    fail_commits: AtomicU64,
}

impl GroupCommitter {
    /// Spawns the writer tasks (needs a Tokio runtime).
    pub fn new(db: Db, settings: GroupCommitSettings) -> Self {
        let writers = match db.engine() {
            Engine::Sqlite => 1,
            Engine::Postgres => settings.writers.max(1),
        };
        let max_batch = settings.max_batch.max(1);
        let shared = Arc::new(Shared::default());
        let mut queues = Vec::with_capacity(writers);
        let mut handles = Vec::with_capacity(writers);
        for db in std::iter::repeat_n(db, writers) {
            // room for two batches: one forming while one commits; beyond
            // that callers wait to enqueue (backpressure)
            let (tx, rx) = mpsc::channel(max_batch * 2);
            queues.push(tx);
            handles.push(tokio::spawn(writer(db, rx, max_batch, shared.clone())));
        }
        Self {
            queues,
            writers: handles,
            shared,
        }
    }

    /// Runs `work` in the next batch of the writer owning `key` and returns
    /// its answer once that batch has committed. Errors of the work come
    /// back as they are (its writes are rolled back, other items commit);
    /// a batch that cannot be committed gives `Unavailable`.
    ///
    /// `work` may run more than once (batch retries), each time in a fresh
    /// transaction, so it clones what it needs:
    /// `move |tx| { let id = id.clone(); Box::pin(async move { …; Ok(answer) }) }`.
    pub async fn run<T, F>(&self, key: &str, work: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: for<'t> Fn(&'t mut Tx) -> WorkFuture<'t, T> + Send + 'static,
    {
        self.enqueue(writer_of(key, self.queues.len()), work).await
    }

    /// [`run`](Self::run) on the writer `slot % writers` instead of the one
    /// a key hashes to: for callers that spread their keys over the writers
    /// themselves (rewards gives each ledger lane of a program its own
    /// writer, so the lanes commit in parallel and a batch never holds two
    /// lanes of one program).
    pub async fn run_on<T, F>(&self, slot: u64, work: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: for<'t> Fn(&'t mut Tx) -> WorkFuture<'t, T> + Send + 'static,
    {
        let writer = (slot % self.queues.len() as u64) as usize;
        self.enqueue(writer, work).await
    }

    /// Queues `input` for `work` on the writer `slot % writers` and returns
    /// its result once its batch has committed. Consecutive queued inputs
    /// of the same `work` (the same `Arc`) run in one call; see the module
    /// docs. `work` may run more than once (retries, savepoint mode) and
    /// must write nothing for an input it refuses.
    pub async fn run_bulk_on<I, T>(
        &self,
        slot: u64,
        work: &BulkWork<I, T>,
        input: I,
    ) -> Result<T, ServiceError>
    where
        I: Clone + Send + Sync + 'static,
        T: Send + 'static,
    {
        let writer = (slot % self.queues.len() as u64) as usize;
        let (reply, answer) = oneshot::channel();
        let job = Box::new(BulkJob {
            input,
            work: work.clone(),
            answer: Answer::new(reply),
        });
        self.send(writer, job, answer).await
    }

    async fn enqueue<T, F>(&self, writer: usize, work: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: for<'t> Fn(&'t mut Tx) -> WorkFuture<'t, T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Job {
            work,
            answer: Answer::new(reply),
        });
        self.send(writer, job, answer).await
    }

    async fn send<T>(
        &self,
        writer: usize,
        job: Box<dyn Pending>,
        answer: oneshot::Receiver<Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        let queue = &self.queues[writer];
        queue
            .send(job)
            .await
            .map_err(|_| ServiceError::Unavailable("group commit writer stopped".into()))?;
        answer.await.unwrap_or_else(|_| {
            Err(ServiceError::Unavailable(
                "group commit writer stopped before answering".into(),
            ))
        })
    }

    /// [`run`](Self::run) with an idempotency key, as
    /// [`idempotency::run_idempotent`] does in a transaction of its own:
    /// validates `idem_key` (field `idempotency_key`), claims it in the
    /// batch's transaction, runs `work` and stores its encoded answer with
    /// the claim. A replay answers the stored response without running
    /// `work`; other parameters give `IdempotencyKeyReused`. Duplicates in
    /// the same batch see the first one's claim and answer (same
    /// transaction), so the work runs once.
    ///
    /// [`idempotency::run_idempotent`]: crate::idempotency::run_idempotent
    pub async fn run_idempotent<Req, Resp, F>(
        &self,
        key: &str,
        scope: &str,
        idem_key: &str,
        request: &Req,
        work: F,
    ) -> Result<Resp, ServiceError>
    where
        Req: Message,
        Resp: Message + Default + Send + 'static,
        F: for<'t> Fn(&'t mut Tx) -> WorkFuture<'t, Resp> + Send + Sync + 'static,
    {
        idempotency::validate_key(idempotency::KEY_FIELD, idem_key)?;
        let print = idempotency::fingerprint(request);
        let (scope, idem_key) = (scope.to_owned(), idem_key.to_owned());
        let work = Arc::new(work);
        self.run(key, move |tx: &mut Tx| {
            let (scope, idem_key, print, work) =
                (scope.clone(), idem_key.clone(), print.clone(), work.clone());
            Box::pin(async move {
                match idempotency::claim(tx, &scope, &idem_key, &print).await? {
                    Claim::New => {}
                    Claim::Replay(bytes) => {
                        return Resp::decode(bytes.as_slice()).map_err(ServiceError::internal);
                    }
                    Claim::Mismatch => {
                        return Err(ServiceError::IdempotencyKeyReused { key: idem_key });
                    }
                }
                let response = work(tx).await?;
                idempotency::complete(tx, &scope, &idem_key, &response.encode_to_vec()).await?;
                Ok(response)
            })
        })
        .await
    }

    /// Items waiting in the queues (not yet taken into a batch).
    pub fn queued(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.max_capacity() - q.capacity())
            .sum()
    }

    /// Writer tasks actually running (1 on SQLite).
    pub fn writers(&self) -> usize {
        self.queues.len()
    }

    pub fn stats(&self) -> GroupCommitStats {
        let s = &self.shared;
        GroupCommitStats {
            batches: s.batches.load(Ordering::Relaxed),
            items: s.items.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            failed_batches: s.failed_batches.load(Ordering::Relaxed),
        }
    }

    /// Batches that left the fast path (an item refused or the transaction
    /// was found aborted) and ran again with a savepoint per item.
    pub fn savepoint_fallbacks(&self) -> u64 {
        self.shared.fallbacks.load(Ordering::Relaxed)
    }

    /// Stops taking work, lets the writers finish what is queued, and
    /// waits for them.
    pub async fn shutdown(mut self) {
        self.queues.clear();
        for w in std::mem::take(&mut self.writers) {
            if let Err(e) = w.await {
                tracing::error!(error = %e, "group commit writer ended abnormally");
            }
        }
    }

    /// Test hook: the next `n` commits of batches taken from the queues
    /// after this call fail as a transient error would (rolled back
    /// instead of committed), so tests can prove that a retried batch
    /// applies each item exactly once. A batch already running is spared.
    #[cfg(feature = "testing")]
    pub fn fail_next_commits(&self, n: u64) {
        let s = &self.shared;
        s.fail_from
            .store(s.taken.load(Ordering::SeqCst), Ordering::SeqCst);
        s.fail_commits.store(n, Ordering::SeqCst);
    }
}

impl GroupCommitter {
    /// Test and benchmark hook: every batch taken from now on runs in
    /// savepoint mode directly (the behaviour before the fast path), so
    /// both can be measured side by side.
    #[cfg(feature = "testing")]
    pub fn always_use_savepoints(&self) {
        self.shared.savepoints_only.store(true, Ordering::SeqCst);
    }
}

/// The writer owning `key`: stable for the life of the process.
fn writer_of(key: &str, writers: usize) -> usize {
    if writers == 1 {
        return 0;
    }
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % writers as u64) as usize
}

/// What one run of an item's work came to.
enum Attempt {
    /// Done; its writes stay.
    Done,
    /// The work refused; its writes are undone, its error is its answer.
    Refused,
    /// The database reported a failure of the whole transaction.
    Transient(String),
}

/// A queued item with its answer type erased.
trait Pending: Send {
    /// Runs the work once in `tx`, keeping its answer for later.
    fn attempt<'t>(
        &'t mut self,
        tx: &'t mut Tx,
    ) -> Pin<Box<dyn Future<Output = Attempt> + Send + 't>>;
    /// Replaces the kept answer by `err` (its writes were undone).
    fn refuse(&mut self, err: ServiceError);
    /// Sends the kept answer (after the commit).
    fn answer(self: Box<Self>);
    /// Sends `err` instead (the batch could not be committed).
    fn fail(self: Box<Self>, err: ServiceError);
    /// Items with the same key can run together ([`Pending::attempt_bulk`]).
    fn bulk_key(&self) -> Option<usize> {
        None
    }
    /// Runs this item and `others` (items of the same bulk key) together.
    fn attempt_bulk<'t>(
        &'t mut self,
        others: &'t mut [Box<dyn Pending>],
        tx: &'t mut Tx,
    ) -> Pin<Box<dyn Future<Output = Attempt> + Send + 't>> {
        Box::pin(async move {
            let first = self.attempt(tx).await;
            if !matches!(first, Attempt::Done) {
                return first;
            }
            for job in others {
                let attempt = job.attempt(tx).await;
                if !matches!(attempt, Attempt::Done) {
                    return attempt;
                }
            }
            Attempt::Done
        })
    }
    fn as_any(&mut self) -> &mut dyn Any;
}

/// A queued item's answer: kept while its batch runs, sent after.
struct Answer<T> {
    outcome: Option<Result<T, ServiceError>>,
    reply: oneshot::Sender<Result<T, ServiceError>>,
}

impl<T> Answer<T> {
    fn new(reply: oneshot::Sender<Result<T, ServiceError>>) -> Self {
        Self {
            outcome: None,
            reply,
        }
    }

    /// What a run's result makes of the attempt (keeping the result).
    fn settle(&mut self, result: Result<T, ServiceError>) -> Attempt {
        match result {
            Ok(v) => {
                self.outcome = Some(Ok(v));
                Attempt::Done
            }
            Err(e) => {
                if let Some(why) = transient(&e) {
                    self.outcome = None;
                    Attempt::Transient(why)
                } else {
                    self.outcome = Some(Err(e));
                    Attempt::Refused
                }
            }
        }
    }

    fn refuse(&mut self, err: ServiceError) {
        self.outcome = Some(Err(err));
    }

    fn send(self) {
        let outcome = self
            .outcome
            .unwrap_or_else(|| Err(ServiceError::internal("group commit item was never run")));
        // a caller that stopped waiting is no error: its work committed
        let _ = self.reply.send(outcome);
    }

    fn fail(self, err: ServiceError) {
        let _ = self.reply.send(Err(err));
    }
}

struct Job<T, F> {
    work: F,
    answer: Answer<T>,
}

impl<T, F> Pending for Job<T, F>
where
    T: Send + 'static,
    F: for<'t> Fn(&'t mut Tx) -> WorkFuture<'t, T> + Send + 'static,
{
    fn attempt<'t>(
        &'t mut self,
        tx: &'t mut Tx,
    ) -> Pin<Box<dyn Future<Output = Attempt> + Send + 't>> {
        Box::pin(async move {
            let run = AssertUnwindSafe((self.work)(tx)).catch_unwind().await;
            let result =
                run.unwrap_or_else(|_| Err(ServiceError::internal("group commit work panicked")));
            self.answer.settle(result)
        })
    }

    fn refuse(&mut self, err: ServiceError) {
        self.answer.refuse(err);
    }

    fn answer(self: Box<Self>) {
        self.answer.send();
    }

    fn fail(self: Box<Self>, err: ServiceError) {
        self.answer.fail(err);
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// A queued input of a [`BulkWork`].
struct BulkJob<I, T> {
    input: I,
    work: BulkWork<I, T>,
    answer: Answer<T>,
}

impl<I, T> BulkJob<I, T>
where
    I: Clone + Send + Sync + 'static,
    T: Send + 'static,
{
    /// Runs the work on `inputs`; `None` when it panicked.
    async fn call(
        work: &BulkWork<I, T>,
        tx: &mut Tx,
        inputs: &[I],
    ) -> Result<Vec<Result<T, ServiceError>>, ServiceError> {
        let run = AssertUnwindSafe(work(tx, inputs)).catch_unwind().await;
        let results = run.unwrap_or_else(|_| Err(ServiceError::internal("bulk work panicked")))?;
        if results.len() != inputs.len() {
            return Err(ServiceError::internal(format!(
                "bulk work answered {} results for {} inputs",
                results.len(),
                inputs.len()
            )));
        }
        Ok(results)
    }
}

/// The answer kept for the other inputs of a bulk call refused as a whole
/// (savepoint mode then runs each alone and replaces it).
fn whole_refusal(e: &ServiceError) -> ServiceError {
    ServiceError::internal(format!("the batch was refused: {e}"))
}

impl<I, T> Pending for BulkJob<I, T>
where
    I: Clone + Send + Sync + 'static,
    T: Send + 'static,
{
    fn attempt<'t>(
        &'t mut self,
        tx: &'t mut Tx,
    ) -> Pin<Box<dyn Future<Output = Attempt> + Send + 't>> {
        Box::pin(async move {
            let inputs = [self.input.clone()];
            let result = match Self::call(&self.work, tx, &inputs).await {
                Ok(mut results) => results.remove(0),
                Err(e) => Err(e),
            };
            self.answer.settle(result)
        })
    }

    fn refuse(&mut self, err: ServiceError) {
        self.answer.refuse(err);
    }

    fn answer(self: Box<Self>) {
        self.answer.send();
    }

    fn fail(self: Box<Self>, err: ServiceError) {
        self.answer.fail(err);
    }

    fn bulk_key(&self) -> Option<usize> {
        // the work's allocation: alive while any of its items is queued
        Some(Arc::as_ptr(&self.work).cast::<()>() as usize)
    }

    fn attempt_bulk<'t>(
        &'t mut self,
        others: &'t mut [Box<dyn Pending>],
        tx: &'t mut Tx,
    ) -> Pin<Box<dyn Future<Output = Attempt> + Send + 't>> {
        Box::pin(async move {
            let mut inputs = Vec::with_capacity(others.len() + 1);
            inputs.push(self.input.clone());
            for other in others.iter_mut() {
                match other.as_any().downcast_mut::<Self>() {
                    Some(job) => inputs.push(job.input.clone()),
                    None => {
                        return Attempt::Transient("bulk items of different types".into());
                    }
                }
            }
            let results = match Self::call(&self.work, tx, &inputs).await {
                Ok(results) => results,
                Err(e) => {
                    if let Some(why) = transient(&e) {
                        return Attempt::Transient(why);
                    }
                    // savepoint mode runs each input alone and finds its own answer
                    for other in others.iter_mut() {
                        other.refuse(whole_refusal(&e));
                    }
                    self.answer.refuse(e);
                    return Attempt::Refused;
                }
            };
            // an input the work refused wrote nothing: its refusal is its
            // answer and the others commit without it
            let mut attempt = Attempt::Done;
            let jobs = std::iter::once(&mut *self).chain(
                others
                    .iter_mut()
                    .filter_map(|o| o.as_any().downcast_mut::<Self>()),
            );
            for (job, result) in jobs.zip(results) {
                if let a @ Attempt::Transient(_) = job.answer.settle(result) {
                    attempt = a;
                }
            }
            attempt
        })
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// Why `err` means the whole transaction failed and is worth running
/// again: deadlock or serialization failure (PostgreSQL), busy or locked
/// (SQLite), or a lost connection.
fn transient(err: &ServiceError) -> Option<String> {
    let ServiceError::Internal(source) = err else {
        return None;
    };
    let sql = source.downcast_ref::<sqlx::Error>()?;
    transient_sql(sql).then(|| sql.to_string())
}

fn transient_sql(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            matches!(
                code.as_ref(),
                // PostgreSQL: serialization_failure, deadlock_detected
                "40001" | "40P01"
                // SQLite: BUSY, LOCKED and their extended codes
                | "5" | "6" | "261" | "517" | "262"
            )
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

async fn writer(
    db: Db,
    mut rx: mpsc::Receiver<Box<dyn Pending>>,
    max_batch: usize,
    shared: Arc<Shared>,
) {
    let mut batch: Vec<Box<dyn Pending>> = Vec::with_capacity(max_batch);
    // recv_many waits for one item, then takes whatever else is queued
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let seq = shared.taken.fetch_add(1, Ordering::SeqCst);
        commit_with_retries(&db, &mut batch, &shared, seq).await;
    }
}

/// Runs and commits `batch`, retrying the whole of it on transient
/// failures, then answers (and empties) it.
async fn commit_with_retries(
    db: &Db,
    batch: &mut Vec<Box<dyn Pending>>,
    shared: &Shared,
    seq: u64,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    let mut mode = if shared.savepoints_only.load(Ordering::SeqCst) {
        Mode::Savepoints
    } else {
        Mode::Fast
    };
    loop {
        match run_batch(db, batch, shared, seq, &mut mode).await {
            Ok(()) => {
                shared.batches.fetch_add(1, Ordering::Relaxed);
                shared
                    .items
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                metrics().batch_size.record(batch.len() as u64, &[]);
                for job in batch.drain(..) {
                    job.answer();
                }
                return;
            }
            Err(why) if attempt < MAX_ATTEMPTS => {
                tracing::warn!(attempt, items = batch.len(), error = %why, "group commit batch failed; retrying");
                shared.retries.fetch_add(1, Ordering::Relaxed);
                metrics().retries.add(1, &[]);
                // jitter keeps two deadlocked writers from meeting again
                let jitter = Duration::from_micros(rand::random_range(0..1000));
                tokio::time::sleep(backoff + jitter).await;
                backoff = backoff.saturating_mul(2);
                attempt += 1;
            }
            Err(why) => {
                tracing::error!(attempts = attempt, items = batch.len(), error = %why, "group commit batch failed; giving up");
                shared.failed_batches.fetch_add(1, Ordering::Relaxed);
                metrics().failed.add(1, &[]);
                for job in batch.drain(..) {
                    job.fail(ServiceError::Unavailable(
                        "the write could not be committed; try again".into(),
                    ));
                }
                return;
            }
        }
    }
}

/// How a batch runs its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No savepoints; any failure sends the batch to `Savepoints`.
    Fast,
    /// One savepoint per item (failures isolated).
    Savepoints,
}

/// One attempt: the fast path first (unless the batch already left it),
/// then savepoint mode if the fast path could not commit. `Err` when the
/// transaction as a whole failed (nothing of it committed).
async fn run_batch(
    db: &Db,
    batch: &mut [Box<dyn Pending>],
    shared: &Shared,
    seq: u64,
    mode: &mut Mode,
) -> Result<(), String> {
    if *mode == Mode::Fast {
        if let Some(tx) = run_fast(db, batch).await? {
            return commit(tx, shared, seq).await;
        }
        *mode = Mode::Savepoints;
        shared.fallbacks.fetch_add(1, Ordering::Relaxed);
        metrics().fallbacks.add(1, &[]);
    }
    run_with_savepoints(db, batch, shared, seq).await
}

/// Runs every item with no savepoint. `Some(tx)` ready to commit when all
/// answered Ok and the transaction is usable; `None` (rolled back) when an
/// item refused or the transaction was aborted behind an Ok.
async fn run_fast(db: &Db, batch: &mut [Box<dyn Pending>]) -> Result<Option<Tx>, String> {
    let mut tx = db.begin().await.map_err(|e| e.to_string())?;
    let mut rest = batch;
    while let Some(key_len) = rest.first().map(|job| bulk_run(rest, job.bulk_key())) {
        let (run, after) = std::mem::take(&mut rest).split_at_mut(key_len);
        rest = after;
        let (job, others) = run.split_first_mut().expect("a run has an item");
        let attempt = if others.is_empty() {
            job.attempt(&mut tx).await
        } else {
            job.attempt_bulk(others, &mut tx).await
        };
        match attempt {
            Attempt::Done => {}
            // the failure may be the item's own or caused by an earlier
            // item (an aborted transaction): savepoint mode tells them apart
            Attempt::Refused => {
                tx.rollback().await.map_err(|e| e.to_string())?;
                return Ok(None);
            }
            Attempt::Transient(why) => return Err(why),
        }
    }
    // PostgreSQL answers COMMIT of an aborted transaction with a rollback,
    // not an error: some work ignored a database error. Any statement
    // fails in that state. (SQLite has no such state: a failed statement
    // is undone alone, and a transaction it ended makes COMMIT fail.)
    if db.engine() == Engine::Postgres && raw(&mut tx, "SELECT 1".to_owned()).await.is_err() {
        tx.rollback().await.map_err(|e| e.to_string())?;
        return Ok(None);
    }
    Ok(Some(tx))
}

/// Length of the run of items at the start of `batch` that share `key`
/// (1 for an item of no bulk work).
fn bulk_run(batch: &[Box<dyn Pending>], key: Option<usize>) -> usize {
    match key {
        None => 1,
        Some(_) => batch.iter().take_while(|j| j.bulk_key() == key).count(),
    }
}

/// Every item in its savepoint, one commit.
///
/// Savepoint commands go as plain SQL text (no prepared statement per
/// savepoint name) and the end of one item's savepoint shares its round
/// trip with the start of the next one's, so an item costs one round trip
/// more than its own statements.
async fn run_with_savepoints(
    db: &Db,
    batch: &mut [Box<dyn Pending>],
    shared: &Shared,
    seq: u64,
) -> Result<(), String> {
    let mut tx = db.begin().await.map_err(|e| e.to_string())?;
    // A lone item gets its savepoint too: on PostgreSQL that is how work
    // that swallowed a database error is caught (RELEASE fails) instead of
    // COMMIT silently rolling back an aborted transaction.
    raw(&mut tx, "SAVEPOINT gc_0".to_owned()).await?;
    let last = batch.len() - 1;
    for (i, job) in batch.iter_mut().enumerate() {
        let next = if i == last {
            String::new()
        } else {
            format!("; SAVEPOINT gc_{}", i + 1)
        };
        let undo = format!("ROLLBACK TO SAVEPOINT gc_{i}; RELEASE SAVEPOINT gc_{i}{next}");
        match job.attempt(&mut tx).await {
            Attempt::Done => {
                if raw(&mut tx, format!("RELEASE SAVEPOINT gc_{i}{next}"))
                    .await
                    .is_err()
                {
                    // The work answered Ok but left the transaction unusable
                    // (on PostgreSQL: it swallowed a database error). Undo it
                    // alone; if even that fails, the batch is retried.
                    job.refuse(ServiceError::internal(
                        "group commit work left its transaction aborted (a database error was ignored)",
                    ));
                    raw(&mut tx, undo).await?;
                }
            }
            Attempt::Refused => raw(&mut tx, undo).await?,
            Attempt::Transient(why) => return Err(why),
        }
    }
    commit(tx, shared, seq).await
}

async fn commit(tx: Tx, shared: &Shared, seq: u64) -> Result<(), String> {
    let injected = seq >= shared.fail_from.load(Ordering::SeqCst)
        && shared
            .fail_commits
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    if injected {
        let _ = tx.rollback().await;
        return Err("injected commit failure".into());
    }
    tx.commit().await.map_err(|e| e.to_string())
}

/// Runs savepoint commands (one or several, `;`-separated) as plain text.
async fn raw(tx: &mut Tx, sql: String) -> Result<(), String> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut **tx)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

struct Instruments {
    batch_size: Histogram<u64>,
    retries: Counter<u64>,
    failed: Counter<u64>,
    fallbacks: Counter<u64>,
}

fn metrics() -> &'static Instruments {
    static I: OnceLock<Instruments> = OnceLock::new();
    I.get_or_init(|| {
        let meter = opentelemetry::global::meter("loyalty.group_commit");
        Instruments {
            batch_size: meter
                .u64_histogram("group_commit.batch.size")
                .with_description("items committed together in one transaction")
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
                .build(),
            retries: meter
                .u64_counter("group_commit.retries")
                .with_description("batches rolled back by a transient failure and run again")
                .build(),
            failed: meter
                .u64_counter("group_commit.failed")
                .with_description(
                    "batches given up after the last attempt (callers got UNAVAILABLE)",
                )
                .build(),
            fallbacks: meter
                .u64_counter("group_commit.savepoint_fallbacks")
                .with_description(
                    "batches run again with a savepoint per item after the fast path failed",
                )
                .build(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_goes_to_the_same_writer() {
        for key in ["m-1", "m-2", "member-42", ""] {
            let w = writer_of(key, 4);
            assert!(w < 4);
            assert_eq!(writer_of(key, 4), w);
        }
        let spread: std::collections::HashSet<_> =
            (0..64).map(|i| writer_of(&format!("m-{i}"), 4)).collect();
        assert_eq!(spread.len(), 4, "keys spread over every writer");
    }

    #[test]
    fn only_whole_transaction_failures_are_retried() {
        assert!(
            transient(&ServiceError::from(sqlx::Error::PoolTimedOut)).is_none(),
            "mapped to Unavailable, an answer"
        );
        assert!(transient(&ServiceError::internal(sqlx::Error::WorkerCrashed)).is_some());
        assert!(transient(&ServiceError::internal(sqlx::Error::RowNotFound)).is_none());
        assert!(transient(&ServiceError::invalid("points", "too many")).is_none());
    }
}
