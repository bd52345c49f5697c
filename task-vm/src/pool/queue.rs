//! One worker index's job queue, which outlives the thread serving it.
//!
//! Jobs wait here, not in a channel the thread owns, so that when a thread is abandoned (stuck
//! in native code) the jobs queued behind it are served by its replacement instead of being
//! lost with it. Each thread serves the queue under a generation; retiring the generation makes
//! the old thread, should it ever come back, take no further job and end.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::worker::Job;

/// The jobs of one worker index.
#[derive(Default)]
pub(super) struct JobQueue {
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// The generation of the thread serving the queue now.
    generation: u64,
    closed: bool,
}

impl JobQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a job at the end; false if the queue is closed (the pool is going away).
    pub(super) fn push(&self, job: Job) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        state.jobs.push_back(job);
        self.ready.notify_all();
        true
    }

    /// Puts jobs ahead of everything waiting, in the order given.
    pub(super) fn push_front(&self, jobs: Vec<Job>) {
        let mut state = self.lock();
        for job in jobs.into_iter().rev() {
            state.jobs.push_front(job);
        }
        self.ready.notify_all();
    }

    /// The next job for the thread of `generation`, waiting for one; `None` once that
    /// generation is retired or the queue is closed: the thread should end.
    pub(super) fn next(&self, generation: u64) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if state.closed || state.generation != generation {
                return None;
            }
            if let Some(job) = state.jobs.pop_front() {
                return Some(job);
            }
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Retires `generation` in favour of the next one, if it is still the current one; returns
    /// the new generation, or `None` if someone retired it first.
    pub(super) fn retire(&self, generation: u64) -> Option<u64> {
        let mut state = self.lock();
        if state.generation != generation {
            return None;
        }
        state.generation += 1;
        self.ready.notify_all();
        Some(state.generation)
    }

    /// Ends the queue: its threads stop after their current job; waiting jobs are dropped
    /// (their callers see the reply channel close).
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.jobs.clear();
        self.ready.notify_all();
    }
}
