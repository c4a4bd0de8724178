//! How the tier talks to Redis: scripts (one at a time, or pipelined),
//! `WAIT` for replicas, stamps, and the script calls of removals, writes and
//! fenced fills.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use cache_core::{key, Clock, Entry, Error, Fence, Operation, Result, Stamp, Timestamp};
use fred::clients::Client;
use fred::error::ErrorKind;
use fred::prelude::{ClientLike, Key, KeysInterface, LuaInterface, Value};
use fred::types::{CustomCommand, FromValue};

use super::codec::Corrupt;
use super::layout::FenceKeys;
use super::scripts::{is_noscript, Script};

pub(super) use super::codec::Codec;

/// The most bumps a scope's log keeps (it also drops those older than twice
/// the fence horizon). A stamp older than the last dropped one is refused.
const SCOPE_LOG_ENTRIES: i64 = 1024;

/// Whether a write must reach the configured replicas to count as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// `WAIT` for them (every removal, write-through and `clear`).
    ForReplicas,
    /// Done once the primary has it: the void after a failover (a later
    /// failover that loses it is itself seen, and voids again).
    PrimaryOnly,
}
use super::failover::{self};

use super::{scripts, Inner};

impl<C> Inner<C> {
    pub(super) fn error(&self, operation: Operation, err: fred::error::Error) -> Error {
        if matches!(err.kind(), ErrorKind::Timeout) {
            Error::Timeout {
                tier: self.name.to_string(),
                operation,
                after: self.command_timeout,
            }
        } else {
            Error::backend(self.name.to_string(), operation, err)
        }
    }

    /// The `PXAT` deadline for `expires_at`, on Redis's (wall-clock) time base.
    pub(super) fn pxat(&self, expires_at: Timestamp, now: Timestamp) -> i64 {
        let at = expires_at.as_unix_millis();
        let at = if self.system_clock {
            at
        } else {
            // Redis's own time base is the real wall clock: read it precisely
            // here (`SystemClock` rounds up by up to 20 ms for expiry checks).
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let offset = i128::from(wall) - i128::from(now.as_unix_millis());
            let shifted = i128::from(at) + offset;
            u64::try_from(shifted.max(1)).unwrap_or(u64::MAX)
        };
        i64::try_from(at).unwrap_or(i64::MAX)
    }

