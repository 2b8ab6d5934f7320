//! The ingest routes and their answers.
//!
//! - `POST /v1/heartbeats`: one beat, JSON, or Avro single-object with
//!   `Content-Type: application/avro`.
//! - `POST /v1/heartbeats/batch`: NDJSON or a JSON array; each beat judged on its own.
//! - `GET|POST /v1/ping/{app_id}/{instance_id}[/start|/stop|/fail]`: a cron job's beat.
//!
//! 202 once the broker has the beats; 400 bad input, 401 no or unknown token, 403 an app the
//! token may not write, 413 too large, 429 (`Retry-After`) too many beats in flight, 503 the
//! broker did not acknowledge in time. Every error body is `{"code": ..., "message": ...}`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::publish::PublishError;
use super::tokens::{Access, AuthError};
use super::{Delivered, Ingest};
use crate::codec::DecodeError;
use crate::heartbeat::{Heartbeat, InstanceStatus};
use crate::metrics::METRICS;

/// An error answer: a status, a stable code and a message.
struct Problem {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, message: impl ToString) -> Problem {
        Problem { status, code, message: message.to_string() }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Json(json!({ "code": self.code, "message": self.message }));
        match self.status {
            StatusCode::TOO_MANY_REQUESTS => {
                (self.status, [(header::RETRY_AFTER, "1")], body).into_response()
            }
            StatusCode::UNAUTHORIZED => {
                (self.status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
            }
            _ => (self.status, body).into_response(),
        }
    }
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Problem {
        let code = match e {
            AuthError::Missing => "missing_token",
            AuthError::Unknown => "unknown_token",
        };
        Problem::new(StatusCode::UNAUTHORIZED, code, e)
    }
}

impl From<PublishError> for Problem {
    fn from(e: PublishError) -> Problem {
        match e {
            PublishError::Busy => Problem::new(StatusCode::TOO_MANY_REQUESTS, "busy", e),
            PublishError::Unavailable(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
        }
    }
}

impl From<BytesRejection> for Problem {
    fn from(e: BytesRejection) -> Problem {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e.body_text());
        }
        Problem::new(StatusCode::BAD_REQUEST, "unreadable_body", e.body_text())
    }
}

