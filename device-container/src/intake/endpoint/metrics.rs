//! `GET /metrics`: the agent's [`AgentStatus`] in the Prometheus text format (version 0.0.4),
//! for a device fleet scraped like servers (kiosks, set-top boxes, test rigs).
//!
//! Nothing is counted here: each scrape encodes a fresh status snapshot, so the figures are the
//! ones `GET /v1/status` shows, under Prometheus names (`walle_device_…`). Counters count since
//! the agent started; gauges are what is true now.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::status::AgentStatus;

/// The `Content-Type` of what [`encode`] writes.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;

fn gauge(value: impl TryInto<i64>) -> ConstGauge {
    ConstGauge::new(value.try_into().unwrap_or(i64::MAX))
}

/// The status as Prometheus metrics.
pub(crate) fn encode(status: &AgentStatus) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("walle_device");
    registry.register(
        "connected",
        "1 while the agent holds a notice stream to the cloud, else 0",
        gauge(u8::from(status.connected)),
    );
    registry.register(
        "installed_tasks",
        "Task versions installed and active",
        gauge(status.installed.len()),
    );
    registry.register(
        "events_accepted",
        "Events accepted by the intake",
        ConstCounter::new(status.events_accepted),
    );
    let rejected = Family::<Labels, Counter>::default();
    for (reason, count) in &status.events_rejected_by_reason {
        rejected
            .get_or_create(&vec![("reason", reason.clone())])
            .inc_by(*count);
    }
    registry.register(
        "events_rejected",
        "Events refused by the intake, by the rule they broke",
        rejected,
    );
    registry.register(
        "events_stored",
        "Events in the on-device event store",
        gauge(status.events.events),
    );
    registry.register(
        "triggers_fired",
        "Task runs the trigger matcher requested",
        ConstCounter::new(status.triggers_fired),
    );
    let runs = Family::<Labels, Counter>::default();
    for (outcome, count) in [
        ("ok", status.runs_ok),
        ("failed", status.runs_failed),
        ("dropped", status.runs_dropped),
    ] {
        runs.get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc_by(count);
    }
    registry.register(
        "runs",
        "Task runs by outcome: ok, failed, or dropped (a full run queue)",
        runs,
    );
    let task_runs = Family::<Labels, Counter>::default();
    for task in &status.installed {
        for (outcome, count) in [("ok", task.runs.ok), ("failed", task.runs.failed)] {
            task_runs
                .get_or_create(&vec![
                    ("task", task.task.clone()),
                    ("version", task.version.clone()),
                    ("outcome", outcome.to_owned()),
                ])
                .inc_by(count);
        }
    }
    registry.register(
        "task_runs",
        "Runs of each installed task version since the agent started, by outcome",
        task_runs,
    );
    registry.register(
        "runs_pending",
        "Task runs waiting or running",
        gauge(status.runs_pending),
    );
    let queued = Family::<Labels, Gauge>::default();
    for (queue, stats) in [
        ("records", &status.outbox.records),
        ("reports", &status.outbox.reports),
    ] {
        queued
            .get_or_create(&vec![("queue", queue.to_owned())])
            .set(stats.items.try_into().unwrap_or(i64::MAX));
    }
    registry.register(
        "outbox_queued",
        "Items waiting in the outbox for the cloud's acknowledgement: task output records \
         (the tunnel) and run reports",
        queued,
    );
    registry.register(
        "records_uploaded",
        "Task output records the cloud acknowledged",
        ConstCounter::new(status.records_uploaded),
    );
    registry.register(
        "records_dropped",
        "Task output records deleted undelivered to keep the outbox within its budget",
        ConstCounter::new(status.outbox.records.dropped),
    );
    registry.register(
        "outbox_failures",
        "Task outputs that could not be written to the outbox",
        ConstCounter::new(status.outbox_failures),
    );
    registry.register(
        "bundle_cache_bytes",
        "Bytes of unpacked task versions and partial downloads on disk",
        gauge(status.bundle_cache.bytes),
    );
    registry.register(
        "vm_lost_threads",
        "VM worker threads abandoned to stuck native code and still running",
        gauge(status.vm.lost_threads),
    );
    registry.register(
        "vm_quarantined",
        "Task versions quarantined for getting the VM stuck",
        gauge(status.vm.quarantined.len()),
    );
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use walle_pipeline::outbox::QueueStats;

    use super::*;
    use crate::status::{OutboxStatus, TaskRuns, TaskStatus, VmStatus};

    fn status() -> AgentStatus {
        AgentStatus {
            device_id: "d1".into(),
            connected: true,
            installed: vec![TaskStatus {
                task: "ipv".into(),
                version: "1.0.0".into(),
                release_id: "rel_1".into(),
                runs: TaskRuns {
                    ok: 5,
                    failed: 1,
                    ..TaskRuns::default()
                },
                failure_streak: 0,
                memory_bytes: 0,
                queued_runs: 0,
            }],
            events: Default::default(),
            events_accepted: 10,
            events_rejected: 3,
            events_rejected_by_reason: BTreeMap::from([
                ("malformed".to_owned(), 2),
                ("bad_arg".to_owned(), 1),
            ]),
            triggers_fired: 6,
            runs_ok: 5,
            runs_failed: 1,
            runs_dropped: 2,
            runs_pending: 0,
            runs_recovered: 0,
            outbox: OutboxStatus {
                records: QueueStats {
                    items: 3,
                    ..QueueStats::default()
                },
                reports: QueueStats::default(),
                runs: QueueStats::default(),
            },
            records_uploaded: 4,
            outbox_failures: 0,
            recent_install_failures: Vec::new(),
            bundle_cache: Default::default(),
            vm: VmStatus {
                lost_threads: 0,
                lost_bytes: 0,
                workers_abandoned: 0,
                quarantined: BTreeMap::new(),
                runs_refused: 0,
                restart_requested: None,
            },
        }
    }

    #[test]
    fn the_status_figures_appear_under_prometheus_names() {
        let text = encode(&status()).unwrap();
        for line in [
            "walle_device_connected 1",
            "walle_device_installed_tasks 1",
            "walle_device_events_accepted_total 10",
            "walle_device_events_rejected_total{reason=\"malformed\"} 2",
            "walle_device_events_rejected_total{reason=\"bad_arg\"} 1",
            "walle_device_runs_total{outcome=\"ok\"} 5",
            "walle_device_runs_total{outcome=\"failed\"} 1",
            "walle_device_runs_total{outcome=\"dropped\"} 2",
            "walle_device_task_runs_total{task=\"ipv\",version=\"1.0.0\",outcome=\"ok\"} 5",
            "walle_device_outbox_queued{queue=\"records\"} 3",
            "walle_device_records_uploaded_total 4",
            "# TYPE walle_device_runs_total counter",
            "# TYPE walle_device_connected gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }
}
