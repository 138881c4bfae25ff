//! Errors of the backlog layer.

use std::io;
use std::path::PathBuf;

use iotsync_core::{ConsumerGroup, MessageId, ProjectId};

/// Everything a backlog call can fail with. Variants carry the facts a caller needs to
/// map them (e.g. to a REST status) without parsing messages.
#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    /// The disk (or quota) is full: nothing of this call was stored. Already stored
    /// messages are intact; appends succeed again once space returns.
    #[error("disk full while writing {path}: {detail}")]
    DiskFull { path: PathBuf, detail: String },
    /// Any other I/O failure, with the operation and file it happened on.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unknown project {project}")]
    UnknownProject { project: ProjectId },
    #[error("unknown consumer group {group} in project {project}")]
    UnknownGroup {
        project: ProjectId,
        group: ConsumerGroup,
    },
    #[error("project {project} already has the maximum of {max} consumer groups")]
    TooManyGroups { project: ProjectId, max: usize },
    /// The lease is not (or no longer) held: already acked, expired, or its group was
    /// deleted. Benign for a channel: the message is either done or will be redelivered.
    #[error("no lease for message seq {seq}")]
    UnknownLease { seq: u64 },
    #[error("no dead letter {message_id} in project {project}")]
    DeadLetterNotFound {
        project: ProjectId,
        message_id: MessageId,
    },
    #[error("message {message_id} is {size} bytes, more than the {max} allowed")]
    MessageTooLarge {
        message_id: MessageId,
        size: usize,
        max: usize,
    },
    #[error("message {message_id} refused: {reason}")]
    InvalidMessage {
        message_id: MessageId,
        reason: String,
    },
    /// A seek to a time that has not come yet.
    #[error("cannot seek to {from_ms}: it is later than now ({now_ms}, ms since the epoch)")]
    SeekInFuture { from_ms: i64, now_ms: i64 },
    /// The NATS JetStream engine could not do `op` (server unreachable, refused, timed
    /// out). Nothing of a failed `append` may be assumed stored; retry it (messageIds
    /// make that safe within the duplicate window).
    #[error("NATS JetStream: {op}: {detail}")]
    Nats { op: &'static str, detail: String },
    /// This engine does not implement the operation (yet).
    #[error("the backlog engine does not support {op}")]
    Unsupported { op: &'static str },
    /// The engine was closed (or its writer stopped).
    #[error("backlog is closed")]
    Closed,
}

impl BacklogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if is_disk_full(&source) {
            BacklogError::DiskFull {
                path,
                detail: source.to_string(),
            }
        } else {
            BacklogError::Io { op, path, source }
        }
    }
}

pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// A commit failure as handed to every waiter of a batch (I/O errors are not `Clone`).
#[derive(Debug, Clone)]
pub(crate) struct CommitError {
    pub op: &'static str,
    pub path: PathBuf,
    pub kind: io::ErrorKind,
    pub message: String,
}

impl CommitError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, e: &io::Error) -> Self {
        Self {
            op,
            path: path.into(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl From<CommitError> for BacklogError {
    fn from(c: CommitError) -> Self {
        BacklogError::io(c.op, c.path, io::Error::new(c.kind, c.message))
    }
}
