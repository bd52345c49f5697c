//! Aggregations over a window's events: what one event contributes ([`Datum`]), accumulators
//! that only add and merge ([`Acc`]: panes, sessions, the match window) and ones that also
//! remove ([`Live`]: count and sliding windows), and the exact sum both use so that the order of
//! additions and removals never changes a result.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde_json::Value;

use super::spec::{Aggregate, Of};
use crate::cond::Field;
use crate::event::Event;

/// Numbers of larger magnitude count as non-numeric: it keeps every sum of a bounded window
/// finite, so removing a value from it stays exact.
pub const MAX_MAGNITUDE: f64 = 1e300;

/// What one event contributes to a feature's aggregate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Datum {
    /// The event has no usable value for the aggregate (field missing, null, or not a number
    /// for a numeric aggregate). It still belongs to the window.
    Absent,
    /// The event counts (count, duration).
    Unit,
    Number(f64),
    Json(Value),
    Key(DistinctKey),
}

/// A JSON value as `distinct_count` compares it: numbers by their `f64` value, arrays and objects
/// by their JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum DistinctKey {
    Bool(bool),
    Number(u64),
    Text(Box<str>),
    Json(Box<str>),
}

impl DistinctKey {
    fn of(value: &Value) -> Option<DistinctKey> {
        Some(match value {
            Value::Null => return None,
            Value::Bool(b) => DistinctKey::Bool(*b),
            Value::Number(n) => DistinctKey::Number((n.as_f64()? + 0.0).to_bits()),
            Value::String(s) => DistinctKey::Text(s.as_str().into()),
            Value::Array(_) | Value::Object(_) => DistinctKey::Json(value.to_string().into()),
        })
    }

    fn heap_bytes(&self) -> usize {
        match self {
            DistinctKey::Text(s) | DistinctKey::Json(s) => s.len(),
            _ => 0,
        }
    }
}

/// The value of `of` in `event`: `None` when missing or null. An empty `item` means "no item".
fn value_of(of: &Of, event: &Event) -> Option<Value> {
    let text = |s: &str| Some(Value::String(s.to_owned()));
    match of {
        Of::Ts => Some(Value::from(event.ts)),
        Of::Field(Field::Session) => text(&event.session),
        Of::Field(Field::Page) => text(&event.page),
        Of::Field(Field::Event) => text(event.event.as_str()),
        Of::Field(Field::Item) if event.item.is_empty() => None,
        Of::Field(Field::Item) => text(&event.item),
        Of::Field(Field::Arg(name)) => match event.args.get(&**name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.clone()),
        },
    }
}

/// The numeric value of `of` in `event`, if it has one within [`MAX_MAGNITUDE`].
fn number_of(of: &Of, event: &Event) -> Option<f64> {
    let x = match of {
        Of::Ts => event.ts as f64,
        Of::Field(Field::Arg(name)) => event.args.get(&**name)?.as_f64()?,
        Of::Field(_) => return None,
    };
    // `+ 0.0` folds -0 into 0, so that min, max and distinct see one zero.
    (x.abs() <= MAX_MAGNITUDE).then_some(x + 0.0)
}

/// What `event` contributes to a feature computing `aggregate` of `of`.
pub(crate) fn datum(aggregate: Aggregate, of: Option<&Of>, event: &Event) -> Datum {
    let Some(of) = of else {
        return Datum::Unit;
    };
    let present = |d: Option<Datum>| d.unwrap_or(Datum::Absent);
    match aggregate {
        Aggregate::Count => present(value_of(of, event).map(|_| Datum::Unit)),
        Aggregate::Duration => Datum::Unit,
        Aggregate::Sum | Aggregate::Avg | Aggregate::Min | Aggregate::Max => {
            present(number_of(of, event).map(Datum::Number))
        }
        Aggregate::First | Aggregate::Last => present(value_of(of, event).map(Datum::Json)),
        Aggregate::DistinctCount => present(
            value_of(of, event)
                .as_ref()
                .and_then(DistinctKey::of)
                .map(Datum::Key),
        ),
    }
}

impl Datum {
    /// Heap bytes beyond the enum itself (approximate).
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Datum::Json(v) => json_bytes(v),
            Datum::Key(k) => k.heap_bytes(),
            _ => 0,
        }
    }
}

fn json_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(_) | Value::Object(_) => 2 * value.to_string().len(),
        _ => 0,
    }
}

/// A sum of `f64`s kept exactly (Shewchuk's non-overlapping partials, as in Python's
/// `math.fsum`) and rounded once when read: the result is the correctly rounded exact sum, the
/// same whatever the order of additions, and subtracting a value removes it exactly.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ExactSum {
    /// Non-overlapping, in increasing magnitude; their exact sum is the sum.
    partials: Vec<f64>,
}

