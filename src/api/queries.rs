//! The API's reads from PostgreSQL: each in one read-only transaction on a pooled
//! connection, every value a bound parameter (the only names put into SQL text are the
//! checked schema and rollup columns from [`super::params::METRIC_FIELDS`]).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::params::{AlertState, AlertsQuery, AppsQuery, Cursor, MetricsQuery, SortKey};
use crate::store::{self, QueryContext, StoreError, quoted_schema};

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// A statement that runs longer than this is cancelled: a read must not hold a connection
/// the sink needs.
const STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '5s'";

const APP_COLUMNS: &str = "app_id, status, health, instances_up, instances_total, last_seen, open_alerts, labels, \
     last_figures, updated_at";
const ALERT_COLUMNS: &str = "alert_id, app_id, instance_id, kind, severity, state, started_at, event_at, \
     value, threshold, summary, evidence, recommendations";
/// The latest transition of each alert id, ordered for `DISTINCT ON`.
const LATEST: &str = "ORDER BY alert_id, event_at DESC, kafka_offset DESC";

/// `latest` (alert transitions) with the latest acknowledgement event of each firing one's
/// current firing (the same `started_at`, which events carry in ms), as `ack_*` columns.
fn with_ack(q: &str, latest: &str, conditions: &str) -> String {
    format!(
        "SELECT latest.*, k.action AS ack_action, k.acked_by AS ack_by, k.note AS ack_note, k.at AS ack_at
         FROM ({latest}) latest
         LEFT JOIN LATERAL (SELECT action, acked_by, note, at FROM {q}.alert_ack a
             WHERE a.alert_id = latest.alert_id
               AND a.alert_started_at = date_trunc('milliseconds', latest.started_at)
             ORDER BY a.at DESC, a.kafka_partition DESC, a.kafka_offset DESC LIMIT 1) k ON latest.state = 'FIRING'
         {conditions}"
    )
}

/// The tables the API reads, through a pool.
#[derive(Clone)]
pub struct Reader {
    pool: deadpool_postgres::Pool,
    /// The schema, quoted.
    q: String,
    /// An instance whose last beat is this much older than its app's is left out, s: the
    /// engine has forgotten it (`detection.forget_after_ms`).
    forget_after_s: f64,
}

/// Rollup points over a span ending at an application's last beat.
pub struct SeriesData {
    pub end: DateTime<Utc>,
    /// Each minute with its values, in the order the fields were asked.
    pub points: Vec<(DateTime<Utc>, Vec<Option<f64>>)>,
}

/// One page of applications.
pub struct AppPage {
    pub apps: Vec<Value>,
    pub total: i64,
    pub next: Option<Cursor>,
}

/// An RFC 3339 time in UTC with milliseconds.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn time(row: &Row, col: &str) -> Value {
    row.get::<_, Option<DateTime<Utc>>>(col).map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

fn refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

/// The sort value of the application list's keyset, as SQL.
fn sort_expr(key: SortKey) -> &'static str {
    match key {
        SortKey::AppId => "NULL::bigint",
        SortKey::Health => "(CASE health WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END)::bigint",
        SortKey::Status => {
            "(CASE status WHEN 'DOWN' THEN 0 WHEN 'LATE' THEN 1 WHEN 'DEGRADED' THEN 2 WHEN 'UP' THEN 3 ELSE 4 END)::bigint"
        }
        SortKey::OpenAlerts => "open_alerts::bigint",
        SortKey::LastSeen => "COALESCE((extract(epoch FROM last_seen) * 1000)::bigint, 0)",
    }
}

