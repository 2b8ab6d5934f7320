//! What a batch publishes, inside its transaction: the state records of the applications it
//! changed (to `app-state`), dead letters (to `heartbeats-dlq`), alerts and rollups.

use prometheus::IntCounter;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};

use crate::app_state::{STATE_KINDS, StateRecordOut};
use crate::dead_letter::DeadLetter;
use crate::engine::Effect;
use crate::kafka::{self, TrackedProducer};
use crate::metrics::METRICS;
use crate::topology::Topics;

/// Where the processor publishes, and how it encodes alerts.
pub struct Outputs {
    pub topics: Topics,
    /// The registry's id of the alert schema when alerts are written in the Confluent wire
    /// format; `None`: single-object encoding.
    pub alert_schema_id: Option<u32>,
    /// The app-state records and bytes produced, looked up once rather than per record.
    state_records: IntCounter,
    state_bytes: IntCounter,
    /// The bytes by kind of record, in the order of [`STATE_KINDS`].
    state_bytes_by_kind: [IntCounter; STATE_KINDS.len()],
}

impl Outputs {
    pub fn new(topics: Topics, alert_schema_id: Option<u32>) -> Outputs {
        let labels = ["processor", topics.app_state.as_str()];
        Outputs {
            state_records: METRICS.records_out.with_label_values(&labels),
            state_bytes: METRICS.bytes_out.with_label_values(&labels),
            state_bytes_by_kind: STATE_KINDS.map(|kind| METRICS.state_bytes_out.with_label_values(&[kind])),
            topics,
            alert_schema_id,
        }
    }

    /// Sends one application's state to the app-state partition of its heartbeats
    /// partition's number, whatever partitioner the producers used.
    pub fn send_state(
        &self,
        producer: &TrackedProducer,
        partition: i32,
        record: &StateRecordOut,
    ) -> Result<(), KafkaError> {
        let state = OwnedHeaders::new_with_capacity(1)
            .insert(Header { key: record.header_name, value: Some(&record.header) });
        let topic = &self.topics.app_state;
        let key = record.key();
        kafka::send_to(producer, topic, Some(partition), &key, &record.value, Some(state))?;
        self.state_records.inc();
        let bytes = key.len() + record.value.len() + record.header_name.len() + record.header.len();
        self.state_bytes.inc_by(bytes as u64);
        let kind = STATE_KINDS.iter().position(|&k| k == record.kind()).expect("a kind of record listed");
        self.state_bytes_by_kind[kind].inc_by(bytes as u64);
        Ok(())
    }

    /// Sends an undecodable or invalid heartbeat's dead letter with its batch.
    pub fn send_dead_letter(
        &self,
        producer: &TrackedProducer,
        letter: &DeadLetter,
    ) -> Result<(), KafkaError> {
        letter.send(producer, &self.topics.heartbeats_dlq)?;
        METRICS.decode_errors.with_label_values(&[letter.code]).inc();
        METRICS.dlq_records.with_label_values(&[letter.code]).inc();
        tracing::debug!(
            partition = letter.partition,
            offset = letter.offset,
            code = letter.code,
            "processor: dead-lettered: {}",
            letter.message
        );
        Ok(())
    }

    /// Publishes a partition's alerts and rollups.
    pub fn publish(&self, producer: &TrackedProducer, effects: Vec<Effect>) -> Result<(), KafkaError> {
        for effect in effects {
            match effect {
                Effect::Alert(a) => {
                    let bytes = match self.alert_schema_id {
                        Some(id) => a.encode_confluent(id),
                        None => a.encode(),
                    };
                    kafka::send(producer, &self.topics.alerts, &a.app_id, &bytes, None)?;
                    METRICS
                        .alerts
                        .with_label_values(&[a.kind.as_str(), a.severity.as_str(), a.state.as_str()])
                        .inc();
                    METRICS.records_out.with_label_values(&["processor", &self.topics.alerts]).inc();
                    tracing::info!(app = %a.app_id, instance = a.instance_id.as_deref().unwrap_or("-"), kind = a.kind.as_str(), severity = a.severity.as_str(), state = a.state.as_str(), event_at = a.event_at, "{}", a.summary);
                }
                Effect::Rollup(r) => {
                    let payload = serde_json::to_vec(&r).expect("a rollup serialises");
                    kafka::send(producer, &self.topics.metrics, &r.app_id, &payload, None)?;
                    METRICS.records_out.with_label_values(&["processor", &self.topics.metrics]).inc();
                }
            }
        }
        Ok(())
    }
}
