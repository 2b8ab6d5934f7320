//! Prometheus metrics of the stages, registered once in a registry of their own and served
//! by [`crate::http`] on `/metrics`.

use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric pulsewatch exports, in the groups they are registered in (`StageIo`,
/// `Processor`, `Sink`, `Ingest`).
pub struct Metrics {
    pub registry: Registry,
    // What the stages read and write.
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    /// Bytes of the records produced (key, value and headers, before compression).
    pub bytes_out: IntCounterVec,
    pub decode_errors: IntCounterVec,
    /// Avro records read whose header carries apache-avro's fingerprint, by schema.
    pub legacy_fingerprint: IntCounterVec,
    pub registry_unavailable: IntCounterVec,
    /// Partitions the consumer started below their committed offset, put back to it.
    pub start_corrected: IntCounterVec,
    pub dlq_records: IntCounterVec,
    pub batch_seconds: HistogramVec,
    pub record_latency_seconds: Histogram,
    pub consumer_lag: IntGaugeVec,
    // The processor.
    pub alerts: IntCounterVec,
    pub transactions: IntCounterVec,
    pub tracked_apps: IntGauge,
    pub tracked_instances: IntGauge,
    pub restoring_partitions: IntGauge,
    pub restored_apps: IntCounterVec,
    /// Beats read again after a restore into states that did not hold them, and what such
    /// beats raised again and was dropped (nothing, unless a replay decided otherwise).
    pub replayed: IntCounterVec,
    /// Bytes of the `app-state` records produced, by kind of record.
    pub state_bytes_out: IntCounterVec,
    pub clamped_beats: IntGauge,
    // The sink.
    pub sink_batch_rows: Histogram,
    pub sink_held_rows: IntGauge,
    pub sink_retries: IntCounterVec,
    pub sink_skipped: IntCounterVec,
    /// Records the sink set aside on the dead-letter topic instead of storing them.
    pub sink_rejected: IntCounterVec,
    pub db_pool: IntGaugeVec,
    // The ingest.
    /// Ingest requests, by route and status.
    pub ingest_requests: IntCounterVec,
    pub ingest_request_seconds: HistogramVec,
    /// Ingest beats accepted (produced) or answered as duplicates of a recent one.
    pub ingest_beats: IntCounterVec,
    /// Ingest beats refused, by error code.
    pub ingest_rejected: IntCounterVec,
}

/// Registers `metric` in `registry` and hands it back.
fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("registered once");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric"))
}

/// A histogram of durations in seconds, by `labels`.
fn latency_histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(latency_buckets());
    register(registry, HistogramVec::new(opts, labels).expect("valid metric"))
}

/// Buckets for durations: 0.5 ms doubling up to about 16 s.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")
}

/// What the stages read and write: records in and out, what they could not decode, and how
/// long a batch takes.
struct StageIo {
    records_in: IntCounterVec,
    records_out: IntCounterVec,
    bytes_out: IntCounterVec,
    decode_errors: IntCounterVec,
    legacy_fingerprint: IntCounterVec,
    registry_unavailable: IntCounterVec,
    start_corrected: IntCounterVec,
    dlq_records: IntCounterVec,
    batch_seconds: HistogramVec,
    record_latency_seconds: Histogram,
    consumer_lag: IntGaugeVec,
}

