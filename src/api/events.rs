//! Live events: `GET /api/v1/events` streams alert transitions (topic `alerts`) and
//! acknowledgements (topic `alert-acks`) as Server-Sent Events, for pages that update
//! without a reload.
//!
//! One Kafka consumer per process ([`Events::follow`], a thread of its own) reads both topics
//! `read_committed` from the end they had when it started — new events only — and fans each
//! one out to every connected client through a tokio broadcast channel. It keeps the latest
//! [`RECENT`] events, so a client that reconnects with `Last-Event-ID` gets what it missed
//! meanwhile (ids are `<process start>-<sequence>`; an id from another process or older
//! than the kept events gets a `resync` event instead, telling the page to reload). A client
//! too slow to keep up gets `resync` too. Comments keep an idle stream alive.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use super::Api;
use super::queries::rfc3339;
use crate::ack::AlertAck;
use crate::alert::Alert;
use crate::config::KafkaConfig;
use crate::topology::names;

/// Events kept for clients that reconnect with `Last-Event-ID`.
pub const RECENT: usize = 1_024;
/// Period of the keep-alive comments on an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Longest a new client waits for the consumer to have found the topics' ends.
const POSITIONED_WITHIN: Duration = Duration::from_secs(10);
/// What the browser waits before it reconnects a broken stream.
const RETRY: Duration = Duration::from_secs(2);

/// One event as a client receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    /// The sequence number within this process.
    pub seq: u64,
    /// `alert` or `ack`.
    pub name: &'static str,
    pub data: Value,
}

/// The process's live events: the kept ones and the channel new ones go out on.
#[derive(Clone)]
pub struct Events(Arc<Shared>);

struct Shared {
    /// When this process's stream began, ms: the first part of each event id.
    boot: i64,
    recent: Mutex<Recent>,
    positioned: watch::Receiver<bool>,
    positioned_tx: watch::Sender<bool>,
}

struct Recent {
    next_seq: u64,
    kept: VecDeque<Arc<LiveEvent>>,
    sender: broadcast::Sender<Arc<LiveEvent>>,
}

/// What a new client receives first: the events it missed, then the live ones.
pub struct Subscription {
    pub missed: Vec<Arc<LiveEvent>>,
    /// The client's `Last-Event-ID` could not be honoured: it should reload.
    pub resync: bool,
    pub live: broadcast::Receiver<Arc<LiveEvent>>,
}

impl Default for Events {
    fn default() -> Events {
        Events::new()
    }
}

impl Events {
    /// A stream with no events yet and no consumer feeding it (see [`Events::follow`]).
    pub fn new() -> Events {
        let (sender, _) = broadcast::channel(RECENT);
        let (positioned_tx, positioned) = watch::channel(false);
        Events(Arc::new(Shared {
            boot: chrono::Utc::now().timestamp_millis(),
            recent: Mutex::new(Recent { next_seq: 1, kept: VecDeque::new(), sender }),
            positioned,
            positioned_tx,
        }))
    }

    /// Starts the process's consumer of `alerts` and `alert-acks` on a thread of its own; it
    /// ends once every handle of these events is dropped.
    pub fn follow(&self, kafka: &KafkaConfig) -> std::io::Result<()> {
        let follower = Follower {
            kafka: kafka.clone(),
            topics: [kafka.name(names::ALERTS), kafka.name(names::ALERT_ACKS)],
            events: Arc::downgrade(&self.0),
        };
        std::thread::Builder::new().name("api-events".into()).spawn(move || follower.run()).map(|_| ())
    }

