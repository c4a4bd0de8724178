//! The monitor's history on a virtual clock: the fine ring and the coarser
//! long-window rings keep what they promise and no more, and every report
//! states the period it covers and how latency was sampled.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_core::{Clock, Event, EventKind, EventSource, ManualClock};
use cache_monitor::{Covers, Monitor, Report};

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3_600);

fn hit() -> Event<'static> {
    Event {
        kind: EventKind::Hit,
        source: EventSource::Tier {
            index: 0,
            name: "memory",
        },
        key: "k",
        latency: Some(Duration::from_micros(3)),
        bytes: 10,
        error: None,
    }
}

/// The server's shape: 15 minutes in 10 s buckets, an hour by the minute, a
/// day in five-minute buckets. The clock starts on a five-minute boundary, so
/// the numbers below do not depend on where in a bucket the test began.
fn history(clock: &ManualClock) -> Monitor {
    let start = clock.now().as_unix_millis();
    clock.advance(Duration::from_millis(300_000 - start % 300_000));
    Monitor::builder()
        .clock(clock.clone())
        .window(SEC * 10, 90)
        .long_window(MIN, 60)
        .long_window(MIN * 5, 288)
        .build()
}

fn record(m: &Monitor, n: u64) {
    for _ in 0..n {
        m.record(&hit());
    }
}

fn total(points: &[Report]) -> u64 {
    points.iter().map(|r| r.requests).sum()
}

#[test]
fn long_windows_keep_the_last_hour_and_day_after_the_fine_ring_forgot() {
    let clock = ManualClock::new();
    let m = history(&clock);
    // One read at the start, then three reads a minute for 30 minutes.
    record(&m, 1);
    for _ in 0..30 {
        clock.advance(MIN);
        record(&m, 3);
    }
    clock.advance(SEC * 5);
    assert_eq!(m.report().requests, 91);
    // The last 15 minutes, from the fine ring: 10 s buckets, 15 minutes' reads.
    assert_eq!(m.resolution(MIN * 15), SEC * 10);
    let recent = m.timeline(MIN * 15);
    assert_eq!(recent.len(), 90);
    assert!(recent.iter().all(|r| r.period.bucket == Some(SEC * 10)));
    assert_eq!(total(&recent), 45);
    assert_eq!(m.window(MIN * 15).requests, 45);
    // The last hour, from the one-minute ring: everything since start, which
    // the fine ring no longer holds.
    assert_eq!(m.resolution(HOUR), MIN);
    let hour = m.timeline(HOUR);
    assert_eq!(hour.len(), 60);
    assert_eq!(total(&hour), 91);
    assert_eq!(m.window(HOUR).requests, 91);
    // Each minute's bucket holds its three reads, the first minute its one.
    let counts: Vec<u64> = hour[29..].iter().map(|r| r.requests).collect();
    assert_eq!(counts[0], 1);
    assert!(counts[1..].iter().all(|&n| n == 3), "{counts:?}");
    // From the start on, buckets are contiguous and end now (those before
    // the start are empty, of no length).
    assert!(hour[..29]
        .iter()
        .all(|r| r.since == r.until && r.requests == 0));
    for pair in hour[29..].windows(2) {
        assert_eq!(pair[0].until, pair[1].since);
    }
    assert_eq!(hour.last().unwrap().until, clock.now());

    // Two hours on, the hour ring has forgotten it, the day ring has not.
    clock.advance(HOUR * 2);
    record(&m, 2);
    assert_eq!(m.window(HOUR).requests, 2);
    assert_eq!(total(&m.timeline(HOUR)), 2);
    assert_eq!(m.resolution(HOUR * 24), MIN * 5);
    let day = m.timeline(HOUR * 24);
    assert_eq!(day.len(), 288);
    assert_eq!(total(&day), 93);
    assert_eq!(m.window(HOUR * 24).requests, 93);

    // A day and more later only what the day ring spans is left; a longer
    // window asks the ring that spans the most.
    clock.advance(HOUR * 25);
    record(&m, 4);
    assert_eq!(m.window(HOUR * 24).requests, 4);
    assert_eq!(m.window(HOUR * 24 * 7).requests, 4);
    assert_eq!(m.longest_window(), HOUR * 24);
    assert_eq!(m.report().requests, 97);
}

