//! Threshold rules: a figure above its warning or critical level for a `for` duration of
//! event time fires; it resolves only below its (lower) resolve level, so it does not flap;
//! warning → critical is a new FIRING of the same alert id.
//!
//! Per-application overrides match by app_id glob or by label (`[[rules.override]]` in the
//! config). The figures themselves (ratios, rates from counter deltas) are computed by the
//! caller; a rule only sees `(event time, value)`.

use serde::{Deserialize, Serialize};

use crate::alert::{AlertKind, Severity};

/// One rule's levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub warning: f64,
    pub critical: f64,
    /// How long (event time, ms) the figure must stay above a level before it fires.
    pub for_ms: i64,
    /// Once firing, the figure must fall below this to resolve.
    pub resolve_below: f64,
}

/// The threshold rules, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleSet {
    /// memory_used_bytes / memory_limit_bytes.
    pub memory: Thresholds,
    /// cpu_ratio.
    pub cpu: Thresholds,
    /// db_pool_in_use / db_pool_size; any waiter counts as a full pool.
    pub db_pool: Thresholds,
    /// disk_used_ratio.
    pub disk: Thresholds,
    /// latency_p95_ms.
    pub latency_p95_ms: Thresholds,
    /// request_queue_depth.
    pub queue_depth: Thresholds,
    /// errors / requests over the last minute (from counter deltas).
    pub error_rate: Thresholds,
    /// Fewest requests in the last minute for the error rate to be judged.
    pub error_rate_min_requests: f64,
    /// db_query_p95_ms.
    pub db_query_p95_ms: Thresholds,
    /// Per-application overrides, applied in order (a later match wins).
    pub overrides: Vec<RuleOverride>,
}

/// Replaces some fields of one rule's thresholds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThresholdsOverride {
    pub warning: Option<f64>,
    pub critical: Option<f64>,
    pub for_ms: Option<i64>,
    pub resolve_below: Option<f64>,
}

impl ThresholdsOverride {
    fn apply(&self, t: &mut Thresholds) {
        t.warning = self.warning.unwrap_or(t.warning);
        t.critical = self.critical.unwrap_or(t.critical);
        t.for_ms = self.for_ms.unwrap_or(t.for_ms);
        t.resolve_below = self.resolve_below.unwrap_or(t.resolve_below);
    }
}

/// Settings for the applications whose app_id matches `app` (a glob) and whose labels hold
/// `label` (`key=value`); either may be left out, both must match when given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleOverride {
    pub app: Option<String>,
    pub label: Option<String>,
    pub late_factor: Option<f64>,
    pub down_grace_ms: Option<i64>,
    /// Turns leak detection off (or on) for the matching applications.
    pub leak_detection: Option<bool>,
    /// Phi-accrual liveness for the matching applications (0 = fixed late_factor).
    pub phi_threshold: Option<f64>,
    pub memory: Option<ThresholdsOverride>,
    pub cpu: Option<ThresholdsOverride>,
    pub db_pool: Option<ThresholdsOverride>,
    pub disk: Option<ThresholdsOverride>,
    pub latency_p95_ms: Option<ThresholdsOverride>,
    pub queue_depth: Option<ThresholdsOverride>,
    pub error_rate: Option<ThresholdsOverride>,
    pub db_query_p95_ms: Option<ThresholdsOverride>,
}

impl RuleOverride {
    fn thresholds(&self) -> [Option<ThresholdsOverride>; 8] {
        [
            self.memory,
            self.cpu,
            self.db_pool,
            self.disk,
            self.latency_p95_ms,
            self.queue_depth,
            self.error_rate,
            self.db_query_p95_ms,
        ]
    }
}

/// What one application is judged by: the rules and liveness settings after its overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub rules: [(AlertKind, Thresholds); 8],
    pub late_factor: f64,
    /// 0 means max(3 × interval, 30 s).
    pub down_grace_ms: i64,
    pub forget_after_ms: i64,
    /// How leaks are judged (`[trend]`; `leak_detection` per override).
    pub trend: crate::trend::TrendConfig,
    /// FLAPPING after this many UP/DOWN transitions within `flap_window_ms` (0 = never).
    pub flap_transitions: usize,
    pub flap_window_ms: i64,
    /// Phi-accrual threshold (0 = fixed late_factor), and what it means in standard
    /// deviations past the mean inter-arrival time.
    pub phi_threshold: f64,
    pub phi_sigmas: f64,
    pub phi_min_std_ms: f64,
    pub phi_window: u32,
}

/// Inter-arrival times observed before phi-accrual replaces the fixed rule.
pub const MIN_PHI_SAMPLES: u32 = 10;

