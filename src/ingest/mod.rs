//! The ingest stage (`pulsewatch run --stage ingest`, also part of `all`): heartbeats over
//! HTTP, validated as on `heartbeats`, produced there keyed by app_id and answered once the
//! broker has them.
//!
//! Stateless apart from a bounded memory of recent beats ([`dedup`]), so it scales behind
//! any load balancer. Served by [`crate::http::serve`], with `[http]`'s timeouts and
//! `ingest.max_connections`. [`routes`] has the routes and their answers, [`beats`] turns
//! bodies into beats, [`tokens`] says who may write what, [`publish`] talks to Kafka;
//! [`client`] is a small client for the load generator and the benchmark.

pub mod beats;
pub mod client;
pub mod dedup;
pub mod publish;
pub mod routes;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;

use crate::config::{Config, ConfigError};
use crate::heartbeat::Heartbeat;
use crate::http::Limits;
use crate::topology::names;
use dedup::{Claimed, Dedup};
use publish::{PublishError, Publisher};
use tokens::Tokens;

#[derive(Debug, Error)]
pub enum IngestError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("ingest.listen: cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("ingest: cannot create the Kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    #[error("ingest.tokens: {0}")]
    Tokens(#[from] globset::Error),
}

/// What the handlers share.
pub struct Ingest {
    pub tokens: Tokens,
    pub dedup: Dedup,
    pub publisher: Publisher,
    /// Most beats in one batch.
    pub max_batch: usize,
    /// How far a beat's `sent_at` may be from the wall clock.
    pub max_drift_ms: i64,
    /// `ingest_beats_total` by outcome, looked up once: every beat counts.
    counted: Counted,
}

/// The beat counters of [`Ingest::deliver`].
struct Counted {
    accepted: prometheus::IntCounter,
    duplicate: prometheus::IntCounter,
}

/// Whether a beat was produced now or had been already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    New,
    Duplicate,
}

impl Ingest {
    /// The stage's state for `config` (the producer connects lazily).
    pub fn new(config: &Config) -> Result<Ingest, IngestError> {
        let ingest = &config.ingest;
        let timeout = Duration::from_millis(ingest.produce_timeout_ms);
        let producer = crate::kafka::acknowledged_producer_config(&config.kafka, timeout)
            .create_with_context(publish::Deliveries)?;
        let topic = config.kafka.name(names::HEARTBEATS);
        Ok(Ingest {
            tokens: Tokens::new(&ingest.tokens)?,
            dedup: Dedup::new(ingest.dedup_capacity, Duration::from_millis(ingest.dedup_ttl_ms)),
            publisher: Publisher::new(producer, topic, ingest.max_in_flight, timeout),
            max_batch: ingest.max_batch,
            max_drift_ms: config.input.max_sent_at_drift_ms,
            counted: Counted {
                accepted: crate::metrics::METRICS.ingest_beats.with_label_values(&["accepted"]),
                duplicate: crate::metrics::METRICS.ingest_beats.with_label_values(&["duplicate"]),
            },
        })
    }

    /// At a stop: waits for the beats in flight (refusing new ones) and flushes the producer.
    pub async fn stop(&self) {
        if self.publisher.drain().await {
            tracing::info!("ingest: every beat in flight answered");
        } else {
            tracing::warn!("ingest: stopped with beats still unacknowledged by the broker");
        }
    }

    /// How beats are judged now.
    pub fn judge(&self) -> beats::Judge {
        beats::Judge { now_ms: chrono::Utc::now().timestamp_millis(), max_drift_ms: self.max_drift_ms }
    }

    /// Publishes `beat` unless the same (app_id, instance_id, seq) was published recently.
    pub async fn deliver(&self, beat: &Heartbeat) -> Result<Delivered, PublishError> {
        let key = self.dedup.key(&beat.app_id, &beat.instance_id, beat.seq);
        let Some(claim) = self.dedup.claim(key).await else {
            self.counted.duplicate.inc();
            return Ok(Delivered::Duplicate);
        };
        let published = self.publisher.publish(&[beat]).await.pop().expect("one outcome per beat");
        claim.finish([published.is_ok()]);
        published?;
        self.counted.accepted.inc();
        Ok(Delivered::New)
    }

    /// Delivers `beats` as [`Ingest::deliver`] does each, producing together those not
    /// claimed elsewhere: their outcomes, in order.
    pub async fn deliver_batch(&self, beats: &[Heartbeat]) -> Vec<Result<Delivered, PublishError>> {
        let mut claims = self.dedup.claims();
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        let mut outcomes = Vec::with_capacity(beats.len());
        for (index, beat) in beats.iter().enumerate() {
            match claims.claim(self.dedup.key(&beat.app_id, &beat.instance_id, beat.seq)) {
                Claimed::Mine => mine.push(index),
                Claimed::Delivered => {}
                Claimed::Theirs(_) => theirs.push(index),
            }
            // Duplicate until told otherwise below.
            outcomes.push(Ok(Delivered::Duplicate));
        }
        let produced: Vec<&Heartbeat> = mine.iter().map(|&i| &beats[i]).collect();
        let published = self.publisher.publish(&produced).await;
        claims.finish(published.iter().map(Result::is_ok));
        self.counted.accepted.inc_by(published.iter().filter(|p| p.is_ok()).count() as u64);
        self.counted.duplicate.inc_by((beats.len() - mine.len() - theirs.len()) as u64);
        for (&index, result) in mine.iter().zip(published) {
            outcomes[index] = result.map(|()| Delivered::New);
        }
        // Claimed by another request, or twice in this one: once that attempt is settled, all
        // together, so that a request waits for at most one more produce, not one per beat.
        let settled = futures::future::join_all(theirs.iter().map(|&i| self.deliver(&beats[i]))).await;
        for (index, result) in theirs.into_iter().zip(settled) {
            outcomes[index] = result;
        }
        outcomes
    }
}

/// The stage, bound and ready to serve.
pub struct Server {
    /// What the handlers share; [`Ingest::stop`] drains it.
    pub state: Arc<Ingest>,
    pub listener: TcpListener,
    pub app: axum::Router,
    pub limits: Limits,
}

impl Server {
    /// Checks the exposure rule, builds the state and binds `ingest.listen`.
    pub async fn bind(config: &Config) -> Result<Server, IngestError> {
        config.ingest.check_exposure()?;
        let state = Arc::new(Ingest::new(config)?);
        let addr: SocketAddr = config.ingest.listen.parse().expect("validated by Config::validate");
        let listener = TcpListener::bind(addr).await.map_err(|source| IngestError::Bind { addr, source })?;
        let limits = Limits { max_connections: config.ingest.max_connections, ..Limits::of(&config.http) };
        let app = routes::router(state.clone(), config.ingest.max_body_bytes);
        Ok(Server { state, listener, app, limits })
    }

    /// Serves until the future is dropped.
    pub async fn serve(self) {
        crate::http::serve(self.listener, self.app, self.limits).await
    }
}
