//! The agent: what a host app embeds (`Agent::start`, `agent.track(event)`) and what the
//! `walle-device` binary runs. [`Agent::start`] builds the components (see the crate doc),
//! wires them, and starts their background work; the agent's API reads and feeds them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use walle_pipeline::{Event, EventQuery, EventStore, Outbox, OutboxConfig, StoreConfig};
use walle_vm::VmPool;

use crate::activation::{self, Activation, ActivationParts};
use crate::db::DeviceDb;
use crate::install::{ActiveTasks, Installer, Versions};
use crate::intake::{self, Intake, endpoint};
use crate::runner::{self, RunQueue, Runner, RunnerParts};
use crate::status::{AgentStatus, TaskStatus, VmStatus};
use crate::uplink::{self, Outgoing, Uplink};
use crate::{AgentError, DeviceConfig, credential};

pub use crate::status::{OutboxStatus, TaskRuns};

/// The agent's components, as `Agent::start` wired them.
#[derive(Clone)]
struct Components {
    device_id: String,
    vm: Arc<VmPool>,
    active: ActiveTasks,
    intake: Arc<Intake>,
    queue: Arc<RunQueue>,
    runner: Arc<Runner>,
    activation: Arc<Activation>,
    outgoing: Arc<Outgoing>,
    uplink: Arc<Uplink>,
}

/// A running device agent.
pub struct Agent {
    components: Components,
    stop: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    ingest_addr: Option<SocketAddr>,
}

impl Agent {
    /// Starts the agent: checks the profile, restores installed tasks from disk, then connects
    /// to the cloud (forever, with backoff) and serves the local ingest endpoint if configured.
    pub async fn start(config: DeviceConfig) -> Result<Agent, AgentError> {
        config.profile.check().map_err(AgentError::Profile)?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(AgentError::file("create", &config.data_dir))?;
        let device_id = credential::device_id(&config.data_dir, &config.profile.device_id)?;
        let trusted = credential::load(&config.data_dir)?
            .map(|c| c.trusted_keys())
            .unwrap_or_default();
        let installer = Installer::new(config.data_dir.join("tasks"), trusted);
        let db = Arc::new(DeviceDb::open(&config.data_dir, config.db_max_bytes)?);
        let events = EventStore::open(
            db.path(),
            StoreConfig {
                retention: config.event_retention(),
                max_db_bytes: config.db_max_bytes,
                ..StoreConfig::default()
            },
        )
        .map_err(AgentError::EventStore)?;
        let outbox = Outbox::open(
            db.path(),
            OutboxConfig {
                max_bytes: config.outbox_max_bytes,
                max_db_bytes: config.db_max_bytes,
            },
        )?;
        let vm =
            Arc::new(VmPool::with_state(config.vm_threads, db.clone()).map_err(AgentError::Vm)?);

        // Sinks first, then what feeds them.
        let outgoing = Arc::new(Outgoing::new(outbox));
        let (client, client_changes) = watch::channel(None);
        let uplink = Arc::new(Uplink::new(outgoing.clone(), client_changes));
        let active = ActiveTasks::default();
        let queue = Arc::new(RunQueue::new(
            config.run_queue,
            config.run_queue_per_task,
            vm.threads(),
            outgoing.clone(),
        ));
        let (rollbacks, rollback_requests) = mpsc::unbounded_channel();
        let runner = Arc::new(Runner::new(
            RunnerParts {
                queue: queue.clone(),
                vm: vm.clone(),
                active: active.clone(),
                outgoing: outgoing.clone(),
                db: db.clone(),
                rollbacks,
            },
            &config,
        ));
        let intake = Arc::new(Intake::new(
            events,
            active.clone(),
            queue.clone(),
            outgoing.clone(),
        ));
        let versions = Versions::new(vm.clone(), intake.clone(), active.clone());
        let activation = Arc::new(Activation::new(
            ActivationParts {
                device_id: device_id.clone(),
                installer,
                versions,
                runner: runner.clone(),
                outgoing: outgoing.clone(),
                db,
                client,
            },
            config.clone(),
        )?);

        // What the previous process left: active versions, their feature windows, its runs.
        activation.restore().await;
        runner.recover();
        intake.warm_up_features();

        let (stop, stopped) = watch::channel(false);
        let mut background = vec![
            tokio::spawn(activation::run_sessions(
                activation.clone(),
                stopped.clone(),
            )),
            tokio::spawn(activation::run_rollbacks(
                activation.clone(),
                rollback_requests,
                stopped.clone(),
            )),
            tokio::spawn(runner::run(runner.clone(), stopped.clone())),
            tokio::spawn(uplink::run(uplink.clone(), stopped.clone())),
            tokio::spawn(intake::keep_events(intake.clone(), stopped.clone())),
            tokio::spawn(intake::run_timers(intake.clone(), stopped.clone())),
        ];
        let components = Components {
            device_id,
            vm,
            active,
            intake: intake.clone(),
            queue,
            runner,
            activation,
            outgoing,
            uplink,
        };
        let status_source: endpoint::StatusSource = {
            let components = components.clone();
            Arc::new(move || components.status())
        };
        let listen = endpoint::Listen {
            addr: config.ingest_addr,
            socket: config.ingest_socket.as_deref(),
        };
        let (ingest_addr, servers) =
            endpoint::start(listen, intake, status_source, stopped).await?;
        background.extend(servers);
        tracing::info!(device = %components.device_id, "walle-device agent started");
        Ok(Agent {
            components,
            stop,
            background,
            ingest_addr,
        })
    }

