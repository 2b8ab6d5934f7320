//! The sink stage: materialises `heartbeats`, `alerts`, `metrics-1m` and `app-state` in
//! PostgreSQL, exactly once.
//!
//! Each batch of rows and the offsets it consumed are written in one database transaction;
//! `sink_offset` is updated only if it still holds the offset the batch started from, so a
//! batch that another sink instance already wrote (after a rebalance) is refused rather than
//! written twice. On assignment the sink seeks to the offsets in `sink_offset`. When the
//! database fails, the sink pauses its partitions, retries with exponential backoff and
//! jitter, and keeps the batch it holds: nothing is lost and memory stays bounded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::Pool;
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use thiserror::Error;
use tokio::runtime::Handle;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use crate::alert::Alert;
use crate::codec;
use crate::config::Config;
use crate::engine::AppSnapshot;
use crate::engine::rollup::Rollup;
use crate::heartbeat::Heartbeat;
use crate::kafka;
use crate::metrics::METRICS;
use crate::shutdown::Shutdown;
use crate::store::{self, QueryContext, StoreError, partitions, quoted_schema};
use crate::topology::names;

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Another sink instance moved the offsets of a partition this batch covers.
    #[error("sink_offset of {topic}[{partition}] is no longer {expected}: another instance wrote it")]
    Conflict { topic: String, partition: i32, expected: i64 },
}

/// Partitions assigned or revoked during a poll, for the loop to act on.
#[derive(Default)]
struct Assignments {
    assigned: Mutex<Vec<(String, i32)>>,
    revoked: Mutex<Vec<(String, i32)>>,
}

impl ClientContext for Assignments {
    fn error(&self, error: KafkaError, reason: &str) {
        kafka::log_client_error(&error, reason);
    }
}

impl ConsumerContext for Assignments {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (list, what) = match rebalance {
            Rebalance::Assign(tpl) => (&self.assigned, tpl),
            Rebalance::Revoke(tpl) => (&self.revoked, tpl),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "sink: rebalance error");
                return;
            }
        };
        let parts: Vec<(String, i32)> =
            what.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        tracing::info!(partitions = ?parts, assigned = matches!(rebalance, Rebalance::Assign(_)), "sink: rebalance");
        list.lock().expect("not poisoned").extend(parts);
    }
}

/// (topic, partition) → (offset a batch starts from, next offset after it).
type OffsetRanges = BTreeMap<(String, i32), (i64, i64)>;

/// The rows of one transaction and the offsets they cover.
#[derive(Default)]
struct Batch {
    beats: Vec<(Heartbeat, i32, i64)>,
    alerts: Vec<(Alert, i32, i64)>,
    rollups: BTreeMap<(String, i64), Rollup>,
    apps: BTreeMap<String, AppSnapshot>,
    ranges: OffsetRanges,
    first_at: Option<Instant>,
}

impl Batch {
    fn rows(&self) -> usize {
        self.beats.len() + self.alerts.len() + self.rollups.len() + self.apps.len()
    }

    fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// Where each topic's records go.
struct Topics {
    heartbeats: String,
    alerts: String,
    app_state: String,
    metrics: String,
}

fn millis(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t).unwrap_or_default()
}

