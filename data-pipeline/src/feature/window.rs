//! The state of one feature in one partition, per window kind: how an event enters it (the
//! admission rules of the [module docs](super)), how it expires, and its value at the clock.
//!
//! * count and sliding windows keep their events ([`Entry`], ordered by ts then arrival) with a
//!   removable aggregate ([`Live`]);
//! * tumbling and hopping windows keep one add-only accumulator ([`Acc`]) per pane of
//!   `slide` milliseconds, merged when read;
//! * session windows keep one accumulator for the open session.

use std::collections::VecDeque;

use serde_json::Value;

use super::aggregate::{Acc, Datum, Entry, Live, empty_value};
use super::spec::{Aggregate, Window};

/// Caps that keep one partition's state bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub max_window_events: usize,
    pub max_distinct: usize,
}

/// One feature's state in one partition.
#[derive(Debug, Clone)]
pub(crate) enum WindowState {
    Count(Counted),
    Sliding(Sliding),
    Panes(Panes),
    Session(Session),
}

impl WindowState {
    /// Whether an event at `ts` may open a new partition at `clock`: whether it can be in any
    /// window from now on. `None` for the match window, which keeps no state.
    pub(crate) fn admits_new(window: &Window, ts: i64, clock: i64) -> Option<bool> {
        Some(match *window {
            Window::Match => return None,
            Window::Count(_) => true,
            Window::Sliding(size) => ts > clock.saturating_sub(size),
            Window::Panes { size, slide } => {
                ts.div_euclid(slide) >= lowest_pane(clock, size, slide)
            }
            Window::Session(gap) => clock.saturating_sub(ts) <= gap,
        })
    }

    /// An empty state for `window` (`None` for the match window).
    pub(crate) fn new(window: &Window, aggregate: Aggregate, caps: Caps) -> Option<WindowState> {
        Some(match *window {
            Window::Match => return None,
            Window::Count(n) => WindowState::Count(Counted {
                n: n.min(caps.max_window_events).max(1),
                entries: VecDeque::new(),
                arrivals: VecDeque::new(),
                live: Live::new(aggregate),
            }),
            Window::Sliding(size) => WindowState::Sliding(Sliding {
                size,
                entries: VecDeque::new(),
                live: Live::new(aggregate),
            }),
            Window::Panes { size, slide } => WindowState::Panes(Panes {
                size,
                slide,
                panes: VecDeque::new(),
            }),
            Window::Session(gap) => WindowState::Session(Session { gap, open: None }),
        })
    }

    /// An event of the partition that passed the filter arrives; `clock` already counts it.
    pub(crate) fn observe(
        &mut self,
        ts: i64,
        arrival: u64,
        datum: Datum,
        clock: i64,
        aggregate: Aggregate,
        caps: Caps,
    ) {
        let entry = Entry { ts, arrival, datum };
        match self {
            WindowState::Count(w) => w.observe(entry),
            WindowState::Sliding(w) => w.observe(entry, clock, caps),
            WindowState::Panes(w) => w.observe(entry, clock, aggregate, caps),
            WindowState::Session(w) => w.observe(entry, clock, aggregate, caps),
        }
    }

    /// The aggregate over the window at `clock` (dropping what has expired by then).
    pub(crate) fn value(&mut self, clock: i64, aggregate: Aggregate, caps: Caps) -> Value {
        match self {
            WindowState::Count(w) => w.live.value(aggregate, &w.entries, caps.max_distinct),
            WindowState::Sliding(w) => {
                w.expire(clock);
                w.live.value(aggregate, &w.entries, caps.max_distinct)
            }
            WindowState::Panes(w) => w.value(clock, aggregate, caps),
            WindowState::Session(w) => match &w.open {
                Some(open) if clock.saturating_sub(open.end) <= w.gap => open.acc.value(aggregate),
                _ => empty_value(aggregate),
            },
        }
    }

    /// Whether the window is empty at `clock` and stays empty whatever later events bring
    /// (unless they open it anew), so the partition can go. Count windows never expire.
    pub(crate) fn expired(&self, clock: i64) -> bool {
        match self {
            WindowState::Count(_) => false,
            WindowState::Sliding(w) => w
                .entries
                .back()
                .is_none_or(|e| e.ts <= clock.saturating_sub(w.size)),
            WindowState::Panes(w) => w
                .panes
                .back()
                .is_none_or(|(k, _)| *k < lowest_pane(clock, w.size, w.slide)),
            WindowState::Session(w) => w
                .open
                .as_ref()
                .is_none_or(|o| clock.saturating_sub(o.end) > w.gap),
        }
    }

    /// Events kept (count and sliding windows).
    pub(crate) fn kept_events(&self) -> usize {
        match self {
            WindowState::Count(w) => w.entries.len(),
            WindowState::Sliding(w) => w.entries.len(),
            WindowState::Panes(_) | WindowState::Session(_) => 0,
        }
    }

    /// Approximate heap bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        let entries = |e: &VecDeque<Entry>| {
            e.capacity() * size_of::<Entry>()
                + e.iter().map(|e| e.datum.heap_bytes()).sum::<usize>()
        };
        match self {
            WindowState::Count(w) => {
                entries(&w.entries) + w.arrivals.capacity() * 16 + w.live.heap_bytes()
            }
            WindowState::Sliding(w) => entries(&w.entries) + w.live.heap_bytes(),
            WindowState::Panes(w) => {
                w.panes.capacity() * size_of::<(i64, Acc)>()
                    + w.panes.iter().map(|(_, a)| a.heap_bytes()).sum::<usize>()
            }
            WindowState::Session(w) => w.open.as_ref().map_or(0, |o| o.acc.heap_bytes()),
        }
    }
}

