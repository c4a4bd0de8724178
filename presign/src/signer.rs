//! AWS Signature Version 4 query-string presigning for S3 and S3-compatible stores.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use cache_core::{Clock, SystemClock, Timestamp};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::encode::{amz_date, hex32, uri_encode, uri_encode_into};
use crate::{Error, Result};

type HmacSha256 = hmac::Hmac<Sha256>;

/// The longest validity SigV4 allows for a presigned URL: 7 days.
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3_600);

/// S3's limit on object key length, in bytes.
pub const MAX_OBJECT_KEY_BYTES: usize = 1_024;

/// An access key pair, with an optional session token and expiry (temporary
/// credentials from STS or an instance role).
///
/// `Debug` shows only whether a secret is present: the secret key and session
/// token never appear in `Debug`, `Display`, errors or logs.
///
/// ```
/// use presign::Credentials;
/// let creds = Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
///     .with_session_token("FwoGZXIvYXdzEXAMPLE");
/// let shown = format!("{creds:?}");
/// assert!(!shown.contains("wJalr") && !shown.contains("FwoG"));
/// ```
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    expires_at: Option<Timestamp>,
}

impl Credentials {
    /// Long-lived credentials.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
            expires_at: None,
        }
    }

    /// Adds a session token (temporary credentials). It is signed into every URL.
    #[must_use]
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(token.into());
        self
    }

    /// Sets when the credentials stop working. URLs signed with them stop working
    /// then too, so the URL service caps cache lifetimes by it.
    #[must_use]
    pub fn with_expiry(mut self, expires_at: Timestamp) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// The access key id (not a secret, but shown redacted in `Debug` anyway).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// When the credentials expire, if they do.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.expires_at
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The access key id is redacted too: it names the account and the key.
        f.debug_struct("Credentials")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// How the bucket appears in URLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UrlStyle {
    /// `https://endpoint/bucket/key`: MinIO, s3s, most S3-compatible stores.
    #[default]
    Path,
    /// `https://bucket.endpoint/key`: AWS S3's default.
    VirtualHosted,
}

/// The HTTP method a URL is signed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// Download.
    Get,
    /// Upload (the client sends the body).
    Put,
    /// Metadata only.
    Head,
    /// Removal.
    Delete,
}

impl Method {
    /// The method's name, e.g. `"GET"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Head => "HEAD",
            Method::Delete => "DELETE",
        }
    }
}

/// A presigned URL and the instant it stops working.
///
/// ```
/// use presign::PresignedUrl;
/// use cache_core::Timestamp;
/// let url = PresignedUrl { url: "https://b.example/k?X-Amz-Signature=00".into(), expires_at: Timestamp::from_unix_millis(1) };
/// assert!(url.url.starts_with("https://"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PresignedUrl {
    /// The URL, query string and signature included.
    pub url: String,
    /// When the URL stops working: the signing time plus its validity, or the
    /// credentials' expiry if that comes first.
    pub expires_at: Timestamp,
}

impl PresignedUrl {
    /// How long the URL still works at `now`.
    pub fn remaining(&self, now: Timestamp) -> Duration {
        self.expires_at.duration_since(now)
    }
}

impl cache_core::ByteSize for PresignedUrl {
    fn byte_size(&self) -> usize {
        self.url.len() + 8
    }
}

/// Response-header overrides signed into a GET URL: S3 answers the download
/// with these headers instead of the object's stored ones (the
/// `response-cache-control`, `response-content-disposition` and
/// `response-content-type` query parameters). They are part of the signature,
/// so a client cannot change them without the URL being refused.
///
/// Typical use: `Cache-Control: private, max-age=…, immutable` on URLs to
/// objects that never change once written (a new key per upload), so the
/// browser's HTTP cache serves the bytes again without asking S3.
///
/// ```
/// use std::time::Duration;
/// use presign::{Credentials, ResponseHeaders, S3Config};
///
/// let signer = S3Config::new("http://127.0.0.1:9000", "us-east-1", "avatars",
///     Credentials::new("access-key", "secret-key")).signer()?;
/// let headers = ResponseHeaders::new().cache_control("private, max-age=3300, immutable");
/// let url = signer.presign_get_with("users/42/v1.png", Duration::from_secs(3_600), &headers)?;
/// assert!(url.url.contains("&response-cache-control=private%2C%20max-age%3D3300%2C%20immutable&X-Amz-Signature="));
/// # Ok::<_, presign::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeaders {
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_type: Option<String>,
}

