//! The one validated configuration: defaults in code, then `pulsewatch.toml`, then
//! `PULSEWATCH_<SECTION>_<KEY>` environment overrides.
//!
//! Unknown keys, in the file or in the environment, are rejected with the key named; so are
//! values that do not parse or make no sense. `pulsewatch.toml` at the repository root
//! documents every key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::redact;

/// Environment variable naming the config file (the `--config` flag wins over it).
pub const CONFIG_ENV: &str = "PULSEWATCH_CONFIG";
const ENV_PREFIX: &str = "PULSEWATCH_";
/// Variables under this prefix size the benchmarks (`benches/`); the configuration leaves
/// them alone.
const BENCH_ENV_PREFIX: &str = "PULSEWATCH_BENCH_";
/// List keys that an environment variable sets as comma-separated strings.
const COMMA_LISTS: &[&str] = &["http.api_tokens"];

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("environment variable {var}: {problem}")]
    Env { var: String, problem: String },
    #[error("config key {key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), problem: problem.into() }
}

/// Everything pulsewatch can be told.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub postgres: PostgresConfig,
    pub http: HttpConfig,
    /// The HTTP ingest stage (`--stage ingest`).
    pub ingest: IngestConfig,
    pub health: HealthConfig,
    pub input: InputConfig,
    pub retention: RetentionConfig,
    /// Event-time and liveness settings of the decision engine.
    pub detection: crate::engine::EngineConfig,
    /// Threshold rules.
    pub rules: crate::rules::RuleSet,
    /// Leak and trend detection.
    pub trend: crate::trend::TrendConfig,
    pub processor: ProcessorConfig,
    pub sink: SinkConfig,
    pub schema_registry: SchemaRegistryConfig,
    pub alerts: AlertsConfig,
}

/// How the processor writes alerts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
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
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            commit_interval_ms: 100,
            max_batch_records: 20_000,
            transactional_id: String::new(),
            transparent_huge_pages: false,
        }
    }
}

impl ProcessorConfig {
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

/// The Confluent-compatible Schema Registry that resolves the writer schemas of records in
/// the Confluent wire format.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// Base URL of the Confluent API, e.g. `http://127.0.0.1:8081/apis/ccompat/v7`; empty:
    /// no registry, and records in that format are refused.
    pub url: String,
    /// HTTP basic authentication; no authentication when empty.
    pub username: String,
    pub password: String,
}

/// Shown with its password masked.
impl std::fmt::Debug for SchemaRegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistryConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &redact::secret(&self.password))
            .finish()
    }
}

/// The Kafka cluster and how pulsewatch names its topics there.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Prepended to every topic and consumer-group name, so that several deployments (or
    /// tests) share one cluster without seeing each other's data.
    pub topic_prefix: String,
    /// `client.id` of every client pulsewatch creates.
    pub client_id: String,
    /// Raw librdkafka properties (security, tuning), applied to every client.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            client_id: "pulsewatch".into(),
            properties: BTreeMap::new(),
        }
    }
}

/// Shown with its credential properties masked.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, std::borrow::Cow<'_, str>> =
            self.properties.iter().map(|(k, v)| (k.as_str(), redact::kafka_property(k, v))).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("client_id", &self.client_id)
            .field("properties", &properties)
            .finish()
    }
}

impl KafkaConfig {
    /// The full name of a topic or group: the prefix, then the base name.
    pub fn name(&self, base: &str) -> String {
        format!("{}{}", self.topic_prefix, base)
    }

    /// A librdkafka client config with the brokers, the client id and the raw properties.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers).set("client.id", &self.client_id);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// The PostgreSQL database the sink writes and analysts read.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// A libpq connection string: a URL, `postgres://user:password@host:port/database`, or
    /// `key=value` pairs, `host=... user=... password=...`.
    pub url: String,
    /// The schema every table, view and partition lives in (created when missing).
    pub schema: String,
    /// Largest number of connections in the pool.
    pub pool_size: usize,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://postgres@127.0.0.1:54329/pulsewatch".into(),
            schema: "pulsewatch".into(),
            pool_size: 8,
        }
    }
}

