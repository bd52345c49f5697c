//! The cloud's Prometheus metrics, served at `GET /metrics` in the text exposition format
//! (version 0.0.4) by the control plane.
//!
//! [`Metrics`] is one set of metric handles, owned by [`crate::AppState`] and cloned into
//! whatever counts: the device plane counts its calls, the bundle bytes it streams and the
//! events and records it accepts; the notice hub counts the notices it hands to device streams.
//! What is a current state rather than a count of events (devices connected, transfers in
//! flight, releases by state) is read when scraped and handed to [`Metrics::encode`] as a
//! [`Snapshot`], so it is never out of step with the cloud. Database latency is what the cheap
//! probe of `/v1/health`, `/v1/ready` and `/metrics` (a `SELECT 1`) took: a scrape measures it
//! once, so the histogram fills at the scrape rate, honest about what it measures (the round
//! trip to the database, not any particular query); failed probes are counted apart.
//!
//! Counters count on this replica since it started; Prometheus sums replicas.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::CloudError;
use crate::release::select::ReleaseState;

/// The `Content-Type` of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the database probe's latency buckets: from a local SQLite file
/// (tens of microseconds) to a database that barely answers.
const PROBE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];

type Labels = [(&'static str, &'static str); 1];

/// The cloud's metric handles; clones count into the same metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    sync_calls: Family<Labels, Counter>,
    notices_sent: Counter,
    bundle_bytes_sent: Counter,
    report_events_accepted: Counter,
    upload_records_accepted: Counter,
    upload_records_duplicate: Counter,
    db_probe_seconds: Histogram,
    db_probe_failures: Counter,
    devices_connected: Gauge,
    transfers_in_flight: Gauge,
    releases: Family<Labels, Gauge>,
}

