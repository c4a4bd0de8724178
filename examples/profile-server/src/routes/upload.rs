//! `PUT /api/users/{id}/avatar`: reads the upload within its size and time
//! limits, checks it is an image, stores it as a new version and invalidates
//! the old URL on every tier of every instance.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use bytes::BytesMut;
use futures_util::StreamExt;

use super::ApiError;
use crate::app::AppState;
use crate::avatar;
use crate::events::Change;

/// How many times a PUT tries to invalidate the old URL before answering 502.
const INVALIDATE_ATTEMPTS: u32 = 4;

/// The most of an oversized upload's body read and dropped before the 413
/// answer (a larger one gets the answer at once and its connection closed).
const LINGER_LIMIT: usize = 8 << 20;

/// Reads and drops up to `limit` more bytes of a body, until it ends, the
/// limit is passed or `deadline`.
async fn drain<S, E>(stream: &mut S, limit: usize, deadline: tokio::time::Instant)
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    let mut seen = 0usize;
    while seen <= limit {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => seen += chunk.len(),
            _ => return,
        }
    }
}

pub(super) async fn put_avatar(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let user = state.user(&id)?.to_owned();
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("upload larger than {} bytes", state.max_upload),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let deadline = tokio::time::Instant::now() + state.limits.body_timeout;
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > state.max_upload as u64) {
        // Read (and drop) a body of reasonable size first, so a client that
        // sends it all before reading gets the 413 instead of a broken pipe.
        if declared.is_some_and(|n| n <= LINGER_LIMIT as u64) {
            drain(&mut stream, LINGER_LIMIT, deadline).await;
        }
        return Err(too_big());
    }
    let mut bytes = BytesMut::new();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let Ok(next) = next else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the upload's body did not arrive within {} ms",
                    state.limits.body_timeout.as_millis()
                ),
            ));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read body: {e}"))
        })?;
        if bytes.len() + chunk.len() > state.max_upload {
            drain(
                &mut stream,
                LINGER_LIMIT - bytes.len().min(LINGER_LIMIT),
                deadline,
            )
            .await;
            return Err(too_big());
        }
        bytes.extend_from_slice(&chunk);
    }
    let Some(content_type) = avatar::sniff_image(&bytes) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not an image: expected PNG, JPEG, GIF or WebP bytes",
        ));
    };
    state
        .urls
        .upload(&user, bytes.freeze(), content_type)
        .await?;
    // The new version is in S3; now no tier on any instance may keep the old
    // URL. A tier that failed (a Redis timeout under load) is retried: giving
    // up leaves the old URL cached until it expires.
    let mut attempt = 1;
    loop {
        match state.urls.invalidate(&user).await {
            Ok(()) => {
                // Every tier is done: open pages may now fetch the new one.
                state.events.publish(Change::Avatar(user));
                return Ok(StatusCode::NO_CONTENT);
            }
            Err(_) if attempt < INVALIDATE_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
