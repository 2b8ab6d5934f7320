//! The sink stage: materialises `heartbeats`, `alerts`, `metrics-1m` and `app-state` in
//! PostgreSQL, exactly once.
//!
//! Each batch of rows and the offsets it consumed are written in one database transaction;
//! `sink_offset` is updated only if it still holds the offset the batch started from, so a
//! batch that another sink instance already wrote (after a rebalance) is refused rather than
//! written twice. On assignment the sink seeks to the offsets in `sink_offset`. When the
//! database fails, the sink pauses its partitions, retries with exponential backoff and
//! jitter, and keeps the batch it holds: nothing is lost and memory stays bounded.
//!
//! One record must never stop the sink. A row whose content PostgreSQL refuses (a NUL in a
//! string, say) is found by bisection (`isolate`) and set aside, and a raw beat or rollup of
//! a day outside its table's retention window is set aside before it is written (so it
//! creates no partition): both go to `heartbeats-dlq` (codes `store_rejected`,
//! `outside_retention`), and the offsets move past them with the rest of the batch (`write`).
//! A beat whose writer schema the Schema Registry cannot give right now is read again after
//! a pause (its partition sought back to it), never skipped.

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

use crate::alert::Alert;
use crate::app_state::AppSnapshot;
use crate::config::{Config, RetentionConfig};
use crate::dead_letter::{DeadLetter, DeadLetterError, Publisher, Record};
use crate::heartbeat::Heartbeat;
use crate::kafka;
use crate::metrics::METRICS;
use crate::metrics_1m::Rollup;
use crate::registry::{Backoff, Registry, Unavailable};
use crate::shutdown::Shutdown;
use crate::store::partitions::{self, Window};
use crate::store::{self, QueryContext, StoreError, quoted_schema};
use crate::topology::names;

mod isolate;
mod tables;
mod write;

use write::Writer;

