//! pulsewatch: an event-time stream processor on Apache Kafka that watches a fleet of
//! applications through their heartbeats.
//!
//! Module map:
//! - Contracts: [`heartbeat`] (the record and its rules, its [`labels`]), [`codec`] (Avro and
//!   JSON on the wire), [`alert`] (the alert record, its id and Avro encoding).
//! - Decisions, pure and clock-free: [`watermark`] (event time per partition), [`rules`]
//!   (thresholds, overrides), [`engine`] (per-partition state, liveness timers, rollups,
//!   snapshots, explanations).
//! - Stages: [`processor`] (heartbeats in, alerts / rollups / snapshots out), [`sink`]
//!   (topics into PostgreSQL, exactly once), [`ingest`] (heartbeats over HTTP),
//!   [`service`] (`pulsewatch run`), [`http`] and
//!   [`metrics`], [`health`] (what `/healthz` judges), [`shutdown`].
//! - Plumbing: [`config`] (its secrets hidden by [`redact`]), [`kafka`], [`topology`],
//!   [`store`] (connection, migrations, partitions, what a failed statement means),
//!   [`dead_letter`] (records set aside), [`logging`] (one line per event, whatever
//!   producers put in their ids).
//! - Tools: [`loadgen`] (synthetic fleets with faults), [`tally`] (read a topic back),
//!   [`summary`] (what a run found beside the load's ground truth), [`evaluate`] (the leak
//!   detector scored on a labelled suite, beside a `predict_linear` baseline).
pub mod alert;
pub mod app_state;
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
pub mod metrics_1m;
pub mod minute;
pub mod processor;
pub mod readback;
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
