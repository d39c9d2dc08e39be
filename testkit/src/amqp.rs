//! Per-test queues on the real broker at `AMQP_URL`, and direct AMQP access
//! for checking what the bridge did.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use lapin::options::ExchangeDeleteOptions;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use lapin::{Channel, Connection, ConnectionProperties};

/// The broker tests use: `AMQP_URL`, or the local-development default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A unique queue for one test (or bench case), so that tests run in
/// parallel and on a broker others use; the bridge derives `<name>.dlx` and
/// `<name>.dead` from it. The guard deletes all three when dropped.
pub fn unique_queue(test: &str) -> TestQueue {
    TestQueue::on(&amqp_url(), test)
}

/// A test's own queue name. On drop it deletes the queue, `<name>.dead` and
/// `<name>.dlx` from its broker ([`amqp_url`] unless made with
/// [`TestQueue::on`]), so that a test that fails
/// half-way leaves nothing behind either. Derefs to the name.
#[derive(Debug)]
pub struct TestQueue {
    name: String,
    /// The broker it is cleaned up on.
    amqp_url: String,
}

impl TestQueue {
    /// A unique queue on the broker at `amqp_url` (a benchmark's, say).
    pub fn on(amqp_url: &str, test: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Self {
            name: format!("test.{test}.{}.{nanos}", std::process::id()),
            amqp_url: amqp_url.to_owned(),
        }
    }

    /// The name, as the bridge's `--queue` takes it.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for TestQueue {
    type Target = String;

    fn deref(&self) -> &String {
        &self.name
    }
}

impl AsRef<str> for TestQueue {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl AsRef<std::ffi::OsStr> for TestQueue {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.name.as_ref()
    }
}

impl std::fmt::Display for TestQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// How long a drop guard may spend deleting its topology.
const CLEANUP_LIMIT: Duration = Duration::from_secs(10);

impl Drop for TestQueue {
    fn drop(&mut self) {
        // Drop can't await, and may run inside a runtime or after a panic:
        // delete from a thread with a runtime of its own, bounded in time.
        let name = std::mem::take(&mut self.name);
        let url = std::mem::take(&mut self.amqp_url);
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let delete = async {
                    let inspector = Inspector::connect_to(&url).await?;
                    inspector.delete_topology_if_present(&name).await
                };
                let _ = tokio::time::timeout(CLEANUP_LIMIT, delete).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// A direct connection to the broker, for inspecting queues.
pub struct Inspector {
    /// The connection.
    pub connection: Connection,
    /// A channel on it.
    pub channel: Channel,
}

impl Inspector {
    /// Connects to [`amqp_url`].
    pub async fn connect() -> anyhow::Result<Self> {
        Self::connect_to(&amqp_url()).await
    }

    /// Connects to the broker at `url` (a private one, say).
    pub async fn connect_to(url: &str) -> anyhow::Result<Self> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .with_context(|| format!("failed to connect to RabbitMQ at {url} (is it running?)"))?;
        let channel = connection.create_channel().await?;
        Ok(Self {
            connection,
            channel,
        })
    }

    /// Takes one message off `queue` (acking it), if any.
    pub async fn get(
        &self,
        queue: &str,
    ) -> anyhow::Result<Option<lapin::message::BasicGetMessage>> {
        let message = self
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .with_context(|| format!("basic.get on {queue}"))?;
        if let Some(message) = &message {
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await?;
        }
        Ok(message)
    }

    /// Takes every message currently in `queue`.
    pub async fn drain(&self, queue: &str) -> anyhow::Result<Vec<lapin::message::Delivery>> {
        let mut all = Vec::new();
        while let Some(message) = self.get(queue).await? {
            all.push(message.delivery);
        }
        Ok(all)
    }

    /// The job id of every message in `queue`, taking them off it; a
    /// message that is not a job is an error.
    pub async fn drain_ids(&self, queue: &str) -> anyhow::Result<Vec<String>> {
        self.drain(queue)
            .await?
            .iter()
            .map(|d| Ok(job::Job::from_body(&d.data)?.id))
            .collect()
    }

    /// The ready count of `queue`, by passive declare.
    pub async fn ready(&self, queue: &str) -> anyhow::Result<u32> {
        let channel = self.connection.create_channel().await?;
        let q = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions::default().passive(),
                lapin::types::FieldTable::default(),
            )
            .await
            .with_context(|| format!("passive declare of {queue}"))?;
        let _ = channel.close(200, "ok".into()).await;
        Ok(q.message_count())
    }

    /// Deletes whichever of a test's queue, dead-letter queue and exchange
    /// exist, each on a channel of its own (a failed delete closes its
    /// channel), ignoring what is already gone.
    pub async fn delete_topology_if_present(&self, queue: &str) -> anyhow::Result<()> {
        for q in [queue.to_owned(), format!("{queue}.dead")] {
            let channel = self.connection.create_channel().await?;
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let channel = self.connection.create_channel().await?;
        let _ = channel
            .exchange_delete(
                format!("{queue}.dlx").as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        Ok(())
    }

    /// Deletes a test's queue, its dead-letter queue and exchange.
    pub async fn delete_topology(&self, queue: &str) -> anyhow::Result<()> {
        for q in [queue.to_owned(), format!("{queue}.dead")] {
            self.channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        self.channel
            .exchange_delete(
                format!("{queue}.dlx").as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
        Ok(())
    }
}

/// A delivery's headers, read as a test reads them: a missing or mistyped
/// header reads as empty or -1, so an assertion shows what was there.
pub struct Headers(std::collections::BTreeMap<String, lapin::types::AMQPValue>);

impl Headers {
    /// The headers of `delivery`.
    pub fn of(delivery: &lapin::message::Delivery) -> Self {
        let map = delivery
            .properties
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Self(map)
    }

    /// A string header.
    pub fn text(&self, name: &str) -> String {
        use lapin::types::AMQPValue;
        match self.0.get(name) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            Some(AMQPValue::ShortString(s)) => s.to_string(),
            _ => String::new(),
        }
    }

    /// An integer header.
    pub fn int(&self, name: &str) -> i64 {
        use lapin::types::AMQPValue;
        match self.0.get(name) {
            Some(AMQPValue::LongLongInt(n)) => *n,
            Some(AMQPValue::LongInt(n)) => (*n).into(),
            Some(AMQPValue::LongUInt(n)) => (*n).into(),
            Some(AMQPValue::ShortInt(n)) => (*n).into(),
            Some(AMQPValue::ShortUInt(n)) => (*n).into(),
            _ => -1,
        }
    }
}
