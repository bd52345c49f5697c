//! Timer-driven runs: each installed task's `[[timers]]` queue a run with no event (`trigger` is
//! the timer's name, `matched` and `window` are empty, the features are computed as of now). A
//! run that finds the queue full is dropped and counted like any other.
//!
//! - `every_ms`: the first run comes one period after the version is installed or the agent
//!   started, then one each period (on the monotonic clock).
//! - `cron`: one run at the start of each matching minute, UTC (on the wall clock, checked every
//!   [`TICK`], so a run starts at most that late). The minute during which the version is
//!   installed or the agent starts does not fire, even if it matches: so a restart never runs a
//!   timer twice in one minute, and a device that was off or asleep does not catch up on the
//!   minutes it missed. If the wall clock jumps back, the schedule restarts from the new time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use walle_pipeline::Firing;
use walle_proto::cron::CronSchedule;
use walle_proto::manifest::{TimerSchedule, TimerSpec};

use super::Intake;
use crate::clock::now_ms;

/// How often due timers are looked for; a timer fires at most this late.
const TICK: Duration = Duration::from_millis(200);

/// Queues timer runs until stopped.
pub(crate) async fn run(intake: Arc<Intake>, mut stop: watch::Receiver<bool>) {
    let mut timetable = Timetable::default();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Now {
            instant: Instant::now(),
            wall_ms: now_ms(),
        };
        let firings = intake.active.with(|active| {
            let tasks = active.values().map(|task| TimedTask {
                key: task.vm_key(),
                task: task.task(),
                timers: &task.manifest.task.timers,
            });
            timetable.due(tasks, now)
        });
        if !firings.is_empty() {
            intake.submit_timer_runs(firings);
        }
    }
}

/// A moment on both clocks: interval timers follow the monotonic one, cron timers the wall one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub instant: Instant,
    /// Unix time in milliseconds.
    pub wall_ms: i64,
}

/// One active task version's timers.
pub(crate) struct TimedTask<'a> {
    /// The task version (VM key): a new version starts its timers afresh.
    pub key: String,
    pub task: &'a str,
    pub timers: &'a [TimerSpec],
}

/// When each active timer is next due.
#[derive(Default)]
pub(crate) struct Timetable {
    /// (task version, timer name) → its schedule and next due time.
    timers: HashMap<(String, String), Due>,
    /// The wall clock at the last look, to notice it jumping back.
    last_wall_ms: Option<i64>,
}

enum Due {
    Every {
        period: Duration,
        next: Instant,
    },
    /// `next` is `None` when the schedule has no later minute (not for a validated one).
    Cron {
        schedule: CronSchedule,
        next: Option<i64>,
    },
    /// A timer the manifest validation should have refused; logged once, never fires.
    Invalid,
}

impl Due {
    fn new(spec: &TimerSpec, now: Now, task: &str) -> Due {
        match spec.schedule() {
            Ok(TimerSchedule::Every(period)) => Due::Every {
                period,
                next: now.instant + period,
            },
            Ok(TimerSchedule::Cron(schedule)) => Due::Cron {
                next: schedule.next_after(now.wall_ms),
                schedule,
            },
            Err(reason) => {
                tracing::error!(%task, timer = %spec.name, %reason, "timer ignored");
                Due::Invalid
            }
        }
    }

    /// Whether the timer fires now; if it does, moves it to its next due time.
    fn fire(&mut self, now: Now) -> bool {
        match self {
            Due::Every { period, next } if *next <= now.instant => {
                *next = now.instant + *period;
                true
            }
            Due::Cron { schedule, next } if next.is_some_and(|at| at <= now.wall_ms) => {
                *next = schedule.next_after(now.wall_ms);
                true
            }
            _ => false,
        }
    }

    /// After the wall clock went back: the next cron minute from the new time.
    fn rewind(&mut self, now: Now) {
        if let Due::Cron { schedule, next } = self {
            *next = schedule.next_after(now.wall_ms);
        }
    }
}

