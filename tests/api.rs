//! The JSON API (`/api/v1`) of `pulsewatch run` against the real PostgreSQL: every route on
//! rows written into the test's own schema (filters, sorting, cursor paging, bad input,
//! unknown ids, ETag revalidation), then on what the pipeline itself found in a load with
//! faults; the live events of `/api/v1/events`; the dashboard's page, assets and charts.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::http::{Answer, request};
use common::{Pipeline, TestConfig, eventually, prepare};
use pulsewatch::config::Config;
use serde_json::Value;

/// Six applications, their alerts (three open, two resolved), beats (one instance's long
/// ago) and rollups; times are relative to now, in yesterday's and today's partitions.
const SEED: &str = r#"
INSERT INTO {q}.application (app_id, status, health, instances_up, instances_total, last_seen,
                             last_figures, open_alerts, labels, updated_at) VALUES
 ('pay-api',    'DOWN',     'critical', 0, 2, now() - interval '10 min', '{"cpu_ratio": 0.1}', 1, '{"env":"prod","team":"pay"}', now()),
 ('pay-worker', 'UP',       'healthy',  1, 1, now() - interval '2 s',    '{}', 0, '{"env":"prod","team":"pay"}', now()),
 ('shop-web',   'DEGRADED', 'warning',  2, 2, now() - interval '3 s',    '{"memory_used_ratio": 0.7}', 1, '{"env":"staging","team":"shop"}', now()),
 ('shop-db',    'LATE',     'warning',  1, 2, now() - interval '30 s',   '{}', 1, '{"env":"prod","team":"shop"}', now()),
 ('search',     'UP',       'healthy',  3, 3, now() - interval '1 s',    '{}', 0, '{"env":"prod","team":"find"}', now()),
 ('old-cron',   'STOPPED',  'healthy',  0, 1, NULL,                      '{}', 0, '{"env":"dev"}', now());
INSERT INTO {q}.alert_event (alert_id, app_id, instance_id, kind, severity, state, started_at, event_at,
    emitted_at, value, threshold, summary, evidence, recommendations, source_partition, source_offset,
    kafka_partition, kafka_offset) VALUES
 ('a-down', 'pay-api', NULL, 'APP_DOWN', 'CRITICAL', 'FIRING', now() - interval '9 min', now() - interval '9 min',
  now(), NULL, NULL, 'every instance of pay-api is down', '{"instances_down":"2"}', '{"Restart pay-api"}', 0, 1, 0, 1),
 ('a-leak', 'shop-web', 'i-1', 'MEMORY_LEAK_SUSPECTED', 'WARNING', 'FIRING', now() - interval '8 min', now() - interval '8 min',
  now(), 0.7, NULL, 'memory grows 5 MiB/h', '{"slope_per_hour":"5242880.000","projected_exhaustion":"2026-12-06T10:00:00Z","level":"629145600","limit":"1073741824"}',
  '{"Take a heap profile of shop-web i-1","Restart i-1 before it runs out"}', 0, 2, 0, 2),
 ('a-late', 'shop-db', 'i-2', 'INSTANCE_LATE', 'WARNING', 'FIRING', now() - interval '1 min', now() - interval '1 min',
  now(), NULL, NULL, 'i-2 is late', '{}', '{}', 0, 3, 0, 3),
 ('a-cpu', 'search', NULL, 'CPU_HIGH', 'WARNING', 'FIRING', now() - interval '20 min', now() - interval '20 min',
  now(), 0.85, 0.8, 'cpu high', '{}', '{}', 0, 4, 0, 4),
 ('a-cpu', 'search', NULL, 'CPU_HIGH', 'WARNING', 'RESOLVED', now() - interval '20 min', now() - interval '15 min',
  now(), 0.5, 0.75, 'cpu back', '{}', '{}', 0, 5, 0, 5),
 ('a-mem', 'pay-worker', NULL, 'MEMORY_HIGH', 'WARNING', 'FIRING', now() - interval '30 min', now() - interval '30 min',
  now(), 0.85, 0.8, 'memory high', '{}', '{}', 0, 6, 0, 6),
 ('a-mem', 'pay-worker', NULL, 'MEMORY_HIGH', 'CRITICAL', 'FIRING', now() - interval '30 min', now() - interval '29 min',
  now(), 0.95, 0.9, 'memory very high', '{}', '{}', 0, 7, 0, 7),
 ('a-mem', 'pay-worker', NULL, 'MEMORY_HIGH', 'CRITICAL', 'RESOLVED', now() - interval '30 min', now() - interval '25 min',
  now(), 0.6, 0.75, 'memory back', '{}', '{}', 0, 8, 0, 8);
