//! `walle fleet simulate`: a fleet of lightweight simulated devices in one process.
//!
//! Each device speaks the real device plane to a real cloud — Register, Subscribe, Sync at a
//! jittered moment inside the notice's pace window, FetchBundle, signature + size + sha256
//! checks, Report — over its own HTTP/2 connection (or, past the open-file limit, a connection
//! shared with its neighbours), with task execution stubbed: a "run" is a report and an uploaded
//! record. What makes a fleet realistic is configurable ([`SimConfig`]): the profile mix
//! ([`profiles`]), failing installs and runs, churn (devices going offline and coming back),
//! an event load, slow networks, skewed clocks and full disks. Several cloud URLs make a
//! multi-replica cloud: devices are spread over them and move on when theirs fails.
//!
//! The counters ([`progress`]) say what the fleet did; [`Simulation::watch`] marks a task
//! version whose installs are timed from the moment of the call, which is how the release
//! benchmark measures time to 50 / 90 / 99 % installed.
//!
//! This module never touches the cloud's storage: it is a client of the public device plane.

pub mod connect;
pub mod device;
pub mod profiles;
pub mod progress;

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use connect::Connector;
use device::{Device, Traits};
use progress::{Counters, Snapshot};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Device-plane URLs, one per cloud replica; device `i` starts on replica `i % len`.
    pub urls: Vec<String>,
    /// How many devices.
    pub devices: usize,
    /// Device ids are `<prefix>-<index>`.
    pub id_prefix: String,
    /// Seed of the profile mix and of which devices have which traits.
    pub seed: u64,
    /// Devices per HTTP/2 connection: 1 (the default) gives each its own, as phones have.
    pub devices_per_connection: usize,
    /// Source addresses for the client sockets, used in turn (empty: the system picks).
    pub sources: Vec<IpAddr>,
    /// Devices started per second at the beginning (a ramp, so the start is not a SYN flood).
    pub ramp_per_sec: u32,
    /// Enrollment secret sent at Register (empty for open enrollment).
    pub enrollment_secret: String,
    /// Share of devices (0–1) whose installs fail.
    pub install_failure_share: f64,
    /// Share of runs (0–1) that fail.
    pub run_failure_share: f64,
    /// Stubbed runs per device per minute once a task is installed (each one reports and
    /// uploads a record); 0 for none.
    pub runs_per_device_per_min: f64,
    /// Share of devices (0–1) that go offline each minute, for a time between the bounds of
    /// `offline_secs`.
    pub churn_per_min: f64,
    pub offline_secs: (u64, u64),
    /// Share of devices (0–1) on a slow network, and its added latency per call and chunk.
    pub slow_share: f64,
    pub slow_latency: Duration,
    /// Share of devices (0–1) whose clock is off, and by how much (either way, at random).
    pub clock_skew_share: f64,
    pub clock_skew: Duration,
    /// Share of devices (0–1) whose disk is full.
    pub full_disk_share: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            urls: vec!["http://127.0.0.1:50051".into()],
            devices: 100,
            id_prefix: "sim".into(),
            seed: 1,
            devices_per_connection: 1,
            sources: Vec::new(),
            ramp_per_sec: 2_000,
            enrollment_secret: String::new(),
            install_failure_share: 0.0,
            run_failure_share: 0.0,
            runs_per_device_per_min: 0.0,
            churn_per_min: 0.0,
            offline_secs: (5, 60),
            slow_share: 0.0,
            slow_latency: Duration::from_millis(300),
            clock_skew_share: 0.0,
            clock_skew: Duration::from_secs(3 * 3600),
            full_disk_share: 0.0,
        }
    }
}

/// Why a simulation could not start or did not get where it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Connect(#[from] connect::ConnectError),
    #[error("invalid simulation: {0}")]
    Invalid(String),
    #[error("{what}: not reached within {waited:?} ({}){}", snapshot.brief(), last_error.as_ref().map(|e| format!("; the last failure: {e}")).unwrap_or_default())]
    Timeout {
        what: String,
        waited: Duration,
        snapshot: Box<Snapshot>,
        last_error: Option<String>,
    },
}

