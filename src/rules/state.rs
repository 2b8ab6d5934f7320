//! The state of one threshold rule on one instance, and of all eight, as kept in memory
//! and persisted with the instance.

use serde::{Deserialize, Serialize};

use super::{Rule, Thresholds};
use crate::alert::Severity;

/// What one evaluation of a rule decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// Fires (or escalates) at this severity; `started_at` is when the condition began.
    Fire { severity: Severity, started_at: i64 },
    /// Resolves the alert that fired at `severity`.
    Resolve { severity: Severity, started_at: i64 },
}

/// The state of one rule on one instance: 32 bytes (an instance keeps one per rule). It
/// is persisted as its four optional fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "RuleStateRecord", into = "RuleStateRecord")]
pub struct RuleState {
    /// Since when the figure has been at or above warning (event time).
    warning_since: Moment,
    /// Since when it has been at or above critical.
    critical_since: Moment,
    /// When the firing condition began.
    started_at: Moment,
    /// The severity it fires at, if firing.
    pub firing: Option<Severity>,
}

/// An event time, or none, in 8 bytes: `i64::MIN` (no event time) stands for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Moment(i64);

impl Moment {
    const NONE: Moment = Moment(i64::MIN);

    fn get(self) -> Option<i64> {
        (self != Moment::NONE).then_some(self.0)
    }

    fn of(t: Option<i64>) -> Moment {
        t.map_or(Moment::NONE, Moment)
    }
}

impl Default for Moment {
    fn default() -> Self {
        Moment::NONE
    }
}

/// A rule's state as persisted.
#[derive(Serialize, Deserialize)]
struct RuleStateRecord {
    warning_since: Option<i64>,
    critical_since: Option<i64>,
    firing: Option<Severity>,
    started_at: Option<i64>,
}

impl From<RuleStateRecord> for RuleState {
    fn from(r: RuleStateRecord) -> RuleState {
        RuleState {
            warning_since: Moment::of(r.warning_since),
            critical_since: Moment::of(r.critical_since),
            started_at: Moment::of(r.started_at),
            firing: r.firing,
        }
    }
}

impl From<RuleState> for RuleStateRecord {
    fn from(r: RuleState) -> RuleStateRecord {
        RuleStateRecord {
            warning_since: r.warning_since(),
            critical_since: r.critical_since(),
            firing: r.firing,
            started_at: r.started_at(),
        }
    }
}

impl RuleState {
    /// Since when the figure has been at or above warning (event time).
    pub fn warning_since(&self) -> Option<i64> {
        self.warning_since.get()
    }

    /// Since when it has been at or above critical.
    pub fn critical_since(&self) -> Option<i64> {
        self.critical_since.get()
    }

    /// When the firing condition began, while it fires.
    pub fn started_at(&self) -> Option<i64> {
        self.started_at.get()
    }

    /// Feeds the figure observed at event time `t`.
    pub fn observe(&mut self, t: i64, value: f64, th: &Thresholds) -> Option<Transition> {
        if value.is_nan() {
            return None;
        }
        let since = |at_or_above: bool, since: Moment| match (at_or_above, since.get()) {
            (false, _) => Moment::NONE,
            (true, None) => Moment(t),
            (true, Some(_)) => since,
        };
        self.critical_since = since(value >= th.critical, self.critical_since);
        self.warning_since = since(value >= th.warning, self.warning_since);
        let held = |since: Option<i64>| since.is_some_and(|s| t - s >= th.for_ms);
        match self.firing {
            Some(severity) if value < th.resolve_below => {
                let started_at = self.started_at().unwrap_or(t);
                self.started_at = Moment::NONE;
                self.firing = None;
                Some(Transition::Resolve { severity, started_at })
            }
            Some(Severity::Warning) if held(self.critical_since()) => {
                self.firing = Some(Severity::Critical);
                Some(Transition::Fire {
                    severity: Severity::Critical,
                    started_at: self.started_at().unwrap_or(t),
                })
            }
            Some(_) => None,
            None => {
                let severity = if held(self.critical_since()) {
                    Severity::Critical
                } else if held(self.warning_since()) {
                    Severity::Warning
                } else {
                    return None;
                };
                let started_at = self.warning_since().or(self.critical_since()).unwrap_or(t);
                self.firing = Some(severity);
                self.started_at = Moment(started_at);
                Some(Transition::Fire { severity, started_at })
            }
        }
    }
}

