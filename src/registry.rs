//! A client of the Confluent Schema Registry API (Apicurio serves it under
//! `/apis/ccompat/v7`): the writer schemas of records in the Confluent wire format, by id,
//! resolved against ours and kept in a bounded cache; and the registration of our schemas.
//!
//! A registry that is down or slow is not the record's fault: [`RegistryError::Unavailable`]
//! tells the stages to read the record again later, never to dead-letter it. Only a
//! registry that answers "no such id" ([`RegistryError::UnknownId`], after a few tries, in
//! case a replica lags) or a schema ours cannot read makes the record invalid input.
//!
//! The client blocks (ureq): both stages run their loops on threads of their own.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use moka::sync::Cache;
use thiserror::Error;

use crate::codec::confluent::{self, WriterSchema};
use crate::codec::{self, DecodeError};
use crate::config::{KafkaConfig, SchemaRegistryConfig};
use crate::heartbeat::Heartbeat;
use crate::topology::names;

/// Longest wait for one HTTP exchange with the registry.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A 404 for a schema id is believed after this many answers...
const NOT_FOUND_TRIES: u32 = 3;
/// ...this far apart (doubling).
const NOT_FOUND_DELAY: Duration = Duration::from_millis(100);
/// Schemas kept: ids are immutable, so entries only leave to bound memory.
const CACHE_CAPACITY: u64 = 10_000;
const CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// The content type of the Confluent API.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, Clone, Error)]
pub enum RegistryError {
    /// Down, slow, or answering with a server error: try again later.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// The registry does not know this id.
    #[error("schema id {0} is unknown to the schema registry")]
    UnknownId(u32),
    /// The registry's schema cannot be read with ours.
    #[error(transparent)]
    Unresolvable(#[from] confluent::Unresolvable),
    /// The registry refused a request (registration of an invalid schema, bad credentials).
    #[error("schema registry refused {what}: HTTP {status}: {body}")]
    Refused { what: String, status: u16, body: String },
}

impl RegistryError {
    /// The decode error a record naming this schema gets; `None` when the registry is
    /// merely unavailable and the record must be read again.
    pub fn as_decode_error(&self) -> Option<DecodeError> {
        match self {
            RegistryError::Unavailable(_) => None,
            RegistryError::UnknownId(id) => Some(DecodeError::UnknownSchemaId(*id)),
            RegistryError::Unresolvable(u) => Some(DecodeError::SchemaUnresolvable(u.to_string())),
            RegistryError::Refused { .. } => Some(DecodeError::SchemaUnresolvable(self.to_string())),
        }
    }
}

/// The registry could not be asked: the record must be read again later.
#[derive(Debug, Clone, Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// A registry client with its cache of resolved writer schemas.
pub struct Registry {
    url: String,
    authorization: Option<String>,
    agent: ureq::Agent,
    schemas: Cache<u32, Arc<WriterSchema>>,
}

impl Registry {
    /// The configured registry; `None` when `schema_registry.url` is empty.
    pub fn from_config(config: &SchemaRegistryConfig) -> Option<Registry> {
        if config.url.is_empty() {
            return None;
        }
        let authorization = (!config.username.is_empty()).then(|| {
            let pair = format!("{}:{}", config.username, config.password);
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
        });
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let schemas = Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(CACHE_TTL).build();
        Some(Registry { url: config.url.trim_end_matches('/').to_owned(), authorization, agent, schemas })
    }

    /// The writer schema with this id, resolved against ours: from the cache, or asked of
    /// the registry (one request per id however many threads want it).
    pub fn writer_schema(&self, id: u32) -> Result<Arc<WriterSchema>, RegistryError> {
        self.schemas.try_get_with(id, || self.fetch(id).map(Arc::new)).map_err(|e| (*e).clone())
    }

    /// Decodes and validates one heartbeat record, asking the registry for its writer
    /// schema when it is in the Confluent wire format. `Err` only when the registry could
    /// not be asked: the record is not at fault.
    pub fn decode(
        registry: Option<&Registry>,
        bytes: &[u8],
        reference_ms: i64,
        max_drift_ms: i64,
    ) -> Result<Result<Heartbeat, DecodeError>, Unavailable> {
        let writer = match (registry, confluent::schema_id(bytes)) {
            (Some(registry), Some(Ok(id))) => match registry.writer_schema(id) {
                Ok(writer) => Some(writer),
                Err(e) => return e.as_decode_error().map(Err).ok_or(Unavailable(e.to_string())),
            },
            _ => None,
        };
        Ok(codec::decode_with(bytes, writer.as_deref(), reference_ms, max_drift_ms))
    }