    /// Why the agent asks to be restarted, if it does: its task VM lost worker threads (or
    /// memory) past the configured threshold to native code nothing could stop. Shut the agent
    /// down and start it again (the run journal makes that safe); the `walle-device` binary
    /// does so by itself.
    pub fn restart_requested(&self) -> Option<String> {
        self.components.runner.restart_requested()
    }

    /// Waits until the agent asks to be restarted; returns why.
    pub async fn wait_restart_requested(&self) -> String {
        let mut requests = self.components.runner.restart_requests();
        loop {
            if let Some(reason) = requests.borrow_and_update().clone() {
                return reason;
            }
            if requests.changed().await.is_err() {
                // The agent is gone: nothing will ever ask.
                std::future::pending::<()>().await;
            }
        }
    }

    /// This device's id.
    pub fn device_id(&self) -> &str {
        &self.components.device_id
    }

    /// Where the local ingest endpoint listens, if enabled.
    pub fn ingest_addr(&self) -> Option<SocketAddr> {
        self.ingest_addr
    }

    /// Feeds one user-behaviour event; returns how many task runs it triggered.
    pub fn track(&self, event: Event) -> Result<usize, AgentError> {
        self.components.intake.track(event)
    }

    /// Feeds one event given as JSON (one line of a JSONL stream).
    pub fn track_json(&self, line: &str) -> Result<usize, AgentError> {
        self.components.intake.track_json(line)
    }

    /// The most recent output records of a task (up to 100).
    pub fn outputs(&self, task: &str) -> Vec<serde_json::Value> {
        self.components.runner.recent_outputs(task)
    }

    /// A snapshot of the agent's state and counters.
    pub fn status(&self) -> AgentStatus {
        self.components.status()
    }

