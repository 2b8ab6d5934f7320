//! The API's query parameters: each route's parameters parsed from the query string into a
//! typed request, or a [`ParamError`] naming the parameter at fault (answered 400). Unknown
//! parameters are refused too, so a misspelt filter never silently returns everything.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A parameter the API cannot use; `param` names it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("parameter {param}: {problem}")]
pub struct ParamError {
    pub param: String,
    pub problem: String,
}

fn bad(param: &str, problem: impl Into<String>) -> ParamError {
    ParamError { param: param.to_owned(), problem: problem.into() }
}

/// Application statuses, as the `application` table holds them.
pub const STATUSES: &[&str] = &["UP", "DEGRADED", "LATE", "DOWN", "STOPPED"];
/// Application health values.
pub const HEALTHS: &[&str] = &["healthy", "warning", "critical"];
/// Alert severities.
pub const SEVERITIES: &[&str] = &["WARNING", "CRITICAL"];
/// The columns of `metric_rollup_1m` a client may ask for (`fields`), besides `minute`.
pub const METRIC_FIELDS: &[&str] = &[
    "beats",
    "instances",
    "memory_used_bytes_mean",
    "memory_used_bytes_max",
    "memory_used_ratio_max",
    "cpu_ratio_mean",
    "cpu_ratio_max",
    "disk_used_ratio_max",
    "db_pool_in_use_mean",
    "db_pool_in_use_max",
    "db_pool_waiting_max",
    "threads_mean",
    "threads_max",
    "open_fds_mean",
    "open_fds_max",
    "request_queue_depth_max",
    "sessions_active_mean",
    "sessions_active_max",
    "latency_p95_ms_mean",
    "latency_p95_ms_max",
    "latency_p99_ms_max",
    "db_query_p95_ms_max",
    "requests_per_s",
    "errors_per_s",
    "slow_requests_per_s",
    "error_ratio",
    "cache_hit_ratio",
];

/// Parameters each route accepts (the OpenAPI document is checked against these).
pub const APPS_PARAMS: &[&str] = &["status", "health", "label", "text", "sort", "limit", "cursor"];
pub const METRICS_PARAMS: &[&str] = &["from", "to", "fields"];
pub const ALERTS_PARAMS: &[&str] = &["state", "kind", "severity", "app", "since", "limit"];
pub const LEAKS_PARAMS: &[&str] = &["limit"];

/// Most applications in one page, and the default.
pub const APPS_MAX_LIMIT: i64 = 500;
const APPS_DEFAULT_LIMIT: i64 = 50;
/// Most alerts in one answer, and the default.
pub const ALERTS_MAX_LIMIT: i64 = 1_000;
const ALERTS_DEFAULT_LIMIT: i64 = 100;
/// The widest metrics window, and the default one (ending now).
const METRICS_MAX_SPAN_MS: i64 = 31 * 24 * 3_600_000;
const METRICS_DEFAULT_SPAN_MS: i64 = 3_600_000;

/// What the application list may be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    AppId,
    /// Worst first when ascending (critical, warning, healthy).
    Health,
    /// Worst first when ascending (DOWN, LATE, DEGRADED, UP, STOPPED).
    Status,
    OpenAlerts,
    LastSeen,
}

impl SortKey {
    fn parse(s: &str) -> Option<SortKey> {
        Some(match s {
            "app_id" => SortKey::AppId,
            "health" => SortKey::Health,
            "status" => SortKey::Status,
            "open_alerts" => SortKey::OpenAlerts,
            "last_seen" => SortKey::LastSeen,
            _ => return None,
        })
    }
}

/// The sort: a key, and `-` in front for descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

/// Where the next page starts: after the row with this sort value and app_id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub sort: Sort,
    /// The last row's sort value (`None` for the app_id sort, whose value is the id).
    pub value: Option<i64>,
    pub app_id: String,
}

impl Cursor {
    /// The opaque form handed to clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a cursor serialises"))
    }

    fn decode(s: &str) -> Option<Cursor> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).ok()?).ok()
    }
}

/// `GET /api/v1/apps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppsQuery {
    pub status: Vec<String>,
    pub health: Vec<String>,
    /// `k:v` pairs, all of which must match.
    pub labels: Vec<(String, String)>,
    /// A case-insensitive substring of the app_id.
    pub text: Option<String>,
    pub sort: Sort,
    pub limit: i64,
    pub cursor: Option<Cursor>,
}