INSERT INTO {q}.heartbeat_event (app_id, instance_id, seq, sent_at, interval_ms, status, kafka_partition, kafka_offset)
SELECT 'shop-web', 'i-' || i, s, now() - (10 - s) * interval '5 s', 5000, 'OK', 0, i * 100 + s
FROM generate_series(1, 2) i, generate_series(1, 3) s;
INSERT INTO {q}.heartbeat_event (app_id, instance_id, seq, sent_at, interval_ms, status, kafka_partition, kafka_offset)
VALUES ('shop-web', 'i-gone', 9, now() - interval '2 hours', 5000, 'OK', 0, 999);
INSERT INTO {q}.metric_rollup_1m (app_id, minute, beats, instances, memory_used_ratio_max, cpu_ratio_mean)
SELECT 'shop-web', date_trunc('minute', now()) - m * interval '1 min', 24, 2, 0.6 + m * 0.01, 0.2
FROM generate_series(1, 5) m;
"#;

/// The test's schema with [`SEED`] in it, and a sink stage serving the API over it.
fn seeded(test: &str, extra: &[(&str, &str)]) -> (TestConfig, Pipeline) {
    let config = prepare(test);
    let q = format!("\"{}\"", config.postgres.schema);
    common::runtime().block_on(async {
        let client = pulsewatch::store::connect(&config.postgres).await.unwrap();
        let today = chrono::Utc::now().date_naive();
        for plan in pulsewatch::store::partitions::plans(&config.retention) {
            for day in [today.pred_opt().unwrap(), today] {
                pulsewatch::store::partitions::ensure(&client, &config.postgres.schema, &plan, day)
                    .await
                    .unwrap();
            }
        }
        client.batch_execute(&SEED.replace("{q}", &q)).await.unwrap();
    });
    let pipeline = Pipeline::start(&config, "sink", extra);
    (config, pipeline)
}

fn get(addr: &str, path: &str) -> Answer {
    request(addr, "GET", path, &[], b"")
}

/// GET answered 200 with JSON; the JSON.
fn ok(addr: &str, path: &str) -> Value {
    let answer = get(addr, path);
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    assert!(answer.head.contains("content-type: application/json"), "{path}: {}", answer.head);
    answer.json()
}

fn ids(list: &Value, key: &str) -> Vec<String> {
    list.as_array().unwrap().iter().map(|a| a[key].as_str().unwrap().to_owned()).collect()
}

fn app_ids(addr: &str, query: &str) -> Vec<String> {
    ids(&ok(addr, &format!("/api/v1/apps?{query}"))["apps"], "app_id")
}

#[test]
fn health_counts_applications_alerts_and_the_running_stages() {
    let (_config, pipeline) = seeded("api_health", &[]);
    let h = ok(&pipeline.http, "/api/v1/health");
    assert_eq!(h["status"], "critical", "{h}");
    assert_eq!(h["applications"]["total"], 6);
    assert_eq!(h["applications"]["by_status"]["UP"], 2);
    assert_eq!(h["applications"]["by_health"]["warning"], 2);
    assert_eq!(h["open_alerts"]["total"], 3);
    assert_eq!(
        (
            h["open_alerts"]["by_severity"]["CRITICAL"].as_i64(),
            h["open_alerts"]["by_severity"]["WARNING"].as_i64()
        ),
        (Some(1), Some(2))
    );
    let sink = &h["components"][0];
    assert_eq!((sink["name"].as_str(), sink["up"].as_bool()), (Some("sink"), Some(true)), "{h}");
    assert!(h["last_check"].as_str().unwrap().ends_with('Z'));
    let doc = ok(&pipeline.http, "/api/v1/openapi.json");
    let paths: BTreeSet<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(paths, pulsewatch::api::ROUTES.iter().copied().collect());
}

