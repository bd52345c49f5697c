use super::*;
use crate::event::EventKind;
use crate::pattern::StepSpec;

fn ev(id: u32, ts: i64, kind: EventKind, item: &str) -> Event {
    Event {
        id: format!("e{id}"),
        ts,
        session: "s1".into(),
        page: "item".into(),
        event: kind,
        item: item.into(),
        args: Default::default(),
    }
}

fn with_args(mut e: Event, args: serde_json::Value) -> Event {
    e.args = args.as_object().cloned().unwrap_or_default();
    e
}

fn ipv(within_ms: Option<u64>) -> PatternSpec {
    let step = |kind: &str| StepSpec {
        event: Some(kind.into()),
        page: Some("item".into()),
        ..Default::default()
    };
    PatternSpec {
        name: "ipv".into(),
        partition_by: vec!["session".into(), "item".into()],
        within_ms,
        skip: SkipPolicy::default(),
        steps: vec![step("enter"), step("exit")],
    }
}

fn pattern(text: &str) -> PatternSpec {
    toml::from_str(text).unwrap()
}

fn ids(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

/// Feeds `events` to a set holding `patterns` and returns, per firing, the event index it
/// fired on with the matched and window ids.
fn run(patterns: &[PatternSpec], events: &[Event]) -> Vec<(usize, Vec<String>, Vec<String>)> {
    let mut set = TriggerSet::new();
    set.try_install("t", patterns).unwrap();
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        for f in set.on_event(e) {
            let own = |v: &[Event]| ids(v).into_iter().map(String::from).collect();
            out.push((i, own(&f.matched), own(&f.window)));
        }
    }
    out
}

fn fired(i: usize, matched: &[&str], window: &[&str]) -> (usize, Vec<String>, Vec<String>) {
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    (i, own(matched), own(window))
}

use EventKind::{Click, Enter, Exit, Scroll};

#[test]
fn fires_with_the_window_of_its_partition() {
    let mut set = TriggerSet::new();
    set.install("t", &[ipv(None)]);
    assert!(set.on_event(&ev(1, 0, Enter, "a")).is_empty());
    assert!(set.on_event(&ev(2, 1, Enter, "b")).is_empty());
    assert!(set.on_event(&ev(3, 2, Click, "a")).is_empty());
    assert!(set.on_event(&ev(4, 3, Exit, "b")).len() == 1);
    let fired = set.on_event(&ev(5, 4, Exit, "a"));
    assert_eq!(fired.len(), 1);
    assert_eq!(ids(&fired[0].window), ["e1", "e3", "e5"]);
    assert_eq!(ids(&fired[0].matched), ["e1", "e5"]);
    // The match is consumed: another exit alone fires nothing.
    assert!(set.on_event(&ev(6, 5, Exit, "a")).is_empty());
    assert_eq!(set.partial_count(), 0);
}

#[test]
fn within_bound_drops_stale_partials() {
    let mut set = TriggerSet::new();
    set.install("t", &[ipv(Some(10))]);
    set.on_event(&ev(1, 0, Enter, "a"));
    assert!(set.on_event(&ev(2, 50, Exit, "a")).is_empty());
    set.on_event(&ev(3, 60, Enter, "a"));
    // The bound is inclusive.
    assert_eq!(set.on_event(&ev(4, 70, Exit, "a")).len(), 1);
}

#[test]
fn a_later_run_survives_an_expired_one() {
    // enter@0 expires at 10, enter@5 is still live when exit@12 comes.
    let got = run(
        &[ipv(Some(10))],
        &[
            ev(1, 0, Enter, "a"),
            ev(2, 5, Enter, "a"),
            ev(3, 12, Exit, "a"),
        ],
    );
    assert_eq!(got, [fired(2, &["e2", "e3"], &["e2", "e3"])]);
}

#[test]
fn removing_a_task_keeps_other_tasks_matches() {
    let mut set = TriggerSet::new();
    set.install("keep", &[ipv(None)]);
    set.install("drop", &[ipv(None)]);
    set.on_event(&ev(1, 0, Enter, "a"));
    set.remove("drop");
    let fired = set.on_event(&ev(2, 1, Exit, "a"));
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].task, "keep");
}

