//! What an alert says: a one-line summary, the evidence (the figures that were measured), and
//! recommendations that point at the measured cause rather than a generic checklist.

use std::collections::BTreeMap;

use crate::alert::{AlertKind, AlertState, Severity};
use crate::heartbeat::Heartbeat;

use super::rollup::memory_ratio;

/// The words of one alert transition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Explanation {
    pub summary: String,
    pub evidence: BTreeMap<String, String>,
    pub recommendations: Vec<String>,
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn put<T: ToString>(e: &mut BTreeMap<String, String>, k: &str, v: Option<T>) {
    if let Some(v) = v {
        e.insert(k.to_owned(), v.to_string());
    }
}

/// Evidence common to every alert about an instance: its last figures.
fn figures(b: &Heartbeat, e: &mut BTreeMap<String, String>) {
    put(e, "memory_used_bytes", b.memory_used_bytes);
    put(e, "memory_limit_bytes", b.memory_limit_bytes);
    put(e, "memory_used_ratio", memory_ratio(b).map(|r| format!("{r:.3}")));
    put(e, "cpu_ratio", b.cpu_ratio.map(|v| format!("{v:.3}")));
    put(e, "db_pool_size", b.db_pool_size);
    put(e, "db_pool_in_use", b.db_pool_in_use);
    put(e, "db_pool_waiting", b.db_pool_waiting);
    put(e, "latency_p95_ms", b.latency_p95_ms);
    put(e, "db_query_p95_ms", b.db_query_p95_ms);
    put(e, "request_queue_depth", b.request_queue_depth);
    put(e, "sessions_active", b.sessions_active);
    put(e, "threads", b.threads);
    put(e, "open_fds", b.open_fds);
    put(e, "status", Some(b.status.as_str()));
    put(e, "seq", Some(b.seq));
    if let Some(v) = b.labels.get("version") {
        e.insert("version".into(), v.clone());
    }
}

/// Explains a threshold rule's transition, given the beat that caused it and the error rate
/// and request rate measured over the last minute.
pub fn threshold(
    kind: AlertKind,
    state: AlertState,
    severity: Severity,
    value: f64,
    threshold: f64,
    beat: &Heartbeat,
    requests_per_s: Option<f64>,
) -> Explanation {
    let mut evidence = BTreeMap::new();
    figures(beat, &mut evidence);
    put(&mut evidence, "requests_per_s", requests_per_s.map(|r| format!("{r:.2}")));
    let who = format!("{}/{}", beat.app_id, beat.instance_id);
    let level = severity.as_str().to_lowercase();
    let (what, shown_value, shown_threshold) = match kind {
        AlertKind::MemoryHigh => ("memory used", pct(value), pct(threshold)),
        AlertKind::CpuHigh => ("CPU", pct(value), pct(threshold)),
        AlertKind::DbPoolSaturated => ("database pool in use", pct(value), pct(threshold)),
        AlertKind::DiskHigh => ("disk used", pct(value), pct(threshold)),
        AlertKind::SlowResponses => ("p95 latency", format!("{value:.0} ms"), format!("{threshold:.0} ms")),
        AlertKind::QueueBacklog => ("request queue", format!("{value:.0}"), format!("{threshold:.0}")),
        AlertKind::ErrorRateHigh => ("error rate", pct(value), pct(threshold)),
        AlertKind::SlowQueries => ("p95 query time", format!("{value:.0} ms"), format!("{threshold:.0} ms")),
        _ => ("value", format!("{value}"), format!("{threshold}")),
    };
    let summary = match state {
        AlertState::Firing => {
            format!("{who}: {what} at {shown_value}, above the {level} level {shown_threshold}")
        }
        AlertState::Resolved => format!("{who}: {what} back to {shown_value}, below {shown_threshold}"),
    };
    let recommendations = if state == AlertState::Resolved { Vec::new() } else { recommend(kind, beat) };
    Explanation { summary, evidence, recommendations }
}

