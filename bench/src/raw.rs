//! The broker's limit, measured with lapin directly: publishing with
//! confirms, pipelined on one connection, and consuming with acks.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::stats::Run;

/// A connection with a confirm-mode channel.
pub struct Raw {
    /// The connection.
    pub connection: Connection,
    /// A channel in confirm mode.
    pub channel: Channel,
}

impl Raw {
    /// Connects.
    pub async fn connect(amqp_url: &str) -> Result<Self> {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection,
            channel,
        })
    }

    /// Publishes `count` persistent messages to `queue` with up to `window`
    /// confirms outstanding: what a good client does. Latency is publish to
    /// confirm.
    pub async fn publish(&self, queue: &str, count: usize, window: usize) -> Result<Run> {
        let body = br#"{"id":"raw","created_at":"2026-01-01T00:00:00Z"}"#;
        let mut in_flight = FuturesUnordered::new();
        let mut latencies = Vec::with_capacity(count);
        let started = Instant::now();
        for _ in 0..count {
            while in_flight.len() >= window {
                if let Some(result) = in_flight.next().await {
                    latencies.push(result?);
                }
            }
            let sent = Instant::now();
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            in_flight.push(async move {
                match confirm.await? {
                    Confirmation::Ack(None) => Ok::<_, anyhow::Error>(sent.elapsed()),
                    other => bail!("not confirmed: {other:?}"),
                }
            });
        }
        while let Some(result) = in_flight.next().await {
            latencies.push(result?);
        }
        Ok(Run::new(count, started.elapsed(), latencies))
    }

    /// Consumes and acks `count` messages from `queue` with `prefetch`.
    /// Latency is the gap between consecutive deliveries: the whole
    /// per-message cycle as the consumer sees it.
    pub async fn consume(&self, queue: &str, count: usize, prefetch: u16) -> Result<Run> {
        let channel = self.connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut gaps = Vec::with_capacity(count);
        let started = Instant::now();
        let mut last = started;
        for _ in 0..count {
            let Some(delivery) =
                tokio::time::timeout(Duration::from_secs(30), consumer.next()).await?
            else {
                bail!("the consumer ended early");
            };
            let delivery = delivery?;
            let now = Instant::now();
            gaps.push(now - last);
            last = now;
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        let elapsed = started.elapsed();
        let _ = channel.close(200, "done".into()).await;
        Ok(Run::new(count, elapsed, gaps))
    }

    /// Empties a queue.
    pub async fn purge(&self, queue: &str) -> Result<()> {
        self.channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?;
        Ok(())
    }
}
