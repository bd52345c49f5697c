use serde_json::{Value, json};

use super::*;
use crate::event::EventKind;

fn event(n: usize, ts: i64, kind: EventKind, item: &str, args: Value) -> Event {
    Event {
        id: format!("e{n}"),
        ts,
        session: "s".into(),
        page: "item".into(),
        event: kind,
        item: item.into(),
        args: args.as_object().cloned().unwrap_or_default(),
    }
}

fn firing(task: &str, matched: Vec<Event>, window: Vec<Event>) -> Firing {
    Firing {
        task: task.into(),
        trigger: "t".into(),
        matched,
        window,
    }
}

/// The firing of a trigger whose last matched event is `last` (window: just that event).
fn at(task: &str, last: &Event) -> Firing {
    firing(task, vec![last.clone()], vec![last.clone()])
}

fn specs(toml_text: &str) -> Vec<FeatureSpec> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        features: Vec<FeatureSpec>,
    }
    toml::from_str::<Manifest>(toml_text)
        .unwrap_or_else(|e| panic!("{toml_text}: {e}"))
        .features
}

/// One feature per aggregate, all with `window` (a TOML inline table, or "" for match).
fn every_aggregate(window: &str) -> Vec<FeatureSpec> {
    let window = if window.is_empty() {
        String::new()
    } else {
        format!("window = {window}\n")
    };
    let mut text = String::new();
    for (name, aggregate, of) in [
        ("count", "count", None),
        ("count_v", "count", Some("args.v")),
        ("sum", "sum", Some("args.v")),
        ("avg", "avg", Some("args.v")),
        ("min", "min", Some("args.v")),
        ("max", "max", Some("args.v")),
        ("first", "first", Some("args.v")),
        ("last", "last", Some("args.v")),
        ("distinct", "distinct_count", Some("args.v")),
        ("duration", "duration", None),
    ] {
        text += &format!("[[features]]\nname = \"{name}\"\naggregate = \"{aggregate}\"\n{window}");
        if let Some(of) = of {
            text += &format!("of = \"{of}\"\n");
        }
    }
    specs(&text)
}

/// 1000: 5, 2000: "x", 3000: 2.5, 4000: (no v), 5000: 7.
fn five_events() -> Vec<Event> {
    [
        (1000, json!({"v": 5})),
        (2000, json!({"v": "x"})),
        (3000, json!({"v": 2.5})),
        (4000, json!({})),
        (5000, json!({"v": 7})),
    ]
    .into_iter()
    .enumerate()
    .map(|(n, (ts, args))| event(n, ts, EventKind::Click, "sku", args))
    .collect()
}

fn expect(values: Value) -> Map<String, Value> {
    values.as_object().cloned().unwrap_or_default()
}

#[test]
fn every_window_kind_with_every_aggregate() {
    let all_five = json!({
        "count": 5, "count_v": 4, "sum": 14.5, "avg": 14.5 / 3.0, "min": 2.5, "max": 7,
        "first": 5, "last": 7, "distinct": 4, "duration": 4000,
    });
    let last_three = json!({
        "count": 3, "count_v": 2, "sum": 9.5, "avg": 4.75, "min": 2.5, "max": 7,
        "first": 2.5, "last": 7, "distinct": 2, "duration": 2000,
    });
    let cases = [
        ("", all_five.clone()),
        ("{ match = true }", all_five.clone()),
        ("{ count = 3 }", last_three.clone()),
        // [3000, 5000].
        ("{ tumbling_ms = 3000 }", last_three.clone()),
        // (2500, 5000].
        ("{ sliding_ms = 2500 }", last_three.clone()),
        // Panes of 2000 from floor(5000 / 2000) * 2000 + 2000 - 4000 = 2000: [2000, 5000].
        (
            "{ sliding_ms = 4000, slide_ms = 2000 }",
            json!({
                "count": 4, "count_v": 3, "sum": 9.5, "avg": 4.75, "min": 2.5, "max": 7,
                "first": "x", "last": 7, "distinct": 3, "duration": 3000,
            }),
        ),
        ("{ session_gap_ms = 1000 }", all_five),
        // Every gap is larger than 999: the open session is the last event.
        (
            "{ session_gap_ms = 999 }",
            json!({
                "count": 1, "count_v": 1, "sum": 7, "avg": 7, "min": 7, "max": 7,
                "first": 7, "last": 7, "distinct": 1, "duration": 0,
            }),
        ),
    ];
    let events = five_events();
    let last = events[4].clone();
    for (window, expected) in cases {
        let mut set = FeatureSet::new();
        set.install("task", &every_aggregate(window)).unwrap();
        for e in &events {
            set.observe(e);
        }
        let got = set.compute(&firing("task", vec![last.clone()], events.clone()));
        assert_eq!(got, expect(expected), "window {window:?}");
    }
}