/// What the cloud is now, read when scraped.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Devices with a notice stream (Subscribe) open to this replica.
    pub devices_connected: usize,
    /// Bundle transfers (FetchBundle streams) holding a transfer permit.
    pub transfers_in_flight: usize,
    /// Releases by state, for every state the database holds; `None` when it did not answer
    /// (the metric is then left out rather than shown as zero).
    pub releases_by_state: Option<Vec<(String, i64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all at zero.
    pub fn new() -> Metrics {
        let metrics = Metrics {
            registry: Arc::new(Registry::default()),
            sync_calls: Family::default(),
            notices_sent: Counter::default(),
            bundle_bytes_sent: Counter::default(),
            report_events_accepted: Counter::default(),
            upload_records_accepted: Counter::default(),
            upload_records_duplicate: Counter::default(),
            db_probe_seconds: Histogram::new(PROBE_BUCKETS),
            db_probe_failures: Counter::default(),
            devices_connected: Gauge::default(),
            transfers_in_flight: Gauge::default(),
            releases: Family::default(),
        };
        let mut registry = Registry::with_prefix("walle_cloud");
        registry.register(
            "sync_calls",
            "Sync calls answered, by outcome (ok or error)",
            metrics.sync_calls.clone(),
        );
        registry.register(
            "notices_sent",
            "Notices handed to device notice streams (HELLOs and release notices)",
            metrics.notices_sent.clone(),
        );
        registry.register(
            "bundle_bytes_sent",
            "Bundle bytes streamed to devices by FetchBundle",
            metrics.bundle_bytes_sent.clone(),
        );
        registry.register(
            "report_events_accepted",
            "Task events accepted by Report",
            metrics.report_events_accepted.clone(),
        );
        registry.register(
            "upload_records_accepted",
            "Tunnel records accepted by Upload (stored now or already stored)",
            metrics.upload_records_accepted.clone(),
        );
        registry.register(
            "upload_records_duplicate",
            "Tunnel records Upload had already stored (a batch sent again)",
            metrics.upload_records_duplicate.clone(),
        );
        registry.register(
            "db_probe_seconds",
            "Round trip of the database probe (SELECT 1) run by /v1/health, /v1/ready and /metrics",
            metrics.db_probe_seconds.clone(),
        );
        registry.register(
            "db_probe_failures",
            "Database probes (SELECT 1) that failed or did not answer in time",
            metrics.db_probe_failures.clone(),
        );
        registry.register(
            "devices_connected",
            "Devices with a notice stream (Subscribe) open to this replica",
            metrics.devices_connected.clone(),
        );
        registry.register(
            "bundle_transfers_in_flight",
            "Bundle transfers (FetchBundle) in progress",
            metrics.transfers_in_flight.clone(),
        );
        registry.register("releases", "Releases by state", metrics.releases.clone());
        Metrics {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// Counts a Sync call by whether it was answered.
    pub fn sync_call(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.sync_calls.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// The counter of notices handed to device streams (the notice hub keeps a clone).
    pub fn notices_sent(&self) -> Counter {
        self.notices_sent.clone()
    }

    /// Counts bundle bytes streamed to a device.
    pub fn bundle_bytes_sent(&self, bytes: usize) {
        self.bundle_bytes_sent.inc_by(bytes as u64);
    }

    /// Counts task events a Report accepted.
    pub fn report_events_accepted(&self, events: u64) {
        self.report_events_accepted.inc_by(events);
    }

    /// Counts the records an Upload accepted: `stored` new ones and `duplicates` it already had.
    pub fn upload_records_accepted(&self, stored: u64, duplicates: u64) {
        self.upload_records_accepted
            .inc_by(stored.saturating_add(duplicates));
        self.upload_records_duplicate.inc_by(duplicates);
    }

    /// Records a database probe: how long it took when it succeeded, that it failed otherwise.
    pub fn db_probe(&self, ok: bool, took: Duration) {
        if ok {
            self.db_probe_seconds.observe(took.as_secs_f64());
        } else {
            self.db_probe_failures.inc();
        }
    }

    /// Every metric in the Prometheus text format, with `now`'s current states.
    pub fn encode(&self, now: &Snapshot) -> Result<String, CloudError> {
        self.devices_connected
            .set(i64::try_from(now.devices_connected).unwrap_or(i64::MAX));
        self.transfers_in_flight
            .set(i64::try_from(now.transfers_in_flight).unwrap_or(i64::MAX));
        self.releases.clear();
        if let Some(counts) = &now.releases_by_state {
            // Every known state appears, at zero when no release is in it, so a rate or an
            // alert on one state has a series to look at.
            for state in ReleaseState::ALL {
                self.releases
                    .get_or_create(&[("state", state.as_str())])
                    .set(0);
            }
            for (state, count) in counts {
                if let Some(state) = ReleaseState::parse(state) {
                    self.releases
                        .get_or_create(&[("state", state.as_str())])
                        .set(*count);
                }
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .map_err(|_| CloudError::Internal("encoding the metrics failed".into()))?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name` (with its labels, as written) in `text`.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                (key == name).then(|| value.parse().ok())?
            })
    }

    #[test]
    fn counts_and_current_states_are_exposed_under_their_names() {
        let metrics = Metrics::new();
        let hub_counter = metrics.notices_sent();
        hub_counter.inc();
        hub_counter.inc();
        metrics.sync_call(true);
        metrics.sync_call(true);
        metrics.sync_call(false);
        metrics.bundle_bytes_sent(1000);
        metrics.bundle_bytes_sent(24);
        metrics.report_events_accepted(3);
        metrics.upload_records_accepted(5, 2);
        metrics.db_probe(true, Duration::from_micros(300));
        metrics.db_probe(false, Duration::from_secs(3));
        let text = metrics
            .encode(&Snapshot {
                devices_connected: 7,
                transfers_in_flight: 2,
                releases_by_state: Some(vec![("active".into(), 4), ("aborted".into(), 1)]),
            })
            .unwrap();
        let expect = [
            ("walle_cloud_notices_sent_total", 2.0),
            ("walle_cloud_sync_calls_total{outcome=\"ok\"}", 2.0),
            ("walle_cloud_sync_calls_total{outcome=\"error\"}", 1.0),
            ("walle_cloud_bundle_bytes_sent_total", 1024.0),
            ("walle_cloud_report_events_accepted_total", 3.0),
            ("walle_cloud_upload_records_accepted_total", 7.0),
            ("walle_cloud_upload_records_duplicate_total", 2.0),
            ("walle_cloud_db_probe_seconds_count", 1.0),
            ("walle_cloud_db_probe_failures_total", 1.0),
            ("walle_cloud_db_probe_seconds_bucket{le=\"0.0005\"}", 1.0),
            ("walle_cloud_db_probe_seconds_bucket{le=\"0.00025\"}", 0.0),
            ("walle_cloud_devices_connected", 7.0),
            ("walle_cloud_bundle_transfers_in_flight", 2.0),
            ("walle_cloud_releases{state=\"active\"}", 4.0),
            ("walle_cloud_releases{state=\"aborted\"}", 1.0),
            ("walle_cloud_releases{state=\"paused\"}", 0.0),
            ("walle_cloud_releases{state=\"superseded\"}", 0.0),
        ];
        for (name, value) in expect {
            assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
        }
        assert!(
            text.contains("# TYPE walle_cloud_sync_calls_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE walle_cloud_db_probe_seconds histogram"),
            "{text}"
        );
    }

    #[test]
    fn release_counts_are_left_out_when_the_database_did_not_answer() {
        let metrics = Metrics::new();
        let with = metrics
            .encode(&Snapshot {
                releases_by_state: Some(vec![("active".into(), 1)]),
                ..Snapshot::default()
            })
            .unwrap();
        assert_eq!(
            sample(&with, "walle_cloud_releases{state=\"active\"}"),
            Some(1.0)
        );
        let without = metrics.encode(&Snapshot::default()).unwrap();
        assert!(!without.contains("walle_cloud_releases{"), "{without}");
    }
}
