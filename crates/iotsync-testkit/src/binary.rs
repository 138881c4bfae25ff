//! The real `iotsync serve` as a child process, the way a user runs it; its start-up
//! banner (stdout) names the bound addresses.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{Rest, WAIT};

/// Every listener of `iotsync serve` on a free port, so tests never collide with each
/// other or a running service.
pub const EPHEMERAL: [&str; 14] = [
    "--api-listen",
    "127.0.0.1:0",
    "--amqp-listen",
    "127.0.0.1:0",
    "--amqps-listen",
    "127.0.0.1:0",
    "--http2-listen",
    "127.0.0.1:0",
    "--http2-tls-listen",
    "127.0.0.1:0",
    "--mqtt-listen",
    "127.0.0.1:0",
    "--mqtts-listen",
    "127.0.0.1:0",
];

/// A running `iotsync serve`; killed on drop.
pub struct ServeProcess {
    pub child: Child,
    /// `http://host:port` of the REST API.
    pub api: String,
    /// The banner's lines up to the operator token line.
    pub banner: Vec<String>,
    /// `name listening: url` lines of the banner other than the API (amqp, http2, …).
    pub listeners: HashMap<String, String>,
    pub data_dir: PathBuf,
}

impl ServeProcess {
    /// Starts `bin serve --data-dir DIR` on ephemeral ports with `extra` arguments and
    /// without `IOTSYNC_OPERATOR_TOKEN` from the environment; waits for the banner.
    pub fn start(bin: &Path, data_dir: &Path, extra: &[&str]) -> Self {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(EPHEMERAL)
            .args(extra)
            .env_remove("IOTSYNC_OPERATOR_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawning iotsync serve");
        let stdout = child.stdout.take().expect("piped stdout");
        // The banner is read on a thread so a server that never prints fails the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        let mut listeners = HashMap::new();
        let mut api = None;
        loop {
            let line = rx
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("iotsync serve printed no banner: {banner:?}"));
            let t = line.trim();
            if let Some((name, rest)) = t.split_once(" listening:") {
                let url = rest.split_whitespace().next().unwrap_or("").to_owned();
                if name == "api" {
                    api = Some(url);
                } else {
                    listeners.insert(name.to_owned(), url);
                }
            }
            let done = t.starts_with("operator token:");
            banner.push(line);
            if done {
                break;
            }
        }
        // Keep reading, so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in rx {});
        Self {
            child,
            api: api.unwrap_or_else(|| panic!("no api address in the banner: {banner:?}")),
            banner,
            listeners,
            data_dir: data_dir.to_owned(),
        }
    }

    /// The URL a listener's banner line names (e.g. "amqp" → `amqp://127.0.0.1:…`).
    pub fn listener(&self, name: &str) -> &str {
        self.listeners
            .get(name)
            .unwrap_or_else(|| panic!("no {name} listener in the banner: {:?}", self.banner))
    }

    /// The operator token the server generated into its data dir.
    pub fn token_file(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("operator-token"))
            .expect("operator-token in the data dir")
            .trim()
            .to_owned()
    }

    /// A REST client with `token`.
    pub fn rest(&self, token: &str) -> Rest {
        Rest::new(self.api.clone(), token)
    }

    /// Sends SIGTERM and waits (up to 20 s) for the exit.
    pub fn sigterm(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