impl Timetable {
    /// The firings due at `now` among `tasks` (the active versions); forgets the timers of
    /// versions no longer among them.
    pub(crate) fn due<'a>(
        &mut self,
        tasks: impl Iterator<Item = TimedTask<'a>>,
        now: Now,
    ) -> Vec<Firing> {
        if self.last_wall_ms.is_some_and(|last| now.wall_ms < last) {
            tracing::warn!("the wall clock went back; cron timers follow it");
            self.timers.values_mut().for_each(|due| due.rewind(now));
        }
        self.last_wall_ms = Some(now.wall_ms);
        let mut firings = Vec::new();
        let mut live = Vec::new();
        for task in tasks {
            for timer in task.timers {
                let key = (task.key.clone(), timer.name.clone());
                let due = self
                    .timers
                    .entry(key.clone())
                    .or_insert_with(|| Due::new(timer, now, task.task));
                if due.fire(now) {
                    firings.push(Firing {
                        task: task.task.to_owned(),
                        trigger: timer.name.clone(),
                        matched: Vec::new(),
                        window: Vec::new(),
                    });
                }
                live.push(key);
            }
        }
        self.timers.retain(|key, _| live.contains(key));
        firings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-05-06 02:59:00 UTC.
    const BEFORE_THREE: i64 = 1_714_964_340_000;
    const MINUTE: i64 = 60_000;

    fn timer(name: &str, every_ms: Option<u64>, cron: Option<&str>) -> TimerSpec {
        TimerSpec {
            name: name.into(),
            every_ms,
            cron: cron.map(str::to_owned),
        }
    }

    /// The injected clock: a monotonic and a wall clock that start and move together.
    struct Clock {
        start: Instant,
        start_wall_ms: i64,
    }

    impl Clock {
        fn at(&self, offset_ms: i64) -> Now {
            Now {
                instant: self.start + Duration::from_millis(offset_ms.max(0) as u64),
                wall_ms: self.start_wall_ms + offset_ms,
            }
        }
    }

    /// The names of task `t`'s timers that fire at `now`.
    fn fired(table: &mut Timetable, timers: &[TimerSpec], now: Now) -> Vec<String> {
        let tasks = std::iter::once(TimedTask {
            key: "t@1.0.0".into(),
            task: "t",
            timers,
        });
        table
            .due(tasks, now)
            .into_iter()
            .map(|f| f.trigger)
            .collect()
    }

    #[test]
    fn a_cron_timer_fires_once_at_each_matching_minute() {
        let timers = [timer("nightly", None, Some("0 3 * * *"))];
        // Starts at 02:59:30.
        let clock = Clock {
            start: Instant::now(),
            start_wall_ms: BEFORE_THREE + 30_000,
        };
        let mut table = Timetable::default();
        assert!(fired(&mut table, &timers, clock.at(0)).is_empty());
        assert!(fired(&mut table, &timers, clock.at(29_999)).is_empty());
        // 03:00:00.000 and the ticks after it within the minute.
        assert_eq!(fired(&mut table, &timers, clock.at(30_000)), ["nightly"]);
        for offset in [30_200, 60_000, 89_999] {
            assert!(fired(&mut table, &timers, clock.at(offset)).is_empty());
        }
        assert!(
            fired(&mut table, &timers, clock.at(90_000)).is_empty(),
            "03:01"
        );
        // The next night, a little late (the device was busy): once.
        let next_night = 30_000 + 24 * 60 * MINUTE + 150;
        assert!(fired(&mut table, &timers, clock.at(next_night - 200)).is_empty());
        assert_eq!(
            fired(&mut table, &timers, clock.at(next_night)),
            ["nightly"]
        );
        assert!(fired(&mut table, &timers, clock.at(next_night + 200)).is_empty());
    }

    #[test]
    fn the_minute_a_cron_timer_is_first_seen_in_does_not_fire_and_missed_ones_fire_once() {
        let timers = [timer("minutely", None, Some("* * * * *"))];
        let clock = Clock {
            start: Instant::now(),
            start_wall_ms: BEFORE_THREE + 10_000,
        };
        let mut table = Timetable::default();
        assert!(fired(&mut table, &timers, clock.at(0)).is_empty());
        assert_eq!(fired(&mut table, &timers, clock.at(50_000)), ["minutely"]);
        // Asleep for ten minutes: one run on waking, not ten.
        assert_eq!(
            fired(&mut table, &timers, clock.at(50_000 + 10 * MINUTE + 5)),
            ["minutely"]
        );
        assert!(fired(&mut table, &timers, clock.at(50_000 + 10 * MINUTE + 205)).is_empty());
    }

    #[test]
    fn when_the_wall_clock_goes_back_cron_timers_follow_it() {
        let timers = [timer("nightly", None, Some("0 3 * * *"))];
        let clock = Clock {
            start: Instant::now(),
            start_wall_ms: BEFORE_THREE + 30_000,
        };
        let mut table = Timetable::default();
        assert!(fired(&mut table, &timers, clock.at(0)).is_empty());
        assert_eq!(fired(&mut table, &timers, clock.at(30_000)), ["nightly"]);
        // Set back an hour (to 02:00:40): 03:00 comes again today.
        let back = clock.at(40_000 - 60 * MINUTE);
        assert!(fired(&mut table, &timers, back).is_empty());
        let again = Now {
            instant: back.instant + Duration::from_secs(3600),
            wall_ms: back.wall_ms + 60 * MINUTE - 10_000,
        };
        assert_eq!(fired(&mut table, &timers, again), ["nightly"]);
    }

    #[test]
    fn interval_timers_fire_each_period_and_timers_of_removed_versions_are_forgotten() {
        let timers = [
            timer("fast", Some(1000), None),
            timer("nightly", None, Some("0 3 * * *")),
        ];
        let clock = Clock {
            start: Instant::now(),
            start_wall_ms: BEFORE_THREE,
        };
        let mut table = Timetable::default();
        assert!(fired(&mut table, &timers, clock.at(0)).is_empty());
        assert!(fired(&mut table, &timers, clock.at(999)).is_empty());
        assert_eq!(fired(&mut table, &timers, clock.at(1000)), ["fast"]);
        assert!(fired(&mut table, &timers, clock.at(1500)).is_empty());
        assert_eq!(
            fired(&mut table, &timers, clock.at(MINUTE)),
            ["fast", "nightly"]
        );
        assert_eq!(table.timers.len(), 2);
        assert!(
            table
                .due(std::iter::empty(), clock.at(MINUTE + 200))
                .is_empty()
        );
        assert!(table.timers.is_empty());
    }

    #[test]
    fn an_invalid_timer_never_fires_and_does_not_stop_the_others() {
        let timers = [
            timer("broken", None, Some("61 * * * *")),
            timer("fast", Some(1000), None),
        ];
        let clock = Clock {
            start: Instant::now(),
            start_wall_ms: BEFORE_THREE,
        };
        let mut table = Timetable::default();
        assert!(fired(&mut table, &timers, clock.at(0)).is_empty());
        assert_eq!(fired(&mut table, &timers, clock.at(2 * MINUTE)), ["fast"]);
    }
}
