//! Partition ids: every distinct tuple of partition values gets one small id, shared by all the
//! features partitioned by the same fields, so that an event hashes its key once per
//! partitioning and each feature then looks its window up by a `u32`.

use foldhash::{HashMap, HashMapExt};

use crate::cond::Field;

/// The partitions of one partitioning (a `partition_by` list) that some feature holds.
#[derive(Debug)]
pub(crate) struct Space {
    pub fields: Vec<Field>,
    ids: HashMap<Box<[u8]>, u32>,
    /// Per id: its key (`None` when free) and how many features hold a window under it.
    slots: Vec<(Option<Box<[u8]>>, u32)>,
    free: Vec<u32>,
}

impl Space {
    /// A partitioning with no partition yet.
    pub(crate) fn new(fields: Vec<Field>) -> Space {
        Space {
            fields,
            ids: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// The id of the partition with `key`, if a feature holds it.
    pub(crate) fn find(&self, key: &[u8]) -> Option<u32> {
        self.ids.get(key).copied()
    }

    /// The id of the partition with `key` (created if new), held by one more feature.
    pub(crate) fn hold(&mut self, key: &[u8]) -> u32 {
        if let Some(&id) = self.ids.get(key) {
            if let Some(slot) = self.slots.get_mut(id as usize) {
                slot.1 += 1;
            }
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = (Some(key.into()), 1);
                id
            }
            None => {
                self.slots.push((Some(key.into()), 1));
                (self.slots.len() - 1) as u32
            }
        };
        self.ids.insert(key.into(), id);
        id
    }

    /// One feature no longer holds partition `id`; the id is freed when none does.
    pub(crate) fn release(&mut self, id: u32) {
        let Some(slot) = self.slots.get_mut(id as usize) else {
            return;
        };
        slot.1 = slot.1.saturating_sub(1);
        if slot.1 == 0
            && let Some(key) = slot.0.take()
        {
            self.ids.remove(&key);
            self.free.push(id);
        }
    }

    /// Partitions held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Approximate heap bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.ids.capacity() * (size_of::<(Box<[u8]>, u32)>() + 1)
            + self.slots.capacity() * size_of::<(Option<Box<[u8]>>, u32)>()
            + self.free.capacity() * 4
            + self
                .slots
                .iter()
                .filter_map(|s| s.0.as_ref())
                .map(|k| 2 * k.len())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_live_while_held() {
        let mut space = Space::new(vec![Field::Item]);
        let a = space.hold(b"a");
        assert_eq!(space.hold(b"a"), a);
        let b = space.hold(b"b");
        assert_ne!(a, b);
        space.release(a);
        assert_eq!(space.find(b"a"), Some(a), "still held once");
        space.release(a);
        assert_eq!(space.find(b"a"), None);
        assert_eq!(space.len(), 1);
        // The freed id is reused.
        assert_eq!(space.hold(b"c"), a);
        space.release(99);
        assert_eq!(space.len(), 2);
    }
}
