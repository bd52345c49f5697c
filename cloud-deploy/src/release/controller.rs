//! The health-gating loop: advances stages whose gate holds and aborts releases whose abort rule
//! fires. It only writes state through conditional updates, so two controllers racing (e.g. two
//! replicas) cannot advance a stage twice.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::policy::{AbortRule, Gate};
use super::select::{LiveRelease, ReleaseState};
use super::{failure_kinds, notify_change, supersede_if_full};
use crate::store::events::RunLatency;
use crate::store::now_ms;
use crate::store::releases::{ReleaseHealth, ReleaseRow};
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
    /// Stay at this stage, with why: what the gate waits for or which health condition fails,
    /// with the figures. None only at the last stage, where there is nothing to advance to.
    Hold(Option<String>),
}

/// How a hold reason starts, so the controller knows which reasons it wrote and may clear.
const HELD: &str = "held at stage ";

/// Decides, from a release's policy, stage and health, whether it aborts, advances or holds.
pub fn decide(
    release: &LiveRelease,
    stage_started_at_ms: i64,
    health: &ReleaseHealth,
    latency: &RunLatency,
    now_ms: i64,
) -> Decision {
    let abort = release.policy.abort.as_ref();
    if let Some(reason) = abort.and_then(|rule| abort_reason(rule, health, latency)) {
        return Decision::Abort(format!("auto-abort: {reason}"));
    }
    gate_decision(release, stage_started_at_ms, health, latency, now_ms)
}

/// Why the abort rule fires, if it does: failures first, then run latency.
fn abort_reason(rule: &AbortRule, health: &ReleaseHealth, latency: &RunLatency) -> Option<String> {
    failure_abort(rule, health).or_else(|| latency_abort(rule, latency))
}

fn failure_abort(rule: &AbortRule, health: &ReleaseHealth) -> Option<String> {
    let (failed, executed) = (health.failed_devices, health.executed);
    if executed < i64::from(rule.min_executed) {
        return None;
    }
    let rate = share(failed, executed);
    let by_count = rule
        .max_failed_devices
        .is_some_and(|max| failed >= i64::from(max));
    let by_rate = rule.max_failure_rate.is_some_and(|max| rate >= max);
    (by_count || by_rate).then(|| {
        format!(
            "{failed} of {executed} reporting devices failed ({:.0}%)",
            rate * 100.0
        )
    })
}

/// Fires once `min_runs` successful runs were reported and their p99 exceeds the limit.
fn latency_abort(rule: &AbortRule, latency: &RunLatency) -> Option<String> {
    let max = rule.max_run_p99_ms?;
    let p99 = latency.p99_ms?;
    (latency.runs >= i64::from(rule.min_runs) && exceeds(p99, max))
        .then(|| slow_runs(p99, max, latency.runs))
}

fn gate_decision(
    release: &LiveRelease,
    stage_started_at_ms: i64,
    health: &ReleaseHealth,
    latency: &RunLatency,
    now_ms: i64,
) -> Decision {
    let policy = &release.policy;
    let gate = &policy.gate;
    if release.stage >= policy.last_stage() {
        return Decision::Hold(None);
    }
    let held = |why: String| {
        Decision::Hold(Some(format!(
            "{HELD}{} of {} ({}%): {why}",
            release.stage + 1,
            policy.stages.len(),
            policy.stages.get(release.stage).copied().unwrap_or(100.0)
        )))
    };
    if !gate.auto_advance {
        return held(
            "waiting for an operator to advance (the gate does not advance automatically)".into(),
        );
    }
    let failing = gate_failures(gate, health, latency);
    if !failing.is_empty() {
        return held(failing.join("; "));
    }
    let waiting = gate_waits(gate, stage_started_at_ms, health, latency, now_ms);
    if waiting.is_empty() {
        Decision::Advance
    } else {
        held(waiting.join("; "))
    }
}

