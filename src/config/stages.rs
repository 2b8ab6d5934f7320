//! The settings of the stages (processor, sink, ingest, HTTP, health) and of what they
//! accept and keep (input, retention, alert encoding).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, KafkaConfig, invalid};
use crate::redact;

/// How the processor writes alerts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// The encoding of records on `alerts`: avro or confluent.
    pub encoding: AlertEncoding,
}

/// The encoding of records on `alerts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertEncoding {
    /// Avro single-object encoding.
    #[default]
    Avro,
    /// The Confluent Schema Registry wire format, with the id registered for
    /// `<prefix>alerts-value` (needs `schema_registry.url`).
    Confluent,
}

/// How the processor stage batches its work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Outputs and consumed offsets are committed together at most this often, ms.
    pub commit_interval_ms: u64,
    /// Most records processed between two commits.
    pub max_batch_records: usize,
    /// The producer's `transactional.id`: one per instance, stable across its restarts (a
    /// pod name); a second process started with the same id fences the first. Empty:
    /// `<prefix>processor-<hostname>-<pid>`.
    pub transactional_id: String,
    /// Whether the kernel may back this process's memory with transparent huge pages
    /// (see [`crate::huge_pages`]); the whole process, the sink stage too when it runs here.
    pub transparent_huge_pages: bool,
    /// Threads that apply a batch's records to the partitions' engines (each partition on
    /// one of them, in order). 0: one per core.
    pub engine_threads: usize,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            commit_interval_ms: 100,
            max_batch_records: 20_000,
            transactional_id: String::new(),
            transparent_huge_pages: false,
            engine_threads: 0,
        }
    }
}

impl ProcessorConfig {
    /// The threads [`ProcessorConfig::engine_threads`] asks for, 0 resolved to the cores.
    pub fn engine_threads(&self) -> usize {
        match self.engine_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// The transactional id this process uses.
    pub fn transactional_id(&self, kafka: &KafkaConfig) -> String {
        if !self.transactional_id.is_empty() {
            return self.transactional_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{}-{host}-{}", kafka.name("processor"), std::process::id())
    }
}

/// How the sink stage batches its writes to PostgreSQL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// A transaction is written once this many rows are buffered...
    pub batch_rows: usize,
    /// ...or this long after the first buffered row, ms.
    pub batch_ms: u64,
    /// First retry delay after a database error, ms; doubled (with jitter) on each retry.
    pub retry_initial_ms: u64,
    /// Longest retry delay, ms.
    pub retry_max_ms: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig { batch_rows: 20_000, batch_ms: 500, retry_initial_ms: 200, retry_max_ms: 10_000 }
    }
}

/// The HTTP endpoint for metrics, health and the JSON API.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address `/metrics`, `/healthz` and `/readyz` listen on.
    pub listen: String,
    /// A request's line and headers must arrive within this long, ms (also the longest a
    /// kept-alive connection waits for its next request).
    pub header_read_timeout_ms: u64,
    /// A connection on which no byte moves either way for this long is closed, ms.
    pub idle_timeout_ms: u64,
    /// Most connections served at once; more wait in the listen queue.
    pub max_connections: usize,
    /// How long the API's hot reads (`/api/v1/health`, `/api/v1/apps`) are answered from
    /// memory before PostgreSQL is asked again, ms; also their `Cache-Control: max-age`.
    pub api_cache_ttl_ms: u64,
    /// Bearer tokens the API's state-changing routes accept (`Authorization: Bearer …`),
    /// compared in constant time; with none, such requests are refused. Env
    /// `PULSEWATCH_HTTP_API_TOKENS`, comma-separated; masked in `config show`.
    pub api_tokens: Vec<String>,
}

/// Shown with its tokens masked.
impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("header_read_timeout_ms", &self.header_read_timeout_ms)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field("max_connections", &self.max_connections)
            .field("api_cache_ttl_ms", &self.api_cache_ttl_ms)
            .field("api_tokens", &vec![redact::MASK; self.api_tokens.len()])
            .finish()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 128,
            api_cache_ttl_ms: 2_000,
            api_tokens: Vec::new(),
        }
    }
}

