//! Where the load generator's beats go: straight to `heartbeats` with a Kafka producer, or
//! over HTTP to an ingest stage (`--via http URL`) in NDJSON batches.
//!
//! Over HTTP a batch answered 429 or 503 is posted again after a pause: the ingest answers
//! a beat it already produced as a duplicate, so a retry adds nothing twice. Poison records
//! are not sent that way: the ingest refuses them at the door, they never reach the topic.

use std::time::{Duration, Instant};

use rdkafka::producer::Producer;

use super::LoadgenError;
use crate::codec::{self, Encoding};
use crate::config::KafkaConfig;
use crate::heartbeat::Heartbeat;
use crate::ingest::client::Client;
use crate::kafka::{self, TrackedProducer};

/// The way in the load generator uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Via {
    /// A Kafka producer, as any producer of the fleet.
    #[default]
    Kafka,
    /// The ingest stage at `url` (`http://host:port`), with a bearer token if given, in
    /// batches of `batch` beats (at most the stage's `ingest.max_batch`).
    Http { url: String, token: Option<String>, batch: usize },
}

/// Beats per HTTP batch unless told.
pub const HTTP_BATCH: usize = 500;
/// Longest a batch is retried while the ingest answers 429 or 503.
const HTTP_RETRY_FOR: Duration = Duration::from_secs(120);

/// An open way in.
pub enum Outlet {
    Kafka {
        producer: TrackedProducer,
        topic: String,
    },
    Http(HttpOutlet),
    /// Kept in memory, in the order sent: the offline evaluation's way in.
    Memory(Vec<Heartbeat>),
}

/// Beats gathered into the next NDJSON batch, and the client that posts them.
pub struct HttpOutlet {
    client: Client,
    pending: Vec<u8>,
    beats: usize,
    /// Beats per batch.
    batch: usize,
    delivered: u64,
}

impl Outlet {
    pub fn open(kafka: &KafkaConfig, topic: String, via: &Via) -> Result<Outlet, LoadgenError> {
        Ok(match via {
            Via::Kafka => Outlet::Kafka { producer: kafka::producer(kafka)?, topic },
            Via::Http { url, token, batch } => Outlet::Http(HttpOutlet {
                client: Client::new(url, token.as_deref()).map_err(|e| LoadgenError::Http(e.to_string()))?,
                pending: Vec::new(),
                beats: 0,
                batch: (*batch).max(1),
                delivered: 0,
            }),
        })
    }

    /// Sends (or gathers) one beat.
    pub fn send_beat(&mut self, beat: &Heartbeat, encoding: Encoding) -> Result<(), LoadgenError> {
        match self {
            Outlet::Kafka { producer, topic } => {
                Ok(kafka::send(producer, topic, &beat.app_id, &codec::encode(beat, encoding), None)?)
            }
            Outlet::Http(http) => http.push(beat),
            Outlet::Memory(beats) => {
                beats.push(beat.clone());
                Ok(())
            }
        }
    }

    /// Sends a poison record; whether it was sent (never over HTTP).
    pub fn send_poison(&mut self, key: &str, bytes: &[u8]) -> Result<bool, LoadgenError> {
        match self {
            Outlet::Kafka { producer, topic } => {
                kafka::send(producer, topic, key, bytes, None)?;
                Ok(true)
            }
            Outlet::Http(_) | Outlet::Memory(_) => Ok(false),
        }
    }

    /// Waits `pause`, serving Kafka's callbacks first, or posting what is gathered first.
    pub fn wait(&mut self, pause: Duration) -> Result<(), LoadgenError> {
        match self {
            // Not `poll(pause)`: the client's poll spins through the deadline's last
            // millisecond, and a live fleet waits a millisecond at a time.
            Outlet::Kafka { producer, .. } => {
                producer.poll(Duration::ZERO);
                std::thread::sleep(pause);
            }
            Outlet::Http(http) => {
                http.flush()?;
                std::thread::sleep(pause);
            }
            Outlet::Memory(_) => std::thread::sleep(pause),
        }
        Ok(())
    }

    /// Serves Kafka's delivery callbacks without waiting.
    pub fn serve(&self) {
        if let Outlet::Kafka { producer, .. } = self {
            producer.poll(Duration::ZERO);
        }
    }

    /// Sends what is pending and returns how many records the destination acknowledged.
    pub fn finish(self) -> Result<u64, LoadgenError> {
        match self {
            Outlet::Kafka { producer, .. } => {
                producer.flush(Duration::from_secs(120))?;
                let tracker = producer.context();
                if tracker.failed() > 0 {
                    let first = tracker.first_error().unwrap_or_default();
                    return Err(LoadgenError::Undelivered { failed: tracker.failed(), first });
                }
                Ok(tracker.delivered())
            }
            Outlet::Http(mut http) => {
                http.flush()?;
                Ok(http.delivered)
            }
            Outlet::Memory(beats) => Ok(beats.len() as u64),
        }
    }
}

impl HttpOutlet {
    fn push(&mut self, beat: &Heartbeat) -> Result<(), LoadgenError> {
        self.pending.extend_from_slice(&codec::json::encode(beat));
        self.pending.push(b'\n');
        self.beats += 1;
        if self.beats >= self.batch { self.flush() } else { Ok(()) }
    }

    /// Posts the gathered batch, again while the ingest answers 429 or 503.
    fn flush(&mut self) -> Result<(), LoadgenError> {
        if self.beats == 0 {
            return Ok(());
        }
        let deadline = Instant::now() + HTTP_RETRY_FOR;
        let mut pause = Duration::from_millis(100);
        loop {
            let answer = self
                .client
                .post("/v1/heartbeats/batch", "application/x-ndjson", &self.pending)
                .map_err(|e| LoadgenError::Http(e.to_string()))?;
            match answer.status {
                202 => return self.delivered_all(&answer.body),
                429 | 503 if Instant::now() + pause < deadline => {
                    std::thread::sleep(answer.retry_after.map_or(pause, Duration::from_secs).max(pause));
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                status => return Err(LoadgenError::Http(format!("answered {status}: {}", answer.body))),
            }
        }
    }

    /// Counts the batch delivered, unless the ingest refused some of its beats.
    fn delivered_all(&mut self, body: &str) -> Result<(), LoadgenError> {
        let answer: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        if answer["rejected"].as_array().is_some_and(|r| !r.is_empty()) {
            return Err(LoadgenError::Http(format!("beats refused: {}", answer["rejected"])));
        }
        self.delivered += self.beats as u64;
        self.pending.clear();
        self.beats = 0;
        Ok(())
    }
}
