//! The sink stage: materialises `heartbeats`, `alerts`, `metrics-1m` and `app-state` in
//! PostgreSQL, exactly once.
//!
//! Each batch of rows and the offsets it consumed are written in one database transaction;
//! `sink_offset` is updated only if it still holds the offset the batch started from, so a
//! batch that another sink instance already wrote (after a rebalance) is refused rather than
//! written twice. On assignment the sink seeks to the offsets in `sink_offset`. When the
//! database fails, the sink pauses its partitions, retries with exponential backoff and
//! jitter, and keeps the batch it holds: nothing is lost and memory stays bounded. While a
//! batch is written (on a thread of its own) the next one is read and decoded, up to its size;
//! should the write fail, what was read meanwhile is dropped and read again.
//!
//! One record must never stop the sink. A row whose content PostgreSQL refuses (a NUL in a
//! string, say) is found by bisection (`isolate`) and set aside, and a raw beat or rollup of
//! a day outside its table's retention window is set aside before it is written (so it
//! creates no partition): both go to `heartbeats-dlq` (codes `store_rejected`,
//! `outside_retention`), and the offsets move past them with the rest of the batch (`write`).
//! A beat whose writer schema the Schema Registry cannot give right now is read again after
//! a pause (its partition sought back to it), never skipped.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use thiserror::Error;
use tokio::runtime::Handle;
use tokio_postgres::types::ToSql;

use crate::assignment::{AssignmentLog, Membership};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::dead_letter::{DeadLetterError, Publisher};
use crate::kafka;
use crate::metrics::METRICS;
use crate::registry::{Registry, Unavailable};
use crate::shutdown::Shutdown;
use crate::store::{self, QueryContext, StoreError, quoted_schema};
use crate::topology::Topics;

mod batch;
mod decode;
mod isolate;
mod tables;
mod write;

use batch::{Batch, OffsetRanges, Row, millis};
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

/// Runs the sink until `shutdown`; blocking, using `rt` for the database.
pub fn run(config: &Config, shutdown: &Shutdown, ready: &AtomicBool, rt: &Handle) -> Result<(), SinkError> {
    let mut sink = Sink::start(config, shutdown, ready, rt)?;
    loop {
        let stopping = shutdown.is_triggered();
        if !stopping {
            // The batch may have filled while the one before was written.
            if sink.batch.records() < config.sink.batch_rows {
                sink.poll_record()?;
            }
            sink.apply_assignments()?;
        }
        if sink.lag_checked.elapsed() >= Duration::from_secs(10) {
            kafka::record_lag(&sink.consumer, "sink");
            sink.lag_checked = Instant::now();
        }
        let due = sink.batch.first_at.is_some_and(|t| t.elapsed() >= sink.batch_ms)
            || sink.batch.records() >= config.sink.batch_rows;
        if !sink.batch.is_empty() && (due || stopping) {
            sink.flush()?;
        }
        if stopping && sink.batch.is_empty() {
            break;
        }
    }
    tracing::info!("sink stopped");
    Ok(())
}

/// What the sink's loop holds from one record to the next.
struct Sink<'a> {
    config: &'a Config,
    shutdown: &'a Shutdown,
    ready: &'a AtomicBool,
    /// The runtime the database calls run on.
    rt: &'a Handle,
    /// Consumer group `<prefix>sink`, on the four topics it stores, read_committed.
    group: String,
    topics: Topics,
    consumer: BaseConsumer<AssignmentLog>,
    pool: Pool,
    /// Next offset expected per assigned partition, as `sink_offset` says.
    expected: HashMap<(String, i32), i64>,
    writer: Writer,
    /// The rows read and not written yet.
    batch: Batch,
    /// How long a batch may gather rows.
    batch_ms: Duration,
    /// The Schema Registry, when beats may come in the Confluent wire format.
    registry: Option<Registry>,
    registry_backoff: Backoff,
    lag_checked: Instant,
}