    /// Waits until `condition` holds for the status, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&AgentStatus) -> bool,
    ) -> Result<AgentStatus, AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if condition(&status) {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(AgentError::Timeout(format!(
                    "condition not met within {timeout:?}; last status: {}",
                    serde_json::to_string(&status).unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every queued run has finished and every output and report was acknowledged.
    pub async fn flush(&self, timeout: Duration) -> Result<AgentStatus, AgentError> {
        self.wait_for(timeout, |s| {
            s.runs_pending == 0 && s.outbox.records.items == 0 && s.outbox.reports.items == 0
        })
        .await
    }

    /// Stored events matching `query`, oldest first (events still buffered are written first).
    pub fn events(&self, query: &EventQuery) -> Result<Vec<Event>, AgentError> {
        self.components
            .intake
            .events(query)
            .map_err(AgentError::EventStore)
    }

    /// Stops background work and the ingest endpoint; buffered events are written.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.background {
            let _ = task.await;
        }
    }
}

impl Components {
    /// The agent's status, from each component's part.
    fn status(&self) -> AgentStatus {
        let mut installed: Vec<TaskStatus> = self
            .active
            .all()
            .into_iter()
            .map(|t| {
                let key = t.vm_key();
                TaskStatus {
                    task: t.task().to_owned(),
                    version: t.version(),
                    release_id: t.release_id.clone(),
                    runs: self.runner.task_runs(&key),
                    failure_streak: self.runner.failure_streak(&key),
                    queued_runs: self.queue.waiting_for(t.task()),
                    memory_bytes: self.vm.task_memory(&key).unwrap_or(0),
                }
            })
            .collect();
        installed.sort_by(|a, b| a.task.cmp(&b.task));
        let (queued, in_flight) = self.queue.depth();
        let intake = self.intake.counters();
        let runs = self.runner.counters();
        AgentStatus {
            device_id: self.device_id.clone(),
            connected: self.activation.connected(),
            installed,
            events: self.intake.store_stats(),
            events_accepted: intake.events_accepted.load(Ordering::Relaxed),
            events_rejected: intake.events_rejected.load(Ordering::Relaxed),
            events_rejected_by_reason: crate::locks::lock(&intake.events_rejected_by_reason)
                .iter()
                .map(|(reason, count)| (reason.to_string(), *count))
                .collect(),
            triggers_fired: intake.triggers_fired.load(Ordering::Relaxed),
            runs_ok: runs.ok.load(Ordering::Relaxed),
            runs_failed: runs.failed.load(Ordering::Relaxed),
            runs_dropped: intake.runs_dropped.load(Ordering::Relaxed),
            runs_pending: queued + in_flight,
            runs_recovered: runs.recovered.load(Ordering::Relaxed),
            outbox: self.outgoing.status(),
            records_uploaded: self.uplink.records_uploaded(),
            outbox_failures: self.outgoing.failures(),
            recent_install_failures: self.activation.recent_failures(),
            bundle_cache: self.activation.cache_status(),
            vm: self.vm_status(),
        }
    }

    fn vm_status(&self) -> VmStatus {
        let health = self.vm.health();
        VmStatus {
            lost_threads: health.lost_threads,
            lost_bytes: health.lost_bytes,
            workers_abandoned: health.abandoned_total,
            quarantined: self.runner.quarantined().into_iter().collect(),
            runs_refused: self.runner.counters().refused.load(Ordering::Relaxed),
            restart_requested: self.runner.restart_requested(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;
    use crate::uplink::REPORTS;
    use prost::Message;
    use walle_pipeline::{EventKind, PatternSpec};
    use walle_proto::v1::{TaskEvent, task_event};

    /// An agent with no cloud to talk to (it keeps trying in the background) and an
    /// "entered, did not click within 1 s" trigger installed directly.
    async fn offline_agent(dir: &std::path::Path) -> Agent {
        offline_agent_with(dir, None).await
    }

    async fn offline_agent_with(dir: &std::path::Path, db_max_bytes: Option<u64>) -> Agent {
        let agent = Agent::start(DeviceConfig {
            cloud_url: "http://127.0.0.1:9".into(),
            data_dir: dir.to_owned(),
            ingest_addr: None,
            vm_threads: 1,
            db_max_bytes,
            ..DeviceConfig::default()
        })
        .await
        .unwrap();
        let pattern: PatternSpec = toml::from_str(
            r#"
            name = "bounce"
            partition_by = ["session"]
            within_ms = 1000
            steps = [{ event = "enter" }, { event = "click", not = true }]
            "#,
        )
        .unwrap();
        agent
            .components
            .intake
            .install_patterns("bounce-task", &[pattern]);
        agent
    }

    fn enter(id: &str, ts: i64) -> Event {
        Event {
            id: id.into(),
            ts,
            session: "s".into(),
            page: "home".into(),
            event: EventKind::Enter,
            item: String::new(),
            args: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_live_stream_fires_time_bound_triggers_on_the_wall_clock() {
        let dir = tempfile::tempdir().unwrap();
        let agent = offline_agent(dir.path()).await;
        let now = now_ms();
        agent.track(enter("e1", now)).unwrap();
        // Still inside the window: nothing yet.
        assert_eq!(agent.components.intake.advance_clock(now + 500), 0);
        // The window ended without a click.
        assert_eq!(agent.components.intake.advance_clock(now + 1001), 1);
        assert_eq!(agent.status().triggers_fired, 1);
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn a_replayed_stream_of_old_events_keeps_its_own_time() {
        let dir = tempfile::tempdir().unwrap();
        let agent = offline_agent(dir.path()).await;
        let long_ago = now_ms() - 24 * 3600 * 1000;
        agent.track(enter("e1", long_ago)).unwrap();
        assert_eq!(agent.components.intake.advance_clock(now_ms()), 0);
        // Its own later events move its clock.
        agent.track(enter("e2", long_ago + 5000)).unwrap();
        assert_eq!(agent.status().triggers_fired, 1);
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn tracked_events_are_stored_and_written_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let agent = offline_agent(dir.path()).await;
        agent.track(enter("e1", 1)).unwrap();
        agent.track(enter("e2", 2)).unwrap();
        agent.shutdown().await;
        let agent = offline_agent(dir.path()).await;
        assert_eq!(agent.status().events.events, 2);
        let stored = agent.events(&EventQuery::default()).unwrap();
        assert_eq!(stored, vec![enter("e1", 1), enter("e2", 2)]);
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn a_full_disk_refuses_events_with_a_reason_and_loses_nothing_stored() {
        let dir = tempfile::tempdir().unwrap();
        let agent = offline_agent_with(dir.path(), Some(512 << 10)).await;
        agent
            .components
            .outgoing
            .report(task_event::Kind::RunOk, "t", "1.0.0", "rel", "before", 3);
        let refusal = (0..200_000)
            .find_map(|i| {
                let mut event = enter(&format!("e{i:06}-{}", "x".repeat(200)), i);
                event.session = format!("s{i}");
                agent.track(event).err()
            })
            .expect("the size limit was never reached");
        assert!(matches!(refusal, AgentError::StorageFull(_)), "{refusal}");
        assert!(refusal.to_string().contains("storage is full"), "{refusal}");
        // Outputs and reports that cannot be queued are counted (the last free pages of the
        // file may take a few first).
        let detail = "d".repeat(4000);
        for _ in 0..100 {
            if agent.status().outbox_failures > 0 {
                break;
            }
            agent.components.outgoing.report(
                task_event::Kind::RunOk,
                "t",
                "1.0.0",
                "rel",
                &detail,
                3,
            );
        }
        let status = agent.status();
        assert!(
            status.events_rejected_by_reason["storage_full"] >= 1,
            "{status:?}"
        );
        assert!(status.events.write_failures >= 1, "{status:?}");
        assert_eq!(status.outbox_failures, 1, "{status:?}");
        let reports = status.outbox.reports.items;
        let stored = status.events.events;
        assert!(stored > 500, "{status:?}");
        agent.shutdown().await;
        // With room again, everything stored before is there, and events are taken.
        let agent = offline_agent_with(dir.path(), None).await;
        let status = agent.status();
        assert_eq!(status.events.events, stored);
        assert_eq!(status.outbox.reports.items, reports);
        assert_eq!(
            agent.events(&EventQuery::default()).unwrap().len() as u64,
            stored
        );
        agent.track(enter("after", 1)).unwrap();
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn reports_wait_in_the_outbox_across_restarts_while_offline() {
        let dir = tempfile::tempdir().unwrap();
        let agent = offline_agent(dir.path()).await;
        for detail in ["first", "second"] {
            agent.components.outgoing.report(
                task_event::Kind::RunOk,
                "t",
                "1.0.0",
                "rel",
                detail,
                3,
            );
        }
        assert_eq!(agent.status().outbox.reports.items, 2);
        agent.shutdown().await;
        let agent = offline_agent(dir.path()).await;
        let status = agent.status();
        assert_eq!(status.outbox.reports.items, 2);
        assert_eq!(status.outbox.records.items, 0);
        let waiting = agent
            .components
            .outgoing
            .peek(REPORTS, 10, 1 << 20)
            .unwrap();
        let details: Vec<String> = waiting
            .iter()
            .map(|item| TaskEvent::decode(item.payload.as_slice()).unwrap().detail)
            .collect();
        assert_eq!(details, ["first", "second"]);
        agent.shutdown().await;
    }
}
