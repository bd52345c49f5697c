//! The health-gating loop: advances stages whose gate holds and aborts releases whose abort rule
//! fires. It only writes state through conditional updates, so two controllers racing (e.g. two
//! replicas) cannot advance a stage twice.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::select::ReleaseState;
use super::{failure_kinds, notify_change, supersede_if_full};
use crate::store::now_ms;
use crate::store::releases::ReleaseHealth;
use crate::{AppState, CloudError};

/// Name of the lease that makes one replica the release controller.
pub const LEASE: &str = "release-controller";

/// Runs [`tick`] every `interval` until stopped, on the replica that holds the controller lease.
/// The lease lasts ten intervals (at least a second), so a replica that dies without giving it up
/// is replaced soon after.
pub async fn run(state: AppState, interval: Duration, mut stop: watch::Receiver<bool>) {
    let ttl_ms = (interval.as_millis() as i64 * 10).max(1000);
    let sample_every = Duration::from_millis(state.config.coverage_sample_ms.max(10));
    let mut last_sample: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let held = match state
            .db
            .acquire_lease(LEASE, &state.replica_id, ttl_ms)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the controller lease");
                false
            }
        };
        if held != state.controller_active.swap(held, Ordering::SeqCst) {
            tracing::info!(replica = %state.replica_id, held, "release controller lease changed hands");
        }
        if !held {
            continue;
        }
        if let Err(e) = tick(&state).await {
            tracing::warn!(error = %e, "release controller tick failed");
        }
        if last_sample.is_none_or(|t| t.elapsed() >= sample_every) {
            last_sample = Some(std::time::Instant::now());
            if let Err(e) = sample_coverage(&state).await {
                tracing::warn!(error = %e, "coverage sampling failed");
            }
        }
    }
    if state.controller_active.swap(false, Ordering::SeqCst)
        && let Err(e) = state.db.release_lease(LEASE, &state.replica_id).await
    {
        tracing::warn!(error = %e, "cannot give up the controller lease");
    }
}

/// What one tick decided for one release.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Abort(String),
    Advance,
    Hold,
}

/// Decides, from a release's policy, stage and health, whether it aborts, advances or holds.
pub fn decide(
    release: &super::select::LiveRelease,
    stage_started_at_ms: i64,
    health: &ReleaseHealth,
    now_ms: i64,
) -> Decision {
    let policy = &release.policy;
    let failed = health.failed_devices;
    let executed = health.executed;
    if let Some(rule) = &policy.abort
        && executed >= i64::from(rule.min_executed)
    {
        let rate = if executed == 0 {
            0.0
        } else {
            failed as f64 / executed as f64
        };
        let by_count = rule
            .max_failed_devices
            .is_some_and(|max| failed >= i64::from(max));
        let by_rate = rule.max_failure_rate.is_some_and(|max| rate >= max);
        if by_count || by_rate {
            return Decision::Abort(format!(
                "auto-abort: {failed} of {executed} reporting devices failed ({:.0}%)",
                rate * 100.0
            ));
        }
    }
    let gate = &policy.gate;
    if !gate.auto_advance || release.stage >= policy.last_stage() {
        return Decision::Hold;
    }
    let succeeded = (executed - failed).max(0);
    let success_rate = if executed == 0 {
        0.0
    } else {
        succeeded as f64 / executed as f64
    };
    let soaked = now_ms - stage_started_at_ms >= (gate.min_soak_secs as i64).saturating_mul(1000);
    if executed >= i64::from(gate.min_devices) && success_rate >= gate.min_success_rate && soaked {
        Decision::Advance
    } else {
        Decision::Hold
    }
}

/// One pass over every active release.
pub async fn tick(state: &AppState) -> Result<(), CloudError> {
    for row in state.db.list_releases().await? {
        if row.state != ReleaseState::Active.as_str() {
            continue;
        }
        let live = row.live()?;
        let health = state
            .db
            .release_health(&live.id, &failure_kinds(&live.policy))
            .await?;
        match decide(&live, row.stage_started_at_ms, &health, now_ms()) {
            Decision::Abort(reason) => {
                if state
                    .db
                    .transition_release(
                        &live.id,
                        &[ReleaseState::Active],
                        ReleaseState::Aborted,
                        &reason,
                    )
                    .await?
                {
                    state.db.restore_superseded(&live.id).await?;
                    tracing::warn!(release = %live.id, %reason, "release aborted");
                    notify_change(state, &live.task, &live.id).await;
                }
            }
            Decision::Advance => {
                if state.db.advance_stage(&live.id, row.stage).await? {
                    tracing::info!(release = %live.id, stage = row.stage + 2, "release advanced by its health gate");
                    if let Some(updated) = state.db.get_release(&live.id).await? {
                        supersede_if_full(state, &updated).await?;
                    }
                    notify_change(state, &live.task, &live.id).await;
                }
            }
            Decision::Hold => {}
        }
    }
    Ok(())
}