/// What a beat shows beside the alert's own figure: the signs the recommendations follow.
struct Signs {
    /// Requests waiting for a database connection.
    waiting: i32,
    /// The pool is (nearly) exhausted: 90 % in use, or anyone waiting.
    pool_full: bool,
    /// Database queries take two seconds or more (p95).
    slow_queries: bool,
    /// CPU at 80 % or more.
    cpu_hot: bool,
    /// Memory at 80 % of its limit or more.
    mem_hot: bool,
}

impl Signs {
    fn of(b: &Heartbeat) -> Signs {
        let waiting = b.db_pool_waiting.unwrap_or(0);
        let pool_full = match (b.db_pool_in_use, b.db_pool_size) {
            (Some(u), Some(s)) if s > 0 => f64::from(u) / f64::from(s) >= 0.9 || waiting > 0,
            _ => waiting > 0,
        };
        Signs {
            waiting,
            pool_full,
            slow_queries: b.db_query_p95_ms.is_some_and(|q| q >= 2_000.0),
            cpu_hot: b.cpu_ratio.is_some_and(|c| c >= 0.8),
            mem_hot: memory_ratio(b).is_some_and(|m| m >= 0.8),
        }
    }
}

fn recommend(kind: AlertKind, b: &Heartbeat) -> Vec<String> {
    let s = Signs::of(b);
    match kind {
        AlertKind::MemoryHigh => memory_high(b),
        AlertKind::CpuHigh => cpu_high(&s),
        AlertKind::DbPoolSaturated => pool_saturated(b, &s),
        AlertKind::DiskHigh => disk_high(),
        AlertKind::SlowResponses => slow_responses(&s),
        AlertKind::ErrorRateHigh => error_rate_high(&s),
        AlertKind::QueueBacklog => queue_backlog(&s),
        AlertKind::SlowQueries => slow_queries(),
        _ => Vec::new(),
    }
}

fn memory_high(b: &Heartbeat) -> Vec<String> {
    let mut r = vec!["If memory keeps growing while traffic is flat, suspect a leak: take a heap profile (tracemalloc, objgraph) and compare two snapshots.".into()];
    if b.sessions_active.is_some() {
        r.push("Check that sessions are expired and cleaned up; a growing sessions_active points at session accumulation.".into());
    }
    r.push(
        "If the working set is legitimate, raise the memory limit or spread load over more instances.".into(),
    );
    r
}

fn cpu_high(s: &Signs) -> Vec<String> {
    let mut r = vec!["Profile the hot path (py-spy top / perf) to find what burns CPU.".into()];
    if s.pool_full {
        r.push(
            "The database pool is also saturated: requests may spin on retries; fix the pool first.".into(),
        );
    }
    r.push(
        "If the load is legitimate, add workers or instances; move heavy work to a background queue.".into(),
    );
    r
}

fn pool_saturated(b: &Heartbeat, s: &Signs) -> Vec<String> {
    let mut r = Vec::new();
    let waiting = s.waiting;
    if waiting > 0 && b.latency_p95_ms.is_some_and(|l| l >= 1_000.0) {
        r.push(format!("{waiting} requests wait for a connection while latency rises: connections are held too long (long or idle-in-transaction sessions, unreleased connections) or the pool is too small."));
    }
    if s.slow_queries {
        r.push("Queries are slow too: find them in pg_stat_statements and EXPLAIN ANALYZE them; a missing index holds connections longer.".into());
    }
    r.push("Look for connections not returned to the pool (sessions not closed on error paths) in pg_stat_activity, state 'idle in transaction'.".into());
    r.push(
        "Only if each connection is used briefly, raise the pool size (or put PgBouncer in front).".into(),
    );
    r
}

fn disk_high() -> Vec<String> {
    vec![
        "Free space: rotate and compress logs, purge temporary files and old uploads.".into(),
        "Grow the volume or move bulky data off the instance.".into(),
    ]
}