#[test]
fn installing_a_task_keeps_other_tasks_matches() {
    let mut set = TriggerSet::new();
    set.install("a", &[ipv(None)]);
    set.on_event(&ev(1, 0, Enter, "x"));
    // A new task with different conditions forces a new index; a's run carries on.
    set.install(
        "b",
        &[pattern(
            r#"name = "b"
steps = [{ event = "scroll" }, { where = [{ field = "args.depth", gt = 3 }] }]"#,
        )],
    );
    // Reinstalling b (replace) rebuilds again.
    set.install(
        "b",
        &[pattern(
            r#"name = "b2"
steps = [{ event = "click" }]"#,
        )],
    );
    let fired = set.on_event(&ev(2, 1, Exit, "x"));
    assert_eq!(fired.len(), 1);
    assert_eq!(
        (fired[0].task.as_str(), ids(&fired[0].matched)),
        ("a", vec!["e1", "e2"])
    );
    let fired = set.on_event(&ev(3, 2, Click, "x"));
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].trigger, "b2");
}

#[test]
fn invalid_patterns_install_nothing() {
    let mut set = TriggerSet::new();
    set.install("t", &[ipv(None)]);
    let bad = pattern(
        r#"name = "bad"
steps = [{ event = "click", not = true }]"#,
    );
    assert!(matches!(
        set.try_install("t", std::slice::from_ref(&bad)),
        Err(PatternError::StartsWithNegation(_))
    ));
    assert_eq!(set.len(), 1, "try_install changes nothing on error");
    set.install("t", &[bad]);
    assert!(set.is_empty());
}

#[test]
fn strict_contiguity_is_per_partition() {
    let p = pattern(
        r#"name = "p"
partition_by = ["item"]
steps = [{ event = "enter" }, { event = "exit", contiguity = "strict" }]"#,
    );
    let got = run(
        &[p],
        &[
            ev(1, 0, Enter, "a"),
            ev(2, 1, Click, "b"), // another partition: does not break a's contiguity
            ev(3, 2, Exit, "a"),
            ev(4, 3, Enter, "a"),
            ev(5, 4, Click, "a"), // breaks it
            ev(6, 5, Exit, "a"),
        ],
    );
    assert_eq!(got, [fired(2, &["e1", "e3"], &["e1", "e3"])]);
}

#[test]
fn strict_times_needs_consecutive_events() {
    let p = pattern(
        r#"name = "p"
steps = [{ event = "click", times = 3, contiguity = "strict" }]"#,
    );
    let got = run(
        &[p],
        &[
            ev(1, 0, Click, "a"),
            ev(2, 1, Click, "a"),
            ev(3, 2, Scroll, "a"),
            ev(4, 3, Click, "a"),
            ev(5, 4, Click, "a"),
            ev(6, 5, Click, "a"),
        ],
    );
    assert_eq!(got, [fired(5, &["e4", "e5", "e6"], &["e4", "e5", "e6"])]);
}

#[test]
fn relaxed_times_and_skip_policies() {
    let text = |skip: &str| {
        pattern(&format!(
            r#"name = "p"
skip = "{skip}"
steps = [{{ event = "click", times = 2 }}]"#
        ))
    };
    let events = [
        ev(1, 0, Click, "a"),
        ev(2, 1, Scroll, "a"),
        ev(3, 2, Click, "a"),
        ev(4, 3, Click, "a"),
    ];
    assert_eq!(
        run(&[text("past_last_event")], &events),
        [fired(2, &["e1", "e3"], &["e1", "e2", "e3"])]
    );
    assert_eq!(
        run(&[text("no_skip")], &events),
        [
            fired(2, &["e1", "e3"], &["e1", "e2", "e3"]),
            fired(3, &["e3", "e4"], &["e3", "e4"])
        ]
    );
}

