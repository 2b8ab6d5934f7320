//! The `app-state` topic's records (compacted): the [`AppSnapshot`] of an application in
//! JSON (key app_id), which the sink upserts into the `application` table, and the engine's
//! state of that application in the [`STATE_HEADER`] header of a record of its own, which a
//! restore reads.
//!
//! The engine state itself is the engine's own type: this module owns the envelope (the
//! version, the header's layout, the older versions still read back), generic over it.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::labels::Labels;

/// The version of the envelope and engine state `app-state` records carry: 3 on, the state
/// is in the [`STATE_HEADER`] (postcard), the JSON value holds only the snapshot; 6 on, the
/// trend windows are in a record of their own ([`WINDOWS_HEADER`]); 7 on, the state and the
/// snapshot are in records of their own too ([`STATE_KEY_SUFFIX`], [`SNAPSHOT_HEADER`]), the
/// snapshot written only when what it shows changed; 8 on, a state names the offset of the
/// newest beat in it, and each partition has a [`PartitionMark`]; 9 on, the windows are
/// written whole now and then (a base) and as the points added since in between (a tail,
/// [`WINDOWS_TAIL_KEY_SUFFIX`]). Records of versions 1 to 8 still restore; the history of
/// the versions is in `docs/contracts.md`.
pub const STATE_VERSION: u32 = 9;

/// The header of an `app-state` record that carries the engine state (version 3 on).
pub const STATE_HEADER: &str = "pulsewatch-state";

/// What follows the app id in a state record's key (version 7 on); its value is empty.
pub const STATE_KEY_SUFFIX: &str = "\0state";

/// The header of a snapshot record (version 7 on): its value is the JSON snapshot, the
/// header's one byte the version, so that a restore passes it by without reading the JSON.
pub const SNAPSHOT_HEADER: &str = "pulsewatch-snapshot";

/// The header of an application's windows record (version 6 on): its instances' trend
/// windows, which change once a minute, written only when they change. Its key is the app
/// id and [`WINDOWS_KEY_SUFFIX`], its value empty; the sink passes it by.
pub const WINDOWS_HEADER: &str = "pulsewatch-windows";

/// What follows the app id in a windows record's key: an app id holds no NUL, so no
/// application's key is ever another's windows key.
pub const WINDOWS_KEY_SUFFIX: &str = "\0windows";

/// What follows the app id in the key of a windows tail (version 9 on): a windows record
/// that holds each instance's points since the base, the windows record written last.
pub const WINDOWS_TAIL_KEY_SUFFIX: &str = "\0windows-tail";

/// The kinds of `app-state` record ([`StateRecordOut::kind`]).
pub const STATE_KINDS: [&str; 5] = ["snapshot", "state", "windows", "windows_tail", "mark"];

/// The header of a partition's mark (version 8 on): where the processor had read the
/// partition to, and its watermark then. Its key is [`PARTITION_KEY`], its value empty.
pub const PARTITION_HEADER: &str = "pulsewatch-partition";

/// The key of a partition's mark: no application's id is empty.
pub const PARTITION_KEY: &str = "\0partition";

/// What a partition's mark says, as of the transaction that wrote it: the offset of the
/// last `heartbeats` record applied, and the partition's watermark. States may hold fewer
/// beats than that (see `detection.state_interval_ms`): a restore replays the records from
/// the committed offset up to `applied_through` into the applications whose states do not
/// hold them yet, and applies the records after it as new.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PartitionMark {
    pub applied_through: i64,
    pub watermark_ms: i64,
}

impl PartitionMark {
    /// Reads a mark from its [`PARTITION_HEADER`].
    pub fn decode(header: &[u8]) -> Result<PartitionMark, StateRecordError> {
        read_header(header).map(|(_, mark)| mark)
    }
}

/// The current state of one application, as published on `app-state` (JSON, key app_id)
/// and stored in the `application` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSnapshot {
    pub app_id: String,
    /// UP, DEGRADED, LATE, DOWN or STOPPED.
    pub status: String,
    /// healthy, warning or critical.
    pub health: String,
    /// Instances beating on time.
    pub instances_up: u32,
    /// Instances tracked (a stopped or forgotten one no longer is).
    pub instances_total: u32,
    /// Event time of the newest beat, if any.
    pub last_seen_ms: Option<i64>,
    /// The newest beat's gauges, by name (`memory_used_ratio`, `cpu_ratio`, ...).
    pub last_figures: BTreeMap<String, f64>,
    /// Alerts open on the application and its instances.
    pub open_alerts: u32,
    pub labels: Labels,
    /// The partition's watermark when the snapshot was taken.
    pub updated_at_ms: i64,
}