impl ResponseHeaders {
    /// No overrides.
    pub const fn new() -> Self {
        ResponseHeaders {
            cache_control: None,
            content_disposition: None,
            content_type: None,
        }
    }

    /// The `Cache-Control` header of the answer.
    #[must_use]
    pub fn cache_control(mut self, value: impl Into<String>) -> Self {
        self.cache_control = Some(value.into());
        self
    }

    /// The `Content-Disposition` header of the answer.
    #[must_use]
    pub fn content_disposition(mut self, value: impl Into<String>) -> Self {
        self.content_disposition = Some(value.into());
        self
    }

    /// The `Content-Type` header of the answer.
    #[must_use]
    pub fn content_type(mut self, value: impl Into<String>) -> Self {
        self.content_type = Some(value.into());
        self
    }

    /// Whether no override is set.
    pub fn is_empty(&self) -> bool {
        self.cache_control.is_none()
            && self.content_disposition.is_none()
            && self.content_type.is_none()
    }

    /// The query parameters, in SigV4's canonical (byte) order. `X-Amz-*` sort
    /// before them (upper case before lower case).
    fn params(&self) -> [(&'static str, Option<&str>); 3] {
        [
            ("response-cache-control", self.cache_control.as_deref()),
            (
                "response-content-disposition",
                self.content_disposition.as_deref(),
            ),
            ("response-content-type", self.content_type.as_deref()),
        ]
    }

    fn validate(&self) -> Result<()> {
        for (name, value) in self.params() {
            let Some(value) = value else { continue };
            let reason = if value.is_empty() {
                Some("it is empty")
            } else if value.len() > 1_024 {
                Some("it is longer than 1024 bytes")
            } else if !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                Some("only printable ASCII is allowed in a header value")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::InvalidResponseHeader { name, reason });
            }
        }
        Ok(())
    }
}

/// Where the objects live: endpoint, region, bucket, URL style and credentials.
/// Builds a [`Signer`] and (with [`S3Config::object_store`]) an `object_store`
/// client for the same bucket.
///
/// ```
/// use presign::{Credentials, S3Config, UrlStyle};
/// let config = S3Config::new("http://127.0.0.1:9000", "us-east-1", "avatars",
///     Credentials::new("minio", "minio-secret"));
/// assert_eq!(config.url_style(), UrlStyle::Path);
/// let signer = config.signer()?;
/// # let _ = signer;
/// # Ok::<_, presign::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct S3Config {
    endpoint: String,
    region: String,
    bucket: String,
    style: UrlStyle,
    credentials: Credentials,
}

impl S3Config {
    /// A path-style configuration; see [`S3Config::virtual_hosted`].
    pub fn new(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        bucket: impl Into<String>,
        credentials: Credentials,
    ) -> Self {
        S3Config {
            endpoint: endpoint.into(),
            region: region.into(),
            bucket: bucket.into(),
            style: UrlStyle::Path,
            credentials,
        }
    }

    /// AWS S3 in `region`: `https://s3.<region>.amazonaws.com`, virtual-hosted.
    pub fn aws(
        region: impl Into<String>,
        bucket: impl Into<String>,
        credentials: Credentials,
    ) -> Self {
        let region = region.into();
        let endpoint = if region == "us-east-1" {
            "https://s3.amazonaws.com".to_owned()
        } else {
            format!("https://s3.{region}.amazonaws.com")
        };
        S3Config::new(endpoint, region, bucket, credentials).virtual_hosted()
    }

    /// Uses `https://bucket.endpoint/key` URLs.
    #[must_use]
    pub fn virtual_hosted(mut self) -> Self {
        self.style = UrlStyle::VirtualHosted;
        self
    }

