//! The AMQP connection's lifecycle: connect, declare the topology, watch for
//! loss, and reconnect with capped exponential backoff and jitter.
//!
//! With several brokers configured (the nodes of one cluster), a lost or
//! refused connection moves to the next node at once; the backoff applies
//! only once every node has failed in a row. Any node will do: RabbitMQ
//! routes to a quorum queue's leader wherever it runs, and a publisher
//! confirm still means a majority of the queue's replicas have the message.
//!
//! This module owns the connection and the publisher-confirm channel, and
//! hands them out as a [`Session`] through a watch channel: `None` while
//! disconnected. It does not publish or consume; `publish` and `consume` do,
//! on whatever session is current.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Event, ExchangeKind};
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, ConfigError, Endpoint, Role};
use crate::metrics::Metrics;

/// Why talking to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The TCP or AMQP handshake failed.
    #[error("failed to connect to the broker: {0}")]
    Connect(#[source] lapin::Error),
    /// Declaring the exchange and queues failed, e.g. the queue exists with
    /// other arguments (PRECONDITION_FAILED).
    #[error("failed to declare the topology: {0}")]
    Topology(#[source] lapin::Error),
    /// Opening a channel failed.
    #[error("failed to open a channel: {0}")]
    Channel(#[source] lapin::Error),
    /// The connection attempt did not finish in time: a paused or
    /// blackholed broker accepts TCP and then says nothing.
    #[error("no answer from the broker within {0:?}")]
    ConnectTimeout(Duration),
}

/// An open connection and the channels the bridge shares on it.
#[derive(Debug)]
pub struct Session {
    /// The broker it is on, as `host:port`.
    pub endpoint: String,
    /// The connection.
    pub connection: Connection,
    /// The confirm-mode channel the publish API uses, when that role is on.
    pub publisher: Option<Channel>,
    /// How the broker has been answering this connection's publishes. It
    /// belongs to the connection: a new one starts afresh, whatever the old
    /// one left.
    health: Mutex<Health>,
}

/// What tells a link that is up but no longer useful for publishing.
#[derive(Debug, Default)]
struct Health {
    /// Publishes whose caller got `504` and whose verdict is still to come.
    /// While any are, the link counts as stalled and new publishes are
    /// refused (see `publish`).
    overdue: usize,
    /// Since when at least one has been overdue.
    stalled_since: Option<Instant>,
    /// Nacks since the last ack.
    nacks: u32,
    /// When the first and the latest of those came.
    first_nack: Option<Instant>,
    last_nack: Option<Instant>,
    /// Whether the broker has confirmed anything on this connection.
    acked: bool,
}

/// Nacks in a row, at the least, before a link counts as nacking for good:
/// one nack and then silence is no pattern.
const NACKS_FOR_GOOD: u32 = 3;

/// AMQP 0-9-1 reply code for a normal close (`reply-success`).
pub const REPLY_SUCCESS: u16 = 200;

/// AMQP 0-9-1 reply code for a connection closed by one side on purpose
/// (`connection-forced`): how a recycled link is closed.
const CONNECTION_FORCED: u16 = 320;

/// The first reconnect delay; it doubles (jittered) up to
/// `--reconnect-max-backoff`.
const RECONNECT_BACKOFF_BASE: Duration = Duration::from_millis(100);

/// How often a session's link is checked for loss and for uselessness.
const LINK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Health {
    fn record_verdict(&mut self, acked: bool, now: Instant) {
        if acked {
            self.acked = true;
            self.nacks = 0;
            self.first_nack = None;
        } else {
            self.nacks += 1;
            self.first_nack.get_or_insert(now);
            self.last_nack = Some(now);
        }
    }

    fn begin_overdue(&mut self, now: Instant) {
        self.overdue += 1;
        self.stalled_since.get_or_insert(now);
    }

    fn end_overdue(&mut self) {
        self.overdue = self.overdue.saturating_sub(1);
        if self.overdue == 0 {
            self.stalled_since = None;
        }
    }

    fn unproductive(&self, limit: Duration, nacks: bool, now: Instant) -> Option<&'static str> {
        let held = |since: Option<Instant>| since.is_some_and(|t| now.duration_since(t) >= limit);
        if held(self.stalled_since) {
            return Some("confirms overdue");
        }
        let nacking = self.nacks >= NACKS_FOR_GOOD
            && held(self.first_nack)
            && self
                .last_nack
                .is_some_and(|t| now.duration_since(t) < limit);
        (nacks && nacking).then_some("every publish nacked")
    }
}

impl Session {
    /// Whether the broker has blocked this connection (`connection.blocked`:
    /// a memory or disk alarm). It reads nothing from a blocked publisher,
    /// so a publish now would only wait.
    pub fn blocked(&self) -> bool {
        self.connection.status().blocked()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // Nothing panics while holding it; a poisoned lock still holds
        // counts worth reading.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a publish's verdict, on time or late: acked, or nacked.
    pub fn record_verdict(&self, acked: bool) {
        self.health().record_verdict(acked, Instant::now());
    }

    /// A publish timed out: its caller got `504`, its verdict is pending.
    pub fn begin_overdue(&self) {
        self.health().begin_overdue(Instant::now());
    }

    /// An overdue publish's verdict came, or will never come.
    pub fn end_overdue(&self) {
        self.health().end_overdue();
    }

    /// Whether confirms are overdue: the broker or the link is stalled.
    pub fn stalled(&self) -> bool {
        self.health().overdue > 0
    }

    /// Why this link has stopped being useful for publishing, if it has,
    /// judged over `limit`: confirms overdue all that time, or nothing but
    /// nacks all that time (`nacks` only; with a length cap a nack may just
    /// mean "full").
    fn unproductive(&self, limit: Duration, nacks: bool) -> Option<&'static str> {
        self.health().unproductive(limit, nacks, Instant::now())
    }

    /// Whether the connection (and the publisher channel, if any) is usable.
    pub fn usable(&self) -> bool {
        self.connection.status().connected()
            && self
                .publisher
                .as_ref()
                .is_none_or(|channel| channel.status().connected())
    }
}

/// The current session: `None` while disconnected.
pub type SessionWatch = watch::Receiver<Option<Arc<Session>>>;

/// The names and arguments of the queues the bridge declares.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The work queue.
    pub queue: String,
    /// The dead-letter exchange.
    pub dead_letter_exchange: String,
    /// The dead-letter queue.
    pub dead_letter_queue: String,
    /// `x-delivery-limit`.
    pub delivery_limit: u32,
    /// `x-max-length`, if any.
    pub max_length: Option<u32>,
    /// `x-quorum-initial-group-size`, if any: replicas of both queues.
    pub quorum_initial_group_size: Option<u32>,
}