/// The number of standard deviations past the mean at which the phi-accrual detector
/// (with the logistic approximation of the normal tail, as Akka uses) reaches `phi`:
/// solves log10(1 + e^(y(1.5976 + 0.070566 y²))) = phi for y.
pub fn phi_sigmas(phi: f64) -> f64 {
    let target = (10f64.powf(phi) - 1.0).max(f64::MIN_POSITIVE).ln();
    let g = |y: f64| y * (1.5976 + 0.070566 * y * y);
    let (mut lo, mut hi) = (-10.0, 40.0);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if g(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

impl Profile {
    /// Silence after which an instance is LATE.
    pub fn late_after(&self, interval_ms: i32) -> i64 {
        (self.late_factor * f64::from(interval_ms)).round() as i64
    }

    /// Silence after which an instance is LATE given its own inter-arrival times (`n`
    /// samples of mean and standard deviation): in phi-accrual mode, once phi passes the
    /// threshold; with too few samples, or phi off, the fixed rule.
    pub fn late_after_observed(&self, interval_ms: i32, n: u32, mean_ms: f64, std_ms: f64) -> i64 {
        if self.phi_threshold > 0.0 && n >= MIN_PHI_SAMPLES {
            (mean_ms + self.phi_sigmas * std_ms.max(self.phi_min_std_ms)).round().max(1.0) as i64
        } else {
            self.late_after(interval_ms)
        }
    }

    /// Further silence after which a LATE instance is DOWN.
    pub fn down_grace(&self, interval_ms: i32) -> i64 {
        if self.down_grace_ms > 0 { self.down_grace_ms } else { (3 * i64::from(interval_ms)).max(30_000) }
    }
}

/// The rule set with its override matchers compiled, handing out each app's profile.
#[derive(Debug, Clone)]
pub struct CompiledRules {
    pub error_rate_min_requests: f64,
    default: std::sync::Arc<Profile>,
    overrides: Vec<MatchingOverride>,
}

/// An override with its app glob compiled and its label split into key and value.
type MatchingOverride = (Option<globset::GlobMatcher>, Option<(String, String)>, RuleOverride);

impl CompiledRules {
    /// The liveness defaults come from `[detection]`, the leak settings from `[trend]`.
    pub fn new(
        rules: &RuleSet,
        detection: &crate::engine::EngineConfig,
        trend: &crate::trend::TrendConfig,
    ) -> Result<CompiledRules, String> {
        rules.validate()?;
        let default = Profile {
            rules: rules.rules(),
            late_factor: detection.late_factor,
            down_grace_ms: detection.down_grace_ms,
            forget_after_ms: detection.forget_after_ms,
            trend: trend.clone(),
            flap_transitions: detection.flap_transitions as usize,
            flap_window_ms: detection.flap_window_ms,
            phi_threshold: detection.phi_threshold,
            phi_sigmas: phi_sigmas(detection.phi_threshold),
            phi_min_std_ms: detection.phi_min_std_ms,
            phi_window: detection.phi_window,
        };
        let mut overrides = Vec::new();
        for (i, o) in rules.overrides.iter().enumerate() {
            let glob = match &o.app {
                Some(g) => Some(
                    globset::Glob::new(g)
                        .map_err(|e| format!("overrides[{i}].app {g:?}: {e}"))?
                        .compile_matcher(),
                ),
                None => None,
            };
            let label = match &o.label {
                Some(l) => {
                    let (k, v) = l
                        .split_once('=')
                        .ok_or_else(|| format!("overrides[{i}].label {l:?} is not key=value"))?;
                    Some((k.trim().to_owned(), v.trim().to_owned()))
                }
                None => None,
            };
            if glob.is_none() && label.is_none() {
                return Err(format!("overrides[{i}] needs app (a glob) or label (key=value)"));
            }
            let mut check = default.clone();
            apply(&mut check, o);
            for (kind, t) in check.rules {
                if !(t.resolve_below <= t.warning && t.warning <= t.critical) || t.for_ms < 0 {
                    return Err(format!(
                        "overrides[{i}] {}: needs resolve_below <= warning <= critical",
                        kind.as_str()
                    ));
                }
            }
            if !(0.0..=30.0).contains(&check.phi_threshold) {
                return Err(format!("overrides[{i}]: phi_threshold must be 0 (off) or up to 30"));
            }
            if check.late_factor < 1.0 || check.down_grace_ms < 0 {
                return Err(format!("overrides[{i}]: late_factor must be >= 1 and down_grace_ms >= 0"));
            }
            overrides.push((glob, label, o.clone()));
        }
        Ok(CompiledRules {
            error_rate_min_requests: rules.error_rate_min_requests,
            default: default.into(),
            overrides,
        })
    }

    /// The profile of an application, from its id and labels.
    pub fn profile_for(&self, app_id: &str, labels: &crate::labels::Labels) -> std::sync::Arc<Profile> {
        let mut matched = self
            .overrides
            .iter()
            .filter(|(glob, label, _)| {
                glob.as_ref().is_none_or(|g| g.is_match(app_id))
                    && label.as_ref().is_none_or(|(k, v)| labels.get(k) == Some(v))
            })
            .peekable();
        if matched.peek().is_none() {
            return self.default.clone();
        }
        let mut profile = (*self.default).clone();
        for (_, _, o) in matched {
            apply(&mut profile, o);
        }
        profile.into()
    }
}

fn apply(profile: &mut Profile, o: &RuleOverride) {
    profile.late_factor = o.late_factor.unwrap_or(profile.late_factor);
    profile.down_grace_ms = o.down_grace_ms.unwrap_or(profile.down_grace_ms);
    profile.trend.enabled = o.leak_detection.unwrap_or(profile.trend.enabled);
    if let Some(phi) = o.phi_threshold {
        profile.phi_threshold = phi;
        profile.phi_sigmas = phi_sigmas(phi);
    }
    for ((_, t), over) in profile.rules.iter_mut().zip(o.thresholds()) {
        if let Some(over) = over {
            over.apply(t);
        }
    }
}

const MINUTE: i64 = 60_000;

impl Default for RuleSet {
    fn default() -> Self {
        let t = |warning, critical, for_ms, resolve_below| Thresholds {
            warning,
            critical,
            for_ms,
            resolve_below,
        };
        RuleSet {
            memory: t(0.80, 0.90, MINUTE, 0.75),
            cpu: t(0.80, 0.90, 5 * MINUTE, 0.75),
            db_pool: t(0.90, 0.95, MINUTE, 0.85),
            disk: t(0.85, 0.95, 0, 0.80),
            latency_p95_ms: t(5_000.0, 10_000.0, MINUTE, 4_000.0),
            queue_depth: t(50.0, 100.0, MINUTE, 40.0),
            error_rate: t(0.05, 0.10, MINUTE, 0.04),
            error_rate_min_requests: 20.0,
            db_query_p95_ms: t(2_000.0, 5_000.0, MINUTE, 1_500.0),
            overrides: Vec::new(),
        }
    }
}

impl RuleSet {
    /// The threshold rules in evaluation order.
    pub fn rules(&self) -> [(AlertKind, Thresholds); 8] {
        [
            (AlertKind::MemoryHigh, self.memory),
            (AlertKind::CpuHigh, self.cpu),
            (AlertKind::DbPoolSaturated, self.db_pool),
            (AlertKind::DiskHigh, self.disk),
            (AlertKind::SlowResponses, self.latency_p95_ms),
            (AlertKind::QueueBacklog, self.queue_depth),
            (AlertKind::ErrorRateHigh, self.error_rate),
            (AlertKind::SlowQueries, self.db_query_p95_ms),
        ]
    }

    pub fn validate(&self) -> Result<(), String> {
        for (kind, t) in self.rules() {
            if !(t.resolve_below <= t.warning && t.warning <= t.critical) || t.for_ms < 0 {
                return Err(format!(
                    "{}: needs resolve_below <= warning <= critical and for_ms >= 0",
                    kind.as_str()
                ));
            }
        }
        Ok(())
    }
}

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

/// The states of one instance's threshold rules, in the order of [`Profile::rules`]: nothing
/// allocated while every rule is idle (most instances, most of the time), 8 bytes instead of
/// the eight states' 256. Persisted as the eight states.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleStates(Option<Box<[RuleState; 8]>>);

impl RuleStates {
    /// The state of rule `i`.
    pub fn get(&self, i: usize) -> RuleState {
        self.0.as_ref().map(|states| states[i]).unwrap_or_default()
    }

    /// Every rule's state, in order.
    pub fn iter(&self) -> impl Iterator<Item = RuleState> + '_ {
        (0..8).map(|i| self.get(i))
    }

    /// Feeds rule `i` the figure observed at event time `t`: the states are allocated when a
    /// rule leaves idle and freed when every rule is idle again.
    pub fn observe(&mut self, i: usize, t: i64, value: f64, th: &Thresholds) -> Option<Transition> {
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
                    let mut states = Box::new([idle; 8]);
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
        let states = <[RuleState; 8]>::deserialize(deserializer)?;
        let idle = states.iter().all(|s| *s == RuleState::default());
        Ok(RuleStates((!idle).then(|| Box::new(states))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::trend::TrendConfig;

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
        assert_eq!(states.observe(2, 0, 0.5, &CPU), None);
        assert!(states.0.is_none(), "below warning: idle, nothing kept");
        let mut fired = Vec::new();
        let mut t = 0;
        while t <= 6 * MINUTE {
            fired.extend(states.observe(2, t, 0.95, &CPU));
            t += 5_000;
        }
        assert_eq!(fired, vec![Transition::Fire { severity: Severity::Critical, started_at: 0 }]);
        assert!(states.0.is_some());
        assert_eq!((states.get(2).firing, states.get(0).firing), (Some(Severity::Critical), None));
        // Persisted as the eight states, as before.
        let all: Vec<RuleState> = states.iter().collect();
        assert_eq!(postcard::to_stdvec(&states).unwrap(), postcard::to_stdvec(&all).unwrap()[1..]);
        let back: RuleStates = postcard::from_bytes(&postcard::to_stdvec(&states).unwrap()).unwrap();
        assert_eq!(back, states);
        let resolved = states.observe(2, t, 0.5, &CPU);
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

    #[test]
    fn defaults_are_consistent() {
        RuleSet::default().validate().unwrap();
    }

    #[test]
    fn overrides_match_by_glob_and_label_and_later_ones_win() {
        let mut rules = RuleSet::default();
        rules.overrides.push(RuleOverride {
            app: Some("batch-*".into()),
            late_factor: Some(10.0),
            cpu: Some(ThresholdsOverride { for_ms: Some(30 * MINUTE), ..Default::default() }),
            ..Default::default()
        });
        rules.overrides.push(RuleOverride {
            label: Some("team=payments".into()),
            memory: Some(ThresholdsOverride {
                warning: Some(0.85),
                critical: Some(0.97),
                ..Default::default()
            }),
            ..Default::default()
        });
        rules.overrides.push(RuleOverride {
            app: Some("batch-nightly".into()),
            late_factor: Some(20.0),
            ..Default::default()
        });
        let c = CompiledRules::new(&rules, &EngineConfig::default(), &TrendConfig::default()).unwrap();
        let none = crate::labels::Labels::new();
        let payments: crate::labels::Labels = [("team".into(), "payments".into())].into_iter().collect();
        let web = c.profile_for("web", &none);
        assert_eq!(web.late_factor, 2.0);
        assert_eq!(web.rules[1].1.for_ms, 5 * MINUTE);
        let batch = c.profile_for("batch-daily", &none);
        assert_eq!((batch.late_factor, batch.rules[1].1.for_ms), (10.0, 30 * MINUTE));
        assert_eq!(c.profile_for("batch-nightly", &none).late_factor, 20.0, "the later match wins");
        let pay = c.profile_for("web", &payments);
        assert_eq!(
            (pay.rules[0].1.warning, pay.rules[0].1.critical, pay.rules[0].1.resolve_below),
            (0.85, 0.97, 0.75)
        );
        assert_eq!(pay.late_factor, 2.0);
    }

    #[test]
    fn bad_overrides_are_refused_with_their_index() {
        let mut rules = RuleSet::default();
        rules.overrides.push(RuleOverride { label: Some("nokey".into()), ..Default::default() });
        assert!(
            CompiledRules::new(&rules, &EngineConfig::default(), &TrendConfig::default())
                .unwrap_err()
                .contains("overrides[0].label")
        );
        rules.overrides[0] = RuleOverride::default();
        assert!(
            CompiledRules::new(&rules, &EngineConfig::default(), &TrendConfig::default())
                .unwrap_err()
                .contains("needs app")
        );
        rules.overrides[0] = RuleOverride {
            app: Some("x".into()),
            cpu: Some(ThresholdsOverride { warning: Some(0.95), ..Default::default() }),
            ..Default::default()
        };
        assert!(
            CompiledRules::new(&rules, &EngineConfig::default(), &TrendConfig::default())
                .unwrap_err()
                .contains("CPU_HIGH")
        );
    }

    #[test]
    fn phi_sigmas_match_the_logistic_tail() {
        // phi = 1 is a 10 % tail: about 1.3 standard deviations; phi = 8 about 5.6.
        assert!((phi_sigmas(1.0) - 1.28).abs() < 0.1, "{}", phi_sigmas(1.0));
        let y = phi_sigmas(8.0);
        let phi = (1.0 + (y * (1.5976 + 0.070566 * y * y)).exp()).log10();
        assert!((phi - 8.0).abs() < 1e-6);
        assert!(phi_sigmas(12.0) > y);
    }
}