impl AppSnapshot {
    /// The snapshot of an application the engine no longer tracks: STOPPED, no instance.
    pub fn gone(app_id: &str, updated_at_ms: i64) -> AppSnapshot {
        AppSnapshot {
            app_id: app_id.to_owned(),
            status: "STOPPED".to_owned(),
            health: "healthy".to_owned(),
            instances_up: 0,
            instances_total: 0,
            last_seen_ms: None,
            last_figures: BTreeMap::new(),
            open_alerts: 0,
            labels: Labels::new(),
            updated_at_ms,
        }
    }
}

/// An `app-state` record ready to send: an application's snapshot (the JSON value, and the
/// [`SNAPSHOT_HEADER`]), its state (an empty value and the [`STATE_HEADER`]) or its windows
/// record (an empty value and the [`WINDOWS_HEADER`]).
#[derive(Debug, Clone)]
pub struct StateRecordOut {
    pub app_id: String,
    pub value: Vec<u8>,
    /// [`SNAPSHOT_HEADER`], [`STATE_HEADER`], [`WINDOWS_HEADER`] or [`PARTITION_HEADER`].
    pub header_name: &'static str,
    pub header: Vec<u8>,
    /// What follows the app id in the record's key: nothing for a snapshot,
    /// [`STATE_KEY_SUFFIX`], [`WINDOWS_KEY_SUFFIX`] or [`WINDOWS_TAIL_KEY_SUFFIX`].
    pub key_suffix: &'static str,
}

/// A snapshot's JSON value: the snapshot and the version.
#[derive(Serialize)]
struct SnapshotValue<'a> {
    #[serde(flatten)]
    snapshot: &'a AppSnapshot,
    version: u32,
}

/// The binary part of a record, as written.
#[derive(Serialize)]
struct StateBodyOut<'a, S> {
    app_id: &'a str,
    updated_at_ms: i64,
    through_offset: i64,
    state: Option<&'a S>,
}

/// The binary part of a record, as read back (version 8 on).
#[derive(Deserialize)]
struct StateBody<S> {
    app_id: String,
    updated_at_ms: i64,
    through_offset: i64,
    state: Option<S>,
}

/// The binary part of a record of versions 3 to 7, as read back.
#[derive(Deserialize)]
struct StateBody7<S> {
    app_id: String,
    updated_at_ms: i64,
    state: Option<S>,
}

impl StateRecordOut {
    /// The snapshot record of an application.
    pub fn snapshot(snapshot: &AppSnapshot) -> StateRecordOut {
        let value = serde_json::to_vec(&SnapshotValue { snapshot, version: STATE_VERSION });
        StateRecordOut {
            app_id: snapshot.app_id.clone(),
            value: value.expect("a snapshot serialises"),
            header_name: SNAPSHOT_HEADER,
            header: vec![STATE_VERSION as u8],
            key_suffix: "",
        }
    }

    /// The state record of an application: the engine's `state` of it (absent for an
    /// application the engine no longer tracks), the offset of the newest beat it holds and
    /// the partition's watermark.
    pub fn state<S: Serialize>(
        app_id: &str,
        updated_at_ms: i64,
        through_offset: i64,
        state: Option<&S>,
    ) -> StateRecordOut {
        StateRecordOut {
            app_id: app_id.to_owned(),
            value: Vec::new(),
            header_name: STATE_HEADER,
            header: state_header(app_id, updated_at_ms, through_offset, state),
            key_suffix: STATE_KEY_SUFFIX,
        }
    }

    /// A partition's mark.
    pub fn partition(mark: &PartitionMark) -> StateRecordOut {
        let header = postcard::to_extend(mark, vec![STATE_VERSION as u8]);
        StateRecordOut {
            app_id: String::new(),
            value: Vec::new(),
            header_name: PARTITION_HEADER,
            header: header.expect("a partition mark serialises"),
            key_suffix: PARTITION_KEY,
        }
    }

