//! The in-page monitor: per-tier counters from `cache_monitor::Monitor` (the
//! chain's observer), the page's own per-picture timings, a docked panel
//! (beside the list, never over it; closable) with a row for each of the five
//! tiers and an SVG chart of every lookup's time per tier, the summary line
//! of the friend list, and the console API `cacheMonitor`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::rc::Rc;

use cache_monitor::{Covers, Report};
use js_sys::{Array, Object, Promise, Reflect};
use serde::Serialize;
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::Event;

use crate::app::{app, by_id, App};
use crate::by_name::ByName;
use crate::chart;

/// Chart points kept (the oldest are dropped).
const MAX_SAMPLES: usize = 2_000;
/// Display order and colours of the tiers.
const TIERS: [(&str, &str); 5] = [
    ("memory", "#2e7d32"),
    ("local_storage", "#1565c0"),
    ("indexed_db", "#6a1b9a"),
    ("cache_api", "#ef6c00"),
    ("network", "#c62828"),
];

/// One picture drawn by a `<cached-profile-picture>`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Render {
    pub(crate) user: String,
    pub(crate) tier: String,
    /// The tier lookup.
    pub(crate) lookup_ms: f64,
    /// From the start of the lookup until the image was decoded.
    pub(crate) shown_ms: f64,
    pub(crate) natural_width: u32,
    /// Whether the element is in the friend list.
    #[serde(skip)]
    pub(crate) in_list: bool,
    /// `performance.now()` when it was drawn.
    pub(crate) at_ms: f64,
}

/// One showing of the friend list.
#[derive(Debug, Default, Serialize)]
struct ListRun {
    run: u32,
    #[serde(skip)]
    started_ms: f64,
    #[serde(skip)]
    pending: HashSet<String>,
    size: usize,
    complete: bool,
    /// Until the last of its pictures was decoded.
    list_ms: Option<f64>,
    /// How many pictures each tier served.
    tiers: ByName<u32>,
    pictures: ByName<Render>,
}

/// A JSON object, in name order.
impl<V: Serialize> Serialize for ByName<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// What the page recorded beside the chain's monitor.
#[derive(Debug, Default)]
pub(crate) struct Records {
    list: ListRun,
    /// The latest render of every user shown.
    latest: ByName<(Render, u32)>,
    samples: Vec<Render>,
}

impl Records {
    pub(crate) fn start_list(&mut self, users: Vec<String>, now: f64) {
        self.list = ListRun {
            run: self.list.run + 1,
            started_ms: now,
            size: users.len(),
            pending: users.into_iter().collect(),
            ..ListRun::default()
        };
    }

    fn record(&mut self, r: Render) {
        let renders = self.latest.get(&r.user).map_or(0, |(_, n)| *n) + 1;
        self.latest.insert(&r.user, (r.clone(), renders));
        if r.in_list && self.list.pending.remove(&r.user) {
            *self.list.tiers.get_or(&r.tier, || 0) += 1;
            self.list.pictures.insert(&r.user, r.clone());
            if self.list.pending.is_empty() {
                self.list.complete = true;
                self.list.list_ms = Some(r.at_ms - self.list.started_ms);
            }
        }
        if self.samples.len() == MAX_SAMPLES {
            self.samples.remove(0);
        }
        self.samples.push(r);
    }
}

/// A `<cached-profile-picture>` drew a picture.
pub(crate) fn rendered(r: Render) {
    let Some(app) = app() else { return };
    let list_done = {
        let mut records = app.records.borrow_mut();
        let was = records.list.complete;
        records.record(r);
        !was && records.list.complete
    };
    if list_done {
        remember_list(&app);
        show_summary(&app);
    }
    if overlay_open(&app) {
        draw_overlay(&app);
    }
}

/// sessionStorage key of this tab's list times, across reloads.
const HISTORY_KEY: &str = "profile-web:lists";
/// How many list times the history line shows.
const HISTORY_LEN: usize = 8;

fn session_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.session_storage().ok().flatten()
}

