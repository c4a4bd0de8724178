//! Exact counts, percentiles, windows and reset for known event sequences.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_core::{Error, Event, EventKind, EventSource, ManualClock, Operation};
use cache_monitor::{Monitor, Report, MAX_TIERS};

mod support;
use support::{event, tier};

fn monitor(clock: &ManualClock) -> Monitor {
    Monitor::builder().clock(clock.clone()).build()
}

#[test]
fn counts_every_kind_per_tier() {
    let clock = ManualClock::new();
    let m = monitor(&clock);
    let us = Duration::from_micros;
    // 6 reads: 3 hit tier 0, 2 hit tier 1 (after missing tier 0), 1 goes to the origin.
    for _ in 0..3 {
        m.record(&event(EventKind::Hit, tier(0), us(1), 100));
    }
    for _ in 0..3 {
        m.record(&event(EventKind::Miss, tier(0), us(1), 0));
    }
    for _ in 0..2 {
        m.record(&event(EventKind::Hit, tier(1), us(100), 1_000));
        m.record(&event(EventKind::Backfill, tier(0), us(1), 1_000));
    }
    m.record(&event(EventKind::Miss, tier(1), us(100), 0));
    m.record(&event(
        EventKind::OriginLoad,
        EventSource::Origin,
        Duration::from_millis(10),
        5_000,
    ));
    m.record(&event(EventKind::Write, tier(0), us(1), 5_000));
    m.record(&event(EventKind::Write, tier(1), us(50), 5_000));
    m.record(&event(
        EventKind::Coalesced,
        EventSource::Origin,
        Duration::ZERO,
        0,
    ));
    m.record(&event(EventKind::Invalidate, tier(0), us(1), 0));
    m.record(&event(EventKind::Invalidate, tier(1), us(1), 0));
    m.record(&event(EventKind::Skipped, tier(1), Duration::ZERO, 0));
    m.record(&event(
        EventKind::NegativeHit,
        EventSource::Chain,
        Duration::ZERO,
        0,
    ));
    m.record(&event(
        EventKind::StaleServed,
        EventSource::Chain,
        Duration::ZERO,
        7,
    ));
    m.record(&event(
        EventKind::OriginNotFound,
        EventSource::Origin,
        Duration::from_millis(2),
        0,
    ));
    let read_err = Error::backend("shared", Operation::Get, "connection reset");
    let write_err = Error::Timeout {
        tier: "shared".into(),
        operation: Operation::Put,
        after: Duration::from_millis(50),
    };
    m.record(&Event {
        error: Some(&read_err),
        ..event(EventKind::Error, tier(1), us(300), 0)
    });
    m.record(&Event {
        error: Some(&write_err),
        ..event(EventKind::Timeout, tier(1), Duration::from_millis(50), 0)
    });

    let r = m.report();
    assert_eq!(r.requests, 6);
    assert_eq!(r.hits, 5);
    assert_eq!(r.hit_rate, Some(5.0 / 6.0));
    assert_eq!(r.bytes_saved, 3 * 100 + 2 * 1_000);
    let t0 = &r.tiers[0];
    assert_eq!((t0.index, t0.name.as_str()), (0, "memory"));
    assert_eq!((t0.reads, t0.hits, t0.misses), (6, 3, 3));
    assert_eq!((t0.backfills, t0.writes, t0.invalidations), (2, 1, 1));
    assert_eq!((t0.bytes_served, t0.bytes_written), (300, 2_000 + 5_000));
    assert_eq!(t0.hit_rate, Some(0.5));
    let t1 = &r.tiers[1];
    assert_eq!((t1.index, t1.name.as_str()), (1, "shared"));
    // The read error counts as a read; the write timeout does not.
    assert_eq!(
        (t1.reads, t1.hits, t1.misses, t1.read_failures),
        (4, 2, 1, 1)
    );
    assert_eq!((t1.errors, t1.timeouts, t1.skips), (1, 1, 1));
    assert_eq!(
        (t1.writes, t1.invalidations, t1.bytes_served),
        (1, 1, 2_000)
    );
    assert_eq!(r.origin.loads, 1);
    assert_eq!(r.origin.not_found, 1);
    assert_eq!(r.origin.coalesced, 1);
    assert_eq!(r.origin.bytes_loaded, 5_000);
    assert_eq!(r.origin.average_latency, Some(Duration::from_millis(6)));
    assert_eq!(
        (r.negative_hits, r.stale_served, r.dropped_events),
        (1, 1, 0)
    );
    // Tier 0: 6 × 1 µs; tier 1: 3 × 100 µs + 300 µs; origin 12 ms; over 6 requests.
    let total = us(6) + us(600) + Duration::from_millis(12);
    assert_eq!(r.average_access_time, Some(total / 6));
    assert_eq!(t1.average_latency, Some(us(150)));
    assert_eq!(r.tiers.len(), 2);
}