    /// Counts, logs and deletes a value that cannot be read.
    ///
    /// `seen` is the value as read: it is deleted only if the key still holds
    /// exactly those bytes (one atomic script), so a fresh value another instance
    /// wrote in the meantime survives. A key of another Redis type (`seen` is
    /// `None`) is deleted outright.
    pub(super) async fn corrupt(&self, rkey: &str, why: Corrupt, seen: Option<&[u8]>) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            tier = %self.name,
            key = %key::preview(rkey),
            reason = %why,
            "undecodable cache value treated as a miss and deleted"
        );
        let deleted = match seen {
            Some(bytes) => {
                self.eval::<i64>(
                    &scripts::DELETE_IF_UNCHANGED,
                    vec![Key::from(rkey)],
                    vec![Value::Bytes(Bytes::copy_from_slice(bytes))],
                )
                .await
            }
            None => self.pool.del::<i64, _>(rkey).await,
        };
        if let Err(err) = deleted {
            tracing::warn!(tier = %self.name, error = %err, "could not delete an undecodable value");
        }
    }

    pub(super) fn is_wrong_type(err: &fred::error::Error) -> bool {
        err.details().starts_with("WRONGTYPE")
    }

    /// Runs one script: `EVALSHA`, or `EVAL` (which caches it again) if the
    /// server does not have it.
    pub(super) async fn eval<R: FromValue>(
        &self,
        script: &Script,
        keys: Vec<Key>,
        args: Vec<Value>,
    ) -> std::result::Result<R, fred::error::Error> {
        Self::eval_on(self.pool.next(), script, keys, args).await
    }

    /// [`Inner::eval`] on `client`.
    pub(super) async fn eval_on<R: FromValue>(
        client: &Client,
        script: &Script,
        keys: Vec<Key>,
        args: Vec<Value>,
    ) -> std::result::Result<R, fred::error::Error> {
        match client
            .evalsha::<R, _, _, _>(script.sha.clone(), keys.clone(), args.clone())
            .await
        {
            Err(err) if is_noscript(&err) => client.eval(script.body, keys, args).await,
            result => result,
        }
    }

    /// Runs script calls in one pipeline (fred sends each to its key's node);
    /// the calls a server answered `NOSCRIPT` go again as `EVAL`, in a second
    /// pipeline. One result per call, in order.
    pub(super) async fn eval_all(
        &self,
        client: &Client,
        calls: Vec<ScriptCall>,
    ) -> Vec<std::result::Result<Value, fred::error::Error>> {
        if calls.is_empty() {
            return Vec::new();
        }
        // fred's pipelines have no Lua methods: the calls go as custom
        // commands, each routed by the hash slot of its first key.
        let pipe = client.pipeline();
        for call in &calls {
            let (command, args) = call.command(false);
            let queued: std::result::Result<(), _> = pipe.custom(command, args).await;
            if let Err(err) = queued {
                return vec![Err(err); calls.len()];
            }
        }
        let mut results = pipe.try_all::<Value>().await;
        let again: Vec<usize> = (0..results.len())
            .filter(|&i| matches!(&results[i], Err(e) if is_noscript(e)))
            .collect();
        if !again.is_empty() {
            let pipe = client.pipeline();
            for &i in &again {
                let (command, args) = calls[i].command(true);
                let queued: std::result::Result<(), _> = pipe.custom(command, args).await;
                if let Err(err) = queued {
                    results[i] = Err(err);
                }
            }
            for (i, result) in again.into_iter().zip(pipe.try_all::<Value>().await) {
                results[i] = result;
            }
        }
        results
    }

    /// How long a key generation is kept after its last bump, as a `PX`
    /// argument: twice the horizon (see "Fenced writes" in [`RedisTier`]).
    pub(super) fn generation_ttl_ms(&self) -> Value {
        let ms = self.horizon.saturating_mul(2).as_millis().max(1);
        Value::Integer(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    /// Whether `stamp` is young enough to be presented (a stamp older than
    /// the horizon may predate a removal whose generation has expired).
    pub(super) fn stamp_is_fresh(&self, stamp: Stamp, now: Timestamp) -> bool {
        stamp
            .taken_at()
            .is_none_or(|at| now.duration_since(at) <= self.horizon)
    }

    /// The stamps of `keys` (read as misses) at `now`: one `MGET` of their
    /// generations and the scope's on a single node, one pipeline of one `MGET`
    /// per shard on a cluster.
    pub(super) async fn stamps(
        &self,
        keys: &[FenceKeys],
        operation: Operation,
    ) -> Result<Vec<Stamp>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let err = |e| self.error(operation, e);
        let now = self.clock.now();
        let mut by_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            by_shard.entry(k.shard).or_default().push(i);
        }
        let mut out = vec![Stamp::NONE; keys.len()];
        let groups: Vec<Vec<Option<Bytes>>> = if by_shard.len() == 1 || !self.clustered {
            // Single node (one scope), or every key in one shard: one MGET.
            let shard = keys[0].shard;
            let mut names: Vec<&str> = keys.iter().map(|k| k.generation.as_str()).collect();
            names.push(self.layout.scope(shard));
            let gens: Vec<Option<Bytes>> = self.pool.mget(names).await.map_err(err)?;
            by_shard = BTreeMap::from([(shard, (0..keys.len()).collect())]);
            vec![gens]
        } else {
            let pipe = self.pool.next().pipeline();
            for (&shard, idx) in &by_shard {
                let mut names: Vec<&str> =
                    idx.iter().map(|&i| keys[i].generation.as_str()).collect();
                names.push(self.layout.scope(shard));
                let _: () = pipe.mget(names).await.map_err(err)?;
            }
            let groups = pipe.try_all::<Vec<Option<Bytes>>>().await;
            groups
                .into_iter()
                .collect::<std::result::Result<_, _>>()
                .map_err(err)?
        };
        for (idx, mut gens) in by_shard.values().zip(groups) {
            let scope = parse_generation(gens.pop().flatten().as_deref());
            for (&i, g) in idx.iter().zip(gens) {
                out[i] = Stamp::new(parse_generation(g.as_deref()), scope, now);
            }
        }
        Ok(out)
    }

    /// Bumps the scope generation of every shard (one script on a single node,
    /// one pipeline of them on a cluster) and logs that the bump covers the
    /// keys starting with `prefix` (all of them when it is empty), so every
    /// fill of such a key stamped before is refused; `remove_prefix` and
    /// `clear` do this before they delete.
    ///
    /// `wait`: whether the bump must reach the configured replicas
    /// ([`Replication`](super::Replication)) to count as done.
    pub(super) async fn bump_scopes(
        &self,
        prefix: &str,
        operation: Operation,
        wait: Wait,
    ) -> Result<()> {
        let mut encoded = String::with_capacity(prefix.len() + 8);
        key::encode_into(prefix, &mut encoded);
        let keep_us = 2 * u64::try_from(self.horizon.as_micros()).unwrap_or(u64::MAX / 4);
        let calls = (0..self.layout.shards())
            .map(|shard| ScriptCall {
                script: &scripts::BUMP_SCOPE,
                keys: vec![
                    Key::from(self.layout.scope(shard)),
                    Key::from(self.layout.scope_log(shard)),
                    Key::from(self.layout.scope_trimmed(shard)),
                ],
                args: vec![
                    Value::from(encoded.as_str()),
                    Value::Integer(SCOPE_LOG_ENTRIES),
                    Value::from(keep_us.to_string()),
                ],
            })
            .collect::<Vec<_>>();
        let client = self.pool.next();
        let slots: Vec<Option<u16>> = calls.iter().map(ScriptCall::slot).collect();
        for result in self.eval_all(client, calls).await {
            result.map_err(|e| self.error(operation, e))?;
        }
        match wait {
            Wait::ForReplicas => self.replicated(client, slots, operation).await,
            Wait::PrimaryOnly => Ok(()),
        }
    }

    /// Waits until the configured number of replicas have every write made on
    /// `client` so far (one `WAIT` per node of `slots` on a cluster).
    pub(super) async fn replicated(
        &self,
        client: &Client,
        slots: Vec<Option<u16>>,
        operation: Operation,
    ) -> Result<()> {
        if self.replication.replicas() == 0 {
            return Ok(());
        }
        let mut targets: Vec<Option<u16>> = Vec::new();
        if self.clustered {
            let routing = fred::interfaces::ClusterInterface::cached_cluster_state(client);
            let mut servers = Vec::new();
            for slot in slots.into_iter().flatten() {
                let server = routing.as_ref().and_then(|r| r.get_server(slot)).cloned();
                if !servers.contains(&server) {
                    servers.push(server);
                    targets.push(Some(slot));
                }
            }
        } else {
            targets.push(None);
        }
        for slot in targets {
            self.replication
                .wait(client, slot)
                .await
                .map_err(|e| match e {
                    failover::ReplicationError::Redis(e) => self.error(operation, e),
                    short => Error::backend(self.name.to_string(), operation, short),
                })?;
        }
        Ok(())
    }

    /// The script call that removes `keys`' value and bumps its generation.
    pub(super) fn remove_call(&self, keys: FenceKeys) -> ScriptCall {
        ScriptCall {
            script: &scripts::REMOVE,
            keys: vec![
                Key::from(keys.value),
                Key::from(keys.generation),
                Key::from(self.layout.scope(keys.shard)),
            ],
            args: vec![self.generation_ttl_ms()],
        }
    }

    /// The script call for an unconditional `put`: bump the generation, then
    /// write (or remove, if the entry has already expired).
    pub(super) fn write_call<V>(
        &self,
        keys: FenceKeys,
        entry: Entry<V>,
        now: Timestamp,
    ) -> Result<ScriptCall>
    where
        C: Codec<V>,
    {
        let entry = entry.capped_by_ttl(now, self.ttl);
        if entry.is_expired(now) {
            return Ok(self.remove_call(keys));
        }
        Ok(ScriptCall {
            script: &scripts::WRITE,
            keys: vec![Key::from(keys.value), Key::from(keys.generation)],
            args: vec![
                self.generation_ttl_ms(),
                Value::Integer(self.pxat(entry.expires_at, now)),
                Value::Bytes(self.envelope(&entry)?),
            ],
        })
    }

    /// The script call for a fenced fill, or `None` if it is refused without
    /// asking Redis (the fence's check fails, or the stamp is past the horizon).
    pub(super) fn fill_call<V>(
        &self,
        keys: FenceKeys,
        entry: Entry<V>,
        fence: &Fence<'_>,
        now: Timestamp,
    ) -> Result<Option<ScriptCall>>
    where
        C: Codec<V>,
    {
        let stamp = fence.stamp();
        if !self.stamp_is_fresh(stamp, now) {
            return Ok(None);
        }
        let entry = entry.capped_by_ttl(now, self.ttl);
        let (at, value) = if entry.is_expired(now) {
            // Written means "removed" for an entry that has already expired.
            (Value::from(""), Value::from(""))
        } else {
            let value = self.envelope(&entry)?;
            (
                Value::Integer(self.pxat(entry.expires_at, now)),
                Value::Bytes(value),
            )
        };
        // The in-process check, as late as possible: the stamp covers what
        // happens between here and the script.
        if !fence.holds() {
            return Ok(None);
        }
        Ok(Some(ScriptCall {
            script: scripts::fill(),
            keys: vec![
                Key::from(keys.value),
                Key::from(keys.generation),
                Key::from(self.layout.scope(keys.shard)),
                Key::from(self.layout.scope_log(keys.shard)),
                Key::from(self.layout.scope_trimmed(keys.shard)),
            ],
            // An open fence compares nothing: empty generations skip the
            // check in the script.
            args: if fence.is_open() {
                vec![Value::from(""), Value::from(""), at, value]
            } else {
                vec![
                    Value::from(stamp.key_generation().to_string()),
                    Value::from(stamp.scope_generation().to_string()),
                    at,
                    value,
                    Value::from(keys.encoded),
                ]
            },
        }))
    }
}

