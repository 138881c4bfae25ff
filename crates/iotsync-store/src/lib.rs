//! iotsync-store: the registry of SPEC §2 (projects, products, devices, users, bindings),
//! the data-sync settings of SPEC §3, API activation of SPEC §9, the audit log, and the
//! transactional outbox: every registry change that SPEC §4 turns into a message writes
//! that message in the same transaction.
//!
//! One implementation, [`SqlRegistry`], runs on SQLite (embedded default) and on
//! PostgreSQL (scale-out) through sqlx's `Any` driver; the [`Registry`] trait is what
//! the server holds.

mod error;
mod model;
mod sql;

pub use error::StoreError;
pub use model::*;
pub use sql::{SqlRegistry, StoreBackend};

use async_trait::async_trait;
use iotsync_core::api_catalog::ApiGroup;
use iotsync_core::sync_rules::{SyncCommand, SyncSettings, Transition};
use iotsync_core::{
    AppKey, ConsumerGroup, DeviceName, GroupFilterDoc, IdentityId, IotId, ProductKey, ProjectId,
};

pub type StoreResult<T> = Result<T, StoreError>;

/// Who made a change, for the audit log.
pub type Actor<'a> = &'a str;

#[async_trait]
pub trait Registry: Send + Sync + 'static {
    // Projects
    async fn create_project(&self, name: &str, actor: Actor<'_>) -> StoreResult<ProjectWithSecret>;
    async fn import_project(
        &self,
        import: &ProjectImport,
        actor: Actor<'_>,
    ) -> StoreResult<Project>;
    async fn get_project(&self, id: &ProjectId) -> StoreResult<Project>;
    async fn project_by_app_key(&self, app_key: &AppKey) -> StoreResult<ProjectWithSecret>;
    async fn list_projects(
        &self,
        search: Option<&str>,
        page: PageRequest,
    ) -> StoreResult<Page<Project>>;
    async fn rotate_secret(
        &self,
        id: &ProjectId,
        actor: Actor<'_>,
    ) -> StoreResult<ProjectWithSecret>;
    async fn delete_project(&self, id: &ProjectId, actor: Actor<'_>) -> StoreResult<()>;

    // Products
    async fn create_product(&self, project: &ProjectId, new: &NewProduct) -> StoreResult<Product>;
    async fn get_product(&self, project: &ProjectId, pk: &ProductKey) -> StoreResult<Product>;
    async fn list_products(
        &self,
        project: &ProjectId,
        page: PageRequest,
    ) -> StoreResult<Page<Product>>;

    // Devices
    async fn create_device(
        &self,
        project: &ProjectId,
        pk: &ProductKey,
        dn: &DeviceName,
    ) -> StoreResult<DeviceWithSecret>;
    async fn get_device(&self, project: &ProjectId, iot_id: &IotId) -> StoreResult<Device>;
    async fn device_by_name(
        &self,
        project: &ProjectId,
        pk: &ProductKey,
        dn: &DeviceName,
    ) -> StoreResult<Device>;
    /// For the device gateway: the device and its secret, looked up without a project.
    async fn device_credentials(
        &self,
        pk: &ProductKey,
        dn: &DeviceName,
    ) -> StoreResult<DeviceWithSecret>;
    async fn list_devices(
        &self,
        project: &ProjectId,
        product: Option<&ProductKey>,
        page: PageRequest,
    ) -> StoreResult<Page<Device>>;
    async fn delete_device(&self, project: &ProjectId, iot_id: &IotId) -> StoreResult<()>;
    async fn set_device_enabled(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
        enabled: bool,
    ) -> StoreResult<Device>;
    /// Online/offline from the gateway; writes the status message in the same transaction.
    async fn set_device_online(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
        online: bool,
        at_ms: i64,
    ) -> StoreResult<Device>;
    /// Keeps the last reported values (no message: device data goes straight to the backlog).
    async fn record_properties(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
        items: &[PropertyValue],
    ) -> StoreResult<()>;
    /// Many devices' reports in one transaction (the ingest's write-behind batches).
    /// Devices deleted meanwhile are skipped.
    async fn record_properties_batch(
        &self,
        batch: &[(ProjectId, IotId, Vec<PropertyValue>)],
    ) -> StoreResult<()>;
    async fn device_properties(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
    ) -> StoreResult<Vec<PropertyValue>>;

    // Users and bindings
    async fn create_user(&self, project: &ProjectId, new: &NewUser) -> StoreResult<User>;
    async fn get_user(&self, project: &ProjectId, id: &IdentityId) -> StoreResult<User>;
    async fn update_user(
        &self,
        project: &ProjectId,
        id: &IdentityId,
        patch: &UserPatch,
    ) -> StoreResult<User>;
    async fn delete_user(&self, project: &ProjectId, id: &IdentityId) -> StoreResult<()>;
    async fn list_users(&self, project: &ProjectId, page: PageRequest) -> StoreResult<Page<User>>;
    async fn bind(
        &self,
        project: &ProjectId,
        identity: &IdentityId,
        iot_id: &IotId,
        owned: bool,
    ) -> StoreResult<Binding>;
    async fn unbind(
        &self,
        project: &ProjectId,
        identity: &IdentityId,
        iot_id: &IotId,
    ) -> StoreResult<()>;
    async fn list_bindings(
        &self,
        project: &ProjectId,
        filter: BindingFilter<'_>,
        page: PageRequest,
    ) -> StoreResult<Page<Binding>>;

    // Data sync settings (SPEC §3)
    async fn sync_state(&self, project: &ProjectId) -> StoreResult<SyncState>;
    async fn sync_settings(&self, project: &ProjectId) -> StoreResult<SyncSettings>;
    async fn apply_sync(
        &self,
        project: &ProjectId,
        cmd: &SyncCommand,
        actor: Actor<'_>,
    ) -> StoreResult<(SyncSettings, Transition)>;
    async fn set_product_sync(
        &self,
        project: &ProjectId,
        pk: &ProductKey,
        enabled: bool,
        actor: Actor<'_>,
    ) -> StoreResult<Product>;
    /// Projects whose sync is enabled or that still hold a method's stack (for the dispatcher).
    async fn all_sync_settings(&self) -> StoreResult<Vec<(ProjectId, AppKey, SyncSettings)>>;

    // API activation (SPEC §9)
    async fn api_activation(&self, project: &ProjectId) -> StoreResult<Vec<(ApiGroup, bool)>>;
    async fn set_api_activation(
        &self,
        project: &ProjectId,
        group: ApiGroup,
        activated: bool,
        actor: Actor<'_>,
    ) -> StoreResult<()>;

    // Cloud API (SPEC §9)
    /// Makes `token_hash` the project's only live cloud token (the previous one dies).
    async fn put_cloud_token(
        &self,
        project: &ProjectId,
        token_hash: &str,
        issued_at: i64,
        expires_at: i64,
    ) -> StoreResult<()>;
    async fn cloud_token(&self, project: &ProjectId) -> StoreResult<Option<CloudToken>>;
    /// Records a used `X-Ca-Nonce` until `expires_at`: true the first time; false while
    /// it is recorded and unexpired at `now`. One statement, so nodes sharing the
    /// registry never both get true for one nonce.
    async fn use_nonce(
        &self,
        project: &ProjectId,
        nonce: &str,
        now: i64,
        expires_at: i64,
    ) -> StoreResult<bool>;
    /// Forgets nonces expired at `now`; how many.
    async fn purge_nonces(&self, now: i64) -> StoreResult<u64>;
    /// Reported values of one property (kept: the newest [`PROPERTY_HISTORY_MAX`]; batched
    /// reports trim it every few batches, so it may briefly hold a little more).
    async fn property_timeline(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
        q: &TimelineQuery,
    ) -> StoreResult<Vec<PropertyValue>>;

    // Declared consumer groups (issue 12). The platform's own groups (the default group
    // named after the appKey, the internal `_legacy_http`) are declared by
    // `import_project` and `apply_sync` in the same transaction as the change that needs
    // them; `apply_sync` also removes `_legacy_http` once legacy push is retired.
    /// Declares a user group (not internal, backoff retry). `Conflict` if it exists;
    /// `Limit` once the project has `max_groups` groups.
    async fn declare_group(
        &self,
        project: &ProjectId,
        name: &ConsumerGroup,
        filter: &GroupFilterDoc,
        max_groups: usize,
        actor: Actor<'_>,
    ) -> StoreResult<DeclaredGroup>;
    /// The group, declared with `filter` if it was not: a consumer connecting with an
    /// undeclared group name. Returns whether it was declared now.
    async fn ensure_group(
        &self,
        project: &ProjectId,
        name: &ConsumerGroup,
        filter: &GroupFilterDoc,
        max_groups: usize,
        actor: Actor<'_>,
    ) -> StoreResult<(DeclaredGroup, bool)>;
    /// Removes a declaration; `NotFound` if there is none.
    async fn delete_group(
        &self,
        project: &ProjectId,
        name: &ConsumerGroup,
        actor: Actor<'_>,
    ) -> StoreResult<DeclaredGroup>;
    /// The project's groups by name.
    async fn list_groups(&self, project: &ProjectId) -> StoreResult<Vec<DeclaredGroup>>;
    /// Every declared group (reconciling the backlog at start).
    async fn all_groups(&self) -> StoreResult<Vec<DeclaredGroup>>;

    // Group alert thresholds (issue 14). They live and die with their group.
    /// Replaces a group's thresholds (every one `None`: the group no longer alerts);
    /// audited as `consumer_group.alerts` when they change. `NotFound` for an undeclared
    /// group, `Invalid` (naming the threshold) for a value above [`AlertThresholds::MAX`].
    async fn set_group_alerts(
        &self,
        project: &ProjectId,
        name: &ConsumerGroup,
        thresholds: &AlertThresholds,
        actor: Actor<'_>,
    ) -> StoreResult<GroupAlerts>;
    /// A declared group's thresholds (none set if they never were); `NotFound` for an
    /// undeclared group.
    async fn group_alerts(
        &self,
        project: &ProjectId,
        name: &ConsumerGroup,
    ) -> StoreResult<GroupAlerts>;
    /// The project's groups that have at least one threshold, by name.
    async fn project_alerts(&self, project: &ProjectId) -> StoreResult<Vec<GroupAlerts>>;
    /// Every group that has at least one threshold (the alert evaluator's round).
    async fn all_group_alerts(&self) -> StoreResult<Vec<GroupAlerts>>;

    // State shared between nodes (issue 13)
    /// Stores a new console session. Expired sessions are purged first; beyond
    /// `max_sessions` live ones, those expiring soonest make room.
    async fn create_console_session(
        &self,
        session: &ConsoleSession,
        now: i64,
        max_sessions: usize,
    ) -> StoreResult<()>;
    /// The session with this token hash, if it is unexpired at `now`.
    async fn console_session(
        &self,
        token_hash: &str,
        now: i64,
    ) -> StoreResult<Option<ConsoleSession>>;
    /// Ends a session; whether there was one.
    async fn delete_console_session(&self, token_hash: &str) -> StoreResult<bool>;
    /// The failed sign-in counters of these keys (absent keys have none).
    async fn auth_failures(&self, keys: &[&str]) -> StoreResult<Vec<(String, AuthFailures)>>;
    /// Counts one failure of `key`: `next` gets the current counter (if any) and returns
    /// the new one, in one transaction that other nodes wait for (no lost updates).
    /// Counters forgotten at `now` are purged now and then.
    async fn note_auth_failure(
        &self,
        key: &str,
        now: i64,
        next: &(dyn Fn(Option<AuthFailures>) -> AuthFailures + Send + Sync),
    ) -> StoreResult<AuthFailures>;
    /// Forgets `key`'s failures.
    async fn clear_auth_failures(&self, key: &str) -> StoreResult<()>;
    /// Changes committed by any node sharing this registry (PostgreSQL `LISTEN/NOTIFY`);
    /// `None` where the registry has a single node (SQLite). Receiving one also bumps
    /// [`Registry::change_epoch`], so this node's caches reload. A lagging receiver
    /// misses changes (it is told so by `RecvError::Lagged`): re-check everything then.
    fn subscribe_changes(&self) -> Option<tokio::sync::broadcast::Receiver<RegistryChange>> {
        None
    }

    // Audit
    /// Records an operator action that changes no registry row (e.g. a backlog seek or
    /// purge) in the project's audit log.
    async fn record_audit(
        &self,
        project: &ProjectId,
        actor: &str,
        action: &str,
        details: serde_json::Value,
    ) -> StoreResult<()>;

    async fn audit_log(
        &self,
        project: &ProjectId,
        page: PageRequest,
    ) -> StoreResult<Page<AuditEntry>>;

    /// A counter bumped after every committed change that can alter what ingest looks
    /// up per report (sync settings, product switches, device enable/disable/delete,
    /// project delete). Caches compare it to know their entries are still current.
    fn change_epoch(&self) -> u64 {
        0
    }

    // Outbox
    /// The oldest outbox messages, at most `limit`.
    async fn outbox_peek(&self, limit: u32) -> StoreResult<Vec<OutboxEntry>>;
    /// Removes drained messages once the backlog holds them durably.
    async fn outbox_remove(&self, seqs: &[i64]) -> StoreResult<()>;
}