#[test]
fn percentiles_are_exact_for_known_sequences() {
    let clock = ManualClock::new();
    let m = monitor(&clock);
    // Values below 64 ns have a bucket each, so nearest-rank percentiles are exact:
    // 1..=60 ns, shuffled by a stride.
    for i in 0..60u64 {
        let ns = (i * 7) % 60 + 1;
        m.record(&event(EventKind::Hit, tier(0), Duration::from_nanos(ns), 1));
    }
    let l = m.report().tiers[0].latency.clone().unwrap();
    assert_eq!(l.count, 60);
    assert_eq!(l.p50, Some(Duration::from_nanos(30)));
    assert_eq!(l.p95, Some(Duration::from_nanos(57)));
    assert_eq!(l.p99, Some(Duration::from_nanos(60)));
    assert_eq!(l.max, Some(Duration::from_nanos(60)));
    assert_eq!(l.sum, Duration::from_nanos(60 * 61 / 2));

    // Larger values: the reported percentile is the top of the bucket holding the
    // value of that rank: never below it and at most 1/32 above.
    let clock = ManualClock::new();
    let m = monitor(&clock);
    let ms = |n: u64| Duration::from_micros(n * 1_000);
    // 100 origin loads: 50 × 2 ms, 45 × 8 ms, 4 × 30 ms, 1 × 250 ms.
    for (n, d) in [(50, ms(2)), (45, ms(8)), (4, ms(30)), (1, ms(250))] {
        for _ in 0..n {
            m.record(&event(EventKind::OriginLoad, EventSource::Origin, d, 1));
        }
    }
    let l = m.report().origin.latency.unwrap();
    let close_above = |got: Option<Duration>, want: Duration| {
        let got = got.unwrap();
        assert!(
            got >= want && got <= want + want / 32,
            "{got:?} for {want:?}"
        );
    };
    close_above(l.p50, ms(2)); // rank 50
    close_above(l.p95, ms(8)); // rank 95
    close_above(l.p99, ms(30)); // rank 99
    assert_eq!(l.max, Some(ms(250)));
    // Distinct ranks land in distinct buckets: a wrong rank would show.
    assert!(l.p50 < l.p95 && l.p95 < l.p99 && l.p99 < l.max);
    assert_eq!(l.count, 100);
}