#[test]
fn reports_state_their_period_and_latency_sampling() {
    let clock = ManualClock::new();
    let m = history(&clock);
    let start = clock.now();
    record(&m, 2);
    clock.advance(SEC * 95);

    let r = m.report();
    assert_eq!(r.period.covers, Covers::SinceStart);
    assert_eq!((r.since, r.until), (start, clock.now()));
    assert_eq!((r.period.length, r.period.bucket), (SEC * 95, None));
    assert_eq!(r.latency_timed_every, cache_core::FAST_PATH_TIMED_EVERY);
    let text = r.to_string();
    assert!(
        text.starts_with("cache report since start, over 1 min 35 s: 2 requests"),
        "{text}"
    );
    let sampling = format!(
        "in-process answers one in {}",
        cache_core::FAST_PATH_TIMED_EVERY
    );
    assert!(text.contains(&sampling), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["period"]["covers"], "since_start");
    assert_eq!(json["period"]["length"], 95_000.0);
    assert_eq!(json["period"]["bucket"], serde_json::Value::Null);
    assert_eq!(
        json["latency_timed_every"],
        cache_core::FAST_PATH_TIMED_EVERY
    );
    let back: Report = serde_json::from_value(json).unwrap();
    assert_eq!(back.period, r.period);

    // A window of a monitor younger than the window starts at its start.
    let w = m.window(MIN * 15);
    assert_eq!(w.period.covers, Covers::Window);
    assert_eq!((w.since, w.period.length), (start, SEC * 95));
    assert_eq!(w.period.bucket, Some(SEC * 10));
    assert!(
        w.to_string()
            .starts_with("cache report over the last 1 min 35 s (10 s buckets)"),
        "{w}"
    );
    // Older, it is the current bucket (5 s of it) and the 89 whole buckets
    // before: 14 min 55 s.
    clock.advance(MIN * 20);
    let w = m.window(MIN * 15);
    assert_eq!(w.period.length, SEC * 895);
    assert_eq!(w.period.length, w.until.duration_since(w.since));
    assert!(
        w.to_string()
            .contains("over the last 14 min 55 s (10 s buckets)"),
        "{w}"
    );
    let w = m.window(HOUR * 24);
    assert_eq!(
        (w.period.length, w.period.bucket),
        (SEC * 1_295, Some(MIN * 5))
    );
    assert_eq!(w.requests, 2);

    let points = m.timeline(MIN);
    assert_eq!(points.len(), 6);
    assert!(points
        .iter()
        .all(|p| p.period.covers == Covers::Bucket && p.period.bucket == Some(SEC * 10)));
    assert_eq!(points[0].period.length, SEC * 10);
    assert_eq!(points[5].period.length, SEC * 5);
    assert!(points[5]
        .to_string()
        .starts_with("cache report of one 10 s bucket (5 s)"));

    m.reset();
    clock.advance(SEC * 4);
    let r = m.report();
    assert_eq!(
        (r.period.covers, r.period.length),
        (Covers::SinceReset, SEC * 4)
    );
    assert!(
        r.to_string()
            .starts_with("cache report since reset, over 4 s"),
        "{r}"
    );
    // A window reaching back before the reset starts at the reset.
    let w = m.window(MIN * 15);
    assert_eq!(
        (w.period.covers, w.period.length),
        (Covers::Window, SEC * 4)
    );
}

/// A chain with the default clock hands the monitor the time it read for a
/// hit (`Observer::on_event_at`): a monitor on the default clock places the
/// hit by it (here three minutes ahead, so the ring moves on three buckets);
/// one with a clock of its own reads that clock instead.
#[test]
fn a_hit_is_placed_by_the_chains_time_only_on_the_default_clock() {
    use cache_core::Observer;

    let m = Monitor::builder().window(MIN, 60).build();
    m.record(&hit());
    let ahead = cache_core::SystemClock.now().saturating_add(MIN * 3);
    m.on_event_at(&hit(), ahead);
    let points = m.timeline(MIN * 10);
    assert_eq!(total(&points), 2, "{points:?}");
    assert!(
        points.len() >= 4,
        "the hit three minutes ahead opened its own bucket: {points:?}"
    );
    assert_eq!(points.last().unwrap().requests, 1, "{points:?}");

    let clock = ManualClock::new();
    let own = Monitor::builder()
        .clock(clock.clone())
        .window(MIN, 60)
        .build();
    own.record(&hit());
    own.on_event_at(&hit(), clock.now().saturating_add(MIN * 3));
    let points = own.timeline(MIN * 10);
    assert_eq!(total(&points), 2, "{points:?}");
    assert_eq!(
        points.last().unwrap().requests,
        2,
        "the monitor's own clock placed it, in the bucket of the first: {points:?}"
    );
}
