//! The notice hub: fans tiny push notices out to every subscribed device stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
}

impl NoticeHub {
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
        if let Some(sender) = map.get(device_id).and_then(|senders| senders.last()) {
            let _ = sender.try_send(Ok(notice));
        }
    }

    /// Sends a notice to every subscribed device. Returns how many streams took it.
    pub fn notify_all(&self, notice: &Notice) -> usize {
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
        delivered
    }

    /// Number of devices with at least one open stream.
    pub fn connected_devices(&self) -> usize {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .filter(|senders| senders.iter().any(|s| !s.is_closed()))
            .count()
    }

    /// Ends every stream (on shutdown).
    pub fn close_all(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