#[test]
fn apps_are_filtered_sorted_and_paged_by_cursor() {
    let (_config, pipeline) = seeded("api_apps", &[]);
    let addr = pipeline.http.as_str();
    assert_eq!(app_ids(addr, ""), ["old-cron", "pay-api", "pay-worker", "search", "shop-db", "shop-web"]);
    assert_eq!(ok(addr, "/api/v1/apps")["total"], 6);
    assert_eq!(app_ids(addr, "status=down,late"), ["pay-api", "shop-db"]);
    assert_eq!(app_ids(addr, "health=warning&sort=-app_id"), ["shop-web", "shop-db"]);
    assert_eq!(app_ids(addr, "label=env:prod&label=team:pay"), ["pay-api", "pay-worker"]);
    assert_eq!(app_ids(addr, "text=SHOP"), ["shop-db", "shop-web"]);
    assert_eq!(app_ids(addr, "sort=health&limit=3"), ["pay-api", "shop-db", "shop-web"]);
    assert_eq!(app_ids(addr, "sort=status&limit=2"), ["pay-api", "shop-db"]);
    assert_eq!(app_ids(addr, "sort=-last_seen&limit=2"), ["search", "pay-worker"]);
    // Pages of two, by open alerts (most first), walk all six once.
    let mut seen = Vec::new();
    let mut path = "/api/v1/apps?sort=-open_alerts&limit=2".to_owned();
    loop {
        let page = ok(addr, &path);
        assert_eq!(page["total"], 6);
        seen.extend(ids(&page["apps"], "app_id"));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/apps?sort=-open_alerts&limit=2&cursor={c}"),
            None => break,
        }
    }
    // Ties are broken by app_id, in the sort's direction.
    assert_eq!(seen, ["shop-web", "shop-db", "pay-api", "search", "pay-worker", "old-cron"]);
    let app = &ok(addr, "/api/v1/apps?text=pay-api")["apps"][0];
    assert_eq!((app["status"].as_str(), app["labels"]["team"].as_str()), (Some("DOWN"), Some("pay")));
}

#[test]
fn one_app_shows_its_instances_alerts_leaks_and_rollups() {
    // i-gone beat two hours before the others: forgotten after one.
    let (_config, pipeline) = seeded("api_app", &[("PULSEWATCH_DETECTION_FORGET_AFTER_MS", "3600000")]);
    let addr = pipeline.http.as_str();
    let app = ok(addr, "/api/v1/apps/shop-web");
    assert_eq!(
        (app["status"].as_str(), app["last_figures"]["memory_used_ratio"].as_f64()),
        (Some("DEGRADED"), Some(0.7))
    );
    let instances = &app["instances"];
    assert_eq!(ids(instances, "instance_id"), ["i-1", "i-2"], "{app}");
    assert_eq!(instances[0]["last_seq"], 3);
    let alert = &app["alerts"][0];
    assert_eq!(
        (alert["kind"].as_str(), alert["state"].as_str()),
        (Some("MEMORY_LEAK_SUSPECTED"), Some("FIRING"))
    );
    assert_eq!(alert["recommendations"][0], "Take a heap profile of shop-web i-1");
    assert_eq!(app["leaks"][0]["projected_exhaustion"], "2026-12-06T10:00:00Z");
    let late = ok(addr, "/api/v1/apps/shop-db");
    assert_eq!(ids(&late["alerts"], "kind"), ["INSTANCE_LATE"]);
    let quiet = ok(addr, "/api/v1/apps/search");
    assert_eq!(quiet["alerts"].as_array().unwrap().len(), 0, "a resolved alert is not open");

    let m = ok(addr, "/api/v1/apps/shop-web/metrics?fields=memory_used_ratio_max,beats");
    let points = m["points"].as_array().unwrap();
    assert_eq!(points.len(), 5, "{m}");
    let keys: BTreeSet<&str> = points[0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["beats", "memory_used_ratio_max", "minute"]));
    assert_eq!(points[4]["memory_used_ratio_max"].as_f64(), Some(0.61));
    // From the minute before the last: the last two points.
    let last = chrono::DateTime::parse_from_rfc3339(points[4]["minute"].as_str().unwrap()).unwrap();
    let from = last.timestamp_millis() - 60_000;
    let m = ok(addr, &format!("/api/v1/apps/shop-web/metrics?from={from}"));
    assert_eq!(m["points"].as_array().unwrap().len(), 2, "{m}");
    assert_eq!(m["points"][0]["cpu_ratio_mean"].as_f64(), Some(0.2));
    assert_eq!(ok(addr, "/api/v1/apps/pay-api/metrics")["points"].as_array().unwrap().len(), 0);
}

