//! pulsewatch: an event-time stream processor on Apache Kafka that watches a fleet of
//! applications through their heartbeats.
//!
//! Module map, in layers. The contracts and the decisions use no module of the layers below
//! them: they know nothing of Kafka, PostgreSQL or the stages (one exception: decoding an
//! alert counts a legacy fingerprint in [`metrics`]).
//! - Contracts, the records on the wire: [`heartbeat`] (the record and its rules, its
//!   [`labels`]), [`codec`] (Avro and JSON on the wire), [`alert`] (the alert record, its id
//!   and Avro encoding), [`ack`] (an operator's acknowledgement of an alert), [`app_state`]
//!   (an application's snapshot and engine state), [`metrics_1m`] (one-minute rollups).
//! - Decisions, pure and clock-free: [`minute`] (event-time minutes), [`watermark`] (event
//!   time per partition), [`rules`] (thresholds, overrides, detection settings), [`trend`]
//!   (leak detection), [`engine`] (per-partition state, liveness timers, rollups, snapshots,
//!   explanations).
//! - Operators: [`api`] (the JSON API under `/api/v1`, its live events), [`dashboard`] (the
//!   pages at `/` and their charts, drawn as SVG on the server).
//! - Stages: [`processor`] (heartbeats in, alerts / rollups / snapshots out; its state
//!   rebuilt by [`restore`]), [`sink`] (topics into PostgreSQL, exactly once), [`ingest`]
//!   (heartbeats over HTTP), [`service`] (`pulsewatch run`), [`health`] (what `/healthz`
//!   judges), [`shutdown`].
//! - Adapters: [`config`] (its secrets hidden by [`redact`]), [`kafka`], [`assignment`] (the
//!   partitions a stage's consumer gains and loses), [`backoff`] (waiting before trying
//!   again), [`readback`] (a
//!   topic read back to its end), [`topology`] (the declared topics), [`registry`] (the
//!   Schema Registry), [`store`] (connection, migrations, partitions, what a failed statement
//!   means), [`dead_letter`] (records set aside), [`http`] and [`metrics`], [`logging`] (one
//!   line per event, whatever producers put in their ids), [`huge_pages`].
//! - Tools: [`loadgen`] (synthetic fleets with faults), [`tally`] (what a heartbeat topic
//!   holds), [`summary`] (what a run found beside the load's ground truth), [`evaluate`] (the
//!   leak detector scored on a labelled suite, beside a `predict_linear` baseline).
//!
//! The `pulsewatch` binary (`src/main.rs`) parses the command line and calls into these.

// Contracts
pub mod ack;
pub mod alert;
pub mod app_state;
pub mod codec;
pub mod heartbeat;
pub mod labels;
pub mod metrics_1m;

// Decisions
pub mod engine;
pub mod minute;
pub mod rules;
pub mod trend;
pub mod watermark;

// Stages
pub mod api;
pub mod dashboard;
pub mod health;
pub mod ingest;
pub mod processor;
pub mod restore;
pub mod service;
pub mod shutdown;
pub mod sink;

// Adapters
pub mod assignment;
pub mod backoff;
pub mod config;
pub mod dead_letter;
pub mod http;
pub mod huge_pages;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod readback;
pub mod redact;
pub mod registry;
pub mod store;
pub mod topology;

// Tools
pub mod evaluate;
pub mod loadgen;
pub mod summary;
pub mod tally;