/// This tab's earlier list times (`[[ms, "tiers"], ...]`), oldest first;
/// empty when sessionStorage is unavailable or holds something else.
fn list_history() -> Vec<(f64, String)> {
    session_storage()
        .and_then(|s| s.get_item(HISTORY_KEY).ok().flatten())
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// Adds the list run that just completed to this tab's history.
fn remember_list(app: &App) {
    let Some(storage) = session_storage() else {
        return;
    };
    let records = app.records.borrow();
    let Some(ms) = records.list.list_ms else {
        return;
    };
    let tiers: Vec<String> = records
        .list
        .tiers
        .iter()
        .map(|(t, n)| {
            if *n as usize == records.list.size {
                t.clone()
            } else {
                format!("{t} {n}")
            }
        })
        .collect();
    let mut history = list_history();
    history.push((ms, tiers.join(", ")));
    let start = history.len().saturating_sub(HISTORY_LEN);
    if let Ok(text) = serde_json::to_string(&history[start..]) {
        // A full quota only loses the history line.
        let _ = storage.set_item(HISTORY_KEY, &text);
    }
}

/// The summary line under the list, and this tab's list times so far.
pub(crate) fn show_summary(app: &App) {
    let Some(line) = by_id(&app.document, "summary") else {
        return;
    };
    let records = app.records.borrow();
    let list = &records.list;
    let text = match list.list_ms {
        Some(ms) if list.complete => {
            let tiers: Vec<String> = TIERS
                .iter()
                .filter_map(|(t, _)| list.tiers.get(t).map(|n| format!("{t} {n}")))
                .chain(
                    list.tiers
                        .iter()
                        .filter(|(t, _)| !TIERS.iter().any(|(k, _)| k == t))
                        .map(|(t, n)| format!("{t} {n}")),
                )
                .collect();
            format!(
                "{} pictures in {ms:.1} ms (until the last one was decoded): {}",
                list.size,
                tiers.join(", ")
            )
        }
        _ => format!("loading {} pictures…", list.size),
    };
    line.set_text_content(Some(&text));
    let _ = line.set_attribute("data-run", &list.run.to_string());
    let _ = line.set_attribute("data-complete", &list.complete.to_string());
    if let Some(history) = by_id(&app.document, "history") {
        let times: Vec<String> = list_history()
            .iter()
            .map(|(ms, tiers)| format!("{ms:.0} ms ({tiers})"))
            .collect();
        history.set_text_content(Some(&if times.is_empty() {
            String::new()
        } else {
            format!(
                "The whole list in this tab so far: {}. (The original design claimed 17.5 s → 50 ms.)",
                times.join(" → ")
            )
        }));
    }
}

fn ms(d: Option<std::time::Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1_000.0)
}

/// One row of the monitor's table: a tier of [`TIERS`], zeros when it has
/// answered nothing yet.
struct Row {
    tier: &'static str,
    /// Whether the chain has this tier (a storage the browser refused is
    /// left out of the chain); the network always is.
    available: bool,
    hits: u64,
    misses: u64,
    errors: u64,
    hit_rate: Option<f64>,
    avg_ms: Option<f64>,
    /// Reads whose latency was measured (the mean is over these).
    timed: u64,
    /// Bytes served from this tier (for the network: bytes loaded).
    bytes: u64,
}

/// The five tiers in the chain's order, each with its counts since the page
/// loaded (or `cacheMonitor.reset()`), zeros included.
fn rows(app: &App, r: &Report) -> Vec<Row> {
    let chain = app.pictures.tier_names();
    TIERS
        .iter()
        .map(|(tier, _)| {
            if *tier == "network" {
                let o = &r.origin;
                return Row {
                    tier,
                    available: true,
                    hits: o.loads,
                    misses: o.not_found,
                    errors: o.errors,
                    hit_rate: None,
                    avg_ms: ms(o.average_latency),
                    timed: o.loads + o.not_found + o.errors,
                    bytes: o.bytes_loaded,
                };
            }
            let stats = r.tiers.iter().find(|t| t.name == *tier);
            Row {
                tier,
                available: chain.contains(tier),
                hits: stats.map_or(0, |t| t.hits),
                misses: stats.map_or(0, |t| t.misses),
                errors: stats.map_or(0, |t| t.errors + t.timeouts),
                hit_rate: stats.and_then(|t| t.hit_rate),
                avg_ms: stats.and_then(|t| ms(t.average_latency)),
                timed: stats.map_or(0, |t| t.timed_reads),
                bytes: stats.map_or(0, |t| t.bytes_served),
            }
        })
        .collect()
}

