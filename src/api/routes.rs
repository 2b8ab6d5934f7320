//! The API's routes: each handler parses its parameters, reads, and renders JSON; the hot
//! reads go through [`respond_cached`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, post};
use chrono::Utc;
use serde_json::{Value, json};

use super::cache::Cached;
use super::params::{self, ParamError};
use super::queries::rfc3339;
use super::{Api, ApiError, OPENAPI};
use super::{acks, events};

type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// Every API route with its handlers (the OpenAPI document is checked against these).
fn routes() -> Vec<(&'static str, MethodRouter<Api>)> {
    vec![
        ("/api/v1/health", get(health)),
        ("/api/v1/apps", get(apps)),
        ("/api/v1/apps/{app_id}", get(app)),
        ("/api/v1/apps/{app_id}/metrics", get(app_metrics)),
        ("/api/v1/alerts", get(alerts)),
        ("/api/v1/alerts/{alert_id}/ack", post(acks::post_ack).delete(acks::delete_ack)),
        ("/api/v1/leaks", get(leaks)),
        ("/api/v1/fleet", get(fleet)),
        ("/api/v1/events", get(events::stream)),
        ("/api/v1/openapi.json", get(openapi)),
    ]
}

/// The paths the API serves: `GET` but for the acknowledgement's `POST` and `DELETE`.
pub const ROUTES: &[&str] = &[
    "/api/v1/health",
    "/api/v1/apps",
    "/api/v1/apps/{app_id}",
    "/api/v1/apps/{app_id}/metrics",
    "/api/v1/alerts",
    "/api/v1/alerts/{alert_id}/ack",
    "/api/v1/leaks",
    "/api/v1/fleet",
    "/api/v1/events",
    "/api/v1/openapi.json",
];

/// The API's routes and the dashboard's, answering from `api`; merged into
/// [`crate::http::router`]'s.
pub fn router(api: Api) -> Router {
    let mut router = Router::new();
    for (path, handler) in routes() {
        router = router.route(path, handler);
    }
    let dashboard = crate::dashboard::router(api.clone());
    router.route("/api/v1/{*rest}", any(unknown_route)).with_state(api).merge(dashboard)
}

/// Any other path under `/api/v1`: 404 in JSON, like the unknown ids.
async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::NotFound { what: "route", id: uri.path().to_owned() }
}

/// The query's pairs, or a 400 when the query string is not `key=value&...`.
fn pairs(query: Pairs) -> Result<Vec<(String, String)>, ApiError> {
    query.map(|Query(p)| p).map_err(|e| {
        ApiError::BadParam(ParamError {
            param: "query".into(),
            problem: format!("malformed query string: {e}"),
        })
    })
}

/// Answers from the cache under `key`, or renders (and keeps) the answer: with its `ETag`
/// and `Cache-Control`, or 304 when `If-None-Match` names it.
async fn respond_cached<F>(
    api: &Api,
    key: String,
    headers: &HeaderMap,
    render: F,
) -> Result<Response, ApiError>
where
    F: Future<Output = Result<Value, ApiError>>,
{
    let answer = match api.cache.get(&key) {
        Some(answer) => answer,
        None => {
            let answer = Arc::new(Cached::new(render.await?.to_string()));
            api.cache.insert(key, answer.clone());
            answer
        }
    };
    let max_age = api.cache.ttl.as_secs();
    let cache_control = if max_age == 0 { "no-cache".to_owned() } else { format!("max-age={max_age}") };
    let etag = HeaderValue::from_str(&answer.etag).expect("a hex etag is a valid header");
    let cache_control = HeaderValue::from_str(&cache_control).expect("a valid header");
    let not_modified =
        headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| answer.matches(v));
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], answer.body.clone())
            .into_response()
    };
    response.headers_mut().insert(header::ETAG, etag);
    response.headers_mut().insert(header::CACHE_CONTROL, cache_control);
    Ok(response)
}

fn json_response(value: Value) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], value.to_string())
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], OPENAPI).into_response()
}

async fn health(State(api): State<Api>, headers: HeaderMap) -> Result<Response, ApiError> {
    respond_cached(&api, "health".into(), &headers, render_health(&api)).await
}

/// The health route's body: overall status, counts, pulsewatch's own components.
async fn render_health(api: &Api) -> Result<Value, ApiError> {
    let (counts, sink_commit) = api.reader.health_counts().await?;
    let mut by: BTreeMap<&str, BTreeMap<String, i64>> = BTreeMap::new();
    for (dimension, key, n) in &counts {
        by.entry(dimension.as_str()).or_default().insert(key.clone(), *n);
    }
    let mut components = components(api);
    if let Some(sink) = components.iter_mut().find(|c| c["name"] == "sink") {
        sink["last_commit"] = sink_commit.map_or(Value::Null, |t| Value::String(rfc3339(t)));
    }
    let count = |dim: &str, key: &str| by.get(dim).and_then(|m| m.get(key)).copied().unwrap_or(0);
    let component_down = components.iter().any(|c| c["up"] == false);
    let status = if component_down || count("severity", "CRITICAL") > 0 || count("health", "critical") > 0 {
        "critical"
    } else if count("severity", "WARNING") > 0 || count("health", "warning") > 0 {
        "warning"
    } else {
        "healthy"
    };
    Ok(json!({
        "status": status,
        "applications": {"by_status": by.get("status"), "by_health": by.get("health"),
            "total": by.get("status").map_or(0, |m| m.values().sum::<i64>())},
        "open_alerts": {"by_severity": by.get("severity"),
            "total": by.get("severity").map_or(0, |m| m.values().sum::<i64>())},
        "components": components,
        "last_check": rfc3339(Utc::now()),
    }))
}