/// Shown with its password masked.
impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact::conninfo(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .finish()
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
    fn validate(&self) -> Result<(), ConfigError> {
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

impl Config {
    /// Loads defaults, then the file (if any), then `PULSEWATCH_*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::Syntax {
                    path: path.display().to_string(),
                    message: e.message().to_owned(),
                })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut tree, env)?;
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
            let key = e.path().to_string();
            invalid(&key, e.into_inner().message().to_owned())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Loads from the process environment and the file `--config`, `PULSEWATCH_CONFIG` or
    /// `./pulsewatch.toml` names, in that order of preference.
    pub fn from_process(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env_file = std::env::var_os(CONFIG_ENV).map(std::path::PathBuf::from);
        let default_file = Path::new("pulsewatch.toml");
        let chosen = file
            .map(Path::to_path_buf)
            .or(env_file)
            .or_else(|| default_file.exists().then(|| default_file.to_path_buf()));
        Config::load(chosen.as_deref(), std::env::vars())
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.brokers.split(',').any(|b| b.trim().is_empty()) {
            return Err(invalid("kafka.brokers", "must list at least one host:port, comma-separated"));
        }
        if !self.kafka.topic_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(invalid(
                "kafka.topic_prefix",
                "may hold only ASCII letters, digits, '.', '_' and '-'",
            ));
        }
        if self.kafka.topic_prefix.len() > 200 {
            return Err(invalid("kafka.topic_prefix", "is longer than 200 characters"));
        }
        self.postgres
            .url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| invalid("postgres.url", format!("is not a valid PostgreSQL URL: {e}")))?;
        if !is_sql_identifier(&self.postgres.schema) {
            return Err(invalid(
                "postgres.schema",
                "must be a lower-case SQL identifier: a-z or _, then a-z, 0-9 or _, at most 63 bytes",
            ));
        }
        if self.postgres.pool_size == 0 {
            return Err(invalid("postgres.pool_size", "must be at least 1"));
        }
        self.http
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("http.listen", format!("is not an address like 127.0.0.1:9464: {e}")))?;
        if self.http.api_tokens.iter().any(|t| t.trim().is_empty() || t.trim() != t) {
            return Err(invalid("http.api_tokens", "a token is empty or has spaces around it"));
        }
        for (key, value) in [
            ("http.header_read_timeout_ms", self.http.header_read_timeout_ms),
            ("http.idle_timeout_ms", self.http.idle_timeout_ms),
            ("http.max_connections", self.http.max_connections as u64),
            ("health.stall_after_ms", self.health.stall_after_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        let registry = &self.schema_registry.url;
        let is_http = registry.starts_with("http://") || registry.starts_with("https://");
        if !registry.is_empty() && !is_http {
            return Err(invalid("schema_registry.url", "must be an http:// or https:// URL, or empty"));
        }
        if self.alerts.encoding == AlertEncoding::Confluent && registry.is_empty() {
            return Err(invalid("alerts.encoding", "\"confluent\" needs schema_registry.url"));
        }
        self.ingest.validate()?;
        if self.input.max_sent_at_drift_ms <= 0 {
            return Err(invalid("input.max_sent_at_drift_ms", "must be positive"));
        }
        self.detection.validate().map_err(|(key, problem)| invalid(&key, problem))?;
        self.trend.validate().map_err(|(key, problem)| invalid(&key, problem))?;
        for (key, days) in [
            ("retention.raw_days", self.retention.raw_days),
            ("retention.rollup_days", self.retention.rollup_days),
        ] {
            if days == 0 {
                return Err(invalid(key, "must be at least 1 day"));
            }
        }
        Ok(())
    }

    /// The threshold rules with their per-application overrides compiled.
    pub fn compiled_rules(&self) -> Result<crate::rules::CompiledRules, String> {
        crate::rules::CompiledRules::new(&self.rules, &self.detection, &self.trend)
    }

    /// The effective config as TOML, with passwords and secrets replaced by `****`.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.postgres.url = redact::conninfo(&shown.postgres.url);
        for (k, v) in shown.kafka.properties.iter_mut() {
            *v = redact::kafka_property(k, v).into_owned();
        }
        shown.schema_registry.password = redact::secret(&shown.schema_registry.password).into_owned();
        for t in shown.ingest.tokens.iter_mut() {
            t.token = redact::MASK.to_owned();
        }
        for t in shown.http.api_tokens.iter_mut() {
            *t = redact::MASK.to_owned();
        }
        toml::to_string_pretty(&shown).expect("the config always serialises")
    }
}

