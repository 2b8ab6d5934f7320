//! The ingest stage against the real Kafka (`scripts/stack up` first), served in this
//! process: single beats at 8, 64 and 256 concurrent kept-alive connections (p50 and p99
//! latency, requests/s), then batches of 500 beats at 4 and 16 connections (beats/s). Every
//! answer is a 202, given once the broker has the beats. The ceiling beside it: the same beats, Avro-encoded
//! beforehand, sent straight to Kafka by one producer with the ingest's settings.
//!
//! Run: `cargo bench --bench ingest` (PULSEWATCH_BENCH_SECONDS per measurement, default 5;
//! `-- batches` for the batches and their ceiling alone).
//! Under `cargo test` it runs each measurement for a moment.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pulsewatch::config::Config;
use pulsewatch::heartbeat::Heartbeat;
use pulsewatch::ingest::client::Client;
use pulsewatch::topology::{self, Topology};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

/// The allocator the `pulsewatch` binary runs with (src/main.rs), so that these figures are
/// the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let seconds: f64 = std::env::var("PULSEWATCH_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 5.0 } else { 0.3 });
    let span = Duration::from_secs_f64(seconds);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut config = Config::from_process(None).expect("a valid PULSEWATCH_* environment");
    let id = format!("{:08x}", rand::random::<u32>());
    config.kafka.topic_prefix = format!("bench-{id}-");
    config.ingest.listen = "127.0.0.1:0".into();
    rt.block_on(topology::apply(&config.kafka, &Topology::builtin()))
        .expect("Kafka reachable: start the local stack with scripts/stack up");
    let server = rt.block_on(pulsewatch::ingest::Server::bind(&config)).expect("the ingest starts");
    let url = format!("http://{}", server.listener.local_addr().unwrap());
    rt.spawn(server.serve());

    // `cargo bench --bench ingest -- batches` measures the batches alone.
    let batches_only = std::env::args().skip(1).any(|a| a == "batches");
    for connections in [8, 64, 256].into_iter().filter(|_| !batches_only) {
        let (mut latencies, secs) = singles(&url, connections, span);
        latencies.sort_unstable();
        println!(
            "single beats, {connections:>3} connections: p50 {:>7.2} ms  p99 {:>7.2} ms  {:>8.0} requests/s",
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.len() as f64 / secs
        );
    }
    // A request's answer waits for the broker's acknowledgement: with few connections the
    // rate is bound by those round trips, with more by the cores.
    let mut best: f64 = 0.0;
    for connections in [4, 16] {
        let (beats, secs) = batches(&url, connections, 500, span);
        let through_ingest = beats as f64 / secs;
        println!("batches of 500, {connections:>2} connections: {through_ingest:>8.0} beats/s");
        best = best.max(through_ingest);
    }
    let (records, secs) = straight_to_kafka(&config, span);
    let ceiling = records as f64 / secs;
    println!(
        "the same beats straight to Kafka: {ceiling:>8.0} beats/s (batches reach {:.2} of it)",
        best / ceiling
    );
    rt.block_on(topology::remove(&config.kafka, &Topology::builtin())).ok();
}

