//! What a batch of the sink holds: the decoded rows of each table, with the records they
//! came from (should the database refuse one), the records set aside, and the offsets the
//! batch covers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use chrono::{DateTime, NaiveDate, Utc};
use rdkafka::message::{BorrowedMessage, Message};

use super::OUTSIDE_RETENTION;
use super::decode::Decoded;
use crate::ack::AlertAck;
use crate::alert::Alert;
use crate::app_state::AppSnapshot;
use crate::config::RetentionConfig;
use crate::dead_letter::{DeadLetter, Record};
use crate::heartbeat::Heartbeat;
use crate::metrics_1m::Rollup;
use crate::store::partitions::{self, Window};

/// (topic, partition) → (offset a batch starts from, next offset after it).
pub type OffsetRanges = BTreeMap<(String, i32), (i64, i64)>;

/// Where a row's record came from, and the record as it was: should the database refuse the
/// row, the record goes to the dead-letter topic.
pub struct Source {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl Source {
    pub fn of(msg: &BorrowedMessage<'_>) -> Source {
        Source {
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().unwrap_or_default().to_vec(),
        }
    }

    pub fn dead_letter(&self, topic: &str, code: &'static str, message: String) -> DeadLetter {
        let record = Record {
            topic,
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key.as_deref(),
            payload: &self.payload,
        };
        DeadLetter::new(record, code, message)
    }
}

/// A decoded record on its way to its table.
pub struct Row<T> {
    pub value: T,
    pub source: Source,
}

/// The retention windows of the daily tables, as of a batch's first record.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub beats: Window,
    pub rollups: Window,
}

impl Windows {
    pub fn on(today: NaiveDate, retention: &RetentionConfig) -> Windows {
        let [raw, rollup, _] = partitions::plans(retention);
        Windows {
            beats: Window::of(&raw, today, retention.days_ahead),
            rollups: Window::of(&rollup, today, retention.days_ahead),
        }
    }
}

/// The rows of one transaction, the records set aside, and the offsets they cover.
#[derive(Default)]
pub struct Batch {
    pub beats: Vec<Row<Heartbeat>>,
    pub alerts: Vec<Row<Alert>>,
    pub rollups: BTreeMap<(String, i64), Row<Rollup>>,
    pub apps: BTreeMap<String, Row<AppSnapshot>>,
    pub acks: Vec<Row<AlertAck>>,
    /// Records set aside before writing (outside the retention window).
    pub dead_letters: Vec<DeadLetter>,
    /// The dead letters of this batch the broker has acknowledged, by (topic, partition,
    /// offset): a write retried after a failed commit does not send them again.
    pub sent: BTreeSet<(String, i32, i64)>,
    pub windows: Option<Windows>,
    pub ranges: OffsetRanges,
    pub first_at: Option<Instant>,
}

impl Batch {
    pub fn rows(&self) -> usize {
        self.beats.len() + self.alerts.len() + self.rollups.len() + self.apps.len() + self.acks.len()
    }

    /// Rows and records set aside: what the batch holds in memory.
    pub fn records(&self) -> usize {
        self.rows() + self.dead_letters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

pub fn millis(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t).unwrap_or_default()
}

/// Puts a decoded record in the batch, or among its dead letters if its day is outside its
/// table's retention window: such a row would create a partition nothing ever drops.
pub fn place(msg: &BorrowedMessage<'_>, decoded: Decoded, batch: &mut Batch, retention: &RetentionConfig) {
    let windows = *batch.windows.get_or_insert_with(|| Windows::on(Utc::now().date_naive(), retention));
    let outside = |table: &str, day: NaiveDate, window: &Window, setting: (&str, u32)| {
        let message = format!(
            "{table} takes the days {window} (retention.{} = {}, retention.days_ahead = {}): the row's day {day} is outside them",
            setting.0, setting.1, retention.days_ahead
        );
        DeadLetter::of(msg, OUTSIDE_RETENTION, message)
    };
    match decoded {
        Decoded::Beat(beat) => {
            let day = millis(beat.sent_at).date_naive();
            if windows.beats.contains(day) {
                batch.beats.push(Row { value: beat, source: Source::of(msg) });
            } else {
                let setting = ("raw_days", retention.raw_days);
                batch.dead_letters.push(outside("heartbeat_event", day, &windows.beats, setting));
            }
        }
        Decoded::Rollup(rollup) => {
            let day = millis(rollup.minute).date_naive();
            if windows.rollups.contains(day) {
                let key = (rollup.app_id.clone(), rollup.minute);
                batch.rollups.insert(key, Row { value: rollup, source: Source::of(msg) });
            } else {
                let setting = ("rollup_days", retention.rollup_days);
                batch.dead_letters.push(outside("metric_rollup_1m", day, &windows.rollups, setting));
            }
        }
        Decoded::Alert(alert) => batch.alerts.push(Row { value: alert, source: Source::of(msg) }),
        Decoded::App(app) => {
            batch.apps.insert(app.app_id.clone(), Row { value: app, source: Source::of(msg) });
        }
        Decoded::Ack(ack) => batch.acks.push(Row { value: ack, source: Source::of(msg) }),
        Decoded::EngineOnly => {}
    }
}