#[test]
fn alerts_are_listed_by_their_latest_transition() {
    let (_config, pipeline) = seeded("api_alerts", &[]);
    let addr = pipeline.http.as_str();
    let list = |q: &str| ids(&ok(addr, &format!("/api/v1/alerts?{q}"))["alerts"], "alert_id");
    assert_eq!(list(""), ["a-late", "a-leak", "a-down"], "open, newest first");
    assert_eq!(list("state=resolved"), ["a-cpu", "a-mem"]);
    assert_eq!(list("state=all&limit=4"), ["a-late", "a-leak", "a-down", "a-cpu"]);
    assert_eq!(list("state=all&severity=critical"), ["a-down", "a-mem"]);
    assert_eq!(list("state=all&kind=memory_high"), ["a-mem"]);
    assert_eq!(list("state=all&app=search"), ["a-cpu"]);
    let since = chrono::Utc::now().timestamp_millis() - 16 * 60_000;
    assert_eq!(list(&format!("state=all&since={since}")), ["a-late", "a-leak", "a-down", "a-cpu"]);
    let mem = &ok(addr, "/api/v1/alerts?state=resolved&app=pay-worker")["alerts"][0];
    assert_eq!((mem["severity"].as_str(), mem["summary"].as_str()), (Some("CRITICAL"), Some("memory back")));
}

#[test]
fn bad_parameters_are_named_and_unknown_ids_are_404() {
    let (_config, pipeline) = seeded("api_bad_input", &[]);
    let addr = pipeline.http.as_str();
    for (path, param) in [
        ("/api/v1/apps?status=ASLEEP", "status"),
        ("/api/v1/apps?health=fine", "health"),
        ("/api/v1/apps?label=env", "label"),
        ("/api/v1/apps?sort=size", "sort"),
        ("/api/v1/apps?limit=0", "limit"),
        ("/api/v1/apps?cursor=bm9wZQ", "cursor"),
        ("/api/v1/apps?colour=red", "colour"),
        ("/api/v1/apps/shop-web/metrics?from=yesterday", "from"),
        ("/api/v1/apps/shop-web/metrics?fields=beats,password", "fields"),
        ("/api/v1/alerts?state=closed", "state"),
        ("/api/v1/alerts?severity=INFO", "severity"),
        ("/api/v1/alerts?since=soon", "since"),
        ("/api/v1/alerts?limit=100000", "limit"),
    ] {
        let answer = get(addr, path);
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        let body = answer.json();
        assert_eq!(body["parameter"], param, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains(param), "{path}: {body}");
    }
    for path in
        ["/api/v1/apps/nope", "/api/v1/apps/nope/metrics", "/api/v1/apps/nope%27%3B--", "/api/v1/nope"]
    {
        let answer = get(addr, path);
        assert_eq!(answer.status, 404, "{path}: {}", answer.body);
        assert!(answer.json()["error"].as_str().unwrap().contains("nope"));
    }
}

