//! Throw-away `nats-server -js` for tests and benches: one server ([`NatsTestServer`])
//! or a routed 3-server cluster ([`NatsTestCluster`]), on free loopback ports with their
//! own store directories (never the shared 4222), killed and removed on drop.

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

/// How long a started (or restarted) server may take to listen.
const LISTEN_WAIT_S: u64 = 60;

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
        let until = Instant::now() + Duration::from_secs(LISTEN_WAIT_S);
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
        Err(io::Error::other(format!(
            "nats-server did not listen within {LISTEN_WAIT_S} s"
        )))
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs (for CPU figures from /proc).
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

/// One server of a [`NatsTestCluster`].
struct ClusterServer {
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
}

/// Three routed `nats-server -js` (server names n1..n3, one cluster name), each on its
/// own free client and cluster port with its own store directory, for tests and benches
/// of replicated streams. Killed and removed on drop. Starting fails (never skips) when
/// the binary is missing.
pub struct NatsTestCluster {
    servers: Vec<ClusterServer>,
    dir: PathBuf,
}

/// How long `start` and `restart` wait for the servers to listen and for JetStream to
/// take a replicated stream.
const CLUSTER_READY: Duration = Duration::from_secs(30);

impl NatsTestCluster {
    pub const SIZE: usize = 3;