    /// Uses `https://endpoint/bucket/key` URLs (the default).
    #[must_use]
    pub fn path_style(mut self) -> Self {
        self.style = UrlStyle::Path;
        self
    }

    /// The endpoint as given.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    /// The region.
    pub fn region(&self) -> &str {
        &self.region
    }
    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
    /// The URL style.
    pub fn url_style(&self) -> UrlStyle {
        self.style
    }
    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// A signer for this bucket, using the system clock.
    pub fn signer(&self) -> Result<Signer> {
        Signer::new(self.clone())
    }

    /// An `object_store` client for this bucket (upload, head, delete).
    pub fn object_store(&self) -> Result<object_store::aws::AmazonS3> {
        let endpoint = parse_endpoint(&self.endpoint)?;
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint.trim_end_matches('/'))
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.credentials.access_key_id)
            .with_secret_access_key(&self.credentials.secret_access_key)
            .with_virtual_hosted_style_request(self.style == UrlStyle::VirtualHosted)
            .with_allow_http(!endpoint.https);
        if let Some(token) = &self.credentials.session_token {
            builder = builder.with_token(token);
        }
        builder.build().map_err(|source| Error::ObjectStore {
            operation: "configure",
            source,
        })
    }
}

struct Endpoint {
    https: bool,
    /// `host[:port]`, the port only when it is not the scheme's default.
    authority: String,
}

fn parse_endpoint(endpoint: &str) -> Result<Endpoint> {
    let bad = |reason: &str| Error::InvalidEndpoint {
        reason: reason.to_owned(),
    };
    let (https, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("it must start with http:// or https://"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(bad("the host is missing"));
    }
    if rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad(
            "only scheme://host[:port] is allowed (no path, query or user info)",
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal without port (`[::1]`) has colons inside brackets only.
        Some((host, port)) if !port.contains(']') => {
            let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
            (host, Some(port))
        }
        _ => (rest, None),
    };
    if host.is_empty() {
        return Err(bad("the host is missing"));
    }
    let default_port = if https { 443 } else { 80 };
    let authority = match port {
        Some(p) if p != default_port => format!("{}:{p}", host.to_ascii_lowercase()),
        _ => host.to_ascii_lowercase(),
    };
    Ok(Endpoint { https, authority })
}

fn validate_bucket(bucket: &str) -> Result<()> {
    let bad = |reason| Error::InvalidBucket {
        bucket: bucket.to_owned(),
        reason,
    };
    if !(3..=63).contains(&bucket.len()) {
        return Err(bad("it must be 3 to 63 characters long"));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err(bad(
            "only lower-case letters, digits, '.' and '-' are allowed",
        ));
    }
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !edge(bucket.bytes().next()) || !edge(bucket.bytes().last()) {
        return Err(bad("it must start and end with a letter or digit"));
    }
    if bucket.contains("..") {
        return Err(bad("it must not hold '..'"));
    }
    Ok(())
}

/// Checks an object key against S3's limits: not empty, at most 1024 bytes.
pub(crate) fn validate_object_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidObjectKey {
            len: 0,
            reason: "it is empty",
        });
    }
    if key.len() > MAX_OBJECT_KEY_BYTES {
        return Err(Error::InvalidObjectKey {
            len: key.len(),
            reason: "it is longer than S3's 1024 bytes",
        });
    }
    Ok(())
}

/// The derived SigV4 signing key for one day, kept as a keyed HMAC state so each
/// signature costs one HMAC over the string to sign.
struct DayKey {
    day: u64,
    mac: HmacSha256,
}

