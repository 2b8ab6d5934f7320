//! How each kind of row is written, a slice of rows at a time, in the caller's transaction:
//! raw beats by binary COPY, alert transitions by insert, rollups and application snapshots
//! by a binary COPY into a staging table and one upsert from it (set-based: a round trip per
//! slice, not per row); acknowledgements by insert.

use std::pin::Pin;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use tokio_postgres::{Statement, Transaction};

use super::{Row, millis};
use crate::ack::AlertAck;
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

/// The columns a beat is copied into, with their wire types, in the order
/// [`Table::write`] gives the values.
const HEARTBEAT_COLUMNS: [(&str, Type); 28] = [
    ("app_id", Type::TEXT),
    ("instance_id", Type::TEXT),
    ("seq", Type::INT8),
    ("sent_at", Type::TIMESTAMPTZ),
    ("interval_ms", Type::INT4),
    ("status", Type::TEXT),
    ("memory_used_bytes", Type::INT8),
    ("memory_limit_bytes", Type::INT8),
    ("cpu_ratio", Type::FLOAT4),
    ("disk_used_ratio", Type::FLOAT4),
    ("db_pool_size", Type::INT4),
    ("db_pool_in_use", Type::INT4),
    ("db_pool_waiting", Type::INT4),
    ("threads", Type::INT4),
    ("open_fds", Type::INT4),
    ("request_queue_depth", Type::INT4),
    ("sessions_active", Type::INT8),
    ("requests_total", Type::INT8),
    ("errors_total", Type::INT8),
    ("slow_requests_total", Type::INT8),
    ("cache_hits_total", Type::INT8),
    ("cache_misses_total", Type::INT8),
    ("latency_p95_ms", Type::FLOAT4),
    ("latency_p99_ms", Type::FLOAT4),
    ("db_query_p95_ms", Type::FLOAT4),
    ("labels", Type::JSONB),
    ("kafka_partition", Type::INT4),
    ("kafka_offset", Type::INT8),
];

impl Table for Heartbeat {
    const NAME: &'static str = "heartbeat_event";
    /// The COPY statement.
    type Prepared = String;

    async fn prepare(_: &Transaction<'_>, q: &str) -> Result<String, StoreError> {
        let columns: Vec<&str> = HEARTBEAT_COLUMNS.iter().map(|(name, _)| *name).collect();
        Ok(format!("COPY {q}.heartbeat_event ({}) FROM STDIN BINARY", columns.join(", ")))
    }