    /// The id a client sees for event `seq`.
    pub fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.0.boot)
    }

    /// Sends `data` as event `name` to every client, and keeps it.
    pub fn publish(&self, name: &'static str, data: Value) {
        let mut recent = self.0.recent.lock().expect("events lock poisoned");
        let event = Arc::new(LiveEvent { seq: recent.next_seq, name, data });
        recent.next_seq += 1;
        if recent.kept.len() == RECENT {
            recent.kept.pop_front();
        }
        recent.kept.push_back(event.clone());
        // No client connected is no error.
        let _ = recent.sender.send(event);
    }

    /// Marks the consumer as positioned at the topics' ends: events from now on reach clients.
    fn positioned(&self) {
        self.0.positioned_tx.send_replace(true);
    }

    /// Waits (at most `within`) until the consumer knows where the topics end; whether it does.
    pub async fn wait_positioned(&self, within: Duration) -> bool {
        let mut positioned = self.0.positioned.clone();
        tokio::time::timeout(within, positioned.wait_for(|p| *p)).await.is_ok_and(|r| r.is_ok())
    }

    /// A new client, which last saw the event `last_event_id` (if any).
    pub fn subscribe(&self, last_event_id: Option<&str>) -> Subscription {
        let recent = self.0.recent.lock().expect("events lock poisoned");
        // Subscribed under the lock: nothing published between the kept events and the live ones.
        let live = recent.sender.subscribe();
        let Some(last) = last_event_id else {
            return Subscription { missed: Vec::new(), resync: false, live };
        };
        let seen = last
            .split_once('-')
            .filter(|(boot, _)| boot.parse() == Ok(self.0.boot))
            .and_then(|(_, seq)| seq.parse::<u64>().ok());
        let oldest_kept = recent.kept.front().map_or(recent.next_seq, |e| e.seq);
        match seen {
            // Every event after `seq` is still kept.
            Some(seq) if seq + 1 >= oldest_kept && seq < recent.next_seq => Subscription {
                missed: recent.kept.iter().filter(|e| e.seq > seq).cloned().collect(),
                resync: false,
                live,
            },
            _ => Subscription { missed: Vec::new(), resync: true, live },
        }
    }
}

/// An alert transition as the events carry it (the fields of `/api/v1/alerts`).
pub fn alert_json(alert: &Alert) -> Value {
    json!({
        "alert_id": alert.alert_id,
        "app_id": alert.app_id,
        "instance_id": alert.instance_id,
        "kind": alert.kind.as_str(),
        "severity": alert.severity.as_str(),
        "state": alert.state.as_str(),
        "started_at": ms(alert.started_at),
        "event_at": ms(alert.event_at),
        "value": alert.value,
        "threshold": alert.threshold,
        "summary": alert.summary,
        "evidence": alert.evidence,
        "recommendations": alert.recommendations,
    })
}

/// An acknowledgement as the events carry it (the fields of the acknowledgement's answer).
pub fn ack_json(ack: &AlertAck) -> Value {
    json!({
        "alert_id": ack.alert_id,
        "app_id": ack.app_id,
        "action": ack.action.as_str(),
        "by": ack.by,
        "note": ack.note,
        "at": ms(ack.at),
        "alert_started_at": ms(ack.alert_started_at),
    })
}

fn ms(t: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(t).map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// The consumer feeding [`Events`].
struct Follower {
    kafka: KafkaConfig,
    /// `alerts`, then `alert-acks`.
    topics: [String; 2],
    events: Weak<Shared>,
}

impl Follower {
    fn run(self) {
        let mut backoff = crate::backoff::Backoff::service();
        while self.events.strong_count() > 0 {
            match self.follow() {
                Ok(()) => return,
                Err(e) => {
                    let delay = backoff.failed();
                    tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "api events: reading the topics failed; retrying");
                    std::thread::sleep(delay);
                }
            }
        }
    }

    /// Assigns every partition of both topics at its end, then hands each record to the
    /// clients until the events are dropped.
    fn follow(&self) -> Result<(), KafkaError> {
        let consumer: BaseConsumer = self
            .kafka
            .client_config()
            .set("group.id", self.kafka.name("api-events"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for topic in &self.topics {
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Err(KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopic));
            }
            for p in partitions {
                let (_, end) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
                assignment.add_partition_offset(topic, p, Offset::Offset(end))?;
            }
        }
        consumer.assign(&assignment)?;
        let Some(events) = self.events.upgrade().map(Events) else { return Ok(()) };
        events.positioned();
        drop(events);
        loop {
            let Some(events) = self.events.upgrade().map(Events) else { return Ok(()) };
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message?;
                let payload = message.payload().unwrap_or_default();
                let decoded = if message.topic() == self.topics[0] {
                    Alert::decode(payload).map(|a| ("alert", alert_json(&a))).map_err(|e| e.to_string())
                } else {
                    AlertAck::decode(payload).map(|a| ("ack", ack_json(&a))).map_err(|e| e.to_string())
                };
                match decoded {
                    Ok((name, data)) => events.publish(name, data),
                    Err(e) => {
                        tracing::warn!(topic = message.topic(), offset = message.offset(), error = %e, "api events: a record skipped")
                    }
                }
            }
        }
    }
}

