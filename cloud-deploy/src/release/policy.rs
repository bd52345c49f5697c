//! Release policies: who (targeting), how fast (stages over sticky buckets), when to move on
//! (health gate), when to stop (abort rule), and which release wins (priority).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::target::{Target, TargetError};

/// Buckets per 100 %: stages are resolved to basis points, so 0.5 % is expressible.
pub const BUCKETS: u32 = 10_000;

/// A release policy as operators write it. Every field has a default: a policy of `{}` means
/// every device, one stage at 100 %, manual gate, no automatic abort, priority 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReleasePolicy {
    pub target: Target,
    /// Cumulative percentages of targeted devices, strictly increasing, the last at most 100.
    pub stages: Vec<f64>,
    /// Higher wins when several active releases of one task target a device; then the newest.
    pub priority: i32,
    pub gate: Gate,
    /// Automatic abort; none when absent.
    pub abort: Option<AbortRule>,
    /// Window (ms) over which notified devices spread their pulls, so a release to a large fleet
    /// never arrives as one burst; the cloud's `pace_window_ms` when absent.
    pub pace_window_ms: Option<u32>,
}

impl Default for ReleasePolicy {
    fn default() -> Self {
        ReleasePolicy {
            target: Target::default(),
            stages: vec![100.0],
            priority: 0,
            gate: Gate::default(),
            abort: None,
            pace_window_ms: None,
        }
    }
}

/// When a stage may advance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Gate {
    /// Advance automatically when the conditions below hold; otherwise wait for `advance`.
    pub auto_advance: bool,
    /// Share of reporting devices that installed and ran without failure (0–1).
    pub min_success_rate: f64,
    /// Reporting devices needed before the success rate counts.
    pub min_devices: u32,
    /// Time the stage must have run before it may advance.
    pub min_soak_secs: u64,
    /// Advance only while the 99th-percentile duration of the release's successful runs is at
    /// most this (ms); a stage with no run reported yet waits. No latency gate when absent.
    pub max_run_p99_ms: Option<u64>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            auto_advance: false,
            min_success_rate: 0.95,
            min_devices: 1,
            min_soak_secs: 0,
            max_run_p99_ms: None,
        }
    }
}

/// Kinds of failure an abort rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Install,
    Run,
}

/// When a release aborts by itself (its devices then fall back to the version they had).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortRule {
    /// Abort when at least this many devices failed.
    #[serde(default)]
    pub max_failed_devices: Option<u32>,
    /// Abort when at least this share (0–1) of reporting devices failed.
    #[serde(default)]
    pub max_failure_rate: Option<f64>,
    /// Reporting devices needed before the failure limits above are applied.
    #[serde(default = "default_min_executed")]
    pub min_executed: u32,
    /// Which failures count.
    #[serde(default = "default_failure_kinds")]
    pub kinds: Vec<FailureKind>,
    /// Abort when the 99th-percentile duration of the release's successful runs exceeds this (ms).
    #[serde(default)]
    pub max_run_p99_ms: Option<u64>,
    /// Successful runs needed before `max_run_p99_ms` is applied, so a few slow runs on one
    /// device cannot abort a release.
    #[serde(default = "default_min_runs")]
    pub min_runs: u32,
}

fn default_min_executed() -> u32 {
    1
}

fn default_min_runs() -> u32 {
    20
}

fn default_failure_kinds() -> Vec<FailureKind> {
    vec![FailureKind::Install, FailureKind::Run]
}

/// Longest pace window a policy may ask for.
pub const MAX_PACE_WINDOW_MS: u32 = 3_600_000;

/// A policy that cannot be followed as written; the text starts with the offending field (e.g.
/// `policy.stages[1]`), as the control plane answers it.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("policy.stages: give at least one stage (e.g. [1, 10, 50, 100])")]
    NoStages,
    #[error("policy.stages[{index}]: {stage} is not a percentage in (0, 100]")]
    StageNotAPercentage { index: usize, stage: f64 },
    #[error(
        "policy.stages[{index}]: {stage} is not above the previous stage {previous}; stages are cumulative and strictly increasing"
    )]
    StagesNotIncreasing {
        index: usize,
        stage: f64,
        previous: f64,
    },
    /// A share (a success or failure rate) outside 0–1.
    #[error("{field}: {value} is not between 0 and 1")]
    NotAShare { field: String, value: f64 },
    /// A duration limit of 0 ms.
    #[error("{field}: must be at least 1 (ms)")]
    ZeroDuration { field: String },
    /// An abort rule with no limit, which could never abort.
    #[error("{field}: give max_failed_devices, max_failure_rate and/or max_run_p99_ms")]
    NoAbortLimit { field: String },
    #[error("{field}.max_failed_devices: must be at least 1")]
    ZeroFailedDevices { field: String },
    #[error("{field}.kinds: give at least one of \"install\", \"run\"")]
    NoFailureKinds { field: String },
    #[error("{field}.min_runs: must be at least 1 (runs reported before max_run_p99_ms applies)")]
    ZeroMinRuns { field: String },
    #[error(
        "policy.pace_window_ms: at most {MAX_PACE_WINDOW_MS} (one hour); devices that miss a notice still pull at their periodic sync"
    )]
    PaceWindowTooLong { ms: u32 },
}