/// What the gate still waits for before a healthy stage may advance, with the figures: too few
/// reporting devices, no run reported for the latency condition, soak time left.
fn gate_waits(
    gate: &Gate,
    stage_started_at_ms: i64,
    health: &ReleaseHealth,
    latency: &RunLatency,
    now_ms: i64,
) -> Vec<String> {
    let mut waiting = Vec::new();
    let needed = i64::from(gate.min_devices).max(1);
    if health.executed < needed {
        waiting.push(format!(
            "waiting for {needed} reporting devices ({} so far)",
            health.executed
        ));
    }
    if let Some(max) = gate.max_run_p99_ms
        && latency.p99_ms.is_none()
    {
        waiting.push(format!(
            "waiting for a reported run (the gate needs run p99 <= {max} ms)"
        ));
    }
    let soak_ms = (gate.min_soak_secs as i64).saturating_mul(1000);
    if now_ms - stage_started_at_ms < soak_ms {
        waiting.push(format!(
            "soaking: a stage runs {} s before it advances",
            gate.min_soak_secs
        ));
    }
    waiting
}

/// The gate's health conditions that fail now, with the figures. Too few devices or runs to
/// judge is not a failure: the stage just waits.
fn gate_failures(gate: &Gate, health: &ReleaseHealth, latency: &RunLatency) -> Vec<String> {
    let mut failing = Vec::new();
    let executed = health.executed;
    let rate = succeeded(health);
    if executed > 0 && executed >= i64::from(gate.min_devices) && rate < gate.min_success_rate {
        failing.push(format!(
            "success rate {:.1}% < {:.1}% over {executed} devices",
            rate * 100.0,
            gate.min_success_rate * 100.0
        ));
    }
    if let (Some(max), Some(p99)) = (gate.max_run_p99_ms, latency.p99_ms)
        && exceeds(p99, max)
    {
        failing.push(slow_runs(p99, max, latency.runs));
    }
    failing
}

/// Share of reporting devices without a counted failure; 0 before any reported.
fn succeeded(health: &ReleaseHealth) -> f64 {
    share(
        (health.executed - health.failed_devices).max(0),
        health.executed,
    )
}

