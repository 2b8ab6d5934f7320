//! Shared helpers for the integration tests: reaching the real stack started by
//! `scripts/stack up`, and giving each test its own topics and schema.
#![allow(dead_code)]

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use pulsewatch::config::Config;

/// A config pointing at the local stack, with a topic prefix and schema of this test's own.
pub fn isolated_config(test: &str) -> Config {
    let mut config = Config::load(
        None,
        std::env::vars().filter(|(k, _)| {
            k.starts_with("PULSEWATCH_")
                && k != "PULSEWATCH_KAFKA_TOPIC_PREFIX"
                && k != "PULSEWATCH_POSTGRES_SCHEMA"
        }),
    )
    .expect("the PULSEWATCH_* environment is a valid config");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let tag = format!("{}_{}", test.replace('-', "_"), &id[..8]);
    config.kafka.topic_prefix = format!("it-{}-", tag.replace('_', "-"));
    config.postgres.schema = format!("it_{tag}").to_lowercase();
    require_stack(&config);
    config
}

/// Fails, saying how to start the stack, when Kafka or PostgreSQL cannot be reached.
pub fn require_stack(config: &Config) {
    let broker = config.kafka.brokers.split(',').next().unwrap_or_default().trim().to_owned();
    reachable("Kafka", &broker);
    let pg: tokio_postgres::Config = config.postgres.url.parse().expect("valid postgres url");
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    reachable("PostgreSQL", &format!("{host}:{port}"));
}

fn reachable(what: &str, addr: &str) {
    let ok = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
    assert!(
        ok,
        "cannot reach {what} at {addr}: start the local stack with `scripts/stack up` \
         (or run the whole suite with `scripts/test`), or point PULSEWATCH_KAFKA_BROKERS / \
         PULSEWATCH_POSTGRES_URL at a running one"
    );
}

/// A multi-threaded runtime for tests that mix blocking Kafka calls and async code.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}