/// Records targeted and installed devices of every active or paused release.
pub async fn sample_coverage(state: &AppState) -> Result<(), CloudError> {
    let at_ms = now_ms();
    for row in state.db.list_releases().await? {
        if row.state != ReleaseState::Active.as_str() && row.state != ReleaseState::Paused.as_str()
        {
            continue;
        }
        let stats = super::stats(state, &row).await?;
        let sample = crate::store::stats::CoverageSample {
            at_ms,
            stage: row.stage,
            targeted: stats.targeted as i64,
            installed: stats.installed,
        };
        state.db.add_sample(&row.id, &sample).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::policy::{AbortRule, FailureKind, Gate, ReleasePolicy};
    use crate::release::select::LiveRelease;

    fn release(gate: Gate, abort: Option<AbortRule>) -> LiveRelease {
        LiveRelease {
            id: "r".into(),
            seq: 1,
            task: "t".into(),
            version: "1.0.0".into(),
            state: ReleaseState::Active,
            stage: 0,
            salt: "r".into(),
            policy: ReleasePolicy {
                stages: vec![10.0, 100.0],
                gate,
                abort,
                ..ReleasePolicy::default()
            },
        }
    }

    fn health(executed: i64, failed: i64) -> ReleaseHealth {
        ReleaseHealth {
            executed,
            failed_devices: failed,
            ..ReleaseHealth::default()
        }
    }

    fn auto(min_devices: u32, soak: u64) -> Gate {
        Gate {
            auto_advance: true,
            min_success_rate: 0.9,
            min_devices,
            min_soak_secs: soak,
        }
    }

    #[test]
    fn advances_only_when_gate_holds() {
        let r = release(auto(3, 0), None);
        assert_eq!(
            decide(&r, 0, &health(2, 0), 0),
            Decision::Hold,
            "too few devices"
        );
        assert_eq!(
            decide(&r, 0, &health(3, 1), 0),
            Decision::Hold,
            "success rate too low"
        );
        assert_eq!(decide(&r, 0, &health(10, 1), 0), Decision::Advance);
        let soaking = release(auto(3, 60), None);
        assert_eq!(decide(&soaking, 0, &health(10, 0), 59_000), Decision::Hold);
        assert_eq!(
            decide(&soaking, 0, &health(10, 0), 60_000),
            Decision::Advance
        );
        let manual = release(Gate::default(), None);
        assert_eq!(decide(&manual, 0, &health(100, 0), 0), Decision::Hold);
        let mut last = release(auto(1, 0), None);
        last.stage = 1;
        assert_eq!(decide(&last, 0, &health(100, 0), 0), Decision::Hold);
    }

    #[test]
    fn aborts_on_count_or_rate_after_minimum() {
        let rule = |count, rate, min| AbortRule {
            max_failed_devices: count,
            max_failure_rate: rate,
            min_executed: min,
            kinds: vec![FailureKind::Install, FailureKind::Run],
        };
        let by_count = release(auto(1, 0), Some(rule(Some(2), None, 1)));
        assert!(matches!(
            decide(&by_count, 0, &health(10, 2), 0),
            Decision::Abort(_)
        ));
        assert!(!matches!(
            decide(&by_count, 0, &health(10, 1), 0),
            Decision::Abort(_)
        ));
        let by_rate = release(Gate::default(), Some(rule(None, Some(0.5), 4)));
        assert_eq!(
            decide(&by_rate, 0, &health(3, 3), 0),
            Decision::Hold,
            "below minimum executed"
        );
        assert!(matches!(
            decide(&by_rate, 0, &health(4, 2), 0),
            Decision::Abort(_)
        ));
    }
}
