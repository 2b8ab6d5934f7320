//! What a run found, beside what the load generator injected: the heartbeats on Kafka, the
//! alerts and application health in PostgreSQL, and for every injected fault the alert kinds
//! expected and the ones pulsewatch raised.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use thiserror::Error;
use tokio_postgres::Client;

use crate::config::Config;
use crate::loadgen::Manifest;
use crate::readback::ReadError;
use crate::store::{self, QueryContext, StoreError, quoted_schema};
use crate::tally::{self, Tally};
use crate::topology::names;

#[derive(Debug, Error)]
pub enum SummaryError {
    #[error("{0}")]
    Tally(#[from] ReadError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the sink stored {stored} of {expected} beats within {secs} s")]
    SinkBehind { stored: i64, expected: u64, secs: u64 },
}

/// One fault of the manifest and what was found for it.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultFinding {
    pub kind: String,
    pub app_id: String,
    pub instance_id: Option<String>,
    pub expected: Vec<String>,
    pub found: BTreeSet<String>,
}

impl FaultFinding {
    /// Every expected kind was raised.
    pub fn detected(&self) -> bool {
        self.expected.iter().all(|k| self.found.contains(k))
    }
}

/// The whole summary.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub tally: Tally,
    pub alerts_by_kind: BTreeMap<(String, String), i64>,
    pub health: BTreeMap<(String, String), i64>,
    pub faults: Vec<FaultFinding>,
    /// Applications with FIRING alerts although the manifest injected nothing into them.
    pub unexpected: BTreeMap<String, BTreeSet<String>>,
}

/// Reads Kafka and, when a manifest is given, waits for the sink to store every beat of it
/// and compares what PostgreSQL holds with it.
pub async fn summarise(
    config: &Config,
    manifest: Option<&Manifest>,
    timeout: Duration,
) -> Result<Summary, SummaryError> {
    let topic = config.kafka.name(names::HEARTBEATS);
    let (kafka, drift) = (config.kafka.clone(), config.input.max_sent_at_drift_ms);
    let tally = tokio::task::spawn_blocking(move || tally::tally_topic(&kafka, &topic, drift, timeout))
        .await
        .expect("the tally thread does not panic")?;
    let mut summary = Summary { tally, ..Summary::default() };
    let Some(m) = manifest else { return Ok(summary) };
    let db = Database {
        q: quoted_schema(&config.postgres.schema)?,
        client: store::connect(&config.postgres).await?,
    };
    db.wait_for_beats(m, timeout).await?;
    // Give the last alerts and snapshots a moment to pass through the sink.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = EventWindow::of(m);
    summary.alerts_by_kind = db.alert_transitions(&window).await?;
    summary.health = db.health().await?;
    let raised = db.raised_alerts(&window).await?;
    summary.faults = m
        .faults
        .iter()
        .map(|f| FaultFinding {
            kind: f.kind.clone(),
            app_id: f.app_id.clone(),
            instance_id: f.instance_id.clone(),
            expected: f.expected_alerts.clone(),
            found: raised.get(&f.app_id).cloned().unwrap_or_default(),
        })
        .collect();
    let faulty: BTreeSet<&str> = m.faults.iter().map(|f| f.app_id.as_str()).collect();
    summary.unexpected = raised.into_iter().filter(|(app, _)| !faulty.contains(app.as_str())).collect();
    Ok(summary)
}

