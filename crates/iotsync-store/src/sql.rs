//! The registry on SQL: one implementation for SQLite and PostgreSQL through sqlx's
//! `Any` driver. Queries use `$n` placeholders (SQLite reads them as numbered), BIGINT
//! for times and booleans, TEXT for JSON, so rows decode the same on both.
//!
//! SQLite allows one writer: write transactions take `write_lock` there so concurrent
//! writers queue in the process instead of failing with `SQLITE_BUSY`.
//!
//! Write transactions are begun and ended here ([`TxConn`]), not by sqlx's
//! `Transaction`: after `SQLITE_FULL` SQLite may roll a transaction back by itself, sqlx's
//! `ROLLBACK` then fails, and its depth counter is left at 1 on a pooled connection. The
//! next writer on that connection gets a `SAVEPOINT` instead of `BEGIN`, its "commit"
//! releases the savepoint inside a transaction that never ends: it answers success, holds
//! the write lock (everyone else: `database is locked`) and is lost at restart. A
//! [`TxConn`] that did not commit goes back to the pool only after its own `ROLLBACK`
//! succeeded, and is closed otherwise.

use std::path::Path;
use std::str::FromStr;
use std::sync::Once;

use async_trait::async_trait;
use serde_json::json;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Executor, Row};
use tokio::sync::{Mutex, OwnedMutexGuard};

use iotsync_core::api_catalog::ApiGroup;
use iotsync_core::message::{AccountAction, BindingOperation, LifecycleAction};
use iotsync_core::payload::{self, AccountFacts};
use iotsync_core::sync_rules::{self, Route, SyncCommand, SyncMethod, SyncSettings, Transition};
use iotsync_core::{
    generate_secret, AppKey, ConsumerGroup, DeviceName, GroupFilterDoc, IdentityId, IotId,
    ProductKey, ProjectId, SharedClock, SyncMessage,
};

use crate::model::*;
use crate::{Actor, Registry, StoreError, StoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    Sqlite,
    Postgres,
}

pub struct SqlRegistry {
    pool: AnyPool,
    backend: StoreBackend,
    write_lock: std::sync::Arc<Mutex<()>>,
    clock: SharedClock,
    epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    history_round: std::sync::atomic::AtomicU64,
    /// PostgreSQL: the `NOTIFY` channel of this registry's schema and the task that
    /// listens on it (see [`crate::Registry::subscribe_changes`]).
    feed: Option<ChangeFeed>,
    auth_purge_round: std::sync::atomic::AtomicU64,
}

struct ChangeFeed {
    channel: String,
    tx: tokio::sync::broadcast::Sender<RegistryChange>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SqlRegistry {
    fn drop(&mut self) {
        if let Some(f) = &self.feed {
            f.task.abort();
        }
    }
}

static DRIVERS: Once = Once::new();

/// A write transaction on one pooled connection, holding the SQLite write lock.
struct WriteTx {
    tx: TxConn,
}

/// A pooled connection inside a transaction this module began. Dropped without
/// [`TxConn::commit`] (an error, a cancelled request), it rolls back in a task that keeps
/// the write lock until then, and the connection returns to the pool only if that
/// `ROLLBACK` succeeded: a connection in an unknown transaction state is closed.
struct TxConn {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl TxConn {
    async fn begin(
        mut conn: sqlx::pool::PoolConnection<sqlx::Any>,
        backend: StoreBackend,
        guard: Option<OwnedMutexGuard<()>>,
    ) -> StoreResult<Self> {
        let begin = match backend {
            // Takes the write lock now rather than at the first write.
            StoreBackend::Sqlite => "BEGIN IMMEDIATE",
            StoreBackend::Postgres => "BEGIN",
        };
        if let Err(e) = conn.execute(begin).await {
            // The connection's state is unknown: never hand it out again.
            conn.close_on_drop();
            return Err(e.into());
        }
        Ok(Self {
            conn: Some(conn),
            guard,
        })
    }

    /// Commits; `Ok` only once the database reported the commit done.
    async fn commit(mut self) -> StoreResult<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(StoreError::Corrupt("transaction already ended".into()));
        };
        conn.execute("COMMIT").await?;
        // Committed: the connection goes back to the pool as it is.
        self.conn = None;
        Ok(())
    }
}

impl Drop for TxConn {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let guard = self.guard.take();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = conn.execute("ROLLBACK").await {
                        tracing::debug!(error = %e, "rollback failed; closing the connection");
                        let _ = conn.close().await;
                    }
                    drop(guard);
                });
            }
            Err(_) => {
                // No runtime left to roll back on: closing the connection rolls back.
                conn.close_on_drop();
            }
        }
    }
}

