//! The registry: which instances are on a channel, in Redis, so that no
//! instance has to hear every other one's heartbeats.
//!
//! Two keys per channel, under one hash tag (one slot on a cluster, so one
//! script can touch both): `{<channel>}:live`, a sorted set of instance ids
//! scored by the Redis time (ms) until which each counts as live, and
//! `{<channel>}:peers`, a hash of each instance's [`Record`]. Every heartbeat
//! interval an instance refreshes its score (now + its bound) and record, and
//! publishes a heartbeat to its own inbox (one script). An invalidation is
//! published by a script that, in the same step, reads the live instances:
//! every one of them registered after its subscription was confirmed, so it
//! was subscribed when the invalidation was published, and it is the set the
//! publisher waits for.

use std::sync::LazyLock;

use fred::clients::Client;
use fred::prelude::{LuaInterface, Value};
use fred::types::FromValue;

use super::wire::{origin_hex, Record};
use crate::redis::scripts::{is_noscript, Script};

/// `local now = <Redis time in ms>`.
macro_rules! redis_now {
    () => {
        "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    };
}

/// Every heartbeat interval. `KEYS`: live, peers. `ARGV`: id, `<number>
/// <record>`, bound (ms), forget after (ms), inbox, heartbeat message, number.
/// A refresh whose number is not above the stored one is stale (it was
/// delayed, on a connection since replaced) and changes nothing: returns -1.
/// Otherwise returns Redis's time.
const HEARTBEAT_LUA: &str = concat!(
    redis_now!(),
    "local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur then
  local n = tonumber(string.match(cur, '^(%d+) '))
  if n and n >= tonumber(ARGV[7]) then return -1 end
end
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - tonumber(ARGV[4])))
for _, id in ipairs(gone) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return now
"
);

/// An invalidation, and who must acknowledge it. `KEYS`: live, peers.
/// `ARGV`: channel, message (an empty channel publishes nothing). Returns
/// `[id, record, id, record, ...]` of the instances live at that moment.
const PUBLISH_LUA: &str = concat!(
    redis_now!(),
    "if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%d', now), '+inf')
local out = {}
if #live == 0 then return out end
local records = redis.call('HMGET', KEYS[2], unpack(live))
for i, id in ipairs(live) do
  out[#out + 1] = id
  out[#out + 1] = records[i] or ''
end
return out
"
);

/// The records of `ARGV` (ids) that are still live: `''` for one that is
/// not. `KEYS`: live, peers.
const STATUS_LUA: &str = concat!(
    redis_now!(),
    "local out = {}
for i, id in ipairs(ARGV) do
  local s = redis.call('ZSCORE', KEYS[1], id)
  if s and tonumber(s) >= now then
    out[i] = redis.call('HGET', KEYS[2], id) or ''
  else
    out[i] = ''
  end
end
return out
"
);

/// An instance leaves. `KEYS`: live, peers. `ARGV`: id.
const GOODBYE_LUA: &str = "\
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
";

static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| Script::new(HEARTBEAT_LUA));
static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_LUA));
static STATUS: LazyLock<Script> = LazyLock::new(|| Script::new(STATUS_LUA));
static GOODBYE: LazyLock<Script> = LazyLock::new(|| Script::new(GOODBYE_LUA));

/// A live instance as the registry lists it: its id and its record, or why
/// its record does not parse (`Err(Some(version))`: another wire version).
pub(super) type Listed = (u64, Result<Record, Option<String>>);

/// One channel's registry keys and inbox names.
#[derive(Debug)]
pub(super) struct Registry {
    live: String,
    peers: String,
    /// `{<channel>}:i:`: an instance's inbox is this and its id.
    inbox_prefix: String,
}

impl Registry {
    pub(super) fn new(channel: &str) -> Self {
        Registry {
            live: format!("{{{channel}}}:live"),
            peers: format!("{{{channel}}}:peers"),
            inbox_prefix: format!("{{{channel}}}:i:"),
        }
    }

    /// The inbox of instance `id`: acks for its invalidations, and its own
    /// heartbeats.
    pub(super) fn inbox(&self, id: u64) -> String {
        format!("{}{id:016x}", self.inbox_prefix)
    }

    fn keys(&self) -> Vec<&str> {
        vec![self.live.as_str(), self.peers.as_str()]
    }

    /// Refreshes `id`'s registration and publishes `heartbeat` to its inbox;
    /// `false` if a refresh with a number at least `number` was stored
    /// already (this one is stale and changed nothing).
    pub(super) async fn heartbeat(
        &self,
        client: &Client,
        id: u64,
        (number, record): (u64, &Record),
        forget_after_ms: u64,
        heartbeat: String,
    ) -> Result<bool, fred::error::Error> {
        let args = vec![
            Value::from(format!("{id:016x}")),
            Value::from(format!("{number} {}", record.encode())),
            // Live for its bound + 10%: an instance whose refreshes stop
            // declares its link down (and flushes) within its bound of when
            // it sent the last refresh whose heartbeat came back, which is
            // before Redis ran it; the slack covers the watchdog's lateness
            // and the two clocks' rates (lc2 gave peers 5% the same way).
            Value::from(super::wire::millis(record.bound + record.bound / 10).to_string()),
            Value::from(forget_after_ms.to_string()),
            Value::from(self.inbox(id)),
            Value::from(heartbeat),
            Value::from(number.to_string()),
        ];
        let now: i64 = eval(client, &HEARTBEAT, self.keys(), args).await?;
        Ok(now >= 0)
    }

