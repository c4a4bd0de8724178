//! Settings, from the environment or code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{Clock, SystemClock};

use presign::{Credentials, S3Config};

use crate::EventsConfig;

/// The server's settings.
///
/// ```
/// let config = profile_server::Config::embedded();
/// assert!(config.redis_url.is_none() && config.s3.is_none());
/// assert_eq!(config.addr.port(), 0); // a free port
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The built web app (index.html, wasm, sw.js), served at `/`.
    pub web_dir: Option<PathBuf>,
    /// Redis (or `redis-cluster://`) URL for the shared tier and the
    /// invalidation bus; without it the shared tier is in-process.
    pub redis_url: Option<String>,
    /// S3/MinIO (the same settings sign URLs for browsers and upload); without
    /// it an embedded s3s-fs runs on loopback.
    pub s3: Option<S3Config>,
    /// Users are `1..=users`; each gets a generated picture if it has none.
    pub users: u64,
    /// Largest accepted upload, in bytes.
    pub max_upload_bytes: usize,
    /// How long one Redis command may take before the shared tier counts as
    /// failed for it (a read is then a miss; an invalidation is retried).
    pub redis_timeout: Duration,
    /// How many Redis replicas every removal must reach (`WAIT`) before an
    /// upload counts as done; use 1 or more with replicas behind Sentinel
    /// (`REDIS_URL=redis-sentinel://...`). 0 waits for none.
    pub redis_replicas: u32,
    /// Deadlines of every request; see [`Limits`].
    pub limits: Limits,
    /// How often replaced picture versions whose URLs have all expired are
    /// deleted from S3.
    pub sweep_interval: Duration,
    /// The clock for URL signing, cache expiry and version sweeping (tests
    /// use a manual one).
    pub clock: Arc<dyn Clock>,
    /// Whether URLs are cached (the default). Without the cache every request
    /// lists the user's versions and signs afresh: the baseline the HTTP
    /// benchmark compares the cached server with.
    pub url_cache: bool,
    /// The avatar-change stream `GET /api/events`: replay length, per-client
    /// backlog, keep-alive and retry hint.
    pub events: EventsConfig,
}

/// Request deadlines. A client that stalls past one loses its connection, so
/// a stalled upload cannot hold a socket (or a task) forever.
///
/// ```
/// let limits = profile_server::Limits::default();
/// assert!(limits.header_timeout < limits.body_timeout);
/// assert!(limits.body_timeout < limits.request_timeout);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From the connection's first byte (or the end of the previous response)
    /// to the end of the request headers. Past it the connection is closed:
    /// there is no request yet to answer.
    pub header_timeout: Duration,
    /// From the handler's start to the last byte of an upload's body. Past it:
    /// `408 {"error": ...}` and the connection is closed.
    pub body_timeout: Duration,
    /// From the end of the headers to the end of the handler. Past it: `408
    /// {"error": ...}` and the connection is closed.
    pub request_timeout: Duration,
}

