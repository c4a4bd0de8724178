//! What the app measures, as `GET /api/cache/report` (JSON, for the
//! dashboard), `GET /api/cache/history` (the monitor's time windows, bucket
//! by bucket) and `GET /metrics` (Prometheus text): the monitor's per-tier
//! figures and, with Redis, the invalidation bus's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cache_monitor::Report;
use cache_server::InvalidationBus;
use serde_json::{json, Value};

use super::error::ApiError;
use crate::app::AppState;

/// The window `GET /api/cache/history` covers without `?last=`.
const DEFAULT_LAST: Duration = Duration::from_secs(15 * 60);

pub(super) async fn report(State(state): State<Arc<AppState>>) -> Response {
    let mut report = serde_json::to_value(state.monitor.report()).unwrap_or_default();
    if let (Some(synced), Some(object)) = (state.urls.synced(), report.as_object_mut()) {
        object.insert("bus".to_owned(), bus_report(synced.bus()));
    }
    let mut response = Json(report).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /api/cache/history?last=15m`: the monitor's buckets over the last
/// `last` (`90s`, `15m`, `1h`, `24h`, `1d`, or seconds; default 15 minutes,
/// at most the longest window the monitor keeps), oldest first, the last
/// one partial; none from before the monitor started. Each point has its period (`since`, `until`, Unix ms), the
/// lookups, hits and hit rate, the average access time, and per tier and
/// for the signer (the origin) the reads, hits, misses, failures, and the
/// mean, median and 99th percentile latency (ms; `null` where nothing was
/// timed; a percentile is its histogram bucket's upper bound, at most 3.1 %
/// above the true value).
pub(super) async fn history(
    State(state): State<Arc<AppState>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let monitor = &state.monitor;
    let longest = monitor.longest_window();
    let last = match query.get("last").map(|v| parse_last(v)) {
        None => DEFAULT_LAST.min(longest),
        Some(Ok(last)) if last <= longest => last,
        Some(Ok(_)) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "last={} is longer than the {} s of history this server keeps",
                    query["last"],
                    longest.as_secs()
                ),
            )
            .into_response()
        }
        Some(Err(e)) => return ApiError::new(StatusCode::BAD_REQUEST, e).into_response(),
    };
    // Buckets from before the monitor started (or was reset) cover nothing.
    let points: Vec<Report> = monitor
        .timeline(last)
        .into_iter()
        .filter(|p| p.until > p.since)
        .collect();
    let (since, until) = match (points.first(), points.last()) {
        (Some(first), Some(last)) => (first.since, last.until),
        _ => {
            let now = monitor.report().until;
            (now, now)
        }
    };
    let body = json!({
        "last_ms": millis(last),
        "bucket_ms": millis(monitor.resolution(last)),
        "since": since,
        "until": until,
        "latency_timed_every": cache_core::FAST_PATH_TIMED_EVERY,
        "tiers": points.last().map(|p| p.tiers.iter().map(|t| t.name.clone()).collect::<Vec<_>>()),
        "points": points.iter().map(point).collect::<Vec<_>>(),
    });
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1e3)
}

/// One bucket of `/api/cache/history`.
fn point(r: &Report) -> Value {
    let tiers: serde_json::Map<String, Value> = r
        .tiers
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                json!({
                    "reads": t.reads,
                    "hits": t.hits,
                    "misses": t.misses,
                    "failures": t.read_failures,
                    "hit_rate": t.hit_rate,
                    "average_ms": ms(t.average_latency),
                    "p50_ms": ms(t.latency.as_ref().and_then(|l| l.p50)),
                    "p99_ms": ms(t.latency.as_ref().and_then(|l| l.p99)),
                }),
            )
        })
        .collect();
    let o = &r.origin;
    json!({
        "since": r.since,
        "until": r.until,
        "requests": r.requests,
        "hits": r.hits,
        "hit_rate": r.hit_rate,
        "average_ms": ms(r.average_access_time),
        "tiers": tiers,
        "origin": {
            "loads": o.loads,
            "not_found": o.not_found,
            "errors": o.errors,
            "coalesced": o.coalesced,
            "average_ms": ms(o.average_latency),
            "p50_ms": ms(o.latency.as_ref().and_then(|l| l.p50)),
            "p99_ms": ms(o.latency.as_ref().and_then(|l| l.p99)),
        },
    })
}

/// `90`, `90s`, `15m`, `15min`, `1h`, `1d`: a positive whole number of
/// seconds, minutes, hours or days.
fn parse_last(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "last={text} is not a duration: use a whole number with s, m, h or d, as in 15m or 24h"
        )
    };
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(seconds) {
        Some(0) => Err(format!("last={text} is empty: ask for at least a second")),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Err(bad()),
    }
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = state.monitor.prometheus();
    if let Some(synced) = state.urls.synced() {
        bus_metrics(&mut text, synced.bus());
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// The invalidation bus's figures for `/api/cache/report` (and the
/// dashboard's bus card).
fn bus_report(bus: &InvalidationBus) -> serde_json::Value {
    let s = bus.stats();
    serde_json::json!({
        "link_up": bus.link_is_up(),
        "peers": s.last_peers,
        "published": s.published,
        "received": s.received,
        "unconfirmed": s.unconfirmed,
        "excused": s.excused,
        "resyncs": s.resyncs,
        "link_downs": s.link_downs,
        "reconnects": s.reconnects,
        "sequence_gaps": s.sequence_gaps,
        "apply_failures": s.apply_failures,
    })
}

/// The invalidation bus's figures in Prometheus text.
fn bus_metrics(out: &mut String, bus: &InvalidationBus) {
    use std::fmt::Write as _;
    let s = bus.stats();
    let gauges = [
        (
            "cache_bus_link_up",
            "1 while the invalidation bus hears its own heartbeats",
            u64::from(bus.link_is_up()),
        ),
        (
            "cache_bus_peers",
            "other instances the last confirmed invalidation waited for",
            s.last_peers,
        ),
    ];
    let counters = [
        ("cache_bus_published_total", "invalidations published", s.published),
        ("cache_bus_received_total", "messages delivered to this instance", s.received),
        ("cache_bus_unconfirmed_total", "invalidations a live instance did not confirm in time (returned an error)", s.unconfirmed),
        ("cache_bus_excused_total", "instances an invalidation stopped waiting for (left, ran out, no subscriber, link down)", s.excused),
        ("cache_bus_resyncs_total", "flushes of the in-process tiers because messages may have been lost", s.resyncs),
        ("cache_bus_link_downs_total", "times this instance declared its bus link down", s.link_downs),
        ("cache_bus_reconnects_total", "subscriber reconnections", s.reconnects),
        ("cache_bus_sequence_gaps_total", "invalidations missed (sequence gaps)", s.sequence_gaps),
        ("cache_bus_apply_failures_total", "other instances' invalidations that failed to apply here", s.apply_failures),
        ("cache_bus_foreign_total", "messages of another wire version", s.foreign),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn last_is_a_whole_number_of_units() {
        let s = Duration::from_secs;
        for (text, d) in [
            ("90", s(90)),
            ("90s", s(90)),
            ("15m", s(900)),
            ("15min", s(900)),
            ("1h", s(3_600)),
            ("24h", s(86_400)),
            ("1d", s(86_400)),
        ] {
            assert_eq!(parse_last(text), Ok(d), "{text}");
        }
        for text in [
            "",
            "m",
            "-5m",
            "1.5h",
            "15 m",
            "15M",
            "1w",
            "0",
            "0h",
            "99999999999999999999",
        ] {
            let e = parse_last(text).unwrap_err();
            assert!(e.starts_with(&format!("last={text} is ")), "{text}: {e}");
        }
        assert!(parse_last(&format!("{}d", u64::MAX / 2)).is_err());
    }
}