/// What a report covers and how its latency was sampled, as JSON.
fn period_and_sampling(r: &Report) -> (Value, Value) {
    let covers = if r.period.covers == Covers::SinceReset {
        "since cacheMonitor.reset()"
    } else {
        "since the page loaded"
    };
    let timed: u64 = r.tiers.iter().map(|t| t.timed_reads).sum();
    let reads: u64 = r.tiers.iter().map(|t| t.reads).sum();
    (
        json!({
            "covers": covers,
            "since": r.since,
            "until": r.until,
            "length_ms": r.period.length.as_millis() as u64,
        }),
        json!({
            "counts": "exact",
            "latency_timed_every": r.latency_timed_every,
            "rule": format!(
                "the memory tier's answers are timed one in {} (they answer without waiting); \
                 every other tier call and every network load is timed",
                r.latency_timed_every
            ),
            "timed_reads": timed,
            "reads": reads,
            "lookup_times": "every lookup of a picture is timed by the page (list and chart)",
        }),
    )
}

/// The report as JSON: what it covers and how latency was sampled, the
/// chain's counters for every tier (zeros included), the network, the
/// latest list run, the latest render of every user, and where the page
/// came from.
fn report(app: &App) -> Value {
    let r = app.monitor.report();
    let (period, sampling) = period_and_sampling(&r);
    let tiers: Vec<Value> = rows(app, &r)
        .iter()
        .filter(|row| row.tier != "network")
        .map(|row| {
            json!({
                "tier": row.tier,
                "available": row.available,
                "hits": row.hits,
                "misses": row.misses,
                "errors": row.errors,
                "hit_rate": row.hit_rate,
                "avg_ms": row.avg_ms,
                "timed_reads": row.timed,
                "bytes_saved": row.bytes,
            })
        })
        .collect();
    let records = app.records.borrow();
    let pictures: serde_json::Map<String, Value> = records
        .latest
        .iter()
        .map(|(user, (render, n))| {
            let mut v = serde_json::to_value(render).unwrap_or(Value::Null);
            v["renders"] = json!(n);
            (user.clone(), v)
        })
        .collect();
    let page_source = app
        .document
        .body()
        .and_then(|b| b.get_attribute("data-page-source"));
    json!({
        "period": period,
        "sampling": sampling,
        "requests": r.requests,
        "hits": r.hits,
        "hit_rate": r.hit_rate,
        "average_ms": ms(r.average_access_time),
        "bytes_saved": r.bytes_saved,
        "tiers": tiers,
        "network": {
            "loads": r.origin.loads,
            "not_found": r.origin.not_found,
            "errors": r.origin.errors,
            "avg_ms": ms(r.origin.average_latency),
            "bytes": r.origin.bytes_loaded,
        },
        "list": serde_json::to_value(&records.list).unwrap_or(Value::Null),
        "pictures": pictures,
        "page_source": page_source,
        "clock_offset_ms": app.clock_offset.as_millis() as u64,
    })
}

fn to_js(v: &Value) -> JsValue {
    js_sys::JSON::parse(&v.to_string()).unwrap_or(JsValue::NULL)
}

fn overlay_open(app: &App) -> bool {
    by_id(&app.document, "monitor").is_some_and(|m| !m.has_attribute("hidden"))
}

fn fmt_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / 1_048_576.0),
        n if n >= 1 << 10 => format!("{:.1} kB", n as f64 / 1_024.0),
        n => format!("{n} B"),
    }
}

/// A mean time in its unit: `850 ns`, `4.2 µs`, `310 µs`, `1.25 ms`, `2.10 s`;
/// `< 0.1 ms` for zero (`performance.now()` counts in steps of 0.1 ms in a
/// page that is not cross-origin isolated, so a quick answer reads 0).
fn fmt_ms(ms: f64) -> String {
    match ms {
        m if m <= 0.0 => "< 0.1 ms".to_owned(),
        m if m < 1e-3 => format!("{:.0} ns", m * 1e6),
        m if m < 1e-2 => format!("{:.1} µs", m * 1e3),
        m if m < 1.0 => format!("{:.0} µs", m * 1e3),
        m if m < 1e3 => format!("{m:.2} ms"),
        m => format!("{:.2} s", m / 1e3),
    }
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "–".to_owned())
}

