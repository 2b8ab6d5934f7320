//! What `/healthz` judges: whether every stage thread still runs, and whether every
//! partition a stage reads still moves on while it has records to read.
//!
//! Stages report facts here ([`Health::stage_running`], [`Health::stage_stopped`],
//! [`Health::observe_partitions`], [`Health::committed`]); [`Health::check`] turns them into a
//! verdict against the configured stall time. [`HEALTH`] is the process's registry, the one
//! `/healthz` and the API's health route read.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// The process's registry: stages and `/healthz` share it.
pub static HEALTH: LazyLock<Health> = LazyLock::new(Health::default);

/// A registry of stage lives and partition progress; clones share it.
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<Facts>>);

/// Where a stage stands in one partition, as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionObservation {
    /// The next offset the stage will read (the consumer's position).
    pub position: i64,
    /// The partition's end: the offset the next record written will get (high watermark).
    pub end: i64,
}

/// Why `/healthz` says no; empty when it says yes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Default)]
struct Facts {
    stages: BTreeMap<String, StageFacts>,
    /// When each stage last committed what it did (wall time); kept across restarts.
    commits: BTreeMap<String, DateTime<Utc>>,
}

struct StageFacts {
    /// `None` while the thread runs; why it ended otherwise.
    stopped: Option<String>,
    /// When the stage last reported its partitions (`None`: never).
    reported_at: Option<Instant>,
    partitions: BTreeMap<(String, i32), Progress>,
}

struct Progress {
    observed: PartitionObservation,
    observed_at: Instant,
    /// The furthest position seen: reading records again after a rewind is no progress.
    furthest: i64,
    /// When the position last passed `furthest`, or the partition was last seen caught up.
    progressed_at: Instant,
}

impl Progress {
    fn new(observed: PartitionObservation, now: Instant) -> Progress {
        Progress { observed, observed_at: now, furthest: observed.position, progressed_at: now }
    }

    fn update(&mut self, observed: PartitionObservation, now: Instant) {
        // Caught up counts as progress, so records arriving later start a fresh clock.
        if observed.position > self.furthest || observed.position >= observed.end {
            self.progressed_at = now;
        }
        self.furthest = self.furthest.max(observed.position);
        self.observed = observed;
        self.observed_at = now;
    }

    /// How long the partition had records to read without moving on, as of its last
    /// observation: a stall is judged on what was seen, not on time since a report (a late
    /// report is the stage's silence, judged on its own).
    fn stalled_for(&self) -> Option<Duration> {
        (self.pending() > 0).then(|| self.observed_at.saturating_duration_since(self.progressed_at))
    }

    fn pending(&self) -> i64 {
        (self.observed.end - self.observed.position).max(0)
    }
}

impl Health {
    /// A stage thread started (again).
    pub fn stage_running(&self, stage: &str) {
        let mut facts = self.0.lock().expect("health registry poisoned");
        facts.stages.insert(
            stage.to_owned(),
            StageFacts { stopped: None, reported_at: None, partitions: BTreeMap::new() },
        );
    }

    /// A stage thread ended; `why` says how (an error, a panic, a requested stop).
    pub fn stage_stopped(&self, stage: &str, why: &str) {
        let mut facts = self.0.lock().expect("health registry poisoned");
        if let Some(s) = facts.stages.get_mut(stage) {
            s.stopped = Some(why.to_owned());
            s.partitions.clear();
        }
    }

    /// The stage's whole assignment as of now: each partition with its observation, or
    /// `None` when it is assigned but its position is not known yet. Partitions left out are
    /// no longer the stage's. A stage that calls this must call it every few seconds.
    pub fn observe_partitions(&self, stage: &str, assigned: &[(&str, i32, Option<PartitionObservation>)]) {
        self.observe_partitions_at(stage, assigned, Instant::now());
    }

    /// [`Health::observe_partitions`] at a given instant.
    pub fn observe_partitions_at(
        &self,
        stage: &str,
        assigned: &[(&str, i32, Option<PartitionObservation>)],
        now: Instant,
    ) {
        let mut facts = self.0.lock().expect("health registry poisoned");
        let Some(s) = facts.stages.get_mut(stage) else { return };
        s.reported_at = Some(now);
        s.partitions.retain(|(topic, p), _| assigned.iter().any(|(t, q, _)| t == topic && q == p));
        for (topic, partition, observed) in assigned {
            let Some(observed) = *observed else { continue };
            s.partitions
                .entry(((*topic).to_owned(), *partition))
                .and_modify(|progress| progress.update(observed, now))
                .or_insert_with(|| Progress::new(observed, now));
        }
    }

    /// `stage` committed a transaction (the processor: its outputs and offsets) just now.
    pub fn committed(&self, stage: &str) {
        let mut facts = self.0.lock().expect("health registry poisoned");
        facts.commits.insert(stage.to_owned(), Utc::now());
    }

    /// When `stage` last reported a commit, if it has.
    pub fn last_commit(&self, stage: &str) -> Option<DateTime<Utc>> {
        self.0.lock().expect("health registry poisoned").commits.get(stage).copied()
    }

    /// What was last observed of each partition of `stage`: (topic, partition, observation).
    pub fn partitions(&self, stage: &str) -> Vec<(String, i32, PartitionObservation)> {
        let facts = self.0.lock().expect("health registry poisoned");
        let Some(s) = facts.stages.get(stage) else { return Vec::new() };
        s.partitions.iter().map(|((topic, p), progress)| (topic.clone(), *p, progress.observed)).collect()
    }

    /// The verdict now: a stage that stopped, a stage silent for `stall_after` since its
    /// last report, a partition that had records to read and whose position had not moved
    /// on for `stall_after` when last observed. `stall_after` must be well above the period
    /// the stages report at.
    pub fn check(&self, stall_after: Duration) -> Verdict {
        self.check_at(stall_after, Instant::now())
    }

