//! A map from partition ids to values that keeps at most a given number of entries, evicting
//! the least recently seen.
//!
//! Recency is a queue of (slot, tick) stamps: seeing an entry stamps its node and appends the
//! stamp, so a touch writes the node it reads anyway and the end of a sequential queue instead
//! of relinking three cold list nodes; the least recently seen entry is the first stamp that is
//! still its node's latest. Outdated stamps are dropped from the front as they surface and all
//! at once when they outnumber the entries, so the queue stays within twice the entries.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};

#[derive(Debug, Clone)]
struct Node<V> {
    key: u32,
    value: V,
    /// Tick of the latest stamp.
    seen: u64,
}

/// Partition id → value, in order of when each was last seen.
#[derive(Debug, Clone)]
pub(crate) struct Lru<V> {
    index: HashMap<u32, u32>,
    nodes: Vec<Option<Node<V>>>,
    free: Vec<u32>,
    /// (slot, tick), oldest first; a stamp is live while its node's `seen` is its tick.
    stamps: VecDeque<(u32, u64)>,
    tick: u64,
}

impl<V> Default for Lru<V> {
    fn default() -> Self {
        Lru {
            index: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            stamps: VecDeque::new(),
            tick: 0,
        }
    }
}

impl<V> Lru<V> {
    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// The value under `key`, marked as just seen.
    pub(crate) fn touch(&mut self, key: u32) -> Option<&mut V> {
        let at = *self.index.get(&key)?;
        self.stamp(at);
        self.node_mut(at).map(|n| &mut n.value)
    }

    /// The value under `key`, leaving the order alone.
    pub(crate) fn peek(&mut self, key: u32) -> Option<&mut V> {
        let at = *self.index.get(&key)?;
        self.node_mut(at).map(|n| &mut n.value)
    }

    /// Inserts `value` under `key` (which must be absent) as the most recently seen, first
    /// evicting the least recently seen entries while there are `max` (at least 1); calls
    /// `evicted` with the key of each.
    pub(crate) fn insert(&mut self, key: u32, value: V, max: usize, mut evicted: impl FnMut(u32)) {
        while self.len() >= max.max(1) {
            match self.pop_oldest() {
                Some((gone, _)) => evicted(gone),
                None => break,
            }
        }
        let node = Node {
            key,
            value,
            seen: 0,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.nodes[at as usize] = Some(node);
                at
            }
            None => {
                self.nodes.push(Some(node));
                (self.nodes.len() - 1) as u32
            }
        };
        self.index.insert(key, at);
        self.stamp(at);
    }

    /// The least recently seen value.
    pub(crate) fn oldest(&mut self) -> Option<&V> {
        let at = self.oldest_slot()?;
        self.node_mut(at).map(|n| &n.value)
    }

    /// Removes and returns the least recently seen entry.
    pub(crate) fn pop_oldest(&mut self) -> Option<(u32, V)> {
        let at = self.oldest_slot()?;
        self.stamps.pop_front();
        let node = self.nodes.get_mut(at as usize)?.take()?;
        self.index.remove(&node.key);
        self.free.push(at);
        Some((node.key, node.value))
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &V)> {
        self.nodes.iter().flatten().map(|n| (n.key, &n.value))
    }

    /// Heap bytes of the structure itself (not what the values own).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Option<Node<V>>>()
            + self.free.capacity() * 4
            + self.index.capacity() * (size_of::<(u32, u32)>() + 1)
            + self.stamps.capacity() * size_of::<(u32, u64)>()
    }

    fn node_mut(&mut self, at: u32) -> Option<&mut Node<V>> {
        self.nodes.get_mut(at as usize).and_then(Option::as_mut)
    }

    fn is_live(&self, (at, tick): (u32, u64)) -> bool {
        self.nodes
            .get(at as usize)
            .and_then(Option::as_ref)
            .is_some_and(|n| n.seen == tick)
    }

    /// The slot of the least recently seen entry, dropping outdated stamps before it.
    fn oldest_slot(&mut self) -> Option<u32> {
        while let Some(&stamp) = self.stamps.front() {
            if self.is_live(stamp) {
                return Some(stamp.0);
            }
            self.stamps.pop_front();
        }
        None
    }

    fn stamp(&mut self, at: u32) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(node) = self.node_mut(at) {
            node.seen = tick;
        }
        self.stamps.push_back((at, tick));
        if self.stamps.len() > 2 * self.len() + 32 {
            let nodes = &self.nodes;
            self.stamps.retain(|&(at, tick)| {
                nodes
                    .get(at as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|n| n.seen == tick)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_seen() {
        let mut lru = Lru::default();
        let mut evicted = Vec::new();
        lru.insert(1, 10, 3, |k| evicted.push(k));
        lru.insert(2, 20, 3, |k| evicted.push(k));
        lru.insert(3, 30, 3, |k| evicted.push(k));
        assert_eq!(lru.touch(1), Some(&mut 10));
        // 2 is now the oldest.
        lru.insert(4, 40, 3, |k| evicted.push(k));
        assert_eq!(evicted, [2]);
        assert_eq!(lru.len(), 3);
        assert!(lru.peek(2).is_none());
        assert_eq!(lru.oldest(), Some(&30));
        // Peeking does not refresh.
        assert_eq!(lru.peek(3), Some(&mut 30));
        assert_eq!(lru.pop_oldest(), Some((3, 30)));
        assert_eq!(lru.pop_oldest(), Some((1, 10)));
        assert_eq!(lru.pop_oldest(), Some((4, 40)));
        assert_eq!(lru.pop_oldest(), None);
        assert_eq!(lru.len(), 0);
        // Freed slots are reused.
        lru.insert(5, 50, 3, |_| {});
        assert_eq!(lru.nodes.len(), 3);
        assert_eq!(lru.iter().collect::<Vec<_>>(), [(5, &50)]);
    }

    #[test]
    fn a_long_churn_stays_consistent() {
        let mut lru = Lru::default();
        let mut evictions = 0;
        for i in 0u32..10_000 {
            let key = i % 97;
            if lru.touch(key).is_none() {
                lru.insert(key, i, 50, |_| evictions += 1);
            }
            assert!(lru.len() <= 50);
        }
        assert!(evictions > 0);
        let mut seen = 0;
        while lru.pop_oldest().is_some() {
            seen += 1;
        }
        assert_eq!(seen, 50);
        assert!(lru.nodes.len() <= 51);
        assert!(lru.stamps.len() <= 2 * 50 + 33);
    }
}
