//! Matches installed tasks' trigger patterns against the event stream.
//!
//! All installed patterns compile into one [`TriggerSet`] so that the work per event depends on
//! the patterns that can match it, not on how many are installed:
//!
//! * the condition index (`index.rs`) maps an event to the conditions it satisfies
//!   (hash maps on equalities, tries on prefixes, a short residual list); each condition knows
//!   the patterns whose first step it is, which start runs;
//! * runs (partial matches) live in their **partition** (the events sharing the pattern's
//!   `partition_by` values), and partitions are shared by every pattern partitioned the same way.
//!   An event visits its partition in each distinct partitioning (a handful), appends itself to
//!   the partition's event buffer (the source of firings' windows) and is offered to the runs
//!   there whose pattern has a condition it satisfies;
//! * strict contiguity is checked lazily with a per-partition event counter
//!   (`matcher/run.rs`), and `within` bounds with one timer heap ordered by deadline, so nothing
//!   is touched on events that do not concern it;
//! * memory stays bounded: partitions sweep their failed runs every [`SWEEP_EVERY`] events and
//!   trim their buffers, a round-robin sweeper visits a few quiet partitions per event, stale
//!   timers and queue entries are compacted when they outnumber live runs, and each pattern
//!   keeps at most [`MAX_PARTIALS_PER_PATTERN`] runs (over that the oldest is dropped; runs that
//!   failed unnoticed may count towards the limit until swept).
//!
//! Installing or removing a task rebuilds the index only; the runs of other tasks stay where
//! they are, keyed by stable pattern ids. The semantics are those of [`crate::pattern`].

mod run;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use crate::cond::{Field, encode_key};
use crate::event::Event;
use crate::index::{CondId, Index, PatternConds};
use crate::pattern::{PatternError, PatternSpec, Program, SkipPolicy, validate_patterns};
use run::{Outcome, Run};

/// Events kept in one firing's window (the most recent ones, up to the match's last event).
pub const MAX_WINDOW_EVENTS: usize = 512;
/// Partial matches (runs) kept per pattern; the oldest is dropped beyond this.
pub const MAX_PARTIALS_PER_PATTERN: usize = 4096;
/// A partition drops its dead runs and trims its buffer every this many events.
pub const SWEEP_EVERY: u64 = 64;

/// A completed match: run `task` with this context.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub task: String,
    pub trigger: String,
    /// The events that satisfied the positive steps, in step order.
    pub matched: Vec<Event>,
    /// Every event of the partition from the first matched event to the last, in arrival order.
    pub window: Vec<Event>,
}

impl Firing {
    /// The trigger context as tasks receive it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "task": self.task,
            "trigger": self.trigger,
            "matched": self.matched.iter().map(Event::to_json).collect::<Vec<_>>(),
            "window": self.window.iter().map(Event::to_json).collect::<Vec<_>>(),
        })
    }
}

/// One installed pattern.
#[derive(Debug)]
struct Installed {
    /// Stable id, increasing in install order.
    id: u64,
    task: String,
    trigger: String,
    program: Program,
    /// Index into [`TriggerSet::spaces`].
    space: usize,
    /// Per slot, the condition id in the current index.
    slot_conds: Vec<CondId>,
    /// Runs held (some may have failed without being noticed yet).
    live: usize,
    /// (run id, partition id) in creation order, to evict the oldest; may hold removed runs.
    ages: VecDeque<(u64, u64)>,
}

/// The partitions of every pattern partitioned by the same fields.
#[derive(Debug)]
struct Space {
    fields: Vec<Field>,
    by_key: HashMap<Box<[u8]>, u64>,
    parts: HashMap<u64, Partition>,
}

/// The events sharing one set of partition values, and the runs on them.
#[derive(Debug)]
struct Partition {
    key: Box<[u8]>,
    /// Sequence number of the partition's latest event (the first is 1).
    seq: u64,
    /// Recent events; `buf[0]` has sequence number `buf_start`.
    buf: VecDeque<Arc<Event>>,
    buf_start: u64,
    /// Runs, grouped by pattern id.
    groups: Vec<Group>,
}

#[derive(Debug)]
struct Group {
    pattern: u64,
    /// In creation order.
    runs: Vec<Run>,
}

