//! `pulsewatch run` against what would stop or blind it: an HTTP address already taken, and
//! clients that hold connections open without finishing a request.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Pipeline, http_get};

#[test]
fn a_taken_http_address_stops_run_at_start_naming_the_key() {
    let config = common::isolated_config("robust-bind");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let started = Instant::now();
    let mut run = Pipeline::spawn(&config, "all", &[("PULSEWATCH_HTTP_LISTEN", &addr)]);
    let status = run.wait_exit(Duration::from_secs(20)).expect("pulsewatch exits by itself");
    assert!(!status.success(), "exit status: {status}");
    assert!(started.elapsed() < Duration::from_secs(10), "exited after {:?}", started.elapsed());
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert!(log.contains("http.listen") && log.contains(&addr), "the error names key and address: {log}");
    assert!(!log.contains("sink started") && !log.contains("processor started"), "no stage started: {log}");
}

#[test]
fn slow_and_idle_clients_do_not_keep_healthz_from_answering() {
    let config = common::prepare("robust-http");
    let run = Pipeline::start(
        &config,
        "all",
        &[
            ("PULSEWATCH_HTTP_HEADER_READ_TIMEOUT_MS", "500"),
            ("PULSEWATCH_HTTP_IDLE_TIMEOUT_MS", "5000"),
            ("PULSEWATCH_HTTP_MAX_CONNECTIONS", "8"),
        ],
    );
    assert_eq!(http_get(&run.http, "/healthz").map(|(code, _)| code), Some(200));

    // Half a request line, then nothing: cut off after the header-read timeout.
    let mut slow = TcpStream::connect(&run.http).unwrap();
    slow.write_all(b"GET /heal").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let since = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let took = since.elapsed();
    assert!(took < Duration::from_secs(3), "a slow client was held for {took:?}");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"), "{rest:?}");

    // More idle connections than the cap: the server drops them after the header-read
    // timeout, so a new client is answered while they are still held, and after.
    let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(&run.http).unwrap()).collect();
    let since = Instant::now();
    let answered = http_get(&run.http, "/healthz");
    assert_eq!(answered.as_ref().map(|(code, _)| *code), Some(200), "{answered:?}");
    assert!(since.elapsed() < Duration::from_secs(3), "answered after {:?}", since.elapsed());
    drop(idle);
    let answered = http_get(&run.http, "/healthz");
    assert_eq!(answered.as_ref().map(|(code, _)| *code), Some(200), "{answered:?}");
    run.stop();
}

/// The stall check reads the stages' real positions and partition ends: with a short stall
/// time and beats flowing, `/healthz` stays ok, and once the load stops it still does.
#[test]
fn healthz_stays_ok_while_a_live_load_flows() {
    use pulsewatch::loadgen::{self, LoadgenOptions};
    let config = common::prepare("robust-live");
    // Well above the stages' 10 s lag-check period, as the key's documentation asks.
    let run = Pipeline::start(&config, "all", &[("PULSEWATCH_HEALTH_STALL_AFTER_MS", "20000")]);
    let kafka = config.kafka.clone();
    let load = std::thread::spawn(move || {
        let opts = LoadgenOptions {
            apps: 20,
            interval: Duration::from_secs(1),
            duration: Some(Duration::from_secs(14)),
            progress: false,
            ..LoadgenOptions::default()
        };
        loadgen::run(&kafka, &opts).unwrap()
    });
    // Two lag checks of each stage (every 10 s) while beats flow, one after.
    let until = Instant::now() + Duration::from_secs(24);
    while Instant::now() < until {
        let answer = http_get(&run.http, "/healthz");
        assert_eq!(answer.as_ref().map(|(code, _)| *code), Some(200), "{answer:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(load.join().unwrap().beats_total > 0);
    run.stop();
}

/// A stage that has read a partition of transactional records to its end stands at the end
/// the lag check asks the broker for: the commit and abort markers behind the last record do
/// not count as records to read, or every caught-up sink partition would look stalled.
#[test]
fn a_partition_read_to_its_end_past_transaction_markers_has_nothing_pending() {
    use pulsewatch::health::HEALTH;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let config = common::prepare("robust-markers");
    let topic = config.kafka.name(pulsewatch::topology::names::ALERTS);
    let producer: BaseProducer =
        config.kafka.client_config().set("transactional.id", config.kafka.name("markers")).create().unwrap();
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).unwrap();
    for (round, commit) in [(0, true), (1, false), (2, true)] {
        producer.begin_transaction().unwrap();
        for partition in 0..3 {
            let record = BaseRecord::to(&topic).partition(partition).key("k").payload("v");
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(timeout).unwrap();
        if commit { producer.commit_transaction(timeout) } else { producer.abort_transaction(timeout) }
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    let consumer: BaseConsumer = config
        .kafka
        .client_config()
        .set("group.id", config.kafka.name("markers"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..3 {
        assignment.add_partition_offset(&topic, partition, rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let (mut read, mut at_end) = (0, std::collections::BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while at_end.len() < 3 && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(_)) => read += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            _ => {}
        }
    }
    assert_eq!((read, at_end.len()), (6, 3), "the committed records, then each partition's end");
    HEALTH.stage_running("markers-probe");
    pulsewatch::kafka::record_lag(&consumer, "markers-probe");
    let seen = HEALTH.partitions("markers-probe");
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (_, partition, observed) in &seen {
        assert_eq!(observed.position, observed.end, "partition {partition}: {observed:?}");
        assert_eq!(observed.end, 6, "three records and three markers in partition {partition}");
    }
}