/// The HTTP ingest stage: heartbeats over HTTP, produced to `heartbeats`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address `/v1/heartbeats`, `/v1/heartbeats/batch` and `/v1/ping/...` listen on.
    pub listen: String,
    /// Most beats in one batch request.
    pub max_batch: usize,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// A beat the broker has not acknowledged within this long is answered 503, ms.
    pub produce_timeout_ms: u64,
    /// Most beats waiting for the broker's acknowledgement at once; beyond, requests are
    /// answered 429.
    pub max_in_flight: usize,
    /// Most connections served at once (the timeouts are `[http]`'s).
    pub max_connections: usize,
    /// Most (app_id, instance_id, seq) remembered to answer a retry without producing again.
    pub dedup_capacity: u64,
    /// How long such a beat is remembered, ms.
    pub dedup_ttl_ms: u64,
    /// Bearer tokens and the app_id globs each may write; none: every app, loopback only.
    pub tokens: Vec<IngestToken>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: "127.0.0.1:9465".into(),
            max_batch: 1_000,
            max_body_bytes: 4 * 1024 * 1024,
            produce_timeout_ms: 5_000,
            max_in_flight: 10_000,
            max_connections: 1_024,
            dedup_capacity: 200_000,
            dedup_ttl_ms: 300_000,
            tokens: Vec::new(),
        }
    }
}

/// Shown with its tokens masked.
impl std::fmt::Debug for IngestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestConfig")
            .field("listen", &self.listen)
            .field("max_batch", &self.max_batch)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("produce_timeout_ms", &self.produce_timeout_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_connections", &self.max_connections)
            .field("dedup_capacity", &self.dedup_capacity)
            .field("dedup_ttl_ms", &self.dedup_ttl_ms)
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// One bearer token of the ingest stage.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestToken {
    /// Sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// app_id globs (`checkout-*`) this token may write.
    pub apps: Vec<String>,
}

/// Shown with the token masked.
impl std::fmt::Debug for IngestToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestToken").field("token", &redact::MASK).field("apps", &self.apps).finish()
    }
}

impl IngestConfig {
    /// Checks the keys of `[ingest]` that types alone cannot.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("ingest.listen", format!("is not an address like 127.0.0.1:9465: {e}")))?;
        for (key, value) in [
            ("ingest.max_batch", self.max_batch as u64),
            ("ingest.max_body_bytes", self.max_body_bytes as u64),
            ("ingest.produce_timeout_ms", self.produce_timeout_ms),
            ("ingest.max_in_flight", self.max_in_flight as u64),
            ("ingest.max_connections", self.max_connections as u64),
            ("ingest.dedup_capacity", self.dedup_capacity),
            ("ingest.dedup_ttl_ms", self.dedup_ttl_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.max_batch > self.max_in_flight {
            return Err(invalid("ingest.max_batch", "must not exceed ingest.max_in_flight"));
        }
        for (i, t) in self.tokens.iter().enumerate() {
            let key = format!("ingest.tokens[{i}]");
            if t.token.trim().is_empty() {
                return Err(invalid(&format!("{key}.token"), "must not be empty"));
            }
            if let Some(bad) = t.apps.iter().find_map(|g| globset::Glob::new(g).err()) {
                return Err(invalid(&format!("{key}.apps"), format!("is not a glob: {bad}")));
            }
        }
        Ok(())
    }

    /// Refuses a listener other machines can reach when no token guards it.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        let addr: SocketAddr = self.listen.parse().map_err(|e| invalid("ingest.listen", format!("{e}")))?;
        if self.tokens.is_empty() && !addr.ip().is_loopback() {
            return Err(invalid(
                "ingest.listen",
                format!("{addr} is not a loopback address and no [[ingest.tokens]] is configured"),
            ));
        }
        Ok(())
    }
}

/// What `/healthz` counts as unhealthy besides a stage that stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// A partition with records to read whose position has not moved on for this long, or
    /// a stage that has not reported its partitions for this long, is unhealthy, ms. The
    /// stages report every 10 s.
    pub stall_after_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { stall_after_ms: 120_000 }
    }
}

/// What counts as valid input on `heartbeats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// A beat whose `sent_at` is further than this from the record's broker timestamp is
    /// invalid input (dead-lettered), in milliseconds. Default 24 h.
    pub max_sent_at_drift_ms: i64,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig { max_sent_at_drift_ms: crate::codec::DEFAULT_MAX_DRIFT_MS }
    }
}

/// How long PostgreSQL keeps data, and how far ahead partitions are created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days of raw `heartbeat_event` partitions kept.
    pub raw_days: u32,
    /// Days of `metric_rollup_1m` partitions kept.
    pub rollup_days: u32,
    /// Months of `alert_event` partitions kept; 0 keeps them all.
    pub alert_months: u32,
    /// Days of daily partitions created ahead of today.
    pub days_ahead: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { raw_days: 7, rollup_days: 90, alert_months: 0, days_ahead: 3 }
    }
}
