//! Shared by the NATS test targets: the server URL from `KEEL_TEST_NATS_URL` (or a notice and
//! a skip), buses under a prefix of their own, and removal of that prefix's streams afterwards
//! — even when the test fails — so reruns never see old messages.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use keel_bus_nats::{NatsBus, Settings};

/// The variable naming the NATS server (with JetStream) tests may use.
pub const NATS_URL_VAR: &str = "KEEL_TEST_NATS_URL";

/// The NATS URL for tests, or `None` after printing a notice that `test` is skipped.
pub fn nats_url(test: &str) -> Option<String> {
    match std::env::var(NATS_URL_VAR) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("NOTICE: skipping `{test}`: {NATS_URL_VAR} is not set");
            None
        }
    }
}

/// A prefix no other test (or earlier run) uses.
pub fn unique_prefix() -> String {
    format!("kt{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Settings for tests: a unique prefix, 4 partitions, an ack wait and member timeout short
/// enough that a message or partition left behind comes back within a test's wait, and long
/// enough that a stalled machine does not make a live member look dead (tests of those
/// timeouts set shorter ones of their own).
pub fn settings() -> Settings {
    Settings {
        prefix: unique_prefix(),
        partitions: 4,
        ack_wait: Duration::from_secs(5),
        member_timeout: Duration::from_secs(5),
        ..Settings::default()
    }
}

/// A bus under its own prefix, and the guard deleting that prefix's streams when dropped.
pub async fn bus(url: &str) -> (NatsBus, Cleanup) {
    bus_with(url, settings()).await
}

/// Like [`bus`] with explicit settings.
pub async fn bus_with(url: &str, settings: Settings) -> (NatsBus, Cleanup) {
    let cleanup = Cleanup {
        url: url.to_owned(),
        settings: settings.clone(),
    };
    let bus = NatsBus::connect_with(url, settings).await.unwrap();
    (bus, cleanup)
}

/// Deletes the streams of a test's prefix on drop (on a thread of its own, so it also runs
/// while a failed test unwinds).
#[derive(Debug)]
pub struct Cleanup {
    url: String,
    settings: Settings,
}

impl Cleanup {
    /// A guard for a bus made some other way (e.g. from a URL with settings).
    pub fn new(url: &str, settings: Settings) -> Self {
        Self {
            url: url.to_owned(),
            settings,
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, settings) = (self.url.clone(), self.settings.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(bus) = NatsBus::connect_with(&url, settings).await {
                    let _ = bus.delete_all_streams().await;
                }
            });
        })
        .join();
    }
}

/// Waits up to 20 s for `f`.
pub async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..800 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not within 20 s: {what}");
}

/// A NATS server of the test's own (its own port and store directory), so a test can stop the
/// broker without disturbing anyone else. Killed on drop.
#[derive(Debug)]
pub struct OwnServer {
    binary: std::path::PathBuf,
    port: u16,
    dir: keel_store::testing::TempDir,
    child: Option<std::process::Child>,
}

impl OwnServer {
    /// Starts one, or prints a notice and returns `None` when `nats-server` is not installed.
    pub async fn start(test: &str) -> Option<Self> {
        let binary = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("nats-server"))
                    .find(|p| p.exists())
            })
        });
        let Some(binary) = binary else {
            eprintln!("NOTICE: skipping `{test}`: nats-server is not installed");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Self {
            binary,
            port,
            dir: keel_store::testing::TempDir::new(test),
            child: None,
        };
        s.restart().await;
        Some(s)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: no goodbye to the clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same port and store, and waits until JetStream answers.
    pub async fn restart(&mut self) {
        self.kill();
        let child = std::process::Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        for _ in 0..100 {
            if let Ok(c) = async_nats::connect(self.url()).await {
                use futures::StreamExt;
                let js = async_nats::jetstream::new(c);
                if !matches!(js.stream_names().next().await, Some(Err(_))) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("nats-server on port {} did not come up", self.port);
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}
