//! [`PresignedUrls`]: per-user presigned GET URLs through a cache-core chain.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::{
    BoxError, Clock, Entry, Loader, Observer, SystemClock, Tier, TieredCache, TieredCacheBuilder,
};
use cache_server::{InvalidationBus, SyncedCache};
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectMeta, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
};

use sha2::Digest;

use crate::signer::validate_object_key;
use crate::{Error, Method, PresignedUrl, ResponseHeaders, Result, Signer, MAX_EXPIRY};

/// Longest user id accepted, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;

/// Default validity of a URL the service signs: 60 minutes.
pub const DEFAULT_URL_VALIDITY: Duration = Duration::from_secs(60 * 60);
/// Default safety margin: every URL handed out works for at least this long.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Default longest time a URL stays cached: 50 minutes.
pub const DEFAULT_MAX_CACHE_LIFETIME: Duration = Duration::from_secs(50 * 60);

/// With [`ObjectKeys::PerUpload`], how long after its URLs' expiry a replaced
/// version is kept: it covers a lookup that listed the old version just before
/// the upload and signed its URL just after.
pub const SWEEP_GRACE: Duration = Duration::from_secs(60);

/// How many object listings one batch lookup runs at a time
/// ([`ObjectKeys::PerUpload`]).
const LIST_CONCURRENCY: usize = 16;

/// How a user's picture maps to object keys.
///
/// ```
/// use presign::ObjectKeys;
/// assert_eq!(ObjectKeys::default(), ObjectKeys::Stable);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ObjectKeys {
    /// `<prefix><user>`: one key per user, overwritten by every upload. A lookup
    /// signs without touching the store. A URL handed out before an upload
    /// serves the new bytes, so browsers must not cache the bytes for long.
    #[default]
    Stable,
    /// `<prefix><user>/<version>`: every upload gets its own key, so a URL and
    /// its bytes never change; the newest version is the picture. A lookup that
    /// misses every tier lists the user's versions (one LIST request) before
    /// signing. GET URLs carry a signed `response-cache-control: private,
    /// max-age=<URL life − margin>, immutable`, so the browser's HTTP cache
    /// serves the bytes again without asking S3. Replaced versions are deleted by
    /// [`PresignedUrls::sweep`] once every URL to them has expired.
    ///
    /// A version is `<13-digit Unix milliseconds>-<16 hex digits of the bytes'
    /// SHA-256>`; the milliseconds grow strictly within one service, so two
    /// uploads in the same millisecond still get distinct, ordered keys.
    /// Across instances versions are ordered by their clocks: keep them in
    /// sync (NTP), or an upload made within the clock skew of another may sort
    /// before it.
    PerUpload,
}