    async fn write(tx: &Transaction<'_>, copy: &String, rows: &[&Row<Heartbeat>]) -> Result<(), StoreError> {
        let sink = tx.copy_in(copy).await.doing("starting COPY into heartbeat_event")?;
        let writer = BinaryCopyInWriter::new(sink, &HEARTBEAT_COLUMNS.map(|(_, ty)| ty));
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

/// A table upserted set-wise: the rows are copied into a temporary table of the session with
/// the same columns, then inserted from it in one statement, updating the rows whose key is
/// there already. Each slice empties the staging table first (a slice may be retried under
/// a savepoint while a refused row is isolated).
pub(super) struct Upsert {
    /// Creates the staging table if the session has none, and empties it.
    stage: String,
    copy: String,
    upsert: String,
    types: Vec<Type>,
}

impl Upsert {
    async fn prepare(
        tx: &Transaction<'_>,
        q: &str,
        table: &str,
        columns: &[(&str, Type)],
        key: &[&str],
    ) -> Result<Upsert, StoreError> {
        let staging = format!("pulsewatch_stage_{table}");
        tx.batch_execute(&format!("CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {q}.{table})"))
            .await
            .doing("creating a staging table")?;
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let list = names.join(", ");
        let updates: Vec<String> =
            names.iter().filter(|c| !key.contains(c)).map(|c| format!("{c} = EXCLUDED.{c}")).collect();
        Ok(Upsert {
            stage: format!("TRUNCATE {staging}"),
            copy: format!("COPY {staging} ({list}) FROM STDIN BINARY"),
            upsert: format!(
                "INSERT INTO {q}.{table} ({list}) SELECT {list} FROM {staging} ON CONFLICT ({}) DO UPDATE SET {}",
                key.join(", "),
                updates.join(", ")
            ),
            types: columns.iter().map(|(_, ty)| ty.clone()).collect(),
        })
    }

    /// Empties the staging table and opens the COPY into it.
    async fn begin(&self, tx: &Transaction<'_>) -> Result<Pin<Box<BinaryCopyInWriter>>, StoreError> {
        tx.batch_execute(&self.stage).await.doing("emptying a staging table")?;
        let sink = tx.copy_in(&self.copy).await.doing("starting COPY into a staging table")?;
        Ok(Box::pin(BinaryCopyInWriter::new(sink, &self.types)))
    }

    /// Ends the COPY and upserts what it staged.
    async fn end(
        &self,
        tx: &Transaction<'_>,
        mut writer: Pin<Box<BinaryCopyInWriter>>,
    ) -> Result<(), StoreError> {
        writer.as_mut().finish().await.doing("finishing COPY into a staging table")?;
        tx.execute(&self.upsert, &[]).await.doing("upserting from a staging table")?;
        Ok(())
    }
}

/// The columns of a rollup, with their wire types, in the order [`Table::write`] gives them.
const ROLLUP_COLUMNS: [(&str, Type); 29] = [
    ("app_id", Type::TEXT),
    ("minute", Type::TIMESTAMPTZ),
    ("beats", Type::INT4),
    ("instances", Type::INT4),
    ("memory_used_bytes_mean", Type::FLOAT8),
    ("memory_used_bytes_max", Type::INT8),
    ("memory_used_ratio_max", Type::FLOAT8),
    ("cpu_ratio_mean", Type::FLOAT8),
    ("cpu_ratio_max", Type::FLOAT8),
    ("disk_used_ratio_max", Type::FLOAT8),
    ("db_pool_in_use_mean", Type::FLOAT8),
    ("db_pool_in_use_max", Type::INT4),
    ("db_pool_waiting_max", Type::INT4),
    ("threads_mean", Type::FLOAT8),
    ("threads_max", Type::INT4),
    ("open_fds_mean", Type::FLOAT8),
    ("open_fds_max", Type::INT4),
    ("request_queue_depth_max", Type::INT4),
    ("sessions_active_mean", Type::FLOAT8),
    ("sessions_active_max", Type::INT8),
    ("latency_p95_ms_mean", Type::FLOAT8),
    ("latency_p95_ms_max", Type::FLOAT8),
    ("latency_p99_ms_max", Type::FLOAT8),
    ("db_query_p95_ms_max", Type::FLOAT8),
    ("requests_per_s", Type::FLOAT8),
    ("errors_per_s", Type::FLOAT8),
    ("slow_requests_per_s", Type::FLOAT8),
    ("error_ratio", Type::FLOAT8),
    ("cache_hit_ratio", Type::FLOAT8),
];

impl Table for Rollup {
    const NAME: &'static str = "metric_rollup_1m";
    type Prepared = Upsert;

    async fn prepare(tx: &Transaction<'_>, q: &str) -> Result<Upsert, StoreError> {
        Upsert::prepare(tx, q, Self::NAME, &ROLLUP_COLUMNS, &["app_id", "minute"]).await
    }

    async fn write(tx: &Transaction<'_>, upsert: &Upsert, rows: &[&Row<Rollup>]) -> Result<(), StoreError> {
        let mut writer = upsert.begin(tx).await?;
        for Row { value: r, .. } in rows.iter().copied() {
            let (minute, beats, instances) = (millis(r.minute), r.beats as i32, r.instances as i32);
            let row: [&(dyn ToSql + Sync); 29] = [
                &r.app_id,
                &minute,
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
            ];
            writer.as_mut().write(&row).await.doing("staging a rollup")?;
        }
        upsert.end(tx, writer).await
    }
}

/// The columns of an application's snapshot, with their wire types, in the order
/// [`Table::write`] gives them.
const APPLICATION_COLUMNS: [(&str, Type); 10] = [
    ("app_id", Type::TEXT),
    ("status", Type::TEXT),
    ("health", Type::TEXT),
    ("instances_up", Type::INT4),
    ("instances_total", Type::INT4),
    ("last_seen", Type::TIMESTAMPTZ),
    ("last_figures", Type::JSONB),
    ("open_alerts", Type::INT4),
    ("labels", Type::JSONB),
    ("updated_at", Type::TIMESTAMPTZ),
];

impl Table for AppSnapshot {
    const NAME: &'static str = "application";
    type Prepared = Upsert;

    async fn prepare(tx: &Transaction<'_>, q: &str) -> Result<Upsert, StoreError> {
        Upsert::prepare(tx, q, Self::NAME, &APPLICATION_COLUMNS, &["app_id"]).await
    }

    async fn write(
        tx: &Transaction<'_>,
        upsert: &Upsert,
        rows: &[&Row<AppSnapshot>],
    ) -> Result<(), StoreError> {
        let mut writer = upsert.begin(tx).await?;
        for Row { value: s, .. } in rows.iter().copied() {
            let figures = serde_json::to_value(&s.last_figures).expect("figures serialise");
            let labels = serde_json::to_value(&s.labels).expect("labels serialise");
            let (up, total, open) = (s.instances_up as i32, s.instances_total as i32, s.open_alerts as i32);
            let (last_seen, updated_at) = (s.last_seen_ms.map(millis), millis(s.updated_at_ms));
            let row: [&(dyn ToSql + Sync); 10] = [
                &s.app_id,
                &s.status,
                &s.health,
                &up,
                &total,
                &last_seen,
                &figures,
                &open,
                &labels,
                &updated_at,
            ];
            writer.as_mut().write(&row).await.doing("staging an application")?;
        }
        upsert.end(tx, writer).await
    }
}

impl Table for AlertAck {
    const NAME: &'static str = "alert_ack";
    type Prepared = Statement;

    async fn prepare(tx: &Transaction<'_>, q: &str) -> Result<Statement, StoreError> {
        tx.prepare(&format!(
            "INSERT INTO {q}.alert_ack (alert_id, app_id, alert_started_at, action, acked_by, note, at,
             kafka_partition, kafka_offset) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"
        ))
        .await
        .doing("preparing the acknowledgement insert")
    }

    async fn write(
        tx: &Transaction<'_>,
        stmt: &Statement,
        rows: &[&Row<AlertAck>],
    ) -> Result<(), StoreError> {
        for Row { value: a, source } in rows.iter().copied() {
            let values: [&(dyn ToSql + Sync); 9] = [
                &a.alert_id,
                &a.app_id,
                &millis(a.alert_started_at),
                &a.action.as_str(),
                &a.by,
                &a.note,
                &millis(a.at),
                &source.partition,
                &source.offset,
            ];
            tx.execute(stmt, &values).await.doing("inserting an acknowledgement")?;
        }
        Ok(())
    }
}