/// Runs the sink until `shutdown`; blocking, using `rt` for the database.
pub fn run(config: &Config, shutdown: &Shutdown, ready: &AtomicBool, rt: &Handle) -> Result<(), SinkError> {
    let k = &config.kafka;
    let group = k.name("sink");
    let topics = Topics {
        heartbeats: k.name(names::HEARTBEATS),
        alerts: k.name(names::ALERTS),
        app_state: k.name(names::APP_STATE),
        metrics: k.name(names::METRICS_1M),
    };
    let schema = config.postgres.schema.clone();
    let consumer: BaseConsumer<Assignments> = k
        .client_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "100")
        .create_with_context(Assignments::default())?;
    consumer.subscribe(&[&topics.heartbeats, &topics.alerts, &topics.app_state, &topics.metrics])?;
    let pool = store::pool(&config.postgres)?;
    wait_for_database(&pool, config, shutdown, rt)?;
    // Next offset expected per assigned partition, as sink_offset says.
    let mut expected: HashMap<(String, i32), i64> = HashMap::new();
    let mut known_partitions: BTreeSet<String> = BTreeSet::new();
    let mut batch = Batch::default();
    let batch_ms = Duration::from_millis(config.sink.batch_ms);
    tracing::info!(group = %group, schema = %schema, "sink started");
    let mut lag_checked = Instant::now();

    loop {
        let stopping = shutdown.is_triggered();
        if !stopping {
            if let Some(polled) = consumer.poll(Duration::from_millis(100)) {
                match polled {
                    Ok(msg) => {
                        ready.store(true, Ordering::Relaxed);
                        accept(&msg, &topics, &expected, &mut batch, config);
                    }
                    Err(e) => tracing::warn!(error = %e, "sink: consumer error"),
                }
            }
            let assigned: Vec<(String, i32)> =
                consumer.context().assigned.lock().expect("not poisoned").drain(..).collect();
            let revoked: Vec<(String, i32)> =
                consumer.context().revoked.lock().expect("not poisoned").drain(..).collect();
            if !revoked.is_empty() {
                // Whatever we hold for revoked partitions is the new owner's to write.
                for tp in &revoked {
                    expected.remove(tp);
                }
                if batch.ranges.keys().any(|tp| revoked.contains(tp)) {
                    reseek_all(&consumer, &pool, config, &group, &mut expected, &mut batch, shutdown, rt)?;
                }
            }
            if !assigned.is_empty() {
                ready.store(true, Ordering::Relaxed);
                seek_to_stored(&consumer, &pool, config, &group, &assigned, &mut expected, shutdown, rt)?;
            }
        }
        if lag_checked.elapsed() >= Duration::from_secs(10) {
            kafka::record_lag(&consumer, "sink");
            lag_checked = Instant::now();
        }
        let due =
            batch.first_at.is_some_and(|t| t.elapsed() >= batch_ms) || batch.rows() >= config.sink.batch_rows;
        if !batch.is_empty() && (due || stopping) {
            let taken = std::mem::take(&mut batch);
            match write_with_retry(
                &consumer,
                &pool,
                config,
                &group,
                taken,
                &expected,
                &mut known_partitions,
                shutdown,
                rt,
            ) {
                Ok(written) => {
                    let mut tpl = TopicPartitionList::new();
                    for ((topic, p), (_, next)) in &written {
                        expected.insert((topic.clone(), *p), *next);
                        tpl.add_partition_offset(topic, *p, Offset::Offset(*next))?;
                    }
                    // Kafka's committed offsets are only a hint for tools: the truth is sink_offset.
                    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                        tracing::debug!(error = %e, "sink: offset hint not committed");
                    }
                }
                Err(SinkError::Conflict { topic, partition, expected: e }) => {
                    tracing::warn!(%topic, partition, expected = e, "sink: batch refused, another instance wrote it; re-seeking");
                    reseek_all(&consumer, &pool, config, &group, &mut expected, &mut batch, shutdown, rt)?;
                }
                Err(e) => return Err(e),
            }
        }
        if stopping && batch.is_empty() {
            break;
        }
    }
    tracing::info!("sink stopped");
    Ok(())
}

/// Adds one consumed record to the batch (or skips it, if `sink_offset` says it is written).
fn accept(
    msg: &BorrowedMessage<'_>,
    topics: &Topics,
    expected: &HashMap<(String, i32), i64>,
    batch: &mut Batch,
    config: &Config,
) {
    let topic = msg.topic();
    let tp = (topic.to_owned(), msg.partition());
    let Some(&next) = expected.get(&tp) else {
        // Not seeked yet (an assignment in progress): it will be read again after the seek.
        return;
    };
    let start = batch.ranges.get(&tp).map_or(next, |r| r.1);
    if msg.offset() < start {
        return; // already written
    }
    METRICS.records_in.with_label_values(&["sink", topic]).inc();
    batch.first_at.get_or_insert_with(Instant::now);
    let range = batch.ranges.entry(tp).or_insert((next, next));
    range.1 = msg.offset() + 1;
    let payload = msg.payload().unwrap_or_default();
    let (p, o) = (msg.partition(), msg.offset());
    if topic == topics.heartbeats {
        let reference = msg.timestamp().to_millis().unwrap_or_else(|| Utc::now().timestamp_millis());
        match codec::decode(payload, reference, config.input.max_sent_at_drift_ms) {
            Ok(beat) => batch.beats.push((beat, p, o)),
            // Invalid input is the processor's to dead-letter; the sink stores valid beats only.
            Err(_) => METRICS.sink_skipped.with_label_values(&[topic]).inc(),
        }
    } else if topic == topics.alerts {
        match Alert::decode(payload) {
            Ok(a) => batch.alerts.push((a, p, o)),
            Err(e) => {
                tracing::warn!(partition = p, offset = o, error = %e, "sink: undecodable alert skipped");
                METRICS.sink_skipped.with_label_values(&[topic]).inc();
            }
        }
    } else if topic == topics.metrics {
        match serde_json::from_slice::<Rollup>(payload) {
            Ok(r) => {
                batch.rollups.insert((r.app_id.clone(), r.minute), r);
            }
            Err(e) => {
                tracing::warn!(partition = p, offset = o, error = %e, "sink: undecodable rollup skipped");
                METRICS.sink_skipped.with_label_values(&[topic]).inc();
            }
        }
    } else if topic == topics.app_state {
        match serde_json::from_slice::<AppSnapshot>(payload) {
            Ok(s) => {
                batch.apps.insert(s.app_id.clone(), s);
            }
            Err(e) => {
                tracing::warn!(partition = p, offset = o, error = %e, "sink: undecodable snapshot skipped");
                METRICS.sink_skipped.with_label_values(&[topic]).inc();
            }
        }
    }
}

