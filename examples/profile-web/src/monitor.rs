//! The in-page monitor: per-tier counters from `cache_monitor::Monitor` (the
//! chain's observer), the page's own per-picture timings, a toggleable overlay
//! with an SVG chart of lookup latency per tier over time, the summary line of
//! the friend list, and the console API `cacheMonitor`.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::rc::Rc;

use js_sys::{Array, Object, Promise, Reflect};
use serde::Serialize;
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::Event;

use crate::app::{app, by_id, App};

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
    tiers: BTreeMap<String, u32>,
    pictures: BTreeMap<String, Render>,
}

/// What the page recorded beside the chain's monitor.
#[derive(Debug, Default)]
pub(crate) struct Records {
    list: ListRun,
    /// The latest render of every user shown.
    latest: BTreeMap<String, (Render, u32)>,
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
        self.latest.insert(r.user.clone(), (r.clone(), renders));
        if r.in_list && self.list.pending.remove(&r.user) {
            *self.list.tiers.entry(r.tier.clone()).or_default() += 1;
            self.list.pictures.insert(r.user.clone(), r.clone());
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
                .filter_map(|(t, _)| list.tiers.get(*t).map(|n| format!("{t} {n}")))
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

/// The report as JSON: the chain's counters per tier, the network, the latest
/// list run, the latest render of every user, and where the page came from.
fn report(app: &App) -> Value {
    let r = app.monitor.report();
    let tiers: Vec<Value> = r
        .tiers
        .iter()
        .map(|t| {
            json!({
                "tier": t.name,
                "hits": t.hits,
                "misses": t.misses,
                "errors": t.errors + t.timeouts,
                "hit_rate": t.hit_rate,
                "avg_ms": ms(t.average_latency),
                "bytes_saved": t.bytes_served,
            })
        })
        .collect();
    let records = app.records.borrow();
    let pictures: BTreeMap<&String, Value> = records
        .latest
        .iter()
        .map(|(user, (render, n))| {
            let mut v = serde_json::to_value(render).unwrap_or(Value::Null);
            v["renders"] = json!(n);
            (user, v)
        })
        .collect();
    let page_source = app
        .document
        .body()
        .and_then(|b| b.get_attribute("data-page-source"));
    json!({
        "requests": r.requests,
        "hits": r.hits,
        "hit_rate": r.hit_rate,
        "average_ms": ms(r.average_access_time),
        "bytes_saved": r.bytes_saved,
        "tiers": tiers,
        "network": {
            "loads": r.origin.loads,
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

/// The overlay: a table per tier and the latency chart.
fn draw_overlay(app: &App) {
    let Some(panel) = by_id(&app.document, "monitor-body") else {
        return;
    };
    let r = app.monitor.report();
    let mut html = String::from(
        "<table><thead><tr><th>tier</th><th>hits</th><th>hit rate</th>\
         <th>avg time</th><th>bytes saved</th></tr></thead><tbody>",
    );
    for t in &r.tiers {
        let _ = write!(
            html,
            "<tr data-tier=\"{}\"><td><span class=\"dot\" style=\"background:{}\"></span>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            t.name,
            colour(&t.name),
            t.name,
            t.hits,
            t.hit_rate
                .map_or("–".to_owned(), |h| format!("{:.0}%", h * 100.0)),
            ms(t.average_latency).map_or("–".to_owned(), |m| format!("{m:.2} ms")),
            fmt_bytes(t.bytes_served),
        );
    }
    let _ = write!(
        html,
        "<tr data-tier=\"network\"><td><span class=\"dot\" style=\"background:{}\"></span>network</td>\
         <td>{}</td><td>–</td><td>{}</td><td>–</td></tr></tbody></table>",
        colour("network"),
        r.origin.loads,
        ms(r.origin.average_latency).map_or("–".to_owned(), |m| format!("{m:.2} ms")),
    );
    let _ = write!(
        html,
        "<p>{} lookups, hit rate {}, {} not downloaded</p>",
        r.requests,
        r.hit_rate
            .map_or("–".to_owned(), |h| format!("{:.1}%", h * 100.0)),
        fmt_bytes(r.bytes_saved)
    );
    html.push_str(&chart(&app.records.borrow().samples));
    panel.set_inner_html(&html);
}

fn colour(tier: &str) -> &'static str {
    TIERS
        .iter()
        .find(|(t, _)| *t == tier)
        .map_or("#555", |(_, c)| c)
}

/// Lookup latency per tier over time, as SVG: x is the time since the page
/// loaded, y the lookup time on a log scale (0.01 ms to 10 s).
fn chart(samples: &[Render]) -> String {
    const W: f64 = 520.0;
    const H: f64 = 200.0;
    const LEFT: f64 = 48.0;
    const BOTTOM: f64 = 24.0;
    let (lo, hi) = (-2.0_f64, 4.0_f64); // log10(ms)
    let t_max = samples.iter().map(|s| s.at_ms).fold(1_000.0_f64, f64::max);
    let x = |t: f64| LEFT + (t / t_max) * (W - LEFT - 8.0);
    let y = |ms: f64| {
        let l = ms.max(0.01).log10().clamp(lo, hi);
        8.0 + (hi - l) / (hi - lo) * (H - BOTTOM - 8.0)
    };
    let mut svg = format!(
        "<svg id=\"latency-chart\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" \
         role=\"img\" aria-label=\"lookup latency per tier over time\">"
    );
    for p in -2..=4 {
        let v = 10f64.powi(p);
        let label = match p {
            ..0 => format!("{v} ms"),
            0..3 => format!("{v:.0} ms"),
            _ => format!("{:.0} s", v / 1_000.0),
        };
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{label}</text>",
            W - 8.0,
            LEFT - 4.0,
            y(v) + 3.0,
            y = y(v),
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{:.1} s since load</text>",
        W - 8.0,
        H - 6.0,
        t_max / 1_000.0
    );
    for (tier, colour) in TIERS {
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.tier == tier)
            .map(|s| (x(s.at_ms), y(s.lookup_ms)))
            .collect();
        if points.is_empty() {
            continue;
        }
        let line: Vec<String> = points
            .iter()
            .map(|(a, b)| format!("{a:.1},{b:.1}"))
            .collect();
        let _ = write!(
            svg,
            "<g class=\"series\" data-tier=\"{tier}\"><polyline fill=\"none\" stroke=\"{colour}\" \
             stroke-opacity=\"0.5\" points=\"{}\"/>",
            line.join(" ")
        );
        for (a, b) in &points {
            let _ = write!(
                svg,
                "<circle cx=\"{a:.1}\" cy=\"{b:.1}\" r=\"2.5\" fill=\"{colour}\"/>"
            );
        }
        svg.push_str("</g>");
    }
    svg.push_str("</svg>");
    svg
}

fn toggle(app: &App) {
    let Some(overlay) = by_id(&app.document, "monitor") else {
        return;
    };
    if overlay.has_attribute("hidden") {
        let _ = overlay.remove_attribute("hidden");
        draw_overlay(app);
    } else {
        let _ = overlay.set_attribute("hidden", "");
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
    let mut network = report["network"].clone();
    network["tier"] = json!("network");
    rows.push(&to_js(&network));
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