impl ExactSum {
    /// Adds `x` exactly (unless the sum leaves `f64`'s range, which bounded windows cannot).
    pub(crate) fn add(&mut self, mut x: f64) {
        let mut kept = 0;
        for i in 0..self.partials.len() {
            let mut y = self.partials[i];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        self.partials.truncate(kept);
        if x != 0.0 {
            self.partials.push(x);
        }
    }

    /// The exact sum rounded to the nearest `f64` (ties to even).
    pub(crate) fn value(&self) -> f64 {
        let p = &self.partials;
        let mut n = p.len();
        if n == 0 {
            return 0.0;
        }
        n -= 1;
        let mut hi = p[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = p[n];
            hi = x + y;
            let yr = hi - x;
            lo = y - yr;
            if lo != 0.0 {
                break;
            }
        }
        // Round half to even correctly when the rest of the partials point the same way as the
        // rounding error.
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
        hi
    }

    fn merge(&mut self, other: &ExactSum) {
        for &x in &other.partials {
            self.add(x);
        }
    }
}

/// A number as JSON: whole numbers within `f64`'s exact integers as integers, others as floats,
/// non-finite (an overflowed sum) as null.
pub(crate) fn number(x: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() <= EXACT {
        Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// The value of an aggregate over an empty window.
pub(crate) fn empty_value(aggregate: Aggregate) -> Value {
    match aggregate {
        Aggregate::Count | Aggregate::Sum | Aggregate::DistinctCount => Value::from(0),
        _ => Value::Null,
    }
}

/// A value with its place in event-time order: (ts, arrival).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stamped {
    ts: i64,
    arrival: u64,
    value: Value,
}

/// An accumulator that only adds (and merges): all a window needs when events never leave it
/// one by one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Acc {
    Count(u64),
    /// Sum and avg: the sum of the numbers and how many there were.
    Sum(ExactSum, u64),
    Min(Option<f64>),
    Max(Option<f64>),
    First(Option<Stamped>),
    Last(Option<Stamped>),
    /// At most the feature set's `max_distinct` values.
    Distinct(HashSet<DistinctKey>),
    /// Duration: the earliest and latest timestamps.
    Span(Option<(i64, i64)>),
}

impl Acc {
    /// An empty accumulator for `aggregate`.
    pub(crate) fn new(aggregate: Aggregate) -> Acc {
        match aggregate {
            Aggregate::Count => Acc::Count(0),
            Aggregate::Sum | Aggregate::Avg => Acc::Sum(ExactSum::default(), 0),
            Aggregate::Min => Acc::Min(None),
            Aggregate::Max => Acc::Max(None),
            Aggregate::First => Acc::First(None),
            Aggregate::Last => Acc::Last(None),
            Aggregate::DistinctCount => Acc::Distinct(HashSet::new()),
            Aggregate::Duration => Acc::Span(None),
        }
    }

    /// Adds one event's contribution.
    pub(crate) fn add(&mut self, ts: i64, arrival: u64, datum: &Datum, max_distinct: usize) {
        match (self, datum) {
            (_, Datum::Absent) => {}
            (Acc::Count(n), _) => *n += 1,
            (Acc::Span(span), _) => {
                *span = Some(span.map_or((ts, ts), |(lo, hi)| (lo.min(ts), hi.max(ts))));
            }
            (Acc::Sum(sum, n), Datum::Number(x)) => {
                sum.add(*x);
                *n += 1;
            }
            (Acc::Min(m), Datum::Number(x)) => *m = Some(m.map_or(*x, |m| m.min(*x))),
            (Acc::Max(m), Datum::Number(x)) => *m = Some(m.map_or(*x, |m| m.max(*x))),
            (Acc::First(f), Datum::Json(v))
                if f.as_ref().is_none_or(|f| (ts, arrival) < (f.ts, f.arrival)) =>
            {
                *f = Some(Stamped {
                    ts,
                    arrival,
                    value: v.clone(),
                });
            }
            (Acc::Last(l), Datum::Json(v))
                if l.as_ref().is_none_or(|l| (ts, arrival) > (l.ts, l.arrival)) =>
            {
                *l = Some(Stamped {
                    ts,
                    arrival,
                    value: v.clone(),
                });
            }
            (Acc::Distinct(set), Datum::Key(k)) if set.len() < max_distinct => {
                set.insert(k.clone());
            }
            // A datum of another aggregate's kind cannot come from `datum()`.
            _ => {}
        }
    }