    /// Registers a schema under a subject (or finds it registered); its id.
    pub fn register(&self, subject: &str, schema_json: &str) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{subject}/versions", self.url);
        let body = serde_json::json!({ "schema": schema_json }).to_string();
        let mut request = self.agent.post(&url).header("Content-Type", CONTENT_TYPE);
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        let (status, text) = exchange(request.send(body))?;
        if status != 200 {
            return Err(RegistryError::Refused { what: format!("subject {subject}"), status, body: text });
        }
        parse_id(&text)
            .ok_or_else(|| RegistryError::Unavailable(format!("unexpected answer to a registration: {text}")))
    }

    /// Registers `schemas/heartbeat.avsc` and `schemas/alert.avsc` under the subjects
    /// `<prefix>heartbeats-value` and `<prefix>alerts-value` (the topic name strategy of
    /// Confluent's serializers); each subject with its id.
    pub fn register_contracts(&self, kafka: &KafkaConfig) -> Result<Vec<(String, u32)>, RegistryError> {
        [(names::HEARTBEATS, codec::avro::HEARTBEAT_SCHEMA), (names::ALERTS, crate::alert::ALERT_SCHEMA)]
            .into_iter()
            .map(|(topic, schema)| {
                let subject = format!("{}-value", kafka.name(topic));
                self.register(&subject, schema).map(|id| (subject, id))
            })
            .collect()
    }

    /// Asks the registry for schema `id`, believing a 404 only after a few tries.
    fn fetch(&self, id: u32) -> Result<WriterSchema, RegistryError> {
        let url = format!("{}/schemas/ids/{id}", self.url);
        let mut delay = NOT_FOUND_DELAY;
        for attempt in 1..=NOT_FOUND_TRIES {
            let mut request = self.agent.get(&url).header("Accept", CONTENT_TYPE);
            if let Some(auth) = &self.authorization {
                request = request.header("Authorization", auth);
            }
            let (status, text) = exchange(request.call())?;
            match status {
                200 => return Ok(WriterSchema::resolve(id, &schema_text(id, &text)?)?),
                404 if attempt < NOT_FOUND_TRIES => std::thread::sleep(delay),
                404 => break,
                401 | 403 => {
                    return Err(RegistryError::Refused { what: format!("schema {id}"), status, body: text });
                }
                // 5xx, 429 and the like: the registry's trouble, not the record's.
                _ => {
                    return Err(RegistryError::Unavailable(format!("HTTP {status} for schema {id}: {text}")));
                }
            }
            delay *= 2;
        }
        Err(RegistryError::UnknownId(id))
    }
}

/// Status and body of an exchange; a transport failure means the registry is unavailable.
fn exchange(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String), RegistryError> {
    let mut response = result.map_err(|e| RegistryError::Unavailable(e.to_string()))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().map_err(|e| RegistryError::Unavailable(e.to_string()))?;
    Ok((status, text))
}

/// The `schema` of a `GET /schemas/ids/{id}` answer.
fn schema_text(id: u32, body: &str) -> Result<String, RegistryError> {
    let value: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| RegistryError::Unavailable(format!("schema {id}: answer is not JSON: {e}")))?;
    match value.get("schemaType").and_then(|t| t.as_str()) {
        Some(kind) if kind != "AVRO" => {
            Err(confluent::Unresolvable { id, reason: format!("a {kind} schema") }.into())
        }
        _ => {
            value.get("schema").and_then(|s| s.as_str()).map(str::to_owned).ok_or_else(|| {
                RegistryError::Unavailable(format!("schema {id}: answer has no schema: {body}"))
            })
        }
    }
}

fn parse_id(body: &str) -> Option<u32> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value.get("id")?.as_u64()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_registry_is_unavailable_not_a_poison_record() {
        // Nothing listens on port 9 of the loopback: connection refused.
        let config = SchemaRegistryConfig { url: "http://127.0.0.1:9".into(), ..Default::default() };
        let registry = Registry::from_config(&config).unwrap();
        let record = [0, 0, 0, 0, 1, 2, 3];
        assert!(Registry::decode(Some(&registry), &record, 0, 1).is_err());
        let off = Registry::decode(None, &record, 0, 1).unwrap().unwrap_err();
        assert_eq!(off.code(), "schema_registry_unsupported");
    }

    #[test]
    fn reads_the_answers_of_the_api() {
        assert_eq!(schema_text(1, r#"{"schema":"\"string\""}"#).unwrap(), "\"string\"");
        assert!(matches!(
            schema_text(1, r#"{"schema":"{}","schemaType":"JSON"}"#),
            Err(RegistryError::Unresolvable(_))
        ));
        assert_eq!(parse_id(r#"{"id":42}"#), Some(42));
    }
}
