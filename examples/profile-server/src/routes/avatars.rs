//! `GET /api/users/{id}/avatar` and `GET /api/avatars?ids=...`: a user's
//! presigned URL (or a batch of them) as JSON, with `Cache-Control` never
//! past the URL's life minus the margin, and an `ETag`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use presign::PresignedUrl;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::app::AppState;
use crate::MAX_BATCH;

impl AppState {
    /// Users are `1..=users`: a decimal id without sign or leading zero,
    /// so an id that passes is its own canonical form, handed back as is.
    pub(super) fn user<'a>(&self, raw: &'a str) -> Result<&'a str, ApiError> {
        let valid = !raw.is_empty()
            && raw.len() <= 19
            && raw.bytes().all(|b| b.is_ascii_digit())
            && !(raw.len() > 1 && raw.starts_with('0'));
        let id: u64 = match raw.parse() {
            Ok(id) if valid => id,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "invalid user id {}: expected a positive decimal number",
                        cache_core::key::preview(raw)
                    ),
                ))
            }
        };
        if id == 0 || id > self.users {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown user {id}"),
            ));
        }
        Ok(raw)
    }
}

/// One avatar in the API's JSON.
#[derive(Debug, Serialize)]
struct AvatarBody<'a> {
    url: &'a str,
    /// Milliseconds since the Unix epoch.
    expires_at: u64,
    etag: String,
}

/// The ETag, quotes included: `"<24 hex digits>"`.
fn etag_of(url: &PresignedUrl) -> String {
    quoted(&etag_tag(url))
}

/// An ETag from its opaque tag: the tag between double quotes.
fn quoted(tag: &str) -> String {
    format!("\"{tag}\"")
}

/// The ETag's opaque tag (between its quotes): 24 hex digits.
fn etag_tag(url: &PresignedUrl) -> Cow<'_, str> {
    // The URL's SigV4 signature already is a SHA-256 HMAC over everything in
    // it (object key, expiry, overrides), so its first 96 bits identify the URL
    // as well as a hash of it would, without hashing it again per request.
    // SigV4 puts the signature last: `...&X-Amz-Signature=<64 hex>`, read in
    // place; anywhere else, it is searched for.
    const PARAM: &str = "X-Amz-Signature=";
    let u = url.url.as_str();
    let last = u
        .len()
        .checked_sub(64 + PARAM.len())
        .and_then(|at| u.get(at..))
        .filter(|tail| tail.starts_with(PARAM))
        .map(|tail| &tail[PARAM.len()..]);
    let signature = last
        .or_else(|| {
            u.rsplit_once(PARAM)
                .map(|(_, rest)| rest.split('&').next().unwrap_or(rest))
        })
        // The tag is the first 24 digits: only those are checked.
        .and_then(|sig| sig.get(..24))
        .filter(|tag| tag.bytes().all(|b| b.is_ascii_hexdigit()));
    if let Some(tag) = signature {
        return Cow::Borrowed(tag);
    }
    let digest = Sha256::digest(url.url.as_bytes());
    Cow::Owned(digest[..12].iter().map(|b| format!("{b:02x}")).collect())
}

/// One avatar's JSON (the [`AvatarBody`] fields, as serde_json writes them),
/// written straight into a buffer of its size. The generic serializer
/// escaped the URL (some 500 bytes) byte by byte and grew its buffer three
/// times, the last growth past glibc's small-chunk sizes, which made every
/// request consolidate the heap: perf put those at about a third of what
/// the warm route cost beyond `/healthz`. A URL that needs escaping (none
/// that S3 signs does) goes through serde_json.
fn avatar_json(url: &PresignedUrl, tag: &str) -> Vec<u8> {
    // What JSON strings must escape: quotes, backslashes, control
    // characters. Folded without an early exit, so it runs 16 bytes a step.
    let plain = |s: &str| {
        s.bytes()
            .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
    };
    if !(plain(&url.url) && plain(tag)) {
        let body = body_of(url, quoted(tag));
        // Serializing strings and a number into a Vec cannot fail.
        return serde_json::to_vec(&body).unwrap_or_default();
    }
    // 20 digits hold any u64.
    let mut out = Vec::with_capacity(url.url.len() + tag.len() + 60);
    out.extend_from_slice(b"{\"url\":\"");
    out.extend_from_slice(url.url.as_bytes());
    out.extend_from_slice(b"\",\"expires_at\":");
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{}", url.expires_at.as_unix_millis());
    out.extend_from_slice(b",\"etag\":\"\\\"");
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(b"\\\"\"}");
    out
}