/// One script call: the script, its `KEYS` and its `ARGV`.
pub(super) struct ScriptCall {
    pub(super) script: &'static Script,
    pub(super) keys: Vec<Key>,
    pub(super) args: Vec<Value>,
}

impl ScriptCall {
    /// The hash slot of its first key.
    pub(super) fn slot(&self) -> Option<u16> {
        self.keys.first().map(Key::cluster_hash)
    }

    /// The call as a raw `EVALSHA` (or `EVAL`) command for a pipeline,
    /// routed to the hash slot of its first key.
    pub(super) fn command(&self, eval: bool) -> (CustomCommand, Vec<Value>) {
        let slot = self.keys.first().map(Key::cluster_hash);
        let (name, script) = if eval {
            ("EVAL", Value::from(self.script.body))
        } else {
            ("EVALSHA", Value::String(self.script.sha.clone()))
        };
        let mut args = Vec::with_capacity(2 + self.keys.len() + self.args.len());
        args.push(script);
        args.push(Value::Integer(self.keys.len() as i64));
        args.extend(self.keys.iter().map(|k| Value::Bytes(k.inner().clone())));
        args.extend(self.args.iter().cloned());
        (CustomCommand::new_static(name, slot, false), args)
    }
}

/// A generation as Redis holds it (a decimal string; missing is `0`). Anything
/// else becomes `u64::MAX`, which no stored generation matches, so a fill
/// stamped with it is refused until a removal writes a good one.
pub(super) fn parse_generation(raw: Option<&[u8]>) -> u64 {
    match raw {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX),
    }
}

/// A generation in a script's reply (an integer or a decimal string).
pub(super) fn generation_of(value: &Value) -> u64 {
    match value {
        Value::Integer(i) => u64::try_from(*i).unwrap_or(u64::MAX),
        Value::String(s) => parse_generation(Some(s.as_bytes())),
        Value::Bytes(b) => parse_generation(Some(b)),
        Value::Null => 0,
        _ => u64::MAX,
    }
}