/// The application list's filters as SQL conditions over numbered parameters.
fn app_filters(query: &AppsQuery) -> (Vec<String>, Params) {
    let mut conditions = Vec::new();
    let mut params: Params = Vec::new();
    if !query.status.is_empty() {
        params.push(Box::new(query.status.clone()));
        conditions.push(format!("status = ANY(${})", params.len()));
    }
    if !query.health.is_empty() {
        params.push(Box::new(query.health.clone()));
        conditions.push(format!("health = ANY(${})", params.len()));
    }
    if !query.labels.is_empty() {
        let wanted: serde_json::Map<String, Value> =
            query.labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        params.push(Box::new(Value::Object(wanted)));
        conditions.push(format!("labels @> ${}", params.len()));
    }
    if let Some(text) = &query.text {
        params.push(Box::new(text.clone()));
        conditions.push(format!("strpos(lower(app_id), lower(${})) > 0", params.len()));
    }
    (conditions, params)
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) }
}

/// An application row as the API shows it.
fn app_json(row: &Row) -> Value {
    json!({
        "app_id": row.get::<_, String>("app_id"),
        "status": row.get::<_, String>("status"),
        "health": row.get::<_, String>("health"),
        "instances_up": row.get::<_, i32>("instances_up"),
        "instances_total": row.get::<_, i32>("instances_total"),
        "last_seen": time(row, "last_seen"),
        "open_alerts": row.get::<_, i32>("open_alerts"),
        "labels": row.get::<_, Value>("labels"),
        "last_figures": row.get::<_, Value>("last_figures"),
        "updated_at": time(row, "updated_at"),
    })
}

/// An alert transition row as the API shows it.
fn alert_json(row: &Row) -> Value {
    json!({
        "alert_id": row.get::<_, String>("alert_id"),
        "app_id": row.get::<_, String>("app_id"),
        "instance_id": row.get::<_, Option<String>>("instance_id"),
        "kind": row.get::<_, String>("kind"),
        "severity": row.get::<_, String>("severity"),
        "state": row.get::<_, String>("state"),
        "started_at": time(row, "started_at"),
        "event_at": time(row, "event_at"),
        "value": row.get::<_, Option<f64>>("value"),
        "threshold": row.get::<_, Option<f64>>("threshold"),
        "summary": row.get::<_, String>("summary"),
        "evidence": row.get::<_, Value>("evidence"),
        "recommendations": row.get::<_, Vec<String>>("recommendations"),
        "ack": ack_json(row),
    })
}

/// The acknowledgement that holds for an alert row, if any.
fn ack_json(row: &Row) -> Value {
    match row.get::<_, Option<String>>("ack_action").as_deref() {
        Some("ACK") => json!({
            "by": row.get::<_, String>("ack_by"),
            "note": row.get::<_, Option<String>>("ack_note"),
            "at": time(row, "ack_at"),
        }),
        _ => Value::Null,
    }
}

impl Reader {
    /// A reader of `config`'s database with a pool of its own, so the API never takes a
    /// connection the sink waits for (connections are opened on first use).
    pub fn of(config: &crate::config::Config) -> Result<Reader, StoreError> {
        Ok(Reader {
            pool: store::pool(&config.postgres)?,
            q: quoted_schema(&config.postgres.schema)?,
            forget_after_s: config.detection.forget_after_ms as f64 / 1000.0,
        })
    }

    /// Runs `statements` (SQL, parameters) in one read-only transaction; the rows of each.
    async fn read(&self, what: &str, statements: &[(&str, &Params)]) -> Result<Vec<Vec<Row>>, StoreError> {
        let mut client = store::checkout(&self.pool).await?;
        let tx = client.build_transaction().read_only(true).start().await.doing(what)?;
        tx.batch_execute(STATEMENT_TIMEOUT).await.doing(what)?;
        let mut out = Vec::with_capacity(statements.len());
        for (sql, params) in statements {
            out.push(tx.query(*sql, &refs(params)).await.doing(what)?);
        }
        tx.commit().await.doing(what)?;
        Ok(out)
    }

