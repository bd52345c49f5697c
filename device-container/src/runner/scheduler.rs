//! Which waiting task run goes next.
//!
//! Runs wait in one FIFO queue per task. A task has at most one run in flight: its interpreter
//! is single-threaded, so a second run would only wait for the first on the same VM worker
//! while holding a slot the other tasks could use, and the next run must see the state the
//! previous one committed. At most `slots` runs (the VM's worker threads) are in flight at
//! once. The next run is the oldest waiting run whose task has none in flight, so a hot or slow
//! task delays its own runs, not the others'.
//!
//! The queues are bounded: `capacity` waiting runs in all, and each task at most its own limit
//! (the device's per-task limit, lowered by the manifest's `limits.max_queued_runs`). A run
//! with no room is refused and the caller counts it as dropped.

use std::collections::{HashMap, HashSet, VecDeque};

use std::time::Instant;

use serde_json::Value;

/// A task run waiting for, or holding, a VM worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PendingRun {
    /// The run's place in the outbox's `runs` queue, where it is kept until its results are
    /// committed; `None` if it could not be written there (it then runs, unprotected).
    pub journal_seq: Option<i64>,
    pub task: String,
    /// The handler's `ctx`.
    pub context: Value,
    /// When it was queued: the time until it executes is reported as waiting, not as its run
    /// time.
    pub queued_at: Instant,
}

/// The waiting runs and the tasks with a run in flight.
#[derive(Debug)]
pub(crate) struct Scheduler {
    waiting: HashMap<String, VecDeque<(u64, PendingRun)>>,
    in_flight: HashSet<String>,
    queued: usize,
    capacity: usize,
    slots: usize,
    /// Arrival order of the runs, to take the oldest first.
    arrivals: u64,
}

impl Scheduler {
    /// An empty scheduler for at most `capacity` waiting runs and `slots` runs in flight.
    pub fn new(capacity: usize, slots: usize) -> Scheduler {
        Scheduler {
            waiting: HashMap::new(),
            in_flight: HashSet::new(),
            queued: 0,
            capacity: capacity.max(1),
            slots: slots.max(1),
            arrivals: 0,
        }
    }

    /// Whether a new run of `task` fits: the queues are not full and the task has fewer than
    /// `task_limit` runs waiting.
    pub fn has_room(&self, task: &str, task_limit: usize) -> bool {
        self.queued < self.capacity && self.waiting_for(task) < task_limit
    }

    /// Adds a run at the end of its task's queue (whether or not there is room: the caller
    /// checks [`Scheduler::has_room`] for new runs; runs recovered after a restart were
    /// accepted before and always go in).
    pub fn push(&mut self, run: PendingRun) {
        self.arrivals += 1;
        self.queued += 1;
        self.waiting
            .entry(run.task.clone())
            .or_default()
            .push_back((self.arrivals, run));
    }

    /// Takes the next run to start, if a slot is free: the oldest waiting run whose task has
    /// no run in flight. Its task is then in flight until [`Scheduler::finished`].
    pub fn next(&mut self) -> Option<PendingRun> {
        if self.in_flight.len() >= self.slots {
            return None;
        }
        let task = self
            .waiting
            .iter()
            .filter(|(task, _)| !self.in_flight.contains(*task))
            .filter_map(|(task, queue)| queue.front().map(|(arrival, _)| (*arrival, task)))
            .min()
            .map(|(_, task)| task.clone())?;
        let queue = self.waiting.get_mut(&task)?;
        let (_, run) = queue.pop_front()?;
        if queue.is_empty() {
            self.waiting.remove(&task);
        }
        self.queued -= 1;
        self.in_flight.insert(task);
        Some(run)
    }

    /// Ends the run in flight of `task`.
    pub fn finished(&mut self, task: &str) {
        self.in_flight.remove(task);
    }

    /// Runs waiting for `task`.
    pub fn waiting_for(&self, task: &str) -> usize {
        self.waiting.get(task).map_or(0, VecDeque::len)
    }

    /// Runs waiting, and runs in flight.
    pub fn depth(&self) -> (usize, usize) {
        (self.queued, self.in_flight.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(task: &str, n: i64) -> PendingRun {
        PendingRun {
            journal_seq: Some(n),
            task: task.into(),
            context: Value::Null,
            queued_at: Instant::now(),
        }
    }

    fn seq(run: Option<PendingRun>) -> Option<i64> {
        run.and_then(|r| r.journal_seq)
    }

    #[test]
    fn a_task_has_one_run_in_flight_and_others_go_ahead_of_its_queue() {
        let mut scheduler = Scheduler::new(10, 4);
        for (task, n) in [("hot", 1), ("hot", 2), ("hot", 3), ("cold", 4)] {
            scheduler.push(run(task, n));
        }
        assert_eq!(seq(scheduler.next()), Some(1));
        // The hot task's next runs wait for its first; the cold task's run goes now.
        assert_eq!(seq(scheduler.next()), Some(4));
        assert_eq!(scheduler.next(), None);
        assert_eq!(scheduler.depth(), (2, 2));
        scheduler.finished("hot");
        assert_eq!(seq(scheduler.next()), Some(2));
        scheduler.finished("hot");
        assert_eq!(seq(scheduler.next()), Some(3));
        assert_eq!(scheduler.depth(), (0, 2));
    }

    #[test]
    fn the_oldest_runnable_run_goes_first_within_the_free_slots() {
        let mut scheduler = Scheduler::new(10, 1);
        for (task, n) in [("a", 1), ("b", 2), ("a", 3), ("c", 4)] {
            scheduler.push(run(task, n));
        }
        let mut order = Vec::new();
        while let Some(next) = scheduler.next() {
            assert_eq!(scheduler.next(), None, "one slot: one run in flight");
            order.push(next.journal_seq.unwrap_or_default());
            scheduler.finished(&next.task);
        }
        assert_eq!(order, [1, 2, 3, 4]);
    }

    #[test]
    fn room_is_bounded_in_all_and_per_task() {
        let mut scheduler = Scheduler::new(3, 1);
        assert!(scheduler.has_room("a", 2));
        scheduler.push(run("a", 1));
        scheduler.push(run("a", 2));
        assert!(!scheduler.has_room("a", 2), "per-task limit");
        assert!(scheduler.has_room("b", 2));
        scheduler.push(run("b", 3));
        assert!(!scheduler.has_room("c", 2), "total capacity");
        // Taking a run frees its place.
        assert_eq!(seq(scheduler.next()), Some(1));
        assert!(scheduler.has_room("a", 2) && scheduler.has_room("c", 2));
    }
}