impl ReleasePolicy {
    /// Checks the whole policy; the error names the offending field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.target.validate("policy.target")?;
        if self.stages.is_empty() {
            return Err(PolicyError::NoStages);
        }
        let mut previous = 0.0;
        for (index, &stage) in self.stages.iter().enumerate() {
            if !stage.is_finite() || stage <= 0.0 || stage > 100.0 {
                return Err(PolicyError::StageNotAPercentage { index, stage });
            }
            if stage <= previous {
                return Err(PolicyError::StagesNotIncreasing {
                    index,
                    stage,
                    previous,
                });
            }
            previous = stage;
        }
        unit_interval("policy.gate.min_success_rate", self.gate.min_success_rate)?;
        positive_ms("policy.gate.max_run_p99_ms", self.gate.max_run_p99_ms)?;
        if let Some(abort) = &self.abort {
            abort.validate("policy.abort")?;
        }
        if let Some(ms) = self.pace_window_ms.filter(|&ms| ms > MAX_PACE_WINDOW_MS) {
            return Err(PolicyError::PaceWindowTooLong { ms });
        }
        Ok(())
    }

    /// The share of targeted devices (in buckets of [`BUCKETS`]) a stage includes.
    pub fn stage_buckets(&self, stage: usize) -> u32 {
        let percent = self
            .stages
            .get(stage)
            .or(self.stages.last())
            .copied()
            .unwrap_or(100.0);
        ((percent * f64::from(BUCKETS) / 100.0).round() as u32).min(BUCKETS)
    }

    /// Index of the last stage.
    pub fn last_stage(&self) -> usize {
        self.stages.len().saturating_sub(1)
    }

    /// Whether the gate or the abort rule looks at run durations.
    pub fn uses_run_latency(&self) -> bool {
        self.gate.max_run_p99_ms.is_some()
            || self
                .abort
                .as_ref()
                .is_some_and(|a| a.max_run_p99_ms.is_some())
    }
}

impl AbortRule {
    /// Checks the rule; `field` is where it sits in the policy (e.g. `policy.abort`).
    fn validate(&self, field: &str) -> Result<(), PolicyError> {
        let field = field.to_owned();
        if self.max_failed_devices.is_none()
            && self.max_failure_rate.is_none()
            && self.max_run_p99_ms.is_none()
        {
            return Err(PolicyError::NoAbortLimit { field });
        }
        if self.max_failed_devices == Some(0) {
            return Err(PolicyError::ZeroFailedDevices { field });
        }
        if let Some(rate) = self.max_failure_rate {
            unit_interval(&format!("{field}.max_failure_rate"), rate)?;
        }
        if self.kinds.is_empty() {
            return Err(PolicyError::NoFailureKinds { field });
        }
        positive_ms(&format!("{field}.max_run_p99_ms"), self.max_run_p99_ms)?;
        if self.min_runs == 0 {
            return Err(PolicyError::ZeroMinRuns { field });
        }
        Ok(())
    }
}

/// A duration limit, when given, must be at least 1 ms.
fn positive_ms(field: &str, value: Option<u64>) -> Result<(), PolicyError> {
    match value {
        Some(0) => Err(PolicyError::ZeroDuration {
            field: field.to_owned(),
        }),
        _ => Ok(()),
    }
}

fn unit_interval(field: &str, value: f64) -> Result<(), PolicyError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(PolicyError::NotAShare {
            field: field.to_owned(),
            value,
        })
    }
}

