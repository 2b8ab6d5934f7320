//! The one validated configuration: defaults in code, then `pulsewatch.toml`, then
//! `PULSEWATCH_<SECTION>_<KEY>` environment overrides.
//!
//! Unknown keys, in the file or in the environment, are rejected with the key named; so are
//! values that do not parse or make no sense. `pulsewatch.toml` at the repository root
//! documents every key.

mod env;
mod services;
mod stages;

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::redact;
use crate::rules::{CompiledRules, DetectionConfig, RuleError, RuleSet};
use crate::trend::TrendConfig;
pub use services::{KafkaConfig, PostgresConfig, SchemaRegistryConfig};
pub use stages::{
    AlertEncoding, AlertsConfig, HealthConfig, HttpConfig, IngestConfig, IngestToken, InputConfig,
    ProcessorConfig, RetentionConfig, SinkConfig,
};

/// Environment variable naming the config file (the `--config` flag wins over it).
pub const CONFIG_ENV: &str = "PULSEWATCH_CONFIG";

/// Why the configuration cannot be used; each names the file, variable or key at fault.
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
    /// The Kafka cluster, and the prefix of every topic and group name.
    pub kafka: KafkaConfig,
    /// The PostgreSQL database the sink writes.
    pub postgres: PostgresConfig,
    /// The endpoint of metrics, health and readiness.
    pub http: HttpConfig,
    /// The HTTP ingest stage (`--stage ingest`).
    pub ingest: IngestConfig,
    /// What `/healthz` counts as unhealthy.
    pub health: HealthConfig,
    /// What counts as valid input on `heartbeats`.
    pub input: InputConfig,
    /// How long PostgreSQL keeps data.
    pub retention: RetentionConfig,
    /// Event-time and liveness settings of the decision engine.
    pub detection: DetectionConfig,
    /// Threshold rules and their per-application overrides.
    pub rules: RuleSet,
    /// Leak and trend detection.
    pub trend: TrendConfig,
    /// How the processor stage batches and commits.
    pub processor: ProcessorConfig,
    /// How the sink stage batches its writes.
    pub sink: SinkConfig,
    /// The Schema Registry of the Confluent wire format.
    pub schema_registry: SchemaRegistryConfig,
    /// How the processor writes alerts.
    pub alerts: AlertsConfig,
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
        env::apply_env(&mut tree, env)?;
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
        self.detection.validate().map_err(rule_error)?;
        self.trend.validate().map_err(|(key, problem)| invalid(&key, problem))?;
        for (key, days) in [
            ("retention.raw_days", self.retention.raw_days),
            ("retention.rollup_days", self.retention.rollup_days),
        ] {
            if days == 0 {
                return Err(invalid(key, "must be at least 1 day"));
            }
        }
        // The rules compile here, so that a bad override is reported before anything runs.
        self.compiled_rules().map_err(rule_error)?;
        Ok(())
    }

    /// The threshold rules with their per-application overrides compiled.
    pub fn compiled_rules(&self) -> Result<CompiledRules, RuleError> {
        CompiledRules::new(&self.rules, &self.detection, &self.trend)
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

fn rule_error(e: RuleError) -> ConfigError {
    ConfigError::Invalid { key: e.key, problem: e.problem }
}

#[cfg(test)]
mod tests;
