//! Synthetic user-behaviour streams for the demo and tests, with the IPV features they should
//! produce computed independently of the task, so results can be checked.

use serde_json::json;
use walle_pipeline::{Event, EventKind};

/// One item-page visit in a synthetic stream and the feature values it implies.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedVisit {
    pub session: String,
    pub item: String,
    pub dwell_ms: i64,
    pub clicks: i64,
    pub add_to_cart: i64,
}

/// A small deterministic pseudo-random generator (xorshift), so streams are reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A stream of `sessions` app sessions for one device: each opens the home page, then visits
/// two or three item pages with scrolls and clicks (some adding to cart).
pub fn synthetic_stream(
    seed: u64,
    sessions: usize,
    start_ts: i64,
) -> (Vec<Event>, Vec<ExpectedVisit>) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut events = Vec::new();
    let mut visits = Vec::new();
    let mut ts = start_ts;
    let push = |events: &mut Vec<Event>,
                ts: i64,
                session: &str,
                page: &str,
                kind: EventKind,
                item: &str,
                args| {
        events.push(Event {
            id: format!("{session}-e{}", events.len()),
            ts,
            session: session.to_owned(),
            page: page.to_owned(),
            event: kind,
            item: item.to_owned(),
            args,
        });
    };
    for s in 0..sessions {
        let session = format!("s{seed}-{s}");
        push(
            &mut events,
            ts,
            &session,
            "home",
            EventKind::Enter,
            "",
            Default::default(),
        );
        ts += 500 + rng.below(2000) as i64;
        push(
            &mut events,
            ts,
            &session,
            "home",
            EventKind::Expose,
            "banner",
            Default::default(),
        );
        for visit in 0..2 + rng.below(2) {
            // Disjoint ranges per visit keep items unique within a session.
            let item = format!("sku-{}", 100 * (visit + 1) + rng.below(100));
            let enter_ts = ts + 100;
            push(
                &mut events,
                enter_ts,
                &session,
                "item",
                EventKind::Enter,
                &item,
                Default::default(),
            );
            ts = enter_ts;
            let (mut clicks, mut carts) = (0, 0);
            for _ in 0..rng.below(6) {
                ts += 200 + rng.below(3000) as i64;
                if rng.below(3) == 0 {
                    push(
                        &mut events,
                        ts,
                        &session,
                        "item",
                        EventKind::Scroll,
                        &item,
                        Default::default(),
                    );
                } else {
                    let action = if rng.below(4) == 0 {
                        "add_to_cart"
                    } else {
                        "view_detail"
                    };
                    carts += i64::from(action == "add_to_cart");
                    clicks += 1;
                    let args = json!({ "action": action })
                        .as_object()
                        .cloned()
                        .unwrap_or_default();
                    push(
                        &mut events,
                        ts,
                        &session,
                        "item",
                        EventKind::Click,
                        &item,
                        args,
                    );
                }
            }
            ts += 300 + rng.below(5000) as i64;
            push(
                &mut events,
                ts,
                &session,
                "item",
                EventKind::Exit,
                &item,
                Default::default(),
            );
            visits.push(ExpectedVisit {
                session: session.clone(),
                item,
                dwell_ms: ts - enter_ts,
                clicks,
                add_to_cart: carts,
            });
        }
        ts += 60_000;
    }
    (events, visits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_well_formed() {
        let (a, visits) = synthetic_stream(7, 3, 1_000);
        let (b, _) = synthetic_stream(7, 3, 1_000);
        assert_eq!(a, b);
        assert!(visits.len() >= 6);
        assert!(a.iter().all(|e| e.validate().is_ok()));
        assert!(a.windows(2).all(|w| w[0].ts <= w[1].ts));
    }

    #[test]
    fn the_example_task_computes_the_expected_features_locally() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks/ipv-feature");
        let (events, visits) = synthetic_stream(3, 4, 5_000);
        let lines: Vec<String> = events.iter().map(|e| e.to_json().to_string()).collect();
        let run = crate::local::run_task(&dir, &lines, &[]).unwrap();
        assert!(run.failures.is_empty(), "{:?}", run.failures);
        assert_eq!(run.fired, visits.len());
        for (output, expected) in run.outputs.iter().zip(&visits) {
            assert_eq!(output["item"], expected.item.as_str());
            assert_eq!(output["dwell_ms"], expected.dwell_ms);
            assert_eq!(output["clicks"], expected.clicks);
            assert_eq!(output["add_to_cart"], expected.add_to_cart);
        }
    }
}