/// Whether `s` can name a schema without quoting.
pub fn is_sql_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

/// Applies `PULSEWATCH_<SECTION>_<KEY>` overrides; the value's type is the default's.
fn apply_env(
    tree: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).expect("defaults serialise");
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != CONFIG_ENV && !k.starts_with(BENCH_ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, value) in vars {
        let env_err = |problem: String| ConfigError::Env { var: var.clone(), problem };
        let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        let Some((section, key)) = split_section(&rest, &defaults) else {
            return Err(env_err("is not of the form PULSEWATCH_<SECTION>_<KEY>".into()));
        };
        let Some(toml::Value::Table(section_defaults)) = defaults.get(section) else {
            let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
            return Err(env_err(format!("unknown section {section:?} (known: {})", known.join(", "))));
        };
        let typed = match section_defaults.get(key) {
            None => {
                let known: Vec<&str> = section_defaults.keys().map(String::as_str).collect();
                return Err(env_err(format!("unknown key {section}.{key} (known: {})", known.join(", "))));
            }
            Some(toml::Value::String(_)) => toml::Value::String(value.clone()),
            Some(toml::Value::Integer(_)) => toml::Value::Integer(
                value.trim().parse().map_err(|_| env_err(format!("{value:?} is not an integer")))?,
            ),
            Some(toml::Value::Float(_)) => toml::Value::Float(
                value.trim().parse().map_err(|_| env_err(format!("{value:?} is not a number")))?,
            ),
            Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
                value.trim().parse().map_err(|_| env_err(format!("{value:?} is not true or false")))?,
            ),
            Some(toml::Value::Array(_)) if COMMA_LISTS.contains(&format!("{section}.{key}").as_str()) => {
                toml::Value::Array(
                    value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(|v| v.into()).collect(),
                )
            }
            Some(toml::Value::Array(_)) => {
                return Err(env_err(format!("{section}.{key} is a list: set it in the config file")));
            }
            Some(_) => return Err(env_err(format!("{section}.{key} is a table: set it in the config file"))),
        };
        let table = tree
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| invalid(section, "must be a table"))?;
        table.insert(key.to_owned(), typed);
    }
    Ok(())
}

