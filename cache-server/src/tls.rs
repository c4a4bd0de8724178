//! TLS helpers shared by [`crate::RedisTierBuilder`] and
//! [`crate::InvalidationBusBuilder`] (feature `tls`).

use std::sync::Arc;

use fred::prelude::Config;
use fred::types::config::{TlsConfig, TlsConnector, TlsHostMapping};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Makes `config`'s TLS connector trust the certificates in `pems` (PEM, one
/// or more `CERTIFICATE` blocks each) on top of the system's roots, with
/// rustls and the ring provider. Nothing to do when `pems` is empty.
///
/// Refuses a config without TLS (`redis://`): a CA for a plain-text
/// connection is a mistake, and silently connecting without TLS would hide it.
/// The errors never quote the config (it may hold a password).
pub(crate) fn trust_extra_cas(config: &mut Config, pems: &[Vec<u8>]) -> Result<(), String> {
    if pems.is_empty() {
        return Ok(());
    }
    let Some(tls) = config.tls.as_mut() else {
        return Err(
            "tls_ca_pem was given but the connection is not TLS: use a rediss:// (or \
             rediss-cluster://) URL, or a Config with `tls` set"
                .into(),
        );
    };
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for err in &system.errors {
        tracing::debug!(error = %err, "a system root certificate could not be loaded");
    }
    let (_, unparsable) = roots.add_parsable_certificates(system.certs);
    if unparsable > 0 {
        tracing::debug!(count = unparsable, "system root certificates skipped");
    }
    for (i, pem) in pems.iter().enumerate() {
        let mut added = 0usize;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("tls_ca_pem #{}: not valid PEM: {e}", i + 1))?;
            roots
                .add(cert)
                .map_err(|e| format!("tls_ca_pem #{}: unusable certificate: {e}", i + 1))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "tls_ca_pem #{}: no `-----BEGIN CERTIFICATE-----` block found",
                i + 1
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let hostnames = std::mem::replace(&mut tls.hostnames, TlsHostMapping::None);
    *tls = TlsConfig {
        connector: TlsConnector::from(client),
        hostnames,
    };
    Ok(())
}
