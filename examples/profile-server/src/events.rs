//! `GET /api/events`: every avatar change as a server-sent event, for the
//! pages that show avatars (cache-browser's `ServerInvalidations`).
//!
//! One stream per server process, identified by a random stream id; its events
//! are numbered 1, 2, 3, … and carry the id `<stream>-<seq>`. An event is
//! published for every upload through this instance and for every
//! invalidation another instance sent over the invalidation bus (Redis), once
//! it was applied here:
//!
//! - `event: avatar`, `data: {"user":"42"}`: user 42's picture changed;
//! - `event: reset`, `data: {"reason":"…"}`: changes may have been missed (the
//!   bus resynchronised, a prefix or full invalidation): drop what may be old;
//! - `event: hello`, `data: {"stream":"…","seq":n}`: sent once per connection,
//!   after any replay, with the id of the newest event (so a client that saw
//!   no event yet still has an id to resume from).
//!
//! The last [`EventsConfig::replay`] events are kept: a client that comes back
//! with `Last-Event-ID` (or `?last_event_id=`) inside them gets the events it
//! missed, then `hello`; one whose id is older, from another stream (another
//! instance, or this one before a restart) or malformed gets one `reset`
//! (with the newest id), then `hello`. A client that falls more than
//! [`EventsConfig::backlog`] events behind is disconnected (it reconnects and
//! resumes, or gets a reset), so a slow client never holds more than that.
//! Streams end when the server shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::{broadcast, watch};

/// The settings of `GET /api/events`.
///
/// ```
/// let events = profile_server::EventsConfig::default();
/// assert!(events.backlog <= events.replay);
/// assert_eq!(events.keep_alive, std::time::Duration::from_secs(15));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    /// How many recent events are kept for clients that reconnect.
    pub replay: usize,
    /// How many events a connected client may fall behind before it is
    /// disconnected.
    pub backlog: usize,
    /// How often a comment line keeps an idle stream open through proxies.
    pub keep_alive: Duration,
    /// The reconnection delay the stream asks browsers to use (`retry:`).
    pub retry: Duration,
}

impl Default for EventsConfig {
    /// 1,024 events kept, 256 of backlog, a keep-alive every 15 s, retry 2 s.
    fn default() -> Self {
        EventsConfig {
            replay: 1_024,
            backlog: 256,
            keep_alive: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

/// What an event says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// This user's picture changed.
    Avatar(String),
    /// Changes may have been missed.
    Reset(String),
}

#[derive(Clone, Debug)]
struct Numbered {
    seq: u64,
    change: Change,
}

struct Ring {
    /// The newest event's number (0: none yet).
    last: u64,
    events: VecDeque<Numbered>,
}

/// The stream of one server process: the ring of recent events, the live
/// feed and the shutdown signal.
pub(crate) struct EventHub {
    stream: String,
    config: EventsConfig,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Numbered>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// A stream id no other process (or earlier run of this one) uses: the
/// clock's nanoseconds, the process id and a per-process counter.
fn new_stream_id() -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!(
        "{nanos}:{}:{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    Sha256::digest(seed.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl EventHub {
    pub(crate) fn new(config: EventsConfig) -> Self {
        let (live, _) = broadcast::channel(config.backlog.max(1));
        let (shutdown, _) = watch::channel(false);
        EventHub {
            stream: new_stream_id(),
            config,
            ring: Mutex::new(Ring {
                last: 0,
                events: VecDeque::new(),
            }),
            live,
            shutdown,
        }
    }

    /// Publishes one change to every connected client and keeps it for
    /// reconnecting ones.
    pub(crate) fn publish(&self, change: Change) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.last += 1;
        let event = Numbered {
            seq: ring.last,
            change,
        };
        ring.events.push_back(event.clone());
        while ring.events.len() > self.config.replay {
            ring.events.pop_front();
        }
        // Under the lock, so a client subscribing now sees it either in the
        // ring or live, never in both or neither. No client: nothing to do.
        let _ = self.live.send(event);
    }

    /// Ends every stream (and refuses new ones): the server is shutting down.
    pub(crate) fn close(&self) {
        self.shutdown.send_replace(true);
    }

    fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.stream)
    }

    fn event(&self, event: &Numbered) -> Event {
        let (name, data) = match &event.change {
            Change::Avatar(user) => ("avatar", json!({ "user": user })),
            Change::Reset(reason) => ("reset", json!({ "reason": reason })),
        };
        Event::default()
            .event(name)
            .id(self.id(event.seq))
            .data(data.to_string())
    }