impl<'a> Sink<'a> {
    /// Subscribes, and waits until the database answers.
    fn start(
        config: &'a Config,
        shutdown: &'a Shutdown,
        ready: &'a AtomicBool,
        rt: &'a Handle,
    ) -> Result<Self, SinkError> {
        let k = &config.kafka;
        let group = k.name("sink");
        let topics = Topics::of(k);
        let consumer: BaseConsumer<AssignmentLog> = k
            .client_config()
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "100")
            // A fetch brings up to 8 MiB of a partition (1 MiB by default): with smaller
            // fetches the reader waited between them while the database sat idle.
            .set("max.partition.fetch.bytes", "8388608")
            .create_with_context(AssignmentLog::new("sink"))?;
        consumer.subscribe(&[
            &topics.heartbeats,
            &topics.alerts,
            &topics.app_state,
            &topics.metrics,
            &topics.alert_acks,
        ])?;
        let pool = store::pool(&config.postgres)?;
        wait_for_database(&pool, config, shutdown, rt)?;
        let writer =
            Writer::new(topics.clone(), group.clone(), Publisher::new(k, topics.heartbeats_dlq.clone()));
        tracing::info!(group = %group, schema = %config.postgres.schema, "sink started");
        Ok(Sink {
            config,
            shutdown,
            ready,
            rt,
            group,
            topics,
            consumer,
            pool,
            expected: HashMap::new(),
            writer,
            batch: Batch::default(),
            batch_ms: Duration::from_millis(config.sink.batch_ms),
            registry: Registry::from_config(&config.schema_registry),
            registry_backoff: Backoff::service(),
            lag_checked: Instant::now(),
        })
    }

    /// Polls one record and takes it into the batch.
    fn poll_record(&mut self) -> Result<(), SinkError> {
        let (mut reading, ..) = self.split();
        if let Some(e) = reading.read_record(Duration::from_millis(100)) {
            // Going on would skip the record: start over from sink_offset.
            tracing::warn!(error = %e, "sink: seek failed; re-seeking");
            self.reseek_all()?;
        }
        Ok(())
    }

    /// The parts that read records into the batch, and those that write a batch.
    fn split(&mut self) -> (Reading<'_>, &mut Writer, &Pool, &'a Handle, &'a Config) {
        let Sink {
            config,
            shutdown,
            ready,
            rt,
            topics,
            consumer,
            pool,
            expected,
            writer,
            batch,
            registry,
            registry_backoff,
            ..
        } = self;
        let reading = Reading {
            config,
            shutdown,
            ready,
            topics,
            consumer,
            expected,
            batch,
            registry: registry.as_ref(),
            backoff: registry_backoff,
        };
        (reading, writer, pool, *rt, *config)
    }

    /// Acts on the partitions the last poll assigned and revoked.
    fn apply_assignments(&mut self) -> Result<(), SinkError> {
        let (mut assigned, mut revoked) = (Vec::new(), Vec::new());
        for change in self.consumer.context().take() {
            match change {
                Membership::Assigned { topic, partition } => assigned.push((topic, partition)),
                Membership::Revoked { topic, partition } => revoked.push((topic, partition)),
            }
        }
        if !revoked.is_empty() {
            // Whatever we hold for revoked partitions is the new owner's to write.
            for tp in &revoked {
                self.expected.remove(tp);
            }
            if self.batch.ranges.keys().any(|tp| revoked.contains(tp)) {
                self.reseek_all()?;
            }
        }
        if !assigned.is_empty() {
            self.ready.store(true, Ordering::Relaxed);
            self.seek_to_stored(&assigned)?;
        }
        Ok(())
    }

    /// Writes the batch; moves the expected offsets past it, or starts over from
    /// `sink_offset` if another instance wrote it.
    fn flush(&mut self) -> Result<(), SinkError> {
        let taken = std::mem::take(&mut self.batch);
        match self.write_with_retry(taken) {
            Ok(written) => {
                let mut tpl = TopicPartitionList::new();
                for ((topic, p), (_, next)) in &written {
                    self.expected.insert((topic.clone(), *p), *next);
                    tpl.add_partition_offset(topic, *p, Offset::Offset(*next))?;
                }
                // Kafka's committed offsets are only a hint for tools: the truth is sink_offset.
                if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                    tracing::debug!(error = %e, "sink: offset hint not committed");
                }
                Ok(())
            }
            Err(SinkError::Conflict { topic, partition, expected: e }) => {
                tracing::warn!(%topic, partition, expected = e, "sink: batch refused, another instance wrote it; re-seeking");
                self.reseek_all()
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the stored offsets of newly assigned partitions and seeks there. A database outage
    /// is waited out with backoff.
    fn seek_to_stored(&mut self, assigned: &[(String, i32)]) -> Result<(), SinkError> {
        let stored = self.read_stored(assigned)?;
        let (consumer, expected) = (&self.consumer, &mut self.expected);
        // Records polled while a seek waits for its partition to start: re-read after the seeks.
        let mut polled: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (topic, p) in assigned {
            let (start, offset) = match stored.get(&(topic.clone(), *p)) {
                Some(&o) => (Offset::Offset(o), o),
                // Never written by the group: from its first record, without asking the broker
                // where that is (a round trip per partition). Its compare-and-set finds no row
                // and inserts one; should another instance have written one meanwhile, its
                // next offset is past 0 and the batch is refused.
                None => (Offset::Beginning, 0),
            };
            // The assignment may not be active yet; retry the seek briefly.
            let mut tries = 0;
            while let Err(e) = consumer.seek(topic, *p, start, Duration::from_secs(10)) {
                tries += 1;
                if tries > 50 {
                    return Err(e.into());
                }
                if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(20)) {
                    let tp = (msg.topic().to_owned(), msg.partition());
                    // Of a partition already sought: to be read again, or it would be skipped.
                    if expected.get(&tp).is_some_and(|&next| msg.offset() >= next) {
                        let at = polled.entry(tp).or_insert(msg.offset());
                        *at = (*at).min(msg.offset());
                    }
                }
            }
            expected.insert((topic.clone(), *p), offset);
            tracing::info!(%topic, partition = p, offset, "sink: resuming from sink_offset");
        }
        for ((topic, p), offset) in polled {
            consumer.seek(&topic, p, Offset::Offset(offset), Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// The offsets `sink_offset` holds for `assigned`, in one query (a partition the group
    /// never wrote has none). A database outage is waited out with backoff.
    fn read_stored(&self, assigned: &[(String, i32)]) -> Result<HashMap<(String, i32), i64>, SinkError> {
        let q = quoted_schema(&self.config.postgres.schema)?;
        let sql = format!(
            "SELECT topic, partition, next_offset FROM {q}.sink_offset WHERE consumer_group = $1 AND topic = ANY($2)"
        );
        let topics: Vec<&str> = assigned.iter().map(|(t, _)| t.as_str()).collect();
        let (pool, group, rt) = (&self.pool, &self.group, self.rt);
        let params: [&(dyn ToSql + Sync); 2] = [group, &topics];
        let rows = with_retry(self.config, self.shutdown, "reading sink_offset", || {
            rt.block_on(async {
                let client = store::checkout(pool).await?;
                client.query(&sql, &params).await.doing("reading sink_offset").map_err(SinkError::from)
            })
        })?;
        let stored = rows.iter().map(|r| ((r.get::<_, String>(0), r.get::<_, i32>(1)), r.get::<_, i64>(2)));
        Ok(stored.filter(|(tp, _)| assigned.contains(tp)).collect())
    }

    /// Drops the batch and seeks every assigned partition back to what `sink_offset` says.
    fn reseek_all(&mut self) -> Result<(), SinkError> {
        self.batch = Batch::default();
        let assignment: Vec<(String, i32)> = self
            .consumer
            .assignment()?
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        self.expected.clear();
        self.seek_to_stored(&assignment)
    }

    /// Writes the batch, retrying transient database errors (and dead letters the broker did
    /// not take) with backoff while the partitions are paused. Returns the ranges written.
    fn write_with_retry(&mut self, mut batch: Batch) -> Result<OffsetRanges, SinkError> {
        let started = Instant::now();
        match self.write_reading_on(&mut batch) {
            Err(e) if retry_reason(&e).is_some() => {
                // What was read meanwhile is read again once this batch is written: should a
                // partition not go back to where the batch ends, every one starts over from
                // sink_offset rather than skip what was read ahead.
                self.batch = Batch::default();
                if !self.retry_write(&mut batch, e, started)? {
                    self.reseek_all()?;
                }
            }
            other => other?,
        }
        METRICS.sink_batch_rows.observe(batch.rows() as f64);
        METRICS.batch_seconds.with_label_values(&["sink"]).observe(started.elapsed().as_secs_f64());
        Ok(batch.ranges)
    }

    /// Writes `batch` on a thread of its own while this one reads on into the next batch, up
    /// to `sink.batch_rows` records, so that decoding overlaps the database's work. The next
    /// batch's ranges start where this one ends: should the write fail, the caller drops what
    /// was read meanwhile.
    fn write_reading_on(&mut self, batch: &mut Batch) -> Result<(), SinkError> {
        for (tp, (_, next)) in &batch.ranges {
            self.expected.insert(tp.clone(), *next);
        }
        let (mut reading, writer, pool, rt, config) = self.split();
        let (written, seek_failed) = std::thread::scope(|scope| {
            let writing = scope.spawn(|| {
                rt.block_on(async {
                    let mut client = store::checkout(pool).await?;
                    writer.write(&mut client, &config.postgres.schema, batch).await
                })
            });
            let mut seek_failed = None;
            while !writing.is_finished() {
                let room = reading.batch.records() < config.sink.batch_rows;
                if room && seek_failed.is_none() && !reading.shutdown.is_triggered() {
                    seek_failed = reading.read_record(Duration::from_millis(5));
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let written = writing.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (written, seek_failed)
        });
        record_pool_status(&self.pool);
        if written.is_ok()
            && let Some(e) = seek_failed
        {
            tracing::warn!(error = %e, "sink: seek failed; re-seeking");
            self.reseek_all()?;
        }
        written
    }

    /// Retries writing `batch` after `failure` with backoff, its partitions paused, until it
    /// is written, a failure is not worth retrying, or the stage stops; whether every
    /// partition went back to where the batch ends.
    fn retry_write(
        &mut self,
        batch: &mut Batch,
        failure: SinkError,
        started: Instant,
    ) -> Result<bool, SinkError> {
        let (consumer, pool, config, writer) = (&self.consumer, &self.pool, self.config, &mut self.writer);
        let (expected, shutdown, rt) = (&self.expected, self.shutdown, self.rt);
        let mut backoff = database_backoff(config);
        let mut paused: Option<TopicPartitionList> = None;
        let mut sought_back = true;
        let mut failure = Some(failure);
        let result = loop {
            let e = match failure.take() {
                None => break Ok(()),
                Some(e) if retry_reason(&e).is_none() => break Err(e),
                Some(e) => e,
            };
            let delay = backoff.failed();
            // A new connection may come after a restart that dropped our partitions' DDL cache.
            writer.forget_partitions();
            METRICS.sink_retries.with_label_values(&[retry_reason(&e).unwrap_or_default()]).inc();
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
            if shutdown.is_triggered() && started.elapsed() > Duration::from_secs(20) {
                break Err(e);
            }
            failure = rt
                .block_on(async {
                    let mut client = store::checkout(pool).await?;
                    writer.write(&mut client, &config.postgres.schema, batch).await
                })
                .err();
            record_pool_status(pool);
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
                    sought_back = false;
                }
            }
        }
        result.map(|()| sought_back)
    }
}

/// What reading a record into the batch borrows of the sink.
struct Reading<'s> {
    config: &'s Config,
    shutdown: &'s Shutdown,
    ready: &'s AtomicBool,
    topics: &'s Topics,
    consumer: &'s BaseConsumer<AssignmentLog>,
    expected: &'s HashMap<(String, i32), i64>,
    batch: &'s mut Batch,
    registry: Option<&'s Registry>,
    backoff: &'s mut Backoff,
}

impl Reading<'_> {
    /// Polls one record, waiting at most `timeout`, and takes it into the batch. Returns the
    /// error of a seek back that failed: going on would skip the record.
    fn read_record(&mut self, timeout: Duration) -> Option<KafkaError> {
        match self.consumer.poll(timeout) {
            None => None,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "sink: consumer error");
                None
            }
            Some(Ok(msg)) => {
                self.ready.store(true, Ordering::Relaxed);
                let (topics, expected, config) = (self.topics, self.expected, self.config);
                match decode::accept(&msg, topics, expected, self.batch, config, self.registry) {
                    Ok(()) => {
                        self.backoff.succeeded();
                        None
                    }
                    Err(e) => registry_paused(self.consumer, &msg, e, self.backoff, self.shutdown).err(),
                }
            }
        }
    }
}