#[test]
fn windows_cover_the_last_minutes_and_timeline_plots_them() {
    let clock = ManualClock::new();
    let m = monitor(&clock);
    let minute = Duration::from_secs(60);
    // Minute 0: 4 hits. Minute 1: 2 misses. Minute 2: nothing. Minute 3: 1 hit, 1 miss.
    for _ in 0..4 {
        m.record(&event(
            EventKind::Hit,
            tier(0),
            Duration::from_micros(10),
            10,
        ));
    }
    clock.advance(minute);
    for _ in 0..2 {
        m.record(&event(
            EventKind::Miss,
            tier(0),
            Duration::from_micros(10),
            0,
        ));
    }
    clock.advance(minute * 2);
    m.record(&event(
        EventKind::Hit,
        tier(0),
        Duration::from_micros(10),
        10,
    ));
    m.record(&event(
        EventKind::Miss,
        tier(0),
        Duration::from_micros(10),
        0,
    ));
    clock.advance(Duration::from_secs(30));

    let w = m.window(minute);
    assert_eq!((w.requests, w.hits, w.hit_rate), (2, 1, Some(0.5)));
    let l = w.tiers[0].latency.as_ref().unwrap();
    assert_eq!(
        (l.count, l.max),
        (2, None),
        "a window's own reads, no maximum"
    );
    let w = m.window(minute * 3);
    assert_eq!((w.requests, w.hits), (4, 1));
    let w = m.window(minute * 4);
    assert_eq!((w.requests, w.hits, w.bytes_saved), (8, 5, 50));
    assert_eq!(m.report().requests, 8);

    let points = m.timeline(minute * 4);
    let series: Vec<(u64, u64)> = points.iter().map(|r| (r.requests, r.hits)).collect();
    assert_eq!(series, [(4, 4), (2, 0), (0, 0), (2, 1)]);
    assert_eq!(points[0].hit_rate, Some(1.0));
    assert_eq!(points[2].hit_rate, None);
    assert_eq!(
        points[3].until.duration_since(points[3].since),
        Duration::from_secs(30)
    );

    // An hour later only the hour's depth is kept: the old minutes are gone.
    clock.advance(Duration::from_secs(3_600));
    m.record(&event(EventKind::Miss, tier(0), Duration::ZERO, 0));
    assert_eq!(m.window(Duration::from_secs(7_200)).requests, 1);
    assert_eq!(m.timeline(Duration::from_secs(7_200)).len(), 60);
    assert_eq!(m.report().requests, 9);
}

/// Whether `p` is what the histogram reports for values of `truth`: its
/// bucket's upper bound, at most 1/32 above.
fn about(p: Option<Duration>, truth: Duration) -> bool {
    p.is_some_and(|p| p >= truth && p.as_nanos() * 32 <= truth.as_nanos() * 33)
}

#[test]
fn windows_and_timelines_have_the_percentiles_of_their_own_buckets() {
    let clock = ManualClock::new();
    let m = monitor(&clock);
    let minute = Duration::from_secs(60);
    let (fast, slow) = (Duration::from_micros(2), Duration::from_millis(40));
    // A quiet minute, then one with a slow tail: 2 reads in 100.
    for _ in 0..100 {
        m.record(&event(EventKind::Hit, tier(0), fast, 10));
    }
    m.record(&event(EventKind::OriginLoad, EventSource::Origin, slow, 10));
    clock.advance(minute);
    for i in 0..100 {
        let latency = if i % 50 == 0 { slow } else { fast };
        m.record(&event(EventKind::Hit, tier(0), latency, 10));
    }
    clock.advance(Duration::from_secs(30));

    // Since start, 2 slow reads in 200 are below the 99th percentile; in the
    // last minute they are 2 %, above it.
    let all = m.report();
    let all = all.tiers[0].latency.as_ref().unwrap();
    assert!(about(all.p99, fast), "since start: {all:?}");
    assert_eq!(all.max, Some(slow));
    let w = m.window(minute);
    let l = w.tiers[0].latency.as_ref().unwrap();
    assert_eq!((l.count, l.max), (100, None));
    assert!(
        about(l.p50, fast) && about(l.p99, slow),
        "last minute: {l:?}"
    );
    assert_eq!(w.origin.latency.as_ref().unwrap().count, 0);

    let points = m.timeline(minute * 2);
    assert_eq!(points.len(), 2);
    let first = points[0].tiers[0].latency.as_ref().unwrap();
    let second = points[1].tiers[0].latency.as_ref().unwrap();
    assert_eq!((first.count, second.count), (100, 100));
    assert!(about(first.p99, fast), "first minute: {first:?}");
    assert!(about(second.p99, slow), "second minute: {second:?}");
    let load = points[0].origin.latency.as_ref().unwrap();
    assert!(load.count == 1 && about(load.p50, slow), "{load:?}");

    // An idle hour later the old minutes are gone, and with them their tail.
    clock.advance(Duration::from_secs(3_600));
    m.record(&event(EventKind::Hit, tier(0), fast, 10));
    let w = m.window(Duration::from_secs(7_200));
    let l = w.tiers[0].latency.as_ref().unwrap();
    assert!(l.count == 1 && about(l.p99, fast), "{l:?}");
}

