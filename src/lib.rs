//! pulsewatch: an event-time stream processor on Apache Kafka that watches a fleet of
//! applications through their heartbeats.
//!
//! Module map:
//! - Contracts: [`heartbeat`] (the record and its rules, its [`labels`]), [`codec`] (Avro and
//!   JSON on the wire), [`alert`] (the alert record, its id and Avro encoding), [`ack`] (an
//!   operator's acknowledgement of an alert).
//! - Decisions, pure and clock-free: [`watermark`] (event time per partition), [`rules`]
//!   (thresholds, overrides), [`engine`] (per-partition state, liveness timers, rollups,
//!   snapshots, explanations).
//! - Operators: [`api`] (the JSON API under `/api/v1`).
//! - Stages: [`processor`] (heartbeats in, alerts / rollups / snapshots out), [`sink`]
//!   (topics into PostgreSQL, exactly once), [`ingest`] (heartbeats over HTTP),
//!   [`service`] (`pulsewatch run`), [`http`] and
//!   [`metrics`], [`health`] (what `/healthz` judges), [`shutdown`].
//! - Plumbing: [`config`] (its secrets hidden by [`redact`]), [`kafka`], [`assignment`]
//!   (the partitions a stage's consumer gains and loses), [`backoff`], [`topology`],
//!   [`store`] (connection, migrations, partitions, what a failed statement means),
//!   [`dead_letter`] (records set aside), [`logging`] (one line per event, whatever
//!   producers put in their ids).
//! - Tools: [`loadgen`] (synthetic fleets with faults), [`tally`] (read a topic back),
//!   [`summary`] (what a run found beside the load's ground truth), [`evaluate`] (the leak
//!   detector scored on a labelled suite, beside a `predict_linear` baseline).
pub mod ack;
pub mod alert;
pub mod api;
pub mod assignment;
pub mod backoff;
pub mod codec;
pub mod config;
pub mod dead_letter;
pub mod engine;
pub mod evaluate;
pub mod health;
pub mod heartbeat;
pub mod http;
pub mod huge_pages;
pub mod ingest;
pub mod kafka;
pub mod labels;
pub mod loadgen;
pub mod logging;
pub mod metrics;
pub mod processor;
pub mod redact;
pub mod registry;
pub mod restore;
pub mod rules;
pub mod service;
pub mod shutdown;
pub mod sink;
pub mod store;
pub mod summary;
pub mod tally;
pub mod topology;
pub mod trend;
pub mod watermark;

/// The allocator of every program built on this library (the `pulsewatch` binary, its
/// benches and tests): the engine allocates and frees small objects per beat, and a restore
/// builds millions of them. Measured with `cargo bench --bench engine`: a round of a
/// 1,000-application fleet takes ≈ 2.3 ms instead of ≈ 4.3 ms with the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
