//! [`RedisTagStore`]: tag generations in one Redis hash, shared by a fleet.

use std::fmt;
use std::time::Duration;

use cache_core::{async_trait, Error, Operation, Result, TagStore};
use fred::error::ErrorKind;
use fred::interfaces::HashesInterface;
use fred::prelude::Pool;

use super::{Codec, RedisTier};

/// The generations of [tags](cache_core::Tags) in Redis, for every instance of
/// a fleet: one hash, `<namespace>:~tags`, field per tag. `invalidate_tag` is
/// one `HINCRBY`; a chain reads a tag's generation (`HMGET`) the first time it
/// meets the tag and keeps it, kept current by the bus
/// ([`SyncedCache::invalidate_tag`](crate::SyncedCache::invalidate_tag)) and
/// forgotten when the bus resyncs. No value is scanned.
///
/// The hash is the tier's own name (`~` then a lowercase letter, which no
/// encoded key can be): `clear` and `remove_prefix` leave it, so a generation
/// never goes back. One hash means one hash slot on a cluster.
///
/// ```
/// use std::sync::Arc;
/// use cache_core::{Entry, Tier, TieredCache, Timestamp};
/// use cache_server::{RedisTagStore, RedisTier};
///
/// # let server = cache_server::testing::RedisServer::start();
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let redis = RedisTier::<String>::builder().url(server.url()).namespace("avatars").build().await?;
/// let tags = Arc::new(RedisTagStore::new(&redis));
/// let cache: TieredCache<String, String> =
///     TieredCache::builder().tier(Tier::new(redis)).tag_store(tags).build();
/// let entry = Entry::new("https://img/42-v1".to_string(), Timestamp::MAX).with_tags(["user:42"]);
/// cache.put(&"avatar:42".to_string(), entry).await?;
/// assert!(cache.get(&"avatar:42".to_string()).await?.is_some());
/// cache.invalidate_tag("user:42").await?; // one HINCRBY, no scan
/// assert!(cache.get(&"avatar:42".to_string()).await?.is_none());
/// # Ok::<_, cache_core::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct RedisTagStore {
    pool: Pool,
    hash: String,
    command_timeout: Duration,
}

impl fmt::Debug for RedisTagStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTagStore")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl RedisTagStore {
    /// The tag store of `tier`'s namespace, on its connections: the store
    /// works while the tier lives (a chain holding the tier keeps it; a tier
    /// that made its own pool closes it when dropped).
    ///
    /// ```no_run
    /// # async fn demo(redis: cache_server::RedisTier<String>) {
    /// let tags = std::sync::Arc::new(cache_server::RedisTagStore::new(&redis));
    /// # let _ = tags; }
    /// ```
    pub fn new<V, C>(tier: &RedisTier<V, C>) -> Self
    where
        V: Send + Sync + 'static,
        C: Codec<V>,
    {
        RedisTagStore {
            pool: tier.pool().clone(),
            hash: format!("{}:~tags", tier.namespace()),
            command_timeout: tier.inner.command_timeout,
        }
    }

    /// The Redis hash the generations live in.
    ///
    /// ```no_run
    /// # fn demo(store: cache_server::RedisTagStore) {
    /// assert!(store.hash().ends_with(":~tags"));
    /// # }
    /// ```
    pub fn hash(&self) -> &str {
        &self.hash
    }

    fn error(&self, operation: Operation, err: fred::error::Error) -> Error {
        if matches!(err.kind(), ErrorKind::Timeout) {
            Error::Timeout {
                tier: "redis-tags".into(),
                operation,
                after: self.command_timeout,
            }
        } else {
            Error::backend("redis-tags", operation, err)
        }
    }
}

#[async_trait]
impl TagStore for RedisTagStore {
    fn name(&self) -> &str {
        "redis-tags"
    }

    async fn generations(&self, tags: &[&str]) -> Result<Vec<u64>> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let fields: Vec<&str> = tags.to_vec();
        let found: Vec<Option<String>> = self
            .pool
            .hmget(self.hash.as_str(), fields)
            .await
            .map_err(|e| self.error(Operation::Get, e))?;
        // A field that does not parse (written by something else) counts as
        // never bumped only if absent; garbage is an error, not a reset.
        found
            .into_iter()
            .map(|g| match g {
                None => Ok(0),
                Some(g) => g.parse().map_err(|_| {
                    Error::backend(
                        "redis-tags",
                        Operation::Get,
                        "a tag generation is not a number",
                    )
                }),
            })
            .collect()
    }

    async fn bump(&self, tag: &str) -> Result<u64> {
        let generation: i64 = self
            .pool
            .hincrby(self.hash.as_str(), tag, 1)
            .await
            .map_err(|e| self.error(Operation::Put, e))?;
        u64::try_from(generation).map_err(|_| {
            Error::backend(
                "redis-tags",
                Operation::Put,
                "a tag generation went negative",
            )
        })
    }
}
