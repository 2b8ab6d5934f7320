//! Acknowledgements: `POST /api/v1/alerts/{alert_id}/ack` (JSON `{"by": …, "note": …}`)
//! acknowledges the alert's current firing, `DELETE` withdraws it. Each is an event
//! ([`crate::ack::AlertAck`]) produced to `alert-acks` (key app_id) and answered 202 once
//! the broker has it; the sink stores it in `alert_ack`, where the reads find it. Both
//! need a bearer token from `http.api_tokens` ([`super::auth`]).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use serde_json::json;

use super::auth::ApiTokens;
use super::queries::rfc3339;
use super::{Api, ApiError};
use crate::ack::{AckAction, AlertAck};
use crate::config::Config;
use crate::topology::names;

/// Longest wait for the broker to take an acknowledgement.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `by` and `note`, characters.
const MAX_BY: usize = 200;
const MAX_NOTE: usize = 2_000;

/// What acknowledging needs: a producer, the topic, the tokens.
#[derive(Clone)]
pub struct Acks {
    producer: FutureProducer,
    topic: String,
    pub tokens: ApiTokens,
}

impl Acks {
    pub fn new(config: &Config) -> Result<Acks, rdkafka::error::KafkaError> {
        Ok(Acks {
            producer: crate::kafka::future_producer(&config.kafka, PRODUCE_TIMEOUT)?,
            topic: config.kafka.name(names::ALERT_ACKS),
            tokens: ApiTokens::new(&config.http.api_tokens),
        })
    }

    async fn publish(&self, ack: &AlertAck) -> Result<(), ApiError> {
        let payload = ack.encode();
        let record = FutureRecord::to(&self.topic).key(&ack.app_id).payload(&payload);
        self.producer.send(record, PRODUCE_TIMEOUT).await.map(|_| ()).map_err(|(e, _)| {
            ApiError::Unavailable(format!("the broker did not take the acknowledgement: {e}"))
        })
    }
}

/// The request's body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    by: Option<String>,
    note: Option<String>,
}

/// Parses the body; `by` is required to acknowledge.
fn body(bytes: &Bytes, action: AckAction) -> Result<(String, Option<String>), ApiError> {
    let bad = |problem: String| ApiError::BadBody(problem);
    let parsed: AckBody = if bytes.is_empty() && action == AckAction::Unack {
        AckBody { by: None, note: None }
    } else {
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not {{\"by\": …, \"note\": …}}: {e}")))?
    };
    let by = match (parsed.by, action) {
        (Some(by), _) if !by.trim().is_empty() && by.chars().count() <= MAX_BY => by,
        (Some(_), _) => return Err(bad(format!("by must be 1 to {MAX_BY} characters"))),
        (None, AckAction::Ack) => return Err(bad("by is required".into())),
        (None, AckAction::Unack) => "unknown".into(),
    };
    if parsed.note.as_ref().is_some_and(|n| n.chars().count() > MAX_NOTE) {
        return Err(bad(format!("note is longer than {MAX_NOTE} characters")));
    }
    Ok((by, parsed.note))
}

pub async fn post_ack(state: State<Api>, id: Path<String>, headers: HeaderMap, bytes: Bytes) -> Response {
    act(state, id, headers, bytes, AckAction::Ack).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn delete_ack(state: State<Api>, id: Path<String>, headers: HeaderMap, bytes: Bytes) -> Response {
    act(state, id, headers, bytes, AckAction::Unack).await.unwrap_or_else(IntoResponse::into_response)
}

/// Checks the token, the body and that the alert is firing; publishes the event.
async fn act(
    State(api): State<Api>,
    Path(alert_id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
    action: AckAction,
) -> Result<Response, ApiError> {
    let acks = &api.acks;
    acks.tokens.check(&headers)?;
    let (by, note) = body(&bytes, action)?;
    let Some((app_id, firing_since)) = api.reader.firing(&alert_id).await? else {
        return Err(ApiError::NotFound { what: "alert", id: alert_id });
    };
    let Some(started_at) = firing_since else {
        return Err(ApiError::Conflict(format!(
            "alert {alert_id:?} is resolved: there is nothing to acknowledge"
        )));
    };
    let at = chrono::Utc::now();
    let ack = AlertAck {
        alert_id,
        app_id,
        alert_started_at: started_at.timestamp_millis(),
        action,
        by,
        note,
        at: at.timestamp_millis(),
    };
    acks.publish(&ack).await?;
    let answer = json!({
        "alert_id": ack.alert_id, "app_id": ack.app_id, "action": action.as_str(), "by": ack.by,
        "note": ack.note, "at": rfc3339(at), "alert_started_at": rfc3339(started_at),
    });
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str, action: AckAction) -> Result<(String, Option<String>), String> {
        body(&Bytes::from(text.to_owned()), action).map_err(|e| e.to_string())
    }

    #[test]
    fn an_acknowledgement_needs_who_and_may_say_why() {
        assert_eq!(
            parsed(r#"{"by":"ana","note":"on it"}"#, AckAction::Ack).unwrap(),
            ("ana".into(), Some("on it".into()))
        );
        assert!(parsed(r#"{"note":"x"}"#, AckAction::Ack).unwrap_err().contains("by is required"));
        assert!(parsed(r#"{"by":" "}"#, AckAction::Ack).unwrap_err().contains("by must be"));
        assert!(parsed(r#"{"by":"a","colour":1}"#, AckAction::Ack).is_err());
        assert!(parsed("", AckAction::Ack).is_err());
        let long = format!(r#"{{"by":"a","note":"{}"}}"#, "x".repeat(MAX_NOTE + 1));
        assert!(parsed(&long, AckAction::Ack).unwrap_err().contains("note"));
    }

    #[test]
    fn a_withdrawal_may_come_without_a_body() {
        assert_eq!(parsed("", AckAction::Unack).unwrap(), ("unknown".into(), None));
        assert_eq!(parsed(r#"{"by":"bo"}"#, AckAction::Unack).unwrap().0, "bo");
    }
}