#[test]
fn the_dashboard_its_assets_charts_and_fleet_summary_are_served() {
    let (_config, pipeline) = seeded("api_dashboard", &[]);
    let addr = pipeline.http.as_str();
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.head.contains("content-type: text/html"), "{}", page.head);
    assert!(page.body.contains("/assets/app.js") && page.body.contains("/assets/style.css"));
    for (asset, kind) in [("/assets/app.js", "text/javascript"), ("/assets/style.css", "text/css")] {
        let answer = get(addr, asset);
        assert_eq!(answer.status, 200, "{asset}");
        assert!(answer.head.contains(kind) && !answer.body.is_empty(), "{asset}: {}", answer.head);
    }
    assert_eq!(get(addr, "/assets/other.js").status, 404);

    let memory = get(addr, "/charts/shop-web/memory.svg?range=1h");
    assert_eq!(memory.status, 200, "{}", memory.body);
    assert!(memory.head.contains("content-type: image/svg+xml"));
    assert!(memory.body.starts_with("<svg") && memory.body.contains("<polyline"), "{}", memory.body);
    assert!(memory.body.contains(r#"data-mark="trend""#), "the leak's trend: {}", memory.body);
    assert!(memory.body.contains("projected exhaustion 2026-12-06 10:00 UTC"), "{}", memory.body);
    for chart in ["cpu", "pool", "latency", "errors", "sessions", "spark"] {
        let answer = get(addr, &format!("/charts/shop-web/{chart}.svg?range=24h"));
        assert!(answer.status == 200 && answer.body.starts_with("<svg"), "{chart}: {}", answer.body);
    }
    assert_eq!(get(addr, "/charts/nope/memory.svg").status, 404);
    assert_eq!(get(addr, "/charts/shop-web/weather.svg").status, 404);
    let bad = get(addr, "/charts/shop-web/cpu.svg?range=2h");
    assert_eq!((bad.status, bad.json()["parameter"].as_str()), (400, Some("range")), "{}", bad.body);

    let fleet = ok(addr, "/api/v1/fleet");
    assert_eq!(fleet["memory_used_ratio"]["app_id"], "shop-web", "{fleet}");
    assert_eq!(fleet["cpu_ratio"]["value"].as_f64(), Some(0.1), "{fleet}");
    assert_eq!(
        fleet["beats_per_s"].as_f64(),
        Some(0.4),
        "24 beats in shop-web's latest complete minute: {fleet}"
    );
    assert_eq!(fleet["pipeline"]["dead_letters"], 0);
    assert_eq!(get(addr, "/api/v1/fleet?x=1").status, 400);
    let leaks = ok(addr, "/api/v1/leaks");
    assert_eq!(ids(&leaks["leaks"], "alert_id"), ["a-leak"]);
}

/// The `etag` header of an answer.
fn etag(answer: &Answer) -> String {
    let line = answer.head.lines().find(|l| l.starts_with("etag:")).expect("an etag");
    line["etag:".len()..].trim().to_owned()
}

#[test]
fn hot_reads_are_cached_revalidated_with_etags_and_counted() {
    let (config, pipeline) = seeded("api_etag", &[("PULSEWATCH_HTTP_API_CACHE_TTL_MS", "1000")]);
    let addr = pipeline.http.as_str();
    for path in ["/api/v1/health", "/api/v1/apps?sort=-health"] {
        let first = get(addr, path);
        assert_eq!(first.status, 200);
        assert!(first.head.contains("cache-control: max-age=1"), "{}", first.head);
        let tag = etag(&first);
        let again = request(addr, "GET", path, &[("If-None-Match", &tag)], b"");
        assert_eq!((again.status, again.body.as_str(), etag(&again)), (304, "", tag.clone()), "{path}");
        assert_eq!(request(addr, "GET", path, &[("If-None-Match", "\"stale\"")], b"").status, 200);
    }
    let before = etag(&get(addr, "/api/v1/apps"));
    insert_app(&config, "zz-new");
    eventually(Duration::from_secs(5), "a new application seen once the cache expires", || {
        let now = get(addr, "/api/v1/apps");
        etag(&now) != before && now.json()["total"] == 7
    });
    let stale = request(addr, "GET", "/api/v1/apps", &[("If-None-Match", &before)], b"");
    assert_eq!(stale.status, 200);
    assert!(pipeline.metric("pulsewatch_api_cache_requests_total{result=\"hit\"}") >= 2.0);
    let ratio = pipeline.metric("pulsewatch_api_cache_hit_ratio");
    assert!(ratio > 0.0 && ratio < 1.0, "{ratio}");
}

fn insert_app(config: &Config, app: &str) {
    let s = &config.postgres.schema;
    common::runtime().block_on(async {
        let client = pulsewatch::store::connect(&config.postgres).await.unwrap();
        let sql = format!(
            "INSERT INTO \"{s}\".application (app_id, status, health, instances_up, instances_total, updated_at)
             VALUES ($1, 'UP', 'healthy', 1, 1, now())"
        );
        client.execute(&sql, &[&app]).await.unwrap();
    });
}

/// The alert ids the `open_alerts` view holds for `app` (all apps: `None`).
fn open_in_database(config: &Config, app: Option<&str>) -> BTreeSet<String> {
    let s = &config.postgres.schema;
    let filter = app.map_or(String::new(), |a| format!("WHERE app_id = '{a}'"));
    common::query_strings(config, &format!("SELECT alert_id FROM \"{s}\".open_alerts {filter}"))
        .into_iter()
        .collect()
}

#[test]
fn the_pipelines_own_findings_are_served() {
    let config = prepare("api_pipeline");
    let pipeline = Pipeline::start(&config, "all", &[("PULSEWATCH_HTTP_API_CACHE_TTL_MS", "200")]);
    let addr = pipeline.http.as_str();
    let opts = pulsewatch::loadgen::LoadgenOptions {
        apps: 6,
        instances: 2,
        backfill: Some(Duration::from_secs(15 * 60)),
        mix: true,
        seed: 16,
        progress: false,
        ..pulsewatch::loadgen::LoadgenOptions::default()
    };
    let m = pulsewatch::loadgen::run(&config.kafka, &opts).unwrap();
    let apps = m.per_app.len() as i64;
    eventually(Duration::from_secs(90), "every application in the API", || {
        get(addr, "/api/v1/health").json()["applications"]["total"] == apps
    });
    eventually(Duration::from_secs(30), "the open alerts of the API are the database's", || {
        let listed = ids(&ok(addr, "/api/v1/alerts?limit=1000")["alerts"], "alert_id");
        !listed.is_empty() && listed.into_iter().collect::<BTreeSet<_>>() == open_in_database(&config, None)
    });
    let alerts = ok(addr, "/api/v1/alerts?limit=1000");
    let first = &alerts["alerts"][0];
    assert!(!first["summary"].as_str().unwrap().is_empty(), "{first}");
    let app_id = first["app_id"].as_str().unwrap();
    let app = ok(addr, &format!("/api/v1/apps/{app_id}"));
    assert_eq!(app["instances"].as_array().unwrap().len(), m.instances_per_app, "{app}");
    let shown: BTreeSet<String> = ids(&app["alerts"], "alert_id").into_iter().collect();
    assert!(shown.contains(first["alert_id"].as_str().unwrap()), "{app}");
    let metrics = ok(addr, &format!("/api/v1/apps/{app_id}/metrics?fields=beats,memory_used_ratio_max"));
    assert!(metrics["points"].as_array().unwrap().len() >= 10, "{metrics}");
    let page = ok(addr, "/api/v1/apps?limit=5&sort=-health");
    assert_eq!((page["total"].as_i64(), page["apps"].as_array().unwrap().len()), (Some(apps), 5));
    let health = ok(addr, "/api/v1/health");
    let components = health["components"].as_array().unwrap();
    let processor = components.iter().find(|c| c["name"] == "processor").expect("the processor runs");
    assert!(processor["last_commit"].as_str().is_some_and(|t| t.ends_with('Z')), "{health}");
}

/// The acknowledgement shown with the open alert `alert_id` of `app`, through the API.
fn shown_ack(addr: &str, app: &str, alert_id: &str) -> Value {
    let list = ok(addr, &format!("/api/v1/alerts?app={app}"));
    let alert = list["alerts"].as_array().unwrap().iter().find(|a| a["alert_id"] == alert_id).cloned();
    alert.map_or(Value::Null, |a| a["ack"].clone())
}

fn ack_rows(config: &Config) -> Vec<String> {
    let s = &config.postgres.schema;
    common::query_strings(
        config,
        &format!("SELECT action || ':' || acked_by FROM \"{s}\".alert_ack ORDER BY at"),
    )
}

#[test]
fn acknowledgements_go_through_kafka_into_alert_ack_and_hold_for_one_firing() {
    const TOKEN: &str = "Bearer tok-ack-1";
    let (config, pipeline) = seeded("api_acks", &[("PULSEWATCH_HTTP_API_TOKENS", "tok-ack-1,tok-ack-2")]);
    let addr = pipeline.http.as_str();
    let ack = |alert: &str, method: &str, auth: &[(&str, &str)], body: &str| {
        request(addr, method, &format!("/api/v1/alerts/{alert}/ack"), auth, body.as_bytes())
    };
    let auth = [("Authorization", TOKEN), ("Content-Type", "application/json")];
    let body = r#"{"by":"ana","note":"heap dump taken"}"#;
    assert_eq!(ack("a-leak", "POST", &[], body).status, 401);
    assert_eq!(ack("a-leak", "POST", &[("Authorization", "Bearer tok-ack-3")], body).status, 401);
    let bad = ack("a-leak", "POST", &auth, r#"{"note":"who?"}"#);
    assert_eq!((bad.status, bad.json()["parameter"].as_str()), (400, Some("body")), "{}", bad.body);
    assert_eq!(ack("a-nope", "POST", &auth, body).status, 404);
    assert_eq!(ack("a-cpu", "POST", &auth, body).status, 409, "a resolved alert");

    let accepted = ack("a-leak", "POST", &auth, body);
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    // The sink seeks its partitions one by one after it joins its group: the first
    // acknowledgement may wait for that.
    eventually(Duration::from_secs(30), "the acknowledgement in the API", || {
        shown_ack(addr, "shop-web", "a-leak")["by"] == "ana"
    });
    assert_eq!(ok(addr, "/api/v1/apps/shop-web")["alerts"][0]["ack"]["note"], "heap dump taken");
    assert_eq!(ack_rows(&config), ["ACK:ana"]);
    let topic = config.kafka.name(pulsewatch::topology::names::ALERT_ACKS);
    let records = pulsewatch::readback::read_to_end(&config.kafka, &topic, Duration::from_secs(30)).unwrap();
    let on_topic = {
        use rdkafka::message::Message;
        assert_eq!(records[0].key(), Some(&b"shop-web"[..]));
        pulsewatch::ack::AlertAck::decode(records[0].payload().unwrap()).unwrap()
    };
    assert_eq!((on_topic.alert_id.as_str(), on_topic.by.as_str()), ("a-leak", "ana"));

    // Once the sink reads: visible within two seconds.
    assert_eq!(ack("a-leak", "DELETE", &[("Authorization", "Bearer tok-ack-2")], "").status, 202);
    eventually(Duration::from_secs(2), "the withdrawal in the API within two seconds", || {
        shown_ack(addr, "shop-web", "a-leak").is_null()
    });
    assert_eq!(ack("a-leak", "POST", &auth, r#"{"by":"bo"}"#).status, 202);
    eventually(Duration::from_secs(2), "the second acknowledgement within two seconds", || {
        shown_ack(addr, "shop-web", "a-leak")["by"] == "bo"
    });
    assert_eq!(ack_rows(&config), ["ACK:ana", "UNACK:unknown", "ACK:bo"]);
    refire(&config, "a-leak");
    assert!(shown_ack(addr, "shop-web", "a-leak").is_null(), "a new firing needs a new acknowledgement");
}

/// Resolves `alert_id` and fires it again, with a new started_at.
fn refire(config: &Config, alert_id: &str) {
    let s = &config.postgres.schema;
    common::runtime().block_on(async {
        let client = pulsewatch::store::connect(&config.postgres).await.unwrap();
        let sql = format!(
            "INSERT INTO \"{s}\".alert_event (alert_id, app_id, instance_id, kind, severity, state, started_at, event_at,
                 emitted_at, summary, source_partition, source_offset, kafka_partition, kafka_offset)
             SELECT alert_id, app_id, instance_id, kind, severity, state, started_at, now() + o * interval '1 ms', now(),
                    summary, 0, 0, 0, 100 + o
             FROM (SELECT alert_id, app_id, instance_id, kind, severity, summary FROM \"{s}\".alert_event
                   WHERE alert_id = $1 LIMIT 1) a,
                  (VALUES ('RESOLVED', now() - interval '8 min', 1), ('FIRING', now(), 2)) t(state, started_at, o)"
        );
        client.execute(&sql, &[&alert_id]).await.unwrap();
    });
}

#[test]
fn without_tokens_changes_are_refused_and_an_exposed_listener_too() {
    let (config, pipeline) = seeded("api_no_tokens", &[]);
    let answer = request(
        &pipeline.http,
        "POST",
        "/api/v1/alerts/a-leak/ack",
        &[("Authorization", "Bearer x")],
        br#"{"by":"a"}"#,
    );
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.json()["error"].as_str().unwrap().contains("api_tokens"));
    drop(pipeline);
    let mut exposed = Pipeline::spawn(&config, "sink", &[("PULSEWATCH_HTTP_LISTEN", "0.0.0.0:0")]);
    let status = exposed.wait_exit(Duration::from_secs(30)).expect("it exits");
    assert!(!status.success());
    let log = std::fs::read_to_string(&exposed.log).unwrap();
    assert!(log.contains("http.listen") && log.contains("api_tokens"), "{log}");
}

/// A client of `/api/v1/events` (HTTP/1.0: the stream ends with the connection).
struct EventStream {
    reader: std::io::BufReader<std::net::TcpStream>,
}

/// One server-sent event: id, name, data.
#[derive(Debug)]
struct Sse {
    id: String,
    name: String,
    data: Value,
}

impl EventStream {
    /// Connects, checks the answer's head and reads the greeting comment.
    fn open(addr: &str, last_event_id: Option<&str>) -> EventStream {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let last = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        write!(s, "GET /api/v1/events HTTP/1.0\r\nAccept: text/event-stream\r\n{last}\r\n").unwrap();
        let mut stream = EventStream { reader: std::io::BufReader::new(s) };
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            let line = stream.line(Duration::from_secs(30)).expect("the answer's head");
            head.push_str(&line);
        }
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.0 200") && head.contains("text/event-stream"), "{head}");
        let greeting = stream.line(Duration::from_secs(5)).expect("a greeting");
        assert_eq!(greeting.trim_end().strip_prefix(':').map(str::trim), Some("connected"), "{greeting:?}");
        stream
    }

    /// The next line (with its end), waiting at most `within`.
    fn line(&mut self, within: Duration) -> Option<String> {
        use std::io::BufRead;
        let deadline = std::time::Instant::now() + within;
        let mut line = String::new();
        while std::time::Instant::now() < deadline {
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) if line.ends_with('\n') => return Some(line),
                Ok(_) => {}
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading the events: {e}"),
            }
        }
        None
    }

    /// The next event (comments and the retry field skipped), waiting at most `within`.
    fn next(&mut self, within: Duration) -> Option<Sse> {
        let deadline = std::time::Instant::now() + within;
        let (mut id, mut name, mut data) = (String::new(), String::new(), String::new());
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.line(left)?;
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() && !name.is_empty() {
                return Some(Sse { id, name, data: serde_json::from_str(&data).unwrap() });
            }
            // `field:value`, one space after the colon optional.
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = value.to_owned(),
                "event" => name = value.to_owned(),
                "data" => data.push_str(value),
                _ => {}
            }
        }
    }

    /// The next event named `name` about `alert_id`, skipping others.
    fn expect(&mut self, name: &str, alert_id: &str, within: Duration) -> Sse {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let event = self
                .next(left)
                .unwrap_or_else(|| panic!("no {name} event about {alert_id} within {within:?}"));
            if event.name == name && event.data["alert_id"] == alert_id {
                return event;
            }
        }
    }
}

