//! `ServerInvalidations` in headless Chromium, on the real `ProfilePictures`
//! chain (memory, LocalStorage, IndexedDB, Cache API): events from a real
//! `EventSource` (on a `blob:` URL holding the stream's text) and real
//! `MessageEvent`s passed to `dispatch`; forwarding over a real
//! `BroadcastChannel` to a second chain on the same channel (a second tab:
//! a channel delivers to every other object of its name, in this page too).
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]

use cache_browser::{use_profile_picture, ProfilePictures, ServerInvalidations};
use cache_core::ManualClock;
use std::cell::Cell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;
use web_sys::{MessageEvent, MessageEventInit};

mod support;
use support::{pictures, sleep, unique, until};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(inline_js = r#"
export function stream_url(text) {
  return URL.createObjectURL(new Blob([text], { type: "text/event-stream" }));
}
"#)]
extern "C" {
    fn stream_url(text: &str) -> String;
}

fn listener(pictures: &Rc<ProfilePictures>) -> ServerInvalidations {
    ServerInvalidations::builder()
        .key_event("avatar", "user")
        .pictures(pictures)
        .build()
}

/// A real `MessageEvent` of type `kind`, with `data` and `lastEventId`.
fn event(kind: &str, data: &JsValue, id: &str) -> MessageEvent {
    let init = MessageEventInit::new();
    init.set_data(data);
    init.set_last_event_id(id);
    MessageEvent::new_with_event_init_dict(kind, &init).unwrap()
}

fn send(events: &ServerInvalidations, kind: &str, data: &str, id: &str) {
    events.dispatch(&event(kind, &JsValue::from_str(data), id));
}

/// Which tiers hold `key`.
async fn holding(pictures: &ProfilePictures, key: &str) -> Vec<String> {
    pictures
        .peek(key)
        .await
        .into_iter()
        .filter(|t| t.picture.is_some())
        .map(|t| t.tier)
        .collect()
}

fn all_tiers(pictures: &ProfilePictures) -> Vec<String> {
    pictures
        .tier_names()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[wasm_bindgen_test]
async fn an_avatar_event_empties_the_key_from_every_tier_and_wakes_its_watchers() {
    let clock = ManualClock::new();
    let calls = Rc::new(Cell::new(0));
    let pictures = Rc::new(pictures(&unique("sse-key"), None, &clock, calls.clone()).await);
    assert_eq!(
        pictures.tier_names().len(),
        4,
        "every browser tier is there"
    );
    pictures.get("5").await.unwrap().unwrap();
    pictures.get("6").await.unwrap().unwrap();
    assert_eq!(holding(&pictures, "5").await, all_tiers(&pictures));
    let woken = Rc::new(Cell::new(0));
    let count = woken.clone();
    let _watch = pictures.watch("5", move || count.set(count.get() + 1));

    let events = listener(&pictures);
    send(&events, "hello", r#"{"stream":"s1","seq":0}"#, "s1-0");
    send(&events, "avatar", r#"{"user":"5"}"#, "s1-1");
    until("the invalidation", || events.stats().invalidations == 1).await;
    assert!(
        holding(&pictures, "5").await.is_empty(),
        "every tier dropped 5"
    );
    assert_eq!(
        holding(&pictures, "6").await,
        all_tiers(&pictures),
        "6 untouched"
    );
    assert_eq!(woken.get(), 1, "the watcher of 5 ran");
    let stats = events.stats();
    assert_eq!((stats.resets, stats.gaps, stats.malformed), (0, 0, 0));
    assert_eq!(events.last_event_id().as_deref(), Some("s1-1"));
    // A number is a key too.
    pictures.get("5").await.unwrap().unwrap();
    send(&events, "avatar", r#"{"user":5}"#, "s1-2");
    until("the second invalidation", || {
        events.stats().invalidations == 2
    })
    .await;
    assert!(holding(&pictures, "5").await.is_empty());
    // The same id again: a duplicate, not applied.
    pictures.get("5").await.unwrap().unwrap();
    send(&events, "avatar", r#"{"user":"5"}"#, "s1-2");
    assert_eq!(events.stats().duplicates, 1);
    sleep(50).await;
    assert_eq!(events.stats().invalidations, 2);
    assert_eq!(holding(&pictures, "5").await, all_tiers(&pictures));
}

#[wasm_bindgen_test]
async fn a_gap_or_a_reset_empties_the_url_tiers_and_keeps_the_bytes() {
    let clock = ManualClock::new();
    let calls = Rc::new(Cell::new(0));
    let pictures = Rc::new(pictures(&unique("sse-gap"), None, &clock, calls).await);
    let url_tiers = ["memory", "local_storage"];
    let byte_tiers = ["indexed_db", "cache_api"];
    let events = listener(&pictures);
    send(&events, "hello", r#"{"stream":"s1","seq":4}"#, "s1-4");
    // Each of these is a gap (or a reset) the page cannot fill.
    let cases: [(&str, &str, &str); 4] = [
        ("avatar", r#"{"user":"9"}"#, "s1-7"), // skips 5 and 6
        ("avatar", r#"{"user":"9"}"#, "s2-1"), // another stream
        ("hello", r#"{"stream":"s2","seq":3}"#, "s2-3"), // reconnected, 2 and 3 missed
        ("reset", r#"{"reason":"bus resync"}"#, "s2-4"),
    ];
    for (n, (kind, data, id)) in cases.into_iter().enumerate() {
        pictures.get("2").await.unwrap().unwrap();
        assert_eq!(holding(&pictures, "2").await, all_tiers(&pictures));
        send(&events, kind, data, id);
        until(&format!("reset {n} ({kind} {id})"), || {
            events.stats().resets == n as u64 + 1
        })
        .await;
        let held = holding(&pictures, "2").await;
        assert_eq!(
            held, byte_tiers,
            "{kind} {id}: URL tiers emptied, bytes kept"
        );
        for tier in url_tiers {
            assert!(!held.iter().any(|t| t == tier), "{kind} {id}: {tier}");
        }
        assert_eq!(events.last_event_id().as_deref(), Some(id));
    }
    let stats = events.stats();
    assert_eq!((stats.gaps, stats.resets), (3, 4), "{stats:?}");
    // The avatar events of the gaps were applied too, after the reset.
    assert_eq!(stats.invalidations, 2, "{stats:?}");
    // In step again: no reset for the next event.
    send(&events, "avatar", r#"{"user":"9"}"#, "s2-5");
    until("the event after the reset", || {
        events.stats().invalidations == 3
    })
    .await;
    assert_eq!(events.stats().resets, 4);
}

#[wasm_bindgen_test]
async fn malformed_events_are_counted_and_ignored_without_a_panic() {
    let clock = ManualClock::new();
    let calls = Rc::new(Cell::new(0));
    let pictures = Rc::new(pictures(&unique("sse-bad"), None, &clock, calls).await);
    pictures.get("3").await.unwrap().unwrap();
    let events = listener(&pictures);
    send(&events, "hello", r#"{"stream":"s1","seq":0}"#, "s1-0");
    let bad: [(&str, JsValue); 7] = [
        ("avatar", JsValue::from_str("not json")),
        ("avatar", JsValue::from_str(r#"{"user":null}"#)),
        ("avatar", JsValue::from_str(r#"{"user":{"id":3}}"#)),
        ("avatar", JsValue::from_str(r#"{"who":"3"}"#)),
        ("avatar", JsValue::from_f64(3.0)), // not text at all
        ("avatar", js_sys::Object::new().into()),
        ("hello", JsValue::from_str("{}")),
    ];
    let count = bad.len() as u64;
    for (kind, data) in bad {
        events.dispatch(&event(kind, &data, "")); // no id either
    }
    // An event type nobody reads, and an id that is not `<stream>-<seq>`.
    send(&events, "other", r#"{"user":"3"}"#, "s1-1");
    let stats = events.stats();
    assert_eq!(stats.malformed, count, "{stats:?}");
    sleep(50).await;
    let stats = events.stats();
    assert_eq!((stats.invalidations, stats.resets), (0, 0), "{stats:?}");
    assert_eq!(holding(&pictures, "3").await, all_tiers(&pictures));
    // Still working afterwards.
    send(&events, "avatar", r#"{"user":"3"}"#, "s1-1");
    until("a good event after the bad ones", || {
        events.stats().invalidations == 1
    })
    .await;
    assert!(holding(&pictures, "3").await.is_empty());
}

#[wasm_bindgen_test]
async fn events_are_forwarded_to_another_tab_over_the_broadcast_channel() {
    let clock = ManualClock::new();
    let ns = unique("sse-tabs");
    let channel = unique("sse-channel");
    let calls = Rc::new(Cell::new(0));
    let tab_a = Rc::new(pictures(&ns, Some(&channel), &clock, calls.clone()).await);
    let tab_b = Rc::new(pictures(&ns, Some(&channel), &clock, calls.clone()).await);
    // Tab B shows user 5 (memory holds it) and also holds user 8.
    let in_b = use_profile_picture(&tab_b, "5", |_| {});
    until("tab B's first load", || !in_b.loading()).await;
    tab_b.get("8").await.unwrap().unwrap();
    let before = in_b.url().unwrap();
    assert_eq!(calls.get(), 2);

    // Only tab A hears the server (one stream for the tabs): keys are
    // forwarded with `invalidate`, resets by `pictures` itself.
    let forward = Rc::downgrade(&tab_a);
    let events = ServerInvalidations::builder()
        .key_event("avatar", "user")
        .pictures(&tab_a)
        .on_invalidate(move |key| {
            let tab_a = forward.upgrade();
            async move {
                tab_a.unwrap().invalidate(&key).await.unwrap();
            }
        })
        .build();
    send(&events, "hello", r#"{"stream":"s1","seq":0}"#, "s1-0");
    send(&events, "avatar", r#"{"user":"5"}"#, "s1-1");
    until("tab B to load user 5 again", || {
        calls.get() == 3 && !in_b.loading()
    })
    .await;
    until("tab B's redraw", || {
        in_b.served_by().as_deref() == Some("network")
    })
    .await;
    // (The test's pictures share their bytes, and a `data:` URL is its
    // bytes: the new picture's URL in memory tells it apart.)
    assert_eq!(in_b.url().unwrap(), before, "the same bytes, the same src");
    let memory_b = tab_b.peek("5").await[0].picture.clone().unwrap().url;
    assert!(memory_b.ends_with("?v=3"), "{memory_b}");

    // A reset: tab A empties its URL tiers, tab B its memory.
    assert_eq!(tab_b.peek("8").await[0].tier, "memory");
    assert!(tab_b.peek("8").await[0].picture.is_some());
    send(&events, "reset", r#"{"reason":"test"}"#, "s1-2");
    until("the reset in tab A", || events.stats().resets == 1).await;
    let mut waited = 0;
    while tab_b.peek("8").await[0].picture.is_some() {
        assert!(waited < 20_000, "tab B's memory still holds user 8");
        sleep(10).await;
        waited += 10;
    }
    // The shared byte tiers were left alone: tab B reads 8 from IndexedDB.
    assert_eq!(
        tab_b.get("8").await.unwrap().unwrap().served_by,
        "indexed_db"
    );
}

#[wasm_bindgen_test]
async fn a_real_event_source_feeds_the_listener() {
    let clock = ManualClock::new();
    let calls = Rc::new(Cell::new(0));
    let pictures = Rc::new(pictures(&unique("sse-real"), None, &clock, calls).await);
    pictures.get("4").await.unwrap().unwrap();
    pictures.get("7").await.unwrap().unwrap();
    // The wire text of profile-server's /api/events: a keep-alive comment, a
    // hello, two avatar events, one malformed. A long retry: the browser
    // does not replay the (ended) blob during the test.
    let text = "retry: 600000\n\n: keep-alive\n\n\
                event: hello\nid: blob-0\ndata: {\"stream\":\"blob\",\"seq\":0}\n\n\
                event: avatar\nid: blob-1\ndata: {\"user\":\"4\"}\n\n\
                event: avatar\nid: blob-2\ndata: {\"user\":\"7\"}\n\n\
                event: avatar\nid: blob-3\ndata: {oops\n\n";
    let url = stream_url(text);
    let events = ServerInvalidations::builder()
        .key_event("avatar", "user")
        .pictures(&pictures)
        .connect(&url)
        .unwrap();
    until("both events from the EventSource", || {
        events.stats().invalidations == 2
    })
    .await;
    until("the malformed one", || events.stats().malformed == 1).await;
    let stats = events.stats();
    assert_eq!(stats.opened, 1, "{stats:?}");
    // The numbered event that could not be read counts as a gap.
    until("the reset for it", || events.stats().resets == 1).await;
    assert!(holding(&pictures, "4").await.is_empty());
    assert!(holding(&pictures, "7").await.is_empty());
    assert_eq!(events.last_event_id().as_deref(), Some("blob-3"));
    drop(events); // closes the EventSource
}