impl SimConfig {
    fn check(&self) -> Result<(), SimError> {
        if self.urls.is_empty() {
            return Err(SimError::Invalid(
                "no device-plane URL to connect to".into(),
            ));
        }
        if let Some(url) = self
            .urls
            .iter()
            .find(|u| !u.starts_with("http://") && !u.starts_with("https://"))
        {
            return Err(SimError::Invalid(format!(
                "{url:?} is not a device-plane URL: it must start with http:// or https://"
            )));
        }
        if self.devices == 0 {
            return Err(SimError::Invalid("at least one device is needed".into()));
        }
        for (name, share) in [
            ("install failure share", self.install_failure_share),
            ("run failure share", self.run_failure_share),
            ("churn per minute", self.churn_per_min),
            ("slow share", self.slow_share),
            ("clock skew share", self.clock_skew_share),
            ("full disk share", self.full_disk_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(SimError::Invalid(format!(
                    "{name} must be between 0 and 1, not {share}"
                )));
            }
        }
        if self.offline_secs.0 > self.offline_secs.1 {
            return Err(SimError::Invalid(format!(
                "offline time {}..{} s runs backwards",
                self.offline_secs.0, self.offline_secs.1
            )));
        }
        Ok(())
    }

    /// What device `index` is like.
    fn traits(&self, index: usize) -> Traits {
        let share = |salt, share| profiles::in_share(self.seed, index, salt, share);
        let skew_ms = self.clock_skew.as_millis() as i64;
        Traits {
            fails_install: share(1, self.install_failure_share),
            full_disk: share(2, self.full_disk_share),
            latency: share(3, self.slow_share).then_some(self.slow_latency),
            clock_offset_ms: if share(4, self.clock_skew_share) {
                if index.is_multiple_of(2) {
                    skew_ms
                } else {
                    -skew_ms
                }
            } else {
                0
            },
        }
    }
}

/// What every simulated device shares.
pub struct Fleet {
    config: SimConfig,
    connector: Connector,
    counters: Arc<Counters>,
    watched: RwLock<Option<(String, String)>>,
    stop: watch::Receiver<bool>,
    /// Distinguishes this run's record ids from an earlier run's with the same device ids.
    nonce: u64,
}

impl Fleet {
    fn is_watched(&self, task: &str, version: &str) -> bool {
        self.watched
            .read()
            .map(|w| w.as_ref().is_some_and(|(t, v)| t == task && v == version))
            .unwrap_or(false)
    }

    /// When the next stubbed run happens, if runs are simulated.
    fn next_run(&self) -> Option<Instant> {
        let rate = self.config.runs_per_device_per_min;
        (rate > 0.0).then(|| Instant::now() + exponential(60.0 / rate))
    }

    /// When this session goes offline (churn) and for how long, if churn is simulated.
    fn next_offline(&self) -> Option<(Instant, Duration)> {
        let rate = self.config.churn_per_min;
        (rate > 0.0).then(|| {
            let (low, high) = self.config.offline_secs;
            let pause = Duration::from_secs(low) + device::jitter((high - low) * 1000 + 1);
            (Instant::now() + exponential(60.0 / rate), pause)
        })
    }
}

/// A random wait with mean `mean_secs` (the gaps of a Poisson process).
fn exponential(mean_secs: f64) -> Duration {
    let unit: f64 = rand::random::<f64>().max(1e-12);
    Duration::from_secs_f64((-unit.ln() * mean_secs).min(86_400.0))
}

/// A running simulated fleet.
pub struct Simulation {
    fleet: Arc<Fleet>,
    stop: watch::Sender<bool>,
    devices: JoinSet<()>,
    started: Instant,
}

