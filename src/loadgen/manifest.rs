//! The ground truth a load-generator run writes: which faults went where and when, and how
//! many records each application and instance produced. Tests and scoring read it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One injected fault, in absolute event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    pub kind: String,
    pub app_id: String,
    /// `None`: every instance of the app.
    pub instance_id: Option<String>,
    pub from_ms: i64,
    /// `None`: to the end of the run.
    pub to_ms: Option<i64>,
    /// Alert kinds pulsewatch is expected to raise for it (empty: none).
    pub expected_alerts: Vec<String>,
}

/// What one instance produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceCounts {
    pub beats: u64,
    pub last_seq: i64,
    pub first_sent_at_ms: Option<i64>,
    pub last_sent_at_ms: Option<i64>,
}

/// What one application produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppCounts {
    pub beats: u64,
    pub poison: u64,
    pub instances: BTreeMap<String, InstanceCounts>,
}

/// The whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub seed: u64,
    pub encoding: String,
    pub topic: String,
    pub apps: usize,
    pub instances_per_app: usize,
    pub interval_ms: i32,
    /// Event time of the run's start (faults' offsets count from here).
    pub start_ms: i64,
    /// Event time the run was to end (exclusive).
    pub end_ms: i64,
    pub faults: Vec<FaultRecord>,
    pub beats_total: u64,
    pub poison_total: u64,
    pub per_app: BTreeMap<String, AppCounts>,
    pub wall_seconds: f64,
    /// Records (beats and poison) acknowledged by the broker per wall-clock second.
    pub achieved_rate: f64,
}

impl Manifest {
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)
    }

    pub fn read(path: &Path) -> std::io::Result<Manifest> {
        serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)
    }

    /// Records one beat in the counts.
    pub(crate) fn count_beat(&mut self, app_id: &str, instance_id: &str, seq: i64, sent_at: i64) {
        self.beats_total += 1;
        let app = self.per_app.entry(app_id.to_owned()).or_default();
        app.beats += 1;
        let inst = app.instances.entry(instance_id.to_owned()).or_default();
        inst.beats += 1;
        inst.last_seq = seq;
        inst.first_sent_at_ms.get_or_insert(sent_at);
        inst.last_sent_at_ms = Some(sent_at);
    }

    pub(crate) fn count_poison(&mut self, app_id: &str) {
        self.poison_total += 1;
        self.per_app.entry(app_id.to_owned()).or_default().poison += 1;
    }
}
