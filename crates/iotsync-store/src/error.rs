use iotsync_core::sync_rules::RuleError;

/// Errors of the registry. `code()` is the stable API code; database details stay in the
/// server's log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    #[error("{entity} with {field} {value:?} already exists")]
    Conflict {
        entity: &'static str,
        field: &'static str,
        value: String,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A per-project limit was reached (e.g. consumer groups).
    #[error("{field}: {reason}")]
    Limit { field: &'static str, reason: String },
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The database's disk is full (SQLite `SQLITE_FULL`, PostgreSQL `53100`): nothing of
    /// the change was stored; the same call succeeds once space returns.
    #[error("the registry's disk is full: {0}")]
    DiskFull(sqlx::Error),
    #[error("database error: {0}")]
    Db(sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_disk_full(&e) {
            StoreError::DiskFull(e)
        } else {
            StoreError::Db(e)
        }
    }
}

/// SQLite: `SQLITE_FULL` (13; its unix VFS turns `ENOSPC` into it) and
/// `SQLITE_IOERR_SHMSIZE` (4874, the `-shm` file could not grow). PostgreSQL: `53100`.
fn is_disk_full(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("13" | "4874" | "53100")),
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

impl StoreError {
    /// The disk under the registry is full (a retry after space returns succeeds).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull(_))
    }

    pub fn code(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "not_found",
            StoreError::Conflict { .. } => "conflict",
            StoreError::Invalid { .. } => "invalid_argument",
            StoreError::Limit { .. } => "limit_exceeded",
            StoreError::Rule(r) => r.code(),
            StoreError::DiskFull(_) => "store.disk_full",
            StoreError::Db(_) | StoreError::Migrate(_) | StoreError::Corrupt(_) => "internal",
        }
    }

    pub fn field(&self) -> Option<&'static str> {
        match self {
            StoreError::Conflict { field, .. }
            | StoreError::Invalid { field, .. }
            | StoreError::Limit { field, .. } => Some(field),
            StoreError::Rule(r) => r.field(),
            _ => None,
        }
    }

    pub(crate) fn not_found(entity: &'static str, id: impl ToString) -> Self {
        StoreError::NotFound {
            entity,
            id: id.to_string(),
        }
    }
}