/// The states of one instance's threshold rules, in [`Rule::ALL`] order: nothing
/// allocated while every rule is idle (most instances, most of the time), 8 bytes instead of
/// the eight states' 256. Persisted as the eight states.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleStates(Option<Box<[RuleState; Rule::COUNT]>>);

impl RuleStates {
    /// The state of `rule`.
    pub fn get(&self, rule: Rule) -> RuleState {
        self.0.as_ref().map(|states| states[rule.index()]).unwrap_or_default()
    }

    /// Every rule's state, in order.
    pub fn iter(&self) -> impl Iterator<Item = RuleState> + '_ {
        Rule::ALL.into_iter().map(|rule| self.get(rule))
    }

    /// Feeds `rule` the figure observed at event time `t`: the states are allocated when a
    /// rule leaves idle and freed when every rule is idle again.
    pub fn observe(&mut self, rule: Rule, t: i64, value: f64, th: &Thresholds) -> Option<Transition> {
        let i = rule.index();
        let idle = RuleState::default();
        match &mut self.0 {
            Some(states) => {
                let was_idle = states[i] == idle;
                let transition = states[i].observe(t, value, th);
                if !was_idle && states[i] == idle && states.iter().all(|s| *s == idle) {
                    self.0 = None;
                }
                transition
            }
            None => {
                let mut state = idle;
                let transition = state.observe(t, value, th);
                if state != idle {
                    let mut states = Box::new([idle; Rule::COUNT]);
                    states[i] = state;
                    self.0 = Some(states);
                }
                transition
            }
        }
    }
}

impl Serialize for RuleStates {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.as_deref().copied().unwrap_or_default().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RuleStates {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let states = <[RuleState; Rule::COUNT]>::deserialize(deserializer)?;
        let idle = states.iter().all(|s| *s == RuleState::default());
        Ok(RuleStates((!idle).then(|| Box::new(states))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleSet;

    const MINUTE: i64 = crate::minute::MINUTE_MS;

    const CPU: Thresholds =
        Thresholds { warning: 0.8, critical: 0.9, for_ms: 5 * MINUTE, resolve_below: 0.75 };

    fn feed(
        state: &mut RuleState,
        th: &Thresholds,
        from: i64,
        to: i64,
        step: i64,
        value: f64,
    ) -> Vec<(i64, Transition)> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            if let Some(tr) = state.observe(t, value, th) {
                out.push((t, tr));
            }
            t += step;
        }
        out
    }