fn share(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn exceeds(p99_ms: i64, max_ms: u64) -> bool {
    i128::from(p99_ms) > i128::from(max_ms)
}

fn slow_runs(p99_ms: i64, max_ms: u64, runs: i64) -> String {
    format!("run p99 {p99_ms} ms > {max_ms} ms over {runs} runs")
}

/// One pass over every active release.
pub async fn tick(state: &AppState) -> Result<(), CloudError> {
    for row in state.db.live_releases().await? {
        if row.state != ReleaseState::Active.as_str() {
            continue;
        }
        let live = row.live()?;
        let health = state
            .db
            .release_health(&live.id, &failure_kinds(&live.policy))
            .await?;
        let latency = if live.policy.uses_run_latency() {
            state.db.run_latency(&live.id).await?
        } else {
            RunLatency::default()
        };
        match decide(&live, row.stage_started_at_ms, &health, &latency, now_ms()) {
            Decision::Abort(reason) => abort(state, &live, &reason).await?,
            Decision::Advance => {
                show_hold(state, &row, None).await?;
                advance(state, &live, row.stage).await?;
            }
            Decision::Hold(reason) => show_hold(state, &row, reason.as_deref()).await?,
        }
    }
    Ok(())
}

async fn abort(state: &AppState, live: &LiveRelease, reason: &str) -> Result<(), CloudError> {
    if state
        .db
        .transition_release(
            &live.id,
            &[ReleaseState::Active],
            ReleaseState::Aborted,
            reason,
        )
        .await?
    {
        tracing::warn!(release = %live.id, %reason, "release aborted");
        notify_change(state, live).await;
    }
    Ok(())
}

async fn advance(state: &AppState, live: &LiveRelease, from: i64) -> Result<(), CloudError> {
    if state.db.advance_stage(&live.id, from).await? {
        tracing::info!(release = %live.id, stage = from + 2, "release advanced by its health gate");
        if let Some(updated) = state.db.get_release(&live.id).await? {
            supersede_if_full(state, &updated).await?;
        }
        notify_change(state, live).await;
    }
    Ok(())
}

/// Puts why the gate holds a release in its state reason, which the API and console show, or
/// clears a hold reason that no longer applies. Other reasons (e.g. "restored: …") stay until a
/// hold replaces them.
async fn show_hold(
    state: &AppState,
    row: &ReleaseRow,
    reason: Option<&str>,
) -> Result<(), CloudError> {
    let current = row.state_reason.as_str();
    let wanted = match reason {
        Some(reason) => reason,
        None if current.starts_with(HELD) => "",
        None => return Ok(()),
    };
    if wanted != current && state.db.set_active_reason(&row.id, wanted).await? && !wanted.is_empty()
    {
        tracing::info!(release = %row.id, reason = %wanted, "release held by its health gate");
    }
    Ok(())
}

/// Records targeted and installed devices of every active or paused release.
pub async fn sample_coverage(state: &AppState) -> Result<(), CloudError> {
    let at_ms = now_ms();
    for row in state.db.live_releases().await? {
        if row.state != ReleaseState::Active.as_str() && row.state != ReleaseState::Paused.as_str()
        {
            continue;
        }
        let selection = super::stats::selection(state, &row.live()?, false).await?;
        let stats = super::stats(state, &row, &selection).await?;
        let sample = crate::store::stats::CoverageSample {
            at_ms,
            stage: row.stage,
            targeted: stats.targeted as i64,
            installed: stats.installed as i64,
        };
        state.db.add_sample(&row.id, &sample).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::policy::{FailureKind, ReleasePolicy};

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

    fn held(why: &str) -> Decision {
        Decision::Hold(Some(format!("held at stage 1 of 2 (10%): {why}")))
    }

    fn health(executed: i64, failed: i64) -> ReleaseHealth {
        ReleaseHealth {
            executed,
            failed_devices: failed,
            ..ReleaseHealth::default()
        }
    }

    const NO_RUNS: RunLatency = RunLatency {
        runs: 0,
        p99_ms: None,
    };

    fn runs(runs: i64, p99_ms: i64) -> RunLatency {
        RunLatency {
            runs,
            p99_ms: Some(p99_ms),
        }
    }

    fn auto(min_devices: u32, soak: u64) -> Gate {
        Gate {
            auto_advance: true,
            min_success_rate: 0.9,
            min_devices,
            min_soak_secs: soak,
            max_run_p99_ms: None,
        }
    }

    #[test]
    fn advances_only_when_gate_holds() {
        let r = release(auto(3, 0), None);
        assert_eq!(
            decide(&r, 0, &health(2, 0), &NO_RUNS, 0),
            held("waiting for 3 reporting devices (2 so far)"),
            "too few devices"
        );
        assert_eq!(
            decide(&r, 0, &health(3, 1), &NO_RUNS, 0),
            Decision::Hold(Some(
                "held at stage 1 of 2 (10%): success rate 66.7% < 90.0% over 3 devices".into()
            )),
            "success rate too low"
        );
        assert_eq!(
            decide(&r, 0, &health(10, 1), &NO_RUNS, 0),
            Decision::Advance
        );
        let soaking = release(auto(3, 60), None);
        assert_eq!(
            decide(&soaking, 0, &health(10, 0), &NO_RUNS, 59_000),
            held("soaking: a stage runs 60 s before it advances")
        );
        assert_eq!(
            decide(&soaking, 0, &health(10, 0), &NO_RUNS, 60_000),
            Decision::Advance
        );
        let manual = release(Gate::default(), None);
        assert_eq!(
            decide(&manual, 0, &health(100, 0), &NO_RUNS, 0),
            held("waiting for an operator to advance (the gate does not advance automatically)")
        );
        let mut last = release(auto(1, 0), None);
        last.stage = 1;
        assert_eq!(
            decide(&last, 0, &health(100, 0), &NO_RUNS, 0),
            Decision::Hold(None)
        );
    }

    #[test]
    fn a_waiting_stage_says_what_it_waits_for_with_the_figures() {
        let r = release(auto(5, 30), None);
        assert_eq!(
            decide(&r, 0, &health(1, 0), &NO_RUNS, 10_000),
            held(
                "waiting for 5 reporting devices (1 so far); soaking: a stage runs 30 s before it advances"
            )
        );
    }

    #[test]
    fn aborts_on_count_or_rate_after_minimum() {
        let rule = |count, rate, min| AbortRule {
            max_failed_devices: count,
            max_failure_rate: rate,
            min_executed: min,
            kinds: vec![FailureKind::Install, FailureKind::Run],
            max_run_p99_ms: None,
            min_runs: 20,
        };
        let by_count = release(auto(1, 0), Some(rule(Some(2), None, 1)));
        assert!(matches!(
            decide(&by_count, 0, &health(10, 2), &NO_RUNS, 0),
            Decision::Abort(_)
        ));
        assert!(!matches!(
            decide(&by_count, 0, &health(10, 1), &NO_RUNS, 0),
            Decision::Abort(_)
        ));
        let by_rate = release(Gate::default(), Some(rule(None, Some(0.5), 4)));
        assert_eq!(
            decide(&by_rate, 0, &health(3, 3), &NO_RUNS, 0),
            held("waiting for an operator to advance (the gate does not advance automatically)"),
            "below minimum executed"
        );
        assert!(matches!(
            decide(&by_rate, 0, &health(4, 2), &NO_RUNS, 0),
            Decision::Abort(_)
        ));
    }

    #[test]
    fn latency_gate_holds_with_the_figures_until_p99_is_low_enough() {
        let gate = Gate {
            max_run_p99_ms: Some(500),
            ..auto(1, 0)
        };
        let r = release(gate, None);
        assert_eq!(
            decide(&r, 0, &health(10, 0), &NO_RUNS, 0),
            held("waiting for a reported run (the gate needs run p99 <= 500 ms)"),
            "no run yet: the stage waits, and says so"
        );
        assert_eq!(
            decide(&r, 0, &health(10, 0), &runs(143, 812), 0),
            Decision::Hold(Some(
                "held at stage 1 of 2 (10%): run p99 812 ms > 500 ms over 143 runs".into()
            ))
        );
        assert_eq!(
            decide(&r, 0, &health(10, 0), &runs(143, 500), 0),
            Decision::Advance,
            "at the limit is within it"
        );
        assert_eq!(
            decide(&r, 0, &health(0, 0), &runs(143, 812), 0),
            Decision::Hold(Some(
                "held at stage 1 of 2 (10%): run p99 812 ms > 500 ms over 143 runs".into()
            )),
            "slow runs hold the stage even before enough devices reported"
        );
        let Decision::Hold(Some(both)) = decide(&r, 0, &health(10, 5), &runs(143, 812), 0) else {
            panic!("a failing and slow stage must be held with reasons");
        };
        assert!(
            both.contains("success rate 50.0% < 90.0% over 10 devices")
                && both.contains("run p99 812 ms > 500 ms"),
            "{both}"
        );
        let mut last = release(
            Gate {
                max_run_p99_ms: Some(500),
                ..auto(1, 0)
            },
            None,
        );
        last.stage = 1;
        assert_eq!(
            decide(&last, 0, &health(10, 0), &runs(143, 812), 0),
            Decision::Hold(None),
            "the last stage has no gate to hold"
        );
    }

    #[test]
    fn latency_aborts_only_after_min_runs() {
        let rule = AbortRule {
            max_failed_devices: None,
            max_failure_rate: None,
            min_executed: 1,
            kinds: vec![FailureKind::Run],
            max_run_p99_ms: Some(500),
            min_runs: 20,
        };
        let r = release(Gate::default(), Some(rule));
        assert_eq!(
            decide(&r, 0, &health(1, 0), &runs(19, 5_000), 0),
            held("waiting for an operator to advance (the gate does not advance automatically)"),
            "one slow device below min_runs must not abort"
        );
        assert_eq!(
            decide(&r, 0, &health(1, 0), &runs(20, 500), 0),
            held("waiting for an operator to advance (the gate does not advance automatically)"),
            "at the limit is within it"
        );
        assert_eq!(
            decide(&r, 0, &health(4, 0), &runs(20, 812), 0),
            Decision::Abort("auto-abort: run p99 812 ms > 500 ms over 20 runs".into())
        );
    }
}
