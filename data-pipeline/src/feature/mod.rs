//! Named features: values computed over windows of the event stream and handed to a task when
//! one of its triggers fires (`ctx["features"]`).
//!
//! # The language
//!
//! ```toml
//! # The item-page-view (IPV) feature, over the trigger's own match.
//! [[features]]
//! name = "dwell_ms"
//! aggregate = "duration"
//!
//! [[features]]
//! name = "clicks"
//! aggregate = "count"
//! event = "click"
//!
//! [[features]]
//! name = "add_to_cart"
//! aggregate = "count"
//! where = [{ field = "args.action", equals = "add_to_cart" }]
//!
//! # Money spent in the session over the last 10 minutes, in 1-minute hops.
//! [[features]]
//! name = "spend_10m"
//! aggregate = "sum"
//! of = "args.price"
//! where = [{ field = "args.action", equals = "buy" }]
//! partition_by = ["session"]
//! window = { sliding_ms = 600000, slide_ms = 60000 }
//! ```
//!
//! * `name`: the key in `ctx["features"]`; 1-64 characters of `a-z A-Z 0-9 _ -`, starting with a
//!   letter or `_`; unique within the task (at most [`MAX_FEATURES`] features per task).
//! * `aggregate`: `count`, `sum`, `avg`, `min`, `max`, `first`, `last`, `distinct_count` or
//!   `duration` (latest minus earliest `ts` in the window, in ms).
//! * `of`: the field aggregated: `ts`, `session`, `page`, `event`, `item` or `args.<name>`.
//!   Required except for `count` (with `of`, it counts the events that have the field) and
//!   `duration` (which takes none). `sum`/`avg`/`min`/`max` refuse the text fields.
//! * The **filter**: the shorthand `event`, `page`, `item`, `session` and a `where` list, exactly
//!   like a trigger step's conditions ([`crate::pattern`]), all of which must hold. No condition
//!   lets every event in.
//! * `partition_by`: any of `session`, `page`, `event`, `item`.
//! * `window`: exactly one of `{ match = true }` (the default when `window` is left out),
//!   `{ count = N }` (1 to [`MAX_COUNT_EVENTS`]), `{ tumbling_ms = S }`, `{ sliding_ms = S }`,
//!   `{ sliding_ms = S, slide_ms = H }` (`H` divides `S`, at most [`MAX_PANES`] hops) or
//!   `{ session_gap_ms = G }`; times from 1 ms to [`MAX_WINDOW_MS`].
//!
//! # Semantics
//!
//! Features are computed when a trigger fires, for the firing's **partition**: the values of the
//! feature's `partition_by` fields in the firing's last matched event (no `partition_by`: one
//! partition of all events). Every window holds only events that passed the feature's filter,
//! the session window's gaps included: the filter is applied first so that an event costs only
//! the features whose filter it passes.
//!
//! **Time** is event time. The feature set's **clock** `t` is the largest `ts` observed (or
//! passed to [`FeatureSet::advance_to`]); time windows are evaluated at `t` when computed.
//!
//! * **match** (default): the events of the firing's `window` (the trigger's partition from the
//!   first to the last matched event, in arrival order) that pass the filter and, with
//!   `partition_by`, share those fields' values with the last matched event. Nothing is kept
//!   between firings. The IPV feature above: dwell time, clicks and add-to-cart of one visit.
//! * **`count = N`**: the last `N` events of the partition by arrival. Computed right after the
//!   triggering event is observed, that is the `N` up to and including it. No time bound.
//! * **`tumbling_ms = S`**: events with `ts` in `[floor(t / S) * S, t]`, the current window so
//!   far, not the last closed one: a task triggered now asks about the period it is in (spend
//!   this hour so far); the last closed window is up to `S` stale and complete windows are a
//!   task's to keep if it wants them.
//! * **`sliding_ms = S`**: events with `ts` in `(t - S, t]`, exactly; each event is kept (see the
//!   caps below).
//! * **`sliding_ms = S, slide_ms = H`**: the window moves in hops of `H`: events with `ts` in
//!   `[floor(t / H) * H + H - S, t]`, that is the `S / H` panes of `H` ms up to the one holding
//!   `t`, which counts so far (tumbling is the case `H = S`). Memory is one accumulator per pane,
//!   whatever the event rate.
//! * **`session_gap_ms = G`**: the partition's open session. An event joins the open session if
//!   it is at most `G` before its start (the session then starts earlier) and otherwise extends
//!   it; the session closes once the clock is more than `G` past its last event, and the next
//!   event within `G` of the clock opens a new one. An event more than `G` before the open
//!   session's start, or more than `G` before the clock when none is open, belongs to a closed
//!   session and is dropped: closed sessions are not reopened or merged. The window is the open
//!   session, empty when none is open at `t`.
//!
//! **Out-of-order events** count wherever their `ts` puts them while their window can still hold
//! them: a late event inside `(t - S, t]`, inside a live pane, or within a session's reach counts
//! as if it had come in order; one older than every window that can still be read is dropped.
//! Count windows go by arrival, not `ts`.
//!
//! **Aggregates.** An event contributes its value of `of` when the field is present and not null
//! (an empty `item` is no item); other events still belong to the window (count without `of`
//! and `duration` count every event). `sum`/`avg`/`min`/`max` skip values that are not JSON
//! numbers or whose magnitude is above [`MAX_MAGNITUDE`]. `sum` is the exact sum rounded once,
//! so the order of events never changes it. `first`/`last` are the values of the earliest and
//! latest event in `ts` order (ties: arrival order) that has one. `distinct_count` counts
//! distinct JSON values (numbers by value, so `1` and `1.0` are one; arrays and objects by
//! their JSON text), up to [`FeatureLimits::max_distinct`]. Numbers come out as JSON integers
//! when whole (and within 2^53), else as floats; a sum beyond `f64` is null. **Empty window**:
//! `count`, `sum` and `distinct_count` are 0, the others null.
//!
//! # Cost and bounds
//!
//! Every installed feature's filter is one entry of a condition index (the one trigger patterns
//! use), so an event costs a lookup per anchored field plus the features whose filter it passes.
//! Its partition key is hashed once per distinct `partition_by` list into a small id that those
//! features share; each then finds its window by that id. Tasks declaring the same feature (all
//! but the name equal) share one state. Per feature, at most [`FeatureLimits::max_partitions`]
//! partitions are kept (the least recently seen one goes first, forgetting its window); count
//! and sliding windows keep at most [`FeatureLimits::max_window_events`] events (sliding windows
//! then hold the latest by `ts`); partitions whose window has expired are dropped a few at a time,
//! before a feature opens a new partition and, in turn over the features, on every event.
//!
//! # Lifetime and restarts
//!
//! [`FeatureSet::install`] starts new features with empty windows; reinstalling a task keeps the
//! state of every feature it declares again unchanged, and [`FeatureSet::remove`] frees the
//! state no other task shares. Windows live in memory: after a restart the device replays the
//! stored events of the last [`FeatureSet::horizon_ms`] (every time window's length; for count
//! and session windows, which have no time bound, [`UNBOUNDED_WARM_UP_MS`]) through
//! [`FeatureSet::observe`] before new events. Time windows then come back exactly (as far as
//! the store kept the events); a count window gets back its last `N` events within that span,
//! and a session that began before it only its part inside.