/// Splits `section_key` after the longest known section name (section names may hold an
/// underscore: `schema_registry_url`); else at the first underscore.
fn split_section<'a>(rest: &'a str, defaults: &toml::Table) -> Option<(&'a str, &'a str)> {
    let known = defaults
        .keys()
        .filter(|s| {
            rest.len() > s.len() + 1 && rest.starts_with(s.as_str()) && rest.as_bytes()[s.len()] == b'_'
        })
        .max_by_key(|s| s.len());
    match known {
        Some(s) => Some((&rest[..s.len()], &rest[s.len() + 1..])),
        None => rest.split_once('_'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_schema_registry_from_the_environment_and_masks_its_password() {
        let url = "http://127.0.0.1:8081/apis/ccompat/v7";
        let c = Config::load(
            None,
            env(&[
                ("PULSEWATCH_SCHEMA_REGISTRY_URL", url),
                ("PULSEWATCH_SCHEMA_REGISTRY_PASSWORD", "hunter2"),
            ]),
        )
        .unwrap();
        assert_eq!(c.schema_registry.url, url);
        assert!(!c.to_masked_toml().contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        let err =
            Config::load(None, env(&[("PULSEWATCH_SCHEMA_REGISTRY_URL", "localhost:8081")])).unwrap_err();
        assert!(err.to_string().contains("schema_registry.url"), "{err}");
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load_str(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("pulsewatch-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}.toml", text.len() ^ vars.len() << 16 ^ text.as_ptr() as usize));
        std::fs::write(&path, text).unwrap();
        let result = Config::load(Some(&path), env(vars));
        std::fs::remove_file(&path).ok();
        result
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::load(None, env(&[])).unwrap(), Config::default());
    }

    #[test]
    fn the_shipped_file_is_valid_and_documents_every_key() {
        let text = include_str!("../pulsewatch.toml");
        let config = load_str(text, &[]).unwrap();
        assert_eq!(config, Config::default(), "pulsewatch.toml shows the defaults");
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in &defaults {
            assert!(text.contains(&format!("[{section}]")), "section {section} missing");
            for key in keys.as_table().unwrap().keys() {
                let documented =
                    text.contains(&format!("\n{key} =")) || text.contains(&format!("[{section}.{key}]"));
                assert!(documented, "key {section}.{key} not documented");
            }
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = load_str(
            "[kafka]\nbrokers = \"file:9092\"\n",
            &[
                ("PULSEWATCH_KAFKA_BROKERS", "env:9092"),
                ("PULSEWATCH_KAFKA_TOPIC_PREFIX", "t1."),
                ("PULSEWATCH_POSTGRES_URL", "postgres://u:secret@db:5432/x"),
                ("PULSEWATCH_POSTGRES_SCHEMA", "test_1"),
                ("PULSEWATCH_POSTGRES_POOL_SIZE", "3"),
                ("PULSEWATCH_HTTP_LISTEN", "0.0.0.0:9000"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "env:9092");
        assert_eq!(c.kafka.topic_prefix, "t1.");
        assert_eq!(c.postgres.schema, "test_1");
        assert_eq!(c.postgres.pool_size, 3);
        assert_eq!(c.http.listen, "0.0.0.0:9000");
        assert_eq!(c.kafka.name("heartbeats"), "t1.heartbeats");
    }

    #[test]
    fn names_an_unknown_key_in_the_file() {
        let err = load_str("[kafka]\nbrokerz = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("kafka") && err.contains("brokerz"), "{err}");
        let err = load_str("[kafak]\n", &[]).unwrap_err().to_string();
        assert!(err.contains("kafak"), "{err}");
    }

    #[test]
    fn names_an_unknown_environment_variable() {
        let err = Config::load(None, env(&[("PULSEWATCH_KAFKA_BROKER", "x")])).unwrap_err().to_string();
        assert!(err.contains("PULSEWATCH_KAFKA_BROKER") && err.contains("kafka.broker"), "{err}");
        let err = Config::load(None, env(&[("PULSEWATCH_NOPE_X", "x")])).unwrap_err().to_string();
        assert!(err.contains("unknown section"), "{err}");
        assert!(
            Config::load(None, env(&[("PULSEWATCH_BENCH_APPS", "5")])).is_ok(),
            "benchmark sizes are not configuration"
        );
    }

    #[test]
    fn names_a_bad_value() {
        let err =
            Config::load(None, env(&[("PULSEWATCH_POSTGRES_POOL_SIZE", "many")])).unwrap_err().to_string();
        assert!(err.contains("PULSEWATCH_POSTGRES_POOL_SIZE") && err.contains("not an integer"), "{err}");
        let err =
            Config::load(None, env(&[("PULSEWATCH_HTTP_LISTEN", "localhost")])).unwrap_err().to_string();
        assert!(err.contains("http.listen"), "{err}");
        let err =
            Config::load(None, env(&[("PULSEWATCH_POSTGRES_SCHEMA", "Drop Table")])).unwrap_err().to_string();
        assert!(err.contains("postgres.schema"), "{err}");
        let err = load_str("[postgres]\npool_size = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("postgres.pool_size"), "{err}");
        let err = load_str("[retention]\nraw_days = 0\n", &[]).unwrap_err().to_string();
        assert!(err.contains("retention.raw_days"), "{err}");
    }

    #[test]
    fn show_masks_secrets() {
        let mut c = Config::default();
        c.postgres.url = "postgres://app:hunter2@db:5432/pw".into();
        c.kafka.properties.insert("sasl.password".into(), "hunter3".into());
        c.kafka.properties.insert("ssl.ca.location".into(), "/etc/ca.pem".into());
        let shown = c.to_masked_toml();
        assert!(!shown.contains("hunter2") && !shown.contains("hunter3"), "{shown}");
        assert!(shown.contains("postgres://app:****@db:5432/pw"), "{shown}");
        assert!(shown.contains("/etc/ca.pem"), "{shown}");
    }

    #[test]
    fn show_masks_every_connection_string_form() {
        let mut c = Config::default();
        for url in [
            "host=db user=app password='hun ter\\'2' sslpassword=k3y dbname=pw",
            "postgres://db/pw?password=hunter2&sslpassword=k3y&sslmode=require",
        ] {
            c.postgres.url = url.into();
            let shown = c.to_masked_toml();
            assert!(!shown.contains("hun") && !shown.contains("k3y"), "{shown}");
            assert!(shown.contains("dbname=pw") || shown.contains("sslmode=require"), "{shown}");
        }
        for key in ["ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"] {
            c.kafka.properties.insert(key.into(), "hunter4".into());
        }
        assert!(!c.to_masked_toml().contains("hunter4"));
    }

    #[test]
    fn ingest_tokens_are_read_masked_and_checked() {
        let text = "[ingest]\nlisten = \"0.0.0.0:9465\"\n[[ingest.tokens]]\ntoken = \"s3cr3t-tok\"\napps = [\"checkout-*\"]\n";
        let c = load_str(text, &[("PULSEWATCH_INGEST_MAX_BATCH", "10")]).unwrap();
        assert_eq!(c.ingest.max_batch, 10);
        assert_eq!(c.ingest.tokens[0].apps, vec!["checkout-*".to_owned()]);
        c.ingest.check_exposure().unwrap();
        assert!(!c.to_masked_toml().contains("s3cr3t-tok") && !format!("{c:?}").contains("s3cr3t-tok"));
        let open = Config::load(None, env(&[("PULSEWATCH_INGEST_LISTEN", "0.0.0.0:9465")])).unwrap();
        let err = open.ingest.check_exposure().unwrap_err().to_string();
        assert!(err.contains("ingest.listen") && err.contains("loopback"), "{err}");
        let err = Config::load(None, env(&[("PULSEWATCH_INGEST_TOKENS", "x")])).unwrap_err().to_string();
        assert!(err.contains("ingest.tokens is a list"), "{err}");
        let err =
            load_str("[[ingest.tokens]]\ntoken = \"t\"\napps = [\"a[\"]\n", &[]).unwrap_err().to_string();
        assert!(err.contains("ingest.tokens[0].apps"), "{err}");
    }

    #[test]
    fn api_tokens_come_from_the_file_or_a_comma_separated_variable_and_are_masked() {
        let c = load_str("[http]\napi_tokens = [\"tok-file-1\"]\n", &[]).unwrap();
        assert_eq!(c.http.api_tokens, ["tok-file-1"]);
        let c = Config::load(None, env(&[("PULSEWATCH_HTTP_API_TOKENS", "tok-env-1, tok-env-2,")])).unwrap();
        assert_eq!(c.http.api_tokens, ["tok-env-1", "tok-env-2"]);
        let shown = format!("{}{c:?}", c.to_masked_toml());
        assert!(!shown.contains("tok-env") && shown.contains("****"), "{shown}");
        let err = load_str("[http]\napi_tokens = [\" \"]\n", &[]).unwrap_err().to_string();
        assert!(err.contains("http.api_tokens"), "{err}");
    }

    #[test]
    fn debug_output_masks_secrets() {
        let mut c = Config::default();
        c.postgres.url = "host=db password=hunter2".into();
        c.kafka.properties.insert("sasl.password".into(), "hunter3".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("hunter3"), "{shown}");
        assert!(shown.contains("host=db"), "{shown}");
    }
}