/// The registry could not give a beat's writer schema: seeks its partition back to it, to
/// read it again after a pause. The batch keeps what it holds (its range ends before it).
fn registry_paused(
    consumer: &BaseConsumer<AssignmentLog>,
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

/// Retries `attempt` on transient database errors with exponential backoff and jitter.
fn with_retry<T>(
    config: &Config,
    shutdown: &Shutdown,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, SinkError>,
) -> Result<T, SinkError> {
    let mut backoff = database_backoff(config);
    loop {
        match attempt() {
            Err(SinkError::Store(e)) if e.is_transient() && !shutdown.is_triggered() => {
                let delay = backoff.failed();
                METRICS.sink_retries.with_label_values(&["database"]).inc();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "sink: {what} failed, retrying");
                std::thread::sleep(delay);
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

/// The database's backoff, as `[sink]` configures it.
fn database_backoff(config: &Config) -> Backoff {
    let ms = Duration::from_millis;
    Backoff::database(ms(config.sink.retry_initial_ms), ms(config.sink.retry_max_ms))
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

/// Publishes the pool's size, available and waiting connections.
fn record_pool_status(pool: &Pool) {
    let status = pool.status();
    METRICS.db_pool.with_label_values(&["max_size"]).set(status.max_size as i64);
    METRICS.db_pool.with_label_values(&["size"]).set(status.size as i64);
    METRICS.db_pool.with_label_values(&["available"]).set(status.available as i64);
    METRICS.db_pool.with_label_values(&["waiting"]).set(status.waiting as i64);
}