/// (deadline, pattern id, run id, partition id), popped smallest first.
type Timer = Reverse<(i64, u64, u64, u64)>;

/// All installed tasks' patterns and their in-flight matches.
#[derive(Debug)]
pub struct TriggerSet {
    /// Sorted by id; a pattern's position here is its dense index in `index`.
    patterns: Vec<Installed>,
    index: Index,
    spaces: Vec<Space>,
    timers: BinaryHeap<Timer>,
    clock: Option<i64>,
    max_partials: usize,
    next_pattern: u64,
    next_run: u64,
    next_partition: u64,
    /// Partitions in creation order, swept a few per event so that runs which failed unseen
    /// in partitions that get no more events are reclaimed too. May name removed partitions.
    sweep_queue: VecDeque<(usize, u64)>,
    /// Per-event scratch, kept to avoid allocating.
    scratch: Scratch,
}

#[derive(Debug, Default)]
struct Scratch {
    event_no: u64,
    /// `cond_seen[c] == event_no` when the current event satisfies condition `c`.
    cond_seen: Vec<u64>,
    conds: Vec<CondId>,
    /// `completed[dense] == event_no` when the pattern fired on the current event.
    completed: Vec<u64>,
    keys: Vec<Vec<u8>>,
    /// Per space, the current event's partition id if it existed before the event.
    parts: Vec<Option<u64>>,
    fired: Vec<(u64, u64, Firing)>,
}

impl Default for TriggerSet {
    fn default() -> Self {
        TriggerSet {
            patterns: Vec::new(),
            index: Index::default(),
            spaces: Vec::new(),
            timers: BinaryHeap::new(),
            clock: None,
            max_partials: MAX_PARTIALS_PER_PATTERN,
            next_pattern: 0,
            next_run: 0,
            next_partition: 0,
            sweep_queue: VecDeque::new(),
            scratch: Scratch::default(),
        }
    }
}