impl std::ops::Deref for TxConn {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        // `conn` is only `None` after commit (which consumes self) or in drop.
        self.conn.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for TxConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.conn.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl SqlRegistry {
    /// Connects to `url` (`sqlite://…` or `postgres://…`) and applies the migrations.
    pub async fn connect(url: &str, clock: SharedClock) -> StoreResult<Self> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = if url.starts_with("sqlite:") {
            StoreBackend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            StoreBackend::Postgres
        } else {
            return Err(StoreError::Invalid {
                field: "store.url",
                reason: "must start with sqlite: or postgres:".into(),
            });
        };
        let opts = AnyConnectOptions::from_str(url)?;
        let pool = match backend {
            StoreBackend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(4)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = FULL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            // The property history is the big table and its indexes take
                            // random inserts (docs/benchmarks.md, device_e2e): with
                            // SQLite's 2 MiB default cache every insert re-read pages
                            // through pread. Reads go through a shared mapping instead,
                            // and each connection caches 32 MiB of pages.
                            conn.execute("PRAGMA mmap_size = 268435456").await?;
                            conn.execute("PRAGMA cache_size = -32768").await?;
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await?
            }
            StoreBackend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(8)
                    .connect_with(opts)
                    .await?
            }
        };
        migrator(backend).run(&pool).await?;
        let epoch = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
        let feed = match backend {
            StoreBackend::Sqlite => None,
            StoreBackend::Postgres => Some(ChangeFeed::start(url, &pool, epoch.clone()).await?),
        };
        Ok(Self {
            pool,
            backend,
            write_lock: std::sync::Arc::new(Mutex::new(())),
            clock,
            epoch,
            history_round: std::sync::atomic::AtomicU64::new(0),
            feed,
            auth_purge_round: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The embedded default: a SQLite file, created if missing. It holds every secret, so
    /// it is created owner-only (0600) here before SQLite opens it; SQLite gives its
    /// `-wal` and `-shm` files the database file's mode.
    pub async fn open_sqlite(path: &Path, clock: SharedClock) -> StoreResult<Self> {
        create_private(path).map_err(sqlx::Error::Io)?;
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::connect(&url, clock).await
    }

    pub fn backend(&self) -> StoreBackend {
        self.backend
    }

    pub async fn close(&self) {
        if let Some(f) = &self.feed {
            f.task.abort();
        }
        self.pool.close().await;
    }

    /// Tells the other nodes of a change, on commit (PostgreSQL delivers a `NOTIFY` made
    /// in a transaction only once it commits, and never for a rollback).
    async fn notify(
        &self,
        conn: &mut AnyConnection,
        project: &ProjectId,
        kind: ChangeKind,
    ) -> StoreResult<()> {
        let Some(f) = &self.feed else {
            return Ok(());
        };
        // pg_notify returns void, which the Any driver cannot decode: count the row.
        sqlx::query("SELECT count(*) AS n FROM (SELECT pg_notify($1, $2)) AS notified")
            .bind(f.channel.as_str())
            .bind(format!("{}:{}", kind.as_str(), project.as_str()))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn write(&self) -> StoreResult<WriteTx> {
        let guard = match self.backend {
            StoreBackend::Sqlite => Some(self.write_lock.clone().lock_owned().await),
            StoreBackend::Postgres => None,
        };
        let conn = self.pool.acquire().await?;
        let tx = TxConn::begin(conn, self.backend, guard).await?;
        Ok(WriteTx { tx })
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// After a committed change that lookups may have cached.
    fn bump(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl ChangeFeed {
    /// `LISTEN`s on the schema's channel (channels are database-wide; registries in
    /// other schemas of one database must not hear each other) from a task of its own.
    async fn start(
        url: &str,
        pool: &AnyPool,
        epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> StoreResult<Self> {
        let schema: String = sqlx::query("SELECT current_schema()::text AS s")
            .fetch_one(pool)
            .await?
            .try_get("s")?;
        let mut channel = format!("iotsync_changes_{schema}");
        // An identifier is at most 63 bytes; schema names are ASCII here.
        channel.truncate(63);
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(&channel).await?;
        let (tx, _) = tokio::sync::broadcast::channel(1024);
        let sender = tx.clone();
        let task = tokio::spawn(async move {
            loop {
                // `try_recv` reconnects by itself and says `None` when the connection
                // was lost: notifications may have been missed then.
                let change = match listener.try_recv().await {
                    Ok(Some(n)) => match parse_change(n.payload()) {
                        Some(c) => c,
                        None => continue,
                    },
                    Ok(None) => {
                        tracing::warn!("registry change feed reconnected; re-checking everything");
                        RegistryChange {
                            project: None,
                            kind: ChangeKind::Registry,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "registry change feed failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        RegistryChange {
                            project: None,
                            kind: ChangeKind::Registry,
                        }
                    }
                };
                epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // No subscriber yet is fine: the epoch bump is what caches need.
                let _ = sender.send(change);
            }
        });
        Ok(Self { channel, tx, task })
    }
}

fn parse_change(payload: &str) -> Option<RegistryChange> {
    let (kind, project) = payload.split_once(':')?;
    Some(RegistryChange {
        project: Some(project.parse().ok()?),
        kind: kind.parse().ok()?,
    })
}

fn auth_failures_from(r: &AnyRow) -> StoreResult<AuthFailures> {
    let failures: i64 = r.try_get("failures")?;
    Ok(AuthFailures {
        failures: u32::try_from(failures.max(0)).unwrap_or(u32::MAX),
        blocked_until: r.try_get("blocked_until")?,
        forget_at: r.try_get("forget_at")?,
    })
}

/// Creates `path` empty with mode 0600 if it does not exist (an existing file is kept).
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path).map(drop)
}

/// Versioned migrations, embedded in the binary; one SQL dialect per backend.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "registry",
        include_str!("../migrations/sqlite/0001_registry.sql"),
        include_str!("../migrations/postgres/0001_registry.sql"),
    ),
    (
        2,
        "cloud_api",
        include_str!("../migrations/sqlite/0002_cloud_api.sql"),
        include_str!("../migrations/postgres/0002_cloud_api.sql"),
    ),
    (
        3,
        "cloud_nonces",
        include_str!("../migrations/sqlite/0003_cloud_nonces.sql"),
        include_str!("../migrations/postgres/0003_cloud_nonces.sql"),
    ),
    (
        4,
        "consumer_groups",
        include_str!("../migrations/sqlite/0004_consumer_groups.sql"),
        include_str!("../migrations/postgres/0004_consumer_groups.sql"),
    ),
    (
        5,
        "group_alerts",
        include_str!("../migrations/sqlite/0005_group_alerts.sql"),
        include_str!("../migrations/postgres/0005_group_alerts.sql"),
    ),
    (
        6,
        "console_sessions",
        include_str!("../migrations/sqlite/0006_console_sessions.sql"),
        include_str!("../migrations/postgres/0006_console_sessions.sql"),
    ),
    (
        7,
        "property_chunks",
        include_str!("../migrations/sqlite/0007_property_chunks.sql"),
        include_str!("../migrations/postgres/0007_property_chunks.sql"),
    ),
];

fn migrator(backend: StoreBackend) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    use std::borrow::Cow;
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, desc, sqlite, pg)| {
            let sql = match backend {
                StoreBackend::Sqlite => *sqlite,
                StoreBackend::Postgres => *pg,
            };
            Migration::new(
                *version,
                Cow::Borrowed(*desc),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn b(v: bool) -> i64 {
    i64::from(v)
}

fn parse<T: FromStr>(row: &AnyRow, col: &str) -> StoreResult<T>
where
    T::Err: std::fmt::Display,
{
    let s: String = row.try_get(col)?;
    s.parse::<T>()
        .map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
}

fn project_from(row: &AnyRow) -> StoreResult<Project> {
    Ok(Project {
        project_id: parse(row, "project_id")?,
        name: row.try_get("name")?,
        app_key: parse(row, "app_key")?,
        created_at: row.try_get("created_at")?,
    })
}

fn settings_from(row: &AnyRow) -> StoreResult<SyncSettings> {
    let last: Option<String> = row.try_get("last_method")?;
    Ok(SyncSettings {
        enabled: row.try_get::<i64, _>("sync_enabled")? != 0,
        device_data: parse::<Route>(row, "device_route")?,
        user_data: parse::<Route>(row, "user_route")?,
        legacy_http_url: row.try_get("legacy_url")?,
        legacy_retired: row.try_get::<i64, _>("legacy_retired")? != 0,
        last_method: match last.as_deref() {
            Some("amqp") => Some(SyncMethod::Amqp),
            Some("http2") => Some(SyncMethod::Http2),
            _ => None,
        },
    })
}

fn product_from(row: &AnyRow) -> StoreResult<Product> {
    Ok(Product {
        product_key: parse(row, "product_key")?,
        project_id: parse(row, "project_id")?,
        name: row.try_get("name")?,
        device_type: row.try_get("device_type")?,
        sync_enabled: row.try_get::<i64, _>("sync_enabled")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

const DEVICE_COLS: &str = "d.iot_id, d.project_id, d.product_key, d.device_name, p.device_type, \
     d.status, d.status_time, d.created_at, d.device_secret, d.activated_at, p.sync_enabled AS product_sync";

fn device_from(row: &AnyRow) -> StoreResult<DeviceWithSecret> {
    Ok(DeviceWithSecret {
        device: Device {
            iot_id: parse(row, "iot_id")?,
            project_id: parse(row, "project_id")?,
            product_key: parse(row, "product_key")?,
            device_name: parse(row, "device_name")?,
            device_type: row.try_get("device_type")?,
            status: parse(row, "status")?,
            status_time: row.try_get("status_time")?,
            created_at: row.try_get("created_at")?,
        },
        device_secret: row.try_get("device_secret")?,
    })
}

fn user_from(row: &AnyRow) -> StoreResult<User> {
    Ok(User {
        identity_id: parse(row, "identity_id")?,
        project_id: parse(row, "project_id")?,
        login_name: row.try_get("login_name")?,
        nick_name: row.try_get("nick_name")?,
        phone: row.try_get("phone")?,
        email: row.try_get("email")?,
        gmt_create: row.try_get("gmt_create")?,
        gmt_modified: row.try_get("gmt_modified")?,
    })
}

fn binding_from(row: &AnyRow) -> StoreResult<Binding> {
    Ok(Binding {
        identity_id: parse(row, "identity_id")?,
        iot_id: parse(row, "iot_id")?,
        product_key: parse(row, "product_key")?,
        device_name: parse(row, "device_name")?,
        owned: u8::from(row.try_get::<i64, _>("owned")? != 0),
        created_at: row.try_get("created_at")?,
    })
}

fn account_facts(u: &User) -> AccountFacts {
    AccountFacts {
        identity_id: u.identity_id.clone(),
        login_name: u.login_name.clone(),
        nick_name: u.nick_name.clone(),
        phone: u.phone.clone(),
        email: u.email.clone(),
        gmt_create: u.gmt_create,
        gmt_modified: u.gmt_modified,
    }
}

fn check_text(field: &'static str, v: &str, min: usize, max: usize) -> StoreResult<()> {
    let n = v.chars().count();
    if n < min || n > max {
        return Err(StoreError::Invalid {
            field,
            reason: format!("must be {min} to {max} characters long (got {n})"),
        });
    }
    if v.chars().any(char::is_control) {
        return Err(StoreError::Invalid {
            field,
            reason: "must not contain control characters".into(),
        });
    }
    Ok(())
}

async fn load_settings(conn: &mut AnyConnection, project: &ProjectId) -> StoreResult<SyncSettings> {
    let row = sqlx::query(
        "SELECT sync_enabled, device_route, user_route, legacy_url, legacy_retired, last_method \
         FROM projects WHERE project_id = $1",
    )
    .bind(project.as_str())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found("project", project))?;
    settings_from(&row)
}

async fn store_settings(
    conn: &mut AnyConnection,
    project: &ProjectId,
    s: &SyncSettings,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE projects SET sync_enabled = $1, device_route = $2, user_route = $3, \
         legacy_url = $4, legacy_retired = $5, last_method = $6 WHERE project_id = $7",
    )
    .bind(b(s.enabled))
    .bind(s.device_data.as_str())
    .bind(s.user_data.as_str())
    .bind(s.legacy_http_url.clone())
    .bind(b(s.legacy_retired))
    .bind(s.last_method.map(|m| m.as_str().to_owned()))
    .bind(project.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn audit(
    conn: &mut AnyConnection,
    project: Option<&ProjectId>,
    actor: &str,
    at: i64,
    action: &str,
    before: serde_json::Value,
    after: serde_json::Value,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO audit_log (project_id, actor, at, action, before_json, after_json) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(project.map(|p| p.to_string()))
    .bind(actor)
    .bind(at)
    .bind(action)
    .bind(before.to_string())
    .bind(after.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A new project's API activation: each group at its default (only the cloud token on).
async fn insert_default_activation(
    conn: &mut AnyConnection,
    project: &ProjectId,
) -> StoreResult<()> {
    for g in ApiGroup::ALL {
        sqlx::query(
            "INSERT INTO api_activation (project_id, api_group, activated) VALUES ($1, $2, $3)",
        )
        .bind(project.as_str())
        .bind(g.as_str())
        .bind(b(g.activated_by_default()))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Writes `m` to the outbox if the project's settings (and the product's switch, for
/// device data and bindings) say it is produced now. Called inside the change's
/// transaction, so the change and its message commit together.
async fn produce(
    conn: &mut AnyConnection,
    settings: &SyncSettings,
    product_sync: Option<bool>,
    m: SyncMessage,
) -> StoreResult<bool> {
    if !settings.produces_kind(m.kind, product_sync) {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO outbox (project_id, kind, product_key, ordering_key, topic, message_id, \
         generate_time, payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(m.project_id.as_str())
    .bind(m.kind.code())
    .bind(m.product_key.as_ref().map(|p| p.to_string()))
    .bind(m.ordering_key.as_str())
    .bind(m.envelope.topic.as_str())
    .bind(m.envelope.message_id.as_str())
    .bind(m.envelope.generate_time)
    .bind(m.envelope.payload)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

async fn fetch_device(
    conn: &mut AnyConnection,
    project: &ProjectId,
    iot_id: &IotId,
) -> StoreResult<(DeviceWithSecret, bool, Option<i64>)> {
    let row = sqlx::query(&format!(
        "SELECT {DEVICE_COLS} FROM devices d JOIN products p ON p.product_key = d.product_key \
         WHERE d.iot_id = $1 AND d.project_id = $2"
    ))
    .bind(iot_id.as_str())
    .bind(project.as_str())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found("device", iot_id))?;
    let product_sync = row.try_get::<i64, _>("product_sync")? != 0;
    let activated: Option<i64> = row.try_get("activated_at")?;
    Ok((device_from(&row)?, product_sync, activated))
}

async fn fetch_user(
    conn: &mut AnyConnection,
    project: &ProjectId,
    id: &IdentityId,
) -> StoreResult<User> {
    let row = sqlx::query("SELECT * FROM users WHERE identity_id = $1 AND project_id = $2")
        .bind(id.as_str())
        .bind(project.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::not_found("user", id))?;
    user_from(&row)
}

async fn count(conn: &mut AnyConnection, sql: &str, args: &[&str]) -> StoreResult<i64> {
    let mut q = sqlx::query(sql);
    for a in args {
        q = q.bind(*a);
    }
    let row = q.fetch_one(&mut *conn).await?;
    Ok(row.try_get::<i64, _>(0)?)
}

/// Removes every binding of a device or a user, producing an `Unbind` message for each.
async fn unbind_all(
    conn: &mut AnyConnection,
    settings: &SyncSettings,
    project: &ProjectId,
    column: &str,
    value: &str,
    now: i64,
) -> StoreResult<()> {
    let rows = sqlx::query(&format!(
        "SELECT b.identity_id, b.iot_id, d.product_key, d.device_name, b.owned, b.created_at, \
         p.device_type, p.sync_enabled FROM bindings b JOIN devices d ON d.iot_id = b.iot_id \
         JOIN products p ON p.product_key = d.product_key WHERE b.{column} = $1 AND b.project_id = $2"
    ))
    .bind(value)
    .bind(project.as_str())
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let bnd = binding_from(&row)?;
        let device_type: String = row.try_get("device_type")?;
        let product_on = row.try_get::<i64, _>("sync_enabled")? != 0;
        let dref = payload::DeviceRef {
            project_id: project.clone(),
            iot_id: bnd.iot_id.clone(),
            product_key: bnd.product_key.clone(),
            device_name: bnd.device_name.clone(),
            device_type,
        };
        let m = payload::binding(
            &dref,
            BindingOperation::Unbind,
            &bnd.identity_id,
            bnd.owned == 1,
            now,
        );
        produce(conn, settings, Some(product_on), m).await?;
    }
    sqlx::query(&format!(
        "DELETE FROM bindings WHERE {column} = $1 AND project_id = $2"
    ))
    .bind(value)
    .bind(project.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Last values (newest per device property) and history of reports, with multi-row
/// statements; devices no longer in their project are skipped. `trim(key_hash)` says
/// which (device, property) histories to bound now.
/// Rows per multi-row statement. SQLite resolves a bound parameter's name by walking the
/// statement's parameter list, so a statement with n parameters costs n² to bind (sqlx
/// binds by name): at 250 rows × 4 parameters that was 18 % of the server's CPU under
/// a device flood (perf, device_e2e bench). 32 rows keep the statement count low and the
/// binding cheap.
const ROWS_PER_STATEMENT: usize = 32;

async fn write_properties(
    tx: &mut AnyConnection,
    batch: &[(ProjectId, IotId, Vec<PropertyValue>)],
    trim: impl Fn(u64) -> bool,
) -> StoreResult<()> {
    // Which reported devices still exist in their project (one query per chunk).
    let mut wanted: Vec<(&ProjectId, &IotId)> = batch.iter().map(|(p, i, _)| (p, i)).collect();
    wanted.sort();
    wanted.dedup();
    let mut alive = std::collections::HashSet::new();
    for chunk in wanted.chunks(ROWS_PER_STATEMENT * 4) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT iot_id, project_id FROM devices WHERE iot_id IN ({})",
            placeholders.join(",")
        );
        let mut q = sqlx::query(&sql);
        for (_, iot) in chunk {
            q = q.bind(iot.as_str());
        }
        for row in q.fetch_all(&mut *tx).await? {
            let iot: String = row.try_get("iot_id")?;
            let proj: String = row.try_get("project_id")?;
            alive.insert((proj, iot));
        }
    }
    let rows: Vec<(&IotId, &PropertyValue)> = batch
        .iter()
        .filter(|(p, i, _)| alive.contains(&(p.to_string(), i.to_string())))
        .flat_map(|(_, i, items)| items.iter().map(move |it| (i, it)))
        .collect();
    // Last values: the newest report of each (device, property) in this batch, one
    // multi-row upsert per chunk (a row may be named once per statement).
    let mut latest: std::collections::BTreeMap<(&str, &str), &PropertyValue> = Default::default();
    for (iot, it) in &rows {
        let e = latest
            .entry((iot.as_str(), it.identifier.as_str()))
            .or_insert(it);
        if it.time >= e.time {
            *e = it;
        }
    }
    let latest: Vec<_> = latest.into_iter().collect();
    for chunk in latest.chunks(ROWS_PER_STATEMENT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|k| {
                format!(
                    "(${}, ${}, ${}, ${})",
                    4 * k + 1,
                    4 * k + 2,
                    4 * k + 3,
                    4 * k + 4
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO device_properties (iot_id, identifier, value_json, time) VALUES {} \
             ON CONFLICT (iot_id, identifier) DO UPDATE SET value_json = excluded.value_json, time = excluded.time \
             WHERE excluded.time >= device_properties.time",
            values.join(",")
        );
        let mut q = sqlx::query(&sql);
        for ((iot, ident), it) in chunk {
            q = q
                .bind(*iot)
                .bind(*ident)
                .bind(it.value.to_string())
                .bind(it.time);
        }
        q.execute(&mut *tx).await?;
    }
    // History: one chunk per (device, property) holding this batch's values of it in
    // report order, one multi-row insert per ROWS_PER_STATEMENT chunks (ADR 0014).
    let mut chunks: std::collections::BTreeMap<(&str, &str), Vec<(i64, &serde_json::Value)>> =
        Default::default();
    for (iot, it) in &rows {
        chunks
            .entry((iot.as_str(), it.identifier.as_str()))
            .or_default()
            .push((it.time, &it.value));
    }
    let chunks: Vec<_> = chunks.into_iter().collect();
    for part in chunks.chunks(ROWS_PER_STATEMENT) {
        let values: Vec<String> = (0..part.len())
            .map(|k| {
                format!(
                    "(${}, ${}, ${}, ${})",
                    4 * k + 1,
                    4 * k + 2,
                    4 * k + 3,
                    4 * k + 4
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO property_chunks (iot_id, identifier, n, values_json) VALUES {}",
            values.join(",")
        );
        let mut q = sqlx::query(&sql);
        for ((iot, ident), vals) in part {
            let json = serde_json::to_string(vals)
                .map_err(|e| StoreError::Corrupt(format!("property values: {e}")))?;
            q = q
                .bind(*iot)
                .bind(*ident)
                .bind(i64::try_from(vals.len()).unwrap_or(i64::MAX))
                .bind(json);
        }
        q.execute(&mut *tx).await?;
    }
    for ((iot, ident), _) in &chunks {
        let h = iot
            .bytes()
            .chain(ident.bytes())
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        if trim(h) {
            trim_history(&mut *tx, iot, ident).await?;
        }
    }
    Ok(())
}

/// Batches between two trims of one (device, property)'s history.
const HISTORY_TRIM_EVERY: u64 = 16;

/// Drops the chunks of one (device, property) that hold none of its newest
/// `PROPERTY_HISTORY_MAX` values (readers cut the oldest kept chunk themselves).
async fn trim_history(conn: &mut AnyConnection, iot_id: &str, identifier: &str) -> StoreResult<()> {
    sqlx::query(
        "DELETE FROM property_chunks WHERE iot_id = $1 AND identifier = $2 AND seq < \
         (SELECT MIN(seq) FROM \
           (SELECT seq, n, SUM(n) OVER (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING) AS upto \
            FROM property_chunks WHERE iot_id = $1 AND identifier = $2) w \
          WHERE upto - n < $3)",
    )
    .bind(iot_id)
    .bind(identifier)
    .bind(PROPERTY_HISTORY_MAX)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The newest `PROPERTY_HISTORY_MAX` values of one (device, property) from its chunks
/// (`values_json` newest chunk first), then the query's time range, order and limit.
/// Values of equal time keep report order (`ORDER BY time, seq` as a single table would).
fn timeline_from_chunks(
    chunks_newest_first: &[String],
    q: &TimelineQuery,
) -> StoreResult<Vec<PropertyValue>> {
    let keep = usize::try_from(PROPERTY_HISTORY_MAX).unwrap_or(usize::MAX);
    // (time, insertion rank: 0 = newest, value)
    let mut kept: Vec<(i64, usize, serde_json::Value)> = Vec::new();
    'chunks: for json in chunks_newest_first {
        let vals: Vec<(i64, serde_json::Value)> = serde_json::from_str(json)
            .map_err(|e| StoreError::Corrupt(format!("property_chunks.values_json: {e}")))?;
        for (time, value) in vals.into_iter().rev() {
            if kept.len() == keep {
                break 'chunks;
            }
            let rank = kept.len();
            kept.push((time, rank, value));
        }
    }
    kept.retain(|(t, _, _)| *t >= q.start && *t <= q.end);
    if q.newest_first {
        // Newest time first; equal times: the later report first.
        kept.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    } else {
        kept.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    }
    let limit = usize::try_from(q.limit.clamp(1, PROPERTY_TIMELINE_MAX_LIMIT)).unwrap_or(1);
    Ok(kept
        .into_iter()
        .take(limit)
        .map(|(time, _, value)| PropertyValue {
            identifier: q.identifier.clone(),
            value,
            time,
        })
        .collect())
}

fn group_from(row: &AnyRow) -> StoreResult<DeclaredGroup> {
    let filter: String = row.try_get("filter_json")?;
    let retry: String = row.try_get("retry")?;
    Ok(DeclaredGroup {
        project_id: parse(row, "project_id")?,
        name: parse(row, "name")?,
        filter: serde_json::from_str(&filter)
            .map_err(|e| StoreError::Corrupt(format!("consumer_groups.filter_json: {e}")))?,
        retry: retry.parse().map_err(StoreError::Corrupt)?,
        internal: row.try_get::<i64, _>("internal")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

fn group_json(g: &DeclaredGroup) -> serde_json::Value {
    json!({"name": g.name, "filter": g.filter, "retry": g.retry, "internal": g.internal})
}

async fn fetch_group(
    conn: &mut AnyConnection,
    project: &ProjectId,
    name: &str,
) -> StoreResult<Option<DeclaredGroup>> {
    sqlx::query("SELECT * FROM consumer_groups WHERE project_id = $1 AND name = $2")
        .bind(project.as_str())
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
        .as_ref()
        .map(group_from)
        .transpose()
}

/// Inserts a group (the caller checked it is absent) and audits it.
async fn insert_group(conn: &mut AnyConnection, g: &DeclaredGroup, actor: &str) -> StoreResult<()> {
    let filter = serde_json::to_string(&g.filter)
        .map_err(|e| StoreError::Corrupt(format!("filter: {e}")))?;
    sqlx::query(
        "INSERT INTO consumer_groups (project_id, name, filter_json, retry, internal, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(g.project_id.as_str())
    .bind(g.name.as_str())
    .bind(filter)
    .bind(g.retry.as_str())
    .bind(b(g.internal))
    .bind(g.created_at)
    .execute(&mut *conn)
    .await?;
    audit(
        conn,
        Some(&g.project_id),
        actor,
        g.created_at,
        "consumer_group.create",
        json!(null),
        group_json(g),
    )
    .await
}

async fn remove_group(
    conn: &mut AnyConnection,
    g: &DeclaredGroup,
    actor: &str,
    at: i64,
) -> StoreResult<()> {
    sqlx::query("DELETE FROM consumer_groups WHERE project_id = $1 AND name = $2")
        .bind(g.project_id.as_str())
        .bind(g.name.as_str())
        .execute(&mut *conn)
        .await?;
    audit(
        conn,
        Some(&g.project_id),
        actor,
        at,
        "consumer_group.delete",
        group_json(g),
        json!(null),
    )
    .await
}

const ALERT_COLS: &str =
    "project_id, name, stacked_max, oldest_age_max_ms, dead_letters_max, updated_at";

fn alerts_from(row: &AnyRow) -> StoreResult<GroupAlerts> {
    let threshold = |col: &str| -> StoreResult<Option<u64>> {
        row.try_get::<Option<i64>, _>(col)?
            .map(|v| {
                u64::try_from(v)
                    .map_err(|_| StoreError::Corrupt(format!("group_alerts.{col}: {v}")))
            })
            .transpose()
    };
    Ok(GroupAlerts {
        project_id: parse(row, "project_id")?,
        group: parse(row, "name")?,
        thresholds: AlertThresholds {
            stacked_max: threshold("stacked_max")?,
            oldest_age_max_ms: threshold("oldest_age_max_ms")?,
            dead_letters_max: threshold("dead_letters_max")?,
        },
        updated_at: Some(row.try_get("updated_at")?),
    })
}

fn alerts_json(group: &ConsumerGroup, t: &AlertThresholds) -> serde_json::Value {
    json!({
        "group": group,
        "stackedMax": t.stacked_max,
        "oldestAgeMaxMs": t.oldest_age_max_ms,
        "deadLettersMax": t.dead_letters_max,
    })
}

/// A threshold as its BIGINT column holds it.
fn threshold_column(field: &'static str, v: Option<u64>) -> StoreResult<Option<i64>> {
    v.map(|v| {
        i64::try_from(v).map_err(|_| StoreError::Invalid {
            field,
            reason: format!("must be at most {}", AlertThresholds::MAX),
        })
    })
    .transpose()
}

async fn fetch_alerts(
    conn: &mut AnyConnection,
    project: &ProjectId,
    name: &ConsumerGroup,
) -> StoreResult<Option<GroupAlerts>> {
    sqlx::query(&format!(
        "SELECT {ALERT_COLS} FROM group_alerts WHERE project_id = $1 AND name = $2"
    ))
    .bind(project.as_str())
    .bind(name.as_str())
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(alerts_from)
    .transpose()
}

async fn check_group_limit(
    conn: &mut AnyConnection,
    project: &ProjectId,
    max_groups: usize,
) -> StoreResult<()> {
    let n = count(
        conn,
        "SELECT COUNT(*) FROM consumer_groups WHERE project_id = $1",
        &[project.as_str()],
    )
    .await?;
    if n as usize >= max_groups {
        return Err(StoreError::Limit {
            field: "name",
            reason: format!("a project has at most {max_groups} consumer groups; delete one first"),
        });
    }
    Ok(())
}

/// Declares or updates the platform's own groups of a project to match its settings:
/// the default group (named after the appKey) while sync is on, with the filter its
/// configuration calls for, and `_legacy_http` while user data goes to legacy HTTP
/// (removed once legacy push is retired). Runs inside the change's transaction.
async fn platform_groups(
    conn: &mut AnyConnection,
    project: &ProjectId,
    app_key: &AppKey,
    s: &SyncSettings,
    actor: &str,
    now: i64,
) -> StoreResult<()> {
    use iotsync_core::subscription::{
        default_group_filter_doc, legacy_group_filter, needs_legacy_group, LEGACY_GROUP,
    };
    let mut wanted = Vec::new();
    if s.enabled {
        wanted.push(DeclaredGroup {
            project_id: project.clone(),
            name: ConsumerGroup::default_for(app_key),
            filter: default_group_filter_doc(s),
            retry: GroupRetryKind::Backoff,
            internal: false,
            created_at: now,
        });
    }
    let legacy: ConsumerGroup = LEGACY_GROUP
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("legacy group name: {e}")))?;
    if needs_legacy_group(s) {
        wanted.push(DeclaredGroup {
            project_id: project.clone(),
            name: legacy.clone(),
            filter: GroupFilterDoc::from(&legacy_group_filter()),
            retry: GroupRetryKind::LegacyHttp,
            internal: true,
            created_at: now,
        });
    } else if let Some(old) = fetch_group(conn, project, legacy.as_str()).await? {
        remove_group(conn, &old, actor, now).await?;
    }
    for g in wanted {
        match fetch_group(conn, project, g.name.as_str()).await? {
            None => insert_group(conn, &g, actor).await?,
            Some(old) if old.filter != g.filter || old.retry != g.retry => {
                let filter = serde_json::to_string(&g.filter)
                    .map_err(|e| StoreError::Corrupt(format!("filter: {e}")))?;
                sqlx::query(
                    "UPDATE consumer_groups SET filter_json = $1, retry = $2 \
                     WHERE project_id = $3 AND name = $4",
                )
                .bind(filter)
                .bind(g.retry.as_str())
                .bind(project.as_str())
                .bind(g.name.as_str())
                .execute(&mut *conn)
                .await?;
                audit(
                    conn,
                    Some(project),
                    actor,
                    now,
                    "consumer_group.update",
                    group_json(&old),
                    group_json(&DeclaredGroup {
                        created_at: old.created_at,
                        ..g
                    }),
                )
                .await?;
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn page<T>(items: Vec<T>, total: i64, p: PageRequest) -> Page<T> {
    Page {
        items,
        total,
        page_no: p.page,
        page_size: p.page_size,
    }
}

fn settings_json(s: &SyncSettings) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or(serde_json::Value::Null)
}

#[async_trait]
impl Registry for SqlRegistry {
    async fn create_project(&self, name: &str, actor: Actor<'_>) -> StoreResult<ProjectWithSecret> {
        check_text("name", name.trim(), 1, 64)?;
        let now = self.now();
        let mut w = self.write().await?;
        for _ in 0..5 {
            let p = Project {
                project_id: ProjectId::generate(),
                name: name.trim().to_owned(),
                app_key: AppKey::generate(),
                created_at: now,
            };
            let secret = generate_secret();
            let r = sqlx::query(
                "INSERT INTO projects (project_id, name, app_key, app_secret, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(p.project_id.as_str())
            .bind(p.name.as_str())
            .bind(p.app_key.as_str())
            .bind(secret.as_str())
            .bind(now)
            .execute(&mut *w.tx)
            .await;
            match r {
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            insert_default_activation(&mut w.tx, &p.project_id).await?;
            audit(
                &mut w.tx,
                Some(&p.project_id),
                actor,
                now,
                "project.create",
                json!(null),
                json!({"name": p.name, "appKey": p.app_key}),
            )
            .await?;
            w.tx.commit().await?;
            return Ok(ProjectWithSecret {
                project: p,
                app_secret: secret,
            });
        }
        Err(StoreError::Conflict {
            entity: "project",
            field: "appKey",
            value: "generated".into(),
        })
    }

    async fn import_project(&self, i: &ProjectImport, actor: Actor<'_>) -> StoreResult<Project> {
        check_text("name", i.name.trim(), 1, 64)?;
        check_text("appSecret", &i.app_secret, 8, 128)?;
        let settings = sync_rules::import(&i.sync)?;
        let now = self.now();
        let p = Project {
            project_id: ProjectId::generate(),
            name: i.name.trim().to_owned(),
            app_key: i.app_key.clone(),
            created_at: now,
        };
        let mut w = self.write().await?;
        let r = sqlx::query(
            "INSERT INTO projects (project_id, name, app_key, app_secret, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(p.project_id.as_str())
        .bind(p.name.as_str())
        .bind(p.app_key.as_str())
        .bind(i.app_secret.as_str())
        .bind(now)
        .execute(&mut *w.tx)
        .await;
        match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict {
                    entity: "project",
                    field: "appKey",
                    value: i.app_key.to_string(),
                })
            }
            r => {
                r?;
            }
        }
        store_settings(&mut w.tx, &p.project_id, &settings).await?;
        insert_default_activation(&mut w.tx, &p.project_id).await?;
        platform_groups(&mut w.tx, &p.project_id, &p.app_key, &settings, actor, now).await?;
        audit(
            &mut w.tx,
            Some(&p.project_id),
            actor,
            now,
            "project.import",
            json!(null),
            json!({"name": p.name, "appKey": p.app_key, "sync": settings_json(&settings)}),
        )
        .await?;
        w.tx.commit().await?;
        Ok(p)
    }

    async fn get_project(&self, id: &ProjectId) -> StoreResult<Project> {
        let row = sqlx::query("SELECT * FROM projects WHERE project_id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("project", id))?;
        project_from(&row)
    }

    async fn project_by_app_key(&self, app_key: &AppKey) -> StoreResult<ProjectWithSecret> {
        let row = sqlx::query("SELECT * FROM projects WHERE app_key = $1")
            .bind(app_key.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("appKey", app_key))?;
        Ok(ProjectWithSecret {
            project: project_from(&row)?,
            app_secret: row.try_get("app_secret")?,
        })
    }

    async fn list_projects(
        &self,
        search: Option<&str>,
        p: PageRequest,
    ) -> StoreResult<Page<Project>> {
        let pattern = format!(
            "%{}%",
            search
                .unwrap_or("")
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let filter = "LOWER(name) LIKE $1 ESCAPE '\\' OR LOWER(project_id) LIKE $1 ESCAPE '\\' \
                      OR LOWER(app_key) LIKE $1 ESCAPE '\\'";
        let mut conn = self.pool.acquire().await?;
        let total = count(
            &mut conn,
            &format!("SELECT COUNT(*) FROM projects WHERE {filter}"),
            &[&pattern],
        )
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT * FROM projects WHERE {filter} ORDER BY created_at DESC, project_id LIMIT $2 OFFSET $3"
        ))
        .bind(pattern.as_str())
        .bind(i64::from(p.page_size))
        .bind(p.offset())
        .fetch_all(&mut *conn)
        .await?;
        let items = rows.iter().map(project_from).collect::<StoreResult<_>>()?;
        Ok(page(items, total, p))
    }

    async fn rotate_secret(
        &self,
        id: &ProjectId,
        actor: Actor<'_>,
    ) -> StoreResult<ProjectWithSecret> {
        let now = self.now();
        let secret = generate_secret();
        let mut w = self.write().await?;
        let r = sqlx::query("UPDATE projects SET app_secret = $1 WHERE project_id = $2")
            .bind(secret.as_str())
            .bind(id.as_str())
            .execute(&mut *w.tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::not_found("project", id));
        }
        audit(
            &mut w.tx,
            Some(id),
            actor,
            now,
            "project.rotate_secret",
            json!({"appSecret": "(previous)"}),
            json!({"appSecret": "(new)"}),
        )
        .await?;
        let row = sqlx::query("SELECT * FROM projects WHERE project_id = $1")
            .bind(id.as_str())
            .fetch_one(&mut *w.tx)
            .await?;
        let project = project_from(&row)?;
        self.notify(&mut w.tx, id, ChangeKind::Secret).await?;
        w.tx.commit().await?;
        Ok(ProjectWithSecret {
            project,
            app_secret: secret,
        })
    }

    async fn delete_project(&self, id: &ProjectId, actor: Actor<'_>) -> StoreResult<()> {
        let now = self.now();
        let mut w = self.write().await?;
        let project = {
            let row = sqlx::query("SELECT * FROM projects WHERE project_id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut *w.tx)
                .await?
                .ok_or_else(|| StoreError::not_found("project", id))?;
            project_from(&row)?
        };
        for table in [
            "bindings",
            "device_properties WHERE iot_id IN (SELECT iot_id FROM devices WHERE project_id = $1)",
            "devices",
            "users",
            "products",
            "api_activation",
            "outbox",
        ] {
            let sql = if table.contains("WHERE") {
                format!("DELETE FROM {table}")
            } else {
                format!("DELETE FROM {table} WHERE project_id = $1")
            };
            sqlx::query(&sql)
                .bind(id.as_str())
                .execute(&mut *w.tx)
                .await?;
        }
        sqlx::query("DELETE FROM projects WHERE project_id = $1")
            .bind(id.as_str())
            .execute(&mut *w.tx)
            .await?;
        audit(
            &mut w.tx,
            Some(id),
            actor,
            now,
            "project.delete",
            json!({"name": project.name, "appKey": project.app_key}),
            json!(null),
        )
        .await?;
        self.notify(&mut w.tx, id, ChangeKind::Registry).await?;
        w.tx.commit().await?;
        self.bump();
        Ok(())
    }

    async fn create_product(&self, project: &ProjectId, new: &NewProduct) -> StoreResult<Product> {
        check_text("name", new.name.trim(), 1, 64)?;
        check_text("deviceType", new.device_type.trim(), 1, 64)?;
        let now = self.now();
        let mut w = self.write().await?;
        load_settings(&mut w.tx, project).await?;
        for _ in 0..5 {
            let pk = new.product_key.clone().unwrap_or_else(ProductKey::generate);
            let r = sqlx::query(
                "INSERT INTO products (product_key, project_id, name, device_type, sync_enabled, created_at) \
                 VALUES ($1, $2, $3, $4, 1, $5)",
            )
            .bind(pk.as_str())
            .bind(project.as_str())
            .bind(new.name.trim())
            .bind(new.device_type.trim())
            .bind(now)
            .execute(&mut *w.tx)
            .await;
            match r {
                Err(e) if is_unique_violation(&e) => {
                    if new.product_key.is_some() {
                        return Err(StoreError::Conflict {
                            entity: "product",
                            field: "productKey",
                            value: pk.to_string(),
                        });
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            w.tx.commit().await?;
            return Ok(Product {
                product_key: pk,
                project_id: project.clone(),
                name: new.name.trim().to_owned(),
                device_type: new.device_type.trim().to_owned(),
                sync_enabled: true,
                created_at: now,
            });
        }
        Err(StoreError::Conflict {
            entity: "product",
            field: "productKey",
            value: "generated".into(),
        })
    }

    async fn get_product(&self, project: &ProjectId, pk: &ProductKey) -> StoreResult<Product> {
        let row = sqlx::query("SELECT * FROM products WHERE product_key = $1 AND project_id = $2")
            .bind(pk.as_str())
            .bind(project.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("product", pk))?;
        product_from(&row)
    }

    async fn list_products(
        &self,
        project: &ProjectId,
        p: PageRequest,
    ) -> StoreResult<Page<Product>> {
        let mut conn = self.pool.acquire().await?;
        load_settings(&mut conn, project).await?;
        let total = count(
            &mut conn,
            "SELECT COUNT(*) FROM products WHERE project_id = $1",
            &[project.as_str()],
        )
        .await?;
        let rows = sqlx::query(
            "SELECT * FROM products WHERE project_id = $1 ORDER BY created_at, product_key LIMIT $2 OFFSET $3",
        )
        .bind(project.as_str())
        .bind(i64::from(p.page_size))
        .bind(p.offset())
        .fetch_all(&mut *conn)
        .await?;
        let items = rows.iter().map(product_from).collect::<StoreResult<_>>()?;
        Ok(page(items, total, p))
    }

    async fn create_device(
        &self,
        project: &ProjectId,
        pk: &ProductKey,
        dn: &DeviceName,
    ) -> StoreResult<DeviceWithSecret> {
        let now = self.now();
        let mut w = self.write().await?;
        let settings = load_settings(&mut w.tx, project).await?;
        let prow = sqlx::query("SELECT * FROM products WHERE product_key = $1 AND project_id = $2")
            .bind(pk.as_str())
            .bind(project.as_str())
            .fetch_optional(&mut *w.tx)
            .await?
            .ok_or_else(|| StoreError::not_found("product", pk))?;
        let product = product_from(&prow)?;
        let iot_id = IotId::generate();
        let secret = generate_secret();
        let r = sqlx::query(
            "INSERT INTO devices (iot_id, project_id, product_key, device_name, device_secret, status, \
             status_time, created_at) VALUES ($1, $2, $3, $4, $5, 'inactive', $6, $6)",
        )
        .bind(iot_id.as_str())
        .bind(project.as_str())
        .bind(pk.as_str())
        .bind(dn.as_str())
        .bind(secret.as_str())
        .bind(now)
        .execute(&mut *w.tx)
        .await;
        match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict {
                    entity: "device",
                    field: "deviceName",
                    value: dn.to_string(),
                })
            }
            r => {
                r?;
            }
        }
        let device = Device {
            iot_id,
            project_id: project.clone(),
            product_key: pk.clone(),
            device_name: dn.clone(),
            device_type: product.device_type.clone(),
            status: DeviceStatus::Inactive,
            status_time: now,
            created_at: now,
        };
        let m = payload::device_lifecycle(
            &device.as_ref(),
            LifecycleAction::Create,
            Some(&secret),
            now,
        );
        produce(&mut w.tx, &settings, Some(product.sync_enabled), m).await?;
        w.tx.commit().await?;
        Ok(DeviceWithSecret {
            device,
            device_secret: secret,
        })
    }

    async fn get_device(&self, project: &ProjectId, iot_id: &IotId) -> StoreResult<Device> {
        let mut conn = self.pool.acquire().await?;
        Ok(fetch_device(&mut conn, project, iot_id).await?.0.device)
    }

    async fn device_by_name(
        &self,
        project: &ProjectId,
        pk: &ProductKey,
        dn: &DeviceName,
    ) -> StoreResult<Device> {
        let d = self.device_credentials(pk, dn).await?;
        if &d.device.project_id != project {
            return Err(StoreError::not_found("device", format!("{pk}/{dn}")));
        }
        Ok(d.device)
    }

    async fn device_credentials(
        &self,
        pk: &ProductKey,
        dn: &DeviceName,
    ) -> StoreResult<DeviceWithSecret> {
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLS} FROM devices d JOIN products p ON p.product_key = d.product_key \
             WHERE d.product_key = $1 AND d.device_name = $2"
        ))
        .bind(pk.as_str())
        .bind(dn.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found("device", format!("{pk}/{dn}")))?;
        device_from(&row)
    }

    async fn list_devices(
        &self,
        project: &ProjectId,
        product: Option<&ProductKey>,
        p: PageRequest,
    ) -> StoreResult<Page<Device>> {
        let mut conn = self.pool.acquire().await?;
        load_settings(&mut conn, project).await?;
        let pk = product.map(|p| p.as_str()).unwrap_or("");
        let filter = "d.project_id = $1 AND ($2 = '' OR d.product_key = $2)";
        let total = count(
            &mut conn,
            &format!("SELECT COUNT(*) FROM devices d WHERE {filter}"),
            &[project.as_str(), pk],
        )
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLS} FROM devices d JOIN products p ON p.product_key = d.product_key \
             WHERE {filter} ORDER BY d.created_at, d.iot_id LIMIT $3 OFFSET $4"
        ))
        .bind(project.as_str())
        .bind(pk)
        .bind(i64::from(p.page_size))
        .bind(p.offset())
        .fetch_all(&mut *conn)
        .await?;
        let items = rows
            .iter()
            .map(|r| device_from(r).map(|d| d.device))
            .collect::<StoreResult<_>>()?;
        Ok(page(items, total, p))
    }

    async fn delete_device(&self, project: &ProjectId, iot_id: &IotId) -> StoreResult<()> {
        let now = self.now();
        let mut w = self.write().await?;
        let settings = load_settings(&mut w.tx, project).await?;
        let (d, product_sync, _) = fetch_device(&mut w.tx, project, iot_id).await?;
        unbind_all(
            &mut w.tx,
            &settings,
            project,
            "iot_id",
            iot_id.as_str(),
            now,
        )
        .await?;
        sqlx::query("DELETE FROM device_properties WHERE iot_id = $1")
            .bind(iot_id.as_str())
            .execute(&mut *w.tx)
            .await?;
        sqlx::query("DELETE FROM devices WHERE iot_id = $1")
            .bind(iot_id.as_str())
            .execute(&mut *w.tx)
            .await?;
        let m = payload::device_lifecycle(&d.device.as_ref(), LifecycleAction::Delete, None, now);
        produce(&mut w.tx, &settings, Some(product_sync), m).await?;
        self.notify(&mut w.tx, project, ChangeKind::Registry)
            .await?;
        w.tx.commit().await?;
        self.bump();
        Ok(())
    }

    async fn set_device_enabled(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
        enabled: bool,
    ) -> StoreResult<Device> {
        let now = self.now();
        let mut w = self.write().await?;
        let settings = load_settings(&mut w.tx, project).await?;
        let (d, product_sync, activated) = fetch_device(&mut w.tx, project, iot_id).await?;
        let was_disabled = d.device.status == DeviceStatus::Disabled;
        if was_disabled != enabled {
            // Already in the asked state: nothing changes, no message.
            return Ok(d.device);
        }
        let status = if !enabled {
            DeviceStatus::Disabled
        } else if activated.is_some() {
            DeviceStatus::Offline
        } else {
            DeviceStatus::Inactive
        };
        sqlx::query("UPDATE devices SET status = $1, status_time = $2 WHERE iot_id = $3")
            .bind(status.as_str())
            .bind(now)
            .bind(iot_id.as_str())
            .execute(&mut *w.tx)
            .await?;
        let action = if enabled {
            LifecycleAction::Enable
        } else {
            LifecycleAction::Disable
        };
        let m = payload::device_lifecycle(&d.device.as_ref(), action, None, now);
        produce(&mut w.tx, &settings, Some(product_sync), m).await?;
        self.notify(&mut w.tx, project, ChangeKind::Registry)
            .await?;
        w.tx.commit().await?;
        self.bump();
        Ok(Device {
            status,
            status_time: now,
            ..d.device
        })
    }

    async fn set_device_online(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
        online: bool,
        at_ms: i64,
    ) -> StoreResult<Device> {
        let now = self.now();
        let mut w = self.write().await?;
        let settings = load_settings(&mut w.tx, project).await?;
        let (d, product_sync, _) = fetch_device(&mut w.tx, project, iot_id).await?;
        if d.device.status == DeviceStatus::Disabled {
            return Err(StoreError::Invalid {
                field: "iotId",
                reason: "the device is disabled".into(),
            });
        }
        let status = if online {
            DeviceStatus::Online
        } else {
            DeviceStatus::Offline
        };
        sqlx::query(
            "UPDATE devices SET status = $1, status_time = $2, \
             activated_at = COALESCE(activated_at, $2) WHERE iot_id = $3",
        )
        .bind(status.as_str())
        .bind(at_ms)
        .bind(iot_id.as_str())
        .execute(&mut *w.tx)
        .await?;
        let m = payload::device_status(&d.device.as_ref(), online, at_ms, now);
        produce(&mut w.tx, &settings, Some(product_sync), m).await?;
        w.tx.commit().await?;
        Ok(Device {
            status,
            status_time: at_ms,
            ..d.device
        })
    }

    async fn record_properties(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
        items: &[PropertyValue],
    ) -> StoreResult<()> {
        let mut w = self.write().await?;
        fetch_device(&mut w.tx, project, iot_id).await?;
        let batch = [(project.clone(), iot_id.clone(), items.to_vec())];
        write_properties(&mut w.tx, &batch, |_| true).await?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn record_properties_batch(
        &self,
        batch: &[(ProjectId, IotId, Vec<PropertyValue>)],
    ) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let round = self
            .history_round
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut w = self.write().await?;
        // Bounding the history costs a statement per (device, property), so each one is
        // trimmed every HISTORY_TRIM_EVERY batches only: it may hold that many batches'
        // reports beyond PROPERTY_HISTORY_MAX in between.
        write_properties(&mut w.tx, batch, |key_hash| {
            key_hash.wrapping_add(round) % HISTORY_TRIM_EVERY == 0
        })
        .await?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn device_properties(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
    ) -> StoreResult<Vec<PropertyValue>> {
        let mut conn = self.pool.acquire().await?;
        fetch_device(&mut conn, project, iot_id).await?;
        let rows = sqlx::query(
            "SELECT identifier, value_json, time FROM device_properties WHERE iot_id = $1 ORDER BY identifier",
        )
        .bind(iot_id.as_str())
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                let v: String = r.try_get("value_json")?;
                Ok(PropertyValue {
                    identifier: r.try_get("identifier")?,
                    value: serde_json::from_str(&v)
                        .map_err(|e| StoreError::Corrupt(format!("property value: {e}")))?,
                    time: r.try_get("time")?,
                })
            })
            .collect()
    }

    async fn create_user(&self, project: &ProjectId, new: &NewUser) -> StoreResult<User> {
        check_text("loginName", new.login_name.trim(), 1, 64)?;
        check_text("nickName", &new.nick_name, 0, 64)?;
        check_text("phone", &new.phone, 0, 32)?;
        check_text("email", &new.email, 0, 128)?;
        let now = self.now();
        let mut w = self.write().await?;
        let settings = load_settings(&mut w.tx, project).await?;
        let u = User {
            identity_id: IdentityId::generate(),
            project_id: project.clone(),
            login_name: new.login_name.trim().to_owned(),
            nick_name: new.nick_name.clone(),
            phone: new.phone.clone(),
            email: new.email.clone(),
            gmt_create: now,
            gmt_modified: now,
        };
        let r = sqlx::query(
            "INSERT INTO users (identity_id, project_id, login_name, nick_name, phone, email, gmt_create, gmt_modified) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(u.identity_id.as_str())
        .bind(project.as_str())
        .bind(u.login_name.as_str())
        .bind(u.nick_name.as_str())
        .bind(u.phone.as_str())
        .bind(u.email.as_str())
        .bind(now)
        .execute(&mut *w.tx)
        .await;
        match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict {
                    entity: "user",
                    field: "loginName",
                    value: u.login_name,
                })
            }
            r => {
                r?;
            }
        }
        let m = payload::account_lifecycle(project, AccountAction::Create, &account_facts(&u), now);
        produce(&mut w.tx, &settings, None, m).await?;
        w.tx.commit().await?;
        Ok(u)
    }

    async fn get_user(&self, project: &ProjectId, id: &IdentityId) -> StoreResult<User> {
        let mut conn = self.pool.acquire().await?;
        fetch_user(&mut conn, project, id).await
    }

    async fn update_user(
        &self,
        project: &ProjectId,
        id: &IdentityId,
        patch: &UserPatch,
    ) -> StoreResult<User> {
        if let Some(n) = &patch.nick_name {
            check_text("nickName", n, 0, 64)?;
        }
        if let Some(n) = &patch.phone {
            check_text("phone", n, 0, 32)?;
        }
        if let Some(n) = &patch.email {
            check_text("email", n, 0, 128)?;
        }
        let now = self.now();
        let mut w = self.write().await?;
        let settings = load_settings(&mut w.tx, project).await?;
        let mut u = fetch_user(&mut w.tx, project, id).await?;
        if let Some(n) = &patch.nick_name {
            u.nick_name = n.clone();
        }
        if let Some(n) = &patch.phone {
            u.phone = n.clone();
        }
        if let Some(n) = &patch.email {
            u.email = n.clone();
        }
        u.gmt_modified = now;
        sqlx::query(
            "UPDATE users SET nick_name = $1, phone = $2, email = $3, gmt_modified = $4 WHERE identity_id = $5",
        )
        .bind(u.nick_name.as_str())
        .bind(u.phone.as_str())
        .bind(u.email.as_str())
        .bind(now)
        .bind(id.as_str())
        .execute(&mut *w.tx)
        .await?;
        let m = payload::account_lifecycle(project, AccountAction::Update, &account_facts(&u), now);
        produce(&mut w.tx, &settings, None, m).await?;
        w.tx.commit().await?;
        Ok(u)
    }

    async fn delete_user(&self, project: &ProjectId, id: &IdentityId) -> StoreResult<()> {
        let now = self.now();
        let mut w = self.write().await?;
        let settings = load_settings(&mut w.tx, project).await?;
        let mut u = fetch_user(&mut w.tx, project, id).await?;
        unbind_all(
            &mut w.tx,
            &settings,
            project,
            "identity_id",
            id.as_str(),
            now,
        )
        .await?;
        sqlx::query("DELETE FROM users WHERE identity_id = $1")
            .bind(id.as_str())
            .execute(&mut *w.tx)
            .await?;
        u.gmt_modified = now;
        let m = payload::account_lifecycle(project, AccountAction::Delete, &account_facts(&u), now);
        produce(&mut w.tx, &settings, None, m).await?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn list_users(&self, project: &ProjectId, p: PageRequest) -> StoreResult<Page<User>> {
        let mut conn = self.pool.acquire().await?;
        load_settings(&mut conn, project).await?;
        let total = count(
            &mut conn,
            "SELECT COUNT(*) FROM users WHERE project_id = $1",
            &[project.as_str()],
        )
        .await?;
        let rows = sqlx::query(
            "SELECT * FROM users WHERE project_id = $1 ORDER BY gmt_create, identity_id LIMIT $2 OFFSET $3",
        )
        .bind(project.as_str())
        .bind(i64::from(p.page_size))
        .bind(p.offset())
        .fetch_all(&mut *conn)
        .await?;
        let items = rows.iter().map(user_from).collect::<StoreResult<_>>()?;
        Ok(page(items, total, p))
    }

    async fn bind(
        &self,
        project: &ProjectId,
        identity: &IdentityId,
        iot_id: &IotId,
        owned: bool,
    ) -> StoreResult<Binding> {
        let now = self.now();
        let mut w = self.write().await?;
        let settings = load_settings(&mut w.tx, project).await?;
        fetch_user(&mut w.tx, project, identity).await?;
        let (d, product_sync, _) = fetch_device(&mut w.tx, project, iot_id).await?;
        if owned {
            let owners = count(
                &mut w.tx,
                "SELECT COUNT(*) FROM bindings WHERE iot_id = $1 AND owned = 1",
                &[iot_id.as_str()],
            )
            .await?;
            if owners > 0 {
                return Err(StoreError::Conflict {
                    entity: "binding",
                    field: "owned",
                    value: "the device already has an owner; share it (owned 0) or unbind the owner first".into(),
                });
            }
        }
        let r = sqlx::query(
            "INSERT INTO bindings (identity_id, iot_id, project_id, owned, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(identity.as_str())
        .bind(iot_id.as_str())
        .bind(project.as_str())
        .bind(b(owned))
        .bind(now)
        .execute(&mut *w.tx)
        .await;
        match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict {
                    entity: "binding",
                    field: "iotId",
                    value: iot_id.to_string(),
                })
            }
            r => {
                r?;
            }
        }
        let op = if owned {
            BindingOperation::Bind
        } else {
            BindingOperation::Share
        };
        let m = payload::binding(&d.device.as_ref(), op, identity, owned, now);
        produce(&mut w.tx, &settings, Some(product_sync), m).await?;
        w.tx.commit().await?;
        Ok(Binding {
            identity_id: identity.clone(),
            iot_id: iot_id.clone(),
            product_key: d.device.product_key,
            device_name: d.device.device_name,
            owned: u8::from(owned),
            created_at: now,
        })
    }

    async fn unbind(
        &self,
        project: &ProjectId,
        identity: &IdentityId,
        iot_id: &IotId,
    ) -> StoreResult<()> {
        let now = self.now();
        let mut w = self.write().await?;
        let settings = load_settings(&mut w.tx, project).await?;
        let (d, product_sync, _) = fetch_device(&mut w.tx, project, iot_id).await?;
        let row = sqlx::query(
            "SELECT owned FROM bindings WHERE identity_id = $1 AND iot_id = $2 AND project_id = $3",
        )
        .bind(identity.as_str())
        .bind(iot_id.as_str())
        .bind(project.as_str())
        .fetch_optional(&mut *w.tx)
        .await?
        .ok_or_else(|| StoreError::not_found("binding", format!("{identity}/{iot_id}")))?;
        let owned = row.try_get::<i64, _>("owned")? != 0;
        sqlx::query("DELETE FROM bindings WHERE identity_id = $1 AND iot_id = $2")
            .bind(identity.as_str())
            .bind(iot_id.as_str())
            .execute(&mut *w.tx)
            .await?;
        let m = payload::binding(
            &d.device.as_ref(),
            BindingOperation::Unbind,
            identity,
            owned,
            now,
        );
        produce(&mut w.tx, &settings, Some(product_sync), m).await?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn list_bindings(
        &self,
        project: &ProjectId,
        f: BindingFilter<'_>,
        p: PageRequest,
    ) -> StoreResult<Page<Binding>> {
        let mut conn = self.pool.acquire().await?;
        load_settings(&mut conn, project).await?;
        let ident = f.identity.map(|i| i.as_str()).unwrap_or("");
        let iot = f.iot_id.map(|i| i.as_str()).unwrap_or("");
        let filter =
            "b.project_id = $1 AND ($2 = '' OR b.identity_id = $2) AND ($3 = '' OR b.iot_id = $3)";
        let total = count(
            &mut conn,
            &format!("SELECT COUNT(*) FROM bindings b WHERE {filter}"),
            &[project.as_str(), ident, iot],
        )
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT b.identity_id, b.iot_id, d.product_key, d.device_name, b.owned, b.created_at \
             FROM bindings b JOIN devices d ON d.iot_id = b.iot_id WHERE {filter} \
             ORDER BY b.created_at, b.identity_id, b.iot_id LIMIT $4 OFFSET $5"
        ))
        .bind(project.as_str())
        .bind(ident)
        .bind(iot)
        .bind(i64::from(p.page_size))
        .bind(p.offset())
        .fetch_all(&mut *conn)
        .await?;
        let items = rows.iter().map(binding_from).collect::<StoreResult<_>>()?;
        Ok(page(items, total, p))
    }

    async fn sync_state(&self, project: &ProjectId) -> StoreResult<SyncState> {
        let mut conn = self.pool.acquire().await?;
        let settings = load_settings(&mut conn, project).await?;
        let rows = sqlx::query(
            "SELECT product_key, name, sync_enabled FROM products WHERE project_id = $1 ORDER BY created_at, product_key",
        )
        .bind(project.as_str())
        .fetch_all(&mut *conn)
        .await?;
        let products = rows
            .iter()
            .map(|r| {
                Ok(ProductSync {
                    product_key: parse(r, "product_key")?,
                    name: r.try_get("name")?,
                    enabled: r.try_get::<i64, _>("sync_enabled")? != 0,
                })
            })
            .collect::<StoreResult<_>>()?;
        Ok(SyncState {
            mode: settings.mode(),
            method: settings.method(),
            settings,
            products,
        })
    }

    async fn sync_settings(&self, project: &ProjectId) -> StoreResult<SyncSettings> {
        let mut conn = self.pool.acquire().await?;
        load_settings(&mut conn, project).await
    }

    async fn apply_sync(
        &self,
        project: &ProjectId,
        cmd: &SyncCommand,
        actor: Actor<'_>,
    ) -> StoreResult<(SyncSettings, Transition)> {
        let now = self.now();
        let mut w = self.write().await?;
        let before = load_settings(&mut w.tx, project).await?;
        let (after, transition) = sync_rules::apply(&before, cmd)?;
        store_settings(&mut w.tx, project, &after).await?;
        if let Transition::Enabled { .. } = transition {
            sqlx::query("UPDATE products SET sync_enabled = 1 WHERE project_id = $1")
                .bind(project.as_str())
                .execute(&mut *w.tx)
                .await?;
        }
        let app_key: String = sqlx::query("SELECT app_key FROM projects WHERE project_id = $1")
            .bind(project.as_str())
            .fetch_one(&mut *w.tx)
            .await?
            .try_get("app_key")?;
        let app_key: AppKey = app_key
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("projects.app_key: {e}")))?;
        platform_groups(&mut w.tx, project, &app_key, &after, actor, now).await?;
        let action = match transition {
            Transition::Enabled { .. } => "sync.enable",
            Transition::Disabled => "sync.disable",
            Transition::Switched { .. } => "sync.switch",
            Transition::LegacyUrlChanged => "sync.legacy_url",
        };
        audit(
            &mut w.tx,
            Some(project),
            actor,
            now,
            action,
            settings_json(&before),
            settings_json(&after),
        )
        .await?;
        self.notify(&mut w.tx, project, ChangeKind::Sync).await?;
        w.tx.commit().await?;
        self.bump();
        Ok((after, transition))
    }

    async fn set_product_sync(
        &self,
        project: &ProjectId,
        pk: &ProductKey,
        enabled: bool,
        actor: Actor<'_>,
    ) -> StoreResult<Product> {
        let now = self.now();
        let mut w = self.write().await?;
        let settings = load_settings(&mut w.tx, project).await?;
        if !settings.enabled {
            return Err(sync_rules::RuleError::NotEnabled.into());
        }
        let row = sqlx::query("SELECT * FROM products WHERE product_key = $1 AND project_id = $2")
            .bind(pk.as_str())
            .bind(project.as_str())
            .fetch_optional(&mut *w.tx)
            .await?
            .ok_or_else(|| StoreError::not_found("product", pk))?;
        let before = product_from(&row)?;
        sqlx::query("UPDATE products SET sync_enabled = $1 WHERE product_key = $2")
            .bind(b(enabled))
            .bind(pk.as_str())
            .execute(&mut *w.tx)
            .await?;
        if before.sync_enabled != enabled {
            audit(
                &mut w.tx,
                Some(project),
                actor,
                now,
                "sync.product",
                json!({"productKey": pk, "enabled": before.sync_enabled}),
                json!({"productKey": pk, "enabled": enabled}),
            )
            .await?;
        }
        self.notify(&mut w.tx, project, ChangeKind::Sync).await?;
        w.tx.commit().await?;
        self.bump();
        Ok(Product {
            sync_enabled: enabled,
            ..before
        })
    }

    async fn all_sync_settings(&self) -> StoreResult<Vec<(ProjectId, AppKey, SyncSettings)>> {
        let rows = sqlx::query("SELECT * FROM projects ORDER BY project_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse(r, "project_id")?,
                    parse(r, "app_key")?,
                    settings_from(r)?,
                ))
            })
            .collect()
    }

    async fn api_activation(&self, project: &ProjectId) -> StoreResult<Vec<(ApiGroup, bool)>> {
        let mut conn = self.pool.acquire().await?;
        load_settings(&mut conn, project).await?;
        let rows =
            sqlx::query("SELECT api_group, activated FROM api_activation WHERE project_id = $1")
                .bind(project.as_str())
                .fetch_all(&mut *conn)
                .await?;
        let mut stored = std::collections::HashMap::new();
        for r in &rows {
            let g: String = r.try_get("api_group")?;
            if let Ok(g) = g.parse::<ApiGroup>() {
                stored.insert(g, r.try_get::<i64, _>("activated")? != 0);
            }
        }
        Ok(ApiGroup::ALL
            .into_iter()
            .map(|g| {
                (
                    g,
                    stored.get(&g).copied().unwrap_or(g.activated_by_default()),
                )
            })
            .collect())
    }

    async fn set_api_activation(
        &self,
        project: &ProjectId,
        group: ApiGroup,
        activated: bool,
        actor: Actor<'_>,
    ) -> StoreResult<()> {
        let now = self.now();
        let mut w = self.write().await?;
        load_settings(&mut w.tx, project).await?;
        let before = sqlx::query(
            "SELECT activated FROM api_activation WHERE project_id = $1 AND api_group = $2",
        )
        .bind(project.as_str())
        .bind(group.as_str())
        .fetch_optional(&mut *w.tx)
        .await?
        .map(|r| r.try_get::<i64, _>("activated").map(|v| v != 0))
        .transpose()?
        .unwrap_or(group.activated_by_default());
        sqlx::query("DELETE FROM api_activation WHERE project_id = $1 AND api_group = $2")
            .bind(project.as_str())
            .bind(group.as_str())
            .execute(&mut *w.tx)
            .await?;
        sqlx::query(
            "INSERT INTO api_activation (project_id, api_group, activated) VALUES ($1, $2, $3)",
        )
        .bind(project.as_str())
        .bind(group.as_str())
        .bind(b(activated))
        .execute(&mut *w.tx)
        .await?;
        if before != activated {
            audit(
                &mut w.tx,
                Some(project),
                actor,
                now,
                "api.activation",
                json!({"group": group, "activated": before}),
                json!({"group": group, "activated": activated}),
            )
            .await?;
        }
        w.tx.commit().await?;
        Ok(())
    }

    async fn put_cloud_token(
        &self,
        project: &ProjectId,
        token_hash: &str,
        issued_at: i64,
        expires_at: i64,
    ) -> StoreResult<()> {
        let mut w = self.write().await?;
        sqlx::query(
            "INSERT INTO cloud_tokens (project_id, token_hash, issued_at, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (project_id) DO UPDATE SET token_hash = excluded.token_hash, \
             issued_at = excluded.issued_at, expires_at = excluded.expires_at",
        )
        .bind(project.as_str())
        .bind(token_hash)
        .bind(issued_at)
        .bind(expires_at)
        .execute(&mut *w.tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                StoreError::not_found("project", project)
            }
            e => e.into(),
        })?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn cloud_token(&self, project: &ProjectId) -> StoreResult<Option<CloudToken>> {
        let row = sqlx::query(
            "SELECT token_hash, issued_at, expires_at FROM cloud_tokens WHERE project_id = $1",
        )
        .bind(project.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(CloudToken {
                token_hash: r.try_get("token_hash")?,
                issued_at: r.try_get("issued_at")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    // Cloud API nonces (one block: `use_nonce`, `purge_nonces`).
    async fn use_nonce(
        &self,
        project: &ProjectId,
        nonce: &str,
        now: i64,
        expires_at: i64,
    ) -> StoreResult<bool> {
        // One statement decides: the insert, or the take-over of a row whose window has
        // passed. On PostgreSQL two nodes racing on one nonce serialize on the key and
        // exactly one sees a row written; SQLite has a single writer anyway.
        let mut w = self.write().await?;
        let done = sqlx::query(
            "INSERT INTO cloud_nonces (project_id, nonce, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (project_id, nonce) DO UPDATE SET expires_at = excluded.expires_at \
             WHERE cloud_nonces.expires_at <= $4",
        )
        .bind(project.as_str())
        .bind(nonce)
        .bind(expires_at)
        .bind(now)
        .execute(&mut *w.tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                StoreError::not_found("project", project)
            }
            e => e.into(),
        })?;
        w.tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn purge_nonces(&self, now: i64) -> StoreResult<u64> {
        let mut w = self.write().await?;
        let done = sqlx::query("DELETE FROM cloud_nonces WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
        w.tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn property_timeline(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
        q: &TimelineQuery,
    ) -> StoreResult<Vec<PropertyValue>> {
        let mut conn = self.pool.acquire().await?;
        fetch_device(&mut conn, project, iot_id).await?;
        let rows = sqlx::query(
            "SELECT values_json FROM property_chunks \
             WHERE iot_id = $1 AND identifier = $2 ORDER BY seq DESC",
        )
        .bind(iot_id.as_str())
        .bind(q.identifier.as_str())
        .fetch_all(&mut *conn)
        .await?;
        let chunks = rows
            .iter()
            .map(|r| r.try_get::<String, _>("values_json"))
            .collect::<Result<Vec<_>, _>>()?;
        timeline_from_chunks(&chunks, q)
    }

    async fn declare_group(
        &self,
        project: &ProjectId,
        name: &ConsumerGroup,
        filter: &GroupFilterDoc,
        max_groups: usize,
        actor: Actor<'_>,
    ) -> StoreResult<DeclaredGroup> {
        let now = self.now();
        let mut w = self.write().await?;
        load_settings(&mut w.tx, project).await?;
        if fetch_group(&mut w.tx, project, name.as_str())
            .await?
            .is_some()
        {
            return Err(StoreError::Conflict {
                entity: "consumer group",
                field: "name",
                value: name.to_string(),
            });
        }
        check_group_limit(&mut w.tx, project, max_groups).await?;
        let g = DeclaredGroup {
            project_id: project.clone(),
            name: name.clone(),
            filter: filter.clone(),
            retry: GroupRetryKind::Backoff,
            internal: false,
            created_at: now,
        };
        let r = insert_group(&mut w.tx, &g, actor).await;
        match r {
            Err(StoreError::Db(e)) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict {
                    entity: "consumer group",
                    field: "name",
                    value: name.to_string(),
                })
            }
            r => r?,
        }
        w.tx.commit().await?;
        Ok(g)
    }

    async fn ensure_group(
        &self,
        project: &ProjectId,
        name: &ConsumerGroup,
        filter: &GroupFilterDoc,
        max_groups: usize,
        actor: Actor<'_>,
    ) -> StoreResult<(DeclaredGroup, bool)> {
        {
            let mut conn = self.pool.acquire().await?;
            if let Some(g) = fetch_group(&mut conn, project, name.as_str()).await? {
                return Ok((g, false));
            }
        }
        let now = self.now();
        let mut w = self.write().await?;
        load_settings(&mut w.tx, project).await?;
        if let Some(g) = fetch_group(&mut w.tx, project, name.as_str()).await? {
            return Ok((g, false));
        }
        check_group_limit(&mut w.tx, project, max_groups).await?;
        let g = DeclaredGroup {
            project_id: project.clone(),
            name: name.clone(),
            filter: filter.clone(),
            retry: GroupRetryKind::Backoff,
            internal: name
                .as_str()
                .starts_with(iotsync_core::subscription::RESERVED_PREFIX),
            created_at: now,
        };
        insert_group(&mut w.tx, &g, actor).await?;
        w.tx.commit().await?;
        Ok((g, true))
    }

    async fn delete_group(
        &self,
        project: &ProjectId,
        name: &ConsumerGroup,
        actor: Actor<'_>,
    ) -> StoreResult<DeclaredGroup> {
        let now = self.now();
        let mut w = self.write().await?;
        load_settings(&mut w.tx, project).await?;
        let g = fetch_group(&mut w.tx, project, name.as_str())
            .await?
            .ok_or_else(|| StoreError::not_found("consumer group", name))?;
        remove_group(&mut w.tx, &g, actor, now).await?;
        w.tx.commit().await?;
        Ok(g)
    }

    async fn list_groups(&self, project: &ProjectId) -> StoreResult<Vec<DeclaredGroup>> {
        let mut conn = self.pool.acquire().await?;
        load_settings(&mut conn, project).await?;
        let rows = sqlx::query("SELECT * FROM consumer_groups WHERE project_id = $1 ORDER BY name")
            .bind(project.as_str())
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(group_from).collect()
    }

    async fn all_groups(&self) -> StoreResult<Vec<DeclaredGroup>> {
        let rows = sqlx::query("SELECT * FROM consumer_groups ORDER BY project_id, name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(group_from).collect()
    }

    async fn record_audit(
        &self,
        project: &ProjectId,
        actor: &str,
        action: &str,
        details: serde_json::Value,
    ) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await?;
        load_settings(&mut conn, project).await?;
        let at = self.clock.now_ms();
        audit(
            &mut conn,
            Some(project),
            actor,
            at,
            action,
            serde_json::Value::Null,
            details,
        )
        .await
    }

    async fn set_group_alerts(
        &self,
        project: &ProjectId,
        name: &ConsumerGroup,
        thresholds: &AlertThresholds,
        actor: Actor<'_>,
    ) -> StoreResult<GroupAlerts> {
        let mut columns = [None; 3];
        for (col, (field, v)) in columns.iter_mut().zip(thresholds.named()) {
            *col = threshold_column(field, v)?;
        }
        let now = self.now();
        let mut w = self.write().await?;
        load_settings(&mut w.tx, project).await?;
        fetch_group(&mut w.tx, project, name.as_str())
            .await?
            .ok_or_else(|| StoreError::not_found("consumer group", name))?;
        let before = fetch_alerts(&mut w.tx, project, name)
            .await?
            .map(|a| a.thresholds)
            .unwrap_or_default();
        sqlx::query("DELETE FROM group_alerts WHERE project_id = $1 AND name = $2")
            .bind(project.as_str())
            .bind(name.as_str())
            .execute(&mut *w.tx)
            .await?;
        // No threshold: no row, so the evaluator's round never reads the group.
        if !thresholds.is_empty() {
            sqlx::query(
                "INSERT INTO group_alerts (project_id, name, stacked_max, oldest_age_max_ms, \
                 dead_letters_max, updated_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(project.as_str())
            .bind(name.as_str())
            .bind(columns[0])
            .bind(columns[1])
            .bind(columns[2])
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
        }
        if before != *thresholds {
            audit(
                &mut w.tx,
                Some(project),
                actor,
                now,
                "consumer_group.alerts",
                alerts_json(name, &before),
                alerts_json(name, thresholds),
            )
            .await?;
        }
        w.tx.commit().await?;
        Ok(GroupAlerts {
            project_id: project.clone(),
            group: name.clone(),
            thresholds: *thresholds,
            updated_at: (!thresholds.is_empty()).then_some(now),
        })
    }

    async fn group_alerts(
        &self,
        project: &ProjectId,
        name: &ConsumerGroup,
    ) -> StoreResult<GroupAlerts> {
        let mut conn = self.pool.acquire().await?;
        load_settings(&mut conn, project).await?;
        fetch_group(&mut conn, project, name.as_str())
            .await?
            .ok_or_else(|| StoreError::not_found("consumer group", name))?;
        Ok(fetch_alerts(&mut conn, project, name)
            .await?
            .unwrap_or_else(|| GroupAlerts {
                project_id: project.clone(),
                group: name.clone(),
                thresholds: AlertThresholds::default(),
                updated_at: None,
            }))
    }

    async fn project_alerts(&self, project: &ProjectId) -> StoreResult<Vec<GroupAlerts>> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLS} FROM group_alerts WHERE project_id = $1 ORDER BY name"
        ))
        .bind(project.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alerts_from).collect()
    }

    async fn all_group_alerts(&self) -> StoreResult<Vec<GroupAlerts>> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLS} FROM group_alerts ORDER BY project_id, name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alerts_from).collect()
    }

    async fn audit_log(
        &self,
        project: &ProjectId,
        p: PageRequest,
    ) -> StoreResult<Page<AuditEntry>> {
        let mut conn = self.pool.acquire().await?;
        load_settings(&mut conn, project).await?;
        let total = count(
            &mut conn,
            "SELECT COUNT(*) FROM audit_log WHERE project_id = $1",
            &[project.as_str()],
        )
        .await?;
        let rows = sqlx::query(
            "SELECT * FROM audit_log WHERE project_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
        )
        .bind(project.as_str())
        .bind(i64::from(p.page_size))
        .bind(p.offset())
        .fetch_all(&mut *conn)
        .await?;
        let items = rows
            .iter()
            .map(|r| {
                let before: String = r.try_get("before_json")?;
                let after: String = r.try_get("after_json")?;
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    project_id: r.try_get("project_id")?,
                    actor: r.try_get("actor")?,
                    at: r.try_get("at")?,
                    action: r.try_get("action")?,
                    before: serde_json::from_str(&before).unwrap_or(serde_json::Value::Null),
                    after: serde_json::from_str(&after).unwrap_or(serde_json::Value::Null),
                })
            })
            .collect::<StoreResult<_>>()?;
        Ok(page(items, total, p))
    }

    // Console sessions and failed sign-in counters (issue 13).
    async fn create_console_session(
        &self,
        session: &ConsoleSession,
        now: i64,
        max_sessions: usize,
    ) -> StoreResult<()> {
        let mut w = self.write().await?;
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
        let live: i64 = sqlx::query("SELECT count(*) AS n FROM console_sessions")
            .fetch_one(&mut *w.tx)
            .await?
            .try_get("n")?;
        let keep = i64::try_from(max_sessions.saturating_sub(1)).unwrap_or(i64::MAX);
        if live > keep {
            sqlx::query(
                "DELETE FROM console_sessions WHERE token_hash IN \
                 (SELECT token_hash FROM console_sessions ORDER BY expires_at, token_hash LIMIT $1)",
            )
            .bind(live - keep)
            .execute(&mut *w.tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, operator_fp, csrf_token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(session.token_hash.as_str())
        .bind(session.operator_fp.as_str())
        .bind(session.csrf_token.as_str())
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn console_session(
        &self,
        token_hash: &str,
        now: i64,
    ) -> StoreResult<Option<ConsoleSession>> {
        let row = sqlx::query(
            "SELECT token_hash, operator_fp, csrf_token, created_at, expires_at \
             FROM console_sessions WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ConsoleSession {
                token_hash: r.try_get("token_hash")?,
                operator_fp: r.try_get("operator_fp")?,
                csrf_token: r.try_get("csrf_token")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    async fn delete_console_session(&self, token_hash: &str) -> StoreResult<bool> {
        let mut w = self.write().await?;
        let done = sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&mut *w.tx)
            .await?;
        w.tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn auth_failures(&self, keys: &[&str]) -> StoreResult<Vec<(String, AuthFailures)>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let row = sqlx::query(
                "SELECT failures, blocked_until, forget_at FROM auth_failures WHERE key_hash = $1",
            )
            .bind(*key)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(r) = row {
                out.push(((*key).to_owned(), auth_failures_from(&r)?));
            }
        }
        Ok(out)
    }

    async fn note_auth_failure(
        &self,
        key: &str,
        now: i64,
        next: &(dyn Fn(Option<AuthFailures>) -> AuthFailures + Send + Sync),
    ) -> StoreResult<AuthFailures> {
        let mut w = self.write().await?;
        // Every hundredth failure sweeps the forgotten counters.
        if self
            .auth_purge_round
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(100)
        {
            sqlx::query("DELETE FROM auth_failures WHERE forget_at <= $1")
                .bind(now)
                .execute(&mut *w.tx)
                .await?;
        }
        // PostgreSQL: the row lock makes nodes counting one key take turns (a missing row
        // is created first so there is something to lock); SQLite has one writer anyway.
        let lock = match self.backend {
            StoreBackend::Postgres => {
                sqlx::query(
                    "INSERT INTO auth_failures (key_hash, failures, blocked_until, forget_at) \
                     VALUES ($1, 0, $2, $3) ON CONFLICT (key_hash) DO NOTHING",
                )
                .bind(key)
                .bind(i64::MIN)
                .bind(i64::MIN)
                .execute(&mut *w.tx)
                .await?;
                " FOR UPDATE"
            }
            StoreBackend::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "SELECT failures, blocked_until, forget_at FROM auth_failures WHERE key_hash = $1{lock}"
        ))
        .bind(key)
        .fetch_optional(&mut *w.tx)
        .await?;
        let current = row
            .map(|r| auth_failures_from(&r))
            .transpose()?
            .filter(|c| c.failures > 0);
        let new = next(current);
        sqlx::query(
            "INSERT INTO auth_failures (key_hash, failures, blocked_until, forget_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key_hash) DO UPDATE SET failures = excluded.failures, \
             blocked_until = excluded.blocked_until, forget_at = excluded.forget_at",
        )
        .bind(key)
        .bind(i64::from(new.failures))
        .bind(new.blocked_until)
        .bind(new.forget_at)
        .execute(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(new)
    }

    async fn clear_auth_failures(&self, key: &str) -> StoreResult<()> {
        let mut w = self.write().await?;
        sqlx::query("DELETE FROM auth_failures WHERE key_hash = $1")
            .bind(key)
            .execute(&mut *w.tx)
            .await?;
        w.tx.commit().await?;
        Ok(())
    }

    fn subscribe_changes(&self) -> Option<tokio::sync::broadcast::Receiver<RegistryChange>> {
        self.feed.as_ref().map(|f| f.tx.subscribe())
    }

    fn change_epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn outbox_peek(&self, limit: u32) -> StoreResult<Vec<OutboxEntry>> {
        let rows = sqlx::query("SELECT * FROM outbox ORDER BY seq LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let pk: Option<String> = r.try_get("product_key")?;
                Ok(OutboxEntry {
                    seq: r.try_get("seq")?,
                    message: SyncMessage {
                        project_id: parse(r, "project_id")?,
                        kind: parse(r, "kind")?,
                        product_key: pk
                            .map(|p| p.parse::<ProductKey>())
                            .transpose()
                            .map_err(|e| StoreError::Corrupt(format!("outbox product_key: {e}")))?,
                        ordering_key: r.try_get("ordering_key")?,
                        envelope: iotsync_core::Envelope {
                            topic: r.try_get("topic")?,
                            message_id: parse(r, "message_id")?,
                            generate_time: r.try_get("generate_time")?,
                            payload: r.try_get("payload")?,
                        },
                    },
                })
            })
            .collect()
    }

    async fn outbox_remove(&self, seqs: &[i64]) -> StoreResult<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut w = self.write().await?;
        for chunk in seqs.chunks(500) {
            let list = chunk
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(",");
            // The seqs are integers we produced, so formatting them in is safe.
            sqlx::query(&format!("DELETE FROM outbox WHERE seq IN ({list})"))
                .execute(&mut *w.tx)
                .await?;
        }
        w.tx.commit().await?;
        Ok(())
    }
}