fn body_of(url: &PresignedUrl, etag: String) -> AvatarBody<'_> {
    AvatarBody {
        url: &url.url,
        expires_at: url.expires_at.as_unix_millis(),
        etag,
    }
}

/// Seconds a client may keep the answer: the URL's remaining life minus the
/// margin, so a cached answer never hands out a dead (or nearly dead) URL.
fn max_age(state: &AppState, url: &PresignedUrl) -> u64 {
    url.remaining(state.clock.now())
        .saturating_sub(state.urls.margin())
        .as_secs()
}

fn cache_control(seconds: u64) -> HeaderValue {
    HeaderValue::try_from(format!("private, max-age={seconds}"))
        .unwrap_or(HeaderValue::from_static("no-store"))
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

pub(super) async fn get_avatar(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let user = state.user(&id)?;
    let url = state.urls.url(user).await?;
    let tag = etag_tag(&url);
    let etag = quoted(&tag);
    // The request's headers are read in place (the `HeaderMap` extractor
    // would copy them).
    let mut response = if if_none_match(request.headers(), &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut ok = Response::new(Body::from(avatar_json(&url, &tag)));
        ok.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        ok
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, cache_control(max_age(&state, &url)));
    if let Ok(v) = HeaderValue::try_from(etag) {
        h.insert(header::ETAG, v);
    }
    Ok(response)
}

pub(super) async fn get_avatars(
    State(state): State<Arc<AppState>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(raw) = query.get("ids") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing query parameter `ids` (e.g. ?ids=1,2,3)",
        ));
    };
    let parts: Vec<&str> = raw.split(',').map(str::trim).collect();
    if parts.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "too many ids: {} (at most {MAX_BATCH} per request)",
                parts.len()
            ),
        ));
    }
    let mut users: Vec<&str> = Vec::with_capacity(parts.len());
    for part in parts {
        let user = state.user(part)?;
        if !users.contains(&user) {
            users.push(user);
        }
    }
    let urls = state.urls.urls(&users).await?;
    let seconds = urls.iter().map(|u| max_age(&state, u)).min().unwrap_or(0);
    let body: BTreeMap<&str, AvatarBody> = users
        .iter()
        .copied()
        .zip(urls.iter().map(|url| body_of(url, etag_of(url))))
        .collect();
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, cache_control(seconds));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_core::Timestamp;

    fn url(s: &str) -> PresignedUrl {
        PresignedUrl {
            url: s.to_owned(),
            expires_at: Timestamp::from_unix_millis(1),
        }
    }

    #[test]
    fn the_etag_is_the_signatures_first_96_bits_wherever_it_stands() {
        let sig = "0123456789abcdef".repeat(4);
        let last = url(&format!("https://s3/k?X-Amz-Date=1&X-Amz-Signature={sig}"));
        let inside = url(&format!(
            "https://s3/k?X-Amz-Signature={sig}&x-id=GetObject"
        ));
        assert_eq!(etag_of(&last), "\"0123456789abcdef01234567\"");
        assert_eq!(etag_of(&inside), etag_of(&last));
    }

    #[test]
    fn the_avatar_json_is_what_serde_json_writes() {
        let sig = "0123456789abcdef".repeat(4);
        for raw in [
            format!("https://s3/k?X-Amz-Date=1&X-Amz-Signature={sig}"),
            "https://s3/a?plain".to_owned(),
            "https://s3/q\"uote\\back?X-Amz-Signature=00".to_owned(),
            "https://s3/ctl\u{1}\u{1f}?é€😀".to_owned(),
        ] {
            let u = PresignedUrl {
                url: raw,
                expires_at: Timestamp::from_unix_millis(1_765_000_000_123),
            };
            let tag = etag_tag(&u);
            let want = serde_json::to_vec(&body_of(&u, etag_of(&u))).expect("serde_json");
            assert_eq!(
                String::from_utf8_lossy(&avatar_json(&u, &tag)),
                String::from_utf8_lossy(&want),
                "{}",
                u.url
            );
        }
    }

    #[test]
    fn a_url_without_a_signature_gets_a_digest_of_itself() {
        let a = etag_of(&url("https://s3/a?plain"));
        let b = etag_of(&url("https://s3/b?plain"));
        assert_eq!(a.len(), 26, "{a}");
        assert_ne!(a, b);
        let short = etag_of(&url("https://s3/k?X-Amz-Signature=00"));
        assert_eq!(
            short.len(),
            26,
            "a signature too short is not used: {short}"
        );
    }
}