/// Signs SigV4 query-string (presigned) URLs for one bucket.
///
/// The signing key is derived once per UTC day (four HMACs) and cached; signing a
/// URL then costs one SHA-256 of the canonical request and one HMAC.
///
/// # Example: AWS's documented presigned URL
///
/// ```
/// use std::time::Duration;
/// use cache_core::Timestamp;
/// use presign::{Credentials, Method, S3Config};
///
/// let config = S3Config::new("https://s3.amazonaws.com", "us-east-1", "examplebucket",
///     Credentials::new("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"))
///     .virtual_hosted();
/// let signer = config.signer()?;
/// let at = Timestamp::from_unix_millis(1_369_353_600_000); // 2013-05-24T00:00:00Z
/// let url = signer.presign_at(Method::Get, "test.txt", Duration::from_secs(86_400), at)?;
/// assert!(url.url.ends_with("X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"));
/// # Ok::<_, presign::Error>(())
/// ```
pub struct Signer {
    config: S3Config,
    clock: Arc<dyn Clock>,
    /// `scheme://authority`, the URL up to the path.
    origin: String,
    /// The `host` header value signed into every URL.
    host: String,
    /// `/bucket` for path-style URLs, empty for virtual-hosted ones.
    path_prefix: String,
    /// `%2F<region>%2Fs3%2Faws4_request`, pre-encoded.
    scope_suffix_encoded: String,
    /// `/<region>/s3/aws4_request\n`.
    scope_suffix: String,
    /// The credentials in use and what is derived from them; replaced whole by
    /// [`Signer::set_credentials`].
    keyed: RwLock<Arc<Keyed>>,
}

/// Credentials with their pre-encoded URL parts and cached day key.
struct Keyed {
    credentials: Credentials,
    /// `&X-Amz-Credential=<akid>%2F`, pre-encoded.
    credential_prefix: String,
    /// `&X-Amz-Security-Token=<token>`, pre-encoded, or empty.
    token_param: String,
    day_key: Mutex<Option<DayKey>>,
}

impl Keyed {
    fn new(credentials: Credentials) -> Self {
        let mut credential_prefix = String::from("&X-Amz-Credential=");
        uri_encode_into(&credentials.access_key_id, false, &mut credential_prefix);
        credential_prefix.push_str("%2F");
        let token_param = match &credentials.session_token {
            Some(token) => format!("&X-Amz-Security-Token={}", uri_encode(token, false)),
            None => String::new(),
        };
        Keyed {
            credentials,
            credential_prefix,
            token_param,
            day_key: Mutex::new(None),
        }
    }

    /// The keyed HMAC for `day`, derived on the first signature of each day.
    fn day_mac(&self, day: u64, date: &str, region: &str) -> HmacSha256 {
        let mut slot = self.day_key.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = slot.as_ref().filter(|k| k.day == day) {
            return key.mac.clone();
        }
        let key = self.derive_key(date, region);
        let mac =
            <HmacSha256 as KeyInit>::new_from_slice(&key).unwrap_or_else(|_| unreachable_hmac());
        *slot = Some(DayKey {
            day,
            mac: mac.clone(),
        });
        mac
    }

    fn derive_key(&self, date: &str, region: &str) -> [u8; 32] {
        let secret_key = &self.credentials.secret_access_key;
        let mut secret = String::with_capacity(secret_key.len() + 4);
        secret.push_str("AWS4");
        secret.push_str(secret_key);
        let k_date = hmac(secret.as_bytes(), date.as_bytes());
        let k_region = hmac(&k_date, region.as_bytes());
        let k_service = hmac(&k_region, b"s3");
        hmac(&k_service, b"aws4_request")
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("endpoint", &self.origin)
            .field("region", &self.config.region)
            .field("bucket", &self.config.bucket)
            .field("style", &self.config.style)
            .field("credentials", &self.keyed().credentials)
            .finish_non_exhaustive()
    }
}

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