/// `GET /api/v1/apps/{app_id}/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub fields: Vec<&'static str>,
}

/// Which alerts by their latest transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Open,
    Resolved,
    All,
}

/// `GET /api/v1/alerts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsQuery {
    pub state: AlertState,
    pub kind: Option<String>,
    pub severity: Option<String>,
    pub app: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// Refuses parameters outside `allowed` and repeated ones not in `repeatable`.
fn check_names(pairs: &[(String, String)], allowed: &[&str], repeatable: &[&str]) -> Result<(), ParamError> {
    for (i, (k, _)) in pairs.iter().enumerate() {
        if !allowed.contains(&k.as_str()) {
            let known = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
            return Err(bad(k, format!("unknown parameter (known: {known})")));
        }
        if !repeatable.contains(&k.as_str()) && pairs[..i].iter().any(|(p, _)| p == k) {
            return Err(bad(k, "given more than once"));
        }
    }
    Ok(())
}

fn single<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Every value of a repeatable, comma-separated parameter, each checked against `known`.
fn one_of_each(pairs: &[(String, String)], name: &str, known: &[&str]) -> Result<Vec<String>, ParamError> {
    let mut out = Vec::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == name) {
        for item in v.split(',').map(str::trim) {
            let found = known.iter().find(|k| k.eq_ignore_ascii_case(item));
            let Some(found) = found else {
                return Err(bad(name, format!("{item:?} is not one of {}", known.join(", "))));
            };
            out.push((*found).to_owned());
        }
    }
    Ok(out)
}

fn limit(pairs: &[(String, String)], default: i64, max: i64) -> Result<i64, ParamError> {
    match single(pairs, "limit") {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(bad("limit", format!("{v:?} is not a whole number from 1 to {max}"))),
        },
    }
}

/// An RFC 3339 time (`2026-12-05T10:00:00Z`) or milliseconds since the epoch.
pub fn time(param: &str, v: &str) -> Result<DateTime<Utc>, ParamError> {
    if let Ok(ms) = v.parse::<i64>() {
        return DateTime::from_timestamp_millis(ms).ok_or_else(|| bad(param, format!("{v} is out of range")));
    }
    DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)).map_err(|_| {
        bad(param, format!("{v:?} is neither an RFC 3339 time nor milliseconds since the epoch"))
    })
}

fn sort(v: Option<&str>) -> Result<Sort, ParamError> {
    let v = v.unwrap_or("app_id");
    let (descending, name) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let key = SortKey::parse(name).ok_or_else(|| {
        bad(
            "sort",
            format!("{v:?} is not one of app_id, health, status, open_alerts, last_seen (- for descending)"),
        )
    })?;
    Ok(Sort { key, descending })
}

/// Parses the application list's parameters.
pub fn apps(pairs: &[(String, String)]) -> Result<AppsQuery, ParamError> {
    check_names(pairs, APPS_PARAMS, &["status", "health", "label"])?;
    let mut labels = Vec::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == "label") {
        match v.split_once(':') {
            Some((k, val)) if !k.is_empty() => labels.push((k.to_owned(), val.to_owned())),
            _ => return Err(bad("label", format!("{v:?} is not of the form key:value"))),
        }
    }
    let text = single(pairs, "text").filter(|t| !t.is_empty()).map(str::to_owned);
    if text.as_ref().is_some_and(|t| t.len() > 200) {
        return Err(bad("text", "longer than 200 characters"));
    }
    let sort = sort(single(pairs, "sort"))?;
    let cursor = match single(pairs, "cursor") {
        None => None,
        Some(c) => match Cursor::decode(c) {
            Some(cursor) if cursor.sort == sort => Some(cursor),
            Some(_) => return Err(bad("cursor", "was issued for another sort")),
            None => return Err(bad("cursor", "is not a cursor this API issued")),
        },
    };
    Ok(AppsQuery {
        status: one_of_each(pairs, "status", STATUSES)?,
        health: one_of_each(pairs, "health", HEALTHS)?,
        labels,
        text,
        sort,
        limit: limit(pairs, APPS_DEFAULT_LIMIT, APPS_MAX_LIMIT)?,
        cursor,
    })
}

