//! How each kind of row is written, a slice of rows at a time, in the caller's transaction:
//! raw beats by binary COPY, alert transitions by insert, rollups and application snapshots
//! by upsert.

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Statement, Transaction};

use super::{Row, millis};
use crate::alert::Alert;
use crate::app_state::AppSnapshot;
use crate::heartbeat::Heartbeat;
use crate::metrics_1m::Rollup;
use crate::store::{QueryContext, StoreError};

/// A kind of row and its table.
pub(super) trait Table: Sized {
    /// The table the rows go to.
    const NAME: &'static str;
    /// What [`Table::write`] needs, made once per transaction.
    type Prepared;

    async fn prepare(tx: &Transaction<'_>, q: &str) -> Result<Self::Prepared, StoreError>;

    async fn write(
        tx: &Transaction<'_>,
        prepared: &Self::Prepared,
        rows: &[&Row<Self>],
    ) -> Result<(), StoreError>;
}

const HEARTBEAT_COLUMNS: &str = "app_id, instance_id, seq, sent_at, interval_ms, status, memory_used_bytes, \
    memory_limit_bytes, cpu_ratio, disk_used_ratio, db_pool_size, db_pool_in_use, db_pool_waiting, threads, open_fds, \
    request_queue_depth, sessions_active, requests_total, errors_total, slow_requests_total, cache_hits_total, \
    cache_misses_total, latency_p95_ms, latency_p99_ms, db_query_p95_ms, labels, kafka_partition, kafka_offset";

const HEARTBEAT_TYPES: [Type; 28] = [
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::INT4,
    Type::INT4,
    Type::INT4,
    Type::INT4,
    Type::INT4,
    Type::INT4,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::JSONB,
    Type::INT4,
    Type::INT8,
];

impl Table for Heartbeat {
    const NAME: &'static str = "heartbeat_event";
    /// The COPY statement.
    type Prepared = String;

    async fn prepare(_: &Transaction<'_>, q: &str) -> Result<String, StoreError> {
        Ok(format!("COPY {q}.heartbeat_event ({HEARTBEAT_COLUMNS}) FROM STDIN BINARY"))
    }

    async fn write(tx: &Transaction<'_>, copy: &String, rows: &[&Row<Heartbeat>]) -> Result<(), StoreError> {
        let sink = tx.copy_in(copy).await.doing("starting COPY into heartbeat_event")?;
        let writer = BinaryCopyInWriter::new(sink, &HEARTBEAT_TYPES);
        futures::pin_mut!(writer);
        for Row { value: b, source } in rows.iter().copied() {
            let labels = serde_json::to_value(&b.labels).expect("labels serialise");
            let sent_at = millis(b.sent_at);
            let (p, o) = (&source.partition, &source.offset);
            let row: [&(dyn ToSql + Sync); 28] = [
                &b.app_id,
                &b.instance_id,
                &b.seq,
                &sent_at,
                &b.interval_ms,
                &b.status.as_str(),
                &b.memory_used_bytes,
                &b.memory_limit_bytes,
                &b.cpu_ratio,
                &b.disk_used_ratio,
                &b.db_pool_size,
                &b.db_pool_in_use,
                &b.db_pool_waiting,
                &b.threads,
                &b.open_fds,
                &b.request_queue_depth,
                &b.sessions_active,
                &b.requests_total,
                &b.errors_total,
                &b.slow_requests_total,
                &b.cache_hits_total,
                &b.cache_misses_total,
                &b.latency_p95_ms,
                &b.latency_p99_ms,
                &b.db_query_p95_ms,
                &labels,
                p,
                o,
            ];
            writer.as_mut().write(&row).await.doing("writing a heartbeat row")?;
        }
        writer.finish().await.doing("finishing COPY into heartbeat_event")?;
        Ok(())
    }
}

impl Table for Alert {
    const NAME: &'static str = "alert_event";
    type Prepared = Statement;

