//! A throwaway `redis-server` that speaks only TLS and wants a password, as a
//! managed Redis does (feature `testing`).
//!
//! [`TlsRedisServer::start`] makes a fresh CA and a server certificate for
//! `127.0.0.1` and `localhost` signed by it (rcgen, in the server's temporary
//! directory), and starts `redis-server` with `--port 0` (no plain-text port)
//! and `--tls-port` on a free loopback port, without client certificates
//! (`--tls-auth-clients no`). The `default` user has a random password
//! (`requirepass`), and an ACL user `app` with another random password may use
//! only the keys `<namespace>:*` and the given pub/sub channels, and no
//! `@dangerous` command (`FLUSHALL`, `CONFIG`, `KEYS`, `INFO`...). Killed, and
//! its directory removed, on drop.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::{binary, free_port, temp_dir, INSTALL_HINT};

/// The ACL user [`TlsRedisServer::url`] connects as.
pub const TLS_USER: &str = "app";

/// A `redis-server` on a TLS-only loopback port, with a password and a
/// restricted ACL user (see the [module docs](self)). Killed on drop.
///
/// ```no_run
/// let server = cache_server::testing::tls::TlsRedisServer::start("avatars", &["avatars:invalidate"]);
/// println!("{}", server.port());
/// let ca_pem: &str = server.ca_pem(); // give it to `tls_ca_pem`
/// # let _ = ca_pem;
/// ```
pub struct TlsRedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    ca_pem: String,
    admin_password: String,
    password: String,
    namespace: String,
}

impl std::fmt::Debug for TlsRedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No passwords.
        f.debug_struct("TlsRedisServer")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// A random 32-hex-digit string (std's per-process random hash keys).
fn random_hex() -> String {
    let mut out = String::with_capacity(32);
    for i in 0..2u8 {
        let mut h = RandomState::new().build_hasher();
        h.write_u8(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// A fresh CA: its certificate (PEM) and the issuer that signs with it.
fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("cache-server test CA {name}"));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// The certificate (PEM) of a fresh CA that signed no server's certificate:
/// a client that trusts only it must refuse every [`TlsRedisServer`].
pub fn unrelated_ca_pem() -> String {
    new_ca("(unrelated)").pem()
}

impl TlsRedisServer {
    /// Starts a server whose ACL user [`TLS_USER`] may touch only the keys
    /// `<namespace>:*` and publish or subscribe only to `channels` (exact
    /// names), plus what an invalidation bus on each of those channels needs
    /// (the keys `{<channel>}:*` and the inboxes `{<channel>}:i:*`), and
    /// waits until it answers over TLS.
    pub fn start(namespace: &str, channels: &[&str]) -> Self {
        let glob = |s: &str| s.contains(['*', '?', '[', ']', '\\', ' ']);
        assert!(
            !namespace.is_empty() && !glob(namespace),
            "namespace {namespace:?}: no glob characters or spaces"
        );
        assert!(
            channels.iter().all(|c| !c.is_empty() && !glob(c)),
            "channels {channels:?}: no glob characters or spaces"
        );
        let dir = temp_dir("tls");
        let ca = new_ca("(server)");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let ca_pem = ca.pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();

        let mut server = TlsRedisServer {
            port: free_port(),
            dir,
            child: None,
            ca_pem,
            admin_password: random_hex(),
            password: random_hex(),
            namespace: namespace.to_owned(),
        };
        server.spawn(channels);
        server
    }

    fn spawn(&mut self, channels: &[&str]) {
        let bin = binary("redis-server");
        let dir = &self.dir;
        let log = std::fs::File::create(dir.join("redis.log")).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["--port", "0", "--tls-port"])
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "yes", "--loglevel", "warning"])
            .arg("--dir")
            .arg(dir)
            .arg("--tls-cert-file")
            .arg(dir.join("server.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("ca.pem"))
            .args(["--tls-auth-clients", "no"])
            .args(["--requirepass", &self.admin_password])
            .args(["--user", TLS_USER, "on"])
            .arg(format!(">{}", self.password))
            .args(["resetkeys", &format!("~{}:*", self.namespace)])
            // Each bus channel's registry keys and inboxes.
            .args(channels.iter().map(|c| format!("~{{{c}}}:*")))
            .arg("resetchannels")
            .args(channels.iter().map(|c| format!("&{c}")))
            .args(channels.iter().map(|c| format!("&{{{c}}}:i:*")))
            .args(["-@all", "+@all", "-@dangerous"]);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}. Install: {INSTALL_HINT}"));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).is_some_and(|out| out.trim() == "PONG") {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "redis-server with TLS exited ({status}) at start: {}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server with TLS on port {} did not answer within 10 s: {}",
            self.port,
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Runs `redis-cli --tls` as the `default` user (all rights), trusting
    /// the server's CA; its stdout, or `None` on failure.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(binary("redis-cli"))
            .args(["--tls", "--cacert"])
            .arg(self.dir.join("ca.pem"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .env("REDISCLI_AUTH", &self.admin_password)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The TLS port (there is no plain-text one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rediss://app:<password>@127.0.0.1:<port>`: the restricted ACL user.
    pub fn url(&self) -> String {
        self.url_as(TLS_USER, &self.password)
    }

    /// `rediss://<user>:<password>@127.0.0.1:<port>`, e.g. with a wrong
    /// password.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("rediss://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// `rediss://default:<password>@127.0.0.1:<port>`: the `default` user,
    /// with every right.
    pub fn admin_url(&self) -> String {
        self.url_as("default", &self.admin_password)
    }

    /// The ACL user's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The `default` user's password (`requirepass`).
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Where the CA certificate is (`<dir>/ca.pem`).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The namespace the ACL user's keys must be under.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The server's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server (SIGKILL) and waits until the port is closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TlsRedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