/// A beat the codec refused, counted.
fn rejected(e: &DecodeError) -> Problem {
    METRICS.ingest_rejected.with_label_values(&[e.code()]).inc();
    let status = match e {
        DecodeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    Problem::new(status, e.code(), e)
}

fn not_allowed(app_id: &str) -> Problem {
    METRICS.ingest_rejected.with_label_values(&["app_not_allowed"]).inc();
    let shown = crate::logging::escape_control(app_id);
    Problem::new(StatusCode::FORBIDDEN, "app_not_allowed", format!("the token may not write app {shown:?}"))
}

/// The answer to beats the broker has (or had already).
fn accepted(delivered: &[Delivered]) -> Response {
    let duplicates = delivered.iter().filter(|d| **d == Delivered::Duplicate).count();
    let body = json!({ "accepted": delivered.len(), "duplicates": duplicates });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// The routes, answering from `ingest`, with bodies up to `max_body_bytes`.
pub fn router(ingest: Arc<Ingest>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/heartbeats", post(single))
        .route("/v1/heartbeats/batch", post(batch))
        .route("/v1/ping/{app_id}/{instance_id}", get(ping).post(ping))
        .route("/v1/ping/{app_id}/{instance_id}/{action}", get(ping_action).post(ping_action))
        .route_layer(middleware::from_fn(observe))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(ingest)
}

/// Counts each request by route and status, and times it.
async fn observe(request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map_or("unmatched".into(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    METRICS.ingest_request_seconds.with_label_values(&[&route]).observe(started.elapsed().as_secs_f64());
    METRICS.ingest_requests.with_label_values(&[&route, response.status().as_str()]).inc();
    response
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// Avro when the client says so, or when the body starts with the single-object marker.
fn is_avro(headers: &HeaderMap, body: &[u8]) -> bool {
    let said = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/avro"));
    said || body.starts_with(&[0xC3, 0x01])
}

async fn single(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let access = ingest.tokens.authenticate(authorization(&headers))?;
    let body = body?;
    let judge = ingest.judge();
    let decoded = if is_avro(&headers, &body) { judge.avro(&body) } else { judge.json(&body) };
    let beat = decoded.map_err(|e| rejected(&e))?;
    publish_one(&ingest, &access, beat).await
}

/// Checks the token's right to `beat`'s app, then publishes it.
async fn publish_one(ingest: &Arc<Ingest>, access: &Access, beat: Heartbeat) -> Result<Response, Problem> {
    if !ingest.tokens.allows(access, &beat.app_id) {
        return Err(not_allowed(&beat.app_id));
    }
    let room = ingest.publisher.reserve(1)?;
    let delivered = detached(ingest, vec![beat], room).await.pop().expect("one outcome per beat")?;
    Ok(accepted(&[delivered]))
}

/// Delivers `beats` in a task of their own, holding `room` until they are done: a client
/// that gives up and closes the connection does not cut a delivery short, so the memory of
/// recent beats learns its true outcome and the client's retry is not produced twice.
async fn detached(
    ingest: &Arc<Ingest>,
    beats: Vec<Heartbeat>,
    room: tokio::sync::OwnedSemaphorePermit,
) -> Vec<Result<Delivered, PublishError>> {
    let (ingest, count) = (ingest.clone(), beats.len());
    let task = tokio::spawn(async move {
        let _room = room;
        ingest.deliver_batch(&beats).await
    });
    task.await.unwrap_or_else(|e| {
        let why = PublishError::Unavailable(format!("the delivery task failed: {e}"));
        vec![Err(why); count]
    })
}

/// One refused beat of a batch.
#[derive(Serialize)]
struct Refused {
    index: usize,
    code: &'static str,
    message: String,
}

async fn batch(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let access = ingest.tokens.authenticate(authorization(&headers))?;
    let body = body?;
    let judged = ingest.judge().batch(&body, ingest.max_batch).map_err(|e| {
        let status = match e {
            super::beats::BatchError::TooMany { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Problem::new(status, e.code(), e)
    })?;
    let (valid, refused) = sort_batch(&ingest, &access, judged);
    let room = ingest.publisher.reserve(valid.len())?;
    let (indexes, beats): (Vec<usize>, Vec<Heartbeat>) = valid.into_iter().unzip();
    let outcomes = detached(&ingest, beats, room).await;
    Ok(batch_answer(&indexes, outcomes, refused))
}

/// The batch's valid beats (with their index) and the refused ones, counted.
fn sort_batch(
    ingest: &Ingest,
    access: &Access,
    judged: Vec<Result<Heartbeat, DecodeError>>,
) -> (Vec<(usize, Heartbeat)>, Vec<Refused>) {
    let (mut valid, mut refused) = (Vec::new(), Vec::new());
    for (index, result) in judged.into_iter().enumerate() {
        match result {
            Ok(beat) if ingest.tokens.allows(access, &beat.app_id) => valid.push((index, beat)),
            Ok(beat) => {
                let p = not_allowed(&beat.app_id);
                refused.push(Refused { index, code: p.code, message: p.message });
            }
            Err(e) => {
                let p = rejected(&e);
                refused.push(Refused { index, code: p.code, message: p.message });
            }
        }
    }
    (valid, refused)
}

/// 202 when every valid beat is with the broker (400 if there was none), 503 when some are
/// not; the body lists the indexes accepted, duplicated, failed and refused.
fn batch_answer(
    indexes: &[usize],
    outcomes: Vec<Result<Delivered, PublishError>>,
    refused: Vec<Refused>,
) -> Response {
    let (mut accepted, mut duplicates, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    let mut busy = false;
    for (index, outcome) in indexes.iter().zip(outcomes) {
        match outcome {
            Ok(Delivered::New) => accepted.push(*index),
            Ok(Delivered::Duplicate) => {
                accepted.push(*index);
                duplicates.push(*index);
            }
            Err(e) => {
                busy |= e == PublishError::Busy;
                failed.push(json!({ "index": index, "message": e.to_string() }));
            }
        }
    }
    let status = if !failed.is_empty() {
        if busy { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::SERVICE_UNAVAILABLE }
    } else if accepted.is_empty() && !refused.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::ACCEPTED
    };
    let body =
        json!({ "accepted": accepted, "duplicates": duplicates, "failed": failed, "rejected": refused });
    (status, Json(body)).into_response()
}

/// A ping's query: the promised interval in seconds (default 60).
#[derive(Deserialize)]
struct PingQuery {
    interval: Option<i64>,
}

async fn ping(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    Path((app_id, instance_id)): Path<(String, String)>,
    query: Result<Query<PingQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query.map_err(bad_query)?;
    ping_with(&ingest, &headers, &app_id, &instance_id, InstanceStatus::Ok, query).await
}

async fn ping_action(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    Path((app_id, instance_id, action)): Path<(String, String, String)>,
    query: Result<Query<PingQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query.map_err(bad_query)?;
    let status = match action.as_str() {
        "start" => InstanceStatus::Starting,
        "stop" => InstanceStatus::Stopping,
        "fail" => InstanceStatus::Degraded,
        _ => {
            let message = "the action after the instance is start, stop or fail";
            return Err(Problem::new(StatusCode::NOT_FOUND, "unknown_action", message));
        }
    };
    ping_with(&ingest, &headers, &app_id, &instance_id, status, query).await
}

fn bad_query(e: QueryRejection) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "bad_query",
        format!("{}; interval is whole seconds", e.body_text()),
    )
}

async fn ping_with(
    ingest: &Arc<Ingest>,
    headers: &HeaderMap,
    app_id: &str,
    instance_id: &str,
    status: InstanceStatus,
    query: PingQuery,
) -> Result<Response, Problem> {
    let access = ingest.tokens.authenticate(authorization(headers))?;
    let interval = query.interval.unwrap_or(60);
    let beat = ingest.judge().ping(app_id, instance_id, status, interval).map_err(|e| rejected(&e))?;
    publish_one(ingest, &access, beat).await
}
