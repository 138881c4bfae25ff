//! A throw-away `nats-server -js` for tests and benches: its own free loopback port and
//! store directory (never the shared 4222), killed and removed on drop.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The binary: `$IOTSYNC_NATS_SERVER`, else Debian's `/usr/sbin/nats-server`, else
/// `nats-server` on the PATH.
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IOTSYNC_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/sbin/nats-server");
    if debian.exists() {
        return debian.to_path_buf();
    }
    PathBuf::from("nats-server")
}

/// A running test server. Starting fails (never skips) when the binary is missing.
pub struct NatsTestServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl NatsTestServer {
    pub fn start() -> io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("iotsync-nats-{}-{n}-{}", std::process::id(), port));
        std::fs::create_dir_all(&dir)?;
        let mut s = Self {
            child: None,
            port,
            dir,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let bin = nats_server_binary();
        let child = Command::new(&bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot start {}: {e}", bin.display()))
            })?;
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    return Err(io::Error::other(format!("nats-server exited: {st}")));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::other("nats-server did not listen within 10 s"))
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (for CPU figures from /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, then start again on the same port and store directory.
    pub fn kill_and_restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsTestServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
