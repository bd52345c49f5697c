//! One run (partial match) of a compiled pattern and its state machine.
//!
//! The matcher offers a run only the events of its partition that satisfy at least one of its
//! pattern's conditions (the event's slot `mask` is non-zero). Every other event of the partition
//! is "irrelevant" to the run, and an irrelevant event can only matter to a run that needs the
//! very next event: a strict step dies and a strict loop closes. So instead of touching every run
//! on every event, a run remembers the partition sequence number of the last event it took
//! (`last_pseq`) and [`Run::catch_up`] applies the skipped events in one step when the run is
//! next looked at. One application is enough: after it the run is dead or in a state that
//! ignores irrelevant events.

use std::sync::Arc;

use crate::event::Event;
use crate::pattern::{MAX_LOOP_EVENTS, PosStep, Program};

/// What an offered event did to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The run did not take the event and lives on.
    Ignored,
    /// The run took the event and needs more.
    Taken,
    /// The run can no longer match.
    Dead,
    /// The run took the event and is a complete match.
    Complete,
}

/// A partial match.
#[derive(Debug)]
pub(super) struct Run {
    /// Global creation number: orders runs by age.
    pub id: u64,
    /// Index of the positive step being filled; `steps.len()` once all are (then the run waits
    /// for its deadline, guarded by trailing negations).
    pub step: usize,
    /// Events taken by the current step.
    pub count: u32,
    /// Partition sequence number of the run's first event.
    pub start_pseq: u64,
    /// Partition sequence number of the last event the run took.
    pub last_pseq: u64,
    /// The events taken, in order.
    pub matched: Vec<Arc<Event>>,
    /// Where the events of the current loop begin in `matched`.
    loop_from: usize,
}

impl Run {
    /// A run started by `event` (which satisfies the first step), before it takes it.
    pub fn start(id: u64, pseq: u64) -> Run {
        Run {
            id,
            step: 0,
            count: 0,
            start_pseq: pseq,
            last_pseq: pseq.saturating_sub(1),
            matched: Vec::new(),
            loop_from: 0,
        }
    }

    fn loop_open(&self, prog: &Program) -> bool {
        prog.steps
            .get(self.step)
            .is_some_and(|s| s.looped && self.count >= 1)
    }

    /// Whether the run waits only for its deadline, at which it fires.
    pub fn waits_for_time(&self, prog: &Program) -> bool {
        let m = prog.steps.len();
        self.step == m || (self.step + 1 == m && self.loop_open(prog))
    }

    /// Takes `event` into positive step `s` (the current step or the one after an open loop).
    pub fn take(&mut self, prog: &Program, s: usize, pseq: u64, event: &Arc<Event>) -> Outcome {
        if s != self.step {
            self.step = s;
            self.count = 0;
        }
        let step = prog.steps[s];
        if step.looped && self.count == 0 {
            self.loop_from = self.matched.len();
        }
        self.count += 1;
        self.matched.push(Arc::clone(event));
        self.last_pseq = pseq;
        if step.looped && self.matched.len() - self.loop_from > MAX_LOOP_EVENTS {
            self.matched.remove(self.loop_from);
        }
        if !step.looped && self.count == step.min {
            self.step += 1;
            self.count = 0;
        }
        if self.step == prog.steps.len() && prog.trailing_negs == 0 {
            Outcome::Complete
        } else {
            Outcome::Taken
        }
    }

    /// Applies the events of the partition up to `seq` that the run was not offered. Returns
    /// whether the run is still alive.
    pub fn catch_up(&mut self, prog: &Program, seq: u64) -> bool {
        if seq <= self.last_pseq {
            return true;
        }
        let m = prog.steps.len();
        let Some(&cur) = prog.steps.get(self.step) else {
            return true;
        };
        if self.loop_open(prog) {
            if !cur.strict {
                return true;
            }
            // The first skipped event closed the strict loop; the next step must then accept
            // it too if it is strict, which it did not (it was skipped).
            self.step += 1;
            self.count = 0;
            return self.step == m || !prog.steps[self.step].strict;
        }
        !cur.strict
    }

    /// Offers an event of the run's partition with sequence number `pseq` satisfying the
    /// pattern's conditions in `mask`. The caller has caught the run up to `pseq - 1`.
    pub fn offer(&mut self, prog: &Program, pseq: u64, mask: u64, event: &Arc<Event>) -> Outcome {
        let m = prog.steps.len();
        let adjacent = pseq == self.last_pseq + 1;
        let accepts = |s: &PosStep| mask & s.bit() != 0 && (!s.strict || adjacent);
        let Some(&cur) = prog.steps.get(self.step) else {
            return if mask & prog.trailing_negs != 0 {
                Outcome::Dead
            } else {
                Outcome::Ignored
            };
        };
        if self.loop_open(prog) {
            let next = self.step + 1;
            if let Some(n) = prog.steps.get(next)
                && accepts(n)
            {
                return self.take(prog, next, pseq, event);
            }
            if accepts(&cur) {
                return self.take(prog, self.step, pseq, event);
            }
            let negs = prog
                .steps
                .get(next)
                .map_or(prog.trailing_negs, |n| n.negs_before);
            if mask & negs != 0 {
                return Outcome::Dead;
            }
            if cur.strict {
                // The loop closes; the event did not suit the next step either.
                self.step = next;
                self.count = 0;
                if next < m && prog.steps[next].strict {
                    return Outcome::Dead;
                }
            }
            return Outcome::Ignored;
        }
        if accepts(&cur) {
            return self.take(prog, self.step, pseq, event);
        }
        if (self.count == 0 && mask & cur.negs_before != 0) || cur.strict {
            Outcome::Dead
        } else {
            Outcome::Ignored
        }
    }

    /// The first partition sequence number whose event the run may still need for its window,
    /// given the partition is at `seq`.
    pub fn window_floor(&self, prog: &Program, seq: u64, max_window: usize) -> u64 {
        let end = if self.waits_for_time(prog) {
            self.last_pseq + 1
        } else {
            seq + 1
        };
        self.start_pseq.max(end.saturating_sub(max_window as u64))
    }
}
