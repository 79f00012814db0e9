//! Kafka through librdkafka (the `kafka` feature): the producer of a `kafka://` capture
//! target, one message per record, and the consumer the replayer reads a topic with.
//!
//! The producer is made on a runtime thread the first time a copy needs it, so librdkafka's
//! own threads inherit the runtime's blocked signals. Its queue is bounded by the target's
//! share of the backlog, and a message that the broker has not acknowledged within the
//! copy's `async_mirror_timeout` ends the copy all the same.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::OnceCell;

use super::file_writer::Refusal;
use crate::engine::outcome::{FailReason, Failure};

/// A `kafka://` target's producer, made when first needed.
pub struct KafkaOutput {
    brokers: String,
    topic: String,
    /// librdkafka's queue bounds: the target's share of the backlog.
    max_messages: usize,
    max_bytes: usize,
    producer: OnceCell<Result<FutureProducer, String>>,
}

impl KafkaOutput {
    pub fn new(brokers: &[String], topic: &str, max_messages: usize, max_bytes: usize) -> KafkaOutput {
        KafkaOutput {
            brokers: brokers.join(","),
            topic: topic.to_string(),
            max_messages,
            max_bytes,
            producer: OnceCell::new(),
        }
    }

    fn create(&self, timeout: Duration) -> Result<FutureProducer, String> {
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128).to_string();
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("message.timeout.ms", &ms)
            .set("socket.connection.setup.timeout.ms", "1000")
            .set("queue.buffering.max.messages", self.max_messages.clamp(1, 10_000_000).to_string())
            .set(
                "queue.buffering.max.kbytes",
                (self.max_bytes / 1024).clamp(1, i32::MAX as usize).to_string(),
            )
            .set("linger.ms", "5")
            .create()
            .map_err(|e| format!("cannot create the Kafka producer for {}: {e}", self.brokers))
    }

    /// Sends one record as one message; `Ok` once the broker acknowledged it.
    ///
    /// # Errors
    /// The producer's queue is full; the broker refused the message, or did not
    /// acknowledge it before `deadline`.
    pub async fn produce(&self, record: Vec<u8>, key: &[u8], deadline: Instant) -> Result<(), Refusal> {
        let left = deadline.saturating_duration_since(Instant::now());
        let producer = self.producer.get_or_init(|| async { self.create(left) }).await;
        let producer =
            producer.as_ref().map_err(|e| Refusal::Failed(Failure::new(FailReason::Connect, e)))?;
        let message = FutureRecord::to(&self.topic).payload(&record).key(key);
        let delivery = match producer.send_result(message) {
            Ok(d) => d,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                return Err(Refusal::Full);
            }
            Err((e, _)) => return Err(refused(&e, &self.topic)),
        };
        drop(record);
        match tokio::time::timeout_at(deadline.into(), delivery).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err((e, _)))) => Err(refused(&e, &self.topic)),
            Ok(Err(_)) => Err(Refusal::Failed(Failure::new(FailReason::Write, "the producer went away"))),
            Err(_) => Err(Refusal::Failed(Failure::new(
                FailReason::Timeout,
                format!("no acknowledgement for topic \"{}\" in time", self.topic),
            ))),
        }
    }
}

/// A broker's answer as a copy's failure: time ran out, no broker was reachable, or the
/// broker refused the message.
fn refused(e: &KafkaError, topic: &str) -> Refusal {
    let code = e.rdkafka_error_code();
    let reason = match code {
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut) => FailReason::Timeout,
        Some(
            RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::NetworkException,
        ) => FailReason::Connect,
        _ => FailReason::Write,
    };
    Refusal::Failed(Failure::new(reason, format!("topic \"{topic}\": {e}")))
}

/// Reads a topic as one member of consumer group `group`, from the earliest offset the
/// group has not consumed.
pub struct TopicReader {
    consumer: StreamConsumer,
    started: bool,
}

/// The longest wait for a topic's first message.
const JOIN: Duration = Duration::from_secs(30);

impl TopicReader {
    /// # Errors
    /// The consumer cannot be made or subscribed.
    pub fn new(brokers: &[String], topic: &str, group: &str) -> Result<TopicReader, String> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers.join(","))
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .create()
            .map_err(|e| format!("cannot create the Kafka consumer: {e}"))?;
        consumer.subscribe(&[topic]).map_err(|e| format!("cannot subscribe to \"{topic}\": {e}"))?;
        Ok(TopicReader { consumer, started: false })
    }

    /// The next message's value; `None` after `idle` without one (before the first, at
    /// least [`JOIN`]: joining the group takes a few seconds).
    ///
    /// # Errors
    /// A consumer error.
    pub async fn next(&mut self, idle: Duration) -> Result<Option<Vec<u8>>, String> {
        let wait = if self.started { idle } else { idle.max(JOIN) };
        self.started = true;
        match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => Ok(None),
            Ok(Ok(m)) => Ok(Some(m.payload().unwrap_or_default().to_vec())),
            Ok(Err(e)) => Err(e.to_string()),
        }
    }
}