mod aggregate;
mod lru;
mod space;
pub mod spec;
mod window;

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::cond::encode_key;
use crate::event::Event;
use crate::index::{CondId, Index, PatternConds};
use crate::matcher::Firing;
pub use aggregate::MAX_MAGNITUDE;
use aggregate::{Acc, datum, empty_value};
use lru::Lru;
use space::Space;
use spec::{Feature, Window, compile_all};
pub use spec::{
    FeatureError, FeatureSpec, MAX_COUNT_EVENTS, MAX_FEATURES, MAX_PANES, MAX_WINDOW_MS,
    WindowSpec, validate_features,
};
use window::{Caps, WindowState};

/// How far back count and session windows are warmed up after a restart: they have no time
/// bound of their own, and a longer replay costs more start-up time than a long session is
/// worth.
pub const UNBOUNDED_WARM_UP_MS: u64 = 6 * 3600 * 1000;

/// Caps that bound a feature set's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureLimits {
    /// Partitions kept per feature; beyond it the least recently seen goes.
    pub max_partitions: usize,
    /// Events kept per count or sliding window.
    pub max_window_events: usize,
    /// Largest `distinct_count` (and distinct values kept per pane or session).
    pub max_distinct: usize,
    /// Partitions with an expired window dropped per observed event, at most; 0 leaves them to
    /// the partition cap.
    pub sweep_per_event: usize,
}

impl Default for FeatureLimits {
    /// 1,024 partitions per feature, 1,024 events per window, 256 distinct values, 2 sweeps.
    fn default() -> Self {
        FeatureLimits {
            max_partitions: 1024,
            max_window_events: 1024,
            max_distinct: 256,
            sweep_per_event: 2,
        }
    }
}