#[test]
fn empty_windows() {
    let empty = expect(json!({
        "count": 0, "count_v": 0, "sum": 0, "avg": null, "min": null, "max": null,
        "first": null, "last": null, "distinct": 0, "duration": null,
    }));
    let e = event(0, 1000, EventKind::Click, "sku", json!({"v": 1}));
    for window in [
        "",
        "{ count = 3 }",
        "{ tumbling_ms = 3000 }",
        "{ sliding_ms = 2500 }",
        "{ sliding_ms = 4000, slide_ms = 2000 }",
        "{ session_gap_ms = 1000 }",
    ] {
        let mut set = FeatureSet::new();
        set.install("task", &every_aggregate(window)).unwrap();
        // Nothing observed, and a match window without events.
        assert_eq!(
            set.compute(&firing("task", vec![e.clone()], vec![])),
            empty,
            "{window}"
        );
    }
    // Time windows are empty once the clock has moved past them.
    for window in [
        "{ tumbling_ms = 3000 }",
        "{ sliding_ms = 2500 }",
        "{ sliding_ms = 4000, slide_ms = 2000 }",
        "{ session_gap_ms = 1000 }",
    ] {
        let mut set = FeatureSet::new();
        set.install("task", &every_aggregate(window)).unwrap();
        set.observe(&e);
        set.advance_to(100_000);
        assert_eq!(set.compute(&at("task", &e)), empty, "{window}");
    }
}

#[test]
fn the_ipv_feature_over_the_match() {
    let features = specs(
        r#"
[[features]]
name = "dwell_ms"
aggregate = "duration"

[[features]]
name = "clicks"
aggregate = "count"
event = "click"

[[features]]
name = "add_to_cart"
aggregate = "count"
where = [{ field = "args.action", equals = "add_to_cart" }]
"#,
    );
    let mut set = FeatureSet::new();
    set.install("ipv", &features).unwrap();
    let visit = vec![
        event(0, 10_000, EventKind::Enter, "sku", json!({})),
        event(
            1,
            12_000,
            EventKind::Click,
            "sku",
            json!({"action": "zoom"}),
        ),
        event(
            2,
            15_000,
            EventKind::Click,
            "sku",
            json!({"action": "add_to_cart"}),
        ),
        event(3, 16_000, EventKind::Scroll, "sku", json!({})),
        event(4, 41_000, EventKind::Exit, "sku", json!({})),
    ];
    for e in &visit {
        set.observe(e);
    }
    let f = firing(
        "ipv",
        vec![visit[0].clone(), visit[4].clone()],
        visit.clone(),
    );
    assert_eq!(
        set.compute(&f),
        expect(json!({"dwell_ms": 31_000, "clicks": 2, "add_to_cart": 1}))
    );
    assert_eq!(set.stats().states, 0, "match windows keep no state");
    assert_eq!(set.horizon_ms(), None);
    // Another task's firing, or a task without features, gets nothing.
    assert!(set.compute(&firing("other", vec![], vec![])).is_empty());
}

#[test]
fn non_numeric_values_are_skipped_by_numeric_aggregates() {
    let mut set = FeatureSet::new();
    set.install("task", &every_aggregate("{ count = 10 }"))
        .unwrap();
    let values = [
        json!("12"),
        json!(true),
        json!([1]),
        json!({"a": 1}),
        json!(2e300),
        json!(-4),
    ];
    let mut last = None;
    for (n, v) in values.into_iter().enumerate() {
        let e = event(
            n,
            1000 + n as i64,
            EventKind::Click,
            "sku",
            json!({ "v": v }),
        );
        set.observe(&e);
        last = Some(e);
    }
    let got = set.compute(&at("task", &last.unwrap()));
    assert_eq!(got["count"], 6);
    assert_eq!(got["count_v"], 6);
    // Only -4 is a number within MAX_MAGNITUDE.
    assert_eq!(got["sum"], -4);
    assert_eq!(got["avg"], -4);
    assert_eq!(got["min"], -4);
    assert_eq!(got["max"], -4);
    assert_eq!(got["first"], "12");
    assert_eq!(got["last"], -4);
    assert_eq!(got["distinct"], 6);
}