/// Publishes a FIRING transition of a new alert on `app`, as the processor would.
fn fire(config: &Config, alert_id: &str, app: &str) {
    let now = chrono::Utc::now().timestamp_millis();
    let alert = pulsewatch::alert::Alert {
        alert_id: alert_id.into(),
        app_id: app.into(),
        instance_id: Some("i-1".into()),
        kind: pulsewatch::alert::AlertKind::MemoryHigh,
        severity: pulsewatch::alert::Severity::Warning,
        state: pulsewatch::alert::AlertState::Firing,
        started_at: now,
        event_at: now,
        emitted_at: now,
        value: Some(0.85),
        threshold: Some(0.8),
        summary: format!("{app}/i-1: memory at 85% of its limit"),
        evidence: [("memory_used_ratio".to_owned(), "0.850".to_owned())].into(),
        recommendations: vec!["Take a heap profile".into()],
        source_partition: 0,
        source_offset: 0,
    };
    let producer = pulsewatch::kafka::producer(&config.kafka).unwrap();
    let topic = config.kafka.name(pulsewatch::topology::names::ALERTS);
    pulsewatch::kafka::send(&producer, &topic, app, &alert.encode(), None).unwrap();
    use rdkafka::producer::Producer;
    producer.flush(Duration::from_secs(10)).unwrap();
}

