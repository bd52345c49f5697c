//! Timer-driven runs: each installed task's `[[timers]]` queue a run every `every_ms`, with no
//! event (`trigger` is the timer's name, `matched` and `window` are empty, the features are
//! computed as of now). The first run comes one period after the version is installed or the
//! agent started; a run that finds the queue full is dropped and counted like any other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use walle_pipeline::Firing;

use crate::agent::{Shared, lock};

/// How often due timers are looked for; a timer fires at most this late.
const TICK: Duration = Duration::from_millis(200);

/// Queues timer runs until stopped.
pub(crate) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // (task version, timer name) → when it is next due.
    let mut due: HashMap<(String, String), Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        let mut firings = Vec::new();
        let mut live = Vec::new();
        for task in lock(&shared.active).values() {
            for timer in &task.manifest.task.timers {
                let key = (task.vm_key(), timer.name.clone());
                let every = Duration::from_millis(timer.every_ms);
                let next = due.entry(key.clone()).or_insert(now + every);
                if *next <= now {
                    *next = now + every;
                    firings.push(Firing {
                        task: task.task().to_owned(),
                        trigger: timer.name.clone(),
                        matched: Vec::new(),
                        window: Vec::new(),
                    });
                }
                live.push(key);
            }
        }
        // Forget timers of versions no longer active.
        due.retain(|key, _| live.contains(key));
        if !firings.is_empty() {
            shared.queue_timer_runs(firings);
        }
    }
}