    #[test]
    fn a_rule_state_takes_32_bytes_and_is_persisted_as_its_four_optional_fields() {
        assert_eq!(std::mem::size_of::<RuleState>(), 32);
        let mut s = RuleState::default();
        assert_eq!(
            (s.warning_since(), s.critical_since(), s.started_at(), s.firing),
            (None, None, None, None)
        );
        feed(&mut s, &CPU, 0, 6 * MINUTE, 5_000, 0.85);
        assert_eq!((s.warning_since(), s.critical_since(), s.started_at()), (Some(0), None, Some(0)));
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"warning_since": 0, "critical_since": null, "firing": "WARNING", "started_at": 0})
        );
        assert_eq!(serde_json::from_value::<RuleState>(json).unwrap(), s);
        assert_eq!(postcard::from_bytes::<RuleState>(&postcard::to_stdvec(&s).unwrap()).unwrap(), s);
    }

    #[test]
    fn an_instances_rule_states_are_allocated_only_while_a_rule_is_not_idle() {
        let mut states = RuleStates::default();
        assert_eq!(states.observe(Rule::DbPool, 0, 0.5, &CPU), None);
        assert!(states.0.is_none(), "below warning: idle, nothing kept");
        let mut fired = Vec::new();
        let mut t = 0;
        while t <= 6 * MINUTE {
            fired.extend(states.observe(Rule::DbPool, t, 0.95, &CPU));
            t += 5_000;
        }
        assert_eq!(fired, vec![Transition::Fire { severity: Severity::Critical, started_at: 0 }]);
        assert!(states.0.is_some());
        assert_eq!(
            (states.get(Rule::DbPool).firing, states.get(Rule::Memory).firing),
            (Some(Severity::Critical), None)
        );
        // Persisted as the eight states, as before.
        let all: Vec<RuleState> = states.iter().collect();
        assert_eq!(postcard::to_stdvec(&states).unwrap(), postcard::to_stdvec(&all).unwrap()[1..]);
        let back: RuleStates = postcard::from_bytes(&postcard::to_stdvec(&states).unwrap()).unwrap();
        assert_eq!(back, states);
        let resolved = states.observe(Rule::DbPool, t, 0.5, &CPU);
        assert!(matches!(resolved, Some(Transition::Resolve { severity: Severity::Critical, .. })));
        assert!(states.0.is_none(), "every rule idle again: freed");
        let idle: RuleStates = postcard::from_bytes(&postcard::to_stdvec(&states).unwrap()).unwrap();
        assert!(idle.0.is_none());
    }

    #[test]
    fn four_minutes_above_critical_does_not_fire_six_does() {
        let mut s = RuleState::default();
        assert!(feed(&mut s, &CPU, 0, 4 * MINUTE, 5_000, 0.95).is_empty());
        assert!(feed(&mut s, &CPU, 4 * MINUTE + 5_000, 4 * MINUTE + 60_000, 5_000, 0.3).is_empty());
        let mut s = RuleState::default();
        let fired = feed(&mut s, &CPU, 0, 6 * MINUTE, 5_000, 0.95);
        assert_eq!(
            fired,
            vec![(5 * MINUTE, Transition::Fire { severity: Severity::Critical, started_at: 0 })]
        );
    }

    #[test]
    fn hysteresis_keeps_firing_until_below_the_resolve_level() {
        let mut s = RuleState::default();
        feed(&mut s, &CPU, 0, 5 * MINUTE, 5_000, 0.85);
        assert_eq!(s.firing, Some(Severity::Warning));
        assert!(
            feed(&mut s, &CPU, 5 * MINUTE + 5_000, 20 * MINUTE, 5_000, 0.77).is_empty(),
            "0.77 is above 0.75"
        );
        let resolved = feed(&mut s, &CPU, 20 * MINUTE + 5_000, 20 * MINUTE + 5_000, 5_000, 0.7);
        assert_eq!(
            resolved,
            vec![(20 * MINUTE + 5_000, Transition::Resolve { severity: Severity::Warning, started_at: 0 })]
        );
        assert_eq!(s.firing, None);
    }

    #[test]
    fn escalates_from_warning_to_critical_once() {
        let mut s = RuleState::default();
        let th = Thresholds { warning: 0.8, critical: 0.9, for_ms: MINUTE, resolve_below: 0.75 };
        let a = feed(&mut s, &th, 0, MINUTE, 5_000, 0.85);
        assert_eq!(a, vec![(MINUTE, Transition::Fire { severity: Severity::Warning, started_at: 0 })]);
        let b = feed(&mut s, &th, MINUTE + 5_000, 3 * MINUTE, 5_000, 0.95);
        assert_eq!(
            b,
            vec![(2 * MINUTE + 5_000, Transition::Fire { severity: Severity::Critical, started_at: 0 })]
        );
    }

    #[test]
    fn zero_for_fires_at_once() {
        let mut s = RuleState::default();
        let disk = RuleSet::default().disk;
        assert_eq!(
            s.observe(7, 0.96, &disk),
            Some(Transition::Fire { severity: Severity::Critical, started_at: 7 })
        );
    }

    #[test]
    fn a_dip_restarts_the_for_clock() {
        let mut s = RuleState::default();
        let th = Thresholds { warning: 0.8, critical: 0.9, for_ms: MINUTE, resolve_below: 0.75 };
        assert!(feed(&mut s, &th, 0, 50_000, 5_000, 0.85).is_empty());
        assert!(s.observe(55_000, 0.5, &th).is_none());
        assert!(feed(&mut s, &th, 60_000, 115_000, 5_000, 0.85).is_empty());
        assert!(s.observe(120_000, 0.85, &th).is_some());
    }
}
