//! pulsewatch: an event-time stream processor on Apache Kafka that watches a fleet of
//! applications through their heartbeats.
//!
//! Module map:
//! - [`heartbeat`]: the heartbeat record and its validation rules.
//! - [`codec`]: Avro single-object and JSON encodings on the wire.
//! - [`config`]: the validated configuration (file, then environment).
//! - [`topology`]: the declared Kafka topics, their creation and drift.
//! - [`store`]: PostgreSQL connection, migrations and time partitions.
pub mod alert;
pub mod codec;
pub mod config;
pub mod engine;
pub mod heartbeat;
pub mod http;
pub mod kafka;
pub mod loadgen;
pub mod metrics;
pub mod processor;
pub mod rules;
pub mod service;
pub mod shutdown;
pub mod sink;
pub mod store;
pub mod tally;
pub mod topology;
pub mod watermark;