    async fn prepare(tx: &Transaction<'_>, q: &str) -> Result<Statement, StoreError> {
        tx.prepare(&format!(
            "INSERT INTO {q}.alert_event (alert_id, app_id, instance_id, kind, severity, state, started_at, event_at,
         emitted_at, value, threshold, summary, evidence, recommendations, source_partition, source_offset,
         kafka_partition, kafka_offset) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18)"
        ))
        .await
        .doing("preparing the alert insert")
    }

    async fn write(tx: &Transaction<'_>, stmt: &Statement, rows: &[&Row<Alert>]) -> Result<(), StoreError> {
        for Row { value: a, source } in rows.iter().copied() {
            let evidence = serde_json::to_value(&a.evidence).expect("evidence serialises");
            let (p, o) = (&source.partition, &source.offset);
            tx.execute(
                stmt,
                &[
                    &a.alert_id,
                    &a.app_id,
                    &a.instance_id,
                    &a.kind.as_str(),
                    &a.severity.as_str(),
                    &a.state.as_str(),
                    &millis(a.started_at),
                    &millis(a.event_at),
                    &millis(a.emitted_at),
                    &a.value,
                    &a.threshold,
                    &a.summary,
                    &evidence,
                    &a.recommendations,
                    &a.source_partition,
                    &a.source_offset,
                    p,
                    o,
                ],
            )
            .await
            .doing("inserting an alert")?;
        }
        Ok(())
    }
}

impl Table for Rollup {
    const NAME: &'static str = "metric_rollup_1m";
    type Prepared = Statement;

    async fn prepare(tx: &Transaction<'_>, q: &str) -> Result<Statement, StoreError> {
        tx.prepare(&format!(
            "INSERT INTO {q}.metric_rollup_1m (app_id, minute, beats, instances, memory_used_bytes_mean,
         memory_used_bytes_max, memory_used_ratio_max, cpu_ratio_mean, cpu_ratio_max, disk_used_ratio_max,
         db_pool_in_use_mean, db_pool_in_use_max, db_pool_waiting_max, threads_mean, threads_max, open_fds_mean,
         open_fds_max, request_queue_depth_max, sessions_active_mean, sessions_active_max, latency_p95_ms_mean,
         latency_p95_ms_max, latency_p99_ms_max, db_query_p95_ms_max, requests_per_s, errors_per_s,
         slow_requests_per_s, error_ratio, cache_hit_ratio)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25,$26,$27,$28,$29)
         ON CONFLICT (app_id, minute) DO UPDATE SET beats = EXCLUDED.beats, instances = EXCLUDED.instances,
         memory_used_bytes_mean = EXCLUDED.memory_used_bytes_mean, memory_used_bytes_max = EXCLUDED.memory_used_bytes_max,
         memory_used_ratio_max = EXCLUDED.memory_used_ratio_max, cpu_ratio_mean = EXCLUDED.cpu_ratio_mean,
         cpu_ratio_max = EXCLUDED.cpu_ratio_max, disk_used_ratio_max = EXCLUDED.disk_used_ratio_max,
         db_pool_in_use_mean = EXCLUDED.db_pool_in_use_mean, db_pool_in_use_max = EXCLUDED.db_pool_in_use_max,
         db_pool_waiting_max = EXCLUDED.db_pool_waiting_max, threads_mean = EXCLUDED.threads_mean,
         threads_max = EXCLUDED.threads_max, open_fds_mean = EXCLUDED.open_fds_mean, open_fds_max = EXCLUDED.open_fds_max,
         request_queue_depth_max = EXCLUDED.request_queue_depth_max, sessions_active_mean = EXCLUDED.sessions_active_mean,
         sessions_active_max = EXCLUDED.sessions_active_max, latency_p95_ms_mean = EXCLUDED.latency_p95_ms_mean,
         latency_p95_ms_max = EXCLUDED.latency_p95_ms_max, latency_p99_ms_max = EXCLUDED.latency_p99_ms_max,
         db_query_p95_ms_max = EXCLUDED.db_query_p95_ms_max, requests_per_s = EXCLUDED.requests_per_s,
         errors_per_s = EXCLUDED.errors_per_s, slow_requests_per_s = EXCLUDED.slow_requests_per_s,
         error_ratio = EXCLUDED.error_ratio, cache_hit_ratio = EXCLUDED.cache_hit_ratio"
        ))
        .await
        .doing("preparing the rollup upsert")
    }

    async fn write(tx: &Transaction<'_>, stmt: &Statement, rows: &[&Row<Rollup>]) -> Result<(), StoreError> {
        for Row { value: r, .. } in rows.iter().copied() {
            let beats = r.beats as i32;
            let instances = r.instances as i32;
            tx.execute(
                stmt,
                &[
                    &r.app_id,
                    &millis(r.minute),
                    &beats,
                    &instances,
                    &r.memory_used_bytes_mean,
                    &r.memory_used_bytes_max,
                    &r.memory_used_ratio_max,
                    &r.cpu_ratio_mean,
                    &r.cpu_ratio_max,
                    &r.disk_used_ratio_max,
                    &r.db_pool_in_use_mean,
                    &r.db_pool_in_use_max,
                    &r.db_pool_waiting_max,
                    &r.threads_mean,
                    &r.threads_max,
                    &r.open_fds_mean,
                    &r.open_fds_max,
                    &r.request_queue_depth_max,
                    &r.sessions_active_mean,
                    &r.sessions_active_max,
                    &r.latency_p95_ms_mean,
                    &r.latency_p95_ms_max,
                    &r.latency_p99_ms_max,
                    &r.db_query_p95_ms_max,
                    &r.requests_per_s,
                    &r.errors_per_s,
                    &r.slow_requests_per_s,
                    &r.error_ratio,
                    &r.cache_hit_ratio,
                ],
            )
            .await
            .doing("upserting a rollup")?;
        }
        Ok(())
    }
}