impl StageIo {
    fn register(r: &Registry) -> StageIo {
        StageIo {
            records_in: counter(
                r,
                "records_in_total",
                "Records consumed, by stage and topic",
                &["stage", "topic"],
            ),
            records_out: counter(
                r,
                "records_out_total",
                "Records produced or rows written, by destination",
                &["stage", "destination"],
            ),
            bytes_out: counter(
                r,
                "bytes_out_total",
                "Bytes of the records produced (key, value and headers, before compression), by destination",
                &["stage", "destination"],
            ),
            decode_errors: counter(r, "decode_errors_total", "Heartbeats rejected, by error code", &["code"]),
            legacy_fingerprint: counter(
                r,
                "legacy_fingerprint_records_total",
                "Avro records read with the fingerprint apache-avro 0.21 computed instead of the specification's, by schema",
                &["schema"],
            ),
            registry_unavailable: counter(
                r,
                "schema_registry_unavailable_total",
                "Times a stage paused because the schema registry could not give a record's writer schema, by stage",
                &["stage"],
            ),
            start_corrected: counter(
                r,
                "partition_start_corrected_total",
                "Partitions taken over whose first record lay below the committed offset (the client fell back to auto.offset.reset), sought back to it, by stage",
                &["stage"],
            ),
            dlq_records: counter(
                r,
                "dlq_records_total",
                "Records sent to the dead-letter topic, by error code",
                &["code"],
            ),
            batch_seconds: latency_histogram(
                r,
                "batch_seconds",
                "Time to process and commit one batch, by stage",
                &["stage"],
            ),
            record_latency_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "record_latency_seconds",
                        "Wall time from a heartbeat's broker timestamp to the commit of what it caused",
                    )
                    .buckets(latency_buckets()),
                )
                .expect("valid metric"),
            ),
            consumer_lag: register(
                r,
                IntGaugeVec::new(
                    Opts::new("consumer_lag", "Records behind the partition's end"),
                    &["stage", "topic", "partition"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// The processor's engine and its transactions: alerts raised, the state it holds and
/// restores.
struct Processor {
    alerts: IntCounterVec,
    transactions: IntCounterVec,
    tracked_apps: IntGauge,
    tracked_instances: IntGauge,
    restoring_partitions: IntGauge,
    restored_apps: IntCounterVec,
    replayed: IntCounterVec,
    state_bytes_out: IntCounterVec,
    clamped_beats: IntGauge,
}

impl Processor {
    fn register(r: &Registry) -> Processor {
        Processor {
            alerts: counter(
                r,
                "alerts_total",
                "Alert transitions published, by kind, severity and state",
                &["kind", "severity", "state"],
            ),
            transactions: counter(
                r,
                "transactions_total",
                "Processor transactions, by outcome (committed, aborted; commit_resumed counts commits resumed after a timeout)",
                &["outcome"],
            ),
            tracked_apps: gauge(r, "tracked_apps", "Applications in the processor's state"),
            tracked_instances: gauge(r, "tracked_instances", "Instances in the processor's state"),
            restoring_partitions: gauge(
                r,
                "restoring_partitions",
                "Partitions whose state the processor is rebuilding from app-state (not ready meanwhile)",
            ),
            restored_apps: counter(r, "restored_apps_total", "Applications rebuilt from app-state", &[]),
            replayed: counter(
                r,
                "replayed_total",
                "After a restore: beats applied again to states that did not hold them (beats), and alerts or rollups they raised again, dropped (dropped_effects: none unless a replay decided otherwise)",
                &["what"],
            ),
            state_bytes_out: counter(
                r,
                "state_bytes_out_total",
                "Bytes of the app-state records produced (key, value and headers, before compression), by kind: snapshot, state, windows, windows_tail, mark",
                &["kind"],
            ),
            clamped_beats: gauge(
                r,
                "clamped_beats",
                "Beats whose event time was clamped for the watermark (clock ahead)",
            ),
        }
    }
}

/// The sink's writes to PostgreSQL: rows per transaction, retries, and what it did not store.
struct Sink {
    sink_batch_rows: Histogram,
    sink_held_rows: IntGauge,
    sink_retries: IntCounterVec,
    sink_skipped: IntCounterVec,
    sink_rejected: IntCounterVec,
    db_pool: IntGaugeVec,
}

impl Sink {
    fn register(r: &Registry) -> Sink {
        Sink {
            sink_batch_rows: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("sink_batch_rows", "Rows written per sink transaction")
                        .buckets(prometheus::exponential_buckets(1.0, 4.0, 10).expect("valid buckets")),
                )
                .expect("valid metric"),
            ),
            sink_held_rows: gauge(
                r,
                "sink_held_rows",
                "Rows of the one batch the sink holds while it retries a failed write (its partitions paused)",
            ),
            sink_retries: counter(
                r,
                "sink_retries_total",
                "Sink transactions retried, by reason",
                &["reason"],
            ),
            sink_skipped: counter(
                r,
                "sink_skipped_total",
                "Records the sink could not decode and did not store (invalid heartbeats are the processor's to dead-letter), by topic",
                &["topic"],
            ),
            sink_rejected: counter(
                r,
                "sink_rejected_records_total",
                "Records the sink set aside on the dead-letter topic instead of storing them, by topic and code (store_rejected: PostgreSQL refused the row's content; outside_retention: a day outside its table's retention window)",
                &["topic", "code"],
            ),
            db_pool: register(
                r,
                IntGaugeVec::new(
                    Opts::new("db_pool", "PostgreSQL pool: size, available, waiting"),
                    &["state"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// The ingest's HTTP requests and the beats in them.
struct Ingest {
    ingest_requests: IntCounterVec,
    ingest_request_seconds: HistogramVec,
    ingest_beats: IntCounterVec,
    ingest_rejected: IntCounterVec,
}

impl Ingest {
    fn register(r: &Registry) -> Ingest {
        Ingest {
            ingest_requests: counter(
                r,
                "ingest_requests_total",
                "Ingest requests, by route and status",
                &["route", "status"],
            ),
            ingest_request_seconds: latency_histogram(
                r,
                "ingest_request_seconds",
                "Ingest request latency, by route",
                &["route"],
            ),
            ingest_beats: counter(
                r,
                "ingest_beats_total",
                "Ingest beats, by outcome (accepted: produced; duplicate: a retry of a beat already produced)",
                &["outcome"],
            ),
            ingest_rejected: counter(
                r,
                "ingest_rejected_beats_total",
                "Ingest beats refused, by error code",
                &["code"],
            ),
        }
    }
}

impl Metrics {
    /// Registers every metric, a group at a time.
    fn new() -> Metrics {
        let registry = Registry::new_custom(Some("pulsewatch".into()), None).expect("valid registry");
        let StageIo {
            records_in,
            records_out,
            bytes_out,
            decode_errors,
            legacy_fingerprint,
            registry_unavailable,
            start_corrected,
            dlq_records,
            batch_seconds,
            record_latency_seconds,
            consumer_lag,
        } = StageIo::register(&registry);
        let Processor {
            alerts,
            transactions,
            tracked_apps,
            tracked_instances,
            restoring_partitions,
            restored_apps,
            replayed,
            state_bytes_out,
            clamped_beats,
        } = Processor::register(&registry);
        let Sink { sink_batch_rows, sink_held_rows, sink_retries, sink_skipped, sink_rejected, db_pool } =
            Sink::register(&registry);
        let Ingest { ingest_requests, ingest_request_seconds, ingest_beats, ingest_rejected } =
            Ingest::register(&registry);
        Metrics {
            registry,
            records_in,
            records_out,
            bytes_out,
            decode_errors,
            legacy_fingerprint,
            registry_unavailable,
            start_corrected,
            dlq_records,
            batch_seconds,
            record_latency_seconds,
            consumer_lag,
            alerts,
            transactions,
            tracked_apps,
            tracked_instances,
            restoring_partitions,
            restored_apps,
            replayed,
            state_bytes_out,
            clamped_beats,
            sink_batch_rows,
            sink_held_rows,
            sink_retries,
            sink_skipped,
            sink_rejected,
            db_pool,
            ingest_requests,
            ingest_request_seconds,
            ingest_beats,
            ingest_rejected,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