/// The docked panel: a row for each of the five tiers (zeros included),
/// what the figures cover and how they were sampled, and the chart of the
/// page's lookup times across the panel's width.
fn draw_overlay(app: &App) {
    let Some(panel) = by_id(&app.document, "monitor-body") else {
        return;
    };
    let r = app.monitor.report();
    let mut html = String::from(
        "<table><thead><tr><th>tier</th><th>hits</th><th>misses</th><th>hit rate</th>\
         <th>avg time</th><th>bytes saved</th></tr></thead><tbody>",
    );
    for row in rows(app, &r) {
        let network = row.tier == "network";
        let _ = write!(
            html,
            "<tr data-tier=\"{tier}\" data-hits=\"{hits}\" data-misses=\"{misses}\"{off}>\
             <td><span class=\"dot\" style=\"background:{colour}\"></span>{tier}{note}</td>\
             <td>{hits}</td><td>{misses}</td><td>{rate}</td><td>{avg}</td><td>{bytes}</td></tr>",
            tier = row.tier,
            hits = row.hits,
            misses = row.misses,
            off = if row.available { "" } else { " class=\"off\"" },
            colour = colour(row.tier),
            note = if row.available { "" } else { " (unavailable)" },
            rate = or_dash(row.hit_rate.map(|h| format!("{:.0}%", h * 100.0))),
            avg = or_dash(row.avg_ms.map(fmt_ms)),
            bytes = if network {
                "–".to_owned()
            } else {
                fmt_bytes(row.bytes)
            },
        );
    }
    html.push_str("</tbody></table>");
    let timed: u64 = r.tiers.iter().map(|t| t.timed_reads).sum();
    let reads: u64 = r.tiers.iter().map(|t| t.reads).sum();
    let covers = if r.period.covers == Covers::SinceReset {
        "since reset"
    } else {
        "since the page loaded"
    };
    let _ = write!(
        html,
        "<p>{} lookups, hit rate {}, {} not downloaded; {covers} ({:.1} s).</p>\
         <p class=\"muted\" id=\"monitor-sampling\">Counts are exact. Avg time: every tier call \
         that waits and every network load is timed, the memory tier's answers one in {} \
         ({timed} of {reads} reads timed). The chart: every lookup, timed by the page.</p>",
        r.requests,
        or_dash(r.hit_rate.map(|h| format!("{:.1}%", h * 100.0))),
        fmt_bytes(r.bytes_saved),
        r.period.length.as_secs_f64(),
        r.latency_timed_every,
    );
    // The chart fills the panel's content box.
    let width = f64::from(panel.client_width()).max(240.0);
    let records = app.records.borrow();
    let points: Vec<chart::Point<'_>> = records
        .samples
        .iter()
        .map(|s| chart::Point {
            tier: &s.tier,
            ms: s.lookup_ms,
        })
        .collect();
    html.push_str(&chart::latency_chart(&points, &TIERS, width));
    drop(records);
    panel.set_inner_html(&html);
}

fn colour(tier: &str) -> &'static str {
    TIERS
        .iter()
        .find(|(t, _)| *t == tier)
        .map_or("#555", |(_, c)| c)
}

fn toggle(app: &App) {
    let Some(overlay) = by_id(&app.document, "monitor") else {
        return;
    };
    let open = overlay.has_attribute("hidden");
    if open {
        let _ = overlay.remove_attribute("hidden");
        draw_overlay(app);
    } else {
        let _ = overlay.set_attribute("hidden", "");
    }
    if let Some(button) = by_id(&app.document, "monitor-toggle") {
        let _ = button.set_attribute("aria-expanded", &open.to_string());
    }
}

/// Prints the report's tiers as a table and returns the whole report.
fn console_report(app: &App) -> JsValue {
    let report = report(app);
    let rows = Array::new();
    if let Some(tiers) = report["tiers"].as_array() {
        for t in tiers {
            rows.push(&to_js(t));
        }
    }
    let n = &report["network"];
    rows.push(&to_js(&json!({
        "tier": "network",
        "available": true,
        "hits": n["loads"],
        "misses": n["not_found"],
        "errors": n["errors"],
        "avg_ms": n["avg_ms"],
    })));
    web_sys::console::table_1(&rows);
    to_js(&report)
}