impl Table for AppSnapshot {
    const NAME: &'static str = "application";
    type Prepared = Statement;

    async fn prepare(tx: &Transaction<'_>, q: &str) -> Result<Statement, StoreError> {
        tx.prepare(&format!(
            "INSERT INTO {q}.application (app_id, status, health, instances_up, instances_total, last_seen,
         last_figures, open_alerts, labels, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)
         ON CONFLICT (app_id) DO UPDATE SET status = EXCLUDED.status, health = EXCLUDED.health,
         instances_up = EXCLUDED.instances_up, instances_total = EXCLUDED.instances_total,
         last_seen = EXCLUDED.last_seen, last_figures = EXCLUDED.last_figures,
         open_alerts = EXCLUDED.open_alerts, labels = EXCLUDED.labels, updated_at = EXCLUDED.updated_at"
        ))
        .await
        .doing("preparing the application upsert")
    }

    async fn write(
        tx: &Transaction<'_>,
        stmt: &Statement,
        rows: &[&Row<AppSnapshot>],
    ) -> Result<(), StoreError> {
        for Row { value: s, .. } in rows.iter().copied() {
            let figures = serde_json::to_value(&s.last_figures).expect("figures serialise");
            let labels = serde_json::to_value(&s.labels).expect("labels serialise");
            let (up, total, open) = (s.instances_up as i32, s.instances_total as i32, s.open_alerts as i32);
            tx.execute(
                stmt,
                &[
                    &s.app_id,
                    &s.status,
                    &s.health,
                    &up,
                    &total,
                    &s.last_seen_ms.map(millis),
                    &figures,
                    &open,
                    &labels,
                    &millis(s.updated_at_ms),
                ],
            )
            .await
            .doing("upserting an application")?;
        }
        Ok(())
    }
}