#[test]
fn out_of_order_events_count_where_their_time_puts_them() {
    let run = |window: &str, stream: &[(i64, i64)]| -> Map<String, Value> {
        let mut set = FeatureSet::new();
        set.install("task", &every_aggregate(window)).unwrap();
        let mut last = None;
        for (n, &(ts, v)) in stream.iter().enumerate() {
            let e = event(n, ts, EventKind::Click, "sku", json!({ "v": v }));
            set.observe(&e);
            last = Some(e);
        }
        set.compute(&at("task", &last.unwrap()))
    };
    // Sliding 2500 with the clock at 3000: (500, 3000]. 2000 is late but inside; 500 is out.
    let got = run(
        "{ sliding_ms = 2500 }",
        &[(1000, 1), (3000, 3), (2000, 2), (500, 9)],
    );
    assert_eq!(got["count"], 3);
    assert_eq!(got["sum"], 6);
    assert_eq!(got["first"], 1);
    assert_eq!(got["last"], 3, "last in event time, not arrival");
    assert_eq!(got["duration"], 2000);
    // Panes of 1000 over 2000 at clock 3500: [2000, 3500]; 2500 goes into its pane, 1500 is out.
    let got = run(
        "{ sliding_ms = 2000, slide_ms = 1000 }",
        &[(2100, 1), (3500, 3), (2500, 2), (1500, 9)],
    );
    assert_eq!(got["count"], 3);
    assert_eq!(got["first"], 1);
    assert_eq!(got["last"], 3);
    // Session gap 1000: 1500 extends the session [2000, 3000] backwards; 100 is more than a
    // gap before its start and is dropped.
    let got = run(
        "{ session_gap_ms = 1000 }",
        &[(2000, 2), (3000, 3), (1500, 1), (100, 9)],
    );
    assert_eq!(got["count"], 3);
    assert_eq!(got["first"], 1);
    assert_eq!(got["duration"], 1500);
    // Count windows go by arrival: the last 2 to arrive.
    let got = run("{ count = 2 }", &[(3000, 3), (1000, 1), (2000, 2)]);
    assert_eq!(got["count"], 2);
    assert_eq!(got["sum"], 3);
    assert_eq!(
        got["first"], 1,
        "first in event time among the last two arrivals"
    );
    assert_eq!(got["duration"], 1000);
}

#[test]
fn a_closed_session_is_not_reopened() {
    let features = specs(
        "[[features]]\nname = \"n\"\naggregate = \"count\"\nwindow = { session_gap_ms = 50 }",
    );
    let mut set = FeatureSet::new();
    set.install("task", &features).unwrap();
    let e = |n, ts| event(n, ts, EventKind::Click, "sku", json!({}));
    set.observe(&e(0, 100));
    set.observe(&e(1, 200));
    // The clock (200) is past 100 + 50: the session [100] closed; [200] is open.
    set.observe(&e(2, 150));
    let last = e(3, 210);
    set.observe(&last);
    // 150 is within a gap of the open session's start (200), so it joined it.
    assert_eq!(set.compute(&at("task", &last))["n"], 3);
    set.advance_to(400);
    assert_eq!(set.compute(&at("task", &last))["n"], 0);
    // A late event near the closed session does not bring it back.
    set.observe(&e(4, 240));
    assert_eq!(set.compute(&at("task", &last))["n"], 0);
}