fn slow_responses(s: &Signs) -> Vec<String> {
    let mut r = Vec::new();
    if s.pool_full {
        r.push(
            "The database pool is saturated: requests wait for connections; see DB_POOL_SATURATED.".into(),
        );
    }
    if s.slow_queries {
        r.push("Database queries are slow (p95 query time high): EXPLAIN ANALYZE the slowest in pg_stat_statements, look for N+1 queries and missing indexes.".into());
    }
    if s.cpu_hot {
        r.push("CPU is saturated: profile the request handlers or add workers.".into());
    }
    if s.mem_hot {
        r.push("Memory is near its limit: garbage collection or swapping may stall requests.".into());
    }
    if r.is_empty() {
        r.push("Resources look normal: look for blocking I/O in request handlers (external calls without timeouts, synchronous logging) and too few workers.".into());
    }
    r
}

fn error_rate_high(s: &Signs) -> Vec<String> {
    let mut r = vec![
        "Read the application's logs for the dominant error; compare with the last deploy (label version)."
            .into(),
    ];
    if s.pool_full {
        r.push("The database pool is saturated: errors may be connection timeouts.".into());
    }
    r
}

fn queue_backlog(s: &Signs) -> Vec<String> {
    let mut r = vec!["Requests arrive faster than they are served: add workers or instances.".into()];
    if s.slow_queries || s.pool_full {
        r.push("Requests are slowed by the database (slow queries or a full pool): fix that first.".into());
    }
    r
}

fn slow_queries() -> Vec<String> {
    vec![
        "Find the slowest statements in pg_stat_statements and EXPLAIN ANALYZE them; add missing indexes, remove N+1 query patterns.".into(),
        "Check for lock waits and long transactions in pg_stat_activity.".into(),
    ]
}

/// Explains a liveness transition of an instance (late, down, back, restarted).
pub fn liveness(
    kind: AlertKind,
    state: AlertState,
    app_id: &str,
    instance_id: &str,
    last: &Heartbeat,
    silent_ms: i64,
) -> Explanation {
    let mut evidence = BTreeMap::new();
    figures(last, &mut evidence);
    evidence.insert("last_sent_at".into(), last.sent_at.to_string());
    evidence.insert("interval_ms".into(), last.interval_ms.to_string());
    evidence.insert("silent_ms".into(), silent_ms.to_string());
    let who = format!("{app_id}/{instance_id}");
    let secs = silent_ms as f64 / 1000.0;
    let mut recommendations = Vec::new();
    let summary = match (kind, state) {
        (AlertKind::InstanceLate, AlertState::Firing) => {
            format!("{who}: no heartbeat for {secs:.0} s (interval {} s)", last.interval_ms / 1000)
        }
        (AlertKind::InstanceDown, AlertState::Firing) => {
            recommendations.push(
                "Check whether the process is alive (systemctl status, kubectl get pod) and its exit reason."
                    .into(),
            );
            if memory_ratio(last).is_some_and(|m| m >= 0.85) {
                recommendations.push(format!(
                    "Its last beat reported memory at {} of the limit: look for an OOM kill (dmesg, kubectl describe pod).",
                    pct(memory_ratio(last).unwrap_or_default())
                ));
            }
            recommendations.push("If the process is alive, check its path to Kafka (network, credentials, producer errors in its log).".into());
            format!("{who}: down, no heartbeat for {secs:.0} s")
        }
        (AlertKind::InstanceRestarted, AlertState::Firing) => {
            if memory_ratio(last).is_some_and(|m| m >= 0.85) {
                recommendations.push(
                    "The instance restarted with memory near its limit: likely an OOM kill; look for a leak."
                        .into(),
                );
            } else {
                recommendations.push("Check whether the restart was a deploy; if not, read the exit reason of the previous process.".into());
            }
            format!("{who}: restarted (seq started over)")
        }
        (_, AlertState::Resolved) => format!("{who}: {} resolved", kind.as_str()),
        (_, AlertState::Firing) => format!("{who}: {}", kind.as_str()),
    };
    Explanation { summary, evidence, recommendations }
}