#[test]
fn reset_starts_afresh_for_reports_windows_and_percentiles() {
    let clock = ManualClock::new();
    let m = Monitor::builder()
        .clock(clock.clone())
        .track_keys(10)
        .build();
    for _ in 0..5 {
        m.record(&event(
            EventKind::Hit,
            tier(0),
            Duration::from_millis(500),
            10,
        ));
    }
    clock.advance(Duration::from_secs(10));
    m.reset();
    let r = m.report();
    assert_eq!((r.requests, r.hits, r.bytes_saved), (0, 0, 0));
    assert_eq!(r.tiers[0].latency.as_ref().unwrap().count, 0);
    assert_eq!(r.tiers[0].latency.as_ref().unwrap().max, None);
    assert_eq!(r.top_keys, Some(vec![]));
    assert_eq!(m.window(Duration::from_secs(60)).requests, 0);

    m.record(&event(
        EventKind::Hit,
        tier(0),
        Duration::from_nanos(40),
        10,
    ));
    let r = m.report();
    assert_eq!(r.requests, 1);
    let l = r.tiers[0].latency.as_ref().unwrap();
    assert_eq!(
        (l.count, l.p99, l.max),
        (
            1,
            Some(Duration::from_nanos(40)),
            Some(Duration::from_nanos(40))
        )
    );
    // The window and its bucket began before the reset, but their
    // percentiles, like their counts, are of the read after it only.
    let w = m.window(Duration::from_secs(60));
    let p = &m.timeline(Duration::from_secs(60))[0];
    for (requests, latency) in [
        (w.requests, &w.tiers[0].latency),
        (p.requests, &p.tiers[0].latency),
    ] {
        let l = latency.as_ref().unwrap();
        assert_eq!(
            (requests, l.count, l.p99),
            (1, 1, Some(Duration::from_nanos(40)))
        );
    }
    assert_eq!(r.since, cache_core::Clock::now(&clock));
}

#[test]
fn top_keys_rank_the_busiest_keys() {
    let m = Monitor::builder()
        .clock(ManualClock::new())
        .track_keys(2)
        .build();
    let read = |key: &'static str, kind| Event {
        key,
        ..event(kind, tier(0), Duration::ZERO, 0)
    };
    for _ in 0..5 {
        m.record(&read("alice", EventKind::Hit));
    }
    m.record(&read("alice", EventKind::Miss));
    for _ in 0..3 {
        m.record(&read("bob", EventKind::Hit));
    }
    // Reads at lower tiers are not extra requests.
    m.record(&Event {
        key: "bob",
        ..event(EventKind::Hit, tier(1), Duration::ZERO, 0)
    });
    m.record(&read("carol", EventKind::Miss)); // takes the least-counted slot (bob's)
    let top = m.report().top_keys.unwrap();
    assert_eq!(top[0].key, "alice");
    assert_eq!((top[0].requests, top[0].hits), (6, 5));
    assert_eq!(top[1].key, "carol");
    assert_eq!(
        top[1].requests, 4,
        "space-saving: inherits bob's count as an upper bound"
    );
    assert_eq!(top.len(), 2);
    assert!(
        !m.prometheus().contains("alice"),
        "keys never reach Prometheus"
    );
}

#[test]
fn events_the_monitor_cannot_place_are_counted_not_lost() {
    let m = monitor(&ManualClock::new());
    m.record(&event(
        EventKind::Hit,
        EventSource::Tier {
            index: MAX_TIERS,
            name: "deep",
        },
        Duration::ZERO,
        1,
    ));
    m.record(&event(
        EventKind::Hit,
        EventSource::Origin,
        Duration::ZERO,
        1,
    ));
    let r = m.report();
    assert_eq!(r.dropped_events, 2);
    assert_eq!(r.requests, 0);
    assert!(r.tiers.is_empty());
}