#[test]
fn partitions_are_separate_and_chosen_by_the_last_matched_event() {
    let features = specs(
        r#"
[[features]]
name = "views"
aggregate = "count"
event = "enter"
partition_by = ["item"]
window = { sliding_ms = 60000 }

[[features]]
name = "items"
aggregate = "distinct_count"
of = "item"
event = "enter"
window = { sliding_ms = 60000 }
"#,
    );
    let mut set = FeatureSet::new();
    set.install("task", &features).unwrap();
    let mut n = 0;
    let mut enter = |item: &str| {
        n += 1;
        event(n, 1000 * n as i64, EventKind::Enter, item, json!({}))
    };
    let stream = [enter("a"), enter("b"), enter("a"), enter("a"), enter("c")];
    for e in &stream {
        set.observe(e);
    }
    let a = set.compute(&at("task", &stream[0]));
    assert_eq!(a, expect(json!({"views": 3, "items": 3})));
    let b = set.compute(&at("task", &stream[1]));
    assert_eq!(b["views"], 1);
    // A click on "a" does not pass the filter; the firing's item still selects the partition.
    let click = event(9, 9000, EventKind::Click, "d", json!({}));
    set.observe(&click);
    assert_eq!(set.compute(&at("task", &click))["views"], 0);
}

#[test]
fn caps_evict_the_least_recently_seen_partition_and_the_oldest_events() {
    let features = specs(
        r#"
[[features]]
name = "n"
aggregate = "count"
partition_by = ["item"]
window = { count = 100 }

[[features]]
name = "recent"
aggregate = "first"
of = "ts"
window = { sliding_ms = 100000 }

[[features]]
name = "distinct"
aggregate = "distinct_count"
of = "item"
window = { tumbling_ms = 100000 }
"#,
    );
    let mut set = FeatureSet::with_limits(FeatureLimits {
        max_partitions: 2,
        max_window_events: 3,
        max_distinct: 2,
        sweep_per_event: 0,
    });
    set.install("task", &features).unwrap();
    let e = |n: usize, item: &str| event(n, 1000 + n as i64, EventKind::Click, item, json!({}));
    let stream = [e(0, "a"), e(1, "a"), e(2, "b"), e(3, "a"), e(4, "c")];
    for ev in &stream {
        set.observe(ev);
    }
    // "b" was the least recently seen when "c" came: it is gone; "a" stays.
    assert_eq!(set.compute(&at("task", &stream[3]))["n"], 3);
    assert_eq!(set.compute(&at("task", &stream[2]))["n"], 0);
    let c = set.compute(&at("task", &stream[4]));
    assert_eq!(c["n"], 1);
    // The sliding window keeps the latest 3 events: 1002, 1003, 1004.
    assert_eq!(c["recent"], 1002);
    // Three items, counted up to 2.
    assert_eq!(c["distinct"], 2);
    assert!(set.stats().partitions <= 2 + 1 + 1);
    assert_eq!(set.stats().kept_events, 4 + 3);
}

#[test]
fn expired_partitions_are_swept() {
    let features = specs(
        r#"
[[features]]
name = "n"
aggregate = "count"
partition_by = ["session"]
window = { sliding_ms = 1000 }
"#,
    );
    let mut set = FeatureSet::new();
    set.install("task", &features).unwrap();
    for n in 0..500 {
        let mut e = event(n, 100 * n as i64, EventKind::Click, "", json!({}));
        e.session = format!("s{n}");
        set.observe(&e);
    }
    // Each session saw one event; those older than a second have expired and gone.
    let stats = set.stats();
    assert!(stats.partitions <= 12, "{stats:?}");
    assert!(stats.kept_events <= 12, "{stats:?}");
}