impl Simulation {
    /// Starts the devices (at `ramp_per_sec`); they connect and register in the background.
    pub fn start(config: SimConfig) -> Result<Simulation, SimError> {
        config.check()?;
        let connector = Connector::new(
            &config.urls,
            config.devices,
            config.devices_per_connection,
            config.sources.clone(),
        )?;
        let (stop, stopped) = watch::channel(false);
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let fleet = Arc::new(Fleet {
            config,
            connector,
            counters: Arc::new(Counters::default()),
            watched: RwLock::new(None),
            stop: stopped,
            nonce,
        });
        let mut devices = JoinSet::new();
        let ramp = fleet.config.ramp_per_sec.max(1) as usize;
        let batch = ramp.div_ceil(20).max(1);
        let spawner = fleet.clone();
        devices.spawn(async move {
            let mut started = JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let replicas = spawner.connector.replicas();
            let config = &spawner.config;
            for first in (0..config.devices).step_by(batch) {
                tick.tick().await;
                if *spawner.stop.borrow() {
                    break;
                }
                for index in first..(first + batch).min(config.devices) {
                    let profile = profiles::profile(&config.id_prefix, index, config.seed);
                    let device =
                        Device::new(index, profile, config.traits(index), index % replicas);
                    started.spawn(device.run(spawner.clone()));
                }
            }
            while started.join_next().await.is_some() {}
        });
        Ok(Simulation {
            fleet,
            stop,
            devices,
            started: Instant::now(),
        })
    }

    /// The counters every device adds to.
    pub fn counters(&self) -> &Counters {
        &self.fleet.counters
    }

    /// The counters, to read while the simulation runs elsewhere.
    pub fn counters_handle(&self) -> Arc<Counters> {
        self.fleet.counters.clone()
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        self.fleet.counters.snapshot()
    }

    /// When the simulation started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The configuration it runs.
    pub fn config(&self) -> &SimConfig {
        &self.fleet.config
    }

    /// Times installs of `task` `version` from now on (forgetting those of a version watched
    /// before); returns the start instant.
    pub fn watch(&self, task: &str, version: &str) -> Instant {
        if let Ok(mut watched) = self.fleet.watched.write() {
            *watched = Some((task.to_owned(), version.to_owned()));
        }
        self.fleet.counters.reset_watched();
        Instant::now()
    }

    /// Waits until `reached` holds for the counters, checking every 50 ms, for at most `limit`.
    pub async fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        reached: impl Fn(&Snapshot) -> bool,
    ) -> Result<Snapshot, SimError> {
        let deadline = Instant::now() + limit;
        loop {
            let snapshot = self.snapshot();
            if reached(&snapshot) {
                return Ok(snapshot);
            }
            if Instant::now() >= deadline {
                return Err(SimError::Timeout {
                    what: what.to_owned(),
                    waited: limit,
                    snapshot: Box::new(snapshot),
                    last_error: self.fleet.counters.last_error(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every device (their streams close) and returns the final counters.
    pub async fn stop(mut self) -> Snapshot {
        let _ = self.stop.send(true);
        while self.devices.join_next().await.is_some() {}
        self.fleet.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_share_or_an_empty_fleet_is_refused_by_name() {
        let config = SimConfig {
            install_failure_share: 1.5,
            ..SimConfig::default()
        };
        let e = config.check().unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid simulation: install failure share must be between 0 and 1, not 1.5"
        );
        let config = SimConfig {
            devices: 0,
            ..SimConfig::default()
        };
        assert!(
            config
                .check()
                .unwrap_err()
                .to_string()
                .contains("at least one device")
        );
    }

    #[test]
    fn traits_follow_their_shares() {
        let config = SimConfig {
            install_failure_share: 0.2,
            clock_skew_share: 1.0,
            ..SimConfig::default()
        };
        let failing = (0..5000)
            .filter(|&i| config.traits(i).fails_install)
            .count();
        assert!((800..1200).contains(&failing), "{failing}");
        assert!((0..100).all(|i| config.traits(i).clock_offset_ms.abs() == 3 * 3600 * 1000));
        assert!(
            (0..100).all(|i| !config.traits(i).full_disk && config.traits(i).latency.is_none())
        );
    }
}