#[test]
fn one_or_more_is_reluctant_and_collects_the_loop() {
    let p = pattern(
        r#"name = "p"
steps = [{ event = "enter" }, { event = "click", one_or_more = true }, { event = "exit" }]"#,
    );
    let got = run(
        std::slice::from_ref(&p),
        &[
            ev(1, 0, Enter, "a"),
            ev(2, 1, Exit, "a"), // no click yet: ignored (relaxed)
            ev(3, 2, Click, "a"),
            ev(4, 3, Scroll, "a"),
            ev(5, 4, Click, "a"),
            ev(6, 5, Exit, "a"),
        ],
    );
    assert_eq!(
        got,
        [fired(
            5,
            &["e1", "e3", "e5", "e6"],
            &["e1", "e2", "e3", "e4", "e5", "e6"]
        )]
    );
    // An event matching both the loop and the next step goes to the next step.
    let both = pattern(
        r#"name = "p"
steps = [{ event = "click", one_or_more = true }, { where = [{ field = "args.n", gt = 1 }] }]"#,
    );
    let got = run(
        &[both],
        &[
            ev(1, 0, Click, "a"),
            with_args(ev(2, 1, Click, "a"), serde_json::json!({"n": 5})),
        ],
    );
    assert_eq!(got, [fired(1, &["e1", "e2"], &["e1", "e2"])]);
}

#[test]
fn strict_loop_closes_then_the_next_step_is_relaxed() {
    let p = pattern(
        r#"name = "p"
steps = [{ event = "click", one_or_more = true, contiguity = "strict" }, { event = "exit" }]"#,
    );
    let got = run(
        &[p],
        &[
            ev(1, 0, Click, "a"),
            ev(2, 1, Click, "a"),
            ev(3, 2, Scroll, "a"), // closes the loop of e1 (and e2's run)
            ev(4, 3, Click, "a"),  // not taken by the closed loop; starts a run
            ev(5, 4, Exit, "a"),
        ],
    );
    assert_eq!(
        got,
        [fired(
            4,
            &["e1", "e2", "e5"],
            &["e1", "e2", "e3", "e4", "e5"]
        )]
    );
}

#[test]
fn negation_kills_between_steps() {
    let p = pattern(
        r#"name = "p"
partition_by = ["item"]
steps = [{ event = "enter" }, { event = "click", not = true }, { event = "exit" }]"#,
    );
    let got = run(
        &[p],
        &[
            ev(1, 0, Enter, "a"),
            ev(2, 1, Click, "b"), // other partition
            ev(3, 2, Exit, "a"),
            ev(4, 3, Enter, "a"),
            ev(5, 4, Click, "a"),
            ev(6, 5, Exit, "a"),
        ],
    );
    assert_eq!(got, [fired(2, &["e1", "e3"], &["e1", "e3"])]);
}

#[test]
fn trailing_negation_fires_when_the_window_ends() {
    let p = pattern(
        r#"name = "abandoned"
partition_by = ["item"]
within_ms = 10
steps = [{ event = "click", where = [{ field = "args.action", equals = "cart" }] }, { where = [{ field = "args.action", equals = "buy" }], not = true }]"#,
    );
    let cart = |id, ts, item| {
        with_args(
            ev(id, ts, Click, item),
            serde_json::json!({"action": "cart"}),
        )
    };
    let buy = |id, ts, item| {
        with_args(
            ev(id, ts, Click, item),
            serde_json::json!({"action": "buy"}),
        )
    };
    let mut set = TriggerSet::new();
    set.install("t", &[p]);
    assert!(set.on_event(&cart(1, 0, "a")).is_empty());
    assert!(set.on_event(&cart(2, 1, "b")).is_empty());
    // Bought b at the last moment of its window (11): no firing for b. The clock passing the
    // end of a's window (10) fires a, before the event itself is matched.
    let fired = set.on_event(&buy(3, 11, "b"));
    assert_eq!(fired.len(), 1);
    assert_eq!(ids(&fired[0].matched), ["e1"]);
    assert!(set.advance_to(100).is_empty());
    let mut set = TriggerSet::new();
    set.install(
        "t",
        &[pattern(
            r#"name = "abandoned"
within_ms = 10
steps = [{ event = "click" }, { event = "exit", not = true }]"#,
        )],
    );
    set.on_event(&ev(1, 0, Click, "a"));
    assert!(set.advance_to(10).is_empty(), "the bound is inclusive");
    let fired = set.advance_to(11);
    assert_eq!(fired.len(), 1);
    assert_eq!(ids(&fired[0].matched), ["e1"]);
}

