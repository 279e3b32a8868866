//! The `loyalty` launcher as a library: starts any selection of services
//! (and the gateway) in this process from one [`Config`], so that the binary
//! and the end-to-end tests start the suite the same way.

pub mod cli;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use loyalty_common::auth;
use loyalty_common::config::{Config, SERVICES, standalone_port};
use loyalty_common::data_key::DataKey;
use loyalty_common::db::{Db, PoolSettings};
use loyalty_common::events::{self, EventBus};
use loyalty_common::housekeeping::Housekeeping;
use loyalty_common::jobs::{JobRunner, Schedule};
use loyalty_common::runtime::{self, ServiceDef};
use loyalty_common::server::{GrpcServer, Shutdown};

/// Every domain service, in start order.
pub const ALL_SERVICES: [ServiceDef; 4] = [
    loyalty_membership::SERVICE,
    loyalty_rewards::SERVICE,
    loyalty_feedback::SERVICE,
    loyalty_retention::SERVICE,
];

/// Housekeeping runs daily at 03:00 UTC.
fn housekeeping_schedule() -> Schedule {
    Schedule::DailyAt {
        time: chrono::NaiveTime::from_hms_opt(3, 0, 0).unwrap_or_default(),
        offset: chrono::Offset::fix(&chrono::Utc),
    }
}

/// What to start in this process.
#[derive(Debug, Clone)]
pub struct Selection {
    pub services: Vec<ServiceDef>,
    pub gateway: bool,
}

impl Selection {
    pub fn suite() -> Self {
        Self {
            services: ALL_SERVICES.to_vec(),
            gateway: true,
        }
    }

    /// One service by name, or the gateway alone.
    pub fn one(name: &str) -> Option<Self> {
        if name == "gateway" {
            return Some(Self {
                services: Vec::new(),
                gateway: true,
            });
        }
        ALL_SERVICES.iter().find(|s| s.name == name).map(|s| Self {
            services: vec![*s],
            gateway: false,
        })
    }
}

/// A started suite (or part of it).
#[derive(Debug)]
pub struct Running {
    /// Where the gRPC services listen (None when only the gateway runs).
    pub grpc_addr: Option<SocketAddr>,
    /// Where the gateway listens.
    pub http_addr: Option<SocketAddr>,
    /// Storage and transport in use, for the start-up banner.
    pub description: String,
    /// A development credential, minted on the embedded default only.
    pub dev_credential: Option<auth::DevCredential>,
    /// How long start-up took.
    pub startup: std::time::Duration,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until everything has stopped (after the shutdown fired).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("suite task panicked")?
    }
}