/// Reads the stored offsets of newly assigned partitions and seeks there. A database outage
/// is waited out with backoff.
#[allow(clippy::too_many_arguments)]
fn seek_to_stored(
    consumer: &BaseConsumer<Assignments>,
    pool: &Pool,
    config: &Config,
    group: &str,
    assigned: &[(String, i32)],
    expected: &mut HashMap<(String, i32), i64>,
    shutdown: &Shutdown,
    rt: &Handle,
) -> Result<(), SinkError> {
    let q = quoted_schema(&config.postgres.schema)?;
    let sql = format!(
        "SELECT next_offset FROM {q}.sink_offset WHERE consumer_group = $1 AND topic = $2 AND partition = $3"
    );
    for (topic, p) in assigned {
        let stored: Option<i64> = with_retry(config, shutdown, "reading sink_offset", || {
            rt.block_on(async {
                let client = store::checkout(pool).await?;
                let row = client.query_opt(&sql, &[&group, topic, p]).await.doing("reading sink_offset")?;
                Ok(row.map(|r| r.get(0)))
            })
        })?;
        let offset = match stored {
            Some(o) => o,
            // A partition created a moment ago may have no leader yet; a broker may be away.
            None => {
                let deadline = Instant::now() + kafka::TRANSIENT_RETRY_TIMEOUT;
                kafka::retrying(deadline, || consumer.fetch_watermarks(topic, *p, Duration::from_secs(30)))?.0
            }
        };
        expected.insert((topic.clone(), *p), offset);
        // The assignment may not be active yet; retry the seek briefly.
        let mut tries = 0;
        while let Err(e) = consumer.seek(topic, *p, Offset::Offset(offset), Duration::from_secs(10)) {
            tries += 1;
            if tries > 50 {
                return Err(e.into());
            }
            consumer.poll(Duration::from_millis(20)).map(|m| m.map(|_| ()));
        }
        tracing::info!(%topic, partition = p, offset, "sink: resuming from sink_offset");
    }
    Ok(())
}

/// Drops the batch and seeks every assigned partition back to what `sink_offset` says.
#[allow(clippy::too_many_arguments)]
fn reseek_all(
    consumer: &BaseConsumer<Assignments>,
    pool: &Pool,
    config: &Config,
    group: &str,
    expected: &mut HashMap<(String, i32), i64>,
    batch: &mut Batch,
    shutdown: &Shutdown,
    rt: &Handle,
) -> Result<(), SinkError> {
    *batch = Batch::default();
    let assignment: Vec<(String, i32)> =
        consumer.assignment()?.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
    expected.clear();
    seek_to_stored(consumer, pool, config, group, &assignment, expected, shutdown, rt)
}

/// Retries `attempt` on transient database errors with exponential backoff and jitter.
fn with_retry<T>(
    config: &Config,
    shutdown: &Shutdown,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, SinkError>,
) -> Result<T, SinkError> {
    let mut delay = Duration::from_millis(config.sink.retry_initial_ms);
    loop {
        match attempt() {
            Err(SinkError::Store(e)) if e.is_transient() && !shutdown.is_triggered() => {
                METRICS.sink_retries.with_label_values(&["database"]).inc();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "sink: {what} failed, retrying");
                std::thread::sleep(delay);
                delay = next_delay(delay, config);
            }
            other => return other,
        }
    }
}

/// Waits until the database answers.
fn wait_for_database(
    pool: &Pool,
    config: &Config,
    shutdown: &Shutdown,
    rt: &Handle,
) -> Result<(), SinkError> {
    with_retry(config, shutdown, "connecting to PostgreSQL", || {
        rt.block_on(async {
            let client = store::checkout(pool).await?;
            client.simple_query("SELECT 1").await.doing("checking the connection")?;
            Ok(())
        })
    })
}