#[test]
fn timed_firings_come_before_the_events_own() {
    let mut set = TriggerSet::new();
    set.install(
        "t",
        &[
            pattern(
                r#"name = "quiet"
within_ms = 5
steps = [{ event = "click" }, { event = "exit", not = true }]"#,
            ),
            pattern(
                r#"name = "exit"
steps = [{ event = "exit" }]"#,
            ),
        ],
    );
    set.on_event(&ev(1, 0, Click, "a"));
    let fired = set.on_event(&ev(2, 9, Exit, "a"));
    let names: Vec<_> = fired.iter().map(|f| f.trigger.as_str()).collect();
    assert_eq!(names, ["quiet", "exit"]);
}

#[test]
fn trailing_loop_collects_until_the_window_ends() {
    let p = pattern(
        r#"name = "p"
within_ms = 10
steps = [{ event = "enter" }, { event = "click", one_or_more = true }]"#,
    );
    let mut set = TriggerSet::new();
    set.install("t", &[p]);
    for e in [
        ev(1, 0, Enter, "a"),
        ev(2, 1, Click, "a"),
        ev(3, 2, Scroll, "a"),
        ev(4, 3, Click, "a"),
    ] {
        assert!(set.on_event(&e).is_empty());
    }
    let fired = set.advance_to(20);
    assert_eq!(fired.len(), 1);
    assert_eq!(ids(&fired[0].matched), ["e1", "e2", "e4"]);
    assert_eq!(ids(&fired[0].window), ["e1", "e2", "e3", "e4"]);
}

#[test]
fn conditions_on_args_and_prefixes() {
    let p = pattern(
        r#"name = "p"
steps = [
  { event = "enter", where = [{ field = "page", prefix = "item/" }] },
  { event = "click", where = [{ field = "args.price", gt = 100 }, { field = "args.action", in = ["cart", "buy"] }] },
]"#,
    );
    let page = |mut e: Event, page: &str| {
        e.page = page.into();
        e
    };
    let got = run(
        &[p],
        &[
            page(ev(1, 0, Enter, "a"), "home"),
            page(ev(2, 1, Enter, "a"), "item/7"),
            with_args(
                ev(3, 2, Click, "a"),
                serde_json::json!({"price": 150, "action": "like"}),
            ),
            with_args(
                ev(4, 3, Click, "a"),
                serde_json::json!({"price": "150", "action": "buy"}),
            ),
            with_args(
                ev(5, 4, Click, "a"),
                serde_json::json!({"price": 101.5, "action": "buy"}),
            ),
        ],
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, ["e2", "e5"]);
}

#[test]
fn late_events_cannot_start_expired_runs() {
    let p = pattern(
        r#"name = "p"
within_ms = 10
steps = [{ event = "click" }]"#,
    );
    let got = run(
        &[p],
        &[
            ev(1, 100, Scroll, "a"),
            ev(2, 50, Click, "a"),
            ev(3, 95, Click, "a"),
        ],
    );
    assert_eq!(got, [fired(2, &["e3"], &["e3"])]);
}

#[test]
fn partials_per_pattern_are_bounded() {
    let mut set = TriggerSet::with_max_partials_per_pattern(3);
    set.install("t", &[ipv(None)]);
    for i in 0..10 {
        set.on_event(&ev(i, i.into(), Enter, &format!("item{i}")));
    }
    assert_eq!(set.partial_count(), 3);
    // The oldest were evicted: only the last three items can still complete.
    assert!(set.on_event(&ev(20, 20, Exit, "item0")).is_empty());
    assert_eq!(set.on_event(&ev(21, 21, Exit, "item9")).len(), 1);
}

#[test]
fn windows_keep_the_most_recent_events() {
    let mut set = TriggerSet::new();
    set.install("t", &[ipv(None)]);
    set.on_event(&ev(0, 0, Enter, "a"));
    for i in 1..2000 {
        set.on_event(&ev(i, i.into(), Click, "a"));
    }
    let fired = set.on_event(&ev(2000, 2000, Exit, "a"));
    assert_eq!(fired[0].window.len(), MAX_WINDOW_EVENTS);
    assert_eq!(fired[0].window.last().map(|e| e.id.as_str()), Some("e2000"));
    assert_eq!(ids(&fired[0].matched), ["e0", "e2000"]);
}