    /// Counts of applications by status and health, open alerts by severity, and when the
    /// sink last committed.
    pub async fn health_counts(
        &self,
    ) -> Result<(Vec<(String, String, i64)>, Option<DateTime<Utc>>), StoreError> {
        let q = &self.q;
        let counts = format!(
            "SELECT 'status', status, count(*) FROM {q}.application GROUP BY status
             UNION ALL SELECT 'health', health, count(*) FROM {q}.application GROUP BY health
             UNION ALL SELECT 'severity', severity, count(*) FROM {q}.open_alerts GROUP BY severity"
        );
        let commit = format!("SELECT max(updated_at) FROM {q}.sink_offset");
        let none = Params::new();
        let rows = self.read("reading the fleet's health", &[(&counts, &none), (&commit, &none)]).await?;
        let counts = rows[0].iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        Ok((counts, rows[1].first().and_then(|r| r.get(0))))
    }

    /// One page of the application list.
    pub async fn apps(&self, query: &AppsQuery) -> Result<AppPage, StoreError> {
        let (mut conditions, mut params) = app_filters(query);
        let count_sql = format!("SELECT count(*) FROM {}.application {}", self.q, where_clause(&conditions));
        let count_params: Params = app_filters(query).1;
        let expr = sort_expr(query.sort.key);
        let op = if query.sort.descending { "<" } else { ">" };
        if let Some(c) = &query.cursor {
            params.push(Box::new(c.app_id.clone()));
            let id = params.len();
            if query.sort.key == SortKey::AppId {
                conditions.push(format!("app_id {op} ${id}"));
            } else {
                params.push(Box::new(c.value.unwrap_or(0)));
                conditions.push(format!("({expr}, app_id) {op} (${}, ${id})", params.len()));
            }
        }
        let dir = if query.sort.descending { "DESC" } else { "ASC" };
        let page_sql = format!(
            "SELECT {APP_COLUMNS}, {expr} AS sort_value FROM {}.application {} ORDER BY {expr} {dir}, app_id {dir} LIMIT {}",
            self.q,
            where_clause(&conditions),
            query.limit + 1
        );
        let rows =
            self.read("listing applications", &[(&count_sql, &count_params), (&page_sql, &params)]).await?;
        let total = rows[0][0].get(0);
        let mut page = rows[1].iter().collect::<Vec<_>>();
        let next = if page.len() as i64 > query.limit {
            page.truncate(query.limit as usize);
            page.last().map(|r| Cursor {
                sort: query.sort,
                value: r.get("sort_value"),
                app_id: r.get("app_id"),
            })
        } else {
            None
        };
        Ok(AppPage { apps: page.into_iter().map(app_json).collect(), total, next })
    }

    /// One application: its snapshot, instances (their latest beat), open alerts; `None`
    /// when the table has no such application.
    pub async fn app(&self, app_id: &str) -> Result<Option<Value>, StoreError> {
        let q = &self.q;
        let app = format!("SELECT {APP_COLUMNS} FROM {q}.application WHERE app_id = $1");
        // Within the forget period before the app's last beat: an index range, not the whole
        // retention of its beats.
        let instances = format!(
            "SELECT DISTINCT ON (instance_id) instance_id, seq, sent_at, status, interval_ms
             FROM {q}.heartbeat_event WHERE app_id = $1 AND sent_at >=
               (SELECT max(sent_at) FROM {q}.heartbeat_event WHERE app_id = $1) - $2::float8 * interval '1 second'
             ORDER BY instance_id, sent_at DESC, seq DESC"
        );
        let alerts = with_ack(
            q,
            &format!(
                "SELECT DISTINCT ON (alert_id) {ALERT_COLUMNS} FROM {q}.alert_event WHERE app_id = $1 {LATEST}"
            ),
            "WHERE latest.state = 'FIRING' ORDER BY latest.severity = 'CRITICAL' DESC, latest.started_at",
        );
        let params: Params = vec![Box::new(app_id.to_owned())];
        let window: Params = vec![Box::new(app_id.to_owned()), Box::new(self.forget_after_s)];
        let rows = self
            .read("reading an application", &[(&app, &params), (&instances, &window), (&alerts, &params)])
            .await?;
        let Some(row) = rows[0].first() else { return Ok(None) };
        let alerts: Vec<Value> = rows[2].iter().map(alert_json).collect();
        let mut out = app_json(row);
        out["instances"] = rows[1].iter().map(|r| instance_json(r, &alerts)).collect();
        out["leaks"] = alerts.iter().filter_map(leak_json).collect();
        out["alerts"] = Value::Array(alerts);
        Ok(Some(out))
    }