impl Default for Limits {
    /// Headers 10 s, body 30 s, whole request 60 s.
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Default Redis command timeout: 250 ms.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Default interval of the version sweeper: one minute.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Default number of users (`1..=200`), each seeded with a generated picture.
pub const DEFAULT_USERS: u64 = 200;

/// Default largest upload: 2 MiB.
pub const DEFAULT_MAX_UPLOAD: usize = 2 << 20;

impl Config {
    /// Everything embedded, on a free 127.0.0.1 port, [`DEFAULT_USERS`] users,
    /// no web app.
    pub fn embedded() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            web_dir: None,
            redis_url: None,
            s3: None,
            users: DEFAULT_USERS,
            max_upload_bytes: DEFAULT_MAX_UPLOAD,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            redis_replicas: 0,
            limits: Limits::default(),
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            clock: Arc::new(SystemClock),
            url_cache: true,
            events: EventsConfig::default(),
        }
    }

    /// From the environment: `PORT` (default 8080, on 127.0.0.1; `BIND` for
    /// another address), `WEB_DIR`, `REDIS_URL`, `REDIS_TIMEOUT_MS`, `USERS`,
    /// `MAX_UPLOAD_BYTES`,
    /// `HEADER_TIMEOUT_MS`, `BODY_TIMEOUT_MS`, `REQUEST_TIMEOUT_MS`,
    /// `SWEEP_INTERVAL_MS`, `URL_CACHE` (`off` to sign every request afresh),
    /// and `S3_ENDPOINT`, `S3_BUCKET`, `S3_ACCESS_KEY_ID`,
    /// `S3_SECRET_ACCESS_KEY`, `S3_REGION` (all five, or none).
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut config = Config::embedded();
        let port: u16 = match var("PORT") {
            Some(p) => p.parse().map_err(|_| format!("PORT={p} is not a port"))?,
            None => 8080,
        };
        let ip = match var("BIND") {
            Some(b) => b
                .parse()
                .map_err(|_| format!("BIND={b} is not an IP address"))?,
            None => std::net::IpAddr::from([127, 0, 0, 1]),
        };
        config.addr = SocketAddr::new(ip, port);
        config.web_dir = var("WEB_DIR").map(PathBuf::from);
        config.redis_url = var("REDIS_URL");
        if let Some(v) = var("URL_CACHE") {
            config.url_cache = match v.as_str() {
                "on" | "true" | "1" => true,
                "off" | "false" | "0" => false,
                _ => return Err(format!("URL_CACHE={v} is not on or off")),
            };
        }
        if let Some(n) = var("REDIS_REPLICAS") {
            config.redis_replicas = n
                .parse()
                .map_err(|_| format!("REDIS_REPLICAS={n} is not a number"))?;
        }
        if let Some(users) = var("USERS") {
            config.users = users
                .parse()
                .map_err(|_| format!("USERS={users} is not a number"))?;
        }
        if let Some(max) = var("MAX_UPLOAD_BYTES") {
            config.max_upload_bytes = max
                .parse()
                .map_err(|_| format!("MAX_UPLOAD_BYTES={max} is not a number"))?;
        }
        let millis = |name: &str, slot: &mut Duration| -> Result<(), String> {
            if let Some(v) = var(name) {
                let ms: u64 = v.parse().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                    format!("{name}={v} is not a positive number of milliseconds")
                })?;
                *slot = Duration::from_millis(ms);
            }
            Ok(())
        };
        millis("HEADER_TIMEOUT_MS", &mut config.limits.header_timeout)?;
        millis("BODY_TIMEOUT_MS", &mut config.limits.body_timeout)?;
        millis("REQUEST_TIMEOUT_MS", &mut config.limits.request_timeout)?;
        millis("SWEEP_INTERVAL_MS", &mut config.sweep_interval)?;
        millis("REDIS_TIMEOUT_MS", &mut config.redis_timeout)?;
        let names = [
            "S3_ENDPOINT",
            "S3_BUCKET",
            "S3_ACCESS_KEY_ID",
            "S3_SECRET_ACCESS_KEY",
            "S3_REGION",
        ];
        let values: Vec<Option<String>> = names.iter().map(|n| var(n)).collect();
        if values.iter().any(Option::is_some) {
            let missing: Vec<&str> = names
                .iter()
                .zip(&values)
                .filter(|(_, v)| v.is_none())
                .map(|(n, _)| *n)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "incomplete S3 settings: {} not set",
                    missing.join(", ")
                ));
            }
            let v: Vec<String> = values.into_iter().flatten().collect();
            let [endpoint, bucket, key_id, secret, region] = &v[..] else {
                return Err("incomplete S3 settings".to_owned());
            };
            config.s3 = Some(S3Config::new(
                endpoint.clone(),
                region.clone(),
                bucket.clone(),
                Credentials::new(key_id.clone(), secret.clone()),
            ));
        }
        Ok(config)
    }
}
