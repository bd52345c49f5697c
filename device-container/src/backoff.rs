//! Exponential backoff with jitter and the cloud's come-back hints, for everything that retries
//! the cloud.

use std::time::Duration;

use crate::random;

/// Delays that double after each failure up to a cap, each drawn at random from the upper half
/// of the current step ("equal jitter"), so a fleet that lost the cloud at the same moment does
/// not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

/// Longest come-back hint obeyed.
pub const MAX_RETRY_HINT: Duration = Duration::from_secs(60);

/// The come-back hint of a transfer the cloud refused because it is busy
/// (`RESOURCE_EXHAUSTED` with `retry-after-ms` metadata), at most [`MAX_RETRY_HINT`].
pub fn retry_hint(status: &tonic::Status) -> Option<Duration> {
    if status.code() != tonic::Code::ResourceExhausted {
        return None;
    }
    let millis: u64 = status
        .metadata()
        .get("retry-after-ms")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(millis).min(MAX_RETRY_HINT))
}

/// Shortest spread of the first reconnect after a lost session (see [`after_loss`]).
const MIN_LOSS_SPREAD: Duration = Duration::from_secs(2);
/// Longest spread of the first reconnect after a lost session.
const MAX_LOSS_SPREAD: Duration = Duration::from_secs(300);

/// How long to wait before the first reconnect after an established session was lost: a
/// uniformly random time within the cloud's pace window (at least 2 s). When a cloud restarts
/// or a replica dies, every device it held loses its stream at the same moment; drawing the
/// first attempt from the window the cloud spreads fleet-wide events over (it sizes that for its
/// fleet) keeps them from coming back in one instant. Later attempts follow [`Backoff`].
pub fn after_loss(pace_window: Duration) -> Duration {
    let window = pace_window.clamp(MIN_LOSS_SPREAD, MAX_LOSS_SPREAD);
    random::jitter(window.as_millis() as u64)
}

/// Shortest and longest delay between attempts to reach the cloud.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

impl Backoff {
    /// The policy the agent reconnects to the cloud with (and `walle fleet simulate`'s devices,
    /// so what the simulator measures about reconnect storms holds for real devices).
    pub fn reconnect() -> Backoff {
        Backoff::new(RECONNECT_MIN, RECONNECT_MAX)
    }

    /// Delays from `min` doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            step: min,
        }
    }

    /// The delay before the next attempt; doubles the step for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        step / 2 + random::jitter(step.as_millis() as u64 / 2 + 1)
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_their_jitter_up_to_the_cap_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let mut backoff = Backoff::new(min, max);
        for step in [100u64, 200, 400, 800, 1000, 1000] {
            let delay = backoff.next_delay().as_millis() as u64;
            assert!(
                (step / 2..=step).contains(&delay),
                "{delay} ms for step {step}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }

    #[test]
    fn a_reconnect_after_a_loss_is_drawn_from_the_pace_window_within_bounds() {
        let draws: Vec<Duration> = (0..2000)
            .map(|_| after_loss(Duration::from_secs(10)))
            .collect();
        assert!(draws.iter().all(|d| *d < Duration::from_secs(10)));
        // Spread over the window, not bunched: each tenth of it gets a share.
        for tenth in 0..10 {
            let low = Duration::from_secs(tenth);
            let count = draws
                .iter()
                .filter(|d| **d >= low && **d < low + Duration::from_secs(1))
                .count();
            assert!(
                (100..300).contains(&count),
                "{count} draws in second {tenth}"
            );
        }
        assert!((0..100).all(|_| after_loss(Duration::ZERO) < MIN_LOSS_SPREAD));
        assert!((0..100).all(|_| after_loss(Duration::from_secs(9999)) < MAX_LOSS_SPREAD));
    }
}
