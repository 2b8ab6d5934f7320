//! What an application is judged by: the threshold rules and their per-application
//! overrides (`[rules]`), the liveness and event-time settings (`[detection]`), compiled
//! into one [`Profile`] per application, and the state of a rule on one instance.
//!
//! A figure above its warning or critical level for a `for` duration of event time fires;
//! it resolves only below its (lower) resolve level, so it does not flap; warning → critical
//! is a new FIRING of the same alert id. The figures themselves (ratios, rates from counter
//! deltas) are computed by the caller; a rule only sees `(event time, value)`.

mod detection;
mod profile;
mod set;
mod state;

pub use detection::{DetectionConfig, MAX_FLAP_TRANSITIONS};
pub use profile::{CompiledRules, MIN_PHI_SAMPLES, Profile, RuleError, phi_sigmas};
pub use set::{Rule, RuleOverride, RuleSet, Thresholds, ThresholdsOverride};
pub use state::{RuleState, RuleStates, Transition};
