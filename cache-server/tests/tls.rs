#![allow(clippy::unwrap_used)]
//! Redis as it is sold: TLS only (`rediss://`), a private CA, a password and
//! an ACL user restricted to the namespace's keys and the bus's channel.
//! Every test starts its own `TlsRedisServer` on a loopback port.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheLayer, Clock, Entry, Error, Source, SystemClock};
use cache_server::fred::prelude::{ClientLike, Config, KeysInterface};
use cache_server::testing::tls::{unrelated_ca_pem, TlsRedisServer, TLS_USER};
use cache_server::{Invalidation, InvalidationBus, RedisTier};
use support::{fast_bus, next_applied, Instance};

mod support;

const NS: &str = "avatars";
const CHANNEL: &str = "avatars:invalidate";

fn server() -> TlsRedisServer {
    TlsRedisServer::start(NS, &[CHANNEL])
}

fn entry(value: &str) -> Entry<String> {
    Entry::expiring_in(value.into(), SystemClock.now(), Duration::from_secs(60))
}

/// A tier over `url` trusting `ca`, connecting only once (no retries), so a
/// refused connection fails `build` quickly.
async fn tier(url: String, ca: &str) -> cache_core::Result<RedisTier<String>> {
    RedisTier::builder()
        .url(url)
        .tls_ca_pem(ca)
        .namespace(NS)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
}

#[tokio::test]
async fn a_redis_tier_over_rediss_puts_gets_and_removes() {
    let server = server();
    let url = server.url();
    assert!(url.starts_with(&format!("rediss://{TLS_USER}:")), "{url}");
    let tier = tier(url, server.ca_pem()).await.unwrap();
    let key = "user:42".to_string();

    assert_eq!(tier.get(&key).await.unwrap(), None);
    tier.put(&key, entry("https://img/42")).await.unwrap();
    assert_eq!(
        tier.get(&key).await.unwrap().unwrap().value,
        "https://img/42"
    );
    // It really is in this server, under the namespace.
    assert!(server
        .cli(&["GET", "avatars:user~3A42"])
        .unwrap()
        .contains("https://img/42"));
    let many = tier
        .get_many(&[key.clone(), "user:43".to_string()])
        .await
        .unwrap();
    assert!(many[0].is_some() && many[1].is_none());
    tier.remove(&key).await.unwrap();
    assert_eq!(tier.get(&key).await.unwrap(), None);
    tier.put(&key, entry("again")).await.unwrap();
    CacheLayer::<String, String>::clear(&tier).await.unwrap();
    assert_eq!(tier.get(&key).await.unwrap(), None);
}

#[tokio::test]
async fn a_fred_config_with_tls_takes_the_extra_ca_too() {
    let server = server();
    let config = Config::from_url(&server.url()).unwrap();
    assert!(config.tls.is_some());
    let tier: RedisTier<String> = RedisTier::builder()
        .config(config)
        .tls_ca_pem(server.ca_pem())
        .namespace(NS)
        .build()
        .await
        .unwrap();
    let key = "user:7".to_string();
    tier.put(&key, entry("seven")).await.unwrap();
    assert_eq!(tier.get(&key).await.unwrap().unwrap().value, "seven");
}