    /// An alert's app and, if its latest transition is FIRING, when that firing started;
    /// `None` for an unknown alert id.
    pub async fn firing(
        &self,
        alert_id: &str,
    ) -> Result<Option<(String, Option<DateTime<Utc>>)>, StoreError> {
        let sql = format!(
            "SELECT app_id, state, started_at FROM {}.alert_event WHERE alert_id = $1 {LATEST} LIMIT 1",
            self.q
        );
        let params: Params = vec![Box::new(alert_id.to_owned())];
        let rows = self.read("reading an alert", &[(&sql, &params)]).await?;
        Ok(rows[0].first().map(|r| {
            let firing = r.get::<_, String>("state") == "FIRING";
            (r.get("app_id"), firing.then(|| r.get("started_at")))
        }))
    }

    /// The application's one-minute rollups in the window; `None` for an unknown app.
    pub async fn metrics(
        &self,
        app_id: &str,
        query: &MetricsQuery,
    ) -> Result<Option<Vec<Value>>, StoreError> {
        let q = &self.q;
        let exists = format!("SELECT 1 FROM {q}.application WHERE app_id = $1");
        let columns: Vec<String> =
            query.fields.iter().map(|f| format!("{f}::double precision AS {f}")).collect();
        let rollups = format!(
            "SELECT minute, {} FROM {q}.metric_rollup_1m WHERE app_id = $1 AND minute >= $2 AND minute < $3 ORDER BY minute",
            columns.join(", ")
        );
        let one: Params = vec![Box::new(app_id.to_owned())];
        let window: Params = vec![Box::new(app_id.to_owned()), Box::new(query.from), Box::new(query.to)];
        let rows = self.read("reading rollups", &[(&exists, &one), (&rollups, &window)]).await?;
        if rows[0].is_empty() {
            return Ok(None);
        }
        let points = rows[1]
            .iter()
            .map(|r| {
                let mut point = serde_json::Map::new();
                point.insert("minute".into(), time(r, "minute"));
                for f in &query.fields {
                    point.insert((*f).into(), json!(r.get::<_, Option<f64>>(*f)));
                }
                Value::Object(point)
            })
            .collect();
        Ok(Some(points))
    }

    /// Alerts by their latest transition, newest first.
    pub async fn alerts(&self, query: &AlertsQuery) -> Result<Vec<Value>, StoreError> {
        let mut params: Params = Vec::new();
        let mut inner = Vec::new();
        let mut outer = Vec::new();
        if let Some(app) = &query.app {
            params.push(Box::new(app.clone()));
            inner.push(format!("app_id = ${}", params.len()));
        }
        if let Some(kind) = &query.kind {
            params.push(Box::new(kind.clone()));
            inner.push(format!("kind = ${}", params.len()));
        }
        // The latest transition is at or after `since` exactly when some transition is.
        if let Some(since) = query.since {
            params.push(Box::new(since));
            inner.push(format!("event_at >= ${}", params.len()));
        }
        match query.state {
            AlertState::Open => outer.push("latest.state = 'FIRING'".to_owned()),
            AlertState::Resolved => outer.push("latest.state = 'RESOLVED'".to_owned()),
            AlertState::All => {}
        }
        if let Some(severity) = &query.severity {
            params.push(Box::new(severity.clone()));
            outer.push(format!("latest.severity = ${}", params.len()));
        }
        let latest = format!(
            "SELECT DISTINCT ON (alert_id) {ALERT_COLUMNS} FROM {}.alert_event {} {LATEST}",
            self.q,
            where_clause(&inner)
        );
        let order = format!("ORDER BY latest.event_at DESC, latest.alert_id LIMIT {}", query.limit);
        let sql = with_ack(&self.q, &latest, &format!("{} {order}", where_clause(&outer)));
        let rows = self.read("listing alerts", &[(&sql, &params)]).await?;
        Ok(rows[0].iter().map(alert_json).collect())
    }
}

