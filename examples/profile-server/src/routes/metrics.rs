//! What the app measures, as `GET /api/cache/report` (JSON, for the
//! dashboard) and `GET /metrics` (Prometheus text): the monitor's per-tier
//! figures and, with Redis, the invalidation bus's.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cache_server::InvalidationBus;

use crate::app::AppState;

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