/// Starts the selection and returns once every listener is bound and
/// every service is serving.
pub async fn start(
    config: &Config,
    selection: Selection,
    shutdown: Shutdown,
) -> anyhow::Result<Running> {
    let started = Instant::now();
    let secret = match &config.auth_secret {
        Some(s) => auth::Secret::new(s.as_bytes().to_vec()),
        None => auth::load_or_create_secret(&config.data_dir.join("auth.secret"))
            .with_context(|| format!("auth secret under {}", config.data_dir.display()))?,
    };
    let api_keys = config
        .api_keys
        .iter()
        .map(|r| r.parse::<auth::ApiKeyRecord>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("invalid setting LOYALTY_API_KEYS: {e}"))?;
    let api_key_records = api_keys.clone();
    let verifier = Arc::new(auth::Verifier::new(&secret, api_keys));

    let mut tasks = tokio::task::JoinSet::new();
    let mut grpc_addr = None;
    let mut description = String::new();
    let mut dbs = Vec::new();

    if !selection.services.is_empty() {
        let data_key = if let Some(k) = &config.data_key {
            k.clone()
        } else {
            if !config.is_embedded() {
                tracing::warn!(
                    "LOYALTY_DATA_KEY is unset: using the key in {} (every replica must seal with the same key; set LOYALTY_DATA_KEY)",
                    config.data_dir.join("data.key").display()
                );
            }
            DataKey::load_or_create(&config.data_dir.join("data.key"))
                .with_context(|| format!("data key under {}", config.data_dir.display()))?
        };
        let bus: Arc<dyn EventBus> = match &config.nats_url {
            Some(url) => Arc::new(
                events::NatsBus::connect(url, &config.nats_stream)
                    .await
                    .with_context(|| format!("NATS at {url} (setting LOYALTY_NATS_URL)"))?,
            ),
            None => Arc::new(events::InProcessBus::new()),
        };
        let pool = PoolSettings {
            max_connections: config.db_max_connections,
            ..PoolSettings::default()
        };
        let opened = futures::future::try_join_all(selection.services.iter().map(|def| {
            let pool = pool.clone();
            async move {
                let url = config
                    .database_url(def.name)
                    .map_err(|e| anyhow::anyhow!("invalid setting LOYALTY_DATABASE_URL: {e}"))?;
                let db = Db::open(&url, &pool, def.migrations)
                    .await
                    .with_context(|| {
                        format!("{} database (setting LOYALTY_DATABASE_URL)", def.name)
                    })?;
                anyhow::Ok((def, db))
            }
        }))
        .await?;

        let mut server = GrpcServer::new(
            verifier.clone(),
            config.request_timeout,
            config.shutdown_grace,
        );
        dbs.extend(opened.iter().map(|(_, db)| db.clone()));
        let opened = opened.into_iter().map(|(def, db)| (*def, db)).collect();
        let runtimes = runtime::assemble(
            opened,
            &bus,
            &loyalty_common::clock::Clock::system(),
            &data_key,
            &mut server,
            &shutdown,
        )
        .await?;
        // Relays and jobs start once every consumer is subscribed.
        for (def, rt) in &runtimes {
            let relay = rt.relay();
            let sd = shutdown.clone();
            tasks.spawn(async move {
                relay.run(sd).await;
                Ok(())
            });
            let mut jobs = (def.jobs)(rt);
            jobs.push((Arc::new(Housekeeping::default()), housekeeping_schedule()));
            for (job, schedule) in jobs {
                let handle = JobRunner::new(rt.db.clone()).spawn(job, schedule, shutdown.clone());
                tasks.spawn(async move { handle.await.map_err(anyhow::Error::from) });
            }
        }
        let engine = dbs.first().map_or("none", |d| d.engine().as_str());
        description = format!("storage {engine}, events {}", bus.transport());
        let (addr, serve) = server.bind(config.listen, shutdown.clone()).await?;
        grpc_addr = Some(addr);
        tasks.spawn(async move { serve.await.map_err(anyhow::Error::from) });
    }

    let mut http_addr = None;
    if selection.gateway {
        let mut upstreams = config.upstreams.clone();
        for s in SERVICES {
            upstreams.entry(s.to_owned()).or_insert_with(|| {
                // the suite's own listener, or each service on its own port
                let addr = grpc_addr.map_or_else(
                    || format!("http://127.0.0.1:{}", standalone_port(s)),
                    |a| format!("http://{a}"),
                );
                vec![addr]
            });
        }
        let gateway = loyalty_gateway::Gateway::new(
            &upstreams,
            &config.gateway,
            &secret,
            api_key_records.clone(),
        )?;
        let (addr, serve) =
            loyalty_gateway::bind(config.http_listen, gateway, shutdown.clone()).await?;
        http_addr = Some(addr);
        if description.is_empty() {
            description.push_str("gateway alone");
        }
        tasks.spawn(async move { serve.await.map_err(anyhow::Error::from) });
    }

    let dev_credential = config
        .is_embedded()
        .then(|| auth::dev_credential(&auth::Minter::new(secret)))
        .transpose()
        .context("minting the development credential")?;

    let task = tokio::spawn(async move {
        let mut first_err = None;
        while let Some(res) = tasks.join_next().await {
            let res = res.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = res {
                tracing::error!(error = %e, "a component stopped with an error");
                first_err.get_or_insert(e);
            }
        }
        for db in dbs {
            db.close().await;
        }
        first_err.map_or(Ok(()), Err)
    });

    Ok(Running {
        grpc_addr,
        http_addr,
        description,
        dev_credential,
        startup: started.elapsed(),
        task,
    })
}