#[test]
fn live_events_carry_alert_transitions_and_acknowledgements() {
    let (config, pipeline) = seeded("api_events", &[("PULSEWATCH_HTTP_API_TOKENS", "tok-live")]);
    let addr = pipeline.http.as_str();
    let mut stream = EventStream::open(addr, None);
    fire(&config, "a-live", "shop-web");
    let fired = stream.expect("alert", "a-live", Duration::from_secs(30));
    assert_eq!(
        (fired.data["state"].as_str(), fired.data["kind"].as_str()),
        (Some("FIRING"), Some("MEMORY_HIGH"))
    );
    assert_eq!(fired.data["recommendations"][0], "Take a heap profile");
    eventually(Duration::from_secs(30), "the sink stored the alert", || {
        ids(&ok(addr, "/api/v1/alerts?app=shop-web")["alerts"], "alert_id").contains(&"a-live".to_owned())
    });
    let auth = [("Authorization", "Bearer tok-live"), ("Content-Type", "application/json")];
    let posted =
        request(addr, "POST", "/api/v1/alerts/a-live/ack", &auth, br#"{"by":"ana","note":"looking"}"#);
    assert_eq!(posted.status, 202, "{}", posted.body);
    let acked = stream.expect("ack", "a-live", Duration::from_secs(10));
    assert_eq!((acked.data["action"].as_str(), acked.data["by"].as_str()), (Some("ACK"), Some("ana")));
    assert_eq!(acked.data["alert_started_at"], fired.data["started_at"]);

    // A client that reconnects with the id of the last event it saw gets what followed.
    let mut again = EventStream::open(addr, Some(&fired.id));
    let missed = again.next(Duration::from_secs(5)).expect("the missed event");
    assert_eq!((missed.name.as_str(), missed.id.as_str()), ("ack", acked.id.as_str()));
    let mut stranger = EventStream::open(addr, Some("1-1"));
    assert_eq!(stranger.next(Duration::from_secs(5)).expect("a resync").name, "resync");
}