/// Latencies of single-beat requests sent by `connections` clients for `span`, and the
/// seconds they took.
fn singles(url: &str, connections: usize, span: Duration) -> (Vec<Duration>, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|c| {
            let (url, stop) = (url.to_owned(), stop.clone());
            std::thread::spawn(move || {
                let mut client = Client::new(&url, None).unwrap();
                let mut latencies = Vec::new();
                for seq in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let body = beat(&format!("single-{connections}-{c}"), seq);
                    let sent = Instant::now();
                    let answer = client.post("/v1/heartbeats", "application/json", &body).unwrap();
                    assert_eq!(answer.status, 202, "{}", answer.body);
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(span);
    stop.store(true, Ordering::Relaxed);
    let latencies = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    (latencies, started.elapsed().as_secs_f64())
}

/// Beats sent in NDJSON batches of `size` by `connections` clients for `span`, and the
/// seconds they took. Each client writes its body once and then only renews the beats' seq,
/// so that the machine's cores go to the server.
fn batches(url: &str, connections: usize, size: usize, span: Duration) -> (u64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|c| {
            let (url, stop) = (url.to_owned(), stop.clone());
            std::thread::spawn(move || {
                let mut client = Client::new(&url, None).unwrap();
                let mut body = BatchBody::new(c, size);
                let mut sent = 0u64;
                for round in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    body.renew(round);
                    let answer =
                        client.post("/v1/heartbeats/batch", "application/x-ndjson", &body.bytes).unwrap();
                    assert_eq!(answer.status, 202, "{}", answer.body);
                    sent += size as u64;
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(span);
    stop.store(true, Ordering::Relaxed);
    let beats = workers.into_iter().map(|w| w.join().unwrap()).sum();
    (beats, started.elapsed().as_secs_f64())
}

/// An NDJSON batch whose beats' seq are rewritten in place for each round.
struct BatchBody {
    bytes: Vec<u8>,
    /// Where each beat's seq (`SEQ_DIGITS` digits) starts.
    seqs: Vec<usize>,
}

/// A seq of this many digits: one more than any round reaches, so the width never changes.
const SEQ_DIGITS: usize = 10;

impl BatchBody {
    fn new(client: usize, size: usize) -> BatchBody {
        let (mut bytes, mut seqs) = (Vec::new(), Vec::new());
        let marker = 10i64.pow(SEQ_DIGITS as u32 - 1);
        for i in 0..size {
            let line = beat(&format!("batch-{client}-{i}"), marker);
            let digits = marker.to_string();
            let at = line
                .windows(SEQ_DIGITS)
                .position(|w| w == digits.as_bytes())
                .expect("the seq is in the JSON");
            seqs.push(bytes.len() + at);
            bytes.extend(line);
            bytes.push(b'\n');
        }
        BatchBody { bytes, seqs }
    }

    fn renew(&mut self, round: i64) {
        let seq = (10i64.pow(SEQ_DIGITS as u32 - 1) + round).to_string();
        for &at in &self.seqs {
            self.bytes[at..at + SEQ_DIGITS].copy_from_slice(seq.as_bytes());
        }
    }
}

/// The ceiling: records as the ingest stage writes them (Avro, keyed by app_id), encoded
/// beforehand, produced for `span` by one producer with the ingest's settings; how many the
/// broker acknowledged, and the seconds it took (the last ones' acknowledgements awaited).
fn straight_to_kafka(config: &Config, span: Duration) -> (u64, f64) {
    let timeout = Duration::from_millis(config.ingest.produce_timeout_ms);
    let producer: ThreadedProducer<Acknowledged> =
        pulsewatch::kafka::acknowledged_producer_config(&config.kafka, timeout)
            .create_with_context(Acknowledged::default())
            .expect("a producer");
    let topic = config.kafka.name(pulsewatch::topology::names::HEARTBEATS);
    let records: Vec<(String, Vec<u8>)> = (0..2_000)
        .map(|i| {
            let mut b = Heartbeat::example_full();
            (b.app_id, b.instance_id) = (format!("straight-{i}"), "i-0".to_owned());
            b.sent_at = chrono::Utc::now().timestamp_millis();
            (b.app_id.clone(), pulsewatch::codec::avro::encode(&b))
        })
        .collect();
    let started = Instant::now();
    'sending: loop {
        for (key, payload) in &records {
            if started.elapsed() >= span {
                break 'sending;
            }
            let mut record = BaseRecord::to(&topic).key(key.as_bytes()).payload(payload.as_slice());
            while let Err((e, back)) = producer.send(record) {
                assert!(matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)), "{e}");
                record = back;
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    producer.flush(timeout).expect("every record acknowledged");
    (producer.context().delivered.load(Ordering::Relaxed), started.elapsed().as_secs_f64())
}

/// Counts the records the broker acknowledged.
#[derive(Default)]
struct Acknowledged {
    delivered: AtomicU64,
}

impl ClientContext for Acknowledged {}

impl ProducerContext for Acknowledged {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_ok() {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A JSON beat of `app`, with the figures a web app sends.
fn beat(app: &str, seq: i64) -> Vec<u8> {
    let mut b = Heartbeat::example_full();
    (b.app_id, b.instance_id, b.seq) = (app.to_owned(), "i-0".to_owned(), seq);
    b.sent_at = chrono::Utc::now().timestamp_millis();
    pulsewatch::codec::json::encode(&b)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