    /// Starts the three servers and waits until the cluster has a JetStream meta leader
    /// and takes an R3 stream (a probe stream made and deleted).
    pub async fn start() -> io::Result<Self> {
        // All six ports chosen while every listener is held, so none repeats.
        let held: Vec<TcpListener> = (0..2 * Self::SIZE)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<io::Result<_>>()?;
        let ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<io::Result<_>>()?;
        drop(held);
        let (client, route) = ports.split_at(Self::SIZE);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "iotsync-nats-cluster-{}-{n}-{}",
            std::process::id(),
            client[0]
        ));
        std::fs::create_dir_all(&dir)?;
        let mut c = Self {
            servers: Vec::with_capacity(Self::SIZE),
            dir,
        };
        for i in 0..Self::SIZE {
            let store = c.dir.join(format!("n{}", i + 1));
            std::fs::create_dir_all(&store)?;
            let routes: Vec<String> = (0..Self::SIZE)
                .filter(|j| *j != i)
                .map(|j| format!("\"nats-route://127.0.0.1:{}\"", route[j]))
                .collect();
            let conf = c.dir.join(format!("n{}.conf", i + 1));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{}\nlisten: 127.0.0.1:{}\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: iotsync-test, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    i + 1,
                    client[i],
                    store.display(),
                    route[i],
                    routes.join(", ")
                ),
            )?;
            c.servers.push(ClusterServer {
                child: None,
                port: client[i],
                conf,
                log: c.dir.join(format!("n{}.log", i + 1)),
            });
        }
        for i in 0..Self::SIZE {
            c.spawn(i)?;
        }
        for i in 0..Self::SIZE {
            c.wait_listening(i)?;
        }
        c.wait_ready().await?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let bin = nats_server_binary();
        let s = self
            .servers
            .get_mut(i)
            .ok_or_else(|| io::Error::other(format!("no server {i}")))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&s.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot start {}: {e}", bin.display()))
            })?;
        s.child = Some(child);
        Ok(())
    }

    fn wait_listening(&mut self, i: usize) -> io::Result<()> {
        // A restarted server recovers its JetStream store before it listens: seconds,
        // more on a loaded CI machine.
        let until = Instant::now() + Duration::from_secs(LISTEN_WAIT_S);
        let s = self
            .servers
            .get_mut(i)
            .ok_or_else(|| io::Error::other(format!("no server {i}")))?;
        while Instant::now() < until {
            if TcpStream::connect(("127.0.0.1", s.port)).is_ok() {
                return Ok(());
            }
            if let Some(c) = s.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    return Err(io::Error::other(format!(
                        "nats-server n{} exited: {st} (log {})",
                        i + 1,
                        s.log.display()
                    )));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::other(format!(
            "nats-server n{} did not listen within {LISTEN_WAIT_S} s",
            i + 1
        )))
    }

    /// Until `$JS.API.INFO` answers without error (a meta leader is elected) and an R3
    /// probe stream can be made (every server's JetStream is known to the leader).
    async fn wait_ready(&self) -> io::Result<()> {
        let until = Instant::now() + CLUSTER_READY;
        let mut last = String::from("no answer yet");
        let client = loop {
            match async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .connect(self.addrs()?)
                .await
            {
                Ok(c) => break c,
                Err(e) => last = format!("connect: {e}"),
            }
            if Instant::now() >= until {
                return Err(io::Error::other(format!(
                    "NATS cluster not reachable within {CLUSTER_READY:?}: {last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let js = async_nats::jetstream::new(client.clone());
        let probe = format!("IOTSYNC_CLUSTER_PROBE_{}", std::process::id());
        while Instant::now() < until {
            match js_request(&client, "$JS.API.INFO", "").await {
                Ok(_) => {
                    let made = js
                        .create_stream(async_nats::jetstream::stream::Config {
                            name: probe.clone(),
                            subjects: vec![format!("iotsync-probe.{}", std::process::id())],
                            storage: async_nats::jetstream::stream::StorageType::Memory,
                            num_replicas: Self::SIZE,
                            ..Default::default()
                        })
                        .await;
                    match made {
                        Ok(_) => {
                            let _ = js.delete_stream(&probe).await;
                            return Ok(());
                        }
                        Err(e) => last = format!("R3 probe stream: {e}"),
                    }
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(io::Error::other(format!(
            "JetStream cluster not ready within {CLUSTER_READY:?}: {last}"
        )))
    }

    /// Every server's client url, comma-separated (what `JetStreamBacklog::connect` and
    /// `--backlog-url` take).
    pub fn urls(&self) -> String {
        (0..self.servers.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every server's address, for `async_nats::connect` (which takes no comma list).
    pub fn addrs(&self) -> io::Result<Vec<async_nats::ServerAddr>> {
        (0..self.servers.len())
            .map(|i| {
                self.url(i)
                    .parse::<async_nats::ServerAddr>()
                    .map_err(|e| io::Error::other(format!("server address: {e}")))
            })
            .collect()
    }

    /// Server `i`'s client url (`i` in 0..3; server name `n{i+1}`).
    pub fn url(&self, i: usize) -> String {
        let port = self.servers.get(i).map(|s| s.port).unwrap_or(0);
        format!("nats://127.0.0.1:{port}")
    }

    /// The process id of server `i` while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.servers
            .get(i)
            .and_then(|s| s.child.as_ref())
            .map(Child::id)
    }

    /// SIGKILLs server `i` (and reaps it).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers.get_mut(i).and_then(|s| s.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again (same ports, store directory, name) and waits until it
    /// listens and the cluster answers JetStream requests.
    pub async fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_listening(i)?;
        self.wait_ready().await
    }

    /// The index of the server that leads `stream` (`cluster.leader` of its info).
    pub async fn stream_leader(&self, client: &async_nats::Client, stream: &str) -> Option<usize> {
        let info = js_request(client, &format!("$JS.API.STREAM.INFO.{stream}"), "")
            .await
            .ok()?;
        Self::leader_index(&info)
    }

    /// The index of the server that leads the consumer `consumer` of `stream`.
    pub async fn consumer_leader(
        &self,
        client: &async_nats::Client,
        stream: &str,
        consumer: &str,
    ) -> Option<usize> {
        let info = js_request(
            client,
            &format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
            "",
        )
        .await
        .ok()?;
        Self::leader_index(&info)
    }

    fn leader_index(info: &serde_json::Value) -> Option<usize> {
        let name = info.get("cluster")?.get("leader")?.as_str()?;
        let n: usize = name.strip_prefix('n')?.parse().ok()?;
        (1..=Self::SIZE).contains(&n).then(|| n - 1)
    }

    /// Where the servers' logs and stores are (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A JetStream API request; its JSON answer, `Err` on no answer or an `error` in it.
async fn js_request(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
) -> Result<serde_json::Value, String> {
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(subject.to_owned(), bytes::Bytes::from(body.to_owned())),
    )
    .await
    .map_err(|_| format!("{subject}: no answer within 2 s"))?
    .map_err(|e| format!("{subject}: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&answer.payload).map_err(|e| format!("{subject}: {e}"))?;
    if let Some(e) = v.get("error") {
        return Err(format!("{subject}: {e}"));
    }
    Ok(v)
}

impl Drop for NatsTestCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