/// moka -> Redis -> origin, the Redis tier and the bus both over TLS as the
/// ACL user. The origin answers with the current `version`.
async fn instance(server: &TlsRedisServer, version: Arc<AtomicU64>) -> Instance {
    let bus = fast_bus(server.url())
        .tls_ca_pem(server.ca_pem())
        .channel(CHANNEL)
        .connect()
        .await
        .unwrap();
    let redis = tier(server.url(), server.ca_pem()).await.unwrap();
    support::instance(Some(redis), version, bus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_over_tls_delivers_an_invalidation_to_the_other_instance() {
    let server = server();
    let version = Arc::new(AtomicU64::new(1));
    let a = instance(&server, version.clone()).await;
    let b = instance(&server, version.clone()).await;
    let key = "user:42".to_string();

    assert_eq!(
        a.cache.get(&key).await.unwrap().unwrap().value(),
        "user:42@v1"
    );
    let hit = b.cache.get(&key).await.unwrap().unwrap();
    assert_eq!(
        hit.source,
        Source::Tier {
            index: 1,
            name: "redis"
        }
    );
    assert!(b.moka.contains(&key));

    version.store(2, Ordering::SeqCst);
    let mut applied = b.cache.applied();
    // Ok only once B (a live instance) has confirmed it over the bus.
    a.cache.invalidate(&key).await.unwrap();
    let got = next_applied(&mut applied).await;
    assert_eq!(got, Invalidation::Key(key.clone()));
    assert!(!b.moka.contains(&key));
    let fresh = b.cache.get(&key).await.unwrap().unwrap();
    assert_eq!(fresh.value(), "user:42@v2");
    assert_eq!(fresh.source, Source::Origin);
    let stats = b.cache.bus().stats();
    assert_eq!(stats.sequence_gaps, 0, "{stats:?}");
}

/// The error's text, checked to say why and to hold no password.
fn refused(err: &Error, passwords: &[&str]) -> String {
    let text = format!("{err} {err:?}");
    for p in passwords {
        assert!(!text.contains(p), "the error shows a password: {text}");
    }
    text
}

#[tokio::test]
async fn a_wrong_password_is_refused_without_showing_it() {
    let server = server();
    let wrong = "Not-The-Password-5f3a9c";
    let url = server.url_as(TLS_USER, wrong);

    let err = tier(url.clone(), server.ca_pem()).await.unwrap_err();
    let text = refused(&err, &[wrong, server.password(), server.admin_password()]);
    assert!(
        text.contains("WRONGPASS") || text.to_lowercase().contains("auth"),
        "the error should say the credentials were refused: {text}"
    );

    let err = InvalidationBus::builder()
        .url(url)
        .tls_ca_pem(server.ca_pem())
        .channel(CHANNEL)
        .connect()
        .await
        .unwrap_err();
    let text = refused(&err, &[wrong, server.password(), server.admin_password()]);
    assert!(
        text.contains("WRONGPASS") || text.to_lowercase().contains("auth"),
        "the error should say the credentials were refused: {text}"
    );

    // No password at all: refused too.
    let err = RedisTier::<String>::builder()
        .url(format!("rediss://127.0.0.1:{}", server.port()))
        .tls_ca_pem(server.ca_pem())
        .namespace(NS)
        .build()
        .await
        .unwrap_err();
    let text = refused(&err, &[server.password(), server.admin_password()]);
    assert!(
        text.contains("NOAUTH") || text.to_lowercase().contains("auth"),
        "{text}"
    );
}

/// Says the certificate was not trusted, and what to do.
fn says_certificate(text: &str) -> bool {
    text.contains("UnknownIssuer") && text.contains("not trusted") && text.contains("tls_ca_pem")
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let server = server();
    let passwords = [server.password(), server.admin_password()];

    // Another CA: the chain is checked, not just that some roots exist.
    let err = tier(server.url(), &unrelated_ca_pem()).await.unwrap_err();
    let text = refused(&err, &passwords);
    assert!(says_certificate(&text), "{text}");

    // Only the system's roots (a plain rediss:// URL).
    let err = RedisTier::<String>::builder()
        .url(server.url())
        .namespace(NS)
        .build()
        .await
        .unwrap_err();
    let text = refused(&err, &passwords);
    assert!(says_certificate(&text), "{text}");

    let err = InvalidationBus::builder()
        .url(server.url())
        .tls_ca_pem(unrelated_ca_pem())
        .channel(CHANNEL)
        .connect()
        .await
        .unwrap_err();
    let text = refused(&err, &passwords);
    assert!(says_certificate(&text), "{text}");

    // Plain text to the TLS port gets nowhere either.
    let err = RedisTier::<String>::builder()
        .url(server.url().replacen("rediss://", "redis://", 1))
        .namespace(NS)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_err();
    refused(&err, &passwords);
}

#[tokio::test]
async fn a_ca_pem_that_is_not_a_certificate_or_a_plain_url_is_refused_clearly() {
    let server = server();
    let err = tier(server.url(), "not a certificate").await.unwrap_err();
    let text = refused(&err, &[server.password()]);
    assert!(text.contains("tls_ca_pem"), "{text}");

    let err = tier(
        server.url().replacen("rediss://", "redis://", 1),
        server.ca_pem(),
    )
    .await
    .unwrap_err();
    let text = refused(&err, &[server.password()]);
    assert!(text.contains("rediss://"), "{text}");

    let err = InvalidationBus::builder()
        .url(server.url().replacen("rediss://", "redis://", 1))
        .tls_ca_pem(server.ca_pem())
        .connect()
        .await
        .unwrap_err();
    let text = refused(&err, &[server.password()]);
    assert!(text.contains("rediss://"), "{text}");
}

#[tokio::test]
async fn the_acl_user_cannot_touch_keys_or_channels_outside_its_own() {
    let server = server();
    let tier = tier(server.url(), server.ca_pem()).await.unwrap();
    // Its own namespace works (see the first test); a raw command outside it
    // on the same connections is refused by the server.
    let err = tier
        .pool()
        .set::<(), _, _>("other:k", "v", None, None, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOPERM"), "{err}");
    let err = tier
        .pool()
        .get::<Option<String>, _>("secret")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOPERM"), "{err}");

    // A tier on another namespace, as the same user: every write is refused.
    let other: RedisTier<String> = RedisTier::builder()
        .url(server.url())
        .tls_ca_pem(server.ca_pem())
        .namespace("other")
        .build()
        .await
        .unwrap();
    let err = other.put(&"k".to_string(), entry("v")).await.unwrap_err();
    let text = refused(&err, &[server.password()]);
    assert!(text.contains("NOPERM"), "{text}");
    assert_eq!(server.cli(&["EXISTS", "other:k"]).unwrap().trim(), "0");

    // A dangerous command is refused.
    let err = tier
        .pool()
        .custom::<(), _>(
            cache_server::fred::types::CustomCommand::new_static("FLUSHALL", None, false),
            Vec::<String>::new(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOPERM"), "{err}");

    // A channel it was not given: the bus cannot subscribe.
    let err = InvalidationBus::builder()
        .url(server.url())
        .tls_ca_pem(server.ca_pem())
        .channel("other:invalidate")
        .connect()
        .await
        .unwrap_err();
    let text = refused(&err, &[server.password()]);
    assert!(text.contains("NOPERM"), "{text}");
}

#[tokio::test]
async fn debug_of_the_builders_and_clients_never_shows_the_password() {
    let server = server();
    let secrets = [server.password(), server.admin_password()];
    let check = |what: &str, text: String| {
        for s in secrets {
            assert!(!text.contains(s), "{what} shows a password: {text}");
        }
        assert!(!text.contains("rediss://"), "{what} shows the URL: {text}");
    };

    let builder = RedisTier::<String>::builder()
        .url(server.url())
        .tls_ca_pem(server.ca_pem())
        .namespace(NS);
    let text = format!("{builder:?}");
    assert!(text.contains("tls_ca_pems: 1"), "{text}");
    check("RedisTierBuilder (url)", text);
    check(
        "RedisTierBuilder (config)",
        format!(
            "{:?}",
            RedisTier::<String>::builder().config(Config::from_url(&server.admin_url()).unwrap())
        ),
    );
    let tier = builder.build().await.unwrap();
    check("RedisTier", format!("{tier:?}"));

    let bus_builder = InvalidationBus::builder()
        .url(server.url())
        .tls_ca_pem(server.ca_pem())
        .channel(CHANNEL);
    check("InvalidationBusBuilder (url)", format!("{bus_builder:?}"));
    check(
        "InvalidationBusBuilder (config)",
        format!(
            "{:?}",
            InvalidationBus::builder().config(Config::from_url(&server.admin_url()).unwrap())
        ),
    );
    let bus = bus_builder.connect().await.unwrap();
    check("InvalidationBus", format!("{bus:?}"));
    check("TlsRedisServer", format!("{server:?}"));
    bus.shutdown().await;
}
