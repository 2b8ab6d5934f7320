//! The operators' JSON API under `/api/v1`, served beside `/metrics` on `http.listen`:
//! the fleet's health, the applications (filtered, sorted, paged by cursor), one
//! application with its instances, open alerts and leak projections, its one-minute
//! rollups, the alerts, and the OpenAPI document describing them ([`OPENAPI`]).
//!
//! Reads go to PostgreSQL ([`queries`]); the hot ones sit behind a short-lived cache
//! ([`cache`]) and answer with `ETag` / `Cache-Control`, honouring `If-None-Match`.
//! Parameters are checked by [`params`]: a bad one is answered 400 with a JSON message
//! naming it, an unknown id 404.

pub mod auth;
pub mod cache;
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
}

impl Api {
    /// The API over `reader` (see [`queries::Reader::of`]), cached as `config` says.
    pub fn new(config: &Config, reader: queries::Reader, endpoints: Endpoints) -> Api {
        Api {
            reader,
            cache: cache::AnswerCache::new(Duration::from_millis(config.http.api_cache_ttl_ms)),
            endpoints,
        }
    }
}