    /// A record as versions 3 to 6 wrote it, the snapshot and the state in one (key app_id):
    /// what a restore still reads, for tests and benches.
    pub fn combined<S: Serialize>(snapshot: &AppSnapshot, state: Option<&S>) -> StateRecordOut {
        let value = serde_json::to_vec(&SnapshotValue { snapshot, version: 6 });
        let body = StateBody7Out { app_id: &snapshot.app_id, updated_at_ms: snapshot.updated_at_ms, state };
        let header = postcard::to_extend(&body, vec![6]).expect("the engine state serialises");
        StateRecordOut {
            app_id: snapshot.app_id.clone(),
            value: value.expect("a snapshot serialises"),
            header_name: STATE_HEADER,
            header,
            key_suffix: "",
        }
    }

    /// The windows record of `app_id`, a base: each instance's windows, by instance id, as
    /// of the state holding beats through offset `through`.
    pub fn windows<W: Serialize>(app_id: &str, through: i64, windows: &[(&str, &W)]) -> StateRecordOut {
        StateRecordOut::windows_form(app_id, through, false, windows)
    }

    /// The windows tail of `app_id`: each instance's points since the base written at
    /// `base` (its `through`), by instance id.
    pub fn windows_tail<W: Serialize>(app_id: &str, base: i64, points: &[(&str, &W)]) -> StateRecordOut {
        StateRecordOut::windows_form(app_id, base, true, points)
    }

    fn windows_form<W: Serialize>(
        app_id: &str,
        base: i64,
        tail: bool,
        windows: &[(&str, &W)],
    ) -> StateRecordOut {
        let body = (app_id, base, tail, windows);
        let header = postcard::to_extend(&body, vec![STATE_VERSION as u8]);
        StateRecordOut {
            app_id: app_id.to_owned(),
            value: Vec::new(),
            header_name: WINDOWS_HEADER,
            header: header.expect("trend windows serialise"),
            key_suffix: if tail { WINDOWS_TAIL_KEY_SUFFIX } else { WINDOWS_KEY_SUFFIX },
        }
    }

    pub fn is_windows(&self) -> bool {
        self.header_name == WINDOWS_HEADER
    }

    pub fn is_snapshot(&self) -> bool {
        self.header_name == SNAPSHOT_HEADER
    }

    /// Whether the record carries an engine state (of any version), or an application's end.
    pub fn is_state(&self) -> bool {
        self.header_name == STATE_HEADER
    }

    pub fn is_partition(&self) -> bool {
        self.header_name == PARTITION_HEADER
    }

    /// What kind of record it is: `snapshot`, `state`, `windows` (a base), `windows_tail`
    /// or `mark`.
    pub fn kind(&self) -> &'static str {
        match (self.header_name, self.key_suffix) {
            (SNAPSHOT_HEADER, _) => "snapshot",
            (WINDOWS_HEADER, WINDOWS_TAIL_KEY_SUFFIX) => "windows_tail",
            (WINDOWS_HEADER, _) => "windows",
            (PARTITION_HEADER, _) => "mark",
            _ => "state",
        }
    }

    /// The record's key: the app id and the record's [`StateRecordOut::key_suffix`].
    pub fn key(&self) -> String {
        format!("{}{}", self.app_id, self.key_suffix)
    }
}

/// A [`STATE_HEADER`] of the current version.
fn state_header<S: Serialize>(
    app_id: &str,
    updated_at_ms: i64,
    through_offset: i64,
    state: Option<&S>,
) -> Vec<u8> {
    let body = StateBodyOut { app_id, updated_at_ms, through_offset, state };
    postcard::to_extend(&body, vec![STATE_VERSION as u8]).expect("the engine state serialises")
}

/// The binary part of a record of versions 3 to 7, as written (for tests and benches).
#[derive(Serialize)]
struct StateBody7Out<'a, S> {
    app_id: &'a str,
    updated_at_ms: i64,
    state: Option<&'a S>,
}

/// An application's windows record as read back, a base or a tail. `W` is the engine's
/// trend windows of one instance.
#[derive(Debug, Clone)]
pub struct WindowsRecord<W> {
    pub app_id: String,
    /// The base it is or extends, named by the offset of the newest beat the application's
    /// state held when the base was written; none before version 9.
    pub base: Option<i64>,
    /// Whether it is a tail: each instance's points since the base, not its whole windows.
    pub tail: bool,
    /// By instance id.
    pub windows: Vec<(String, W)>,
}