/// What each tier holds for `user` (a promise of `[{tier, url, bytes, error}]`,
/// bytes as an array of numbers or null).
fn peek(app: Rc<App>, user: String) -> Promise {
    wasm_bindgen_futures::future_to_promise(async move {
        let held = app.pictures.peek(&user).await;
        let rows: Vec<Value> = held
            .into_iter()
            .map(|t| {
                json!({
                    "tier": t.tier,
                    "url": t.picture.as_ref().map(|p| p.url.clone()),
                    "bytes": t.picture.as_ref().and_then(|p| p.bytes.as_ref().map(|b| b.to_vec())),
                    "error": t.error,
                })
            })
            .collect();
        Ok(to_js(&Value::Array(rows)))
    })
}

/// The toggle button, the `m` key, and `window.cacheMonitor`.
/// `cacheMonitor.serverEvents()`: the live update stream's state.
fn server_events(app: &App) -> JsValue {
    let Some(events) = &app.events else {
        return JsValue::NULL;
    };
    let stats = events.stats();
    let state = serde_json::json!({
        "open": events.is_open(),
        "last_event_id": events.last_event_id(),
        "opened": stats.opened,
        "invalidations": stats.invalidations,
        "resets": stats.resets,
        "gaps": stats.gaps,
        "malformed": stats.malformed,
    });
    js_sys::JSON::parse(&state.to_string()).unwrap_or(JsValue::NULL)
}

pub(crate) fn install(app: &Rc<App>) -> Result<(), JsValue> {
    let window = web_sys::window().ok_or("no window")?;
    if let Some(button) = by_id(&app.document, "monitor-toggle") {
        let a = app.clone();
        let f = Closure::<dyn FnMut(Event)>::new(move |_| toggle(&a));
        button.add_event_listener_with_callback("click", f.as_ref().unchecked_ref())?;
        f.forget();
    }
    let a = app.clone();
    let key =
        Closure::<dyn FnMut(web_sys::KeyboardEvent)>::new(move |e: web_sys::KeyboardEvent| {
            let typing = e
                .target()
                .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
                .is_some_and(|t| t.tag_name() == "INPUT");
            if e.key() == "m" && !typing {
                toggle(&a);
            }
        });
    window.add_event_listener_with_callback("keydown", key.as_ref().unchecked_ref())?;
    key.forget();
    // Redraw the open overlay every second (the table's averages move).
    let a = app.clone();
    let tick = Closure::<dyn FnMut()>::new(move || {
        if overlay_open(&a) {
            draw_overlay(&a);
        }
    });
    window.set_interval_with_callback_and_timeout_and_arguments_0(
        tick.as_ref().unchecked_ref(),
        1_000,
    )?;
    tick.forget();

    let api = Object::new();
    let a = app.clone();
    let report_fn = Closure::<dyn Fn() -> JsValue>::new(move || console_report(&a));
    let a = app.clone();
    let reset_fn = Closure::<dyn Fn()>::new(move || {
        a.monitor.reset();
        let mut records = a.records.borrow_mut();
        records.samples.clear();
        records.latest.clear();
        drop(records);
        if overlay_open(&a) {
            draw_overlay(&a);
        }
    });
    let a = app.clone();
    let peek_fn = Closure::<dyn Fn(String) -> Promise>::new(move |user| peek(a.clone(), user));
    let a = app.clone();
    let toggle_fn = Closure::<dyn Fn()>::new(move || toggle(&a));
    Reflect::set(&api, &"report".into(), report_fn.as_ref())?;
    Reflect::set(&api, &"reset".into(), reset_fn.as_ref())?;
    Reflect::set(&api, &"peek".into(), peek_fn.as_ref())?;
    Reflect::set(&api, &"toggle".into(), toggle_fn.as_ref())?;
    let a = app.clone();
    let events_fn = Closure::<dyn Fn() -> JsValue>::new(move || server_events(&a));
    Reflect::set(&api, &"serverEvents".into(), events_fn.as_ref())?;
    events_fn.forget();
    report_fn.forget();
    reset_fn.forget();
    peek_fn.forget();
    toggle_fn.forget();
    Reflect::set(&window, &"cacheMonitor".into(), &api)?;
    Ok(())
}
