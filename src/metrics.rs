//! Prometheus metrics of the stages, registered once in a registry of their own and served
//! by [`crate::http`] on `/metrics`.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric pulsewatch exports.
pub struct Metrics {
    pub registry: Registry,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub decode_errors: IntCounterVec,
    /// Avro records read whose header carries apache-avro's fingerprint, by schema.
    pub legacy_fingerprint: IntCounterVec,
    pub registry_unavailable: IntCounterVec,
    /// Partitions the consumer started below their committed offset, put back to it.
    pub start_corrected: IntCounterVec,
    pub dlq_records: IntCounterVec,
    pub alerts: IntCounterVec,
    pub batch_seconds: HistogramVec,
    pub record_latency_seconds: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub tracked_apps: IntGauge,
    pub restoring_partitions: IntGauge,
    pub restored_apps: IntCounterVec,
    pub tracked_instances: IntGauge,
    pub clamped_beats: IntGauge,
    pub sink_batch_rows: Histogram,
    pub sink_held_rows: IntGauge,
    pub sink_retries: IntCounterVec,
    pub sink_skipped: IntCounterVec,
    /// Records the sink set aside on the dead-letter topic instead of storing them.
    pub sink_rejected: IntCounterVec,
    pub db_pool: IntGaugeVec,
    pub transactions: IntCounterVec,
    /// Ingest requests, by route and status.
    pub ingest_requests: IntCounterVec,
    pub ingest_request_seconds: HistogramVec,
    /// Ingest beats accepted (produced) or answered as duplicates of a recent one.
    pub ingest_beats: IntCounterVec,
    /// Ingest beats refused, by error code.
    pub ingest_rejected: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("registered once");
    g
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new_custom(Some("pulsewatch".into()), None).expect("valid registry");
        let buckets = prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets");
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new("batch_seconds", "Time to process and commit one batch, by stage")
                .buckets(buckets.clone()),
            &["stage"],
        )
        .expect("valid metric");
        registry.register(Box::new(batch_seconds.clone())).expect("registered once");
        let record_latency_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "record_latency_seconds",
                "Wall time from a heartbeat's broker timestamp to the commit of what it caused",
            )
            .buckets(buckets.clone()),
        )
        .expect("valid metric");
        registry.register(Box::new(record_latency_seconds.clone())).expect("registered once");
        let sink_batch_rows = Histogram::with_opts(
            HistogramOpts::new("sink_batch_rows", "Rows written per sink transaction")
                .buckets(prometheus::exponential_buckets(1.0, 4.0, 10).expect("valid buckets")),
        )
        .expect("valid metric");
        registry.register(Box::new(sink_batch_rows.clone())).expect("registered once");
        let consumer_lag = IntGaugeVec::new(
            Opts::new("consumer_lag", "Records behind the partition's end"),
            &["stage", "topic", "partition"],
        )
        .expect("valid metric");
        registry.register(Box::new(consumer_lag.clone())).expect("registered once");
        let db_pool =
            IntGaugeVec::new(Opts::new("db_pool", "PostgreSQL pool: size, available, waiting"), &["state"])
                .expect("valid metric");
        registry.register(Box::new(db_pool.clone())).expect("registered once");
        let ingest_request_seconds = HistogramVec::new(
            HistogramOpts::new("ingest_request_seconds", "Ingest request latency, by route")
                .buckets(buckets.clone()),
            &["route"],
        )
        .expect("valid metric");
        registry.register(Box::new(ingest_request_seconds.clone())).expect("registered once");
        Metrics {
            ingest_requests: counter(
                &registry,
                "ingest_requests_total",
                "Ingest requests, by route and status",
                &["route", "status"],
            ),
            ingest_request_seconds,
            ingest_beats: counter(
                &registry,
                "ingest_beats_total",
                "Ingest beats, by outcome (accepted: produced; duplicate: a retry of a beat already produced)",
                &["outcome"],
            ),
            ingest_rejected: counter(
                &registry,
                "ingest_rejected_beats_total",
                "Ingest beats refused, by error code",
                &["code"],
            ),
            transactions: counter(
                &registry,
                "transactions_total",
                "Processor transactions, by outcome (committed, aborted; commit_resumed counts commits resumed after a timeout)",
                &["outcome"],
            ),
            records_in: counter(
                &registry,
                "records_in_total",
                "Records consumed, by stage and topic",
                &["stage", "topic"],
            ),
            records_out: counter(
                &registry,
                "records_out_total",
                "Records produced or rows written, by destination",
                &["stage", "destination"],
            ),
            decode_errors: counter(
                &registry,
                "decode_errors_total",
                "Heartbeats rejected, by error code",
                &["code"],
            ),
            legacy_fingerprint: counter(
                &registry,
                "legacy_fingerprint_records_total",
                "Avro records read with the fingerprint apache-avro 0.21 computed instead of the specification's, by schema",
                &["schema"],
            ),
            start_corrected: counter(
                &registry,
                "partition_start_corrected_total",
                "Partitions taken over whose first record lay below the committed offset (the client fell back to auto.offset.reset), sought back to it, by stage",
                &["stage"],
            ),
            registry_unavailable: counter(
                &registry,
                "schema_registry_unavailable_total",
                "Times a stage paused because the schema registry could not give a record's writer schema, by stage",
                &["stage"],
            ),
            dlq_records: counter(
                &registry,
                "dlq_records_total",
                "Records sent to the dead-letter topic, by error code",
                &["code"],
            ),
            alerts: counter(
                &registry,
                "alerts_total",
                "Alert transitions published, by kind, severity and state",
                &["kind", "severity", "state"],
            ),
            sink_retries: counter(
                &registry,
                "sink_retries_total",
                "Sink transactions retried, by reason",
                &["reason"],
            ),
            sink_skipped: counter(
                &registry,
                "sink_skipped_total",
                "Records the sink could not decode and did not store (invalid heartbeats are the processor's to dead-letter), by topic",
                &["topic"],
            ),
            sink_rejected: counter(
                &registry,
                "sink_rejected_records_total",
                "Records the sink set aside on the dead-letter topic instead of storing them, by topic and code (store_rejected: PostgreSQL refused the row's content; outside_retention: a day outside its table's retention window)",
                &["topic", "code"],
            ),
            tracked_apps: gauge(&registry, "tracked_apps", "Applications in the processor's state"),
            restoring_partitions: gauge(
                &registry,
                "restoring_partitions",
                "Partitions whose state the processor is rebuilding from app-state (not ready meanwhile)",
            ),
            restored_apps: counter(
                &registry,
                "restored_apps_total",
                "Applications rebuilt from app-state",
                &[],
            ),
            tracked_instances: gauge(&registry, "tracked_instances", "Instances in the processor's state"),
            clamped_beats: gauge(
                &registry,
                "clamped_beats",
                "Beats whose event time was clamped for the watermark (clock ahead)",
            ),
            batch_seconds,
            record_latency_seconds,
            consumer_lag,
            sink_batch_rows,
            sink_held_rows: gauge(
                &registry,
                "sink_held_rows",
                "Rows of the one batch the sink holds while it retries a failed write (its partitions paused)",
            ),
            db_pool,
            registry,
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