impl<W: DeserializeOwned> WindowsRecord<W> {
    /// Reads a record from its [`WINDOWS_HEADER`].
    pub fn decode(header: &[u8]) -> Result<WindowsRecord<W>, StateRecordError> {
        if header.first().is_some_and(|&v| v < 9) {
            let (_, (app_id, windows)): (u32, (String, Vec<(String, W)>)) = read_header(header)?;
            return Ok(WindowsRecord { app_id, base: None, tail: false, windows });
        }
        let (_, (app_id, base, tail, windows)) = read_header(header)?;
        Ok(WindowsRecord { app_id, base: Some(base), tail, windows })
    }

    /// Whether it is the tail of `base`, as read back.
    pub fn extends(&self, base: &WindowsRecord<W>) -> bool {
        self.tail && !base.tail && base.base.is_some() && self.base == base.base
    }
}

/// A header's version byte and the body after it (postcard), of a version this reads.
fn read_header<T: DeserializeOwned>(header: &[u8]) -> Result<(u32, T), StateRecordError> {
    let (&version, body) = header.split_first().ok_or(StateRecordError::MissingHeader(STATE_VERSION))?;
    let version = u32::from(version);
    if version > STATE_VERSION {
        return Err(StateRecordError::Newer(version));
    }
    let body = postcard::from_bytes(body).map_err(|source| StateRecordError::State { version, source })?;
    Ok((version, body))
}

/// An `app-state` record as read back, of any version: what a restore needs. `S` is the
/// engine's state of one application.
#[derive(Debug, Clone)]
pub struct StateRecord<S> {
    pub app_id: String,
    pub version: u32,
    /// The partition's watermark when the record was written.
    pub updated_at_ms: i64,
    /// The offset of the newest beat the state holds (version 8 on).
    pub through_offset: Option<i64>,
    /// The engine's state of the application; none in version 1, or once it is gone.
    pub state: Option<S>,
}

/// Records up to version 2: everything in the JSON value.
#[derive(Deserialize)]
struct JsonStateRecord<S> {
    #[serde(flatten)]
    snapshot: AppSnapshot,
    #[serde(default = "first_version")]
    version: u32,
    #[serde(default = "Option::default")]
    state: Option<S>,
}

fn first_version() -> u32 {
    1
}

/// Why an `app-state` record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum StateRecordError {
    #[error("app-state value is not a snapshot: {0}")]
    Value(#[from] serde_json::Error),
    #[error("app-state header {STATE_HEADER} does not hold an engine state of version {version}: {source}")]
    State { version: u32, source: postcard::Error },
    #[error("app-state record of version {0}, newer than this processor reads ({STATE_VERSION})")]
    Newer(u32),
    #[error("app-state record of version {0} without its {STATE_HEADER} header")]
    MissingHeader(u32),
}

impl<S: DeserializeOwned> StateRecord<S> {
    /// Reads a record from its [`STATE_HEADER`] when it has one (version 3 on), else from
    /// its JSON value.
    pub fn decode(value: &[u8], header: Option<&[u8]>) -> Result<StateRecord<S>, StateRecordError> {
        if let Some(header) = header {
            if header.first().is_some_and(|&v| v < 8) {
                let (version, body): (u32, StateBody7<S>) = read_header(header)?;
                return Ok(StateRecord {
                    app_id: body.app_id,
                    version,
                    updated_at_ms: body.updated_at_ms,
                    through_offset: None,
                    state: body.state,
                });
            }
            let (version, body): (u32, StateBody<S>) = read_header(header)?;
            return Ok(StateRecord {
                app_id: body.app_id,
                version,
                updated_at_ms: body.updated_at_ms,
                through_offset: Some(body.through_offset),
                state: body.state,
            });
        }
        let json: JsonStateRecord<S> = serde_json::from_slice(value)?;
        match json.version {
            v if v > STATE_VERSION => Err(StateRecordError::Newer(v)),
            v if v >= 3 => Err(StateRecordError::MissingHeader(v)),
            version => Ok(StateRecord {
                app_id: json.snapshot.app_id,
                version,
                updated_at_ms: json.snapshot.updated_at_ms,
                through_offset: None,
                state: json.state,
            }),
        }
    }
}