/// Explains APP_DOWN.
pub fn app_down(state: AlertState, app_id: &str, instances: usize) -> Explanation {
    let mut evidence = BTreeMap::new();
    evidence.insert("instances_down".into(), instances.to_string());
    match state {
        AlertState::Firing => Explanation {
            summary: format!("{app_id}: every instance is down ({instances})"),
            evidence,
            recommendations: vec![
                "Every instance stopped at once: look for a shared cause (a deploy, a dependency, the host or cluster, the network to Kafka).".into(),
            ],
        },
        AlertState::Resolved => {
            Explanation { summary: format!("{app_id}: an instance is beating again"), evidence, recommendations: vec![] }
        }
    }
}

/// Explains a leak alert's transition: the growth that was measured and where it leads.
pub fn leak(change: &crate::trend::LeakChange, beat: &Heartbeat) -> Explanation {
    use crate::trend::{LeakChange, Resource};
    let mut evidence = BTreeMap::new();
    figures(beat, &mut evidence);
    let who = format!("{}/{}", beat.app_id, beat.instance_id);
    match change {
        LeakChange::Fire { resource, verdict, .. } => {
            let g = &verdict.growth;
            let per_hour = g.slope_per_min * 60.0;
            put(&mut evidence, "slope_per_hour", Some(format!("{per_hour:.3}")));
            put(&mut evidence, "raw_slope_per_hour", Some(format!("{:.3}", g.raw_slope_per_min * 60.0)));
            put(&mut evidence, "trend_z", Some(format!("{:.2}", g.z)));
            put(&mut evidence, "points", Some(g.points));
            put(&mut evidence, "series", Some(resource.describe()));
            put(&mut evidence, "level", Some(format!("{:.1}", g.level)));
            put(&mut evidence, "limit", verdict.limit.map(|l| format!("{l:.0}")));
            put(&mut evidence, "troughs", g.troughs);
            put(&mut evidence, "workload_normalised", Some(g.per_request_rate.is_some()));
            put(&mut evidence, "normalised_slope_per_hour", Some(format!("{per_hour:.3}")));
            put(&mut evidence, "per_request_per_s", g.per_request_rate.map(|b| format!("{b:.3}")));
            let projected_per_hour = g.projection.slope_per_min * 60.0;
            if verdict.limit.is_some() {
                put(&mut evidence, "projection_slope_per_hour", Some(format!("{projected_per_hour:.3}")));
                put(&mut evidence, "projection_level", Some(format!("{:.1}", g.projection.level)));
                put(&mut evidence, "projection_points", Some(g.projection.points));
            }
            let horizon = verdict.exhaustion_in_ms.map(|ms| {
                let at = chrono::DateTime::from_timestamp_millis(beat.sent_at.saturating_add(ms))
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                (ms as f64 / 3_600_000.0, at)
            });
            if let Some((hours, at)) = &horizon {
                put(&mut evidence, "exhaustion_in_hours", Some(format!("{hours:.2}")));
                put(&mut evidence, "projected_exhaustion", Some(at.clone()));
            }
            let how = match (g.troughs, g.per_request_rate) {
                (Some(n), _) => format!(" (judged on {n} saw-tooth troughs)"),
                (None, Some(_)) => " (beyond what the request rate explains)".to_owned(),
                (None, None) => " while the request rate is flat".to_owned(),
            };
            // The rate the exhaustion is projected at, when there is a limit to reach.
            let rate = if horizon.is_some() { projected_per_hour } else { per_hour };
            let unit = match resource {
                Resource::Memory => format!("{:.1} MiB/h", rate / 1_048_576.0),
                _ => format!("{rate:.2}/h"),
            };
            let summary = match &horizon {
                Some((hours, at)) => format!(
                    "{who}: {} grows {unit}{how}; at this rate it reaches its limit in {hours:.1} h ({at})",
                    resource_word(*resource)
                ),
                None => format!(
                    "{who}: {} grows {unit}{how}, {:.0}% of its level per day",
                    resource_word(*resource),
                    per_hour * 24.0 / g.level.max(f64::MIN_POSITIVE) * 100.0
                ),
            };
            Explanation { summary, evidence, recommendations: leak_recommendations(*resource) }
        }
        LeakChange::Resolve { resource, calm_minutes, .. } => {
            let summary = if *calm_minutes == 0 {
                format!("{who}: {} leak suspicion resolved, a new process started", resource_word(*resource))
            } else {
                format!(
                    "{who}: {} no longer grows ({calm_minutes} min without a trend)",
                    resource_word(*resource)
                )
            };
            Explanation { summary, evidence, recommendations: Vec::new() }
        }
    }
}

