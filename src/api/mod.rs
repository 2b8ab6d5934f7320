//! The operators' JSON API under `/api/v1`, served beside `/metrics` on `http.listen`:
//! the fleet's health, the applications (filtered, sorted, paged by cursor), one
//! application with its instances, open alerts and leak projections, its one-minute
//! rollups, the alerts, and the OpenAPI document describing them ([`OPENAPI`]).
//!
//! Live events ([`events`]): `GET /api/v1/events` streams alert transitions and
//! acknowledgements from their topics as Server-Sent Events. The dashboard
//! ([`crate::dashboard`]) is served beside the API by [`router`].
//!
//! Acknowledgements ([`acks`]) are events on `alert-acks`, stored by the sink in
//! `alert_ack`; they need a bearer token ([`auth`]), and `http.listen` beyond loopback is
//! refused at start without one ([`check_exposure`]).
//!
//! Reads go to PostgreSQL ([`queries`]); the hot ones sit behind a short-lived cache
//! ([`cache`]) and answer with `ETag` / `Cache-Control`, honouring `If-None-Match`.
//! Parameters are checked by [`params`]: a bad one is answered 400 with a JSON message
//! naming it, an unknown id 404.

pub mod acks;
pub mod auth;
pub mod cache;
pub mod events;
pub mod params;
pub mod queries;
mod routes;

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use thiserror::Error;

use crate::config::Config;
use crate::http::Endpoints;
use crate::store::StoreError;
pub use routes::{ROUTES, router};

/// The OpenAPI 3 document served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Why an API request failed.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error(transparent)]
    BadParam(#[from] params::ParamError),
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("body: {0}")]
    BadBody(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Why the API cannot start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("api: cannot create the acknowledgements' producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("config key http.listen: {0} is not a loopback address and no http.api_tokens is configured")]
    Exposed(std::net::SocketAddr),
}

/// Refuses to serve the API beyond loopback without a token.
pub fn check_exposure(http: &crate::config::HttpConfig) -> Result<(), StartError> {
    let addr: std::net::SocketAddr = http.listen.parse().expect("validated by Config::validate");
    if !addr.ip().is_loopback() && http.api_tokens.is_empty() {
        return Err(StartError::Exposed(addr));
    }
    Ok(())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            ApiError::BadParam(p) => {
                (StatusCode::BAD_REQUEST, Json(json!({"error": message, "parameter": p.param})))
                    .into_response()
            }
            ApiError::NotFound { .. } => {
                (StatusCode::NOT_FOUND, Json(json!({"error": message}))).into_response()
            }
            ApiError::Auth(e) => {
                let status = match e {
                    auth::AuthError::NoTokensConfigured => StatusCode::FORBIDDEN,
                    auth::AuthError::Missing | auth::AuthError::Unknown => StatusCode::UNAUTHORIZED,
                };
                (status, Json(json!({"error": message}))).into_response()
            }
            ApiError::BadBody(_) => {
                (StatusCode::BAD_REQUEST, Json(json!({"error": message, "parameter": "body"})))
                    .into_response()
            }
            ApiError::Conflict(_) => (StatusCode::CONFLICT, Json(json!({"error": message}))).into_response(),
            ApiError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": message}))).into_response()
            }
            ApiError::Store(e) => {
                tracing::warn!(error = %e, "api: a read failed");
                let status = if e.is_transient() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                (status, Json(json!({"error": message}))).into_response()
            }
        }
    }
}

/// What the API answers from.
#[derive(Clone)]
pub struct Api {
    pub reader: queries::Reader,
    pub cache: cache::AnswerCache,
    /// The process's own stages, for the health route's components.
    pub endpoints: Endpoints,
    /// Publishing acknowledgements.
    pub acks: acks::Acks,
    /// The live events of `alerts` and `alert-acks`.
    pub events: events::Events,
}

impl Api {
    /// The API over `reader` (see [`queries::Reader::of`]) and `acks`, cached as `config` says;
    /// starts the consumer of the live events.
    pub fn new(config: &Config, reader: queries::Reader, acks: acks::Acks, endpoints: Endpoints) -> Api {
        let events = events::Events::new();
        if let Err(e) = events.follow(&config.kafka) {
            tracing::error!(error = %e, "api events: cannot start the consumer; /api/v1/events stays silent");
        }
        Api {
            reader,
            cache: cache::AnswerCache::new(Duration::from_millis(config.http.api_cache_ttl_ms)),
            endpoints,
            acks,
            events,
        }
    }
}