/// The dead-letter code of a row PostgreSQL refused for its content.
pub const STORE_REJECTED: &str = "store_rejected";
/// The dead-letter code of a raw beat or rollup of a day outside its table's retention.
pub const OUTSIDE_RETENTION: &str = "outside_retention";

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("dead letters: {0}")]
    DeadLetters(#[from] DeadLetterError),
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

/// Where a row's record came from, and the record as it was: should the database refuse the
/// row, the record goes to the dead-letter topic.
struct Source {
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

impl Source {
    fn of(msg: &BorrowedMessage<'_>) -> Source {
        Source {
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().unwrap_or_default().to_vec(),
        }
    }

    fn dead_letter(&self, topic: &str, code: &'static str, message: String) -> DeadLetter {
        let record = Record {
            topic,
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key.as_deref(),
            payload: &self.payload,
        };
        DeadLetter::new(record, code, message)
    }
}

/// A decoded record on its way to its table.
struct Row<T> {
    value: T,
    source: Source,
}

/// The retention windows of the daily tables, as of a batch's first record.
#[derive(Debug, Clone, Copy)]
struct Windows {
    beats: Window,
    rollups: Window,
}

impl Windows {
    fn on(today: NaiveDate, retention: &RetentionConfig) -> Windows {
        let [raw, rollup, _] = partitions::plans(retention);
        Windows {
            beats: Window::of(&raw, today, retention.days_ahead),
            rollups: Window::of(&rollup, today, retention.days_ahead),
        }
    }
}

/// The rows of one transaction, the records set aside, and the offsets they cover.
#[derive(Default)]
struct Batch {
    beats: Vec<Row<Heartbeat>>,
    alerts: Vec<Row<Alert>>,
    rollups: BTreeMap<(String, i64), Row<Rollup>>,
    apps: BTreeMap<String, Row<AppSnapshot>>,
    /// Records set aside before writing (outside the retention window).
    dead_letters: Vec<DeadLetter>,
    /// The dead letters of this batch the broker has acknowledged, by (topic, partition,
    /// offset): a write retried after a failed commit does not send them again.
    sent: BTreeSet<(String, i32, i64)>,
    windows: Option<Windows>,
    ranges: OffsetRanges,
    first_at: Option<Instant>,
}

impl Batch {
    fn rows(&self) -> usize {
        self.beats.len() + self.alerts.len() + self.rollups.len() + self.apps.len()
    }

    /// Rows and records set aside: what the batch holds in memory.
    fn records(&self) -> usize {
        self.rows() + self.dead_letters.len()
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
    let mut writer = Writer::new(&topics, &group, Publisher::new(k, k.name(names::HEARTBEATS_DLQ)));
    let mut batch = Batch::default();
    let batch_ms = Duration::from_millis(config.sink.batch_ms);
    tracing::info!(group = %group, schema = %schema, "sink started");
    let mut lag_checked = Instant::now();
    let registry = Registry::from_config(&config.schema_registry);
    let mut registry_backoff = Backoff::default();

    loop {
        let stopping = shutdown.is_triggered();
        if !stopping {
            if let Some(polled) = consumer.poll(Duration::from_millis(100)) {
                match polled {
                    Ok(msg) => {
                        ready.store(true, Ordering::Relaxed);
                        match accept(&msg, &topics, &expected, &mut batch, config, registry.as_ref()) {
                            Ok(()) => registry_backoff.succeeded(),
                            Err(e) => {
                                if let Err(e) =
                                    registry_paused(&consumer, &msg, e, &mut registry_backoff, shutdown)
                                {
                                    // Going on would skip the record: start over from sink_offset.
                                    tracing::warn!(error = %e, "sink: seek failed; re-seeking");
                                    drop(msg);
                                    reseek_all(
                                        &consumer,
                                        &pool,
                                        config,
                                        &group,
                                        &mut expected,
                                        &mut batch,
                                        shutdown,
                                        rt,
                                    )?;
                                }
                            }
                        }
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
        let due = batch.first_at.is_some_and(|t| t.elapsed() >= batch_ms)
            || batch.records() >= config.sink.batch_rows;
        if !batch.is_empty() && (due || stopping) {
            let taken = std::mem::take(&mut batch);
            match write_with_retry(&consumer, &pool, config, &mut writer, taken, &expected, shutdown, rt) {
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

/// A record decoded, before it is placed in the batch.
enum Decoded {
    Beat(Heartbeat),
    Alert(Alert),
    Rollup(Rollup),
    App(AppSnapshot),
}

/// Adds one consumed record to the batch (or skips it, if `sink_offset` says it is written).
/// `Err` when the schema registry could not be asked for the record's writer schema: the
/// record is left out of the batch, to be read again.
fn accept(
    msg: &BorrowedMessage<'_>,
    topics: &Topics,
    expected: &HashMap<(String, i32), i64>,
    batch: &mut Batch,
    config: &Config,
    registry: Option<&Registry>,
) -> Result<(), Unavailable> {
    let topic = msg.topic();
    let tp = (topic.to_owned(), msg.partition());
    let Some(&next) = expected.get(&tp) else {
        // Not seeked yet (an assignment in progress): it will be read again after the seek.
        return Ok(());
    };
    let start = batch.ranges.get(&tp).map_or(next, |r| r.1);
    if msg.offset() < start {
        return Ok(()); // already written
    }
    let decoded = decode(msg, topics, config, registry)?;
    METRICS.records_in.with_label_values(&["sink", topic]).inc();
    batch.first_at.get_or_insert_with(Instant::now);
    let range = batch.ranges.entry(tp).or_insert((next, next));
    range.1 = msg.offset() + 1;
    match decoded {
        Ok(decoded) => place(msg, decoded, batch, &config.retention),
        Err(reason) => {
            if let Some(reason) = reason {
                tracing::warn!(%topic, partition = msg.partition(), offset = msg.offset(), "sink: {reason}; skipped");
            }
            METRICS.sink_skipped.with_label_values(&[topic]).inc();
        }
    }
    Ok(())
}

/// Decodes a record by its topic; the inner `Err` says why not, if worth a warning; the
/// outer one that the schema registry could not be asked.
fn decode(
    msg: &BorrowedMessage<'_>,
    topics: &Topics,
    config: &Config,
    registry: Option<&Registry>,
) -> Result<Result<Decoded, Option<String>>, Unavailable> {
    let topic = msg.topic();
    let payload = msg.payload().unwrap_or_default();
    if topic == topics.heartbeats {
        let reference = msg.timestamp().to_millis().unwrap_or_else(|| Utc::now().timestamp_millis());
        // Invalid input is the processor's to dead-letter; the sink stores valid beats only.
        let beat = Registry::decode(registry, payload, reference, config.input.max_sent_at_drift_ms)?;
        return Ok(beat.map(Decoded::Beat).map_err(|_| None));
    }
    Ok(decode_output(topic, payload, topics))
}

/// Decodes a record of one of the processor's output topics.
fn decode_output(topic: &str, payload: &[u8], topics: &Topics) -> Result<Decoded, Option<String>> {
    if topic == topics.alerts {
        Alert::decode(payload).map(Decoded::Alert).map_err(|e| Some(format!("undecodable alert: {e}")))
    } else if topic == topics.metrics {
        serde_json::from_slice(payload)
            .map(Decoded::Rollup)
            .map_err(|e| Some(format!("undecodable rollup: {e}")))
    } else if topic == topics.app_state {
        serde_json::from_slice(payload)
            .map(Decoded::App)
            .map_err(|e| Some(format!("undecodable snapshot: {e}")))
    } else {
        Err(Some("a record of a topic the sink does not read".into()))
    }
}

/// The registry could not give a beat's writer schema: seeks its partition back to it, to
/// read it again after a pause. The batch keeps what it holds (its range ends before it).
fn registry_paused(
    consumer: &BaseConsumer<Assignments>,
    msg: &BorrowedMessage<'_>,
    error: Unavailable,
    backoff: &mut Backoff,
    shutdown: &Shutdown,
) -> Result<(), KafkaError> {
    let delay = backoff.failed();
    tracing::warn!(error = %error, delay_ms = delay.as_millis() as u64, "sink: schema registry unavailable; reading the record again after a pause");
    METRICS.registry_unavailable.with_label_values(&["sink"]).inc();
    consumer.seek(msg.topic(), msg.partition(), Offset::Offset(msg.offset()), Duration::from_secs(10))?;
    let until = Instant::now() + delay;
    while !shutdown.is_triggered() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Puts a decoded record in the batch, or among its dead letters if its day is outside its
/// table's retention window: such a row would create a partition nothing ever drops.
fn place(msg: &BorrowedMessage<'_>, decoded: Decoded, batch: &mut Batch, retention: &RetentionConfig) {
    let windows = *batch.windows.get_or_insert_with(|| Windows::on(Utc::now().date_naive(), retention));
    let outside = |table: &str, day: NaiveDate, window: &Window, setting: (&str, u32)| {
        let message = format!(
            "{table} takes the days {window} (retention.{} = {}, retention.days_ahead = {}): the row's day {day} is outside them",
            setting.0, setting.1, retention.days_ahead
        );
        DeadLetter::of(msg, OUTSIDE_RETENTION, message)
    };
    match decoded {
        Decoded::Beat(beat) => {
            let day = millis(beat.sent_at).date_naive();
            if windows.beats.contains(day) {
                batch.beats.push(Row { value: beat, source: Source::of(msg) });
            } else {
                let setting = ("raw_days", retention.raw_days);
                batch.dead_letters.push(outside("heartbeat_event", day, &windows.beats, setting));
            }
        }
        Decoded::Rollup(rollup) => {
            let day = millis(rollup.minute).date_naive();
            if windows.rollups.contains(day) {
                let key = (rollup.app_id.clone(), rollup.minute);
                batch.rollups.insert(key, Row { value: rollup, source: Source::of(msg) });
            } else {
                let setting = ("rollup_days", retention.rollup_days);
                batch.dead_letters.push(outside("metric_rollup_1m", day, &windows.rollups, setting));
            }
        }
        Decoded::Alert(alert) => batch.alerts.push(Row { value: alert, source: Source::of(msg) }),
        Decoded::App(app) => {
            batch.apps.insert(app.app_id.clone(), Row { value: app, source: Source::of(msg) });
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

/// What a failed write waits for before it is tried again (`None`: it is not).
fn retry_reason(e: &SinkError) -> Option<&'static str> {
    match e {
        SinkError::Store(e) if e.is_transient() => Some("database"),
        // The batch is held until the dead-letter topic takes its records: none is lost.
        SinkError::DeadLetters(_) => Some("dead_letter"),
        _ => None,
    }
}

/// Writes the batch, retrying transient database errors (and dead letters the broker did
/// not take) with backoff while the partitions are paused. Returns the ranges written.
#[allow(clippy::too_many_arguments)]
fn write_with_retry(
    consumer: &BaseConsumer<Assignments>,
    pool: &Pool,
    config: &Config,
    writer: &mut Writer<'_>,
    mut batch: Batch,
    expected: &HashMap<(String, i32), i64>,
    shutdown: &Shutdown,
    rt: &Handle,
) -> Result<OffsetRanges, SinkError> {
    let mut delay = Duration::from_millis(config.sink.retry_initial_ms);
    let mut paused: Option<TopicPartitionList> = None;
    let started = Instant::now();
    let result = loop {
        let written = rt.block_on(async {
            let mut client = store::checkout(pool).await?;
            writer.write(&mut client, &config.postgres.schema, &mut batch).await
        });
        record_pool_status(pool);
        match written {
            Ok(()) => break Ok(()),
            Err(e) if let Some(reason) = retry_reason(&e) => {
                // A new connection may come after a restart that dropped our partitions' DDL cache.
                writer.forget_partitions();
                METRICS.sink_retries.with_label_values(&[reason]).inc();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, rows = batch.rows(), "sink: write failed, retrying");
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
                    break Err(e);
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

/// Publishes the pool's size, available and waiting connections.
fn record_pool_status(pool: &Pool) {
    let status = pool.status();
    METRICS.db_pool.with_label_values(&["max_size"]).set(status.max_size as i64);
    METRICS.db_pool.with_label_values(&["size"]).set(status.size as i64);
    METRICS.db_pool.with_label_values(&["available"]).set(status.available as i64);
    METRICS.db_pool.with_label_values(&["waiting"]).set(status.waiting as i64);
}
