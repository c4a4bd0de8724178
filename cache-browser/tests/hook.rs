//! `use_profile_picture` (the hook), `ProfilePictures::watch`, `peek` and
//! cross-tab invalidation between two chains, in headless Chromium.
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]

use cache_browser::use_profile_picture;
use cache_core::ManualClock;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wasm_bindgen_test::*;

mod support;
use support::{load_img, pictures, unique, until, PNG};

wasm_bindgen_test_configure!(run_in_browser);

/// What the hook's `on_change` saw: (loading, url, error, served_by).
type Seen = Rc<RefCell<Vec<(bool, Option<String>, Option<String>, Option<String>)>>>;

#[wasm_bindgen_test]
async fn hook_loads_then_loads_again_on_invalidation_refetch_and_new_user_id() {
    let clock = ManualClock::new();
    let calls = Rc::new(Cell::new(0));
    let pictures = Rc::new(pictures(&unique("hook"), None, &clock, calls.clone()).await);
    let seen: Seen = Rc::default();
    let log = seen.clone();
    let hook = use_profile_picture(&pictures, "7", move |p| {
        log.borrow_mut()
            .push((p.loading(), p.url(), p.error(), p.served_by()));
    });
    // The hook starts loading at once.
    assert!(hook.loading());
    assert!(seen.borrow()[0].0, "the first change is `loading`");
    until("the first load", || !hook.loading()).await;
    assert_eq!(hook.served_by().as_deref(), Some("network"));
    assert_eq!(hook.error(), None);
    let url = hook.url().unwrap();
    assert!(url.starts_with("data:image/png;base64,"), "{url}");
    assert_eq!(
        load_img(&url).await.as_f64(),
        Some(1.0),
        "the URL shows the picture"
    );
    assert!(hook.lookup_ms().unwrap() >= 0.0);
    assert_eq!(calls.get(), 1);

    // Invalidated by someone else on this page: the hook loads it again.
    let changes = seen.borrow().len();
    pictures.invalidate("7").await.unwrap();
    until("the load after the invalidation", || {
        seen.borrow().len() >= changes + 2 && !hook.loading()
    })
    .await;
    assert_eq!(calls.get(), 2, "from the network: every tier was emptied");
    assert_eq!(hook.served_by().as_deref(), Some("network"));

    // refetch: the same, asked by the hook itself.
    hook.refetch();
    until("the refetch", || calls.get() == 3 && !hook.loading()).await;
    until("the refetch's draw", || {
        hook.served_by().as_deref() == Some("network")
    })
    .await;

    // A second hook for the same user is served from memory.
    let other = use_profile_picture(&pictures, "7", |_| {});
    until("the second hook", || !other.loading()).await;
    assert_eq!(other.served_by().as_deref(), Some("memory"));
    assert_eq!(other.url(), hook.url(), "one object URL per picture");

    // Another user id.
    hook.set_user_id("8");
    assert_eq!(hook.user_id(), "8");
    until("user 8", || !hook.loading() && hook.url().is_some()).await;
    assert_eq!(calls.get(), 4);

    // A user without a picture, and a key no tier accepts: errors, no panic.
    hook.set_user_id("nobody");
    until("nobody", || !hook.loading()).await;
    assert!(
        hook.error().unwrap().contains("no picture"),
        "{:?}",
        hook.error()
    );
    assert_eq!(hook.url(), None);
    hook.set_user_id("");
    until("the empty key", || !hook.loading()).await;
    assert!(hook.error().is_some());
}

#[wasm_bindgen_test]
async fn peek_shows_each_tier_and_invalidate_empties_every_one() {
    let clock = ManualClock::new();
    let calls = Rc::new(Cell::new(0));
    let pictures = pictures(&unique("peek"), None, &clock, calls).await;
    for t in pictures.peek("3").await {
        assert_eq!(t.picture, None, "{t:?}");
    }
    pictures.get("3").await.unwrap().unwrap();
    let held = pictures.peek("3").await;
    assert_eq!(held.len(), pictures.tier_names().len());
    for t in &held {
        assert_eq!(t.error, None, "{t:?}");
        let p = t
            .picture
            .as_ref()
            .unwrap_or_else(|| panic!("{} is empty", t.tier));
        // Every tier keeps the bytes (LocalStorage too: the picture is
        // under its limit).
        assert_eq!(p.bytes.as_deref(), Some(PNG), "{}", t.tier);
    }
    let watched = Rc::new(Cell::new(0));
    let count = watched.clone();
    let watch = pictures.watch("3", move || count.set(count.get() + 1));
    pictures.invalidate("3").await.unwrap();
    assert_eq!(watched.get(), 1, "the watcher ran");
    for t in pictures.peek("3").await {
        assert_eq!(t.picture, None, "{} still holds it", t.tier);
    }
    drop(watch);
    pictures.invalidate("3").await.unwrap();
    assert_eq!(watched.get(), 1, "a dropped watch is not called");

    // forget_url drops only the URL tiers.
    pictures.get("3").await.unwrap().unwrap();
    pictures.forget_url("3").await.unwrap();
    for t in pictures.peek("3").await {
        let kept = t.picture.is_some();
        match t.tier.as_str() {
            "memory" | "local_storage" => assert!(!kept, "{} kept it", t.tier),
            _ => assert!(kept, "{} lost it", t.tier),
        }
    }
    assert_eq!(
        pictures.get("3").await.unwrap().unwrap().served_by,
        "indexed_db"
    );
}

#[wasm_bindgen_test]
async fn an_invalidation_in_one_tab_wakes_the_hooks_of_another() {
    // Two chains on one channel stand for two tabs: a BroadcastChannel
    // delivers to every other object of its name on the origin.
    let clock = ManualClock::new();
    let ns = unique("tabs");
    let channel = unique("channel");
    let calls = Rc::new(Cell::new(0));
    let tab_a = Rc::new(pictures(&ns, Some(&channel), &clock, calls.clone()).await);
    let tab_b = Rc::new(pictures(&ns, Some(&channel), &clock, calls.clone()).await);
    let in_b = use_profile_picture(&tab_b, "5", |_| {});
    until("tab B's first load", || !in_b.loading()).await;
    let first = tab_b.peek("5").await[0].picture.clone().unwrap().url;

    tab_a.invalidate("5").await.unwrap();
    until("tab B to load user 5 again", || {
        !in_b.loading() && calls.get() == 2
    })
    .await;
    until("tab B's new picture", || {
        in_b.served_by().as_deref() == Some("network")
    })
    .await;
    let now = tab_b.peek("5").await[0].picture.clone().unwrap().url;
    assert_ne!(now, first, "tab B's memory holds the new picture");
}
