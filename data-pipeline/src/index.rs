//! The condition index: from an event to the conditions (of all installed patterns, or of all
//! installed features' filters) it satisfies, without looking at the others.
//!
//! Every distinct condition is filed under one *anchor*, the predicate of its conjunction that
//! the fewest other conditions share: an equality (or each value of an `in`) goes into a hash
//! map per field, a `prefix` into a byte trie per field. Conditions with no anchor (only
//! `not_equals` or numeric comparisons) form a short residual list checked on every event. An
//! event is looked up once per anchored field (plus one trie walk per prefix field); each
//! candidate found is then checked against its whole conjunction.

use foldhash::{HashMap, HashMapExt};

use crate::cond::{Cond, Field, FieldValue, Op, Scalar};
use crate::event::Event;

/// Condition ids are indices into [`Index::conds`].
pub(crate) type CondId = u32;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Text(Box<str>),
    Number(u64),
    Bool(bool),
    Prefix(Box<str>),
}

fn scalar_key(s: &Scalar) -> Key {
    match s {
        Scalar::Text(t) => Key::Text(t.clone()),
        Scalar::Number(x) => Key::Number((x + 0.0).to_bits()),
        Scalar::Bool(b) => Key::Bool(*b),
    }
}

/// The anchors a predicate offers: an equality gives one key, `in` one per value, `prefix` one.
fn anchors(op: &Op) -> Vec<Key> {
    match op {
        Op::Equals(s) => vec![scalar_key(s)],
        Op::In(set) => {
            let mut keys: Vec<Key> = set.iter().map(scalar_key).collect();
            keys.dedup();
            keys
        }
        Op::Prefix(p) => vec![Key::Prefix(p.clone())],
        _ => Vec::new(),
    }
}

#[derive(Debug, Default)]
struct Trie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    conds: Vec<CondId>,
}

impl Trie {
    fn insert(&mut self, prefix: &[u8], cond: CondId) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut at = 0usize;
        for &byte in prefix {
            let found = self.nodes[at]
                .children
                .iter()
                .find(|(b, _)| *b == byte)
                .map(|&(_, n)| n as usize);
            at = match found {
                Some(n) => n,
                None => {
                    let n = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[at].children.push((byte, n as u32));
                    n
                }
            };
        }
        self.nodes[at].conds.push(cond);
    }

    /// Every condition filed under a prefix of `value`.
    fn walk(&self, value: &[u8], mut found: impl FnMut(CondId)) {
        let Some(mut node) = self.nodes.first() else {
            return;
        };
        for &byte in value {
            match node.children.iter().find(|(b, _)| *b == byte) {
                Some(&(_, n)) => node = &self.nodes[n as usize],
                None => return,
            }
            node.conds.iter().copied().for_each(&mut found);
        }
    }
}

#[derive(Debug)]
struct FieldIndex {
    field: Field,
    text: HashMap<Box<str>, Vec<CondId>>,
    number: HashMap<u64, Vec<CondId>>,
    boolean: [Vec<CondId>; 2],
    prefixes: Trie,
}

impl FieldIndex {
    fn new(field: Field) -> Self {
        FieldIndex {
            field,
            text: HashMap::new(),
            number: HashMap::new(),
            boolean: [Vec::new(), Vec::new()],
            prefixes: Trie::default(),
        }
    }

    fn insert(&mut self, key: &Key, cond: CondId) {
        match key {
            Key::Text(t) => self.text.entry(t.clone()).or_default().push(cond),
            Key::Number(bits) => self.number.entry(*bits).or_default().push(cond),
            Key::Bool(b) => self.boolean[usize::from(*b)].push(cond),
            Key::Prefix(p) => self.prefixes.insert(p.as_bytes(), cond),
        }
    }

    fn candidates(&self, event: &Event, mut found: impl FnMut(CondId)) {
        let list = match self.field.get(event) {
            FieldValue::Text(t) => {
                self.prefixes.walk(t.as_bytes(), &mut found);
                self.text.get(t)
            }
            FieldValue::Number(x) => self.number.get(&(x + 0.0).to_bits()),
            FieldValue::Bool(b) => Some(&self.boolean[usize::from(b)]),
            FieldValue::Missing => None,
        };
        if let Some(list) = list {
            list.iter().copied().for_each(found);
        }
    }
}

/// All installed patterns' conditions, deduplicated and indexed.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// The distinct conditions.
    pub conds: Vec<Cond>,
    /// Per condition: the (dense) pattern indices whose first positive step is that condition.
    pub starts: Vec<Vec<u32>>,
    fields: Vec<FieldIndex>,
    residual: Vec<CondId>,
}

/// What [`Index::build`] needs of one pattern (a feature filter is a pattern of one condition
/// with no first step).
pub(crate) struct PatternConds<'a> {
    pub conds: &'a [Cond],
    /// Their canonical forms ([`Cond::canonical`]).
    pub keys: &'a [String],
    /// Slot of the first positive step's condition (out of range: none, nothing starts runs).
    pub first_slot: usize,
}