impl Signer {
    /// A signer for `config`, checking the endpoint, region and bucket.
    pub fn new(config: S3Config) -> Result<Self> {
        let endpoint = parse_endpoint(&config.endpoint)?;
        validate_bucket(&config.bucket)?;
        if config.region.is_empty()
            || !config
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Error::InvalidRegion {
                region: config.region.clone(),
            });
        }
        let scheme = if endpoint.https { "https" } else { "http" };
        let (host, path_prefix) = match config.style {
            UrlStyle::Path => (endpoint.authority, format!("/{}", config.bucket)),
            UrlStyle::VirtualHosted => (
                format!("{}.{}", config.bucket, endpoint.authority),
                String::new(),
            ),
        };
        Ok(Signer {
            origin: format!("{scheme}://{host}"),
            host,
            path_prefix,
            keyed: RwLock::new(Arc::new(Keyed::new(config.credentials.clone()))),
            scope_suffix_encoded: format!("%2F{}%2Fs3%2Faws4_request", config.region),
            scope_suffix: format!("/{}/s3/aws4_request\n", config.region),
            config,
            clock: Arc::new(SystemClock),
        })
    }

    /// Uses `clock` for the signing time of [`Signer::presign`].
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Uses a shared clock for the signing time of [`Signer::presign`].
    #[must_use]
    pub fn with_shared_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The configuration this signer was built from (its credentials are the
    /// initial ones; see [`Signer::credentials`]).
    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The signer's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// A URL for `method` on `key`, valid for `expires_in` from now (the signer's
    /// clock).
    pub fn presign(&self, method: Method, key: &str, expires_in: Duration) -> Result<PresignedUrl> {
        self.presign_at(method, key, expires_in, self.clock.now())
    }

    /// A GET (download) URL valid for `expires_in`.
    pub fn presign_get(&self, key: &str, expires_in: Duration) -> Result<PresignedUrl> {
        self.presign(Method::Get, key, expires_in)
    }

    /// A GET URL valid for `expires_in` whose answer carries `headers` (signed
    /// response-header overrides).
    pub fn presign_get_with(
        &self,
        key: &str,
        expires_in: Duration,
        headers: &ResponseHeaders,
    ) -> Result<PresignedUrl> {
        self.presign_at_with(Method::Get, key, expires_in, self.clock.now(), headers)
    }

    /// A PUT (upload) URL valid for `expires_in`.
    pub fn presign_put(&self, key: &str, expires_in: Duration) -> Result<PresignedUrl> {
        self.presign(Method::Put, key, expires_in)
    }

    /// A URL for `method` on `key`, signed as of `at` (truncated to the second) and
    /// valid for `expires_in` (1 second to 7 days, whole seconds).
    ///
    /// `key` is any S3 object key (1 to 1024 bytes); it is URI-encoded with `/`
    /// kept, so spaces, `+`, `=`, `&` and unicode reach the right object.
    pub fn presign_at(
        &self,
        method: Method,
        key: &str,
        expires_in: Duration,
        at: Timestamp,
    ) -> Result<PresignedUrl> {
        const NONE: ResponseHeaders = ResponseHeaders::new();
        self.presign_at_with(method, key, expires_in, at, &NONE)
    }

    /// [`Signer::presign_at`] with response-header overrides signed into the
    /// query (see [`ResponseHeaders`]; S3 honours them on GET).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::Timestamp;
    /// use presign::{Credentials, Method, ResponseHeaders, S3Config};
    ///
    /// let signer = S3Config::new("http://127.0.0.1:9000", "us-east-1", "avatars",
    ///     Credentials::new("access-key", "secret-key")).signer()?;
    /// let at = Timestamp::from_unix_millis(1_700_000_000_000);
    /// let plain = signer.presign_at(Method::Get, "k", Duration::from_secs(60), at)?;
    /// let typed = signer.presign_at_with(Method::Get, "k", Duration::from_secs(60), at,
    ///     &ResponseHeaders::new().content_type("image/png"))?;
    /// assert_ne!(plain.url, typed.url); // another signature
    /// assert!(signer.presign_at_with(Method::Get, "k", Duration::from_secs(60), at,
    ///     &ResponseHeaders::new().content_type("a\nb")).is_err()); // not a header value
    /// # Ok::<_, presign::Error>(())
    /// ```
    pub fn presign_at_with(
        &self,
        method: Method,
        key: &str,
        expires_in: Duration,
        at: Timestamp,
        headers: &ResponseHeaders,
    ) -> Result<PresignedUrl> {
        if expires_in > MAX_EXPIRY {
            return Err(Error::ExpiryTooLong {
                requested: expires_in,
                max: MAX_EXPIRY,
            });
        }
        let expires_secs = expires_in.as_secs();
        if expires_secs == 0 {
            return Err(Error::ExpiryTooShort);
        }
        validate_object_key(key)?;
        headers.validate()?;
        let keyed = self.keyed();
        let secs = at.as_unix_millis() / 1_000;
        let date_time = amz_date(secs);
        // Both are ASCII digits and letters, so `from_utf8` cannot fail.
        let date_time = std::str::from_utf8(&date_time).unwrap_or_default();
        let date = &date_time[..8];
        let mut expires_buf = [0u8; 20];
        let expires = fmt_u64(expires_secs, &mut expires_buf);

        // URL: origin + path + "?" + query + "&X-Amz-Signature=" + 64 hex.
        let mut url = String::with_capacity(
            self.origin.len()
                + self.path_prefix.len()
                + key.len() * 3
                + keyed.credential_prefix.len()
                + keyed.token_param.len()
                + 200,
        );
        url.push_str(&self.origin);
        let path_start = url.len();
        url.push_str(&self.path_prefix);
        url.push('/');
        uri_encode_into(key, true, &mut url);
        let query_start = url.len() + 1;
        url.push_str("?X-Amz-Algorithm=AWS4-HMAC-SHA256");
        url.push_str(&keyed.credential_prefix);
        url.push_str(date);
        url.push_str(&self.scope_suffix_encoded);
        url.push_str("&X-Amz-Date=");
        url.push_str(date_time);
        url.push_str("&X-Amz-Expires=");
        url.push_str(expires);
        url.push_str(&keyed.token_param);
        url.push_str("&X-Amz-SignedHeaders=host");
        for (name, value) in headers.params() {
            if let Some(value) = value {
                url.push('&');
                url.push_str(name);
                url.push('=');
                uri_encode_into(value, false, &mut url);
            }
        }

        let mut hasher = Sha256::new();
        hasher.update(method.as_str().as_bytes());
        hasher.update(b"\n");
        hasher.update(&url.as_bytes()[path_start..query_start - 1]);
        hasher.update(b"\n");
        hasher.update(&url.as_bytes()[query_start..]);
        hasher.update(b"\nhost:");
        hasher.update(self.host.as_bytes());
        hasher.update(b"\n\nhost\nUNSIGNED-PAYLOAD");
        let request_hash = hex32(&hasher.finalize());

        let mut mac = keyed.day_mac(secs / 86_400, date, &self.config.region);
        mac.update(ALGORITHM.as_bytes());
        mac.update(b"\n");
        mac.update(date_time.as_bytes());
        mac.update(b"\n");
        mac.update(date.as_bytes());
        mac.update(self.scope_suffix.as_bytes());
        mac.update(&request_hash);
        let signature = hex32(&mac.finalize().into_bytes());

        url.push_str("&X-Amz-Signature=");
        url.push_str(std::str::from_utf8(&signature).unwrap_or_default());

        let mut expires_at = Timestamp::from_unix_millis(secs.saturating_mul(1_000))
            .saturating_add(Duration::from_secs(expires_secs));
        if let Some(creds_expire) = keyed.credentials.expires_at {
            expires_at = expires_at.min(creds_expire);
        }
        Ok(PresignedUrl { url, expires_at })
    }

    fn keyed(&self) -> Arc<Keyed> {
        self.keyed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The credentials URLs are signed with now.
    pub fn credentials(&self) -> Credentials {
        self.keyed().credentials.clone()
    }

    /// Signs with `credentials` from now on (rotated keys, refreshed STS
    /// credentials). URLs signed before keep working until they, or the old
    /// credentials, expire; if the old keys were revoked, clear any cache holding
    /// such URLs.
    pub fn set_credentials(&self, credentials: Credentials) {
        let keyed = Arc::new(Keyed::new(credentials));
        *self.keyed.write().unwrap_or_else(PoisonError::into_inner) = keyed;
    }
}

/// HMAC accepts keys of any length; this is never called.
#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // A fixed-size key is always accepted, so this cannot fail either.
    <HmacSha256 as KeyInit>::new(&Default::default())
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
    mac.update(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

fn fmt_u64(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        // `v % 10` is below 10.
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn example_signer() -> Signer {
        S3Config::new(
            "https://s3.amazonaws.com",
            "us-east-1",
            "examplebucket",
            Credentials::new("AKIAIOSFODNN7EXAMPLE", EXAMPLE_SECRET),
        )
        .virtual_hosted()
        .signer()
        .unwrap()
    }

    const EXAMPLE_AT: Timestamp = Timestamp::from_unix_millis(1_369_353_600_000);

    /// The example in AWS's "Authenticating Requests: Using Query Parameters (AWS
    /// Signature Version 4)" page, character for character.
    #[test]
    fn matches_aws_documented_presigned_url() {
        let url = example_signer()
            .presign_at(
                Method::Get,
                "test.txt",
                Duration::from_secs(86_400),
                EXAMPLE_AT,
            )
            .unwrap();
        assert_eq!(
            url.url,
            "https://examplebucket.s3.amazonaws.com/test.txt\
             ?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20130524T000000Z\
             &X-Amz-Expires=86400\
             &X-Amz-SignedHeaders=host\
             &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
        assert_eq!(
            url.expires_at,
            EXAMPLE_AT.saturating_add(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn cached_day_key_gives_the_same_signature_as_a_fresh_one() {
        let signer = example_signer();
        let next_day = EXAMPLE_AT.saturating_add(Duration::from_secs(86_400 + 5));
        let a = signer
            .presign_at(Method::Get, "a b", Duration::from_secs(60), next_day)
            .unwrap();
        let b = signer
            .presign_at(
                Method::Get,
                "test.txt",
                Duration::from_secs(86_400),
                EXAMPLE_AT,
            )
            .unwrap();
        assert!(b
            .url
            .ends_with("aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"));
        let fresh = example_signer()
            .presign_at(Method::Get, "a b", Duration::from_secs(60), next_day)
            .unwrap();
        assert_eq!(a, fresh);
    }

    #[test]
    fn expiry_above_seven_days_is_a_clear_error() {
        let err = example_signer()
            .presign_at(
                Method::Get,
                "k",
                MAX_EXPIRY + Duration::from_secs(1),
                EXAMPLE_AT,
            )
            .unwrap_err();
        assert!(matches!(err, Error::ExpiryTooLong { .. }));
        assert!(err.to_string().contains("at most 604800s"), "{err}");
        assert!(example_signer()
            .presign_at(Method::Get, "k", MAX_EXPIRY, EXAMPLE_AT)
            .is_ok());
        assert!(matches!(
            example_signer().presign_at(Method::Get, "k", Duration::from_millis(999), EXAMPLE_AT),
            Err(Error::ExpiryTooShort)
        ));
    }

    #[test]
    fn path_style_keeps_port_and_bucket_in_path() {
        let signer = S3Config::new(
            "http://127.0.0.1:9000/",
            "eu-west-1",
            "avatars",
            Credentials::new("ak", "sk"),
        )
        .signer()
        .unwrap();
        let url = signer
            .presign_at(
                Method::Put,
                "dir/a b+c=&ü",
                Duration::from_secs(60),
                EXAMPLE_AT,
            )
            .unwrap();
        assert!(
            url.url.starts_with(
                "http://127.0.0.1:9000/avatars/dir/a%20b%2Bc%3D%26%C3%BC?X-Amz-Algorithm"
            ),
            "{}",
            url.url
        );
        let default_port = S3Config::new(
            "https://minio.local:443",
            "r",
            "bkt",
            Credentials::new("a", "s"),
        )
        .signer()
        .unwrap();
        assert_eq!(default_port.host, "minio.local");
    }

    #[test]
    fn session_token_is_signed_in_sorted_order() {
        let signer = S3Config::new(
            "https://s3.amazonaws.com",
            "us-east-1",
            "examplebucket",
            Credentials::new("AKIAIOSFODNN7EXAMPLE", EXAMPLE_SECRET).with_session_token("tok/en+="),
        )
        .signer()
        .unwrap();
        let url = signer
            .presign_at(Method::Get, "k", Duration::from_secs(60), EXAMPLE_AT)
            .unwrap()
            .url;
        let expires = url.find("&X-Amz-Expires").unwrap();
        let token = url.find("&X-Amz-Security-Token=tok%2Fen%2B%3D").unwrap();
        let signed = url.find("&X-Amz-SignedHeaders").unwrap();
        assert!(expires < token && token < signed, "{url}");
    }

    #[test]
    fn url_expiry_is_capped_by_credentials() {
        let creds_end = EXAMPLE_AT.saturating_add(Duration::from_secs(600));
        let signer = S3Config::new(
            "https://s3.amazonaws.com",
            "us-east-1",
            "examplebucket",
            Credentials::new("AKIAIOSFODNN7EXAMPLE", EXAMPLE_SECRET).with_expiry(creds_end),
        )
        .signer()
        .unwrap();
        let url = signer
            .presign_at(Method::Get, "k", Duration::from_secs(3_600), EXAMPLE_AT)
            .unwrap();
        assert_eq!(url.expires_at, creds_end);
    }

    #[test]
    fn bad_configuration_is_rejected() {
        let creds = || Credentials::new("a", "s");
        for endpoint in [
            "s3.amazonaws.com",
            "ftp://x",
            "https://",
            "https://h/path",
            "http://h:99999",
        ] {
            assert!(
                matches!(
                    S3Config::new(endpoint, "r", "bkt", creds()).signer(),
                    Err(Error::InvalidEndpoint { .. })
                ),
                "{endpoint}"
            );
        }
        for bucket in ["ab", "Upper", "-abc", "a..b", "has space"] {
            assert!(
                matches!(
                    S3Config::new("http://h", "r", bucket, creds()).signer(),
                    Err(Error::InvalidBucket { .. })
                ),
                "{bucket}"
            );
        }
        assert!(matches!(
            S3Config::new("http://h", "", "bkt", creds()).signer(),
            Err(Error::InvalidRegion { .. })
        ));
        let signer = S3Config::new("http://h", "r", "bkt", creds())
            .signer()
            .unwrap();
        assert!(matches!(
            signer.presign_get("", Duration::from_secs(1)),
            Err(Error::InvalidObjectKey { .. })
        ));
        assert!(matches!(
            signer.presign_get(&"k".repeat(1_025), Duration::from_secs(1)),
            Err(Error::InvalidObjectKey { .. })
        ));
    }

    #[test]
    fn rotated_credentials_sign_from_then_on() {
        let signer = S3Config::new(
            "https://s3.amazonaws.com",
            "us-east-1",
            "examplebucket",
            Credentials::new("OLDKEY", "old-secret"),
        )
        .virtual_hosted()
        .signer()
        .unwrap();
        let before = signer
            .presign_at(
                Method::Get,
                "test.txt",
                Duration::from_secs(86_400),
                EXAMPLE_AT,
            )
            .unwrap();
        assert!(before.url.contains("X-Amz-Credential=OLDKEY%2F"));
        signer.set_credentials(Credentials::new("AKIAIOSFODNN7EXAMPLE", EXAMPLE_SECRET));
        let after = signer
            .presign_at(
                Method::Get,
                "test.txt",
                Duration::from_secs(86_400),
                EXAMPLE_AT,
            )
            .unwrap();
        assert_eq!(
            after,
            example_signer()
                .presign_at(
                    Method::Get,
                    "test.txt",
                    Duration::from_secs(86_400),
                    EXAMPLE_AT
                )
                .unwrap()
        );
        assert_eq!(signer.credentials().access_key_id(), "AKIAIOSFODNN7EXAMPLE");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let signer = S3Config::new(
            "https://s3.amazonaws.com",
            "us-east-1",
            "examplebucket",
            Credentials::new("AKIAIOSFODNN7EXAMPLE", EXAMPLE_SECRET)
                .with_session_token("SESSIONTOKENVALUE"),
        )
        .signer()
        .unwrap();
        for shown in [
            format!("{signer:?}"),
            format!("{:?}", signer.config()),
            format!("{signer:#?}"),
        ] {
            assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
            assert!(!shown.contains("SESSIONTOKENVALUE"), "{shown}");
            assert!(!shown.contains("AKIA"), "{shown}");
        }
    }
}
