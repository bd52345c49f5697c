//! Exponential backoff with jitter, for everything that retries the cloud.

use std::time::Duration;

use crate::random;

/// Delays that double after each failure up to a cap, each drawn at random from the upper half
/// of the current step ("equal jitter"), so a fleet that lost the cloud at the same moment does
/// not come back in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
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
}
