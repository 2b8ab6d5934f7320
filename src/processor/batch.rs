//! What a batch of the processor has read and decided, held per partition until its
//! transaction.

use std::collections::BTreeMap;

use crate::app_state::StateRecordOut;
use crate::dead_letter::DeadLetter;
use crate::engine::Effect;
use crate::heartbeat::Heartbeat;

/// What the poll loop read for a partition's engine: applied in order at the batch's end
/// (see [`super::apply`]).
// Nearly every event is a beat: boxing it would cost an allocation per beat.
#[allow(clippy::large_enum_variant)]
pub enum Pending {
    /// A valid beat, with its offset, its broker timestamp and the wall clock it was read at.
    Beat { beat: Heartbeat, offset: i64, broker_ms: Option<i64>, wall: i64 },
    /// The partition was read to its end at this wall clock.
    End { wall: i64 },
    /// A record that is no beat (its dead letter goes with the batch), read at this offset.
    Skipped { offset: i64, wall: i64 },
}

/// What a batch has read and decided, held per partition until its transaction. A partition
/// revoked before then loses its share: its next owner reads those records again from the
/// committed offset, so nothing of it may be committed here.
#[derive(Default)]
pub struct Batch {
    /// What each partition's engine is still to be given, in the order it was read.
    pub pending: BTreeMap<i32, Vec<Pending>>,
    /// Alerts and rollups decided, per partition.
    pub effects: BTreeMap<i32, Vec<Effect>>,
    /// The app-state records of the applications the batch changed, per partition.
    pub state_records: BTreeMap<i32, Vec<StateRecordOut>>,
    pub dead_letters: Vec<DeadLetter>,
    /// When each record read arrived (its broker time, or the wall clock): the end-to-end
    /// latency is measured from there once the batch commits.
    pub arrivals: Vec<i64>,
    /// Records read.
    pub records: usize,
}

impl Batch {
    /// Holds `event` for `partition`'s engine.
    pub fn hold(&mut self, partition: i32, event: Pending) {
        self.pending.entry(partition).or_default().push(event);
    }

    pub fn forget(&mut self, partition: i32) {
        self.pending.remove(&partition);
        self.effects.remove(&partition);
        self.state_records.remove(&partition);
        self.dead_letters.retain(|d| d.partition != partition);
    }

    pub fn clear(&mut self) {
        *self = Batch::default();
    }
}
