//! The Prometheus exposition parses with a real parser and says what the report says.
#![cfg(not(target_family = "wasm"))]
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use cache_core::{EventKind, EventSource, ManualClock};
use cache_monitor::Monitor;
use prometheus_parse::{Sample, Scrape, Value};

mod support;
use support::event;

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn find<'a>(s: &'a Scrape, name: &str, tier: Option<&str>) -> &'a Sample {
    s.samples
        .iter()
        .find(|x| x.metric == name && tier.is_none_or(|t| x.labels.get("tier") == Some(t)))
        .unwrap_or_else(|| panic!("no sample {name} {tier:?}"))
}

fn counter(s: &Scrape, name: &str, tier: Option<&str>) -> f64 {
    match find(s, name, tier).value {
        Value::Counter(v) => v,
        ref other => panic!("{name} is not a counter: {other:?}"),
    }
}

#[test]
fn exposition_parses_and_matches_the_report() {
    let m = Monitor::builder()
        .clock(ManualClock::new())
        .metric_prefix("avatar-cache")
        .build();
    let memory = EventSource::Tier {
        index: 0,
        name: "memory",
    };
    let redis = EventSource::Tier {
        index: 1,
        name: "redis",
    };
    for ns in [500u64, 2_000, 2_000, 40_000] {
        m.record(&event(
            EventKind::Hit,
            memory,
            Duration::from_nanos(ns),
            1_000,
        ));
    }
    m.record(&event(
        EventKind::Miss,
        memory,
        Duration::from_nanos(700),
        0,
    ));
    m.record(&event(
        EventKind::Hit,
        redis,
        Duration::from_millis(2),
        1_000,
    ));
    m.record(&event(
        EventKind::Backfill,
        memory,
        Duration::from_nanos(900),
        1_000,
    ));
    m.record(&event(
        EventKind::OriginLoad,
        EventSource::Origin,
        Duration::from_millis(120),
        4_096,
    ));
    let text = m.prometheus();
    let s = scrape(&text);

    // Every metric has HELP and TYPE, with base units in the names.
    assert_eq!(
        s.docs
            .get("avatar_cache_requests_total")
            .map(String::as_str),
        Some("Reads through the cache chain (counted at the first tier).")
    );
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
        let kind = line.split_whitespace().nth(3).unwrap();
        match kind {
            "counter" => assert!(name.ends_with("_total"), "{name}"),
            "histogram" => assert!(name.ends_with("_seconds"), "{name}"),
            other => panic!("unexpected type {other}"),
        }
    }

    assert_eq!(counter(&s, "avatar_cache_requests_total", None), 5.0);
    assert_eq!(
        counter(&s, "avatar_cache_tier_hits_total", Some("memory")),
        4.0
    );
    assert_eq!(
        counter(&s, "avatar_cache_tier_misses_total", Some("memory")),
        1.0
    );
    assert_eq!(
        counter(&s, "avatar_cache_tier_hits_total", Some("redis")),
        1.0
    );
    assert_eq!(
        counter(&s, "avatar_cache_tier_backfills_total", Some("memory")),
        1.0
    );
    assert_eq!(
        counter(&s, "avatar_cache_tier_served_bytes_total", Some("memory")),
        4_000.0
    );
    assert_eq!(counter(&s, "avatar_cache_origin_loads_total", None), 1.0);
    assert_eq!(
        counter(&s, "avatar_cache_origin_loaded_bytes_total", None),
        4_096.0
    );
    assert_eq!(
        find(&s, "avatar_cache_tier_hits_total", Some("memory"))
            .labels
            .get("index"),
        Some("0")
    );

    // Tier 0's read histogram: 5 values 0.5 µs, 0.7 µs, 2 µs, 2 µs, 40 µs.
    let h = find(
        &s,
        "avatar_cache_tier_read_duration_seconds",
        Some("memory"),
    );
    let Value::Histogram(buckets) = &h.value else {
        panic!("{:?}", h.value)
    };
    let at = |le: f64| {
        buckets
            .iter()
            .filter(|b| b.less_than <= le)
            .map(|b| b.count)
            .fold(0.0, f64::max)
    };
    assert_eq!(at(1.1e-6), 2.0); // 0.5 µs and 0.7 µs
    assert_eq!(at(30e-6), 4.0); // and both 2 µs
    assert_eq!(at(60e-6), 5.0); // and 40 µs (in the bucket up to 50.175 µs)
    assert_eq!(buckets.last().unwrap().less_than, f64::INFINITY);
    assert_eq!(buckets.last().unwrap().count, 5.0);
    assert!(buckets
        .windows(2)
        .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count));
    let sum_line = text
        .lines()
        .find(|l| l.starts_with("avatar_cache_tier_read_duration_seconds_sum{tier=\"memory\""))
        .unwrap();
    let sum: f64 = sum_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((sum - 45.2e-6).abs() < 1e-12, "{sum}");

    let o = find(&s, "avatar_cache_origin_duration_seconds", None);
    let Value::Histogram(buckets) = &o.value else {
        panic!()
    };
    let first_holding = buckets.iter().find(|b| b.count == 1.0).unwrap().less_than;
    assert!((0.120..0.26).contains(&first_holding), "{first_holding}");
}

#[test]
fn exposition_after_reset_and_with_no_events_parses() {
    let m = Monitor::builder().clock(ManualClock::new()).build();
    let s = scrape(&m.prometheus());
    assert_eq!(counter(&s, "cache_requests_total", None), 0.0);
    m.record(&event(
        EventKind::Hit,
        EventSource::Tier {
            index: 0,
            name: "memory",
        },
        Duration::ZERO,
        1,
    ));
    m.reset();
    let s = scrape(&m.prometheus());
    assert_eq!(counter(&s, "cache_tier_hits_total", Some("memory")), 0.0);
    let names: HashMap<_, _> = s.samples.iter().map(|x| (x.metric.clone(), ())).collect();
    assert!(names.contains_key("cache_tier_read_duration_seconds"));
}

#[test]
fn label_values_are_escaped() {
    let m = Monitor::builder().clock(ManualClock::new()).build();
    m.record(&event(
        EventKind::Hit,
        EventSource::Tier {
            index: 0,
            name: "a\"b\\c\nd",
        },
        Duration::ZERO,
        1,
    ));
    let text = m.prometheus();
    assert!(
        text.contains("cache_tier_hits_total{tier=\"a\\\"b\\\\c\\nd\",index=\"0\"} 1\n"),
        "{text}"
    );
    // prometheus-parse does not unescape, but the line must still parse.
    let s = scrape(&text);
    assert_eq!(counter(&s, "cache_tier_hits_total", None), 1.0);
}