/// The first pane (`ts / slide`) of the window at `clock`.
fn lowest_pane(clock: i64, size: i64, slide: i64) -> i64 {
    clock.div_euclid(slide) - size / slide + 1
}

/// Inserts `entry` in (ts, arrival) order; its arrival is the latest, so it goes after every
/// entry with the same or an earlier ts (at the back when events come in order).
fn insert(entries: &mut VecDeque<Entry>, entry: Entry) {
    if entries.back().is_none_or(|b| b.ts <= entry.ts) {
        entries.push_back(entry);
    } else {
        let at = entries.partition_point(|e| e.ts <= entry.ts);
        entries.insert(at, entry);
    }
}

/// The last `n` events by arrival.
#[derive(Debug, Clone)]
pub(crate) struct Counted {
    n: usize,
    entries: VecDeque<Entry>,
    /// (ts, arrival) of the entries in arrival order, to find the oldest arrival.
    arrivals: VecDeque<(i64, u64)>,
    live: Live,
}

impl Counted {
    fn observe(&mut self, entry: Entry) {
        self.live.add(&entry.datum);
        self.arrivals.push_back(entry.key());
        insert(&mut self.entries, entry);
        while self.entries.len() > self.n {
            let Some(oldest) = self.arrivals.pop_front() else {
                break;
            };
            if let Ok(at) = self.entries.binary_search_by_key(&oldest, Entry::key)
                && let Some(gone) = self.entries.remove(at)
            {
                self.live.remove(&gone.datum);
            }
        }
    }
}

/// The events with ts in (clock - size, clock].
#[derive(Debug, Clone)]
pub(crate) struct Sliding {
    size: i64,
    entries: VecDeque<Entry>,
    live: Live,
}

impl Sliding {
    fn observe(&mut self, entry: Entry, clock: i64, caps: Caps) {
        self.expire(clock);
        if entry.ts <= clock.saturating_sub(self.size) {
            return;
        }
        self.live.add(&entry.datum);
        insert(&mut self.entries, entry);
        while self.entries.len() > caps.max_window_events {
            self.pop_front();
        }
    }

    fn expire(&mut self, clock: i64) {
        let floor = clock.saturating_sub(self.size);
        while self.entries.front().is_some_and(|e| e.ts <= floor) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(gone) = self.entries.pop_front() {
            self.live.remove(&gone.datum);
        }
    }
}

/// Tumbling and hopping windows: one accumulator per pane of `slide` ms that has events.
#[derive(Debug, Clone)]
pub(crate) struct Panes {
    size: i64,
    slide: i64,
    /// (pane number, accumulator), by pane number.
    panes: VecDeque<(i64, Acc)>,
}

impl Panes {
    fn observe(&mut self, entry: Entry, clock: i64, aggregate: Aggregate, caps: Caps) {
        let lowest = lowest_pane(clock, self.size, self.slide);
        while self.panes.front().is_some_and(|(k, _)| *k < lowest) {
            self.panes.pop_front();
        }
        let k = entry.ts.div_euclid(self.slide);
        if k < lowest {
            return;
        }
        let at = self.panes.partition_point(|(p, _)| *p < k);
        if self.panes.get(at).is_none_or(|(p, _)| *p != k) {
            self.panes.insert(at, (k, Acc::new(aggregate)));
        }
        if let Some((_, acc)) = self.panes.get_mut(at) {
            acc.add(entry.ts, entry.arrival, &entry.datum, caps.max_distinct);
        }
    }

    fn value(&mut self, clock: i64, aggregate: Aggregate, caps: Caps) -> Value {
        let lowest = lowest_pane(clock, self.size, self.slide);
        while self.panes.front().is_some_and(|(k, _)| *k < lowest) {
            self.panes.pop_front();
        }
        // An empty accumulator's value is the empty window's value.
        let mut total = Acc::new(aggregate);
        for (_, acc) in &self.panes {
            total.merge(acc, caps.max_distinct);
        }
        total.value(aggregate)
    }
}

/// The partition's open session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    gap: i64,
    open: Option<Open>,
}

#[derive(Debug, Clone)]
struct Open {
    start: i64,
    end: i64,
    acc: Acc,
}

impl Session {
    fn observe(&mut self, entry: Entry, clock: i64, aggregate: Aggregate, caps: Caps) {
        if self
            .open
            .as_ref()
            .is_some_and(|o| clock.saturating_sub(o.end) > self.gap)
        {
            self.open = None;
        }
        let ts = entry.ts;
        let open = match &mut self.open {
            None if clock.saturating_sub(ts) > self.gap => return,
            None => self.open.insert(Open {
                start: ts,
                end: ts,
                acc: Acc::new(aggregate),
            }),
            // Before a gap: it belongs to a session that has closed.
            Some(open) if ts < open.start.saturating_sub(self.gap) => return,
            Some(open) => open,
        };
        open.start = open.start.min(ts);
        open.end = open.end.max(ts);
        open.acc
            .add(ts, entry.arrival, &entry.datum, caps.max_distinct);
    }
}