/// The fleet's worst applications by a figure of their latest beat: (figure, SQL of its
/// value over `last_figures`).
const WORST_FIGURES: &[(&str, &str)] = &[
    ("memory_used_ratio", "(last_figures->>'memory_used_ratio')::float8"),
    ("cpu_ratio", "(last_figures->>'cpu_ratio')::float8"),
    (
        "db_pool_ratio",
        "(last_figures->>'db_pool_in_use')::float8 / NULLIF((last_figures->>'db_pool_size')::float8, 0)",
    ),
    ("disk_used_ratio", "(last_figures->>'disk_used_ratio')::float8"),
    ("latency_p95_ms", "(last_figures->>'latency_p95_ms')::float8"),
];

/// Each application's latest complete minute of rollups, for those that beat within five
/// minutes of the fleet's newest beat (event time, so a replay of old data shows too).
fn latest_minutes(q: &str) -> String {
    format!(
        "SELECT r.* FROM {q}.application a
         CROSS JOIN LATERAL (SELECT app_id, minute, beats, error_ratio, slow_requests_per_s
             FROM {q}.metric_rollup_1m m
             WHERE m.app_id = a.app_id AND m.minute >= a.last_seen - interval '3 minutes'
               AND m.minute < date_trunc('minute', a.last_seen)
             ORDER BY m.minute DESC LIMIT 1) r
         WHERE a.last_seen >= (SELECT max(last_seen) FROM {q}.application) - interval '5 minutes'"
    )
}

