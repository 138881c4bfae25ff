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
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "not_found",
            StoreError::Conflict { .. } => "conflict",
            StoreError::Invalid { .. } => "invalid_argument",
            StoreError::Rule(r) => r.code(),
            StoreError::Db(_) | StoreError::Migrate(_) | StoreError::Corrupt(_) => "internal",
        }
    }

    pub fn field(&self) -> Option<&'static str> {
        match self {
            StoreError::Conflict { field, .. } | StoreError::Invalid { field, .. } => Some(field),
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