/// `GET /api/v1/events`: the stream, once the consumer knows where the topics end (so an
/// event that follows the response's headers reaches the client).
pub async fn stream(
    State(api): State<Api>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = api.events.clone();
    if !events.wait_positioned(POSITIONED_WITHIN).await {
        tracing::warn!("api events: the topics' ends are not known yet; a client connects anyway");
    }
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let subscription = events.subscribe(last);
    Sse::new(sse_events(events, subscription)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// The events of one client: a greeting comment, what it missed (or `resync`), then live.
fn sse_events(events: Events, s: Subscription) -> impl Stream<Item = Result<Event, Infallible>> {
    let first = Event::default().comment("connected").retry(RETRY);
    let mut opening = vec![first];
    if s.resync {
        opening.push(Event::default().event("resync").data("{}"));
    }
    opening.extend(s.missed.iter().map(|e| sse_event(&events, e)));
    let opening = futures::stream::iter(opening.into_iter().map(Ok));
    let live = futures::stream::unfold((events, s.live), |(events, mut live)| async move {
        let event = match live.recv().await {
            Ok(e) => sse_event(&events, &e),
            Err(broadcast::error::RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), (events, live)))
    });
    futures::StreamExt::chain(opening, live)
}

fn sse_event(events: &Events, e: &LiveEvent) -> Event {
    Event::default().id(events.id(e.seq)).event(e.name).data(e.data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(events: &[Arc<LiveEvent>]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn clients_get_new_events_and_what_they_missed_since_their_last_id() {
        let events = Events::new();
        let mut first = events.subscribe(None);
        events.publish("alert", json!({"n": 1}));
        events.publish("ack", json!({"n": 2}));
        assert_eq!(first.live.recv().await.unwrap().data, json!({"n": 1}));
        assert_eq!(first.live.recv().await.unwrap().name, "ack");
        let again = events.subscribe(Some(&events.id(1)));
        assert_eq!((seqs(&again.missed), again.resync), (vec![2], false));
        let current = events.subscribe(Some(&events.id(2)));
        assert_eq!((current.missed.len(), current.resync), (0, false));
    }

    #[test]
    fn an_id_of_another_process_or_too_old_asks_for_a_resync() {
        let events = Events::new();
        for n in 0..RECENT + 10 {
            events.publish("alert", json!(n));
        }
        assert!(events.subscribe(Some("1-3")).resync, "another process's id");
        assert!(events.subscribe(Some(&events.id(3))).resync, "no longer kept");
        assert!(events.subscribe(Some("garbage")).resync);
        let kept = events.subscribe(Some(&events.id(11)));
        assert_eq!((kept.resync, kept.missed.len()), (false, RECENT - 1));
        assert!(events.subscribe(Some(&events.id(99_999))).resync, "an id not given yet");
    }

    #[tokio::test]
    async fn a_new_client_waits_until_the_consumer_is_positioned() {
        let events = Events::new();
        assert!(!events.wait_positioned(Duration::from_millis(20)).await);
        events.positioned();
        assert!(events.wait_positioned(Duration::from_millis(20)).await);
    }
}