fn next_delay(delay: Duration, config: &Config) -> Duration {
    let doubled = (delay * 2).min(Duration::from_millis(config.sink.retry_max_ms));
    let jitter = rand::rng().random_range(0.8..1.2);
    doubled.mul_f64(jitter)
}

/// Writes the batch, retrying transient database errors with backoff while the partitions
/// are paused. Returns the ranges written.
#[allow(clippy::too_many_arguments)]
fn write_with_retry(
    consumer: &BaseConsumer<Assignments>,
    pool: &Pool,
    config: &Config,
    group: &str,
    batch: Batch,
    expected: &HashMap<(String, i32), i64>,
    known_partitions: &mut BTreeSet<String>,
    shutdown: &Shutdown,
    rt: &Handle,
) -> Result<OffsetRanges, SinkError> {
    let mut delay = Duration::from_millis(config.sink.retry_initial_ms);
    let mut paused: Option<TopicPartitionList> = None;
    let started = Instant::now();
    let result = loop {
        let written = rt.block_on(async {
            let mut client = store::checkout(pool).await?;
            write_batch(&mut client, &config.postgres.schema, group, &batch, known_partitions).await
        });
        record_pool_status(pool);
        match written {
            Ok(()) => break Ok(()),
            Err(SinkError::Store(e)) if e.is_transient() => {
                // A new connection may come after a restart that dropped our partitions' DDL cache.
                known_partitions.clear();
                METRICS.sink_retries.with_label_values(&["database"]).inc();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, rows = batch.rows(), "sink: database write failed, retrying");
                METRICS.sink_held_rows.set(batch.rows() as i64);
                if paused.is_none() {
                    let assignment = consumer.assignment()?;
                    consumer.pause(&assignment)?;
                    paused = Some(assignment);
                }
                // Keep serving the group while waiting, so the sink is not thrown out of it.
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
                        tracing::debug!(topic = msg.topic(), "sink: record while paused, will be re-read");
                    }
                }
                delay = next_delay(delay, config);
                if shutdown.is_triggered() && started.elapsed() > Duration::from_secs(20) {
                    break Err(SinkError::Store(e));
                }
            }
            Err(e) => break Err(e),
        }
    };
    METRICS.sink_held_rows.set(0);
    if let Some(tpl) = paused {
        // Records polled while paused were dropped: every partition goes back to where the
        // batch ends, or where the last written batch ended.
        consumer.resume(&tpl)?;
        for e in tpl.elements() {
            let tp = (e.topic().to_owned(), e.partition());
            let next = batch.ranges.get(&tp).map(|r| r.1).or_else(|| expected.get(&tp).copied());
            if let Some(next) = next
                && let Err(err) =
                    consumer.seek(e.topic(), e.partition(), Offset::Offset(next), Duration::from_secs(10))
            {
                tracing::warn!(topic = e.topic(), partition = e.partition(), error = %err, "sink: seek after pause failed");
            }
        }
    }
    result?;
    METRICS.sink_batch_rows.observe(batch.rows() as f64);
    METRICS.batch_seconds.with_label_values(&["sink"]).observe(started.elapsed().as_secs_f64());
    Ok(batch.ranges)
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

/// Publishes the pool's size, available and waiting connections.
fn record_pool_status(pool: &Pool) {
    let status = pool.status();
    METRICS.db_pool.with_label_values(&["max_size"]).set(status.max_size as i64);
    METRICS.db_pool.with_label_values(&["size"]).set(status.size as i64);
    METRICS.db_pool.with_label_values(&["available"]).set(status.available as i64);
    METRICS.db_pool.with_label_values(&["waiting"]).set(status.waiting as i64);
}