    /// Publishes `message` on `channel` (nothing if `None`) and lists the
    /// instances live at that moment, in one step.
    pub(super) async fn publish(
        &self,
        client: &Client,
        channel_message: Option<(&str, String)>,
    ) -> Result<Vec<Listed>, fred::error::Error> {
        let args = match channel_message {
            Some((channel, message)) => vec![Value::from(channel), Value::from(message)],
            None => vec![Value::from(""), Value::from("")],
        };
        let flat: Vec<String> = eval(client, &PUBLISH, self.keys(), args).await?;
        Ok(flat
            .chunks(2)
            .filter_map(|pair| {
                let id = origin_hex(pair.first()?)?;
                let record = decode(pair.get(1).map_or("", String::as_str));
                Some((id, record))
            })
            .collect())
    }

    /// The records of `ids` that are live now (`None`: gone or expired).
    pub(super) async fn status(
        &self,
        client: &Client,
        ids: &[u64],
    ) -> Result<Vec<Option<Record>>, fred::error::Error> {
        let args: Vec<Value> = ids
            .iter()
            .map(|id| Value::from(format!("{id:016x}")))
            .collect();
        let raw: Vec<String> = eval(client, &STATUS, self.keys(), args).await?;
        Ok(raw
            .iter()
            .map(|r| if r.is_empty() { None } else { decode(r).ok() })
            .collect())
    }

    /// Removes `id`: the others stop waiting for it at once.
    pub(super) async fn goodbye(&self, client: &Client, id: u64) -> Result<(), fred::error::Error> {
        let _: Value = eval(
            client,
            &GOODBYE,
            self.keys(),
            vec![Value::from(format!("{id:016x}"))],
        )
        .await?;
        Ok(())
    }
}

/// A stored `<number> <record>`.
fn decode(stored: &str) -> Result<Record, Option<String>> {
    match stored.split_once(' ') {
        Some((number, record)) if number.bytes().all(|b| b.is_ascii_digit()) => {
            Record::decode(record)
        }
        _ => Err(None),
    }
}

/// `EVALSHA`, or `EVAL` when the server does not have the script yet.
async fn eval<R: FromValue>(
    client: &Client,
    script: &Script,
    keys: Vec<&str>,
    args: Vec<Value>,
) -> Result<R, fred::error::Error> {
    let keys: Vec<String> = keys.into_iter().map(str::to_owned).collect();
    match client
        .evalsha::<R, _, _, _>(script.sha.clone(), keys.clone(), args.clone())
        .await
    {
        Err(err) if is_noscript(&err) => client.eval(script.body, keys, args).await,
        result => result,
    }
}

#[cfg(all(test, feature = "testing"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use fred::prelude::{Builder, ClientLike, Config};

    use super::*;
    use crate::bus::wire::{Build, LinkReport};
    use crate::testing::RedisServer;

    fn record(link: LinkReport, bound_ms: u64) -> Record {
        Record {
            link,
            bound: Duration::from_millis(bound_ms),
            build: Build::this(),
        }
    }

    #[tokio::test]
    async fn the_registry_lists_the_live_refuses_stale_refreshes_and_forgets_who_leaves() {
        let server = RedisServer::start();
        let client = Builder::from_config(Config::from_url(&server.url()).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        let reg = Registry::new("ch");
        let up = record(LinkReport::Up, 60_000);
        let down = record(LinkReport::Down, 60_000);
        assert!(reg
            .heartbeat(&client, 1, (5, &up), 600_000, "hb".into())
            .await
            .unwrap());
        // A refresh delayed on an old connection, numbered before the stored
        // one: nothing changes.
        assert!(!reg
            .heartbeat(&client, 1, (4, &down), 600_000, "hb".into())
            .await
            .unwrap());
        assert!(!reg
            .heartbeat(&client, 1, (5, &down), 600_000, "hb".into())
            .await
            .unwrap());
        assert_eq!(
            reg.status(&client, &[1]).await.unwrap(),
            vec![Some(up.clone())]
        );
        // One whose bound is 1 ms runs out at once.
        let brief = record(LinkReport::Up, 1);
        assert!(reg
            .heartbeat(&client, 2, (1, &brief), 600_000, "hb".into())
            .await
            .unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let listed = reg.publish(&client, None).await.unwrap();
        assert_eq!(listed, vec![(1, Ok(up.clone()))], "2 ran out");
        assert_eq!(
            reg.status(&client, &[2, 1]).await.unwrap(),
            vec![None, Some(up)]
        );
        reg.goodbye(&client, 1).await.unwrap();
        assert!(reg.publish(&client, None).await.unwrap().is_empty());
        assert_eq!(reg.status(&client, &[1]).await.unwrap(), vec![None]);
        // Garbage in the hash is listed as unparseable, never a panic.
        let _: i64 = fred::prelude::HashesInterface::hset(
            &client,
            "{ch}:peers",
            ("0000000000000003", "junk"),
        )
        .await
        .unwrap();
        let _: Value = client
            .eval(
                "return redis.call('ZADD', KEYS[1], '+inf', ARGV[1])",
                vec!["{ch}:live"],
                vec!["0000000000000003"],
            )
            .await
            .unwrap();
        assert_eq!(
            reg.publish(&client, None).await.unwrap(),
            vec![(3, Err(None))]
        );
    }
}
