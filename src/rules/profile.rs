//! Each application's [`Profile`]: the rule set and the detection settings after the
//! overrides that match it, compiled once per configuration ([`CompiledRules`]).

use std::sync::Arc;

use super::{DetectionConfig, Rule, RuleOverride, RuleSet, Thresholds};
use crate::labels::Labels;
use crate::trend::TrendConfig;

/// Why a rule set or its detection settings cannot be used: the config key and the problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct RuleError {
    /// The config key at fault, e.g. `rules.overrides[0].label`.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl RuleError {
    pub(super) fn new(key: impl Into<String>, problem: impl Into<String>) -> RuleError {
        RuleError { key: key.into(), problem: problem.into() }
    }
}

/// What one application is judged by: the rules and liveness settings after its overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The threshold rules, in [`Rule::ALL`] order.
    pub rules: [(Rule, Thresholds); Rule::COUNT],
    /// LATE once no beat for late_factor × interval.
    pub late_factor: f64,
    /// DOWN this long after LATE, ms; 0 means max(3 × interval, 30 s).
    pub down_grace_ms: i64,
    /// An instance DOWN this long is forgotten, ms.
    pub forget_after_ms: i64,
    /// How leaks are judged (`[trend]`; `leak_detection` per override).
    pub trend: TrendConfig,
    /// FLAPPING after this many UP/DOWN transitions within `flap_window_ms` (0 = never).
    pub flap_transitions: usize,
    /// The window transitions are counted in, and the quiet time that ends FLAPPING, ms.
    pub flap_window_ms: i64,
    /// Phi-accrual threshold (0 = fixed late_factor).
    pub phi_threshold: f64,
    /// What `phi_threshold` means in standard deviations past the mean inter-arrival time.
    pub phi_sigmas: f64,
    /// Smallest standard deviation of the inter-arrival times phi assumes, ms.
    pub phi_min_std_ms: f64,
    /// Inter-arrival times the phi estimate is weighted over.
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
    /// The levels of `rule`.
    pub fn thresholds(&self, rule: Rule) -> Thresholds {
        self.rules[rule.index()].1
    }

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

    /// Applies an override's settings.
    fn apply(&mut self, o: &RuleOverride) {
        self.late_factor = o.late_factor.unwrap_or(self.late_factor);
        self.down_grace_ms = o.down_grace_ms.unwrap_or(self.down_grace_ms);
        self.trend.enabled = o.leak_detection.unwrap_or(self.trend.enabled);
        if let Some(phi) = o.phi_threshold {
            self.phi_threshold = phi;
            self.phi_sigmas = phi_sigmas(phi);
        }
        for (rule, t) in self.rules.iter_mut() {
            if let Some(over) = o.thresholds(*rule) {
                over.apply(t);
            }
        }
    }
}

/// The rule set with its override matchers compiled, handing out each app's profile.
#[derive(Debug, Clone)]
pub struct CompiledRules {
    /// Fewest requests in the last minute for the error rate to be judged.
    pub error_rate_min_requests: f64,
    default: Arc<Profile>,
    overrides: Vec<MatchingOverride>,
}

/// An override with its app glob compiled and its label split into key and value.
#[derive(Debug, Clone)]
struct MatchingOverride {
    app: Option<globset::GlobMatcher>,
    label: Option<(String, String)>,
    settings: RuleOverride,
}

impl MatchingOverride {
    /// Compiles override `i`, checking that the profile it makes of `default` is sound.
    fn new(i: usize, o: &RuleOverride, default: &Profile) -> Result<MatchingOverride, RuleError> {
        let key = |field: &str| format!("rules.overrides[{i}]{field}");
        let app = match &o.app {
            Some(g) => Some(
                globset::Glob::new(g)
                    .map_err(|e| RuleError::new(key(".app"), format!("{g:?}: {e}")))?
                    .compile_matcher(),
            ),
            None => None,
        };
        let label = match &o.label {
            Some(l) => {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| RuleError::new(key(".label"), format!("{l:?} is not key=value")))?;
                Some((k.trim().to_owned(), v.trim().to_owned()))
            }
            None => None,
        };
        if app.is_none() && label.is_none() {
            return Err(RuleError::new(key(""), "needs app (a glob) or label (key=value)"));
        }
        let mut check = default.clone();
        check.apply(o);
        for (rule, t) in check.rules {
            if !t.is_consistent() {
                return Err(RuleError::new(
                    key(&format!(".{}", rule.key())),
                    format!("{}: needs resolve_below <= warning <= critical", rule.kind().as_str()),
                ));
            }
        }
        if !(0.0..=30.0).contains(&check.phi_threshold) {
            return Err(RuleError::new(key(".phi_threshold"), "must be 0 (off) or up to 30"));
        }
        if check.late_factor < 1.0 || check.down_grace_ms < 0 {
            return Err(RuleError::new(key(""), "late_factor must be >= 1 and down_grace_ms >= 0"));
        }
        Ok(MatchingOverride { app, label, settings: o.clone() })
    }

    fn matches(&self, app_id: &str, labels: &Labels) -> bool {
        self.app.as_ref().is_none_or(|g| g.is_match(app_id))
            && self.label.as_ref().is_none_or(|(k, v)| labels.get(k) == Some(v))
    }
}

impl CompiledRules {
    /// The liveness defaults come from `[detection]`, the leak settings from `[trend]`.
    pub fn new(
        rules: &RuleSet,
        detection: &DetectionConfig,
        trend: &TrendConfig,
    ) -> Result<CompiledRules, RuleError> {
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
        let overrides = rules
            .overrides
            .iter()
            .enumerate()
            .map(|(i, o)| MatchingOverride::new(i, o, &default))
            .collect::<Result<_, _>>()?;
        Ok(CompiledRules {
            error_rate_min_requests: rules.error_rate_min_requests,
            default: default.into(),
            overrides,
        })
    }

    /// The profile of an application, from its id and labels.
    pub fn profile_for(&self, app_id: &str, labels: &Labels) -> Arc<Profile> {
        let mut matched = self.overrides.iter().filter(|o| o.matches(app_id, labels)).peekable();
        if matched.peek().is_none() {
            return self.default.clone();
        }
        let mut profile = (*self.default).clone();
        for o in matched {
            profile.apply(&o.settings);
        }
        profile.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::ThresholdsOverride;

    const MINUTE: i64 = crate::minute::MINUTE_MS;

    fn compile(rules: &RuleSet) -> Result<CompiledRules, RuleError> {
        CompiledRules::new(rules, &DetectionConfig::default(), &TrendConfig::default())
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
        let c = compile(&rules).unwrap();
        let none = Labels::new();
        let payments: Labels = [("team".into(), "payments".into())].into_iter().collect();
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
        assert!(compile(&rules).unwrap_err().to_string().contains("overrides[0].label"));
        rules.overrides[0] = RuleOverride::default();
        assert!(compile(&rules).unwrap_err().to_string().contains("needs app"));
        rules.overrides[0] = RuleOverride {
            app: Some("x".into()),
            cpu: Some(ThresholdsOverride { warning: Some(0.95), ..Default::default() }),
            ..Default::default()
        };
        assert!(compile(&rules).unwrap_err().to_string().contains("CPU_HIGH"));
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
