//! The records [`IndexedDbTier`](super::IndexedDbTier) keeps (an entry and
//! its LRU record) and the read-write transactions that write them.

use cache_core::{Tags, Timestamp};
use futures_util::future::join_all;
use indexed_db_futures::database::Database;
use indexed_db_futures::error::Error as IdbError;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::TransactionMode;
use indexed_db_futures::KeyRange;
use js_sys::{Object, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};

use super::{Prepared, BY_ACCESS, ENTRIES, LRU, META, TOTAL};
use crate::record::{self, Refused};

pub(super) fn num(obj: &JsValue, field: &str) -> Option<f64> {
    Reflect::get(obj, &JsValue::from_str(field))
        .ok()
        .and_then(|v| v.as_f64())
}

pub(super) fn set(obj: &Object, field: &str, value: &JsValue) -> std::result::Result<(), IdbError> {
    Reflect::set(obj, &JsValue::from_str(field), value)
        .map(|_| ())
        .map_err(|e| IdbError::Unknown(e.into()))
}

pub(super) fn lru_record(
    last_access: Timestamp,
    size: u64,
) -> std::result::Result<JsValue, IdbError> {
    let obj = Object::new();
    set(
        &obj,
        "last_access",
        &JsValue::from_f64(last_access.as_unix_millis() as f64),
    )?;
    set(&obj, "size", &JsValue::from_f64(size as f64))?;
    Ok(obj.into())
}

/// The `entries` record of `bytes` under `key`: `{format, key, value,
/// expires_at, tags?}`, `value` a `Uint8Array`, `expires_at` a number (the
/// expiry index's key), `tags` JSON text, only when the entry has some.
pub(super) fn new_record(
    key: &str,
    bytes: &[u8],
    expires_at: Timestamp,
    tags: Option<&str>,
) -> std::result::Result<JsValue, IdbError> {
    let rec = Object::new();
    set(&rec, "format", &JsValue::from_str(record::FORMAT))?;
    set(&rec, "key", &JsValue::from_str(key))?;
    set(&rec, "value", &Uint8Array::from(bytes).into())?;
    let expires_at = JsValue::from_f64(record::millis_to_js(expires_at));
    set(&rec, "expires_at", &expires_at)?;
    if let Some(tags) = tags {
        set(&rec, "tags", &JsValue::from_str(tags))?;
    }
    Ok(rec.into())
}

/// The value, expiry and tags of a [`new_record`], if this crate wrote it for
/// `key` and it has not expired at `now`.
pub(super) fn read_record(
    rec: &JsValue,
    key: &str,
    now: Timestamp,
) -> std::result::Result<(Uint8Array, Timestamp, Tags), Refused> {
    let field = |name: &str| Reflect::get(rec, &JsValue::from_str(name)).ok();
    let text = |name: &str| field(name).and_then(|v| v.as_string());
    record::check_owner(text("format").as_deref(), text("key").as_deref(), key)?;
    let expires_at = num(rec, "expires_at")
        .map(record::millis_from_js)
        .ok_or(Refused::Foreign)?;
    let value = field("value")
        .and_then(|v| v.dyn_into::<Uint8Array>().ok())
        .ok_or(Refused::Foreign)?;
    let expires_at = record::unexpired(expires_at, now)?;
    let tags = record::tags_from_json(text("tags").as_deref().map(str::as_bytes))?;
    Ok((value, expires_at, tags))
}

/// Writes the LRU record (last access `now`) of every `(encoded key, size)`
/// in one read-write transaction.
pub(super) async fn write_touches(
    db: Database,
    touch: Vec<(String, u64)>,
    now: Timestamp,
) -> std::result::Result<(), IdbError> {
    let tx = db
        .transaction(LRU)
        .with_mode(TransactionMode::Readwrite)
        .build()?;
    let lru = tx.object_store(LRU)?;
    let mut writes = Vec::with_capacity(touch.len());
    for (enc, size) in touch {
        writes.push(lru.put(lru_record(now, size)?).with_key(enc).primitive()?);
    }
    for w in join_all(writes).await {
        w?;
    }
    tx.commit().await
}

/// Writes every prepared record and its LRU record in one read-write
/// transaction, evicting least recently used keys first if the total goes
/// over `max` bytes. The transaction is made, and its first requests, in
/// the future's first poll.
pub(super) async fn write_batch(
    db: Database,
    batch: Vec<Prepared>,
    max: f64,
    now: Timestamp,
) -> std::result::Result<(), IdbError> {
    let tx = db
        .transaction([ENTRIES, LRU, META])
        .with_mode(TransactionMode::Readwrite)
        .build()?;
    let entries = tx.object_store(ENTRIES)?;
    let lru = tx.object_store(LRU)?;
    let meta = tx.object_store(META)?;
    let olds = batch
        .iter()
        .map(|(enc, ..)| lru.get(enc.clone()).primitive())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let total = meta.get(TOTAL).primitive()?;
    let mut old = 0.0;
    for rec in join_all(olds).await {
        let rec: Option<JsValue> = rec?;
        old += rec.as_ref().and_then(|r| num(r, "size")).unwrap_or(0.0);
    }
    let total: Option<JsValue> = total.await?;
    let size: f64 = batch.iter().map(|(.., size)| *size as f64).sum();
    let mut total = total.and_then(|v| v.as_f64()).unwrap_or(0.0) - old + size;
    // Over budget: evict least recently used keys, in this transaction.
    while total > max {
        let victims: Vec<JsValue> = lru
            .index(BY_ACCESS)?
            .get_all_keys::<JsValue>()
            .with_limit(16 + batch.len() as u32)
            .primitive()?
            .await?
            .collect::<std::result::Result<_, _>>()?;
        let victims: Vec<JsValue> = victims
            .into_iter()
            .filter(|k| {
                k.as_string()
                    .is_none_or(|k| batch.iter().all(|(enc, ..)| *enc != k))
            })
            .collect();
        if victims.is_empty() {
            break;
        }
        for k in victims {
            if total <= max {
                break;
            }
            let rec: Option<JsValue> = lru.get(k.clone()).primitive()?.await?;
            total -= rec.as_ref().and_then(|r| num(r, "size")).unwrap_or(0.0);
            entries.delete(k.clone()).primitive()?.await?;
            lru.delete(k).primitive()?.await?;
        }
    }
    let mut writes = Vec::with_capacity(2 * batch.len());
    for (enc, rec, size) in batch {
        writes.push(entries.put(rec).with_key(enc.clone()).primitive()?);
        writes.push(lru.put(lru_record(now, size)?).with_key(enc).primitive()?);
    }
    let meta_write = meta
        .put(JsValue::from_f64(total.max(0.0)))
        .with_key(TOTAL)
        .primitive()?;
    for w in join_all(writes).await {
        w?;
    }
    meta_write.await?;
    tx.commit().await
}

/// The end of the key range holding every encoded key that starts with `start`:
/// encoded keys only use ASCII below `0x7F`.
pub(super) fn prefix_range(start: String) -> KeyRange<String> {
    let mut end = start.clone();
    end.push('\u{7F}');
    KeyRange::Bound(start, false, end, true)
}