impl Topology {
    /// The topology a config describes.
    pub fn from_config(config: &Config) -> Self {
        Self {
            queue: config.queue.clone(),
            dead_letter_exchange: config.dead_letter_exchange(),
            dead_letter_queue: config.dead_letter_queue(),
            delivery_limit: config.delivery_limit,
            max_length: config.max_length,
            quorum_initial_group_size: config.quorum_initial_group_size,
        }
    }

    /// The arguments both queues share: quorum type and replica count.
    fn quorum_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        // Quorum queues replicate, survive broker restarts, and count
        // deliveries, which is what bounds retries of a failing job.
        args.insert("x-queue-type".into(), long_string("quorum"));
        if let Some(size) = self.quorum_initial_group_size {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongLongInt(size.into()),
            );
        }
        args
    }

    /// The work queue's arguments. Declaring twice with the same arguments is
    /// a no-op, so every bridge declares at every (re)connect.
    pub fn queue_arguments(&self) -> FieldTable {
        let mut args = self.quorum_arguments();
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(self.delivery_limit.into()),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            long_string(&self.dead_letter_exchange),
        );
        // reject-publish turns a full queue into a publisher nack (503 to the
        // caller) instead of silently dropping the oldest message, and it is
        // what at-least-once dead-lettering requires.
        args.insert("x-overflow".into(), long_string("reject-publish"));
        args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        if let Some(max) = self.max_length {
            args.insert("x-max-length".into(), AMQPValue::LongLongInt(max.into()));
        }
        args
    }

    /// Declares the dead-letter exchange and queue, then the work queue.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        channel
            .exchange_declare(
                self.dead_letter_exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                QueueDeclareOptions::durable(),
                self.quorum_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue.as_str().into(),
                self.dead_letter_exchange.as_str().into(),
                ShortString::from(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions::durable(),
                self.queue_arguments(),
            )
            .await?;
        Ok(())
    }
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Capped exponential backoff with jitter: attempt n waits a random time
/// between half and all of `min(max, base * 2^n)`, so that many bridges
/// losing one broker don't reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(self.attempt))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        rand::rng().random_range(ceiling / 2..=ceiling)
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// When a publish-only bridge gives up on a link that is up but useless.
///
/// Seen on RabbitMQ 3.10: when a quorum queue's leader was killed, a channel
/// opened during the election nacked every publish for 90 s and more while
/// the new leader served other channels; and a queue that lost its majority
/// leaves confirms pending for as long as that lasts. Another connection, to
/// another node, recovers from the first, and does no harm in the second.
#[derive(Debug, Clone, Copy)]
struct Recycle {
    /// How long a link may be stalled, or nack everything, before it is
    /// dropped; doubled for each such drop in a row (up to 4 times), so
    /// that a cause that outlives connections (a policy's length cap making
    /// every nack "full") costs a reconnect every 20 s or so at the default
    /// confirm timeout, not a storm; and a link that recovers is noticed soon.
    after: Duration,
    /// Whether nacks count: with a length cap they may just mean "full".
    nacks: bool,
}