/// The load's event time, `[start, end)`, as the timestamps the tables hold.
struct EventWindow {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl EventWindow {
    fn of(m: &Manifest) -> EventWindow {
        EventWindow {
            start: DateTime::from_timestamp_millis(m.start_ms).unwrap_or_default(),
            end: DateTime::from_timestamp_millis(m.end_ms).unwrap_or_default(),
        }
    }
}

/// The PostgreSQL schema the sink writes, and a connection to it.
struct Database {
    /// The schema's name, quoted.
    q: String,
    client: Client,
}

impl Database {
    /// Waits until the sink has stored every beat of the manifest; an error after `timeout`.
    async fn wait_for_beats(&self, m: &Manifest, timeout: Duration) -> Result<(), SummaryError> {
        let q = &self.q;
        let window = EventWindow::of(m);
        let deadline = Instant::now() + timeout;
        loop {
            let stored: i64 = self
                .client
                .query_one(
                    &format!("SELECT count(*) FROM {q}.heartbeat_event WHERE sent_at >= $1 AND sent_at < $2"),
                    &[&window.start, &window.end],
                )
                .await
                .doing("counting stored beats")?
                .get(0);
            if stored as u64 >= m.beats_total {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(SummaryError::SinkBehind {
                    stored,
                    expected: m.beats_total,
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Alert transitions within the window, by kind and state.
    async fn alert_transitions(
        &self,
        window: &EventWindow,
    ) -> Result<BTreeMap<(String, String), i64>, SummaryError> {
        let q = &self.q;
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT kind, state, count(*) FROM {q}.alert_event WHERE event_at >= $1 AND event_at < $2 GROUP BY 1, 2 ORDER BY 1, 2"
                ),
                &[&window.start, &window.end],
            )
            .await
            .doing("counting alerts")?;
        Ok(rows.iter().map(|row| ((row.get(0), row.get(1)), row.get(2))).collect())
    }

    /// Applications now, by status and health.
    async fn health(&self) -> Result<BTreeMap<(String, String), i64>, SummaryError> {
        let q = &self.q;
        let rows = self
            .client
            .query(
                &format!("SELECT status, health, count(*) FROM {q}.application GROUP BY 1, 2 ORDER BY 1, 2"),
                &[],
            )
            .await
            .doing("reading application health")?;
        Ok(rows.iter().map(|row| ((row.get(0), row.get(1)), row.get(2))).collect())
    }

    /// The alert kinds that fired within the window, by application.
    async fn raised_alerts(
        &self,
        window: &EventWindow,
    ) -> Result<BTreeMap<String, BTreeSet<String>>, SummaryError> {
        let q = &self.q;
        let mut raised: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in self
            .client
            .query(
                &format!("SELECT DISTINCT app_id, kind FROM {q}.alert_event WHERE state = 'FIRING' AND event_at >= $1 AND event_at < $2"),
                &[&window.start, &window.end],
            )
            .await
            .doing("reading raised alerts")?
        {
            raised.entry(row.get(0)).or_default().insert(row.get(1));
        }
        Ok(raised)
    }
}

impl Summary {
    /// The report a person reads.
    pub fn render(&self, topic: &str) -> String {
        let t = &self.tally;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Kafka topic {topic}: {} records, {} valid heartbeats from {} applications",
            t.records,
            t.decoded,
            t.beats_per_app.len()
        );
        for (code, n) in &t.errors_by_code {
            let _ = writeln!(out, "  rejected ({code}): {n}");
        }
        if let (Some(lo), Some(hi)) = (t.min_sent_at_ms, t.max_sent_at_ms) {
            let _ = writeln!(out, "  event time spans {:.1} minutes", (hi - lo) as f64 / 60_000.0);
        }
        if !self.alerts_by_kind.is_empty() {
            let _ =
                writeln!(out, "Alert transitions in PostgreSQL (alert_event), within the load's event time:");
            for ((kind, state), n) in &self.alerts_by_kind {
                let _ = writeln!(out, "  {kind:<26} {state:<9} {n}");
            }
        }
        if !self.health.is_empty() {
            let _ = writeln!(out, "Applications now (application table):");
            for ((status, health), n) in &self.health {
                let _ = writeln!(out, "  {status:<9} {health:<9} {n}");
            }
        }
        if !self.faults.is_empty() {
            let detected = self.faults.iter().filter(|f| f.detected()).count();
            let _ = writeln!(out, "Injected faults ({detected} of {} found as expected):", self.faults.len());
            for f in &self.faults {
                let expected =
                    if f.expected.is_empty() { "no alert".to_owned() } else { f.expected.join(", ") };
                let found = if f.found.is_empty() {
                    "nothing".to_owned()
                } else {
                    f.found.iter().cloned().collect::<Vec<_>>().join(", ")
                };
                let mark = if f.detected() && (!f.expected.is_empty() || f.found.is_empty()) {
                    "ok "
                } else {
                    "-- "
                };
                let _ = writeln!(
                    out,
                    "  {mark}{:<16} {:<12} expected {expected}; found {found}",
                    f.kind, f.app_id
                );
            }
            if self.unexpected.is_empty() {
                let _ = writeln!(out, "No alert on the applications without an injected fault.");
            } else {
                for (app, kinds) in &self.unexpected {
                    let _ = writeln!(
                        out,
                        "  unexpected alerts on {app}: {}",
                        kinds.iter().cloned().collect::<Vec<_>>().join(", ")
                    );
                }
            }
        }
        out
    }
}