/// What a feature set holds, for the device's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FeatureStats {
    /// Features installed, over all tasks.
    pub features: usize,
    /// Distinct stateful features (tasks declaring the same feature share one).
    pub states: usize,
    pub partitions: usize,
    /// Events held by count and sliding windows.
    pub kept_events: usize,
    /// Approximate heap bytes of all of it.
    pub memory_bytes: usize,
}

/// One feature of one task.
#[derive(Debug)]
struct Installed {
    name: String,
    how: How,
}

#[derive(Debug)]
enum How {
    /// A match window: computed from the firing alone.
    Match(Feature),
    /// Index into [`FeatureSet::states`].
    State(usize),
}

/// The windows of one distinct stateful feature, per partition.
#[derive(Debug)]
struct State {
    feature: Feature,
    key: String,
    /// Installed features using it.
    refs: usize,
    /// Index into [`FeatureSet::spaces`].
    space: usize,
    /// Windows by partition id (in `space`).
    parts: Lru<WindowState>,
}

/// Every installed task's features and their windows.
#[derive(Debug, Default)]
pub struct FeatureSet {
    limits: FeatureLimits,
    tasks: HashMap<String, Vec<Installed>>,
    /// Slab; `None` where a state was freed.
    states: Vec<Option<State>>,
    free: Vec<usize>,
    by_key: HashMap<String, usize>,
    index: Index,
    /// Per condition id, the states whose filter it is.
    cond_states: Vec<Vec<usize>>,
    /// One per distinct `partition_by` list a state has had (kept when unused: a handful).
    spaces: Vec<Space>,
    clock: Option<i64>,
    arrivals: u64,
    sweep_at: usize,
    scratch: Scratch,
}

#[derive(Debug, Default)]
struct Scratch {
    conds: Vec<CondId>,
    /// Per space, the current event's partition key and id (if held), valid when `key_at` is
    /// the arrival.
    keys: Vec<(Vec<u8>, Option<u32>)>,
    key_at: Vec<u64>,
}

impl FeatureSet {
    /// An empty set with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set with these limits (each at least 1, except `sweep_per_event`).
    pub fn with_limits(limits: FeatureLimits) -> Self {
        FeatureSet {
            limits: FeatureLimits {
                max_partitions: limits.max_partitions.max(1),
                max_window_events: limits.max_window_events.max(1),
                max_distinct: limits.max_distinct.max(1),
                sweep_per_event: limits.sweep_per_event,
            },
            ..Self::default()
        }
    }

    /// Installs (or replaces) a task's features. Features the task declared before and declares
    /// again unchanged keep their windows; new ones start empty. On error nothing changes.
    pub fn install(&mut self, task: &str, specs: &[FeatureSpec]) -> Result<(), FeatureError> {
        let features = compile_all(specs)?;
        let mut installed = Vec::with_capacity(features.len());
        for (spec, feature) in specs.iter().zip(features) {
            let how = if feature.window == Window::Match {
                How::Match(feature)
            } else {
                How::State(self.acquire(feature))
            };
            installed.push(Installed {
                name: spec.name.clone(),
                how,
            });
        }
        // Acquired before the old ones are released, so unchanged features keep their state.
        if let Some(old) = self.tasks.insert(task.to_owned(), installed) {
            self.release(old);
        }
        self.rebuild();
        Ok(())
    }

    /// Removes a task's features, freeing the windows no other task shares.
    pub fn remove(&mut self, task: &str) {
        if let Some(old) = self.tasks.remove(task) {
            self.release(old);
            self.rebuild();
        }
    }

    /// The state computing `feature`, shared if one exists.
    fn acquire(&mut self, feature: Feature) -> usize {
        let key = feature.state_key();
        if let Some(&id) = self.by_key.get(&key)
            && let Some(state) = self.states.get_mut(id).and_then(Option::as_mut)
        {
            state.refs += 1;
            return id;
        }
        let space = match self
            .spaces
            .iter()
            .position(|s| s.fields == feature.partition_by)
        {
            Some(at) => at,
            None => {
                self.spaces.push(Space::new(feature.partition_by.clone()));
                self.spaces.len() - 1
            }
        };
        let state = State {
            feature,
            key: key.clone(),
            refs: 1,
            space,
            parts: Lru::default(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.states[id] = Some(state);
                id
            }
            None => {
                self.states.push(Some(state));
                self.states.len() - 1
            }
        };
        self.by_key.insert(key, id);
        id
    }

