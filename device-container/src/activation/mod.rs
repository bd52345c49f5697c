//! Activation: converging the installed tasks to what the cloud wants, and away from versions
//! that fail here.
//!
//! - `session`: the cloud session: register, the notice stream, a sync after each notice
//!   (at a random time inside its pace window) and periodically; it publishes the session's
//!   client to the uplink.
//! - `sync`: the answer of a sync applied: each desired version verified, downloaded
//!   (`download`), unpacked and made active through [`install`](crate::install), or removed.
//! - `rollback`: the runner's rollback requests: the previous version made active again through
//!   the same install code, the bad bundle refused for good.
//!
//! It owns the installer (and the publisher keys it trusts), the bundles refused on this
//! device, the bundle cache's status, the recent install failures and whether a session is up.
//! It reports installs, removals, refusals and rollbacks to the cloud through the outbox.

mod download;
mod rollback;
mod session;
mod sync;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::clock::now_ms;
use crate::cloud::Client;
use crate::db::DeviceDb;
use crate::install::cache::{self, CacheStatus, NoRoom};
use crate::install::{Installer, Versions};
use crate::locks::{lock, read, write};
use crate::runner::Runner;
use crate::uplink::Outgoing;
use crate::{AgentError, DeviceConfig};

pub(crate) use rollback::run as run_rollbacks;
pub(crate) use session::run as run_sessions;

/// Install failures kept for status.
const RECENT_FAILURES: usize = 20;

/// The install side of the agent.
pub(crate) struct Activation {
    config: DeviceConfig,
    device_id: String,
    installer: RwLock<Installer>,
    versions: Versions,
    runner: Arc<Runner>,
    outgoing: Arc<Outgoing>,
    db: Arc<DeviceDb>,
    /// Bundle digests that failed to install or load or were rolled back (kept in the
    /// database), and fingerprints of manifests that failed verification (this run only): not
    /// tried again.
    failed_digests: Mutex<HashSet<String>>,
    /// What the bundle cache holds and evicted.
    cache: Mutex<CacheStatus>,
    recent_failures: Mutex<VecDeque<String>>,
    connected: AtomicBool,
    /// The cloud's pace window, from its last HELLO: a reconnect after a loss is spread over it.
    pace_window_ms: AtomicU32,
    /// The session's client while connected, for the uplink.
    client: watch::Sender<Option<Client>>,
}

/// What activation needs from the rest of the agent.
pub(crate) struct ActivationParts {
    pub device_id: String,
    pub installer: Installer,
    pub versions: Versions,
    pub runner: Arc<Runner>,
    pub outgoing: Arc<Outgoing>,
    pub db: Arc<DeviceDb>,
    pub client: watch::Sender<Option<Client>>,
}

impl Activation {
    /// Activation with the bundles refused by earlier runs of the agent.
    pub(crate) fn new(
        parts: ActivationParts,
        config: DeviceConfig,
    ) -> Result<Activation, AgentError> {
        let refused: HashSet<String> = parts.db.refused_bundles()?.into_iter().collect();
        Ok(Activation {
            config,
            device_id: parts.device_id,
            installer: RwLock::new(parts.installer),
            versions: parts.versions,
            runner: parts.runner,
            outgoing: parts.outgoing,
            db: parts.db,
            failed_digests: Mutex::new(refused),
            cache: Mutex::new(CacheStatus::default()),
            recent_failures: Mutex::new(VecDeque::new()),
            connected: AtomicBool::new(false),
            pace_window_ms: AtomicU32::new(0),
            client: parts.client,
        })
    }

    /// Makes the versions active before a restart active again, and brings the bundle cache
    /// within its budget.
    pub(crate) async fn restore(&self) {
        self.versions.restore(&self.installer()).await;
        if let Err(e) = self.make_cache_room(0) {
            tracing::warn!(error = %e, "the active versions alone exceed the bundle cache budget");
        }
    }

    /// Whether a cloud session is up (it had a good sync).
    pub(crate) fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The latest install failures, oldest first.
    pub(crate) fn recent_failures(&self) -> Vec<String> {
        lock(&self.recent_failures).iter().cloned().collect()
    }

    /// What the bundle cache holds and evicted.
    pub(crate) fn cache_status(&self) -> CacheStatus {
        *lock(&self.cache)
    }

    /// A copy of the installer (it is a root path and the trusted keys).
    fn installer(&self) -> Installer {
        read(&self.installer).clone()
    }

    /// Trusts `keys` from now on (after registration).
    fn trust(&self, keys: Vec<walle_proto::v1::PublisherKey>) {
        write(&self.installer).set_trusted(keys);
    }

    /// Keeps the bundle cache within its budget with room for a bundle of `bundle` bytes.
    fn make_cache_room(&self, bundle: u64) -> Result<(), NoRoom> {
        let downloads = self.config.data_dir.join("downloads");
        let budget = self.config.bundle_cache_max_bytes;
        let installer = self.installer();
        cache::make_room(
            &installer,
            &downloads,
            budget,
            bundle,
            &mut lock(&self.cache),
        )
    }

    /// Never installs the bundle with `digest` again (also after a restart).
    fn refuse_bundle(&self, digest: &str, task: &str, version: &str, reason: &str) {
        lock(&self.failed_digests).insert(digest.to_owned());
        if let Err(e) = self
            .db
            .refuse_bundle(digest, task, version, reason, now_ms())
        {
            tracing::error!(task, version, error = %e, "cannot record a refused bundle; it may be retried after a restart");
        }
    }

    /// Remembers an install failure for status.
    fn note_failure(&self, message: String) {
        let mut failures = lock(&self.recent_failures);
        if failures.len() >= RECENT_FAILURES {
            failures.pop_front();
        }
        failures.push_back(message);
    }
}