impl Reader {
    /// The fleet at a glance: the worst application by each resource and performance
    /// figure, and the latest complete minute's throughput, error rate and slow requests.
    pub async fn fleet(&self) -> Result<Value, StoreError> {
        let q = &self.q;
        let worst: Vec<String> = WORST_FIGURES
            .iter()
            .map(|(name, expr)| {
                format!(
                    "(SELECT '{name}'::text, app_id, {expr} AS v FROM {q}.application
                      WHERE {expr} IS NOT NULL ORDER BY v DESC, app_id LIMIT 1)"
                )
            })
            .collect();
        let worst = worst.join(" UNION ALL ");
        let minutes = format!(
            "WITH latest AS ({}) SELECT
               (SELECT sum(beats)::float8 / 60 FROM latest) AS beats_per_s,
               (SELECT max(minute) FROM latest) AS minute,
               (SELECT sum(slow_requests_per_s) FROM latest) AS slow_requests_per_s,
               (SELECT app_id FROM latest WHERE error_ratio IS NOT NULL ORDER BY error_ratio DESC, app_id LIMIT 1) AS error_app,
               (SELECT max(error_ratio) FROM latest) AS error_ratio",
            latest_minutes(q)
        );
        let none = Params::new();
        let rows = self.read("reading the fleet", &[(&worst, &none), (&minutes, &none)]).await?;
        let mut out = serde_json::Map::new();
        for r in &rows[0] {
            out.insert(r.get(0), json!({"app_id": r.get::<_, String>(1), "value": r.get::<_, f64>(2)}));
        }
        let m = &rows[1][0];
        let error_app: Option<String> = m.get("error_app");
        let error = error_app
            .map(|app_id| json!({"app_id": app_id, "value": m.get::<_, Option<f64>>("error_ratio")}));
        out.insert("error_ratio".into(), error.unwrap_or(Value::Null));
        out.insert("slow_requests_per_s".into(), json!(m.get::<_, Option<f64>>("slow_requests_per_s")));
        out.insert("beats_per_s".into(), json!(m.get::<_, Option<f64>>("beats_per_s")));
        out.insert("minute".into(), time(m, "minute"));
        Ok(Value::Object(out))
    }

    /// The application's rollup `fields` (columns of [`super::params::METRIC_FIELDS`]) over
    /// the `span_ms` before its last beat or rollup (now, if it has neither); `None` for an
    /// unknown app.
    pub async fn series(
        &self,
        app_id: &str,
        fields: &[&'static str],
        span_ms: i64,
    ) -> Result<Option<SeriesData>, StoreError> {
        assert!(fields.iter().all(|f| super::params::METRIC_FIELDS.contains(f)), "a rollup column");
        let q = &self.q;
        // The snapshot's last_seen can lag the beats: the latest rollup's minute counts too.
        let end_at = format!(
            "SELECT GREATEST(COALESCE(last_seen, now()),
                 (SELECT max(minute) + interval '1 minute' FROM {q}.metric_rollup_1m WHERE app_id = $1))
             FROM {q}.application WHERE app_id = $1"
        );
        let columns: Vec<String> = fields.iter().map(|f| format!("{f}::double precision")).collect();
        let rollups = format!(
            "SELECT minute, {} FROM {q}.metric_rollup_1m WHERE app_id = $1
               AND minute >= ({end_at}) - $2::float8 * interval '1 millisecond'
             ORDER BY minute",
            columns.join(", ")
        );
        let one: Params = vec![Box::new(app_id.to_owned())];
        let span: Params = vec![Box::new(app_id.to_owned()), Box::new(span_ms as f64)];
        let rows = self.read("reading a chart's rollups", &[(&end_at, &one), (&rollups, &span)]).await?;
        let Some(end) = rows[0].first().map(|r| r.get(0)) else { return Ok(None) };
        let points = rows[1]
            .iter()
            .map(|r| (r.get("minute"), (1..=fields.len()).map(|i| r.get::<_, Option<f64>>(i)).collect()))
            .collect();
        Ok(Some(SeriesData { end, points }))
    }

    /// Open leak alerts, soonest projected exhaustion first (those without one last).
    pub async fn leaks(&self, limit: i64) -> Result<Vec<Value>, StoreError> {
        let sql = format!(
            "SELECT {ALERT_COLUMNS}, NULL::text AS ack_action FROM {}.open_alerts WHERE kind LIKE '%\\_LEAK\\_SUSPECTED'
             ORDER BY (evidence->>'projected_exhaustion')::timestamptz NULLS LAST, alert_id LIMIT {limit}",
            self.q
        );
        let rows = self.read("listing leak suspects", &[(&sql, &Params::new())]).await?;
        Ok(rows[0].iter().map(alert_json).collect())
    }
}

/// An instance's latest beat, with the liveness alert open on it if any.
fn instance_json(row: &Row, alerts: &[Value]) -> Value {
    let id: String = row.get("instance_id");
    let liveness = alerts
        .iter()
        .find(|a| {
            a["instance_id"] == id.as_str()
                && matches!(a["kind"].as_str(), Some("INSTANCE_DOWN" | "INSTANCE_LATE"))
        })
        .map(|a| a["kind"].clone());
    json!({
        "instance_id": id,
        "last_seq": row.get::<_, i64>("seq"),
        "last_beat": time(row, "sent_at"),
        "last_status": row.get::<_, String>("status"),
        "interval_ms": row.get::<_, i32>("interval_ms"),
        "liveness_alert": liveness,
    })
}

/// A leak alert's projection: its slope and when the resource runs out, if it does.
fn leak_json(alert: &Value) -> Option<Value> {
    let kind = alert["kind"].as_str()?;
    kind.ends_with("_LEAK_SUSPECTED").then(|| {
        json!({
            "kind": kind,
            "instance_id": alert["instance_id"],
            "slope_per_hour": alert["evidence"]["slope_per_hour"],
            "projected_exhaustion": alert["evidence"]["projected_exhaustion"],
        })
    })
}
