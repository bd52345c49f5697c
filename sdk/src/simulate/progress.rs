//! What the simulated fleet has done: counters every device adds to, snapshots of them, the
//! per-second progress line and the summary at the end.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counters shared by every simulated device.
#[derive(Default)]
pub struct Counters {
    /// Devices holding an open Subscribe stream now.
    pub connected: AtomicI64,
    /// Register calls answered.
    pub registered: AtomicU64,
    /// "Task changed" notices received.
    pub notices: AtomicU64,
    /// Sync calls answered.
    pub syncs: AtomicU64,
    /// Installs reported as done.
    pub installed: AtomicU64,
    /// Installs reported as failed (refused bundles, simulated failures and full disks).
    pub install_failed: AtomicU64,
    /// Of those, bundles the device refused: bad signature, size or digest.
    pub refused: AtomicU64,
    /// Tasks removed because the cloud no longer wants them on the device.
    pub removed: AtomicU64,
    /// Bundle bytes received.
    pub bundle_bytes: AtomicU64,
    /// Runs reported (stubbed execution), by outcome.
    pub runs_ok: AtomicU64,
    pub runs_failed: AtomicU64,
    /// Tunnel records the cloud acknowledged.
    pub records_uploaded: AtomicU64,
    /// Streams re-opened after a loss (not counting going back online after churn).
    pub reconnects: AtomicU64,
    /// Devices that went offline on purpose (churn).
    pub went_offline: AtomicU64,
    /// Calls that failed (the cloud unreachable, a stream cut, an error status).
    pub rpc_errors: AtomicU64,
    /// Devices that moved to another replica after theirs failed.
    pub moved_replica: AtomicU64,
    times: Mutex<Times>,
    /// The most recent failure, as the device saw it.
    last_error: Mutex<Option<String>>,
}

#[derive(Default)]
struct Times {
    /// When each device first installed the watched version.
    watched_installs: Vec<Instant>,
    /// When each notice arrived while a version is watched, and from which replica.
    watched_notices: Vec<(usize, Instant)>,
    /// When each lost stream was re-opened, and when it was lost.
    reconnects: Vec<(Instant, Instant)>,
}