fn resource_word(r: crate::trend::Resource) -> &'static str {
    use crate::trend::Resource;
    match r {
        Resource::Memory => "memory",
        Resource::DbPool => "db connections in use",
        Resource::Sessions => "active sessions",
        Resource::Threads => "threads",
        Resource::OpenFds => "open file descriptors",
    }
}

fn leak_recommendations(r: crate::trend::Resource) -> Vec<String> {
    use crate::trend::Resource;
    let lines: &[&str] = match r {
        Resource::Memory => &[
            "Take two heap dumps some minutes apart and compare what grows (objects retained by caches, listeners, static collections).",
            "Check caches and in-process queues for missing size bounds or expiry.",
            "If the growth started with a deploy, compare with the previous version; a restart only buys time.",
        ],
        Resource::DbPool => &[
            "Connections are taken from the pool and not returned: look for code paths that skip close/release on errors (use context managers / try-finally).",
            "Enable the pool's leak detection (e.g. a checkout timeout with stack traces) to find the borrower.",
            "Check for long-running or idle-in-transaction sessions on the database (pg_stat_activity).",
        ],
        Resource::Sessions => &[
            "Sessions are created faster than they expire: check the session timeout and that logouts and expired sessions are removed.",
            "Look for clients (bots, health checks) that create a new session on every request.",
        ],
        Resource::Threads => &[
            "Threads are started and never end: take a thread dump and look for many threads with the same stack.",
            "Check executors and thread pools for missing bounds or shutdown.",
        ],
        Resource::OpenFds => &[
            "File descriptors are opened and not closed: list them (lsof -p / /proc/<pid>/fd) and group by target.",
            "Check files, sockets and HTTP clients for missing close on error paths.",
        ],
    };
    lines.iter().map(|s| (*s).to_owned()).collect()
}

/// Explains FLAPPING: how many UP/DOWN transitions were counted in the window.
pub fn flapping(
    state: AlertState,
    app_id: &str,
    instance_id: &str,
    last: &Heartbeat,
    transitions: usize,
    window_ms: i64,
) -> Explanation {
    let mut evidence = BTreeMap::new();
    figures(last, &mut evidence);
    evidence.insert("transitions".into(), transitions.to_string());
    evidence.insert("window_ms".into(), window_ms.to_string());
    let who = format!("{app_id}/{instance_id}");
    let minutes = window_ms / 60_000;
    match state {
        AlertState::Firing => Explanation {
            summary: format!(
                "{who}: flapping, {transitions} UP/DOWN transitions within {minutes} min; its LATE/DOWN/RESTARTED alerts are held back while it lasts"
            ),
            evidence,
            recommendations: vec![
                "Look for a crash loop (exit reasons, restart counts) or a liveness probe that kills it.".into(),
                "Check the path from the instance to Kafka for intermittent loss (network, producer retries, throttling).".into(),
                "If its beats are merely irregular, consider phi-accrual liveness for it (rules.overrides phi_threshold).".into(),
            ],
        },
        AlertState::Resolved => Explanation {
            summary: format!("{who}: no UP/DOWN transition for {minutes} min, FLAPPING resolved"),
            evidence,
            recommendations: Vec::new(),
        },
    }
}
