//! The profile-picture chain in a browser page: memory → LocalStorage →
//! IndexedDB → Cache API → a (fake, offline) network loader. Each lookup's
//! source and the tier that served it are written into the page.
//!
//! Build it for the browser (`cargo xtask test` does):
//!
//! ```sh
//! cargo build -p cache-browser --example profile_pictures --target wasm32-unknown-unknown
//! wasm-bindgen --target web --out-dir pkg \
//!   target/wasm32-unknown-unknown/debug/examples/profile_pictures.wasm
//! ```
//!
//! then load `pkg/profile_pictures.js` from a page (`<script type="module">
//! import init from "./pkg/profile_pictures.js"; init();</script>`). Reload the
//! page: the second visit is served from LocalStorage instead of the network.

#[cfg(target_family = "wasm")]
fn main() {
    use std::time::Duration;

    use cache_browser::{Picture, ProfilePictures};
    use cache_core::{BoxError, Clock, Entry, SystemClock};

    fn show(line: &str) {
        let Some(body) = web_sys::window()
            .and_then(|w| w.document())
            .and_then(|d| d.body())
        else {
            return;
        };
        let text = body.text_content().unwrap_or_default();
        body.set_text_content(Some(&format!("{text}{line}\n")));
    }

    wasm_bindgen_futures::spawn_local(async {
        let pictures = ProfilePictures::builder("example-avatars")
            .network(|user: String| async move {
                // A real app fetches here; the example makes the picture up.
                let picture = Picture {
                    url: format!("/img/{user}.png"),
                    bytes: None,
                    content_type: "image/png".into(),
                };
                Ok::<_, BoxError>(Some(Entry::expiring_in(
                    picture,
                    SystemClock.now(),
                    Duration::from_secs(3_600),
                )))
            })
            .build()
            .await;
        for user in ["42", "42", "7"] {
            match pictures.get(user).await {
                Ok(Some(found)) => show(&format!(
                    "user {user}: {} (served by {})",
                    found.src, found.served_by
                )),
                Ok(None) => show(&format!("user {user}: no picture")),
                Err(e) => show(&format!("user {user}: error {e}")),
            }
        }
    });
}

#[cfg(not(target_family = "wasm"))]
fn main() {
    eprintln!(
        "this example runs in a browser: build it with \
         `cargo build -p cache-browser --example profile_pictures --target wasm32-unknown-unknown`"
    );
}