/// Reconnect records kept (enough for any fleet this process can hold).
const MAX_RECONNECT_RECORDS: usize = 1_000_000;

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A call failed: counts it and keeps its reason as the latest failure.
    pub fn failed(&self, reason: String) {
        Counters::bump(&self.rpc_errors);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(reason);
        }
    }

    /// The most recent failure a device saw, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }

    /// Forgets the installs timed so far (a new version is being watched).
    pub fn reset_watched(&self) {
        if let Ok(mut times) = self.times.lock() {
            times.watched_installs.clear();
            times.watched_notices.clear();
        }
    }

    /// A device connected to `replica` got a "task changed" notice.
    pub fn noticed(&self, replica: usize) {
        Counters::bump(&self.notices);
        if let Ok(mut times) = self.times.lock()
            && times.watched_notices.len() < MAX_RECONNECT_RECORDS
        {
            times.watched_notices.push((replica, Instant::now()));
        }
    }

    /// How the notices of the watched version reached the devices of each of `replicas`
    /// replicas, counted from `start` (the release's creation): see [`NoticeFanout`].
    pub fn notice_fanout(&self, start: Instant, replicas: usize) -> Vec<NoticeFanout> {
        let Ok(times) = self.times.lock() else {
            return Vec::new();
        };
        (0..replicas)
            .map(|replica| {
                let mut delays: Vec<Duration> = times
                    .watched_notices
                    .iter()
                    .filter(|(r, _)| *r == replica)
                    .map(|(_, at)| at.saturating_duration_since(start))
                    .collect();
                delays.sort();
                NoticeFanout {
                    replica,
                    notices: delays.len(),
                    first: delays.first().copied(),
                    p50: (!delays.is_empty()).then(|| percentile(&delays, 0.50)),
                    p99: (!delays.is_empty()).then(|| percentile(&delays, 0.99)),
                }
            })
            .collect()
    }

    /// A device installed the version being watched.
    pub fn watched_installed(&self) {
        if let Ok(mut times) = self.times.lock() {
            times.watched_installs.push(Instant::now());
        }
    }

    /// A device lost its stream at `lost` and has it open again now.
    pub fn reconnected(&self, lost: Instant) {
        Counters::bump(&self.reconnects);
        if let Ok(mut times) = self.times.lock()
            && times.reconnects.len() < MAX_RECONNECT_RECORDS
        {
            times.reconnects.push((lost, Instant::now()));
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            at: Instant::now(),
            connected: self.connected.load(Ordering::Relaxed).max(0) as u64,
            registered: get(&self.registered),
            notices: get(&self.notices),
            syncs: get(&self.syncs),
            installed: get(&self.installed),
            install_failed: get(&self.install_failed),
            refused: get(&self.refused),
            removed: get(&self.removed),
            bundle_bytes: get(&self.bundle_bytes),
            runs_ok: get(&self.runs_ok),
            runs_failed: get(&self.runs_failed),
            records_uploaded: get(&self.records_uploaded),
            reconnects: get(&self.reconnects),
            went_offline: get(&self.went_offline),
            rpc_errors: get(&self.rpc_errors),
            moved_replica: get(&self.moved_replica),
            watched_installed: self
                .times
                .lock()
                .map(|t| t.watched_installs.len() as u64)
                .unwrap_or_default(),
        }
    }

    /// How long after `start` the watched version reached each share of `of` devices
    /// (`None` for a share not reached).
    pub fn time_to_shares(
        &self,
        start: Instant,
        of: usize,
        shares: &[f64],
    ) -> Vec<Option<Duration>> {
        let Ok(times) = self.times.lock() else {
            return vec![None; shares.len()];
        };
        let mut installs = times.watched_installs.clone();
        installs.sort();
        shares
            .iter()
            .map(|share| {
                let needed = ((of as f64 * share).ceil() as usize).max(1);
                installs
                    .get(needed - 1)
                    .map(|at| at.saturating_duration_since(start))
            })
            .collect()
    }

    /// How the streams lost at once came back: see [`ReconnectSpread`].
    pub fn reconnect_spread(&self) -> Option<ReconnectSpread> {
        let times = self.times.lock().ok()?;
        ReconnectSpread::of(&times.reconnects)
    }
}

/// How fast a release's notices reached the devices held by one replica. The release is created
/// on one replica; the others learn of it through the database (PostgreSQL `LISTEN/NOTIFY`), so
/// a slow fan-out shows as a later `first` on them.
#[derive(Debug, Clone, PartialEq)]
pub struct NoticeFanout {
    pub replica: usize,
    pub notices: usize,
    /// From the release's creation to the first notice, the median and the 99th percentile.
    pub first: Option<Duration>,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

/// How spread out in time the reconnects after a loss were: a thundering herd puts most of them
/// in one instant, backoff with jitter spreads them over seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectSpread {
    pub reconnects: usize,
    /// From the first loss to the last reconnect.
    pub span: Duration,
    /// Most reconnects in any 100 ms.
    pub peak_per_100ms: usize,
    /// Delay from loss to reconnect, median and 99th percentile.
    pub delay_p50: Duration,
    pub delay_p99: Duration,
}

impl ReconnectSpread {
    fn of(records: &[(Instant, Instant)]) -> Option<ReconnectSpread> {
        let first_loss = records.iter().map(|(lost, _)| *lost).min()?;
        let mut back: Vec<Duration> = records
            .iter()
            .map(|(_, at)| at.saturating_duration_since(first_loss))
            .collect();
        back.sort();
        let mut delays: Vec<Duration> = records
            .iter()
            .map(|(lost, at)| at.saturating_duration_since(*lost))
            .collect();
        delays.sort();
        let mut peak = 0;
        let mut start = 0;
        for end in 0..back.len() {
            while back[end] - back[start] >= Duration::from_millis(100) {
                start += 1;
            }
            peak = peak.max(end - start + 1);
        }
        Some(ReconnectSpread {
            reconnects: records.len(),
            span: back.last().copied().unwrap_or_default(),
            peak_per_100ms: peak,
            delay_p50: percentile(&delays, 0.50),
            delay_p99: percentile(&delays, 0.99),
        })
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at]
}

