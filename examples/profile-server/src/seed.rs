//! Seeding: a generated picture for every user who has none, several
//! uploads at a time. The app counts as ready (`/readyz`) once it is done.
//!
//! A finished seed leaves a marker object in the bucket
//! (`profile-server/seeded-<users>`), so an instance that starts later (every
//! instance of a fleet, on every rolling restart) reads one object instead of
//! looking up every user while the fleet serves traffic. The marker lives with
//! the pictures: a bucket emptied loses it, and the next start seeds again.

use bytes::Bytes;
use cache_core::BoxError;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use presign::PresignedUrls;

use crate::{avatar, App};

/// Seeding uploads in flight at once.
const SEED_CONCURRENCY: usize = 64;

/// Gives every user `1..=users` without a picture a generated one, several
/// uploads at a time. `fresh`: the store is known to be empty (the embedded S3
/// just started), so there is nothing to look up first.
async fn seed(urls: &PresignedUrls, users: u64, fresh: bool) -> Result<(), BoxError> {
    let store = urls.store();
    let marker = marker(users);
    // Any failure to read the marker (absent, or S3 trouble) means: look.
    if !fresh && store.head(&marker).await.is_ok() {
        return Ok(());
    }
    futures_util::stream::iter(1..=users)
        .map(|user| async move {
            let id = user.to_string();
            if !fresh && urls.head(&id).await?.is_some() {
                return Ok(());
            }
            let png = Bytes::from(avatar::generate_png(user, 96));
            // No invalidation: a user without a picture has no cached URL.
            urls.upload(&id, png, "image/png").await
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    store.put(&marker, PutPayload::new()).await?;
    Ok(())
}

/// The object that says every user `1..=users` was given a picture.
fn marker(users: u64) -> Path {
    Path::from(format!("profile-server/seeded-{users}"))
}

impl App {
    /// Gives every user who has none a generated picture, then counts the
    /// app as ready (`/readyz`).
    pub(crate) async fn seed(&self) -> Result<(), BoxError> {
        let state = &self.state;
        seed(&state.urls, state.users, state.embedded_s3.is_some()).await?;
        state
            .seeded
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}