#[test]
fn json_round_trips_and_uses_milliseconds() {
    let m = monitor(&ManualClock::new());
    m.record(&event(
        EventKind::Hit,
        tier(0),
        Duration::from_micros(1_500),
        2_048,
    ));
    let r = m.report();
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["requests"], 1);
    assert_eq!(json["bytes_saved"], 2_048);
    assert_eq!(
        json["since"],
        cache_core::ManualClock::START.as_unix_millis()
    );
    assert_eq!(json["tiers"][0]["name"], "memory");
    let avg = json["tiers"][0]["average_latency"].as_f64().unwrap();
    assert!((avg - 1.5).abs() < 1e-9, "{avg}");
    assert!(json["tiers"][0]["latency"]["p99"].as_f64().unwrap() >= 1.5);
    let back: Report = serde_json::from_value(json).unwrap();
    assert_eq!(back.requests, r.requests);
    assert_eq!(back.tiers[0].average_latency, r.tiers[0].average_latency);
}

#[test]
fn display_is_a_table_with_the_summary_line() {
    let m = monitor(&ManualClock::new());
    for i in 0..20u64 {
        let kind = if i == 0 {
            EventKind::Miss
        } else {
            EventKind::Hit
        };
        m.record(&event(
            kind,
            tier(0),
            Duration::from_millis(8),
            if i == 0 { 0 } else { 110_000 },
        ));
    }
    let text = m.report().to_string();
    assert!(
        text.contains("20 requests, hit rate 95.0%, average time 8.00 ms, 2.1 MB saved"),
        "{text}"
    );
    let row = text.lines().find(|l| l.contains("memory")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..6], ["0", "memory", "20", "19", "1", "0"], "{row}");
    assert!(text.contains("origin: 0 loads"), "{text}");
}

#[test]
fn refused_fills_and_resync_flushes_are_counted_and_exported() {
    let clock = ManualClock::new();
    let m = monitor(&clock);
    m.record(&event(EventKind::Refused, tier(0), Duration::ZERO, 0));
    m.record(&event(EventKind::Refused, tier(1), Duration::ZERO, 0));
    m.record(&event(EventKind::Refused, tier(1), Duration::ZERO, 0));
    m.record(&event(
        EventKind::Resync,
        EventSource::Chain,
        Duration::ZERO,
        0,
    ));
    let r = m.report();
    assert_eq!(r.tiers[0].refused_fills, 1);
    assert_eq!(r.tiers[1].refused_fills, 2);
    assert_eq!(r.resyncs, 1);
    assert_eq!(r.dropped_events, 0);
    let text = r.to_prometheus("cache");
    assert!(
        text.contains("cache_tier_refused_fills_total{tier=\"shared\",index=\"1\"} 2"),
        "{text}"
    );
    assert!(text.contains("cache_resyncs_total 1"), "{text}");
}

/// Untimed events (in-process answers the chain did not sample) land in the
/// window bucket of their time, as timed ones do: a window counts each one
/// recorded after its start, however many untimed events came before.
#[test]
fn untimed_events_land_in_the_bucket_of_their_time() {
    let clock = ManualClock::new();
    let m = monitor(&clock);
    let untimed = Event {
        kind: EventKind::Hit,
        source: EventSource::Tier {
            index: 0,
            name: "memory",
        },
        key: "k",
        latency: None,
        bytes: 3,
        error: None,
    };
    for minute in 1..=10u64 {
        m.record(&untimed);
        clock.advance(Duration::from_secs(60));
        m.record(&untimed);
        assert_eq!(
            m.window(Duration::from_secs(60)).requests,
            1,
            "minute {minute}: the window of the last minute holds its one read"
        );
    }
    let r = m.report();
    assert_eq!((r.requests, r.tiers[0].timed_reads), (20, 0));
}