/// The stages this process runs: up (ready and not judged unhealthy), consumer lag, the
/// latest commit it reported (the processor's transactions), problems.
fn components(api: &Api) -> Vec<Value> {
    let endpoints = &api.endpoints;
    let verdict = endpoints.health.check(endpoints.stall_after);
    endpoints
        .readiness
        .0
        .iter()
        .map(|(name, ready)| {
            let prefix = format!("{name}: ");
            let problems: Vec<&String> = verdict.problems.iter().filter(|p| p.starts_with(&prefix)).collect();
            let lag: i64 =
                endpoints.health.partitions(name).iter().map(|(_, _, o)| (o.end - o.position).max(0)).sum();
            let ready = ready.load(Ordering::Relaxed);
            let last_commit =
                endpoints.health.last_commit(name).map_or(Value::Null, |t| Value::String(rfc3339(t)));
            json!({"name": name, "up": ready && problems.is_empty(), "ready": ready,
                   "consumer_lag": lag, "last_commit": last_commit, "problems": problems})
        })
        .collect()
}

async fn apps(State(api): State<Api>, headers: HeaderMap, query: Pairs) -> Result<Response, ApiError> {
    let query = params::apps(&pairs(query)?)?;
    let key = format!("apps {query:?}");
    let render = async {
        let page = api.reader.apps(&query).await?;
        Ok(json!({"apps": page.apps, "total": page.total, "next_cursor": page.next.map(|c| c.encode())}))
    };
    respond_cached(&api, key, &headers, render).await
}

async fn app(State(api): State<Api>, Path(app_id): Path<String>) -> Result<Response, ApiError> {
    match api.reader.app(&app_id).await? {
        Some(app) => Ok(json_response(app)),
        None => Err(ApiError::NotFound { what: "application", id: app_id }),
    }
}

async fn app_metrics(
    State(api): State<Api>,
    Path(app_id): Path<String>,
    query: Pairs,
) -> Result<Response, ApiError> {
    let query = params::metrics(&pairs(query)?, Utc::now())?;
    match api.reader.metrics(&app_id, &query).await? {
        Some(points) => Ok(json_response(json!({
            "app_id": app_id,
            "from": rfc3339(query.from),
            "to": rfc3339(query.to),
            "fields": query.fields,
            "points": points,
        }))),
        None => Err(ApiError::NotFound { what: "application", id: app_id }),
    }
}

async fn leaks(State(api): State<Api>, query: Pairs) -> Result<Response, ApiError> {
    let limit = params::leaks(&pairs(query)?)?;
    Ok(json_response(json!({"leaks": api.reader.leaks(limit).await?})))
}

async fn fleet(State(api): State<Api>, headers: HeaderMap, query: Pairs) -> Result<Response, ApiError> {
    params::none(&pairs(query)?)?;
    respond_cached(&api, "fleet".into(), &headers, render_fleet(&api)).await
}

/// The fleet route's body: the worst figures, the latest minute's rates, and the pipeline
/// as this process sees it (its stages' consumer lag, the records it dead-lettered).
async fn render_fleet(api: &Api) -> Result<Value, ApiError> {
    let mut fleet = api.reader.fleet().await?;
    let lag: i64 = components(api).iter().filter_map(|c| c["consumer_lag"].as_i64()).sum();
    let dead_letters: u64 = {
        use prometheus::core::Collector;
        crate::metrics::METRICS
            .dlq_records
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    };
    fleet["pipeline"] = json!({"consumer_lag": lag, "dead_letters": dead_letters});
    Ok(fleet)
}

async fn alerts(State(api): State<Api>, query: Pairs) -> Result<Response, ApiError> {
    let query = params::alerts(&pairs(query)?)?;
    let alerts = api.reader.alerts(&query).await?;
    Ok(json_response(json!({"alerts": alerts})))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn openapi_doc() -> Value {
        serde_json::from_str(OPENAPI).expect("the OpenAPI document is JSON")
    }

    #[test]
    fn the_openapi_document_describes_exactly_the_routes() {
        let doc = openapi_doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let documented: BTreeSet<&str> =
            doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        let served: BTreeSet<&str> = routes().iter().map(|(p, _)| *p).collect();
        assert_eq!(documented, served);
        assert_eq!(served, ROUTES.iter().copied().collect());
        for path in &served {
            let methods: BTreeSet<&str> =
                doc["paths"][path].as_object().unwrap().keys().map(String::as_str).collect();
            let expected = if path.ends_with("/ack") { vec!["delete", "post"] } else { vec!["get"] };
            assert_eq!(methods, expected.into_iter().collect(), "{path}");
        }
    }

    #[test]
    fn the_openapi_document_lists_each_routes_parameters() {
        let doc = openapi_doc();
        for (path, accepted) in [
            ("/api/v1/apps", params::APPS_PARAMS),
            ("/api/v1/apps/{app_id}/metrics", params::METRICS_PARAMS),
            ("/api/v1/alerts", params::ALERTS_PARAMS),
            ("/api/v1/health", &[][..]),
            ("/api/v1/fleet", &[][..]),
            ("/api/v1/events", &[][..]),
            ("/api/v1/leaks", params::LEAKS_PARAMS),
        ] {
            let documented: BTreeSet<&str> = doc["paths"][path]["get"]["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter().filter(|p| p["in"] == "query").map(|p| p["name"].as_str().unwrap()).collect()
                })
                .unwrap_or_default();
            assert_eq!(documented, accepted.iter().copied().collect(), "{path}");
        }
    }
}
