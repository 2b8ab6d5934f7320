//! The external services pulsewatch connects to: Kafka, PostgreSQL and the Schema Registry,
//! each shown with its secrets masked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::redact;

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
    /// HTTP basic authentication's password (shown masked).
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