/// Parses the metrics route's parameters, as of `now`.
pub fn metrics(pairs: &[(String, String)], now: DateTime<Utc>) -> Result<MetricsQuery, ParamError> {
    check_names(pairs, METRICS_PARAMS, &[])?;
    let to = single(pairs, "to").map(|v| time("to", v)).transpose()?.unwrap_or(now);
    let from = match single(pairs, "from") {
        Some(v) => time("from", v)?,
        None => to - chrono::Duration::milliseconds(METRICS_DEFAULT_SPAN_MS),
    };
    if from >= to {
        return Err(bad("from", "must be before to"));
    }
    if (to - from).num_milliseconds() > METRICS_MAX_SPAN_MS {
        return Err(bad("from", "the window from..to is longer than 31 days"));
    }
    let fields = match single(pairs, "fields") {
        None => METRIC_FIELDS.to_vec(),
        Some(v) => v
            .split(',')
            .map(str::trim)
            .map(|f| {
                METRIC_FIELDS
                    .iter()
                    .copied()
                    .find(|k| *k == f)
                    .ok_or_else(|| bad("fields", format!("{f:?} is not a rollup column")))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(MetricsQuery { from, to, fields })
}

/// Parses the alert list's parameters.
pub fn alerts(pairs: &[(String, String)]) -> Result<AlertsQuery, ParamError> {
    check_names(pairs, ALERTS_PARAMS, &[])?;
    let state = match single(pairs, "state").unwrap_or("open") {
        "open" => AlertState::Open,
        "resolved" => AlertState::Resolved,
        "all" => AlertState::All,
        other => return Err(bad("state", format!("{other:?} is not one of open, resolved, all"))),
    };
    let kind = single(pairs, "kind").map(|k| k.to_ascii_uppercase());
    if let Some(k) = &kind
        && (k.is_empty() || !k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
    {
        return Err(bad("kind", format!("{k:?} is not an alert kind like MEMORY_HIGH")));
    }
    let severity = one_of_each(pairs, "severity", SEVERITIES)?;
    if severity.len() > 1 {
        return Err(bad("severity", "one severity at most"));
    }
    Ok(AlertsQuery {
        state,
        kind,
        severity: severity.into_iter().next(),
        app: single(pairs, "app").map(str::to_owned),
        since: single(pairs, "since").map(|v| time("since", v)).transpose()?,
        limit: limit(pairs, ALERTS_DEFAULT_LIMIT, ALERTS_MAX_LIMIT)?,
    })
}

/// Refuses any parameter, for a route that takes none.
pub fn none(pairs: &[(String, String)]) -> Result<(), ParamError> {
    check_names(pairs, &[], &[])
}

/// Parses the leak suspects' parameters: their number.
pub fn leaks(pairs: &[(String, String)]) -> Result<i64, ParamError> {
    check_names(pairs, LEAKS_PARAMS, &[])?;
    limit(pairs, ALERTS_DEFAULT_LIMIT, ALERTS_MAX_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        s.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    fn param_of<T: std::fmt::Debug>(r: Result<T, ParamError>) -> String {
        r.unwrap_err().param
    }

    #[test]
    fn apps_defaults_to_the_first_page_by_app_id() {
        let a = apps(&q("")).unwrap();
        assert_eq!(a.sort, Sort { key: SortKey::AppId, descending: false });
        assert_eq!((a.limit, a.cursor, a.text), (50, None, None));
    }

    #[test]
    fn apps_filters_are_parsed_and_normalised() {
        let a =
            apps(&q("status=down,late&health=CRITICAL&label=env:prod&label=team:a:b&text=pay&sort=-health"))
                .unwrap();
        assert_eq!(a.status, ["DOWN", "LATE"]);
        assert_eq!(a.health, ["critical"]);
        assert_eq!(a.labels, [("env".into(), "prod".into()), ("team".into(), "a:b".into())]);
        assert_eq!(a.text.as_deref(), Some("pay"));
        assert_eq!(a.sort, Sort { key: SortKey::Health, descending: true });
    }

    #[test]
    fn bad_apps_parameters_are_named() {
        assert_eq!(param_of(apps(&q("status=SLEEPY"))), "status");
        assert_eq!(param_of(apps(&q("health=meh"))), "health");
        assert_eq!(param_of(apps(&q("label=nocolon"))), "label");
        assert_eq!(param_of(apps(&q("label=:v"))), "label");
        assert_eq!(param_of(apps(&q("sort=size"))), "sort");
        assert_eq!(param_of(apps(&q("limit=0"))), "limit");
        assert_eq!(param_of(apps(&q("limit=501"))), "limit");
        assert_eq!(param_of(apps(&q("limit=ten"))), "limit");
        assert_eq!(param_of(apps(&q("cursor=garbage"))), "cursor");
        assert_eq!(param_of(apps(&q("colour=red"))), "colour");
        assert_eq!(param_of(apps(&q("sort=health&sort=status"))), "sort");
    }

    #[test]
    fn a_cursor_round_trips_and_is_tied_to_its_sort() {
        let sort = Sort { key: SortKey::LastSeen, descending: true };
        let c = Cursor { sort, value: Some(17), app_id: "app-1".into() };
        let a = apps(&q(&format!("sort=-last_seen&cursor={}", c.encode()))).unwrap();
        assert_eq!(a.cursor, Some(c.clone()));
        assert_eq!(param_of(apps(&q(&format!("sort=last_seen&cursor={}", c.encode())))), "cursor");
    }

    #[test]
    fn metrics_window_defaults_to_the_last_hour_with_every_field() {
        let now = DateTime::from_timestamp_millis(10 * 3_600_000).unwrap();
        let m = metrics(&q(""), now).unwrap();
        assert_eq!((m.to, (m.to - m.from).num_minutes()), (now, 60));
        assert_eq!(m.fields, METRIC_FIELDS);
        let m = metrics(&q("from=2026-12-05T10:00:00Z&to=1796468400000&fields=beats,cpu_ratio_max"), now)
            .unwrap();
        assert_eq!(
            (m.from.timestamp_millis(), m.to.timestamp_millis()),
            (1_796_464_800_000, 1_796_468_400_000)
        );
        assert_eq!(m.fields, ["beats", "cpu_ratio_max"]);
    }

    #[test]
    fn bad_metrics_parameters_are_named() {
        let now = Utc::now();
        assert_eq!(param_of(metrics(&q("from=yesterday"), now)), "from");
        assert_eq!(param_of(metrics(&q("to=soon"), now)), "to");
        assert_eq!(param_of(metrics(&q("from=2000&to=1000"), now)), "from");
        assert_eq!(param_of(metrics(&q("from=0&to=9999999999999"), now)), "from");
        assert_eq!(param_of(metrics(&q("fields=beats,app_id"), now)), "fields");
        assert_eq!(param_of(metrics(&q("fields=beats;drop"), now)), "fields");
    }

    #[test]
    fn alerts_default_to_open_and_parse_filters() {
        let a = alerts(&q("")).unwrap();
        assert_eq!((a.state, a.limit, a.kind, a.severity), (AlertState::Open, 100, None, None));
        let a = alerts(&q("state=all&kind=memory_high&severity=critical&app=a&since=0&limit=5")).unwrap();
        assert_eq!(a.state, AlertState::All);
        assert_eq!((a.kind.as_deref(), a.severity.as_deref()), (Some("MEMORY_HIGH"), Some("CRITICAL")));
        assert_eq!(
            (a.app.as_deref(), a.since.map(|t| t.timestamp_millis()), a.limit),
            (Some("a"), Some(0), 5)
        );
    }

    #[test]
    fn bad_alerts_parameters_are_named() {
        assert_eq!(param_of(alerts(&q("state=closed"))), "state");
        assert_eq!(param_of(alerts(&q("kind=memory-high"))), "kind");
        assert_eq!(param_of(alerts(&q("severity=INFO"))), "severity");
        assert_eq!(param_of(alerts(&q("severity=WARNING,CRITICAL"))), "severity");
        assert_eq!(param_of(alerts(&q("since=last-week"))), "since");
        assert_eq!(param_of(alerts(&q("limit=1001"))), "limit");
        assert_eq!(param_of(alerts(&q("status=open"))), "status");
    }
}