    /// Adds everything `other` holds (an accumulator of the same aggregate).
    pub(crate) fn merge(&mut self, other: &Acc, max_distinct: usize) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Sum(a, n), Acc::Sum(b, m)) => {
                a.merge(b);
                *n += m;
            }
            (Acc::Min(a), Acc::Min(Some(b))) => *a = Some(a.map_or(*b, |a| a.min(*b))),
            (Acc::Max(a), Acc::Max(Some(b))) => *a = Some(a.map_or(*b, |a| a.max(*b))),
            (Acc::First(a), Acc::First(Some(b)))
                if a.as_ref()
                    .is_none_or(|a| (b.ts, b.arrival) < (a.ts, a.arrival)) =>
            {
                *a = Some(b.clone());
            }
            (Acc::Last(a), Acc::Last(Some(b)))
                if a.as_ref()
                    .is_none_or(|a| (b.ts, b.arrival) > (a.ts, a.arrival)) =>
            {
                *a = Some(b.clone());
            }
            (Acc::Distinct(a), Acc::Distinct(b)) => {
                for k in b {
                    if a.len() >= max_distinct {
                        break;
                    }
                    a.insert(k.clone());
                }
            }
            (Acc::Span(a), Acc::Span(Some((lo, hi)))) => {
                *a = Some(a.map_or((*lo, *hi), |(a, b)| (a.min(*lo), b.max(*hi))));
            }
            _ => {}
        }
    }

    /// The aggregate's value.
    pub(crate) fn value(&self, aggregate: Aggregate) -> Value {
        match self {
            Acc::Count(n) => Value::from(*n),
            Acc::Sum(sum, n) => match aggregate {
                Aggregate::Avg if *n == 0 => Value::Null,
                Aggregate::Avg => number(sum.value() / *n as f64),
                _ => number(sum.value()),
            },
            Acc::Min(m) | Acc::Max(m) => m.map_or(Value::Null, number),
            Acc::First(s) | Acc::Last(s) => s.as_ref().map_or(Value::Null, |s| s.value.clone()),
            Acc::Distinct(set) => Value::from(set.len()),
            Acc::Span(span) => span.map_or(Value::Null, |(lo, hi)| Value::from(hi - lo)),
        }
    }

    /// Approximate heap bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Acc::Sum(sum, _) => sum.partials.capacity() * 8,
            Acc::First(Some(s)) | Acc::Last(Some(s)) => json_bytes(&s.value),
            Acc::Distinct(set) => {
                set.capacity() * (size_of::<DistinctKey>() + 8)
                    + set.iter().map(DistinctKey::heap_bytes).sum::<usize>()
            }
            _ => 0,
        }
    }
}

/// One event kept in a window, ordered by (ts, arrival).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub ts: i64,
    pub arrival: u64,
    pub datum: Datum,
}

impl Entry {
    pub(crate) fn key(&self) -> (i64, u64) {
        (self.ts, self.arrival)
    }
}

/// An `f64` ordered totally, for the min/max multiset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ordered(f64);

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// An aggregate over a window whose events also leave it one at a time; first, last and
/// duration are read off the window's ordered entries instead.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Live {
    Count(u64),
    Sum(ExactSum, u64),
    /// Min and max: how many times each number is in the window.
    Extremes(BTreeMap<Ordered, u32>),
    Distinct(HashMap<DistinctKey, u32>),
    Ends,
}

impl Live {
    /// An empty aggregate for `aggregate`.
    pub(crate) fn new(aggregate: Aggregate) -> Live {
        match aggregate {
            Aggregate::Count => Live::Count(0),
            Aggregate::Sum | Aggregate::Avg => Live::Sum(ExactSum::default(), 0),
            Aggregate::Min | Aggregate::Max => Live::Extremes(BTreeMap::new()),
            Aggregate::DistinctCount => Live::Distinct(HashMap::new()),
            Aggregate::First | Aggregate::Last | Aggregate::Duration => Live::Ends,
        }
    }

    /// An event entered the window.
    pub(crate) fn add(&mut self, datum: &Datum) {
        match (self, datum) {
            (_, Datum::Absent) => {}
            (Live::Count(n), _) => *n += 1,
            (Live::Sum(sum, n), Datum::Number(x)) => {
                sum.add(*x);
                *n += 1;
            }
            (Live::Extremes(set), Datum::Number(x)) => *set.entry(Ordered(*x)).or_default() += 1,
            (Live::Distinct(map), Datum::Key(k)) => *map.entry(k.clone()).or_default() += 1,
            _ => {}
        }
    }

