//! The partitions a stage's consumer is given and loses. librdkafka reports them inside a
//! poll; the log keeps them, in order, so that the stage acts on them (drops what it held
//! of a partition revoked, positions one assigned) before it handles its next record.

use std::sync::Mutex;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;

use crate::kafka;

/// A change of the partitions a consumer owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    Assigned { topic: String, partition: i32 },
    Revoked { topic: String, partition: i32 },
}

/// The consumer context of both stages: what the rebalances of the last polls changed.
pub struct AssignmentLog {
    /// The stage, for the log lines.
    stage: &'static str,
    /// Changes not yet taken by the stage, oldest first.
    changes: Mutex<Vec<Membership>>,
}

impl AssignmentLog {
    pub fn new(stage: &'static str) -> AssignmentLog {
        AssignmentLog { stage, changes: Mutex::new(Vec::new()) }
    }

    /// The changes since the last call, oldest first.
    pub fn take(&self) -> Vec<Membership> {
        std::mem::take(&mut *self.changes.lock().expect("not poisoned"))
    }

    /// Records changes as a rebalance would (for tests of what a stage does with them).
    pub fn record(&self, changes: impl IntoIterator<Item = Membership>) {
        self.changes.lock().expect("not poisoned").extend(changes);
    }
}

impl ClientContext for AssignmentLog {
    fn error(&self, error: KafkaError, reason: &str) {
        kafka::log_client_error(&error, reason);
    }
}

impl ConsumerContext for AssignmentLog {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (tpl, assigned) = match rebalance {
            Rebalance::Assign(tpl) => (tpl, true),
            Rebalance::Revoke(tpl) => (tpl, false),
            Rebalance::Error(e) => {
                tracing::warn!(stage = self.stage, error = %e, "rebalance error");
                return;
            }
        };
        let partitions: Vec<(String, i32)> =
            tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        if assigned {
            tracing::info!(stage = self.stage, ?partitions, "partitions assigned");
        } else {
            let lost = rdkafka::consumer::Consumer::assignment_lost(consumer);
            tracing::info!(stage = self.stage, ?partitions, lost, "partitions revoked");
        }
        self.record(partitions.into_iter().map(|(topic, partition)| match assigned {
            true => Membership::Assigned { topic, partition },
            false => Membership::Revoked { topic, partition },
        }));
    }
}
