//! What a service is made of, from the launcher's point of view, and what
//! it is given at start: its own database, the event bus, its name. Every
//! service crate exports one [`ServiceDef`]; the launcher starts any set of
//! them the same way, all in one process or one alone.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use loyalty_proto::common::ServiceInfo;

use crate::ServiceError;
use crate::clock::Clock;
use crate::data_key::DataKey;
use crate::db::{Db, Migrations};
use crate::events::{Consumer, EventBus, OutboxNotifier};
use crate::jobs::{Job, Schedule};
use crate::server::GrpcServer;

/// A service as the launcher sees it.
#[derive(Clone, Copy)]
pub struct ServiceDef {
    /// Short name: "membership", "rewards", "feedback", "retention".
    pub name: &'static str,
    /// The service's own migrations (the common tables come first).
    pub migrations: &'static [Migrations],
    /// Adds the service's gRPC services to a server.
    pub register: fn(Arc<ServiceRuntime>, &mut GrpcServer),
    /// The service's event consumers (subscribed before any relay starts).
    pub consumers: fn(&Arc<ServiceRuntime>) -> Vec<Consumer>,
    /// The service's scheduled jobs (each run once across replicas).
    pub jobs: fn(&Arc<ServiceRuntime>) -> Vec<ScheduledJob>,
    /// Checks that must pass before the service serves a call, consumes an
    /// event or runs a job (rewards: its database was sealed with this data
    /// key); an error stops the start ([`StartError::Prepare`]).
    pub prepare: fn(Arc<ServiceRuntime>) -> Preparing,
}

/// What [`ServiceDef::prepare`] returns: the checks, run by [`assemble`].
pub type Preparing = Pin<Box<dyn Future<Output = Result<(), ServiceError>> + Send>>;

/// For services with nothing to check at start.
pub fn no_prepare(_: Arc<ServiceRuntime>) -> Preparing {
    Box::pin(async { Ok(()) })
}

/// Why [`assemble`] could not bring the services up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A service's start-up checks failed (the cause says why).
    #[error("the {service} service cannot start")]
    Prepare {
        service: &'static str,
        #[source]
        source: ServiceError,
    },
    #[error(transparent)]
    Bus(#[from] crate::events::BusError),
}

/// A job and when it runs.
pub type ScheduledJob = (Arc<dyn Job>, Schedule);

/// For services that have no jobs of their own (yet).
pub fn no_jobs(_: &Arc<ServiceRuntime>) -> Vec<ScheduledJob> {
    Vec::new()
}

/// For services that consume no events (yet).
pub fn no_consumers(_: &Arc<ServiceRuntime>) -> Vec<Consumer> {
    Vec::new()
}

impl std::fmt::Debug for ServiceDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDef")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a running service holds: its database and the event bus.
pub struct ServiceRuntime {
    pub name: &'static str,
    pub db: Db,
    pub bus: Arc<dyn EventBus>,
    /// Wake the relay after committing events: `rt.outbox.notify()`.
    pub outbox: OutboxNotifier,
    /// The time domain decisions use (system time; tests move it).
    pub clock: Clock,
    /// The key sealing data at rest ([`DataKey`]); set by [`assemble`].
    pub data_key: Option<DataKey>,
    migrations: &'static [Migrations],
}

impl std::fmt::Debug for ServiceRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRuntime")
            .field("name", &self.name)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl ServiceRuntime {
    pub fn new(def: &ServiceDef, db: Db, bus: Arc<dyn EventBus>) -> Self {
        Self {
            name: def.name,
            db,
            bus,
            outbox: OutboxNotifier::new(),
            clock: Clock::system(),
            data_key: None,
            migrations: def.migrations,
        }
    }

    /// The same runtime sealing data at rest with `key`.
    #[must_use]
    pub fn with_data_key(mut self, key: DataKey) -> Self {
        self.data_key = Some(key);
        self
    }

    /// The data key, or an internal error when the launcher gave none.
    pub fn data_key(&self) -> Result<&DataKey, ServiceError> {
        self.data_key.as_ref().ok_or_else(|| {
            ServiceError::internal(format!(
                "the {} service was started without a data key",
                self.name
            ))
        })
    }

    /// The same runtime deciding by `clock` (tests: a manual clock).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// What this replica is: version, storage engine, event transport,
    /// schema version (the service's own migrations, else the common ones).
    pub async fn service_info(&self) -> Result<ServiceInfo, ServiceError> {
        let owner = self
            .migrations
            .last()
            .unwrap_or(&crate::db::COMMON_MIGRATIONS);
        Ok(ServiceInfo {
            service: self.name.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            storage_engine: self.db.engine().as_str().to_owned(),
            event_transport: self.bus.transport().to_owned(),
            schema_version: self.db.schema_version(owner).await?,
        })
    }
}

/// Brings `services` (each with its opened database) up on `server` the one
/// way the launcher and the tests share: a runtime per service deciding by
/// `clock` and sealing with `data_key`, its start-up checks passed
/// ([`ServiceDef::prepare`]), its RPCs registered and its consumers
/// subscribed to `bus`.
/// Relays ([`ServiceRuntime::relay`]) and jobs start afterwards, once every
/// consumer of the process is subscribed, so no event is published before
/// a consumer of this process listens.
pub async fn assemble(
    services: Vec<(ServiceDef, Db)>,
    bus: &Arc<dyn EventBus>,
    clock: &Clock,
    data_key: &DataKey,
    server: &mut GrpcServer,
    shutdown: &crate::server::Shutdown,
) -> Result<Vec<(ServiceDef, Arc<ServiceRuntime>)>, StartError> {
    let mut runtimes = Vec::with_capacity(services.len());
    for (def, db) in services {
        let rt = Arc::new(
            ServiceRuntime::new(&def, db, bus.clone())
                .with_clock(clock.clone())
                .with_data_key(data_key.clone()),
        );
        (def.prepare)(rt.clone())
            .await
            .map_err(|source| StartError::Prepare {
                service: def.name,
                source,
            })?;
        (def.register)(rt.clone(), server);
        for consumer in (def.consumers)(&rt) {
            bus.subscribe(Arc::new(consumer), shutdown.clone()).await?;
        }
        runtimes.push((def, rt));
    }
    Ok(runtimes)
}

impl ServiceRuntime {
    /// The relay that publishes this service's outbox, woken by
    /// [`ServiceRuntime::outbox`].
    pub fn relay(&self) -> crate::events::Relay {
        crate::events::Relay::new(self.name, self.db.clone(), self.bus.clone())
            .with_notifier(self.outbox.clone())
    }
}