    /// [`Health::check`] at a given instant.
    pub fn check_at(&self, stall_after: Duration, now: Instant) -> Verdict {
        let facts = self.0.lock().expect("health registry poisoned");
        let mut problems = Vec::new();
        for (stage, s) in &facts.stages {
            if let Some(why) = &s.stopped {
                problems.push(format!("{stage}: stage stopped: {why}"));
                continue;
            }
            let silent = s.reported_at.map(|at| now.saturating_duration_since(at));
            if let Some(silent) = silent.filter(|d| *d > stall_after) {
                problems.push(format!("{stage}: no progress report for {} s", silent.as_secs()));
            }
            for ((topic, partition), progress) in &s.partitions {
                if let Some(still) = progress.stalled_for().filter(|d| *d > stall_after) {
                    problems.push(format!(
                        "{stage}: partition {partition} of {topic} has not progressed for {} s with {} records to read (position {}, end {})",
                        still.as_secs(),
                        progress.pending(),
                        progress.observed.position,
                        progress.observed.end,
                    ));
                }
            }
        }
        Verdict { problems }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(120);

    fn at(position: i64, end: i64) -> Option<PartitionObservation> {
        Some(PartitionObservation { position, end })
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn the_latest_commit_of_a_stage_is_kept_across_a_restart() {
        let h = Health::default();
        assert_eq!(h.last_commit("processor"), None);
        let before = Utc::now();
        h.committed("processor");
        h.stage_running("processor");
        let at = h.last_commit("processor").expect("a commit was reported");
        assert!(at >= before && at <= Utc::now());
        assert_eq!(h.last_commit("sink"), None);
    }

    #[test]
    fn a_stage_that_stopped_is_unhealthy() {
        let h = Health::default();
        h.stage_running("processor");
        h.stage_running("sink");
        assert!(h.check(STALL).is_healthy());
        h.stage_stopped("sink", "panicked: boom");
        let v = h.check(STALL);
        assert_eq!(v.problems, vec!["sink: stage stopped: panicked: boom".to_owned()]);
        h.stage_running("sink");
        assert!(h.check(STALL).is_healthy(), "a restarted stage runs again");
    }

    #[test]
    fn a_partition_with_records_that_does_not_move_is_stalled() {
        let (h, t0) = (Health::default(), Instant::now());
        h.stage_running("sink");
        h.observe_partitions_at("sink", &[("alerts", 0, at(10, 50)), ("alerts", 1, at(5, 5))], t0);
        h.observe_partitions_at("sink", &[("alerts", 0, at(10, 60)), ("alerts", 1, at(5, 5))], secs(t0, 100));
        assert!(h.check_at(STALL, secs(t0, 110)).is_healthy());
        assert!(
            h.check_at(STALL, secs(t0, 121)).is_healthy(),
            "not seen stalled yet: the stall is judged on reports"
        );
        h.observe_partitions_at("sink", &[("alerts", 0, at(10, 60)), ("alerts", 1, at(5, 5))], secs(t0, 121));
        let v = h.check_at(STALL, secs(t0, 122));
        assert_eq!(v.problems.len(), 1, "{v:?}");
        assert!(
            v.problems[0].contains("partition 0 of alerts") && v.problems[0].contains("50 records"),
            "{v:?}"
        );
        // It moves on: healthy again.
        h.observe_partitions_at("sink", &[("alerts", 0, at(11, 60)), ("alerts", 1, at(5, 5))], secs(t0, 122));
        assert!(h.check_at(STALL, secs(t0, 123)).is_healthy());
    }

    #[test]
    fn reading_again_after_a_rewind_is_no_progress() {
        let (h, t0) = (Health::default(), Instant::now());
        h.stage_running("processor");
        h.observe_partitions_at("processor", &[("heartbeats", 3, at(100, 200))], t0);
        h.observe_partitions_at("processor", &[("heartbeats", 3, at(40, 200))], secs(t0, 60));
        h.observe_partitions_at("processor", &[("heartbeats", 3, at(90, 200))], secs(t0, 125));
        assert!(!h.check_at(STALL, secs(t0, 126)).is_healthy());
    }

    #[test]
    fn an_idle_partition_is_not_stalled_when_records_arrive() {
        let (h, t0) = (Health::default(), Instant::now());
        h.stage_running("sink");
        for s in (0..=600).step_by(10) {
            h.observe_partitions_at("sink", &[("alerts", 0, at(7, 7))], secs(t0, s));
        }
        // Records arrive; the next report sees them before the stage has read them.
        h.observe_partitions_at("sink", &[("alerts", 0, at(7, 9))], secs(t0, 610));
        assert!(h.check_at(STALL, secs(t0, 611)).is_healthy());
    }

    #[test]
    fn a_stage_that_stops_reporting_is_unhealthy_and_revoked_partitions_are_forgotten() {
        let (h, t0) = (Health::default(), Instant::now());
        h.stage_running("processor");
        assert!(h.check_at(STALL, secs(t0, 1000)).is_healthy(), "never reported: nothing to judge");
        h.observe_partitions_at("processor", &[("heartbeats", 0, at(1, 9)), ("heartbeats", 1, None)], t0);
        h.observe_partitions_at("processor", &[("heartbeats", 1, None)], secs(t0, 10));
        assert!(h.check_at(STALL, secs(t0, 100)).is_healthy(), "partition 0 was revoked");
        let v = h.check_at(STALL, secs(t0, 131));
        assert_eq!(v.problems, vec!["processor: no progress report for 121 s".to_owned()]);
    }
}