/// A session that lasted this long was healthy: the reconnect backoff
/// starts over after it. A shorter one counts as a failed attempt, so a
/// node that accepts and then drops every connection is not retried in a
/// tight loop.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// How a session ended.
enum Ended {
    /// `close` was cancelled: shut down.
    Closed,
    /// The connection or channel failed.
    Lost,
    /// Up, but no longer useful for publishing; says why.
    Unproductive(&'static str),
}

/// What one AMQP connection carries. A bridge that publishes and consumes
/// (as `make up` runs it) opens one of each, as RabbitMQ recommends: a
/// connection the broker blocks for an alarm stalls everything on it, and
/// the consumer's acks must not wait behind the publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The publish API's confirm channel.
    Publish,
    /// Everything else: consuming, the queue-depth poll.
    Plain,
}

impl Link {
    /// The connections a config needs, one per link.
    pub fn for_config(config: &Config) -> Vec<Link> {
        match (config.has(Role::Publish), config.has(Role::Consume)) {
            (true, true) => vec![Link::Publish, Link::Plain],
            (true, false) => vec![Link::Publish],
            (false, _) => vec![Link::Plain],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Link::Publish => "publish",
            Link::Plain => "consume",
        }
    }
}

/// Owns one connection: keeps it open while the bridge runs, and publishes
/// it through [`SessionWatch`].
pub struct Broker {
    link: Link,
    /// The bridge's links not connected now, shared by its brokers:
    /// `broker_up` is 1 only while it is 0.
    down: Arc<std::sync::atomic::AtomicUsize>,
    endpoints: Vec<Endpoint>,
    heartbeat: Duration,
    connect_timeout: Duration,
    topology: Topology,
    with_publisher: bool,
    recycle: Option<Recycle>,
    max_backoff: Duration,
    metrics: Metrics,
    sessions: watch::Sender<Option<Arc<Session>>>,
}

impl Broker {
    /// The brokers for this config, one per [`Link`]. Nothing connects
    /// until [`Broker::run`].
    pub fn for_config(config: &Config, metrics: &Metrics) -> Result<Vec<Self>, ConfigError> {
        let links = Link::for_config(config);
        let down = Arc::new(std::sync::atomic::AtomicUsize::new(links.len()));
        links
            .into_iter()
            .map(|link| Self::new(config, metrics.clone(), link, down.clone()))
            .collect()
    }