/// A user id that is safe to turn into an object key.
///
/// 1 to [`MAX_USER_ID_BYTES`] bytes of ASCII letters, digits, `-`, `_`, `.` and
/// `@`; no `..` and no leading `.`. There is no `/` to escape the key prefix with,
/// and no character that needs encoding anywhere (S3 keys, Redis keys, URLs).
///
/// ```
/// use presign::UserId;
/// assert_eq!(UserId::parse("alice-42")?.as_str(), "alice-42");
/// assert!(UserId::parse("../bob").is_err());
/// assert!(UserId::parse("/etc").is_err());
/// assert!(UserId::parse("").is_err());
/// # Ok::<_, presign::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Checks `id` and wraps it.
    pub fn parse(id: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidUserId {
            preview: cache_core::key::preview(id),
            reason,
        };
        if id.is_empty() {
            return Err(bad("it is empty"));
        }
        if id.len() > MAX_USER_ID_BYTES {
            return Err(bad("it is longer than 128 bytes"));
        }
        if id.starts_with('/') {
            return Err(bad("it starts with '/'"));
        }
        if id.contains("..") {
            return Err(bad("it holds '..'"));
        }
        if id.starts_with('.') {
            return Err(bad("it starts with '.'"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
        {
            return Err(bad(
                "only ASCII letters, digits, '-', '_', '.' and '@' are allowed",
            ));
        }
        Ok(UserId(id.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Signs a GET URL for a user on a chain miss, and sets how long it may be cached.
struct SignLoader {
    signer: Arc<Signer>,
    clock: Arc<dyn Clock>,
    store: Arc<dyn ObjectStore>,
    keys: ObjectKeys,
    prefix: String,
    validity: Duration,
    margin: Duration,
    max_lifetime: Duration,
    signatures: AtomicU64,
    /// The milliseconds of the last version this service named
    /// ([`ObjectKeys::PerUpload`]).
    last_version: AtomicU64,
}

impl SignLoader {
    fn object_key(&self, user: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + user.len());
        key.push_str(&self.prefix);
        key.push_str(user);
        key
    }

    /// Where `user`'s versions live ([`ObjectKeys::PerUpload`]): `<prefix><user>`.
    fn versions_dir(&self, user: &str) -> Result<Path> {
        key_path(&self.object_key(user))
    }

    /// The key of `user`'s picture: the stable key, or the newest version
    /// (`None` if the user has none).
    async fn current_key(&self, user: &str) -> Result<Option<String>> {
        match self.keys {
            ObjectKeys::Stable => Ok(Some(self.object_key(user))),
            ObjectKeys::PerUpload => {
                let listing = self
                    .store
                    .list_with_delimiter(Some(&self.versions_dir(user)?))
                    .await
                    .map_err(|source| Error::ObjectStore {
                        operation: "list",
                        source,
                    })?;
                Ok(listing
                    .objects
                    .into_iter()
                    .filter(|meta| meta.location.filename().and_then(version_millis).is_some())
                    .map(|meta| meta.location.to_string())
                    .max())
            }
        }
    }

    async fn load_user(&self, user: &str) -> Result<Option<Entry<PresignedUrl>>> {
        match self.current_key(user).await? {
            Some(key) => self.sign(&key).map(Some),
            None => Ok(None),
        }
    }

    fn sign(&self, key: &str) -> Result<Entry<PresignedUrl>> {
        let now = self.clock.now();
        let url = match self.keys {
            ObjectKeys::Stable => self
                .signer
                .presign_at(Method::Get, key, self.validity, now)?,
            ObjectKeys::PerUpload => {
                // The URL's whole life is known before signing: the validity, or
                // less if the credentials expire first.
                let mut life = self.validity;
                if let Some(end) = self.signer.credentials().expires_at() {
                    life = life.min(end.duration_since(now));
                }
                let max_age = life.saturating_sub(self.margin).as_secs();
                let headers = ResponseHeaders::new()
                    .cache_control(format!("private, max-age={max_age}, immutable"));
                self.signer
                    .presign_at_with(Method::Get, key, self.validity, now, &headers)?
            }
        };
        self.signatures.fetch_add(1, Ordering::Relaxed);
        // The URL's expiry already includes the credentials' expiry.
        let cache_until = now
            .saturating_add(self.max_lifetime)
            .min(url.expires_at.saturating_sub(self.margin));
        if cache_until <= now {
            return Err(Error::CredentialsExpireTooSoon {
                remaining: url.remaining(now),
                needed: self.margin,
            });
        }
        Ok(Entry::new(url, cache_until))
    }
}

/// The milliseconds of a version name `<13 digits>-<16 hex>`.
fn version_millis(name: &str) -> Option<u64> {
    let (millis, hash) = name.split_once('-')?;
    let well_formed = millis.len() == 13
        && millis.bytes().all(|b| b.is_ascii_digit())
        && hash.len() == 16
        && hash.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then(|| millis.parse().ok()).flatten()
}

#[async_trait]
impl Loader<String, PresignedUrl> for SignLoader {
    async fn load(&self, user: &String) -> Result<Option<Entry<PresignedUrl>>, BoxError> {
        Ok(self.load_user(user).await?)
    }

    async fn load_many(
        &self,
        users: &[String],
    ) -> Result<Vec<Option<Entry<PresignedUrl>>>, BoxError> {
        match self.keys {
            // Signing alone: no I/O, nothing to overlap.
            ObjectKeys::Stable => users
                .iter()
                .map(|u| Ok(Some(self.sign(&self.object_key(u))?)))
                .collect(),
            ObjectKeys::PerUpload => {
                let loads: Vec<_> = users.iter().map(|u| self.load_user(u)).collect();
                Ok(futures_util::stream::iter(loads)
                    .buffered(LIST_CONCURRENCY)
                    .try_collect()
                    .await?)
            }
        }
    }
}

/// Hands out presigned GET URLs for users' pictures, cached by user id (never by
/// URL) in a [`TieredCache`] whose origin is the [`Signer`].
///
/// # Order
///
/// The tiers given to the builder are read first to last (typically in-process
/// in-process, then Redis); the signer answers when they all miss, and its URL is
/// written to every tier.
///
/// # Lifetimes
///
/// URLs are signed for [`DEFAULT_URL_VALIDITY`] (60 min). A URL is cached until
/// `min(now + max cache lifetime (50 min), URL expiry − margin, credentials
/// expiry − margin)`, and the chain never returns an entry past its cache expiry,
/// so every URL handed out works for at least the margin (5 min) more.
///
/// # Object keys
///
/// User `u`'s picture is the object `<key prefix>u` (prefix `avatars/` by
/// default), or with [`ObjectKeys::PerUpload`] the newest of the objects
/// `<key prefix>u/<version>`. User ids are checked by [`UserId::parse`].
///
/// # Replacing a picture
///
/// [`PresignedUrls::replace`] uploads the new bytes, then invalidates the user in
/// every tier (on every instance, when an invalidation bus is wired with
/// [`PresignedUrlsBuilder::bus`]). Lookups in flight at that moment do not write their result back. With
/// [`ObjectKeys::Stable`] (the default) the object key is stable, so any URL
/// still held serves the new bytes too; with [`ObjectKeys::PerUpload`] an old
/// URL keeps serving the old bytes until it expires.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use cache_core::{ManualClock, MemoryTier, Tier};
/// use presign::{Credentials, PresignedUrls, S3Config};
///
/// # futures_executor::block_on(async {
/// let config = S3Config::new("http://127.0.0.1:9000", "us-east-1", "avatars",
///     Credentials::new("access-key", "secret-key"));
/// let clock = ManualClock::new();
/// let urls = PresignedUrls::builder(config.signer()?, Arc::new(config.object_store()?))
///     .tier(Tier::new(MemoryTier::builder().clock(clock.clone()).build()).ttl(Duration::from_secs(600)))
///     .clock(clock.clone())
///     .build()?;
/// let first = urls.url("alice").await?;
/// assert_eq!(urls.url("alice").await?, first); // cached
/// assert!(first.url.starts_with("http://127.0.0.1:9000/avatars/avatars/alice?"));
/// # Ok::<_, presign::Error>(()) }).unwrap();
/// ```
pub struct PresignedUrls {
    cache: TieredCache<String, PresignedUrl>,
    loader: Arc<SignLoader>,
    store: Arc<dyn ObjectStore>,
    invalidator: Option<Arc<dyn Invalidator>>,
    synced: Option<SyncedCache<String, PresignedUrl>>,
}

impl fmt::Debug for PresignedUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresignedUrls")
            .field("cache", &self.cache)
            .field("signer", &self.loader.signer)
            .field("key_prefix", &self.loader.prefix)
            .field("url_validity", &self.loader.validity)
            .field("margin", &self.loader.margin)
            .field("max_cache_lifetime", &self.loader.max_lifetime)
            .finish_non_exhaustive()
    }
}

/// Removes a user's cached URL everywhere it may be cached, for
/// [`PresignedUrls::replace`] and [`PresignedUrls::delete`].
///
/// Without one, the service invalidates its own chain (every tier of this
/// instance). Wire one that also tells other instances (an invalidation bus over
/// Redis pub/sub) when several servers share the picture store.
#[async_trait]
pub trait Invalidator: fmt::Debug + Send + Sync + 'static {
    /// Removes `user` from every tier on every instance.
    async fn invalidate(&self, user: &str) -> Result<()>;
}

impl PresignedUrls {
    /// A builder signing with `signer` and storing objects in `store` (the same
    /// bucket: see [`crate::S3Config::object_store`]).
    pub fn builder(signer: Signer, store: Arc<dyn ObjectStore>) -> PresignedUrlsBuilder {
        PresignedUrlsBuilder {
            signer,
            store,
            chain: TieredCache::builder(),
            clock: Arc::new(SystemClock),
            prefix: "avatars/".to_owned(),
            keys: ObjectKeys::Stable,
            validity: DEFAULT_URL_VALIDITY,
            margin: DEFAULT_MARGIN,
            max_lifetime: DEFAULT_MAX_CACHE_LIFETIME,
            invalidator: None,
            bus: None,
        }
    }

    /// The URL for `user`'s picture, from the first tier holding one, else newly
    /// signed. It works for at least the margin more.
    pub async fn url(&self, user: &str) -> Result<PresignedUrl> {
        let user = UserId::parse(user)?;
        // Through the bus when there is one: it looks at its link first.
        let lookup = match &self.synced {
            Some(synced) => synced.get(&user.0).await?,
            None => self.cache.get(&user.0).await?,
        };
        lookup
            .map(|l| l.into_value())
            .ok_or_else(|| no_picture(&user.0))
    }

    /// URLs for many users at once, in order: one batch read per tier (one round
    /// trip to Redis), then one signature per user no tier holds. Fails on the
    /// first invalid id, before any lookup.
    pub async fn urls<S: AsRef<str>>(&self, users: &[S]) -> Result<Vec<PresignedUrl>> {
        let keys = users
            .iter()
            .map(|u| UserId::parse(u.as_ref()).map(|u| u.0))
            .collect::<Result<Vec<_>>>()?;
        let found = match &self.synced {
            Some(synced) => synced.get_many(&keys).await?,
            None => self.cache.get_many(&keys).await?,
        };
        found
            .into_iter()
            .zip(&keys)
            .map(|(l, user)| l.map(|l| l.into_value()).ok_or_else(|| no_picture(user)))
            .collect()
    }

    /// A presigned PUT URL for a client to upload `user`'s new picture directly
    /// (not cached). Call [`PresignedUrls::invalidate`] once the upload is done.
    ///
    /// With [`ObjectKeys::PerUpload`] the URL is for a new version, named from
    /// the signing time and `user` (the bytes are not known yet).
    pub fn upload_url(&self, user: &str, expires_in: Duration) -> Result<PresignedUrl> {
        let user = UserId::parse(user)?;
        let now = self.loader.clock.now();
        let key = self.new_key(&user, user.0.as_bytes());
        self.loader
            .signer
            .presign_at(Method::Put, &key, expires_in, now)
    }

    /// The key the next upload of `user` goes to: the stable key, or a new
    /// version named from the clock (strictly later than the last one this
    /// service named) and `bytes`' digest.
    fn new_key(&self, user: &UserId, bytes: &[u8]) -> String {
        let mut key = self.loader.object_key(&user.0);
        if self.loader.keys == ObjectKeys::PerUpload {
            let now = self.loader.clock.now().as_unix_millis();
            let prev = self
                .loader
                .last_version
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                    Some(now.max(last.saturating_add(1)))
                })
                .unwrap_or(now);
            let millis = now.max(prev.saturating_add(1));
            let digest = sha2::Sha256::digest(bytes);
            key.push('/');
            key.push_str(&format!("{millis:013}-"));
            for b in &digest[..8] {
                key.push_str(&format!("{b:02x}"));
            }
        }
        key
    }

    /// Uploads `bytes` as `user`'s picture, then removes the user's cached URL
    /// from every tier (every instance, with an [`Invalidator`]). The next lookup
    /// signs a fresh URL, which serves the new bytes; lookups in flight meanwhile
    /// do not write the old entry back.
    ///
    /// If the invalidation fails after the upload, the error says which tiers
    /// failed: call [`PresignedUrls::invalidate`] to retry.
    ///
    /// With [`ObjectKeys::PerUpload`] the bytes go to a new version; the old one
    /// stays until [`PresignedUrls::sweep`] deletes it after its URLs expired.
    pub async fn replace(&self, user: &str, bytes: Bytes, content_type: &str) -> Result<()> {
        let user = UserId::parse(user)?;
        self.put_object(&user, bytes, content_type).await?;
        self.invalidate_id(&user).await
    }

    /// Uploads `bytes` as `user`'s picture *without* invalidating any tier.
    /// Enough for seeding users who have no picture yet (a lookup of a user
    /// without picture fails and caches nothing); to replace a picture, use
    /// [`PresignedUrls::replace`], or this and then [`PresignedUrls::invalidate`]
    /// (with your own retries).
    pub async fn upload(&self, user: &str, bytes: Bytes, content_type: &str) -> Result<()> {
        self.put_object(&UserId::parse(user)?, bytes, content_type)
            .await
    }

    async fn put_object(&self, user: &UserId, bytes: Bytes, content_type: &str) -> Result<()> {
        let path = key_path(&self.new_key(user, &bytes))?;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type.to_owned().into());
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&path, PutPayload::from_bytes(bytes), options)
            .await
            .map_err(|source| Error::ObjectStore {
                operation: "put",
                source,
            })?;
        Ok(())
    }

    /// Removes `user`'s cached URL from every tier (every instance, with an
    /// [`Invalidator`]).
    pub async fn invalidate(&self, user: &str) -> Result<()> {
        self.invalidate_id(&UserId::parse(user)?).await
    }

    async fn invalidate_id(&self, user: &UserId) -> Result<()> {
        if let Some(inv) = &self.invalidator {
            return inv.invalidate(&user.0).await;
        }
        let report = match &self.synced {
            Some(synced) => synced.invalidate(&user.0).await,
            None => self.cache.invalidate(&user.0).await,
        };
        report.map(drop).map_err(Error::from)
    }

    /// The object's metadata (size, ETag, last modified; the newest version's
    /// with [`ObjectKeys::PerUpload`]); `Ok(None)` if the user has no picture.
    pub async fn head(&self, user: &str) -> Result<Option<ObjectMeta>> {
        let user = UserId::parse(user)?;
        let Some(key) = self.loader.current_key(&user.0).await? else {
            return Ok(None);
        };
        match self.store.head(&key_path(&key)?).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(Error::ObjectStore {
                operation: "head",
                source,
            }),
        }
    }

    /// Deletes `user`'s picture (every version, with
    /// [`ObjectKeys::PerUpload`]) and invalidates the cached URL.
    pub async fn delete(&self, user: &str) -> Result<()> {
        let user = UserId::parse(user)?;
        let keys = match self.loader.keys {
            ObjectKeys::Stable => vec![self.loader.object_key(&user.0)],
            ObjectKeys::PerUpload => self
                .list(&self.loader.versions_dir(&user.0)?)
                .await?
                .into_iter()
                .map(|meta| meta.location.to_string())
                .collect(),
        };
        for key in keys {
            self.delete_key(&key).await?;
        }
        self.invalidate_id(&user).await
    }

    async fn delete_key(&self, key: &str) -> Result<()> {
        match self.store.delete(&key_path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(Error::ObjectStore {
                operation: "delete",
                source,
            }),
        }
    }

    async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|source| Error::ObjectStore {
                operation: "list",
                source,
            })
    }

    /// With [`ObjectKeys::PerUpload`], deletes every replaced version whose URLs
    /// have all expired: a version replaced at `t` (its successor's time) goes
    /// once the clock passes `t + URL validity + `[`SWEEP_GRACE`]. The newest
    /// version of each user is never deleted. Returns how many objects were
    /// deleted; with [`ObjectKeys::Stable`] there is nothing to sweep.
    ///
    /// Run it now and then (a background task); it lists the whole key prefix.
    pub async fn sweep(&self) -> Result<usize> {
        if self.loader.keys == ObjectKeys::Stable {
            return Ok(0);
        }
        let prefix = self.loader.prefix.trim_end_matches('/');
        let objects = if prefix.is_empty() {
            self.store
                .list(None)
                .try_collect::<Vec<_>>()
                .await
                .map_err(|source| Error::ObjectStore {
                    operation: "list",
                    source,
                })?
        } else {
            self.list(&key_path(prefix)?).await?
        };
        // user directory → its versions (millis, key), oldest first.
        let mut users: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        for meta in objects {
            let key = meta.location.to_string();
            let Some(rest) = key.strip_prefix(&self.loader.prefix) else {
                continue;
            };
            let Some((user, version)) = rest.split_once('/') else {
                continue;
            };
            if let Some(millis) = version_millis(version) {
                users
                    .entry(user.to_owned())
                    .or_default()
                    .push((millis, key));
            }
        }
        let now = self.loader.clock.now().as_unix_millis();
        let keep_for = (self.loader.validity + SWEEP_GRACE).as_millis() as u64;
        let mut deleted = 0;
        for versions in users.values_mut() {
            versions.sort();
            for pair in versions.windows(2) {
                let replaced_at = pair[1].0;
                if now >= replaced_at.saturating_add(keep_for) {
                    self.delete_key(&pair[0].1).await?;
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }

    /// The object key of `user`'s picture with [`ObjectKeys::Stable`]; with
    /// [`ObjectKeys::PerUpload`], the directory holding its versions (see
    /// [`PresignedUrls::current_object_key`]).
    pub fn object_key(&self, user: &str) -> Result<String> {
        Ok(self.loader.object_key(&UserId::parse(user)?.0))
    }

    /// The key of the object `user`'s URL points at now (one LIST request
    /// with [`ObjectKeys::PerUpload`]); `None` if the user has no version.
    pub async fn current_object_key(&self, user: &str) -> Result<Option<String>> {
        self.loader.current_key(&UserId::parse(user)?.0).await
    }

    /// How object keys are laid out.
    pub fn object_keys(&self) -> ObjectKeys {
        self.loader.keys
    }

    /// The chain (for metrics, or to wire an invalidation bus to it).
    pub fn cache(&self) -> &TieredCache<String, PresignedUrl> {
        &self.cache
    }

    /// The chain wired to the invalidation bus, when one was given
    /// ([`PresignedUrlsBuilder::bus`]).
    pub fn synced(&self) -> Option<&SyncedCache<String, PresignedUrl>> {
        self.synced.as_ref()
    }

    /// The signer.
    pub fn signer(&self) -> &Signer {
        &self.loader.signer
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// How many URLs the service has signed (chain misses).
    pub fn signatures(&self) -> u64 {
        self.loader.signatures.load(Ordering::Relaxed)
    }

    /// The safety margin: every URL handed out works at least this much longer.
    pub fn margin(&self) -> Duration {
        self.loader.margin
    }
}

fn key_path(key: &str) -> Result<Path> {
    Path::parse(key).map_err(|e| Error::Config(format!("object key is not a valid path: {e}")))
}

fn no_picture(user: &str) -> Error {
    Error::NoPicture {
        user: user.to_owned(),
    }
}

/// Builder for [`PresignedUrls`]. See [`PresignedUrls::builder`].
#[must_use]
pub struct PresignedUrlsBuilder {
    signer: Signer,
    store: Arc<dyn ObjectStore>,
    chain: TieredCacheBuilder<String, PresignedUrl>,
    clock: Arc<dyn Clock>,
    prefix: String,
    keys: ObjectKeys,
    validity: Duration,
    margin: Duration,
    max_lifetime: Duration,
    invalidator: Option<Arc<dyn Invalidator>>,
    bus: Option<(InvalidationBus, Vec<usize>)>,
}

impl fmt::Debug for PresignedUrlsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresignedUrlsBuilder")
            .field("signer", &self.signer)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl PresignedUrlsBuilder {
    /// Adds a cache tier; tiers are read in the order they are added. Give the
    /// in-process tier first, then the shared one (Redis).
    pub fn tier(mut self, tier: Tier<String, PresignedUrl>) -> Self {
        self.chain = self.chain.tier(tier);
        self
    }

    /// The clock for signing times and cache expiry (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Reports every hit, miss, error and signature (origin load) to `observer`.
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.chain = self.chain.observer(observer);
        self
    }

    /// Shares an observer, e.g. the `cache-monitor` crate's metrics.
    pub fn shared_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.chain = self.chain.shared_observer(observer);
        self
    }

    /// Object keys are `<prefix><user id>` (default `avatars/`). Empty, or ending
    /// with `/`; not starting with `/`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How object keys are laid out (default [`ObjectKeys::Stable`]).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use presign::{Credentials, ObjectKeys, PresignedUrls, S3Config};
    /// let s3 = S3Config::new("http://127.0.0.1:9000", "us-east-1", "avatars",
    ///     Credentials::new("access-key", "secret-key"));
    /// let urls = PresignedUrls::builder(s3.signer()?, Arc::new(s3.object_store()?))
    ///     .object_keys(ObjectKeys::PerUpload)
    ///     .build()?;
    /// assert_eq!(urls.object_keys(), ObjectKeys::PerUpload);
    /// # Ok::<_, presign::Error>(())
    /// ```
    pub fn object_keys(mut self, keys: ObjectKeys) -> Self {
        self.keys = keys;
        self
    }

    /// How long signed URLs are valid (default 60 min, at most 7 days).
    pub fn url_validity(mut self, validity: Duration) -> Self {
        self.validity = validity;
        self
    }

    /// The least validity a URL handed out has left (default 5 min).
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// The longest a URL stays cached (default 50 min).
    pub fn max_cache_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// Invalidates through `invalidator` (e.g. an invalidation bus reaching
    /// every instance) instead of this chain only.
    pub fn invalidator(mut self, invalidator: Arc<dyn Invalidator>) -> Self {
        self.invalidator = Some(invalidator);
        self
    }

    /// Sends invalidations ([`PresignedUrls::replace`], [`PresignedUrls::delete`],
    /// [`PresignedUrls::invalidate`]) over `bus` to every instance, and applies
    /// theirs here: other instances' invalidations drop the user from
    /// `local_tiers` (the in-process tiers' indexes, usually `[0]`). `build` must
    /// then run inside a tokio runtime (it starts the listener).
    ///
    /// # Example: the production chain, `in-process → Redis → signer`
    ///
    /// ```no_run
    /// use std::{sync::Arc, time::Duration};
    /// use cache_core::{ConcurrentTier, Tier};
    /// use cache_server::{InvalidationBus, RedisTier};
    /// use presign::{Credentials, PresignedUrl, PresignedUrls, S3Config};
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let s3 = S3Config::new("http://127.0.0.1:9000", "us-east-1", "avatars",
    ///     Credentials::new("access-key", "secret-key"));
    /// let redis = "redis://127.0.0.1:6380";
    /// let urls = PresignedUrls::builder(s3.signer()?, Arc::new(s3.object_store()?))
    ///     .tier(Tier::new(ConcurrentTier::<String, PresignedUrl>::builder().max_bytes(32 << 20).build())
    ///         .ttl(Duration::from_secs(600)))
    ///     .tier(Tier::new(RedisTier::<PresignedUrl>::builder().url(redis).namespace("avatar-urls").build().await?)
    ///         .ttl(Duration::from_secs(3_000))
    ///         .timeout(Duration::from_millis(250)))
    ///     .bus(InvalidationBus::builder().url(redis).channel("avatar-urls:invalidate").connect().await?, vec![0])
    ///     .build()?;
    /// let url = urls.url("alice").await?;
    /// # let _ = url; Ok(()) }
    /// ```
    pub fn bus(mut self, bus: InvalidationBus, local_tiers: Vec<usize>) -> Self {
        self.bus = Some((bus, local_tiers));
        self
    }

    /// Checks the settings and builds the service.
    pub fn build(self) -> Result<PresignedUrls> {
        if self.validity > MAX_EXPIRY {
            return Err(Error::ExpiryTooLong {
                requested: self.validity,
                max: MAX_EXPIRY,
            });
        }
        if self.validity <= self.margin + Duration::from_secs(1) {
            return Err(Error::Config(format!(
                "URL validity ({:?}) must exceed the margin ({:?}) by more than a second",
                self.validity, self.margin
            )));
        }
        if self.max_lifetime.is_zero() {
            return Err(Error::Config(
                "max cache lifetime must not be zero".to_owned(),
            ));
        }
        if !(self.prefix.is_empty() || self.prefix.ends_with('/')) || self.prefix.starts_with('/') {
            return Err(Error::Config(format!(
                "key prefix {:?} must be empty or end with '/', and not start with '/'",
                self.prefix
            )));
        }
        let sample = format!(
            "{}{}/0000000000000-0000000000000000",
            self.prefix,
            "u".repeat(MAX_USER_ID_BYTES)
        );
        validate_object_key(&sample)?;
        Path::parse(&sample).map_err(|e| {
            Error::Config(format!(
                "key prefix {:?} is not a valid path: {e}",
                self.prefix
            ))
        })?;
        let loader = Arc::new(SignLoader {
            signer: Arc::new(self.signer),
            clock: self.clock.clone(),
            store: self.store.clone(),
            keys: self.keys,
            prefix: self.prefix,
            validity: self.validity,
            margin: self.margin,
            max_lifetime: self.max_lifetime,
            signatures: AtomicU64::new(0),
            last_version: AtomicU64::new(0),
        });
        let cache = self
            .chain
            .shared_clock(self.clock)
            .shared_origin(loader.clone())
            .build();
        let synced = self
            .bus
            .map(|(bus, local)| SyncedCache::new(cache.clone(), bus, local));
        Ok(PresignedUrls {
            cache,
            loader,
            store: self.store,
            invalidator: self.invalidator,
            synced,
        })
    }
}
