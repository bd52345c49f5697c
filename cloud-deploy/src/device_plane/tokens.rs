//! Device tokens this replica has recently checked against the database, so that a device's
//! every call (a Sync, each bundle fetch, each report) does not read its row again.
//!
//! An entry is trusted for [`TOKEN_TTL`] after the database confirmed it. A device that
//! registers again gets a new token: on the replica it registers with, its old token is
//! forgotten at once; another replica that checked the old token keeps accepting it for at most
//! the TTL. The cache holds at most [`TOKEN_CAPACITY`] tokens; when full, expired entries go
//! first and, if none has expired, everything (the next calls read the database again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a token checked against the database is trusted without checking it again.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// Most tokens kept (about 200 bytes each).
pub const TOKEN_CAPACITY: usize = 262_144;

/// Token hash → device id, for tokens the database confirmed within the TTL.
pub struct TokenCache {
    ttl: Duration,
    capacity: usize,
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    by_hash: HashMap<String, (String, Instant)>,
    /// The cached token hash of each device, so a new token can drop the old one.
    by_device: HashMap<String, String>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(TOKEN_TTL, TOKEN_CAPACITY)
    }
}

impl TokenCache {
    /// A cache trusting entries for `ttl` and holding at most `capacity` of them.
    pub fn new(ttl: Duration, capacity: usize) -> TokenCache {
        TokenCache {
            ttl,
            capacity: capacity.max(1),
            known: Mutex::new(Known::default()),
        }
    }

    /// The device whose token hashes to `hash`, if the database confirmed it within the TTL.
    pub fn device(&self, hash: &str) -> Option<String> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .by_hash
            .get(hash)
            .filter(|(_, checked)| checked.elapsed() < self.ttl)
            .map(|(device, _)| device.clone())
    }

    /// Records that the database just confirmed `hash` as `device`'s token.
    pub fn confirmed(&self, hash: &str, device: &str) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        forget(&mut known, device);
        if known.by_hash.len() >= self.capacity {
            let ttl = self.ttl;
            known
                .by_hash
                .retain(|_, (_, checked)| checked.elapsed() < ttl);
            if known.by_hash.len() >= self.capacity {
                known.by_hash.clear();
            }
            let Known { by_hash, by_device } = &mut *known;
            by_device.retain(|_, hash| by_hash.contains_key(hash));
        }
        known
            .by_hash
            .insert(hash.to_owned(), (device.to_owned(), Instant::now()));
        known.by_device.insert(device.to_owned(), hash.to_owned());
    }

    /// Forgets `device`'s cached token (it registered again and holds a new one).
    pub fn forget_device(&self, device: &str) {
        forget(
            &mut self.known.lock().unwrap_or_else(|p| p.into_inner()),
            device,
        );
    }
}

fn forget(known: &mut Known, device: &str) {
    if let Some(hash) = known.by_device.remove(device) {
        known.by_hash.remove(&hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmed_token_is_known_until_it_expires() {
        let cache = TokenCache::new(Duration::from_secs(60), 10);
        assert_eq!(cache.device("h1"), None);
        cache.confirmed("h1", "d1");
        assert_eq!(cache.device("h1").as_deref(), Some("d1"));

        let expired = TokenCache::new(Duration::ZERO, 10);
        expired.confirmed("h1", "d1");
        assert_eq!(
            expired.device("h1"),
            None,
            "an expired entry is not trusted"
        );
    }

    #[test]
    fn a_new_token_or_a_new_registration_drops_the_old_token() {
        let cache = TokenCache::new(Duration::from_secs(60), 10);
        cache.confirmed("old", "d1");
        cache.confirmed("new", "d1");
        assert_eq!(cache.device("old"), None);
        assert_eq!(cache.device("new").as_deref(), Some("d1"));
        cache.forget_device("d1");
        assert_eq!(cache.device("new"), None);
    }

    #[test]
    fn a_full_cache_stays_within_its_capacity() {
        let cache = TokenCache::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            cache.confirmed(&format!("h{i}"), &format!("d{i}"));
            let known = cache.known.lock().unwrap();
            assert!(known.by_hash.len() <= 3 && known.by_device.len() <= 3);
        }
        assert_eq!(
            cache.device("h9").as_deref(),
            Some("d9"),
            "the newest entry is kept"
        );
    }
}