impl TriggerSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set keeping at most `max` runs per pattern (at least 1).
    pub fn with_max_partials_per_pattern(max: usize) -> Self {
        TriggerSet {
            max_partials: max.max(1),
            ..Self::default()
        }
    }

    /// Installs (or replaces) a task's patterns. In-flight matches of other tasks are untouched.
    /// Patterns that fail validation install nothing (and the task's old patterns are removed):
    /// manifests are validated when parsed, so this only logs.
    pub fn install(&mut self, task: &str, patterns: &[PatternSpec]) {
        if let Err(e) = self.try_install(task, patterns) {
            self.remove(task);
            tracing::warn!(task, error = %e, "trigger patterns rejected; the task has no triggers");
        }
    }

    /// Installs (or replaces) a task's patterns, or says why they are not acceptable (and then
    /// changes nothing).
    pub fn try_install(
        &mut self,
        task: &str,
        patterns: &[PatternSpec],
    ) -> Result<(), PatternError> {
        validate_patterns(patterns)?;
        let programs = patterns
            .iter()
            .map(|p| p.compile().map(|prog| (p.name.clone(), prog)))
            .collect::<Result<Vec<_>, _>>()?;
        self.remove_patterns(task);
        for (trigger, program) in programs {
            let space = match self
                .spaces
                .iter()
                .position(|s| s.fields == program.partition_by)
            {
                Some(at) => at,
                None => {
                    self.spaces.push(Space {
                        fields: program.partition_by.clone(),
                        by_key: HashMap::new(),
                        parts: HashMap::new(),
                    });
                    self.spaces.len() - 1
                }
            };
            self.patterns.push(Installed {
                id: self.next_pattern,
                task: task.to_owned(),
                trigger,
                program,
                space,
                slot_conds: Vec::new(),
                live: 0,
                ages: VecDeque::new(),
            });
            self.next_pattern += 1;
        }
        self.rebuild();
        Ok(())
    }

    /// Removes a task's patterns and their in-flight matches.
    pub fn remove(&mut self, task: &str) {
        self.remove_patterns(task);
        self.rebuild();
    }

    fn remove_patterns(&mut self, task: &str) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.patterns)
            .into_iter()
            .partition(|p| p.task == task);
        self.patterns = kept;
        for pattern in gone {
            let Some(space) = self.spaces.get_mut(pattern.space) else {
                continue;
            };
            space.parts.retain(|_, part| {
                part.groups.retain(|g| g.pattern != pattern.id);
                !part.groups.is_empty()
            });
            let parts = &space.parts;
            space.by_key.retain(|_, id| parts.contains_key(id));
        }
    }

    /// Drops unused partitionings and rebuilds the condition index over the installed patterns.
    fn rebuild(&mut self) {
        let mut used = vec![false; self.spaces.len()];
        for p in &self.patterns {
            used[p.space] = true;
        }
        let mut new_at = Vec::with_capacity(self.spaces.len());
        let mut kept = 0;
        for &u in &used {
            new_at.push(kept);
            kept += usize::from(u);
        }
        let mut at = 0;
        self.spaces.retain(|_| {
            at += 1;
            used[at - 1]
        });
        for p in &mut self.patterns {
            p.space = new_at[p.space];
        }
        let (index, slot_conds) = Index::build(self.patterns.iter().map(|p| PatternConds {
            conds: &p.program.conds,
            keys: &p.program.cond_keys,
            first_slot: usize::from(p.program.steps.first().map_or(0, |s| s.slot)),
        }));
        for (p, slots) in self.patterns.iter_mut().zip(slot_conds) {
            p.slot_conds = slots;
        }
        self.index = index;
        self.sweep_queue = self
            .spaces
            .iter()
            .enumerate()
            .flat_map(|(si, space)| space.parts.keys().map(move |&pid| (si, pid)))
            .collect();
        self.scratch.cond_seen = vec![0; self.index.conds.len()];
        self.scratch.completed = vec![0; self.patterns.len()];
        self.scratch.keys = vec![Vec::new(); self.spaces.len()];
        self.scratch.parts = vec![None; self.spaces.len()];
    }

    /// Number of installed patterns.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether no pattern is installed.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Partial matches held (including ones that failed lazily and are not yet swept).
    pub fn partial_count(&self) -> usize {
        self.patterns.iter().map(|p| p.live).sum()
    }

    /// The matcher's clock: the latest event time seen or advanced to.
    pub fn clock(&self) -> Option<i64> {
        self.clock
    }

    /// Moves the clock to `ts` (if later) and returns the matches that completes: runs waiting
    /// for their window to end without a negated event, or with an open trailing loop. The
    /// device calls this on a timer so such triggers fire without waiting for the next event.
    pub fn advance_to(&mut self, ts: i64) -> Vec<Firing> {
        let mut out = Vec::new();
        self.advance_clock(ts, &mut out);
        out
    }

    /// Matches one event against every installed pattern and returns the matches it completes
    /// (after those completed by the clock moving to the event's time).
    pub fn on_event(&mut self, event: &Event) -> Vec<Firing> {
        let mut out = Vec::new();
        self.advance_clock(event.ts, &mut out);
        if self.patterns.is_empty() {
            return out;
        }
        self.scratch.event_no += 1;
        let event_no = self.scratch.event_no;
        self.sweep_some();
        let mut shared: Option<Arc<Event>> = None;

        // 1. The event joins its partition in every partitioning where that partition exists.
        for (si, space) in self.spaces.iter_mut().enumerate() {
            let key = &mut self.scratch.keys[si];
            encode_key(&space.fields, event, key);
            self.scratch.parts[si] = None;
            let Some(&pid) = space.by_key.get(key.as_slice()) else {
                continue;
            };
            let Some(part) = space.parts.get_mut(&pid) else {
                continue;
            };
            if part.seq % SWEEP_EVERY == 0 {
                sweep(part, &mut self.patterns);
                if part.groups.is_empty() {
                    space.parts.remove(&pid);
                    space.by_key.remove(key.as_slice());
                    continue;
                }
            }
            part.seq += 1;
            part.buf.push_back(Arc::clone(
                shared.get_or_insert_with(|| Arc::new(event.clone())),
            ));
            self.scratch.parts[si] = Some(pid);
        }

        // 2. The conditions it satisfies.
        self.scratch.conds.clear();
        {
            let Scratch {
                cond_seen, conds, ..
            } = &mut self.scratch;
            self.index.matching(event, |c| {
                cond_seen[c as usize] = event_no;
                conds.push(c);
            });
        }
        if self.scratch.conds.is_empty() {
            return out;
        }
        let shared = shared.unwrap_or_else(|| Arc::new(event.clone()));

        // 3. Runs in its partitions whose pattern has a satisfied condition.
        for si in 0..self.spaces.len() {
            let Some(pid) = self.scratch.parts[si] else {
                continue;
            };
            self.advance_partition(si, pid, &shared);
        }

        // 4. New runs, for patterns whose first step it satisfies.
        for ci in 0..self.scratch.conds.len() {
            let cond = self.scratch.conds[ci] as usize;
            for k in 0..self.index.starts[cond].len() {
                let dense = self.index.starts[cond][k] as usize;
                self.start_run(dense, &shared);
            }
        }

        // 5. Partitions left without runs go.
        for (si, space) in self.spaces.iter_mut().enumerate() {
            let key = self.scratch.keys[si].as_slice();
            if let Some(&pid) = space.by_key.get(key)
                && space.parts.get(&pid).is_none_or(|p| p.groups.is_empty())
            {
                space.parts.remove(&pid);
                space.by_key.remove(key);
            }
        }

        let mut fired = std::mem::take(&mut self.scratch.fired);
        fired.sort_by_key(|(pattern, run, _)| (*pattern, *run));
        out.extend(fired.drain(..).map(|(_, _, f)| f));
        self.scratch.fired = fired;
        self.compact_timers();
        out
    }

    /// Offers the current event to the runs of partition `pid` of space `si`.
    fn advance_partition(&mut self, si: usize, pid: u64, event: &Arc<Event>) {
        let event_no = self.scratch.event_no;
        let Some(part) = self.spaces[si].parts.get_mut(&pid) else {
            return;
        };
        let pseq = part.seq;
        let mut g = 0;
        while g < part.groups.len() {
            let Ok(dense) = self
                .patterns
                .binary_search_by_key(&part.groups[g].pattern, |p| p.id)
            else {
                part.groups.remove(g);
                continue;
            };
            let pattern = &mut self.patterns[dense];
            let mut mask = 0u64;
            for (slot, &cond) in pattern.slot_conds.iter().enumerate() {
                if self.scratch.cond_seen[cond as usize] == event_no {
                    mask |= 1 << slot;
                }
            }
            if mask == 0 {
                g += 1;
                continue;
            }
            let prog = &pattern.program;
            let runs = &mut part.groups[g].runs;
            let mut i = 0;
            while i < runs.len() {
                let run = &mut runs[i];
                let outcome = if run.catch_up(prog, pseq - 1) {
                    run.offer(prog, pseq, mask, event)
                } else {
                    Outcome::Dead
                };
                match outcome {
                    Outcome::Ignored | Outcome::Taken => i += 1,
                    Outcome::Dead => {
                        runs.remove(i);
                        pattern.live -= 1;
                    }
                    Outcome::Complete => {
                        let run = runs.remove(i);
                        pattern.live -= 1;
                        self.scratch.completed[dense] = event_no;
                        let firing = firing(pattern, &run, &part.buf, part.buf_start);
                        self.scratch.fired.push((pattern.id, run.id, firing));
                        if prog.skip == SkipPolicy::PastLastEvent {
                            // Every other run started at or before this event.
                            pattern.live -= runs.len();
                            runs.clear();
                        }
                    }
                }
            }
            if runs.is_empty() {
                part.groups.remove(g);
            } else {
                g += 1;
            }
        }
    }

    /// Starts a run of pattern `dense` on the current event, which satisfies its first step.
    fn start_run(&mut self, dense: usize, event: &Arc<Event>) {
        let event_no = self.scratch.event_no;
        let pattern = &self.patterns[dense];
        if pattern.program.skip == SkipPolicy::PastLastEvent
            && self.scratch.completed[dense] == event_no
        {
            return;
        }
        let deadline = pattern
            .program
            .within_ms
            .map(|w| event.ts.saturating_add(w as i64));
        if let (Some(deadline), Some(clock)) = (deadline, self.clock)
            && deadline < clock
        {
            return;
        }
        if pattern.live >= self.max_partials {
            self.evict_oldest(dense);
        }
        let si = self.patterns[dense].space;
        let space = &mut self.spaces[si];
        let key = self.scratch.keys[si].as_slice();
        let pid = match space.by_key.get(key) {
            Some(&pid) => pid,
            None => {
                let pid = self.next_partition;
                self.next_partition += 1;
                self.sweep_queue.push_back((si, pid));
                space.by_key.insert(key.into(), pid);
                space.parts.insert(
                    pid,
                    Partition {
                        key: key.into(),
                        seq: 1,
                        buf: VecDeque::from([Arc::clone(event)]),
                        buf_start: 1,
                        groups: Vec::new(),
                    },
                );
                pid
            }
        };
        let Some(part) = space.parts.get_mut(&pid) else {
            return;
        };
        let pattern = &mut self.patterns[dense];
        let prog = &pattern.program;
        let run_id = self.next_run;
        self.next_run += 1;
        let mut run = Run::start(run_id, part.seq);
        let outcome = run.take(prog, 0, part.seq, event);
        if outcome == Outcome::Complete {
            let firing = firing(pattern, &run, &part.buf, part.buf_start);
            self.scratch.fired.push((pattern.id, run_id, firing));
            self.scratch.completed[dense] = event_no;
            if prog.skip == SkipPolicy::PastLastEvent
                && let Some(g) = part.groups.iter().position(|g| g.pattern == pattern.id)
            {
                pattern.live -= part.groups[g].runs.len();
                part.groups.remove(g);
            }
            return;
        }
        match part.groups.iter_mut().find(|g| g.pattern == pattern.id) {
            Some(group) => group.runs.push(run),
            None => part.groups.push(Group {
                pattern: pattern.id,
                runs: vec![run],
            }),
        }
        pattern.live += 1;
        pattern.ages.push_back((run_id, pid));
        if let Some(deadline) = deadline {
            self.timers
                .push(Reverse((deadline, pattern.id, run_id, pid)));
        }
        if pattern.ages.len() > 2 * pattern.live + 32 {
            let parts = &self.spaces[si].parts;
            let id = pattern.id;
            pattern
                .ages
                .retain(|&(run, pid)| find_run(parts, pid, id, run).is_some());
        }
    }

    /// Drops the oldest run of pattern `dense` (dropping failed ones on the way).
    fn evict_oldest(&mut self, dense: usize) {
        let pattern = &mut self.patterns[dense];
        let space = &mut self.spaces[pattern.space];
        while let Some((run_id, pid)) = pattern.ages.pop_front() {
            let Some((g, i)) = find_run(&space.parts, pid, pattern.id, run_id) else {
                continue;
            };
            let Some(part) = space.parts.get_mut(&pid) else {
                continue;
            };
            let seq = part.seq;
            let mut run = part.groups[g].runs.remove(i);
            pattern.live -= 1;
            if part.groups[g].runs.is_empty() {
                part.groups.remove(g);
            }
            if part.groups.is_empty() {
                let key = part.key.clone();
                space.parts.remove(&pid);
                space.by_key.remove(&key);
            }
            if run.catch_up(&pattern.program, seq) {
                // A live run: the one to evict.
                return;
            }
        }
    }

    /// Moves the clock to `ts` if that is later, ending the runs whose deadline it passes.
    fn advance_clock(&mut self, ts: i64, out: &mut Vec<Firing>) {
        if self.clock.is_some_and(|c| ts <= c) {
            return;
        }
        self.clock = Some(ts);
        while let Some(&Reverse((deadline, pattern_id, run_id, pid))) = self.timers.peek() {
            if deadline >= ts {
                break;
            }
            self.timers.pop();
            self.on_deadline(pattern_id, run_id, pid, out);
        }
    }

    /// A run's deadline has passed: it fires if it only waited for time, else it is dropped.
    fn on_deadline(&mut self, pattern_id: u64, run_id: u64, pid: u64, out: &mut Vec<Firing>) {
        let Ok(dense) = self.patterns.binary_search_by_key(&pattern_id, |p| p.id) else {
            return;
        };
        let pattern = &mut self.patterns[dense];
        let space = &mut self.spaces[pattern.space];
        let Some((g, i)) = find_run(&space.parts, pid, pattern_id, run_id) else {
            return;
        };
        let Some(part) = space.parts.get_mut(&pid) else {
            return;
        };
        let runs = &mut part.groups[g].runs;
        let mut run = runs.remove(i);
        pattern.live -= 1;
        let prog = &pattern.program;
        if run.catch_up(prog, part.seq) && run.waits_for_time(prog) {
            out.push(firing(pattern, &run, &part.buf, part.buf_start));
            if prog.skip == SkipPolicy::PastLastEvent {
                let before = runs.len();
                runs.retain(|r| r.start_pseq > run.last_pseq);
                pattern.live -= before - runs.len();
            }
        }
        run.matched.clear();
        if runs.is_empty() {
            part.groups.remove(g);
        }
        if part.groups.is_empty() {
            let key = part.key.clone();
            space.parts.remove(&pid);
            space.by_key.remove(&key);
        }
    }

    /// Sweeps the next few partitions in the sweep queue: one more than partitions can be
    /// created per event, so the queue does not grow beyond the partitions that exist.
    fn sweep_some(&mut self) {
        for _ in 0..=self.spaces.len() {
            let Some((si, pid)) = self.sweep_queue.pop_front() else {
                return;
            };
            let Some(space) = self.spaces.get_mut(si) else {
                continue;
            };
            let Some(part) = space.parts.get_mut(&pid) else {
                continue;
            };
            sweep(part, &mut self.patterns);
            if part.groups.is_empty() {
                let key = part.key.clone();
                space.parts.remove(&pid);
                space.by_key.remove(&key);
            } else {
                self.sweep_queue.push_back((si, pid));
            }
        }
    }

    /// Drops timers of runs that no longer exist once they outnumber the runs.
    fn compact_timers(&mut self) {
        // Counting runs visits every pattern: only look now and then.
        if self.timers.len() <= 1024 || !self.scratch.event_no.is_multiple_of(1024) {
            return;
        }
        let live = self.partial_count();
        if self.timers.len() <= 2 * live + 1024 {
            return;
        }
        let patterns = &self.patterns;
        let spaces = &self.spaces;
        self.timers
            .retain(|&Reverse((_, pattern_id, run_id, pid))| {
                patterns
                    .binary_search_by_key(&pattern_id, |p| p.id)
                    .ok()
                    .and_then(|dense| {
                        find_run(
                            &spaces[patterns[dense].space].parts,
                            pid,
                            pattern_id,
                            run_id,
                        )
                    })
                    .is_some()
            });
    }
}