/// One transaction: partitions, rows, then the offsets, checked against what they were.
async fn write_batch(
    client: &mut Client,
    schema: &str,
    group: &str,
    batch: &Batch,
    known_partitions: &mut BTreeSet<String>,
) -> Result<(), SinkError> {
    let q = quoted_schema(schema)?;
    // Only the tables and their periods matter here, not the retention.
    let plans = partitions::plans(&crate::config::RetentionConfig::default());
    let mut days: BTreeSet<(usize, NaiveDate)> = BTreeSet::new();
    for (b, _, _) in &batch.beats {
        days.insert((0, millis(b.sent_at).date_naive()));
    }
    for r in batch.rollups.values() {
        days.insert((1, millis(r.minute).date_naive()));
    }
    for (a, _, _) in &batch.alerts {
        days.insert((2, millis(a.event_at).date_naive()));
    }
    for (plan, day) in days {
        let key = format!("{}:{}", plans[plan].table, partitions::partition_for(&plans[plan], day).0);
        if !known_partitions.contains(&key) {
            partitions::ensure(client, schema, &plans[plan], day).await?;
            known_partitions.insert(key);
        }
    }

    let tx = client.transaction().await.doing("beginning a sink transaction")?;
    if !batch.beats.is_empty() {
        let sink = tx
            .copy_in(&format!("COPY {q}.heartbeat_event ({HEARTBEAT_COLUMNS}) FROM STDIN BINARY"))
            .await
            .doing("starting COPY into heartbeat_event")?;
        let writer = BinaryCopyInWriter::new(sink, &HEARTBEAT_TYPES);
        futures::pin_mut!(writer);
        for (b, p, o) in &batch.beats {
            let labels = serde_json::to_value(&b.labels).expect("labels serialise");
            let sent_at = millis(b.sent_at);
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
        METRICS.records_out.with_label_values(&["sink", "heartbeat_event"]).inc_by(batch.beats.len() as u64);
    }
    if !batch.alerts.is_empty() {
        let stmt = tx
            .prepare(&format!(
                "INSERT INTO {q}.alert_event (alert_id, app_id, instance_id, kind, severity, state, started_at, event_at,
                 emitted_at, value, threshold, summary, evidence, recommendations, source_partition, source_offset,
                 kafka_partition, kafka_offset) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18)"
            ))
            .await
            .doing("preparing the alert insert")?;
        for (a, p, o) in &batch.alerts {
            let evidence = serde_json::to_value(&a.evidence).expect("evidence serialises");
            tx.execute(
                &stmt,
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
        METRICS.records_out.with_label_values(&["sink", "alert_event"]).inc_by(batch.alerts.len() as u64);
    }
    if !batch.rollups.is_empty() {
        let stmt = tx
            .prepare(&format!(
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
            .doing("preparing the rollup upsert")?;
        for r in batch.rollups.values() {
            let beats = r.beats as i32;
            let instances = r.instances as i32;
            tx.execute(
                &stmt,
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
        METRICS
            .records_out
            .with_label_values(&["sink", "metric_rollup_1m"])
            .inc_by(batch.rollups.len() as u64);
    }
    if !batch.apps.is_empty() {
        let stmt = tx
            .prepare(&format!(
                "INSERT INTO {q}.application (app_id, status, health, instances_up, instances_total, last_seen,
                 last_figures, open_alerts, labels, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)
                 ON CONFLICT (app_id) DO UPDATE SET status = EXCLUDED.status, health = EXCLUDED.health,
                 instances_up = EXCLUDED.instances_up, instances_total = EXCLUDED.instances_total,
                 last_seen = EXCLUDED.last_seen, last_figures = EXCLUDED.last_figures,
                 open_alerts = EXCLUDED.open_alerts, labels = EXCLUDED.labels, updated_at = EXCLUDED.updated_at"
            ))
            .await
            .doing("preparing the application upsert")?;
        for s in batch.apps.values() {
            let figures = serde_json::to_value(&s.last_figures).expect("figures serialise");
            let labels = serde_json::to_value(&s.labels).expect("labels serialise");
            let (up, total, open) = (s.instances_up as i32, s.instances_total as i32, s.open_alerts as i32);
            tx.execute(
                &stmt,
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
        METRICS.records_out.with_label_values(&["sink", "application"]).inc_by(batch.apps.len() as u64);
    }
    let offsets = tx
        .prepare(&format!(
            "INSERT INTO {q}.sink_offset AS s (consumer_group, topic, partition, next_offset, updated_at)
             VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (consumer_group, topic, partition)
             DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now() WHERE s.next_offset = $5
             RETURNING 1"
        ))
        .await
        .doing("preparing the offset update")?;
    for ((topic, p), (from, next)) in &batch.ranges {
        let updated =
            tx.query_opt(&offsets, &[&group, topic, p, next, from]).await.doing("updating sink_offset")?;
        if updated.is_none() {
            tx.rollback().await.doing("rolling back a refused batch")?;
            return Err(SinkError::Conflict { topic: topic.clone(), partition: *p, expected: *from });
        }
    }
    tx.commit().await.doing("committing a sink transaction")?;
    Ok(())
}