    /// What a client resuming after `last_event_id` gets first: the events
    /// it missed, or a reset when they cannot be replayed; then `hello`.
    /// Also subscribes it to the live feed, atomically with the replay.
    fn open(&self, last_event_id: Option<&str>) -> (Vec<Event>, broadcast::Receiver<Numbered>) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let live = self.live.subscribe();
        let latest = ring.last;
        let mut first = Vec::new();
        if let Some(id) = last_event_id {
            let resumable = id
                .rsplit_once('-')
                .filter(|(stream, _)| *stream == self.stream)
                .and_then(|(_, seq)| seq.parse::<u64>().ok())
                // Every event after `seq` is still in the ring.
                .filter(|seq| *seq <= latest && seq + ring.events.len() as u64 >= latest);
            match resumable {
                Some(seq) => first.extend(
                    ring.events
                        .iter()
                        .filter(|e| e.seq > seq)
                        .map(|e| self.event(e)),
                ),
                None => {
                    let reason = if id.starts_with(&format!("{}-", self.stream)) {
                        "the events since your last one are no longer kept"
                    } else {
                        "your last event is from another stream (another instance, or before a restart)"
                    };
                    first.push(
                        Event::default()
                            .event("reset")
                            .id(self.id(latest))
                            .data(json!({ "reason": reason }).to_string()),
                    );
                }
            }
        }
        first.push(
            Event::default()
                .event("hello")
                .id(self.id(latest))
                .retry(self.config.retry)
                .data(json!({ "stream": self.stream, "seq": latest }).to_string()),
        );
        (first, live)
    }

    /// The response of `GET /api/events` for a client that last saw
    /// `last_event_id`.
    pub(crate) fn response(
        self: &Arc<Self>,
        last_event_id: Option<&str>,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        Sse::new(self.stream_for(last_event_id))
            .keep_alive(KeepAlive::new().interval(self.config.keep_alive))
    }

    /// The events for one client, ending on shutdown or when it falls more
    /// than the backlog behind.
    pub(crate) fn stream_for(
        self: &Arc<Self>,
        last_event_id: Option<&str>,
    ) -> impl Stream<Item = Result<Event, Infallible>> + Send + use<> {
        let (first, live) = self.open(last_event_id);
        let state = Client {
            hub: self.clone(),
            first: first.into(),
            live,
            shutdown: self.shutdown.subscribe(),
        };
        futures_util::stream::unfold(state, |mut client| async move {
            if *client.shutdown.borrow_and_update() {
                return None;
            }
            if let Some(event) = client.first.pop_front() {
                return Some((Ok(event), client));
            }
            tokio::select! {
                // Shutdown first: a busy feed must not keep a stream alive.
                biased;
                _ = client.shutdown.changed() => None,
                next = client.live.recv() => match next {
                    Ok(event) => {
                        let event = client.hub.event(&event);
                        Some((Ok(event), client))
                    }
                    // Too slow: disconnect; it resumes from its last id.
                    Err(broadcast::error::RecvError::Lagged(_)) => None,
                    Err(broadcast::error::RecvError::Closed) => None,
                },
            }
        })
    }

    /// This stream's id (the part of every event id before the `-`).
    #[cfg(test)]
    pub(crate) fn stream_id(&self) -> &str {
        &self.stream
    }
}

struct Client {
    hub: Arc<EventHub>,
    first: VecDeque<Event>,
    live: broadcast::Receiver<Numbered>,
    shutdown: watch::Receiver<bool>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::response::IntoResponse;
    use futures_util::StreamExt;

    fn hub(replay: usize, backlog: usize) -> Arc<EventHub> {
        Arc::new(EventHub::new(EventsConfig {
            replay,
            backlog,
            ..EventsConfig::default()
        }))
    }

    /// The wire text of every event the stream yields until it ends or has
    /// nothing ready.
    async fn drain(
        stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
    ) -> (String, bool) {
        let body = Sse::new(stream).into_response().into_body();
        let mut data = body.into_data_stream();
        let mut text = String::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(50), data.next()).await {
                Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
                Ok(None) => return (text, true),
                Err(_) => return (text, false),
            }
        }
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_the_backlog_is_disconnected() {
        let hub = hub(16, 4);
        let stream = hub.stream_for(None);
        // Not read while 5 events pass: one more than the backlog.
        for user in 1..=5 {
            hub.publish(Change::Avatar(user.to_string()));
        }
        let (text, ended) = drain(stream).await;
        assert!(text.contains("event: hello"), "{text}");
        assert!(ended, "the stream of a lagging client ends: {text}");
        assert!(!text.contains("event: avatar"), "{text}");
        // It comes back with the id it had (hello: seq 0) and gets all five.
        let again = hub.stream_for(Some(&format!("{}-0", hub.stream_id())));
        let (text, ended) = drain(again).await;
        assert!(!ended, "{text}");
        assert_eq!(text.matches("event: avatar").count(), 5, "{text}");
    }

    #[tokio::test]
    async fn a_client_within_the_backlog_gets_every_event_in_order() {
        let hub = hub(16, 4);
        let stream = hub.stream_for(None);
        for user in 1..=4 {
            hub.publish(Change::Avatar(user.to_string()));
        }
        let (text, ended) = drain(stream).await;
        assert!(!ended, "{text}");
        let ids: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .collect();
        let stream_id = hub.stream_id();
        let expected: Vec<String> = (0..=4).map(|n| format!("{stream_id}-{n}")).collect();
        assert_eq!(ids, expected, "{text}");
    }

    #[tokio::test]
    async fn close_ends_every_stream_and_refuses_new_ones() {
        let hub = hub(16, 4);
        let stream = hub.stream_for(None);
        hub.close();
        let (_, ended) = drain(stream).await;
        assert!(ended);
        let (text, ended) = drain(hub.stream_for(None)).await;
        assert!(ended && text.is_empty(), "{text}");
    }
}