/// Where run `run_id` of pattern `pattern_id` sits in partition `pid`: (group, position).
fn find_run(
    parts: &HashMap<u64, Partition>,
    pid: u64,
    pattern_id: u64,
    run_id: u64,
) -> Option<(usize, usize)> {
    let part = parts.get(&pid)?;
    let g = part.groups.iter().position(|g| g.pattern == pattern_id)?;
    let i = part.groups[g]
        .runs
        .binary_search_by_key(&run_id, |r| r.id)
        .ok()?;
    Some((g, i))
}

/// Drops a partition's failed runs and the buffered events no run can need any more.
fn sweep(part: &mut Partition, patterns: &mut [Installed]) {
    let seq = part.seq;
    let mut floor = seq + 1;
    part.groups.retain_mut(|group| {
        let Ok(dense) = patterns.binary_search_by_key(&group.pattern, |p| p.id) else {
            return false;
        };
        let pattern = &mut patterns[dense];
        let before = group.runs.len();
        group.runs.retain_mut(|r| r.catch_up(&pattern.program, seq));
        pattern.live -= before - group.runs.len();
        for run in &group.runs {
            floor = floor.min(run.window_floor(&pattern.program, seq, MAX_WINDOW_EVENTS));
        }
        !group.runs.is_empty()
    });
    while part.buf_start < floor && part.buf.pop_front().is_some() {
        part.buf_start += 1;
    }
}

/// The firing of a complete `run`, its window taken from the partition's buffer.
fn firing(pattern: &Installed, run: &Run, buf: &VecDeque<Arc<Event>>, buf_start: u64) -> Firing {
    let from = run
        .start_pseq
        .max((run.last_pseq + 1).saturating_sub(MAX_WINDOW_EVENTS as u64))
        .max(buf_start);
    let window = (from..=run.last_pseq)
        .filter_map(|pseq| buf.get((pseq - buf_start) as usize))
        .map(|e| Event::clone(e))
        .collect();
    Firing {
        task: pattern.task.clone(),
        trigger: pattern.trigger.clone(),
        matched: run.matched.iter().map(|e| Event::clone(e)).collect(),
        window,
    }
}

#[cfg(test)]
mod tests;
