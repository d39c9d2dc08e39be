//! host-bridge: the native sidecar that does what the Wasm components can't,
//! AMQP and metrics.
//!
//! - The **publish** role serves a loopback HTTP API that the producer
//!   component calls; it answers only after the broker confirms the message.
//! - The **consume** role takes deliveries and pushes each one to the worker
//!   component over loopback HTTP, acknowledging by the worker's answer.
//! - The **ingress** role is the producer's front door: it takes clients'
//!   requests with this bridge's timeouts and limits and forwards them to
//!   the component on loopback, whose runtime has none of its own.
//!
//! [`Bridge::bind`] opens the listeners (so that tests can bind port 0 and
//! learn the address), and [`Bridge::run`] runs until its shutdown future
//! resolves, then drains: stop taking work, finish in-flight work under
//! `--shutdown-grace`, close the channel and the connection.

pub mod admin;
pub mod broker;
pub mod config;
pub mod consume;
pub mod ingress;
pub mod metrics;
pub mod publish;
pub mod server;
pub mod shutdown;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::{Link, SessionWatch};

pub use config::{Config, ConfigError, Role};
pub use metrics::Metrics;

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client for the worker could not be built.
    #[error("failed to build the worker's HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// The ingress role could not be set up.
    #[error(transparent)]
    Ingress(#[from] ingress::IngressError),
    /// A listener could not bind.
    #[error("failed to bind {what} on {addr}: {source}")]
    Bind {
        /// Which server.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// The tasks of this bridge that ended before they were asked to: each is a
/// role that no longer works, so `/readyz` fails, naming it, and it is
/// logged at once rather than found at shutdown.
#[derive(Clone, Default)]
pub struct DeadTasks(Arc<std::sync::Mutex<Vec<&'static str>>>);

impl DeadTasks {
    /// The first task that ended early, if any.
    pub fn first(&self) -> Option<&'static str> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .copied()
    }

    fn record(&self, task: &'static str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(task);
    }

    /// Spawns `work` as the task `what` (e.g. "the consume role"), which
    /// should end only once `until` is cancelled. If it ends (or panics)
    /// before, it is logged and recorded; a panic is passed on to whoever
    /// awaits the handle.
    pub fn spawn<T: Send + 'static>(
        &self,
        what: &'static str,
        until: &CancellationToken,
        work: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        let (dead, until) = (self.clone(), until.clone());
        tokio::spawn(async move {
            let ended = tokio::spawn(work).await;
            if !until.is_cancelled() {
                let panicked = ended.as_ref().is_err_and(|e| e.is_panic());
                tracing::error!(
                    task = what,
                    panicked,
                    "a task of the bridge ended early; not ready"
                );
                dead.record(what);
            }
            match ended {
                Ok(value) => value,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Only a runtime shutting down cancels a task.
                Err(_) => std::future::pending().await,
            }
        })
    }
}

/// A bridge with its listeners bound, ready to [`run`](Bridge::run).
pub struct Bridge {
    config: Config,
    metrics: Metrics,
    publish_listener: Option<TcpListener>,
    ingress: Option<(TcpListener, ingress::Ingress)>,
    admin_listener: TcpListener,
    worker_client: Option<reqwest::Client>,
    brokers: Vec<broker::Broker>,
}

impl Bridge {
    /// Validates the config and binds the admin and (if enabled) publish
    /// and ingress listeners. Nothing talks to the broker yet.
    pub async fn bind(config: Config) -> Result<Self, BridgeError> {
        config.validate()?;
        let admin_listener = bind("admin server", config.admin_addr).await?;
        let publish_listener = if config.has(Role::Publish) {
            Some(bind("publish API", config.publish_addr).await?)
        } else {
            None
        };
        let worker_client = if config.has(Role::Consume) {
            Some(consume::worker_client().map_err(BridgeError::HttpClient)?)
        } else {
            None
        };
        let metrics = Metrics::new();
        let ingress = if config.has(Role::Ingress) {
            let role = ingress::Ingress::new(&config, metrics.clone())?;
            Some((bind("ingress", config.ingress_addr).await?, role))
        } else {
            None
        };
        let brokers = broker::Broker::for_config(&config, &metrics)?;
        Ok(Self {
            config,
            metrics,
            publish_listener,
            ingress,
            admin_listener,
            worker_client,
            brokers,
        })
    }

    /// The publish API's bound address, if that role is on.
    pub fn publish_addr(&self) -> Option<SocketAddr> {
        self.publish_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The ingress role's bound address, if that role is on.
    pub fn ingress_addr(&self) -> Option<SocketAddr> {
        self.ingress.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The admin server's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin_addr)
    }

    /// This bridge's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs until `shutdown` resolves, then drains and closes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let running = self.start();
        shutdown.await;
        running.drain().await;
    }

    /// Starts the broker session, the enabled roles and the admin server.
    fn start(self) -> Running {
        let Bridge {
            config,
            metrics,
            publish_listener,
            ingress,
            admin_listener,
            worker_client,
            brokers,
        } = self;
        let limits = server::ServeLimits {
            max_connections: config.max_connections as usize,
            header_read_timeout: config.header_read_timeout,
        };
        // `front_stop`: first, the ingress stops taking clients' requests
        // (and readiness fails) while what it forwarded still publishes.
        // `stop`: then stop taking work. `close`: close the connection, once
        // the roles have drained (their acks and confirms need it).
        // `admin_stop`: last, so that /metrics stays up through the drain.
        let front_stop = CancellationToken::new();
        let stop = CancellationToken::new();
        let close = CancellationToken::new();
        let admin_stop = CancellationToken::new();

        // Each role on its own link: the publish API on the publish one,
        // consuming and the depth poll on the other (or the only one).
        let links: Vec<_> = brokers.iter().map(|b| (b.link(), b.sessions())).collect();
        let on = |link| {
            links
                .iter()
                .find(|(l, _)| *l == link)
                .or(links.first())
                .map(|(_, s)| s.clone())
                .expect("every config has a link")
        };
        let (publish_sessions, plain_sessions) = (on(Link::Publish), on(Link::Plain));
        let dead = DeadTasks::default();
        let broker_tasks: Vec<_> = brokers
            .into_iter()
            .map(|b| dead.spawn("the broker connection", &close, b.run(close.clone())))
            .collect();
        let depth_poll = broker::poll_queue_depth(
            plain_sessions.clone(),
            config.queue.clone(),
            config.queue_poll_interval,
            metrics.clone(),
            stop.clone(),
        );
        let depth_task = dead.spawn("the queue depth poll", &stop, depth_poll);
        let roles = StartedRoles::start(
            &config,
            RoleInputs {
                publish_listener,
                ingress,
                worker_client,
            },
            [&publish_sessions, &plain_sessions],
            &metrics,
            limits,
            [&front_stop, &stop],
            &dead,
        );
        let readiness = admin::Readiness::new(
            links.into_iter().map(|(_, s)| s).collect(),
            roles.publishing,
            roles.consuming,
            front_stop.clone(),
        )
        .with_ingress(roles.fronting)
        .with_dead_tasks(dead.clone());
        let shed = metrics.connections_shed.with_label_values(&["admin"]);
        let admin = server::serve(
            admin_listener,
            admin::router(metrics, readiness),
            limits,
            shed,
            admin_stop.clone().cancelled_owned(),
        );
        let admin_task = dead.spawn("the admin server", &admin_stop, admin);
        for warning in config.warnings() {
            warn!("{warning}");
        }
        info!(roles = ?config.roles, queue = %config.queue, "host-bridge started");
        Running {
            config,
            front_stop,
            front_servers: roles.front_servers,
            stop,
            close,
            admin_stop,
            servers: roles.servers,
            consume_task: roles.consume_task,
            depth_task,
            broker_tasks,
            admin_task,
        }
    }
}

/// What the roles start from: their listeners and the push client, each
/// present only when its role is on.
struct RoleInputs {
    publish_listener: Option<TcpListener>,
    ingress: Option<(TcpListener, ingress::Ingress)>,
    worker_client: Option<reqwest::Client>,
}

/// The enabled roles, running: their tasks, and what readiness asks of each.
struct StartedRoles {
    /// The ingress: stopped and drained before the others.
    front_servers: Vec<(&'static str, JoinHandle<std::io::Result<()>>)>,
    servers: Vec<(&'static str, JoinHandle<std::io::Result<()>>)>,
    consume_task: Option<JoinHandle<()>>,
    publishing: Option<Arc<publish::PublishApi>>,
    consuming: Option<consume::ConsumeStatus>,
    fronting: Option<Arc<ingress::Ingress>>,
}

impl StartedRoles {
    /// Spawns the consume role and the publish and ingress servers. The
    /// ingress stops taking requests when `front_stop` is cancelled, the
    /// others when `stop` is: the components it forwarded to still reach
    /// the publish API meanwhile.
    fn start(
        config: &Config,
        inputs: RoleInputs,
        [publish_sessions, plain_sessions]: [&SessionWatch; 2],
        metrics: &Metrics,
        limits: server::ServeLimits,
        [front_stop, stop]: [&CancellationToken; 2],
        dead: &DeadTasks,
    ) -> Self {
        let serve = |what: &'static str, listener, router, until: &CancellationToken| {
            // `connections_shed_total{listener}`: the closed set publish,
            // ingress (and admin, in `start`).
            let label = if what == "ingress" {
                "ingress"
            } else {
                "publish"
            };
            let shed = metrics.connections_shed.with_label_values(&[label]);
            let served = server::serve(
                listener,
                router,
                limits,
                shed,
                until.clone().cancelled_owned(),
            );
            (what, dead.spawn(what, until, served))
        };
        let mut roles = StartedRoles {
            front_servers: Vec::new(),
            servers: Vec::new(),
            consume_task: None,
            publishing: None,
            consuming: None,
            fronting: None,
        };
        if let Some(client) = inputs.worker_client {
            let role =
                consume::ConsumeRole::new(config, client, plain_sessions.clone(), metrics.clone());
            roles.consuming = Some(role.status());
            roles.consume_task = Some(dead.spawn("the consume role", stop, role.run(stop.clone())));
        }
        if let Some(listener) = inputs.publish_listener {
            let api = Arc::new(publish::PublishApi::new(
                config,
                publish_sessions.clone(),
                metrics.clone(),
            ));
            roles.publishing = Some(api.clone());
            roles
                .servers
                .push(serve("publish API", listener, api.router(), stop));
        }
        if let Some((listener, role)) = inputs.ingress {
            let role = Arc::new(role);
            roles.fronting = Some(role.clone());
            roles
                .front_servers
                .push(serve("ingress", listener, role.router(), front_stop));
        }
        roles
    }
}

/// A started bridge: its tasks, and the tokens that stop them in order.
struct Running {
    config: Config,
    front_stop: CancellationToken,
    front_servers: Vec<(&'static str, JoinHandle<std::io::Result<()>>)>,
    stop: CancellationToken,
    close: CancellationToken,
    admin_stop: CancellationToken,
    servers: Vec<(&'static str, JoinHandle<std::io::Result<()>>)>,
    consume_task: Option<JoinHandle<()>>,
    depth_task: JoinHandle<()>,
    broker_tasks: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops taking work, lets in-flight work finish under its deadlines,
    /// then closes the broker connection, and the admin server last.
    async fn drain(self) {
        let config = &self.config;
        info!(grace = ?config.shutdown_grace, "stopping: no new work; draining");
        // The ingress first: the requests it forwarded finish (each within
        // its body read and PRODUCER_TIMEOUT) while the publish API still
        // takes the components' publishes.
        self.front_stop.cancel();
        let front = async {
            for (what, task) in self.front_servers {
                if let Ok(Err(e)) = task.await {
                    warn!(error = %e, "{what} failed");
                }
            }
        };
        let front_bound = config.body_read_timeout + config.producer_timeout + DRAIN_SLACK;
        if tokio::time::timeout(front_bound, front).await.is_err() {
            warn!(bound = ?front_bound, "the ingress did not drain; going on");
        }
        self.stop.cancel();
        // The consumer bounds its own drain by the grace period; the publish
        // API's in-flight requests are bounded by the confirm timeout, the
        // ingress's by the producer timeout. The outer bound only guards
        // against a stuck task.
        let drain = async {
            for (what, task) in self.servers {
                if let Ok(Err(e)) = task.await {
                    warn!(error = %e, "{what} failed");
                }
            }
            if let Some(task) = self.consume_task {
                let _ = task.await;
            }
            let _ = self.depth_task.await;
        };
        let bound = config.shutdown_grace
            + config.publish_timeout.max(config.producer_timeout)
            + DRAIN_SLACK;
        if tokio::time::timeout(bound, drain).await.is_err() {
            warn!(?bound, "drain did not finish; closing anyway");
        }
        self.close.cancel();
        for task in self.broker_tasks {
            let _ = task.await;
        }
        self.admin_stop.cancel();
        // A scrape in progress finishes; a client that stopped reading its
        // answer does not hold the exit.
        if tokio::time::timeout(ADMIN_DRAIN, self.admin_task)
            .await
            .is_err()
        {
            warn!(limit = ?ADMIN_DRAIN, "the admin server did not drain; exiting anyway");
        }
        info!("host-bridge stopped");
    }
}

/// How long the admin server's last requests may take at exit: a scrape
/// or a probe answers in milliseconds.
const ADMIN_DRAIN: Duration = Duration::from_secs(2);

/// Beyond the roles' own deadlines, what a drain may take before the
/// bridge closes anyway.
const DRAIN_SLACK: Duration = Duration::from_secs(1);

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BridgeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BridgeError::Bind { what, addr, source })
}

/// Binds and runs a bridge until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), BridgeError> {
    Bridge::bind(config).await?.run(shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_before_its_stop_is_recorded_and_one_that_ends_after_is_not() {
        let dead = DeadTasks::default();
        let stop = CancellationToken::new();
        assert_eq!(dead.spawn("early", &stop, async { 1 }).await.unwrap(), 1);
        assert_eq!(dead.first(), Some("early"));
        let later = DeadTasks::default();
        let stop_first = stop.clone();
        let task = later.spawn(
            "on time",
            &stop,
            async move { stop_first.cancelled().await },
        );
        stop.cancel();
        task.await.unwrap();
        assert_eq!(later.first(), None);
        // A panic is recorded and passed on.
        let panicked = DeadTasks::default();
        let fresh = CancellationToken::new();
        let result = panicked
            .spawn("panics", &fresh, async { panic!("boom") })
            .await;
        assert!(result.unwrap_err().is_panic());
        assert_eq!(panicked.first(), Some("panics"));
    }
}
