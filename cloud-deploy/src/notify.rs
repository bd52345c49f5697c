//! The notice hub: fans tiny push notices out to every subscribed device stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tonic::Status;
use walle_proto::v1::Notice;

/// Notices buffered per subscriber; a device whose buffer is full misses the notice and catches
/// up at its next periodic sync.
const SUBSCRIBER_BUFFER: usize = 16;

type Sender = mpsc::Sender<Result<Notice, Status>>;

/// Subscribed device streams, by device id (a device may hold more than one stream briefly while
/// it reconnects).
#[derive(Clone, Default)]
pub struct NoticeHub {
    inner: Arc<Mutex<HashMap<String, Vec<Sender>>>>,
    /// Counts notices seen by this replica: what devices should run may have changed since the
    /// count moved (see [`crate::served_cache`]).
    changes: Arc<AtomicU64>,
    /// Counts notices handed to device streams (a metric, see [`crate::metrics`]).
    sent: Counter,
}

impl NoticeHub {
    /// A hub that counts the notices it hands to device streams in `sent`.
    pub fn new(sent: Counter) -> NoticeHub {
        NoticeHub {
            sent,
            ..NoticeHub::default()
        }
    }

    /// The change counter; it moves whenever a notice is published or delivered here.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Records that releases changed (before the notice about it goes out).
    pub fn mark_changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Registers a new stream for a device and returns its receiving end.
    pub fn subscribe(&self, device_id: &str) -> mpsc::Receiver<Result<Notice, Status>> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let senders = map.entry(device_id.to_owned()).or_default();
        senders.retain(|s| !s.is_closed());
        senders.push(tx);
        rx
    }

    /// Sends a notice to the newest stream of one device (e.g. the HELLO on a fresh stream).
    pub fn notify_one_fresh(&self, device_id: &str, notice: Notice) {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = map.get(device_id).and_then(|senders| senders.last())
            && sender.try_send(Ok(notice)).is_ok()
        {
            self.sent.inc();
        }
    }

    /// Sends a notice to every subscribed device. Returns how many streams took it.
    pub fn notify_all(&self, notice: &Notice) -> usize {
        self.mark_changed();
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut delivered = 0;
        for senders in map.values_mut() {
            senders.retain(|s| !s.is_closed());
            for sender in senders.iter() {
                if sender.try_send(Ok(notice.clone())).is_ok() {
                    delivered += 1;
                }
            }
        }
        map.retain(|_, senders| !senders.is_empty());
        self.sent.inc_by(delivered as u64);
        delivered
    }

    /// Number of devices with at least one open stream.
    pub fn connected_devices(&self) -> usize {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .filter(|senders| senders.iter().any(|s| !s.is_closed()))
            .count()
    }

    /// Whether a device has an open stream to this replica.
    pub fn is_connected(&self, device_id: &str) -> bool {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(device_id)
            .is_some_and(|senders| senders.iter().any(|s| !s.is_closed()))
    }

    /// Ends every stream (on shutdown).
    pub fn close_all(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// PostgreSQL channel on which replicas share notices.
pub const CHANNEL: &str = "walle_notices";

/// Sends a notice to every subscribed device of every replica: through PostgreSQL
/// `NOTIFY` when the cloud runs on PostgreSQL (each replica's [`listen`] delivers it to its own
/// devices), straight to this replica's devices otherwise. For a change that touched no release
/// row (a group's members); a release change uses [`committed`].
pub async fn publish(db: &crate::store::Db, hub: &NoticeHub, notice: Notice) {
    // This replica's own Syncs see the change at once, before PostgreSQL echoes the notice.
    hub.mark_changed();
    if db.postgres_url().is_none() {
        let delivered = hub.notify_all(&notice);
        count_delivered(db, &notice, delivered).await;
        return;
    }
    let payload = serde_json::json!({
        "kind": notice.kind,
        "task": notice.task,
        "release_id": notice.release_id,
        "pace_window_ms": notice.pace_window_ms,
    })
    .to_string();
    if let Err(e) = db.pg_notify(CHANNEL, &payload).await {
        // Other replicas' devices catch up at their periodic sync; ours hear it now.
        tracing::warn!(error = %e, "cannot fan the notice out to other replicas");
        let delivered = hub.notify_all(&notice);
        count_delivered(db, &notice, delivered).await;
    }
}

/// Tells devices about a release change this replica has committed. On PostgreSQL the change's
/// own transaction sent the notice (the `releases_notice` trigger of migration 0016), so it
/// reaches every replica's devices even if this one dies now; on SQLite this replica is the only
/// one, and its devices hear it here.
pub async fn committed(db: &crate::store::Db, hub: &NoticeHub, notice: Notice) {
    hub.mark_changed();
    if db.postgres_url().is_none() {
        let delivered = hub.notify_all(&notice);
        count_delivered(db, &notice, delivered).await;
    }
}

async fn count_delivered(db: &crate::store::Db, notice: &Notice, delivered: usize) {
    if notice.release_id.is_empty() {
        return;
    }
    if let Err(e) = db.add_notified(&notice.release_id, delivered).await {
        tracing::warn!(error = %e, "cannot count delivered notices");
    }
}

/// A notice from the channel; a null `pace_window_ms` (a release without its own, as the
/// trigger sends it) takes `default_pace_ms`.
fn parse_notice(payload: &str, default_pace_ms: u32) -> Option<Notice> {
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    let pace_window_ms = match &value["pace_window_ms"] {
        serde_json::Value::Null => default_pace_ms,
        pace => u32::try_from(pace.as_u64()?).ok()?,
    };
    Some(Notice {
        kind: i32::try_from(value["kind"].as_i64()?).ok()?,
        task: value["task"].as_str()?.to_owned(),
        release_id: value["release_id"].as_str()?.to_owned(),
        pace_window_ms,
    })
}

/// Delivers notices published by any replica to this replica's devices, until stopped.
/// Reconnects after connection loss (devices cover anything missed by their periodic sync).
pub async fn listen(
    db: crate::store::Db,
    hub: NoticeHub,
    default_pace_ms: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(url) = db.postgres_url().map(str::to_owned) else {
        return;
    };
    loop {
        let session = async {
            let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
            listener.listen(CHANNEL).await?;
            loop {
                let notification = listener.recv().await?;
                match parse_notice(notification.payload(), default_pace_ms) {
                    Some(notice) => {
                        let delivered = hub.notify_all(&notice);
                        count_delivered(&db, &notice, delivered).await;
                    }
                    None => tracing::warn!(
                        payload = notification.payload(),
                        "ignoring malformed notice"
                    ),
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            result = session => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "notice listener lost its connection; reconnecting");
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