/// The counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub at: Instant,
    pub connected: u64,
    pub registered: u64,
    pub notices: u64,
    pub syncs: u64,
    pub installed: u64,
    pub install_failed: u64,
    pub refused: u64,
    pub removed: u64,
    pub bundle_bytes: u64,
    pub runs_ok: u64,
    pub runs_failed: u64,
    pub records_uploaded: u64,
    pub reconnects: u64,
    pub went_offline: u64,
    pub rpc_errors: u64,
    pub moved_replica: u64,
    /// Devices that have installed the watched version.
    pub watched_installed: u64,
}

impl Snapshot {
    /// The main figures in a few words, for an error message.
    pub fn brief(&self) -> String {
        format!(
            "{} connected, {} registered, {} synced, {} installed, {} failed installs, {} call failures",
            self.connected,
            self.registered,
            self.syncs,
            self.installed,
            self.install_failed,
            self.rpc_errors
        )
    }

    /// One progress line: totals, then rates since `before`.
    pub fn line(&self, before: &Snapshot, since_start: Duration) -> String {
        let secs = self.at.duration_since(before.at).as_secs_f64().max(1e-3);
        let rate = |now: u64, then: u64| (now.saturating_sub(then)) as f64 / secs;
        format!(
            "{:>6.1}s connected {} | notices {} synced {} installed {} failed {} | {:.0} syncs/s {:.0} installs/s {:.1} MB/s | runs {} records {} reconnects {} errors {}",
            since_start.as_secs_f64(),
            self.connected,
            self.notices,
            self.syncs,
            self.installed,
            self.install_failed,
            rate(self.syncs, before.syncs),
            rate(self.installed, before.installed),
            rate(self.bundle_bytes, before.bundle_bytes) / 1e6,
            self.runs_ok + self.runs_failed,
            self.records_uploaded,
            self.reconnects,
            self.rpc_errors,
        )
    }
}

/// The highest per-second rates seen, from consecutive snapshots.
#[derive(Debug, Default, Clone, Copy)]
pub struct Peaks {
    pub syncs_per_sec: f64,
    pub notices_per_sec: f64,
    pub installs_per_sec: f64,
    pub bundle_bytes_per_sec: f64,
}

impl Peaks {
    /// Takes in the rates between two snapshots.
    pub fn observe(&mut self, before: &Snapshot, now: &Snapshot) {
        let secs = now.at.duration_since(before.at).as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        self.syncs_per_sec = self.syncs_per_sec.max(rate(now.syncs, before.syncs));
        self.notices_per_sec = self.notices_per_sec.max(rate(now.notices, before.notices));
        self.installs_per_sec = self
            .installs_per_sec
            .max(rate(now.installed, before.installed));
        self.bundle_bytes_per_sec = self
            .bundle_bytes_per_sec
            .max(rate(now.bundle_bytes, before.bundle_bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_herd_has_a_high_peak_and_a_spread_a_low_one() {
        let t0 = Instant::now();
        let herd: Vec<_> = (0..1000)
            .map(|_| (t0, t0 + Duration::from_millis(5)))
            .collect();
        let spread = ReconnectSpread::of(&herd).unwrap();
        assert_eq!(spread.peak_per_100ms, 1000);
        let jittered: Vec<_> = (0..1000)
            .map(|i| (t0, t0 + Duration::from_millis(i * 10)))
            .collect();
        let spread = ReconnectSpread::of(&jittered).unwrap();
        assert_eq!(spread.peak_per_100ms, 10);
        assert_eq!(spread.span, Duration::from_millis(9990));
        assert_eq!(spread.delay_p50, Duration::from_millis(4990));
        assert!(ReconnectSpread::of(&[]).is_none());
    }

    #[test]
    fn time_to_share_counts_installs_after_the_start() {
        let counters = Counters::default();
        let start = Instant::now();
        for _ in 0..10 {
            counters.watched_installed();
        }
        let times = counters.time_to_shares(start, 10, &[0.5, 1.0]);
        assert!(times.iter().all(Option::is_some));
        let times = counters.time_to_shares(start, 20, &[0.5, 0.99]);
        assert!(times[0].is_some() && times[1].is_none(), "{times:?}");
    }
}