#[test]
fn reinstalling_keeps_unchanged_features_and_removing_frees() {
    let clicks = specs(
        "[[features]]\nname = \"clicks\"\naggregate = \"count\"\nevent = \"click\"\nwindow = { count = 50 }",
    );
    let renamed = specs(
        "[[features]]\nname = \"taps\"\naggregate = \"count\"\nevent = \"click\"\nwindow = { count = 50 }",
    );
    let changed = specs(
        "[[features]]\nname = \"clicks\"\naggregate = \"count\"\nevent = \"click\"\nwindow = { count = 40 }",
    );
    let mut set = FeatureSet::new();
    set.install("a", &clicks).unwrap();
    let e = |n: usize| event(n, n as i64, EventKind::Click, "", json!({}));
    for n in 0..5 {
        set.observe(&e(n));
    }
    let count = |set: &mut FeatureSet, task: &str| {
        set.compute(&at(task, &e(9)))
            .values()
            .next()
            .cloned()
            .unwrap_or(Value::Null)
    };
    set.install("a", &clicks).unwrap();
    assert_eq!(count(&mut set, "a"), 5, "reinstalled unchanged: state kept");
    set.install("a", &renamed).unwrap();
    assert_eq!(count(&mut set, "a"), 5, "a new name is the same feature");
    // Another task declaring the same feature shares its state.
    set.install("b", &clicks).unwrap();
    assert_eq!(count(&mut set, "b"), 5);
    assert_eq!(set.stats().states, 1);
    set.install("a", &changed).unwrap();
    assert_eq!(count(&mut set, "a"), 0, "a changed feature starts empty");
    assert_eq!(count(&mut set, "b"), 5);
    assert_eq!(set.stats().states, 2);
    set.remove("b");
    assert_eq!(set.stats().states, 1);
    set.remove("a");
    assert!(
        set.spaces.iter().all(|s| s.len() == 0),
        "partition ids freed"
    );
    assert_eq!(
        set.stats(),
        FeatureStats {
            memory_bytes: set.stats().memory_bytes,
            ..FeatureStats::default()
        }
    );
    assert!(set.is_empty());
    // An invalid list changes nothing.
    set.install("a", &clicks).unwrap();
    let bad = specs("[[features]]\nname = \"x\"\naggregate = \"median\"");
    assert!(set.install("a", &bad).is_err());
    assert_eq!(set.len(), 1);
}

#[test]
fn memory_is_reported_and_freed() {
    let mut set = FeatureSet::new();
    set.install("task", &every_aggregate("{ sliding_ms = 1000000 }"))
        .unwrap();
    let before = set.stats().memory_bytes;
    for n in 0..1000 {
        set.observe(&event(
            n,
            n as i64,
            EventKind::Click,
            "sku",
            json!({ "v": n % 10 }),
        ));
    }
    let full = set.stats();
    assert_eq!(full.kept_events, 1000 * 10);
    assert!(full.memory_bytes > before + 1000 * 10 * 40, "{full:?}");
    set.remove("task");
    assert!(set.stats().memory_bytes < before + 4096);
}

#[test]
fn the_horizon_is_the_longest_time_window() {
    let mut set = FeatureSet::new();
    set.install("a", &every_aggregate("{ sliding_ms = 600000 }"))
        .unwrap();
    assert_eq!(set.horizon_ms(), Some(600_000));
    set.install("b", &every_aggregate("{ tumbling_ms = 3600000 }"))
        .unwrap();
    assert_eq!(set.horizon_ms(), Some(3_600_000));
    set.install("c", &every_aggregate("{ count = 5 }")).unwrap();
    assert_eq!(set.horizon_ms(), Some(UNBOUNDED_WARM_UP_MS));
    set.remove("c");
    set.remove("b");
    assert_eq!(set.horizon_ms(), Some(600_000));
}

#[test]
fn warming_up_from_stored_events_rebuilds_time_windows() {
    let features = every_aggregate("{ sliding_ms = 5000 }");
    let events = five_events();
    let mut live = FeatureSet::new();
    live.install("task", &features).unwrap();
    for e in &events {
        live.observe(e);
    }
    // After a restart: replay what the store holds within the horizon of the clock.
    let mut restarted = FeatureSet::new();
    restarted.install("task", &features).unwrap();
    let horizon = restarted.horizon_ms().unwrap() as i64;
    let now = events.last().unwrap().ts;
    for e in events.iter().filter(|e| e.ts >= now - horizon) {
        restarted.observe(e);
    }
    let f = at("task", events.last().unwrap());
    assert_eq!(restarted.compute(&f), live.compute(&f));
}

#[test]
fn the_module_example_is_valid() {
    let docs = include_str!("mod.rs");
    let start = docs.find("//! ```toml").unwrap() + "//! ```toml".len();
    let end = start + docs[start..].find("//! ```").unwrap();
    let text: String = docs[start..end]
        .lines()
        .map(|l| l.trim_start_matches("//!").trim_start())
        .collect::<Vec<_>>()
        .join("\n");
    let features = specs(&text);
    assert_eq!(features.len(), 4);
    validate_features(&features).unwrap();
}