    fn release(&mut self, installed: Vec<Installed>) {
        for f in installed {
            let How::State(id) = f.how else {
                continue;
            };
            let Some(slot) = self.states.get_mut(id) else {
                continue;
            };
            if let Some(state) = slot {
                state.refs -= 1;
                if state.refs == 0 {
                    self.by_key.remove(&state.key);
                    if let Some(space) = self.spaces.get_mut(state.space) {
                        for (part, _) in state.parts.iter() {
                            space.release(part);
                        }
                    }
                    *slot = None;
                    self.free.push(id);
                }
            }
        }
    }

    /// Rebuilds the filter index over the live states.
    fn rebuild(&mut self) {
        let live: Vec<usize> = (0..self.states.len())
            .filter(|&id| self.states[id].is_some())
            .collect();
        let (index, slot_conds) =
            Index::build(self.states.iter().flatten().map(|state| PatternConds {
                conds: std::slice::from_ref(&state.feature.filter),
                keys: std::slice::from_ref(&state.feature.filter_key),
                first_slot: usize::MAX,
            }));
        self.cond_states = vec![Vec::new(); index.conds.len()];
        for (id, slots) in live.into_iter().zip(slot_conds) {
            if let Some(&cond) = slots.first() {
                self.cond_states[cond as usize].push(id);
            }
        }
        self.index = index;
        self.scratch.keys = vec![(Vec::new(), None); self.spaces.len()];
        self.scratch.key_at = vec![0; self.spaces.len()];
    }

    /// Adds one accepted event to the windows of every feature whose filter it passes. Call it
    /// for every event the trigger set sees, before computing the features of the firings that
    /// event produced.
    pub fn observe(&mut self, event: &Event) {
        self.arrivals += 1;
        let arrival = self.arrivals;
        let clock = self.clock.map_or(event.ts, |c| c.max(event.ts));
        self.clock = Some(clock);
        if self.by_key.is_empty() {
            return;
        }
        self.sweep_some(clock);
        let FeatureSet {
            limits,
            states,
            index,
            cond_states,
            spaces,
            scratch,
            ..
        } = self;
        let caps = Caps {
            max_window_events: limits.max_window_events,
            max_distinct: limits.max_distinct,
        };
        scratch.conds.clear();
        index.matching(event, |c| scratch.conds.push(c));
        for &cond in &scratch.conds {
            for &id in &cond_states[cond as usize] {
                let Some(state) = states.get_mut(id).and_then(Option::as_mut) else {
                    continue;
                };
                let Some(space) = spaces.get_mut(state.space) else {
                    continue;
                };
                let (key, part) = &mut scratch.keys[state.space];
                if scratch.key_at[state.space] != arrival {
                    encode_key(&space.fields, event, key);
                    *part = space.find(key);
                    scratch.key_at[state.space] = arrival;
                }
                let f = &state.feature;
                let value = datum(f.aggregate, f.of.as_ref(), event);
                if let Some(window) = part.and_then(|p| state.parts.touch(p)) {
                    window.observe(event.ts, arrival, value, clock, f.aggregate, caps);
                } else if WindowState::admits_new(&f.window, event.ts, clock) == Some(true)
                    && let Some(mut window) = WindowState::new(&f.window, f.aggregate, caps)
                {
                    window.observe(event.ts, arrival, value, clock, f.aggregate, caps);
                    // A new partition is when memory grows: drop expired ones first.
                    sweep(state, space, clock, limits.sweep_per_event);
                    let held = space.hold(key);
                    *part = Some(held);
                    state
                        .parts
                        .insert(held, window, limits.max_partitions, |gone| {
                            space.release(gone)
                        });
                }
            }
        }
    }

    /// Moves the clock to `ts` if that is later (the device calls it with the trigger set's
    /// `advance_to`, so that time windows of firings that fire on time see the same clock).
    pub fn advance_to(&mut self, ts: i64) {
        self.clock = Some(self.clock.map_or(ts, |c| c.max(ts)));
    }