    /// An event that was added left the window.
    pub(crate) fn remove(&mut self, datum: &Datum) {
        match (self, datum) {
            (_, Datum::Absent) => {}
            (Live::Count(n), _) => *n = n.saturating_sub(1),
            (Live::Sum(sum, n), Datum::Number(x)) => {
                sum.add(-*x);
                *n = n.saturating_sub(1);
                if *n == 0 {
                    *sum = ExactSum::default();
                }
            }
            (Live::Extremes(set), Datum::Number(x)) => {
                if let Some(c) = set.get_mut(&Ordered(*x)) {
                    *c -= 1;
                    if *c == 0 {
                        set.remove(&Ordered(*x));
                    }
                }
            }
            (Live::Distinct(map), Datum::Key(k)) => {
                if let Some(c) = map.get_mut(k) {
                    *c -= 1;
                    if *c == 0 {
                        map.remove(k);
                    }
                }
            }
            _ => {}
        }
    }

    /// The aggregate's value over `entries` (the window, ordered by ts then arrival).
    pub(crate) fn value(
        &self,
        aggregate: Aggregate,
        entries: &VecDeque<Entry>,
        max_distinct: usize,
    ) -> Value {
        let json = |e: &Entry| match &e.datum {
            Datum::Json(v) => Some(v.clone()),
            _ => None,
        };
        match self {
            Live::Count(n) => Value::from(*n),
            Live::Sum(sum, n) => match aggregate {
                Aggregate::Avg if *n == 0 => Value::Null,
                Aggregate::Avg => number(sum.value() / *n as f64),
                _ => number(sum.value()),
            },
            Live::Extremes(set) => {
                let end = match aggregate {
                    Aggregate::Min => set.keys().next(),
                    _ => set.keys().next_back(),
                };
                end.map_or(Value::Null, |x| number(x.0))
            }
            Live::Distinct(map) => Value::from(map.len().min(max_distinct)),
            Live::Ends => match aggregate {
                Aggregate::First => entries.iter().find_map(json).unwrap_or(Value::Null),
                Aggregate::Last => entries.iter().rev().find_map(json).unwrap_or(Value::Null),
                _ => match (entries.front(), entries.back()) {
                    (Some(a), Some(b)) => Value::from(b.ts - a.ts),
                    _ => Value::Null,
                },
            },
        }
    }

    /// Approximate heap bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Live::Sum(sum, _) => sum.partials.capacity() * 8,
            Live::Extremes(set) => set.len() * 32,
            Live::Distinct(map) => {
                map.capacity() * (size_of::<DistinctKey>() + 12)
                    + map.keys().map(DistinctKey::heap_bytes).sum::<usize>()
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fsum(values: &[f64]) -> f64 {
        let mut s = ExactSum::default();
        values.iter().for_each(|&x| s.add(x));
        s.value()
    }

    #[test]
    fn the_exact_sum_is_correctly_rounded_and_order_free() {
        assert_eq!(fsum(&[]), 0.0);
        assert_eq!(fsum(&[0.1; 10]), 1.0);
        assert_eq!(fsum(&[1e100, 1.0, -1e100, 1e-100]), 1.0);
        assert_eq!(fsum(&[1e16, 1.0, 1e-16]), 10000000000000002.0);
        let values = [0.1, 0.7, 1e15, -3.3, 2.5e-7, 42.0, -1e15];
        let mut reversed = values;
        reversed.reverse();
        assert_eq!(fsum(&values), fsum(&reversed));
        // Removing by adding the negation leaves exactly the rest.
        let mut s = ExactSum::default();
        values.iter().for_each(|&x| s.add(x));
        s.add(-0.7);
        s.add(-1e15);
        assert_eq!(s.value(), fsum(&[0.1, -3.3, 2.5e-7, 42.0, -1e15]));
    }

    #[test]
    fn numbers_print_as_integers_when_whole() {
        assert_eq!(number(3.0), serde_json::json!(3));
        assert_eq!(number(-0.0), serde_json::json!(0));
        assert_eq!(number(2.5), serde_json::json!(2.5));
        assert_eq!(number(f64::INFINITY), Value::Null);
        assert_eq!(number(1e300), serde_json::json!(1e300));
    }

    #[test]
    fn distinct_keys_compare_numbers_by_value() {
        let k = |v: Value| DistinctKey::of(&v);
        assert_eq!(k(serde_json::json!(1)), k(serde_json::json!(1.0)));
        assert_ne!(k(serde_json::json!(1)), k(serde_json::json!("1")));
        assert_eq!(k(Value::Null), None);
        assert_eq!(
            k(serde_json::json!({"b": 1, "a": 2})),
            k(serde_json::json!({"a": 2, "b": 1}))
        );
    }
}
