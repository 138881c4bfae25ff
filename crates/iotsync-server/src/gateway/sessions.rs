//! The table of connected devices: one session per device (a new CONNECT takes over),
//! the way the cloud API reaches a device (downlink), and the requests waiting for a
//! device's `_reply`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use iotsync_core::{DeviceName, IotId, ProductKey};

use super::cluster::ClusterBus;

/// A publish the gateway writes to a device (QoS 0).
#[derive(Debug, Clone)]
pub struct DownlinkPublish {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// A device's answer to a downlink request.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReply {
    pub code: i64,
    pub message: String,
    pub data: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DownlinkError {
    #[error("the device is offline")]
    Offline,
    #[error("the device did not reply in time")]
    Timeout,
}

pub(crate) type DeviceKey = (ProductKey, DeviceName);

/// What the table holds for a live session.
pub(crate) struct SessionEntry {
    pub conn_id: u64,
    pub iot_id: IotId,
    pub downlink: mpsc::Sender<DownlinkPublish>,
    /// Told to stop when another connection takes over.
    pub kick: Arc<Notify>,
    /// Turns true once the session's loop has stopped.
    pub finished: watch::Receiver<bool>,
}

impl SessionEntry {
    /// Tells the session to stop for a take-over and waits (≤ `TAKEOVER_WAIT`) until its
    /// loop has stopped, so everything it PUBACKed is durable first.
    pub(crate) async fn end_and_wait(&self) {
        self.kick.notify_one();
        let mut f = self.finished.clone();
        let _ = tokio::time::timeout(TAKEOVER_WAIT, async move {
            let _ = f.wait_for(|done| *done).await;
        })
        .await;
    }
}

/// Stripes of locks that serialize one device's status changes (connect, take-over,
/// disconnect), so the registry sees offline/online in the order they happened.
const STATUS_STRIPES: usize = 64;

pub struct DeviceSessions {
    live: Mutex<HashMap<DeviceKey, SessionEntry>>,
    pending: Mutex<HashMap<(IotId, String), oneshot::Sender<DeviceReply>>>,
    status_locks: Vec<tokio::sync::Mutex<()>>,
    next_conn: AtomicU64,
    /// The other nodes' sessions (a cluster on NATS); `None` on a single node.
    cluster: Option<Arc<ClusterBus>>,
}

/// How long a take-over waits for the session it replaces to stop.
pub(crate) const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

impl Default for DeviceSessions {
    fn default() -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            status_locks: (0..STATUS_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            next_conn: AtomicU64::new(1),
            cluster: None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock leaves plain maps behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DeviceSessions {
    /// The table of a cluster node: devices held by other nodes are reached, and taken
    /// over, through `bus`.
    pub fn with_cluster(bus: Arc<ClusterBus>) -> Self {
        Self {
            cluster: Some(bus),
            ..Self::default()
        }
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<ClusterBus>> {
        self.cluster.as_ref()
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn status_lock(&self, key: &DeviceKey) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.status_locks[(h.finish() as usize) % STATUS_STRIPES]
    }

    /// Installs a session; returns the one it replaced.
    pub(crate) fn install(&self, key: DeviceKey, entry: SessionEntry) -> Option<SessionEntry> {
        lock(&self.live).insert(key, entry)
    }

    /// Removes the session if it is still `conn_id`'s (not taken over).
    pub(crate) fn remove_if(&self, key: &DeviceKey, conn_id: u64) -> bool {
        let mut live = lock(&self.live);
        if live.get(key).is_some_and(|e| e.conn_id == conn_id) {
            live.remove(key);
            true
        } else {
            false
        }
    }

    /// Ends session `conn_id` of the device for a take-over by another node (the same
    /// steps as a local take-over: no offline record here, the new node writes it) and
    /// waits until its loop has stopped. False when that session is no longer here.
    pub(crate) async fn end_for_takeover(&self, key: &DeviceKey, conn_id: u64) -> bool {
        let _status = self.status_lock(key).lock().await;
        let entry = {
            let mut live = lock(&self.live);
            if live.get(key).is_some_and(|e| e.conn_id == conn_id) {
                live.remove(key)
            } else {
                None
            }
        };
        let Some(entry) = entry else {
            return false;
        };
        entry.end_and_wait().await;
        true
    }

    /// Whether session `conn_id` of the device is still the live one here.
    pub(crate) fn holds_locally(&self, key: &DeviceKey, conn_id: u64) -> bool {
        lock(&self.live)
            .get(key)
            .is_some_and(|e| e.conn_id == conn_id)
    }

    /// Whether the device is connected to this node or (in a cluster) to another one.
    pub async fn reachable(&self, pk: &ProductKey, dn: &DeviceName, iot_id: &IotId) -> bool {
        if self.is_online(pk, dn) {
            return true;
        }
        match &self.cluster {
            Some(bus) => bus.holds(iot_id).await,
            None => false,
        }
    }

    /// Connected devices.
    pub fn len(&self) -> usize {
        lock(&self.live).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_online(&self, pk: &ProductKey, dn: &DeviceName) -> bool {
        lock(&self.live).contains_key(&(pk.clone(), dn.clone()))
    }

    /// Publishes `payload` to the device on `topic` and waits up to `timeout` for the
    /// `_reply` carrying `request_id`; through the node that holds the device when that
    /// is another one.
    pub async fn request(
        &self,
        pk: &ProductKey,
        dn: &DeviceName,
        iot_id: &IotId,
        request_id: &str,
        publish: DownlinkPublish,
        timeout: Duration,
    ) -> Result<DeviceReply, DownlinkError> {
        let key = (pk.clone(), dn.clone());
        match (&self.cluster, self.is_online(pk, dn)) {
            (Some(bus), false) => bus.request(iot_id, request_id, publish, timeout).await,
            _ => self.request_local(&key, request_id, publish, timeout).await,
        }
    }

    /// A downlink to a session of this node.
    pub(crate) async fn request_local(
        &self,
        key: &DeviceKey,
        request_id: &str,
        publish: DownlinkPublish,
        timeout: Duration,
    ) -> Result<DeviceReply, DownlinkError> {
        let (iot_id, tx) = {
            let live = lock(&self.live);
            let e = live.get(key).ok_or(DownlinkError::Offline)?;
            (e.iot_id.clone(), e.downlink.clone())
        };
        let key = (iot_id, request_id.to_owned());
        let (reply_tx, reply_rx) = oneshot::channel();
        lock(&self.pending).insert(key.clone(), reply_tx);
        let outcome = async {
            tx.send(publish).await.map_err(|_| DownlinkError::Offline)?;
            match tokio::time::timeout(timeout, reply_rx).await {
                Ok(Ok(r)) => Ok(r),
                // The session ended and dropped the waiter: the device went away.
                Ok(Err(_)) => Err(DownlinkError::Offline),
                Err(_) => Err(DownlinkError::Timeout),
            }
        }
        .await;
        lock(&self.pending).remove(&key);
        outcome
    }

    /// Hands a device's `_reply` to the request waiting for it; false when none waits.
    pub(crate) fn complete(&self, iot_id: &IotId, request_id: &str, reply: DeviceReply) -> bool {
        let waiter = lock(&self.pending).remove(&(iot_id.clone(), request_id.to_owned()));
        match waiter {
            Some(w) => w.send(reply).is_ok(),
            None => false,
        }
    }
}

/// The gateway's session table of the server `ctx` belongs to; the cloud API reaches
/// devices through it for downlink.
pub fn sessions(ctx: &crate::context::Context) -> Arc<DeviceSessions> {
    ctx.device_sessions.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DeviceKey {
        ("pk000001".parse().unwrap(), "dev1".parse().unwrap())
    }

    fn entry(conn_id: u64) -> (SessionEntry, mpsc::Receiver<DownlinkPublish>) {
        let (tx, rx) = mpsc::channel(4);
        let (_f, finished) = watch::channel(false);
        (
            SessionEntry {
                conn_id,
                iot_id: "iot1".parse().unwrap(),
                downlink: tx,
                kick: Arc::new(Notify::new()),
                finished,
            },
            rx,
        )
    }

    #[test]
    fn only_the_current_session_removes_the_entry() {
        let s = DeviceSessions::default();
        let (a, _ra) = entry(1);
        let (b, _rb) = entry(2);
        assert!(s.install(key(), a).is_none());
        let old = s
            .install(key(), b)
            .expect("take-over returns the old session");
        assert_eq!(old.conn_id, 1);
        assert!(
            !s.remove_if(&key(), 1),
            "the replaced session must not remove"
        );
        assert!(s.remove_if(&key(), 2));
        assert!(s.is_empty());
    }

    #[tokio::test]
    async fn request_gets_the_matching_reply_or_times_out() {
        let s = Arc::new(DeviceSessions::default());
        let (a, mut rx) = entry(1);
        s.install(key(), a);
        let s2 = s.clone();
        let responder = tokio::spawn(async move {
            let p = rx.recv().await.unwrap();
            assert_eq!(p.topic, "t");
            assert!(!s2.complete(&"iot1".parse().unwrap(), "other", reply()));
            assert!(s2.complete(&"iot1".parse().unwrap(), "42", reply()));
            rx
        });
        let (pk, dn) = key();
        let iot: IotId = "iot1".parse().unwrap();
        let r = s
            .request(&pk, &dn, &iot, "42", publish(), Duration::from_secs(5))
            .await;
        assert_eq!(r, Ok(reply()));
        let _rx = responder.await.unwrap();
        let r = s
            .request(&pk, &dn, &iot, "43", publish(), Duration::from_millis(20))
            .await;
        assert_eq!(r, Err(DownlinkError::Timeout));
        let other: DeviceName = "dev2".parse().unwrap();
        let r = s
            .request(&pk, &other, &iot, "44", publish(), Duration::from_secs(1))
            .await;
        assert_eq!(r, Err(DownlinkError::Offline));
    }

    fn reply() -> DeviceReply {
        DeviceReply {
            code: 200,
            message: "success".into(),
            data: serde_json::json!({}),
        }
    }

    fn publish() -> DownlinkPublish {
        DownlinkPublish {
            topic: "t".into(),
            payload: b"{}".to_vec(),
        }
    }
}
