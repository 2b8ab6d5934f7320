//! The operators' dashboard, served by the binary itself on `http.listen`: one page
//! (`web/index.html`) with a little hand-written JavaScript and CSS, embedded at compile
//! time, that reads the JSON API and follows `/api/v1/events`; and its charts, drawn as SVG
//! on the server ([`svg`], [`charts`]) from the one-minute rollups. Nothing is fetched from
//! elsewhere at run time.
//!
//! Routes: `/` (the page), `/assets/{file}` (its script and style), and
//! `/charts/{app_id}/{chart}.svg?range=1h|6h|24h` (a chart, see [`charts::CHARTS`]),
//! `/charts/{app_id}/spark.svg` (the fleet table's memory sparkline, the last hour).

pub mod charts;
pub mod svg;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::{Api, ApiError};

const INDEX: &str = include_str!("../../web/index.html");
const SCRIPT: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/style.css");

/// The dashboard's routes, answering from the API's state.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .route("/charts/{app_id}/{chart}", get(chart))
        .with_state(api)
}

fn text(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}

async fn index() -> Response {
    text("text/html; charset=utf-8", INDEX)
}

async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => text("text/javascript; charset=utf-8", SCRIPT),
        "style.css" => text("text/css; charset=utf-8", STYLE),
        _ => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

#[derive(serde::Deserialize)]
struct ChartParams {
    range: Option<String>,
}

/// `/charts/{app_id}/{chart}.svg`: the chart, or 404 for an unknown app or chart.
async fn chart(
    State(api): State<Api>,
    Path((app_id, file)): Path<(String, String)>,
    Query(params): Query<ChartParams>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound { what: "chart", id: file.clone() };
    let name = file.strip_suffix(".svg").ok_or_else(not_found)?;
    let body = if name == "spark" {
        charts::spark(&api.reader, &app_id).await?
    } else {
        let spec = charts::CHARTS.iter().find(|c| c.name == name).ok_or_else(not_found)?;
        let range = charts::Range::parse(params.range.as_deref())?;
        charts::chart(&api.reader, &app_id, spec, range).await?
    };
    let Some(body) = body else { return Err(ApiError::NotFound { what: "application", id: app_id }) };
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml")),
        (header::CACHE_CONTROL, HeaderValue::from_static("max-age=10")),
    ];
    Ok((headers, body).into_response())
}