impl Index {
    /// Builds the index of `patterns` (in dense order). Also returns, per pattern, the
    /// condition id of each of its slots.
    pub fn build<'a>(
        patterns: impl IntoIterator<Item = PatternConds<'a>>,
    ) -> (Index, Vec<Vec<CondId>>) {
        let mut index = Index::default();
        let mut ids: HashMap<String, CondId> = HashMap::new();
        let mut slot_conds = Vec::new();
        for (dense, pattern) in patterns.into_iter().enumerate() {
            let mut slots = Vec::with_capacity(pattern.conds.len());
            for (cond, key) in pattern.conds.iter().zip(pattern.keys) {
                let id = *ids.entry(key.clone()).or_insert_with(|| {
                    index.conds.push(cond.clone());
                    index.starts.push(Vec::new());
                    (index.conds.len() - 1) as CondId
                });
                slots.push(id);
            }
            if let Some(&first) = slots.get(pattern.first_slot) {
                index.starts[first as usize].push(dense as u32);
            }
            slot_conds.push(slots);
        }

        // How many conditions each anchor would be shared by; the rarest anchor wins.
        let mut sharing: HashMap<(&Field, Key), usize> = HashMap::new();
        for cond in &index.conds {
            for pred in &cond.preds {
                for key in anchors(&pred.op) {
                    *sharing.entry((&pred.field, key)).or_default() += 1;
                }
            }
        }
        let mut chosen: Vec<Option<(Field, Vec<Key>)>> = Vec::with_capacity(index.conds.len());
        for cond in &index.conds {
            let best = cond
                .preds
                .iter()
                .filter_map(|pred| {
                    let keys = anchors(&pred.op);
                    if keys.is_empty() {
                        return None;
                    }
                    let cost: usize = keys
                        .iter()
                        .map(|k| sharing.get(&(&pred.field, k.clone())).copied().unwrap_or(0))
                        .sum();
                    Some((cost, &pred.field, keys))
                })
                .min_by_key(|(cost, _, _)| *cost);
            chosen.push(best.map(|(_, field, keys)| (field.clone(), keys)));
        }
        for (id, anchor) in chosen.into_iter().enumerate() {
            let id = id as CondId;
            match anchor {
                None => index.residual.push(id),
                Some((field, keys)) => {
                    let at = match index.fields.iter().position(|f| f.field == field) {
                        Some(at) => at,
                        None => {
                            index.fields.push(FieldIndex::new(field));
                            index.fields.len() - 1
                        }
                    };
                    for key in &keys {
                        index.fields[at].insert(key, id);
                    }
                }
            }
        }
        (index, slot_conds)
    }

    /// Calls `found` with every condition `event` satisfies, each once.
    pub fn matching(&self, event: &Event, mut found: impl FnMut(CondId)) {
        let conds = &self.conds;
        let mut check = |id: CondId| {
            if conds[id as usize].eval(event) {
                found(id);
            }
        };
        for field in &self.fields {
            field.candidates(event, &mut check);
        }
        self.residual.iter().copied().for_each(check);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::pattern::PatternSpec;

    #[test]
    fn finds_exactly_the_satisfied_conditions() {
        let spec: PatternSpec = toml::from_str(
            r#"
name = "t"
steps = [
    { event = "click", page = "item/1" },
    { where = [{ field = "page", prefix = "item/" }] },
    { where = [{ field = "page", prefix = "it" }, { field = "args.price", ge = 10 }] },
    { where = [{ field = "args.price", lt = 100 }] },
    { where = [{ field = "args.action", in = ["buy", "cart"] }] },
    { where = [{ field = "args.price", equals = 50.0 }] },
    { where = [{ field = "page", prefix = "home" }] },
]
"#,
        )
        .unwrap();
        let program = spec.compile().unwrap();
        let (index, slots) = Index::build([PatternConds {
            conds: &program.conds,
            keys: &program.cond_keys,
            first_slot: 0,
        }]);
        assert_eq!(slots[0].len(), 7);
        assert_eq!(index.residual.len(), 1, "only the lone `lt` has no anchor");
        let event = Event {
            id: "e".into(),
            ts: 0,
            session: "s".into(),
            page: "item/1".into(),
            event: EventKind::Click,
            item: String::new(),
            args: serde_json::json!({"price": 50, "action": "cart"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        let mut found = Vec::new();
        index.matching(&event, |c| found.push(c));
        found.sort();
        assert_eq!(found, [0, 1, 2, 3, 4, 5]);
        for (id, cond) in index.conds.iter().enumerate() {
            assert_eq!(cond.eval(&event), found.contains(&(id as u32)));
        }
    }
}