/// The device's sticky bucket for a release, in `0..BUCKETS`. The same device and salt always
/// give the same bucket, so as stages grow a device that was in stays in.
pub fn bucket(device_id: &str, salt: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update([0u8])
        .chain_update(device_id.as_bytes())
        .finalize();
    let value = u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ]);
    (value % u64::from(BUCKETS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Result<ReleasePolicy, String> {
        let policy: ReleasePolicy = serde_json::from_str(json).map_err(|e| e.to_string())?;
        policy.validate().map_err(|e| e.to_string())?;
        Ok(policy)
    }

    #[test]
    fn defaults_mean_everyone_at_once() {
        let p = policy("{}").unwrap();
        assert!(p.target.is_everyone());
        assert_eq!(p.stage_buckets(0), BUCKETS);
    }

    #[test]
    fn invalid_policies_name_the_field() {
        for (json, field) in [
            (r#"{"stages": [10, 5]}"#, "policy.stages[1]"),
            (r#"{"stages": [10, 10]}"#, "policy.stages[1]"),
            (r#"{"stages": [50, 150]}"#, "policy.stages[1]"),
            (r#"{"stages": [0]}"#, "policy.stages[0]"),
            (r#"{"stages": []}"#, "policy.stages"),
            (
                r#"{"gate": {"min_success_rate": 1.5}}"#,
                "policy.gate.min_success_rate",
            ),
            (
                r#"{"abort": {"max_failure_rate": -0.1}}"#,
                "policy.abort.max_failure_rate",
            ),
            (r#"{"abort": {"min_executed": 3}}"#, "policy.abort"),
            (
                r#"{"abort": {"min_executed": 3}}"#,
                "max_failure_rate and/or max_run_p99_ms",
            ),
            (
                r#"{"gate": {"max_run_p99_ms": 0}}"#,
                "policy.gate.max_run_p99_ms: must be at least 1",
            ),
            (
                r#"{"abort": {"max_run_p99_ms": 0}}"#,
                "policy.abort.max_run_p99_ms: must be at least 1",
            ),
            (
                r#"{"abort": {"max_run_p99_ms": 500, "min_runs": 0}}"#,
                "policy.abort.min_runs: must be at least 1",
            ),
            (
                r#"{"abort": {"max_run_p99_ms": 500, "kinds": []}}"#,
                "policy.abort.kinds",
            ),
            (r#"{"gate": {"max_run_p99_ms": -5}}"#, "invalid value"),
            (r#"{"abort": {"max_run_p99_ms": 1.5}}"#, "invalid type"),
            (
                r#"{"target": {"app_version": "five"}}"#,
                "policy.target.app_version",
            ),
            (r#"{"stagez": [1]}"#, "unknown field `stagez`"),
            (r#"{"gate": {"auto": true}}"#, "unknown field `auto`"),
        ] {
            let err = policy(json).unwrap_err();
            assert!(err.contains(field), "{json}: {err}");
        }
    }

    #[test]
    fn latency_limits_are_optional_and_stand_alone() {
        let p = policy("{}").unwrap();
        assert_eq!(p.gate.max_run_p99_ms, None);
        assert!(!p.uses_run_latency());
        let p = policy(r#"{"abort": {"max_run_p99_ms": 500}}"#).unwrap();
        let abort = p.abort.clone().unwrap();
        assert_eq!((abort.max_run_p99_ms, abort.min_runs), (Some(500), 20));
        assert!(p.uses_run_latency());
        let p = policy(r#"{"gate": {"auto_advance": true, "max_run_p99_ms": 800}}"#).unwrap();
        assert_eq!(p.gate.max_run_p99_ms, Some(800));
        assert!(p.uses_run_latency());
    }

    #[test]
    fn buckets_are_sticky_uniform_and_salted() {
        assert_eq!(bucket("device-1", "salt"), bucket("device-1", "salt"));
        let in_ten_percent = (0..10_000)
            .filter(|i| bucket(&format!("device-{i}"), "salt") < BUCKETS / 10)
            .count();
        assert!((800..1200).contains(&in_ten_percent), "{in_ten_percent}");
        let moved = (0..1000)
            .filter(|i| {
                bucket(&format!("d{i}"), "a") / 1000 != bucket(&format!("d{i}"), "b") / 1000
            })
            .count();
        assert!(moved > 500, "salt does not reshuffle buckets: {moved}");
    }

    #[test]
    fn stages_resolve_to_buckets() {
        let p = policy(r#"{"stages": [0.5, 10, 100]}"#).unwrap();
        assert_eq!(
            (p.stage_buckets(0), p.stage_buckets(1), p.stage_buckets(2)),
            (50, 1000, 10_000)
        );
        assert_eq!(p.last_stage(), 2);
    }
}
