//! Seeding: a generated picture for every user who has none, several
//! uploads at a time. The app counts as ready (`/readyz`) once it is done.

use bytes::Bytes;
use cache_core::BoxError;
use futures_util::{StreamExt, TryStreamExt};
use presign::PresignedUrls;

use crate::{avatar, App};

/// Seeding uploads in flight at once.
const SEED_CONCURRENCY: usize = 64;

/// Gives every user `1..=users` without a picture a generated one, several
/// uploads at a time. `fresh`: the store is known to be empty (the embedded S3
/// just started), so there is nothing to look up first.
async fn seed(urls: &PresignedUrls, users: u64, fresh: bool) -> Result<(), BoxError> {
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
    Ok(())
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
