//! [`MonitorBuilder`]: a monitor's clock, windows, metric prefix and key
//! tracking.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cache_core::Clock;

use crate::clock::CoarseClock;
use crate::Monitor;

/// Builds a [`Monitor`].
///
/// ```
/// use std::time::Duration;
/// use cache_core::ManualClock;
/// use cache_monitor::Monitor;
///
/// let monitor = Monitor::builder()
///     .clock(ManualClock::new())
///     .window(Duration::from_secs(10), 360) // one hour in 10-second buckets
///     .metric_prefix("avatar_cache")
///     .track_keys(100)
///     .build();
/// assert!(monitor.prometheus().contains("avatar_cache_requests_total"));
/// ```
#[must_use]
pub struct MonitorBuilder {
    pub(crate) clock: Arc<dyn Clock>,
    /// Whether `clock` is still the default [`CoarseClock`].
    pub(crate) default_clock: bool,
    pub(crate) bucket: Duration,
    pub(crate) buckets: usize,
    /// Coarser rings for longer windows: bucket and depth.
    pub(crate) long: Vec<(Duration, usize)>,
    pub(crate) prefix: String,
    pub(crate) track_keys: Option<usize>,
    #[cfg(feature = "metrics")]
    pub(crate) export: bool,
}

impl fmt::Debug for MonitorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorBuilder")
            .field("clock", &self.clock)
            .field("bucket", &self.bucket)
            .field("buckets", &self.buckets)
            .field("long", &self.long)
            .field("prefix", &self.prefix)
            .field("track_keys", &self.track_keys)
            .finish()
    }
}

impl Default for MonitorBuilder {
    fn default() -> Self {
        MonitorBuilder {
            clock: Arc::new(CoarseClock::new()),
            default_clock: true,
            bucket: Duration::from_secs(60),
            buckets: 60,
            long: Vec::new(),
            prefix: "cache".to_owned(),
            track_keys: None,
            #[cfg(feature = "metrics")]
            export: false,
        }
    }
}

impl MonitorBuilder {
    /// The clock that places events in window buckets and stamps reports
    /// (default: [`CoarseClock`], a cheap wall clock; [`cache_core::SystemClock`]
    /// works too, at a few tens of nanoseconds more per event).
    /// Latencies come from the chain, not from this clock. With the default,
    /// a chain's hit is placed by the time the chain read for it
    /// ([`cache_core::Observer::on_event_at`]); a clock given here is read
    /// for every event.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self.default_clock = false;
        self
    }

    /// The clock, already shared.
    pub fn shared_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self.default_clock = false;
        self
    }

    /// The fine window ring: `buckets` buckets of `bucket` each (default 60
    /// buckets of one minute), for [`Monitor::window`] and
    /// [`Monitor::timeline`]. `bucket` is rounded to whole milliseconds, at
    /// least 1; `buckets` is at least 1 and at most 100,000. Each bucket keeps
    /// a copy of the counters (about 2 kB). Recording checks the clock
    /// against the fine bucket's end; once per fine bucket one event copies
    /// the counters into the rings.
    pub fn window(mut self, bucket: Duration, buckets: usize) -> Self {
        self.bucket = bucket;
        self.buckets = buckets;
        self
    }

    /// Adds a coarser ring for longer windows (history): `buckets` buckets of
    /// `bucket` each, `bucket` rounded up to a whole number of the fine ring's
    /// buckets. May be called more than once. A window or timeline is served
    /// by the finest ring that spans it (see [`Monitor::resolution`]). Costs
    /// nothing per event: the coarse rings advance with the fine one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_monitor::Monitor;
    ///
    /// let min = Duration::from_secs(60);
    /// // 15 minutes in 10 s buckets, an hour by the minute, a day in 5 minutes.
    /// let monitor = Monitor::builder()
    ///     .window(Duration::from_secs(10), 90)
    ///     .long_window(min, 60)
    ///     .long_window(min * 5, 288)
    ///     .build();
    /// assert_eq!(monitor.timeline(min * 60).len(), 60);
    /// assert_eq!(monitor.timeline(min * 60 * 24).len(), 288);
    /// ```
    pub fn long_window(mut self, bucket: Duration, buckets: usize) -> Self {
        self.long.push((bucket, buckets));
        self
    }

    /// The Prometheus metric name prefix (default `cache`). Characters outside
    /// `[a-zA-Z0-9_:]` become `_`.
    pub fn metric_prefix(mut self, prefix: &str) -> Self {
        self.prefix = sanitize_metric_name(prefix);
        self
    }

    /// Counts requests and hits per key for the `capacity` busiest keys
    /// (space-saving: counts of keys that entered late are upper bounds). Keys are
    /// user data: they appear in [`Report::top_keys`](crate::Report::top_keys), never in the Prometheus
    /// output. Costs a mutex per read.
    pub fn track_keys(mut self, capacity: usize) -> Self {
        self.track_keys = (capacity > 0).then_some(capacity);
        self
    }

    /// Also forwards every event to the [`metrics`](https://docs.rs/metrics)
    /// facade (feature `metrics`), for whatever recorder the application
    /// installed: `<prefix>_events_total` and `<prefix>_bytes_total` counters
    /// and a `<prefix>_latency_seconds` histogram, each labelled `tier` (a tier's
    /// name, `origin` or `chain`) and `event` (`hit`, `miss`, `origin_load`...).
    /// Keys never become labels. Costs a few label allocations per event on top
    /// of the monitor's own counting.
    ///
    /// ```
    /// use cache_monitor::Monitor;
    /// let monitor = Monitor::builder().metric_prefix("avatars").export_metrics().build();
    /// # let _ = monitor;
    /// ```
    #[cfg(feature = "metrics")]
    pub fn export_metrics(mut self) -> Self {
        self.export = true;
        self
    }

    /// The monitor.
    pub fn build(self) -> Monitor {
        Monitor::from_builder(self)
    }
}

fn sanitize_metric_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}