#[test]
fn memory_stays_bounded_when_strict_runs_die_unseen() {
    // Every click starts a run that dies (lazily) at the next event; sweeps must reclaim them.
    let p = pattern(
        r#"name = "p"
partition_by = ["item"]
steps = [{ event = "click" }, { event = "exit", contiguity = "strict" }]"#,
    );
    let mut set = TriggerSet::new();
    set.install("t", &[p]);
    for i in 0..10_000 {
        let kind = if i % 2 == 0 { Click } else { Scroll };
        set.on_event(&ev(i, i.into(), kind, "a"));
    }
    assert!(
        set.partial_count() <= 2 * SWEEP_EVERY as usize,
        "{}",
        set.partial_count()
    );
}

#[test]
fn timed_windows_survive_buffer_trimming() {
    // The trailing loop's last event is far behind the partition's newest events when the
    // window ends; the buffer must still hold the window.
    let p = pattern(
        r#"name = "p"
within_ms = 100000
steps = [{ event = "enter" }, { event = "click", one_or_more = true }]"#,
    );
    let mut set = TriggerSet::new();
    set.install("t", &[p]);
    let mut n = 0;
    let mut next = |kind| {
        n += 1;
        ev(n, n.into(), kind, "a")
    };
    let mut events = vec![next(Enter), next(Click)];
    events.extend((0..600).map(|_| next(Scroll)));
    events.push(next(Click));
    events.extend((0..3000).map(|_| next(Scroll)));
    for e in &events {
        assert!(set.on_event(e).is_empty());
    }
    let fired = set.advance_to(1_000_000);
    assert_eq!(fired.len(), 1);
    assert_eq!(ids(&fired[0].matched), ["e1", "e2", "e603"]);
    let window = &fired[0].window;
    assert_eq!(window.len(), MAX_WINDOW_EVENTS);
    assert_eq!(window.last().map(|e| e.id.as_str()), Some("e603"));
    assert_eq!(window[0].id, format!("e{}", 603 - MAX_WINDOW_EVENTS + 1));
}

#[test]
fn matched_keeps_the_last_events_of_a_long_loop() {
    let p = pattern(
        r#"name = "p"
steps = [{ event = "enter" }, { event = "click", one_or_more = true }, { event = "exit" }]"#,
    );
    let mut set = TriggerSet::new();
    set.install("t", &[p]);
    set.on_event(&ev(0, 0, Enter, "a"));
    for i in 1..=200 {
        set.on_event(&ev(i, i.into(), Click, "a"));
    }
    let fired = set.on_event(&ev(201, 201, Exit, "a"));
    let matched = ids(&fired[0].matched);
    assert_eq!(matched.len(), 1 + crate::pattern::MAX_LOOP_EVENTS + 1);
    assert_eq!(
        matched[1],
        format!("e{}", 200 - crate::pattern::MAX_LOOP_EVENTS + 1)
    );
    assert_eq!(fired[0].window.len(), 202);
}

#[test]
fn runs_failed_in_quiet_partitions_are_reclaimed() {
    // Each session sees a click (starting a strict run) and a scroll (failing it), then
    // nothing more: the failed runs are only found by the round-robin sweeper.
    let p = pattern(
        r#"name = "p"
partition_by = ["session"]
steps = [{ event = "click" }, { event = "exit", contiguity = "strict" }]"#,
    );
    let mut set = TriggerSet::new();
    set.install("t", &[p]);
    for i in 0..5_000u32 {
        for (k, kind) in [Click, Scroll].into_iter().enumerate() {
            let mut e = ev(2 * i + k as u32, i.into(), kind, "a");
            e.session = format!("s{i}");
            set.on_event(&e);
        }
    }
    assert!(set.partial_count() < 100, "{}", set.partial_count());
    let spaces: usize = set.spaces.iter().map(|s| s.parts.len()).sum();
    assert!(spaces < 100, "{spaces} partitions kept");
    assert!(set.sweep_queue.len() < 200, "{}", set.sweep_queue.len());
}
