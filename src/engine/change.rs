//! One alert transition as the engine decides it ([`Change`]) and the alert it becomes,
//! with its words and the record it points at ([`Origin`]).

use super::Effect;
use super::explain::Explanation;
use crate::alert::{Alert, AlertKind, AlertState, Severity, alert_id};

/// Where an alert transition comes from: the record position it points at (the beat that
/// caused it, or the watermark position for timer-driven ones) and the wall time it leaves.
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) wall_ms: i64,
}

/// The facts of one alert transition; [`Change::emit`] adds its words and origin.
pub(super) struct Change<'a> {
    app_id: &'a str,
    instance_id: Option<&'a str>,
    kind: AlertKind,
    pub(super) severity: Severity,
    pub(super) state: AlertState,
    started_at: i64,
    event_at: i64,
    value: Option<f64>,
    threshold: Option<f64>,
}

impl<'a> Change<'a> {
    /// Fires at `at`, the condition having begun at `started_at`.
    pub(super) fn firing(
        app_id: &'a str,
        instance_id: Option<&'a str>,
        kind: AlertKind,
        severity: Severity,
        started_at: i64,
        at: i64,
    ) -> Self {
        Change {
            app_id,
            instance_id,
            kind,
            severity,
            state: AlertState::Firing,
            started_at,
            event_at: at,
            value: None,
            threshold: None,
        }
    }

    /// Resolves at `at`; a resolution never precedes its firing (a late beat can be older
    /// than the deadline it answers).
    pub(super) fn resolved(
        app_id: &'a str,
        instance_id: Option<&'a str>,
        kind: AlertKind,
        severity: Severity,
        started_at: i64,
        at: i64,
    ) -> Self {
        Change {
            state: AlertState::Resolved,
            event_at: at.max(started_at),
            ..Change::firing(app_id, instance_id, kind, severity, started_at, at)
        }
    }

    pub(super) fn measured(self, value: Option<f64>, threshold: Option<f64>) -> Self {
        Change { value, threshold, ..self }
    }

    pub(super) fn emit(self, ex: Explanation, origin: Origin) -> Effect {
        Effect::Alert(Alert {
            alert_id: alert_id(self.app_id, self.instance_id, self.kind),
            app_id: self.app_id.to_owned(),
            instance_id: self.instance_id.map(str::to_owned),
            kind: self.kind,
            severity: self.severity,
            state: self.state,
            started_at: self.started_at,
            event_at: self.event_at,
            emitted_at: origin.wall_ms,
            value: self.value,
            threshold: self.threshold,
            summary: ex.summary,
            evidence: ex.evidence,
            recommendations: ex.recommendations,
            source_partition: origin.partition,
            source_offset: origin.offset,
        })
    }
}
