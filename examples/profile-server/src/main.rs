//! `profile-server [--web-dir DIR]`: serves the profile-picture demo. Settings
//! from the environment (see `Config::from_env`). Ctrl-C (SIGINT) or SIGTERM
//! shuts it down gracefully: it stops accepting, finishes the requests in
//! flight, then exits 0.

use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: profile_server::Allocator = profile_server::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let mut config = match profile_server::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("profile-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--web-dir", Some(dir)) => config.web_dir = Some(PathBuf::from(dir)),
            _ => {
                eprintln!("usage: profile-server [--web-dir DIR]");
                return ExitCode::from(2);
            }
        }
    }
    let redis = if config.redis_url.is_some() {
        "Redis (REDIS_URL)"
    } else {
        "in-process"
    };
    let s3 = match &config.s3 {
        Some(s3) => format!("S3 at {} bucket {}", s3.endpoint(), s3.bucket()),
        None => "embedded s3s-fs (SigV4 on)".to_owned(),
    };
    let server = match profile_server::serve(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("profile-server: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("profile-server: shared tier {redis}; objects in {s3}");
    println!(
        "profile-server: open {}/  (metrics: {}/dashboard)",
        server.url(),
        server.url()
    );
    let signal = stop_signal().await;
    println!("profile-server: {signal}: finishing requests in flight, then exiting");
    server.shutdown().await;
    println!("profile-server: stopped");
    ExitCode::SUCCESS
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM and names the one that came.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                eprintln!("profile-server: cannot watch SIGTERM ({e}); Ctrl-C still stops");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
