//! Per-test queues on the real broker at `AMQP_URL`, and direct AMQP access
//! for checking what the bridge did.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use lapin::options::ExchangeDeleteOptions;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use lapin::{Channel, Connection, ConnectionProperties};

/// The broker tests use: `AMQP_URL`, or the local-development default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A unique queue name for one test, so tests run in parallel and on a broker
/// others use. The bridge derives `<name>.dlx` and `<name>.dead` from it.
pub fn unique_queue(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("test.{test}.{}.{nanos}", std::process::id())
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
