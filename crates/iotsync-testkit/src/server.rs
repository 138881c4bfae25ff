//! The server in-process: every listener on port 0, a fresh data dir, the operator token
//! [`TOKEN`], and a manual clock the test moves (backoff, ack time-outs, retention).

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use iotsync_core::{Clock, ManualClock, SystemClock};
use iotsync_server::delivery::ChannelKind;
use iotsync_server::{ConfigOverrides, RunningServer, ServerConfig};

use crate::{Rest, TOKEN, WAIT};

/// A running in-process server; derefs to its [`Rest`] client.
pub struct TestServer {
    server: Option<RunningServer>,
    rest: Rest,
    /// The server's clock unless it was started with [`ServerBuilder::system_clock`].
    pub clock: ManualClock,
    /// Holds the temporary data dir (unless another one was given).
    pub dir: tempfile::TempDir,
}

/// How a [`TestServer`] starts.
pub struct ServerBuilder {
    config_toml: Option<String>,
    data_dir: Option<PathBuf>,
    dir: Option<tempfile::TempDir>,
    clock: Option<ManualClock>,
    system_clock: bool,
    overrides: ConfigOverrides,
}

impl ServerBuilder {
    /// A config file layer, e.g. `"[delivery]\nconnects_per_minute = 3\n"`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config_toml = Some(toml.to_owned());
        self
    }

    /// The data dir (e.g. a small tmpfs) instead of a fresh temporary one.
    pub fn data_dir(mut self, path: &Path) -> Self {
        self.data_dir = Some(path.to_owned());
        self
    }

    /// Starts on (and keeps) this temporary dir, e.g. the one of a stopped server.
    pub fn temp_dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// The manual clock starts at `ms` instead of the real time.
    pub fn clock_at(mut self, ms: i64) -> Self {
        self.clock = Some(ManualClock::new(ms));
        self
    }

    /// This manual clock (e.g. shared by two servers, or kept over a restart).
    pub fn clock(mut self, clock: ManualClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The real clock (for tests that order by time passing, e.g. the audit log).
    pub fn system_clock(mut self) -> Self {
        self.system_clock = true;
        self
    }

    /// Changes the flag layer (listeners, store URL, …) after the defaults are set.
    pub fn overrides(mut self, f: impl FnOnce(&mut ConfigOverrides)) -> Self {
        f(&mut self.overrides);
        self
    }

    /// Starts and hands over the bare server, for tests that drive it directly; the data
    /// dir must be the caller's ([`ServerBuilder::data_dir`]).
    pub async fn start_bare(self) -> RunningServer {
        assert!(
            self.data_dir.is_some(),
            "start_bare needs the caller's data dir"
        );
        let mut t = self.start().await;
        t.server.take().expect("just started")
    }

    pub async fn start(self) -> TestServer {
        let dir = match self.dir {
            Some(d) => d,
            None => tempfile::tempdir().unwrap(),
        };
        let mut flags = self.overrides;
        flags.data_dir = Some(self.data_dir.unwrap_or_else(|| dir.path().to_owned()));
        let file = self.config_toml.as_deref().map(|t| ("test.toml", t));
        let cfg = ServerConfig::layered(file, Default::default(), flags).unwrap();
        let clock = self
            .clock
            .unwrap_or_else(|| ManualClock::new(SystemClock.now_ms()));
        let shared: iotsync_core::clock::SharedClock = if self.system_clock {
            iotsync_core::clock::system_clock()
        } else {
            Arc::new(clock.clone())
        };
        let server = iotsync_server::start(cfg, shared).await.unwrap();
        TestServer {
            rest: Rest::new(format!("http://{}", server.api_addr), TOKEN),
            server: Some(server),
            clock,
            dir,
        }
    }
}

impl TestServer {
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            config_toml: None,
            data_dir: None,
            dir: None,
            clock: None,
            system_clock: false,
            overrides: ConfigOverrides {
                operator_token: Some(TOKEN.into()),
                ..Default::default()
            }
            .ephemeral_listeners(),
        }
    }

    /// The default server: a manual clock at the real time (outside peers sign with it).
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("the server was stopped")
    }

    pub fn rest(&self) -> &Rest {
        &self.rest
    }

    /// The bound address of a listener ("amqp", "amqps", "http2", "http2-tls", "mqtt", …).
    pub fn addr(&self, listener: &str) -> std::net::SocketAddr {
        self.server()
            .addr(listener)
            .unwrap_or_else(|| panic!("no {listener} listener"))
    }
    pub fn amqp_url(&self) -> String {
        format!("amqp://{}", self.addr("amqp"))
    }
    pub fn amqps_url(&self) -> String {
        format!("amqps://{}", self.addr("amqps"))
    }
    /// `host:port` of the plaintext gRPC listener.
    pub fn http2_target(&self) -> String {
        self.addr("http2").to_string()
    }
    pub fn http2_url(&self) -> String {
        format!("http://{}", self.addr("http2"))
    }
    pub fn mqtt_port(&self) -> u16 {
        self.addr("mqtt").port()
    }
    /// The generated (or configured) TLS certificate, for clients to trust.
    pub fn ca_file(&self) -> PathBuf {
        self.server().tls.cert_file.clone()
    }
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Advances the manual clock in steps (retry backoff, ack time-outs) until `done`.
    pub async fn advance_until(&self, step_ms: i64, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition never held"
            );
            self.clock.advance_ms(step_ms);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the project has a consumer of `channel` attached.
    pub fn has_consumer(&self, pid: &str, channel: ChannelKind) -> bool {
        let pid = pid.parse().unwrap();
        self.server()
            .hub()
            .consumers(&pid)
            .iter()
            .any(|c| c.channel == channel)
    }

    /// Waits until the project has a consumer of `channel` (e.g. the legacy pusher, which
    /// the server starts within a second of an import).
    pub async fn wait_consumer(&self, pid: &str, channel: ChannelKind) {
        crate::wait_for(&format!("a {channel:?} consumer"), async || {
            self.has_consumer(pid, channel)
        })
        .await;
    }

    /// How many consumers of `group` are attached to the project.
    pub fn consumer_count(&self, pid: &str, group: &str) -> usize {
        let pid = pid.parse().unwrap();
        self.server()
            .hub()
            .consumers(&pid)
            .iter()
            .filter(|c| c.group == group)
            .count()
    }

    /// Waits until exactly `n` consumers of `group` are attached (a connection is
    /// attached, or a dropped one detached).
    pub async fn wait_consumers(&self, pid: &str, group: &str, n: usize) {
        crate::wait_for(&format!("{n} consumers of {group}"), async || {
            self.consumer_count(pid, group) == n
        })
        .await;
    }

    /// Stops the server (drain up to 5 s); returns its temporary dir for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(5)).await;
        }
        self.dir
    }
}

impl Deref for TestServer {
    type Target = Rest;
    fn deref(&self) -> &Rest {
        &self.rest
    }
}

impl DerefMut for TestServer {
    fn deref_mut(&mut self) -> &mut Rest {
        &mut self.rest
    }
}
