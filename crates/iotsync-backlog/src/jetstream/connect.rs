//! Connecting a node: streams, buckets, the partition count, its tasks.

use super::*;

impl JetStreamBacklog {
    /// Connects to the servers (`nats://h1:4222,nats://h2:4222`), creates the streams and
    /// buckets if missing, and starts the node's ownership and watch tasks.
    pub async fn connect(
        urls: &str,
        cfg: JetStreamConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, BacklogError> {
        let addrs: Vec<async_nats::ServerAddr> = urls
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<async_nats::ServerAddr>())
            .collect::<Result<_, _>>()
            .map_err(|e| nats_err("parse backlog url", e))?;
        if addrs.is_empty() {
            return Err(nats_err("parse backlog url", "no server address"));
        }
        if cfg.partitions == 0 {
            return Err(nats_err("configure", "partitions must be at least 1"));
        }
        let node = cfg
            .node_name
            .clone()
            .unwrap_or_else(|| format!("n{:016x}", seed_from_time()));
        let client = async_nats::ConnectOptions::new()
            .name(format!("iotsync-{node}"))
            .connect(addrs)
            .await
            .map_err(|e| nats_err("connect", e))?;
        let info = client.server_info();
        tracing::info!(version = %info.version, servers = info.connect_urls.len().max(1), node = %node, "backlog on NATS JetStream");
        // A message is its body (envelope + payload) and two headers: it must fit the
        // server's max_payload, else appends would fail at the server, not at our check.
        let mut cfg = cfg;
        let room = info.max_payload.saturating_sub(4096);
        if room > 0 && cfg.max_message_bytes > room {
            tracing::warn!(
                configured = cfg.max_message_bytes,
                max_payload = info.max_payload,
                lowered_to = room,
                "largest message lowered to fit the NATS server's max_payload (less room for headers)"
            );
            cfg.max_message_bytes = room;
        }
        let replicas = cfg
            .replicas
            .unwrap_or(if info.connect_urls.len() >= 3 { 3 } else { 1 });
        let js = jetstream::new(client.clone());
        let mut streams = HashMap::new();
        for class in Class::ALL {
            let s = js
                .get_or_create_stream(stream::Config {
                    name: class.stream().to_owned(),
                    subjects: vec![format!("iotsync.{}.>", class.token())],
                    retention: stream::RetentionPolicy::Limits,
                    storage: stream::StorageType::File,
                    max_age: Duration::from_millis((class.max_age_ms() + 3_600_000) as u64),
                    duplicate_window: Duration::from_secs(120),
                    num_replicas: replicas,
                    allow_direct: true,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats_err("create stream", e))?;
            streams.insert(class, s);
        }
        let dead = js
            .get_or_create_stream(stream::Config {
                name: wire::STREAM_DEAD.to_owned(),
                subjects: vec!["iotsync.dead.>".to_owned()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_age: Duration::from_millis(Class::D7.max_age_ms() as u64),
                num_replicas: replicas,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err("create stream", e))?;
        let meta = bucket(
            &js,
            wire::BUCKET_META,
            Duration::ZERO,
            replicas,
            stream::StorageType::File,
        )
        .await?;
        // File storage: a restarted server must still have the bucket (leases in it
        // run out by its MaxAge anyway).
        let owners = bucket(
            &js,
            wire::BUCKET_OWNERS,
            cfg.lease_ttl,
            replicas,
            stream::StorageType::File,
        )
        .await?;
        let figures = bucket(
            &js,
            wire::BUCKET_FIGURES,
            super::figures::MAX_AGE,
            replicas,
            stream::StorageType::File,
        )
        .await?;
        let partitions = match meta
            .create("partitions", Bytes::from(cfg.partitions.to_string()))
            .await
        {
            Ok(_) => cfg.partitions,
            Err(_) => {
                let v = meta
                    .get("partitions")
                    .await
                    .map_err(|e| nats_err("read partitions", e))?
                    .ok_or_else(|| nats_err("read partitions", "missing"))?;
                let n: u16 = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| nats_err("read partitions", "not a number"))?;
                if n != cfg.partitions {
                    tracing::warn!(
                        stored = n,
                        configured = cfg.partitions,
                        "the cluster's partition count wins"
                    );
                }
                n
            }
        };
        let state = State {
            jitter: cfg.jitter_seed.unwrap_or_else(seed_from_time),
            ..State::default()
        };
        let inner = Arc::new(Inner {
            cfg,
            clock,
            client,
            js,
            meta,
            owners,
            figures,
            partitions,
            node,
            streams,
            dead,
            state: Mutex::new(state),
            wake_owners: Notify::new(),
            room: Notify::new(),
            expired_since_tick: AtomicU64::new(0),
        });
        let watcher = {
            let inner = inner.clone();
            let w = inner
                .meta
                .watch("project.>")
                .await
                .map_err(|e| nats_err("watch projects", e))?;
            tokio::spawn(async move { inner.follow_projects(w).await })
        };
        let owner_loop = {
            let inner = inner.clone();
            tokio::spawn(async move { ownership::run(inner).await })
        };
        let figures_loop = tokio::spawn(super::figures::run(inner.clone()));
        Ok(Self {
            inner,
            tasks: vec![watcher, owner_loop, figures_loop],
        })
    }

    /// This node's name in the partition leases.
    pub fn node_name(&self) -> &str {
        &self.inner.node
    }

    /// The name of the NATS server this node is connected to now (tests, figures).
    pub fn connected_server(&self) -> String {
        self.inner.client.server_info().server_name
    }

    /// Messages of the group pulled here and not leased yet (tests, figures).
    pub fn buffered(&self, project: &ProjectId, group: &ConsumerGroup) -> usize {
        let st = self.inner.lock();
        st.projects
            .get(project)
            .and_then(|p| p.groups.get(group))
            .map(|g| g.local.buffered_total())
            .unwrap_or(0)
    }

    /// (group, partitions this node owns), for tests and figures.
    pub fn owned_partitions(&self, project: &ProjectId, group: &ConsumerGroup) -> Vec<u16> {
        let st = self.inner.lock();
        st.projects
            .get(project)
            .and_then(|p| p.groups.get(group))
            .map(|g| g.owned.keys().copied().collect())
            .unwrap_or_default()
    }
}

pub(super) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
    storage: stream::StorageType,
) -> Result<kv::Store, BacklogError> {
    if let Ok(b) = js.get_key_value(name).await {
        return Ok(b);
    }
    // The stream a KV bucket is, made by hand: async-nats's `create_key_value` first
    // asks for the account info, whose 2.9 answer it cannot parse.
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| nats_err("create bucket", e))?;
    js.get_key_value(name)
        .await
        .map_err(|e| nats_err("open bucket", e))
}

pub(super) fn seed_from_time() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t ^ (u64::from(std::process::id()) << 32)
}
