//! iotsync-core: the domain without I/O. Identifiers, the sync message envelope and its
//! topics and payloads (SPEC §4), the data-sync rules (SPEC §3), the cloud API catalogue
//! (SPEC §9) and every signing scheme (SPEC §6–§10).

pub mod api_catalog;
pub mod clock;
pub mod group;
pub mod ids;
pub mod message;
pub mod payload;
pub mod sign;
pub mod subscription;
pub mod sync_rules;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use group::{GroupFilter, GroupFilterDoc};
pub use ids::*;
pub use message::*;