    fn new(
        config: &Config,
        metrics: Metrics,
        link: Link,
        down: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Result<Self, ConfigError> {
        let endpoints = config.endpoints().map_err(|reason| ConfigError {
            setting: "--amqp-url",
            reason,
        })?;
        // Every configured broker is a series from the start, at 0 until
        // connected: a dashboard sees the whole set.
        for endpoint in &endpoints {
            metrics
                .broker_connected
                .with_label_values(&[endpoint.label.as_str()])
                .set(0);
        }
        Ok(Self {
            link,
            down,
            endpoints,
            heartbeat: config.heartbeat,
            connect_timeout: config.connect_timeout,
            topology: Topology::from_config(config),
            with_publisher: link == Link::Publish,
            // Only the publish link is dropped for being unproductive: on
            // the other, that would also cut off the jobs in progress.
            recycle: (link == Link::Publish).then_some(Recycle {
                after: config.publish_timeout,
                nacks: config.max_length.is_none(),
            }),
            max_backoff: config.reconnect_max_backoff,
            metrics,
            sessions: watch::Sender::new(None),
        })
    }

    /// What this connection carries.
    pub fn link(&self) -> Link {
        self.link
    }

    /// A receiver of the current session.
    pub fn sessions(&self) -> SessionWatch {
        self.sessions.subscribe()
    }

    /// Connects, and reconnects after every loss, until `close` is
    /// cancelled; then closes the connection cleanly.
    ///
    /// `close` is separate from the process's shutdown signal: the roles
    /// drain first (acks need the channel), and only then is it cancelled.
    pub async fn run(self, close: CancellationToken) {
        let mut backoff = Backoff::new(RECONNECT_BACKOFF_BASE, self.max_backoff);
        let mut connected_before = false;
        // Start at a random node, so that the bridges of a deployment spread
        // over the cluster rather than all landing on the first URL.
        let mut next = rand::rng().random_range(0..self.endpoints.len());
        let mut failures_in_a_row = 0;
        let mut recycled_in_a_row = 0u32;
        loop {
            let current = next % self.endpoints.len();
            let endpoint = &self.endpoints[current];
            next = current + 1;
            let attempt = tokio::select! {
                () = close.cancelled() => break,
                attempt = self.connect(endpoint) => attempt,
            };
            let session = match attempt {
                Ok(session) => Arc::new(session),
                Err(e) => {
                    failures_in_a_row += 1;
                    // Another node may be up: try it at once. Wait only once
                    // every node has failed since the last healthy session.
                    if failures_in_a_row % self.endpoints.len() != 0 {
                        warn!(broker = %endpoint.label, error = %e, "broker unavailable; trying the next");
                        continue;
                    }
                    let delay = backoff.next_delay();
                    warn!(broker = %endpoint.label, error = %e, ?delay, "broker unavailable; retrying");
                    tokio::select! {
                        () = close.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            if connected_before {
                self.metrics.reconnects.inc();
            }
            connected_before = true;
            let connected = self
                .metrics
                .broker_connected
                .with_label_values(&[endpoint.label.as_str()]);
            if self.down.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                self.metrics.broker_up.set(1);
            }
            connected.inc();
            info!(queue = %self.topology.queue, broker = %endpoint.label, link = self.link.name(), "connected to the broker");
            let events = session.connection.events_listener();
            self.sessions.send_replace(Some(session.clone()));
            let started = Instant::now();
            let recycle = self.recycle.map(|r| Recycle {
                after: r.after * 2u32.pow(recycled_in_a_row.min(2)),
                ..r
            });

            let ended = tokio::select! {
                () = close.cancelled() => Ended::Closed,
                ended = wait_for_loss(&session, events, recycle) => ended,
            };
            // Withdraw the session first, so that no new work starts on it.
            self.sessions.send_replace(None);
            self.down.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.metrics.broker_up.set(0);
            connected.dec();
            let reason = match ended {
                Ended::Closed => {
                    let closing = session.connection.close(REPLY_SUCCESS, "shutdown".into());
                    match tokio::time::timeout(self.connect_timeout, closing).await {
                        Ok(Err(e)) => debug!(error = %e, "closing the connection"),
                        Err(_) => debug!("the broker did not answer the close in time"),
                        Ok(Ok(())) => {}
                    }
                    info!("connection closed");
                    break;
                }
                Ended::Lost => {
                    if session.health().acked {
                        recycled_in_a_row = 0;
                    }
                    "lost the broker connection"
                }
                Ended::Unproductive(why) => {
                    recycled_in_a_row += 1;
                    why
                }
            };
            // The next attempt goes to another node, picked at random: the
            // one that dropped us is the likeliest to be down, and a random
            // pick keeps the bridges spread out (stepping to the next in
            // order would pile them all onto one node over a rolling
            // restart).
            let others = self.endpoints.len() - 1;
            if others > 0 {
                next = current + 1 + rand::rng().random_range(0..others);
            }
            warn!(broker = %endpoint.label, link = self.link.name(), reason, "reconnecting");
            // Close what is left of the old connection, so that its socket
            // and channels don't linger; a wedged close must not stop the
            // reconnect.
            let _ = tokio::time::timeout(
                self.connect_timeout,
                session
                    .connection
                    .close(CONNECTION_FORCED, "reconnecting".into()),
            )
            .await;
            if started.elapsed() >= HEALTHY_SESSION {
                failures_in_a_row = 0;
                backoff.reset();
            } else {
                // Short-lived: a failed attempt. Once every node has had
                // one in a row, wait.
                failures_in_a_row += 1;
                if failures_in_a_row % self.endpoints.len() == 0 {
                    let delay = backoff.next_delay();
                    tokio::select! {
                        () = close.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.sessions.send_replace(None);
    }

    /// Opens a connection to `endpoint`, declares the topology and opens the
    /// publisher channel.
    async fn connect(&self, endpoint: &Endpoint) -> Result<Session, BrokerError> {
        tokio::time::timeout(self.connect_timeout, self.open(endpoint))
            .await
            .unwrap_or(Err(BrokerError::ConnectTimeout(self.connect_timeout)))
    }

    async fn open(&self, endpoint: &Endpoint) -> Result<Session, BrokerError> {
        let name = format!("host-bridge:{}:{}", self.topology.queue, self.link.name());
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        // The heartbeat goes into the URI because lapin takes it only from
        // there. The broker picks the lower of its own and ours.
        let mut uri = endpoint.uri.clone();
        uri.query.heartbeat = Some(u16::try_from(self.heartbeat.as_secs()).unwrap_or(u16::MAX));
        let connection = Connection::connect_uri(uri, properties)
            .await
            .map_err(BrokerError::Connect)?;
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::Channel)?;
        self.topology
            .declare(&channel)
            .await
            .map_err(BrokerError::Topology)?;
        let publisher = if self.with_publisher {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(BrokerError::Channel)?;
            Some(channel)
        } else {
            let _ = channel
                .close(REPLY_SUCCESS, "topology declared".into())
                .await;
            None
        };
        Ok(Session {
            endpoint: endpoint.label.clone(),
            connection,
            publisher,
            health: Mutex::default(),
        })
    }
}

/// Returns once the session is no longer usable: an error event from the
/// connection, or (checked every second) a closed connection or channel;
/// or, with `recycle`, once it has been unproductive for too long.
async fn wait_for_loss(
    session: &Session,
    events: impl futures::Stream<Item = Event>,
    recycle: Option<Recycle>,
) -> Ended {
    let mut events = std::pin::pin!(events);
    let mut check = tokio::time::interval(LINK_CHECK_INTERVAL);
    // A blocked connection (a memory or disk alarm) is not a useless link:
    // the alarm blocks publishers on every node, so moving would only lose
    // the confirms in flight. Its overdue confirms are judged afresh from
    // the moment it is unblocked.
    let mut blocked_at: Option<Instant> = None;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::Error(e)) => {
                    warn!(error = %e, "connection error");
                    return Ended::Lost;
                }
                Some(event) => debug!(?event, "connection event"),
                None => return Ended::Lost,
            },
            _ = check.tick() => {
                if !session.usable() {
                    return Ended::Lost;
                }
                if session.blocked() {
                    blocked_at = Some(Instant::now());
                    continue;
                }
                let unblocked_long_enough = |after: Duration| {
                    blocked_at.is_none_or(|t| t.elapsed() >= after)
                };
                if let Some(recycle) = recycle
                    && unblocked_long_enough(recycle.after)
                    && let Some(why) = session.unproductive(recycle.after, recycle.nacks)
                {
                    warn!(broker = %session.endpoint, why, after = ?recycle.after, "the link is up but useless; moving to another node");
                    return Ended::Unproductive(why);
                }
            }
        }
    }
}

/// How long each step of the queue-depth poll may take: one round trip.
const POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until a usable session exists, or `stop` is cancelled.
pub async fn current_session(
    sessions: &mut SessionWatch,
    stop: &CancellationToken,
) -> Option<Arc<Session>> {
    tokio::select! {
        () = stop.cancelled() => None,
        session = sessions.wait_for(|s| s.as_ref().is_some_and(|s| s.usable())) => {
            session.ok().and_then(|s| s.clone())
        }
    }
}

/// Reads the work queue's ready count with a passive declare every
/// `interval`, into `host_bridge_queue_ready_messages`, until `stop`.
pub async fn poll_queue_depth(
    mut sessions: SessionWatch,
    queue: String,
    interval: Duration,
    metrics: Metrics,
    stop: CancellationToken,
) {
    // Set afresh on each reading (a removed series' handle would not come
    // back), and removed as soon as a reading fails: a stale depth while
    // disconnected would feed the autoscaler a number nobody measured.
    let ready = |depth: Option<u32>| match depth {
        Some(depth) => metrics
            .queue_ready
            .with_label_values(&[queue.as_str()])
            .set(depth.into()),
        None => {
            let _ = metrics.queue_ready.remove_label_values(&[queue.as_str()]);
        }
    };
    while let Some(session) = current_session(&mut sessions, &stop).await {
        let opened = tokio::time::timeout(POLL_TIMEOUT, session.connection.create_channel()).await;
        let channel = match opened {
            Ok(Ok(channel)) => channel,
            failed => {
                debug!(?failed, "queue depth: no channel");
                let _ = tokio::select! {
                    () = stop.cancelled() => break,
                    changed = sessions.changed() => changed,
                    () = tokio::time::sleep(interval) => Ok(()),
                };
                continue;
            }
        };
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let declared = channel.queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            );
            match tokio::time::timeout(POLL_TIMEOUT, declared).await {
                Ok(Ok(q)) => ready(Some(q.message_count())),
                failed => {
                    debug!(?failed, "queue depth: passive declare failed");
                    ready(None);
                    break;
                }
            }
        }
        let _ =
            tokio::time::timeout(POLL_TIMEOUT, channel.close(REPLY_SUCCESS, "done".into())).await;
        // A failed declare (no such queue yet) closed the channel: wait one
        // interval before the next, rather than spinning.
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = backoff.next_delay();
        assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
        let second = backoff.next_delay();
        assert!((Duration::from_millis(100)..=Duration::from_millis(200)).contains(&second));
        let later: Vec<_> = (0..40).map(|_| backoff.next_delay()).collect();
        assert!(
            later.iter().all(|d| *d <= Duration::from_secs(2)),
            "{later:?}"
        );
        // From the 6th attempt on, the ceiling is the cap: 1 s to 2 s.
        assert!(
            later[4..].iter().all(|d| *d >= Duration::from_secs(1)),
            "{later:?}"
        );
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn a_link_is_unproductive_only_when_stalled_or_nacking_all_along() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(2);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut health = Health::default();
        assert_eq!(health.unproductive(limit, true, at(10_000)), None);

        // Stalled: overdue since t0, judged at 1.9 s and at 2 s.
        health.begin_overdue(at(0));
        health.begin_overdue(at(500));
        assert_eq!(health.unproductive(limit, true, at(1_900)), None);
        assert_eq!(
            health.unproductive(limit, true, at(2_000)),
            Some("confirms overdue")
        );
        health.end_overdue();
        assert_eq!(
            health.unproductive(limit, true, at(2_000)),
            Some("confirms overdue")
        );
        health.end_overdue();
        assert_eq!(health.unproductive(limit, true, at(2_000)), None);

        // Nacks: one and then silence is no pattern; three spanning the
        // limit, the last one recent, are; an ack in between starts over.
        let mut health = Health::default();
        health.record_verdict(false, at(0));
        assert_eq!(health.unproductive(limit, true, at(5_000)), None);
        health.record_verdict(false, at(1_000));
        health.record_verdict(false, at(2_500));
        assert_eq!(
            health.unproductive(limit, true, at(2_600)),
            Some("every publish nacked")
        );
        assert_eq!(
            health.unproductive(limit, false, at(2_600)),
            None,
            "nacks off: a cap"
        );
        assert_eq!(
            health.unproductive(limit, true, at(4_600)),
            None,
            "the last nack is old"
        );
        health.record_verdict(true, at(2_700));
        health.record_verdict(false, at(2_800));
        health.record_verdict(false, at(2_900));
        health.record_verdict(false, at(3_000));
        assert_eq!(health.unproductive(limit, true, at(3_100)), None);
        assert!(health.acked);
    }

    #[test]
    fn queue_arguments_bound_retries_and_refuse_overflow() {
        let topology = Topology {
            queue: "q".into(),
            dead_letter_exchange: "q.dlx".into(),
            dead_letter_queue: "q.dead".into(),
            delivery_limit: 3,
            max_length: Some(10),
            quorum_initial_group_size: Some(3),
        };
        let args = topology.queue_arguments();
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-delivery-limit"), Some(AMQPValue::LongLongInt(3)));
        assert_eq!(get("x-max-length"), Some(AMQPValue::LongLongInt(10)));
        assert_eq!(get("x-overflow"), Some(long_string("reject-publish")));
        assert_eq!(get("x-dead-letter-exchange"), Some(long_string("q.dlx")));
        assert_eq!(
            get("x-quorum-initial-group-size"),
            Some(AMQPValue::LongLongInt(3))
        );
        // The dead-letter queue is replicated as widely as the work queue.
        let dead = topology.quorum_arguments();
        assert_eq!(
            dead.inner().get("x-quorum-initial-group-size"),
            Some(&AMQPValue::LongLongInt(3))
        );
        assert_eq!(
            dead.inner().get("x-queue-type"),
            Some(&long_string("quorum"))
        );
    }
}
