//! What every loyalty service shares, so that each thing is done one way
//! across the platform: typed configuration, telemetry, storage, the error
//! mapping to gRPC status, serving (health, reflection, request ids,
//! deadlines, graceful shutdown), caller identity, idempotency, group commit,
//! domain events (outbox, relay, inbox, in-process and NATS JetStream buses)
//! and scheduled jobs.

pub mod auth;
pub mod calendar;
pub mod clock;
pub mod config;
pub mod data_key;
pub mod db;
pub mod error;
pub mod events;
pub mod group_commit;
pub mod housekeeping;
pub mod idempotency;
pub mod jobs;
pub mod key_file;
pub mod lease;
pub mod money;
pub mod paging;
pub mod runtime;
pub mod server;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{FieldViolation, ServiceError, Violations};

/// The allocator of every binary that links the platform (the launcher,
/// tests, benchmarks). A service allocates and frees many small buffers per
/// request (HTTP/2 frames, protobuf messages, SQL rows); with the system
/// allocator a fifth to a quarter of a service's CPU went to malloc and
/// free under load (docs/benchmarks/rewards.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