    /// The features of the firing's task for this firing, by name: `ctx["features"]`. Empty if
    /// the task declares none.
    pub fn compute(&mut self, firing: &Firing) -> Map<String, Value> {
        let mut out = Map::new();
        let Some(installed) = self.tasks.get(&firing.task) else {
            return out;
        };
        let caps = Caps {
            max_window_events: self.limits.max_window_events,
            max_distinct: self.limits.max_distinct,
        };
        let last = firing.matched.last();
        let mut key = Vec::new();
        for f in installed {
            let value = match &f.how {
                How::Match(feature) => match_value(feature, firing, caps),
                How::State(id) => match self.states.get_mut(*id).and_then(Option::as_mut) {
                    Some(state) => {
                        let agg = state.feature.aggregate;
                        // A firing without events (a timer) can read unpartitioned windows only.
                        let keyed = match last {
                            Some(last) => {
                                encode_key(&state.feature.partition_by, last, &mut key);
                                true
                            }
                            None => {
                                key.clear();
                                state.feature.partition_by.is_empty()
                            }
                        };
                        match (keyed, self.clock) {
                            (true, Some(clock)) => self
                                .spaces
                                .get(state.space)
                                .and_then(|space| space.find(&key))
                                .and_then(|part| state.parts.peek(part))
                                .map_or_else(|| empty_value(agg), |w| w.value(clock, agg, caps)),
                            _ => empty_value(agg),
                        }
                    }
                    None => Value::Null,
                },
            };
            out.insert(f.name.clone(), value);
        }
        out
    }

    /// How far back (ms before the clock) stored events must be replayed through
    /// [`FeatureSet::observe`] to rebuild the windows after a restart; `None` when no installed
    /// feature keeps state.
    pub fn horizon_ms(&self) -> Option<u64> {
        self.states
            .iter()
            .flatten()
            .map(|s| match s.feature.window {
                Window::Match => 0,
                Window::Sliding(size) | Window::Panes { size, .. } => size as u64,
                Window::Count(_) => UNBOUNDED_WARM_UP_MS,
                Window::Session(gap) => UNBOUNDED_WARM_UP_MS.max(gap as u64),
            })
            .max()
    }

    /// The clock: the latest event time observed or advanced to.
    pub fn clock(&self) -> Option<i64> {
        self.clock
    }

    /// Number of installed features over all tasks.
    pub fn len(&self) -> usize {
        self.tasks.values().map(Vec::len).sum()
    }

    /// Whether no feature is installed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the set holds now (walks every partition: for status, not per event).
    pub fn stats(&self) -> FeatureStats {
        let mut stats = FeatureStats {
            features: self.len(),
            ..FeatureStats::default()
        };
        let mut bytes = self.states.capacity() * size_of::<Option<State>>()
            + self.index.conds.len() * 64
            + self.cond_states.len() * 32;
        bytes += self.spaces.iter().map(Space::heap_bytes).sum::<usize>();
        for state in self.states.iter().flatten() {
            stats.states += 1;
            stats.partitions += state.parts.len();
            bytes += state.parts.heap_bytes() + state.key.len();
            for (_, window) in state.parts.iter() {
                stats.kept_events += window.kept_events();
                bytes += window.heap_bytes();
            }
        }
        stats.memory_bytes = bytes;
        stats
    }

    /// Drops expired partitions of the next state in turn, so that states no event reaches
    /// any more free their memory too.
    fn sweep_some(&mut self, clock: i64) {
        if self.limits.sweep_per_event == 0 || self.states.is_empty() {
            return;
        }
        self.sweep_at = (self.sweep_at + 1) % self.states.len();
        if let Some(state) = self.states[self.sweep_at].as_mut()
            && let Some(space) = self.spaces.get_mut(state.space)
        {
            sweep(state, space, clock, self.limits.sweep_per_event);
        }
    }
}

/// Drops up to `max` of the state's least recently seen partitions while their window has
/// expired.
fn sweep(state: &mut State, space: &mut Space, clock: i64, max: usize) {
    for _ in 0..max {
        if !state.parts.oldest().is_some_and(|w| w.expired(clock)) {
            return;
        }
        if let Some((part, _)) = state.parts.pop_oldest() {
            space.release(part);
        }
    }
}

/// A match-window feature's value: computed from the firing's window.
fn match_value(feature: &Feature, firing: &Firing, caps: Caps) -> Value {
    let Some(last) = firing.matched.last() else {
        return empty_value(feature.aggregate);
    };
    let mut acc = Acc::new(feature.aggregate);
    for (arrival, event) in firing.window.iter().enumerate() {
        let same_partition = feature
            .partition_by
            .iter()
            .all(|field| field.get(event) == field.get(last));
        if same_partition && feature.filter.eval(event) {
            let value = datum(feature.aggregate, feature.of.as_ref(), event);
            acc.add(event.ts, arrival as u64, &value, caps.max_distinct);
        }
    }
    acc.value(feature.aggregate)
}

#[cfg(test)]
mod tests;
