//! A map from partition keys to values that keeps at most a given number of entries, evicting
//! the least recently seen, with O(1) lookups, touches and evictions (a slab of nodes on an
//! intrusive doubly linked list; no allocation per touch).

use foldhash::{HashMap, HashMapExt};

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node<V> {
    key: Box<[u8]>,
    value: V,
    /// Towards the most recently seen.
    newer: u32,
    /// Towards the least recently seen.
    older: u32,
}

/// Partition key → value, in order of when each was last seen.
#[derive(Debug, Clone)]
pub(crate) struct Lru<V> {
    index: HashMap<Box<[u8]>, u32>,
    nodes: Vec<Option<Node<V>>>,
    free: Vec<u32>,
    newest: u32,
    oldest: u32,
}

impl<V> Default for Lru<V> {
    fn default() -> Self {
        Lru {
            index: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            newest: NIL,
            oldest: NIL,
        }
    }
}

impl<V> Lru<V> {
    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// The value under `key`, marked as just seen.
    pub(crate) fn touch(&mut self, key: &[u8]) -> Option<&mut V> {
        let at = *self.index.get(key)?;
        self.unlink(at);
        self.link_newest(at);
        self.node_mut(at).map(|n| &mut n.value)
    }

    /// The value under `key`, leaving the order alone.
    pub(crate) fn peek(&mut self, key: &[u8]) -> Option<&mut V> {
        let at = *self.index.get(key)?;
        self.node_mut(at).map(|n| &mut n.value)
    }

    /// Inserts `value` under `key` (which must be absent) as the most recently seen, first
    /// evicting the least recently seen entry if there are already `max` (at least 1).
    pub(crate) fn insert(&mut self, key: &[u8], value: V, max: usize) {
        while self.len() >= max.max(1) {
            if self.pop_oldest().is_none() {
                break;
            }
        }
        let node = Node {
            key: key.into(),
            value,
            newer: NIL,
            older: NIL,
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
        self.index.insert(key.into(), at);
        self.link_newest(at);
    }

    /// The least recently seen value.
    pub(crate) fn oldest(&self) -> Option<&V> {
        self.nodes
            .get(self.oldest as usize)
            .and_then(Option::as_ref)
            .map(|n| &n.value)
    }

    /// Removes and returns the least recently seen value.
    pub(crate) fn pop_oldest(&mut self) -> Option<V> {
        let at = self.oldest;
        if at == NIL {
            return None;
        }
        self.unlink(at);
        let node = self.nodes.get_mut(at as usize)?.take()?;
        self.index.remove(&node.key);
        self.free.push(at);
        Some(node.value)
    }

    /// Every value, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.nodes.iter().flatten().map(|n| &n.value)
    }

    /// Heap bytes of the structure itself and its keys (not what the values own).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Option<Node<V>>>()
            + self.free.capacity() * 4
            + self.index.capacity() * (size_of::<(Box<[u8]>, u32)>() + 1)
            + self
                .nodes
                .iter()
                .flatten()
                .map(|n| 2 * n.key.len())
                .sum::<usize>()
    }

    fn node_mut(&mut self, at: u32) -> Option<&mut Node<V>> {
        self.nodes.get_mut(at as usize).and_then(Option::as_mut)
    }

    fn unlink(&mut self, at: u32) {
        let Some(node) = self.node_mut(at) else {
            return;
        };
        let (newer, older) = (node.newer, node.older);
        node.newer = NIL;
        node.older = NIL;
        match self.node_mut(newer) {
            Some(n) => n.older = older,
            None => self.newest = older,
        }
        match self.node_mut(older) {
            Some(n) => n.newer = newer,
            None => self.oldest = newer,
        }
    }

    fn link_newest(&mut self, at: u32) {
        let previous = self.newest;
        if let Some(node) = self.node_mut(at) {
            node.older = previous;
            node.newer = NIL;
        }
        match self.node_mut(previous) {
            Some(n) => n.newer = at,
            None => self.oldest = at,
        }
        self.newest = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_seen() {
        let mut lru = Lru::default();
        lru.insert(b"a", 1, 3);
        lru.insert(b"b", 2, 3);
        lru.insert(b"c", 3, 3);
        assert_eq!(lru.touch(b"a"), Some(&mut 1));
        // b is now the oldest.
        lru.insert(b"d", 4, 3);
        assert_eq!(lru.len(), 3);
        assert!(lru.peek(b"b").is_none());
        assert_eq!(lru.oldest(), Some(&3));
        // Peeking does not refresh.
        assert_eq!(lru.peek(b"c"), Some(&mut 3));
        assert_eq!(lru.pop_oldest(), Some(3));
        assert_eq!(lru.pop_oldest(), Some(1));
        assert_eq!(lru.pop_oldest(), Some(4));
        assert_eq!(lru.pop_oldest(), None);
        assert_eq!(lru.len(), 0);
        // Freed slots are reused.
        lru.insert(b"e", 5, 3);
        assert_eq!(lru.nodes.len(), 3);
        let mut values: Vec<_> = lru.values().copied().collect();
        values.sort();
        assert_eq!(values, [5]);
    }

    #[test]
    fn a_long_churn_stays_consistent() {
        let mut lru = Lru::default();
        for i in 0u32..10_000 {
            let key = (i % 97).to_le_bytes();
            if lru.touch(&key).is_none() {
                lru.insert(&key, i, 50);
            }
            assert!(lru.len() <= 50);
        }
        let mut seen = 0;
        while lru.pop_oldest().is_some() {
            seen += 1;
        }
        assert_eq!(seen, 50);
        assert!(lru.nodes.len() <= 51);
    }
}
