//! Consumers attached in-process through the delivery hub (the handle every channel
//! uses), and a device speaking MQTT through the gateway's own codec.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use iotsync_backlog::Delivery;
use iotsync_core::{Clock, SystemClock};
use iotsync_server::delivery::hub::{AttachRequest, ConsumerLink};
use iotsync_server::delivery::{ChannelKind, Outcome};
use iotsync_server::gateway::codec::{self, Connect, Packet, Publish};

use crate::{Device, Project, TestServer, WAIT};

/// How long "nothing arrives" is watched: not a timing assertion, a message that should
/// not exist must not show up while the server is given a moment.
const QUIET: Duration = Duration::from_millis(500);

impl TestServer {
    /// A consumer of `group` attached through the hub, as the AMQP channel attaches one.
    pub async fn attach(&self, pid: &str, group: &str) -> ConsumerLink {
        self.attach_as(pid, group, ChannelKind::Amqp).await
    }

    /// A consumer of `group` attached through the hub as `channel` would attach it.
    pub async fn attach_as(&self, pid: &str, group: &str, channel: ChannelKind) -> ConsumerLink {
        self.server()
            .hub()
            .attach(AttachRequest {
                project: pid.parse().unwrap(),
                group: group.parse().unwrap(),
                channel,
                remote: "test".into(),
                client_id: "test".into(),
            })
            .await
            .unwrap()
    }

    /// A consumer of the project's default group that acknowledges what it reads.
    pub async fn consumer(&self, p: &Project) -> HubConsumer {
        HubConsumer {
            link: self.attach(&p.pid, &p.app_key).await,
            pending: VecDeque::new(),
        }
    }
}

/// The next `n` deliveries, not settled (fails after [`WAIT`]).
pub async fn take(link: &mut ConsumerLink, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    while got.len() < n {
        let batch = tokio::time::timeout(WAIT, link.next(n - got.len()))
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} deliveries arrived", got.len()))
            .unwrap();
        got.extend(batch);
    }
    got
}

/// The next `n` deliveries, each settled with `outcome`.
pub async fn receive(link: &mut ConsumerLink, n: usize, outcome: Outcome) -> Vec<Delivery> {
    let got = take(link, n).await;
    settle_all(link, &got, outcome).await;
    got
}

pub async fn settle_all(link: &ConsumerLink, ds: &[Delivery], outcome: Outcome) {
    for d in ds {
        link.settle(&d.token, outcome).await.unwrap();
    }
}

pub async fn ack_all(link: &ConsumerLink, ds: &[Delivery]) {
    settle_all(link, ds, Outcome::Accepted).await;
}

/// Asserts nothing is delivered while the server is given a moment.
pub async fn nothing(link: &mut ConsumerLink) {
    if let Ok(r) = tokio::time::timeout(QUIET, link.next(10)).await {
        panic!(
            "unexpected delivery: {:?}",
            r.map(|ds| ds
                .iter()
                .map(|d| d.message.envelope.topic.clone())
                .collect::<Vec<_>>())
        );
    }
}

/// A delivery's payload as JSON.
pub fn payload(d: &Delivery) -> Value {
    serde_json::from_slice(&d.message.envelope.payload).unwrap()
}

/// A consumer of a project's default group; acknowledges what it reads.
pub struct HubConsumer {
    pub link: ConsumerLink,
    /// Read (and acknowledged) but not yet handed out: a batch may run past the match.
    pending: VecDeque<Msg>,
}

pub struct Msg {
    pub topic: String,
    pub message_id: String,
    pub payload: Value,
}

impl Msg {
    fn of(d: &Delivery) -> Self {
        Self {
            topic: d.message.envelope.topic.clone(),
            message_id: d.message.envelope.message_id.to_string(),
            payload: payload(d),
        }
    }
}

impl HubConsumer {
    /// Reads (and acknowledges) messages until one whose topic ends with `suffix`
    /// arrives; returns everything read, in order.
    pub async fn until(&mut self, suffix: &str) -> Vec<Msg> {
        let mut got = Vec::new();
        while let Some(m) = self.pending.pop_front() {
            let done = m.topic.ends_with(suffix);
            got.push(m);
            if done {
                return got;
            }
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let batch = tokio::time::timeout_at(deadline, self.link.next(16))
                .await
                .unwrap_or_else(|_| {
                    let topics: Vec<_> = got.iter().map(|m: &Msg| m.topic.clone()).collect();
                    panic!("no message on *{suffix} within {WAIT:?}; got {topics:?}")
                })
                .unwrap();
            let mut done = false;
            for d in batch {
                self.link.settle(&d.token, Outcome::Accepted).await.unwrap();
                let m = Msg::of(&d);
                if done {
                    self.pending.push_back(m);
                    continue;
                }
                done = m.topic.ends_with(suffix);
                got.push(m);
            }
            if done {
                return got;
            }
        }
    }

    /// Asserts nothing arrives while the server is given a moment.
    pub async fn nothing(&mut self) {
        if !self.pending.is_empty() {
            let topics: Vec<_> = self.pending.iter().map(|m| m.topic.clone()).collect();
            panic!("unexpected messages: {topics:?}");
        }
        nothing(&mut self.link).await;
    }
}

/// A device speaking MQTT 3.1.1 through the gateway's own codec, for tests that need
/// packets no client library sends (or many of them quickly).
pub struct RawDevice {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawDevice {
    /// The bytes of a CONNECT signed for device `dn` of product `pk` with `secret`
    /// (HMAC-SHA256, `timestamp=ts_ms`), for tests that write it themselves.
    pub fn connect_packet(
        pk: &str,
        dn: &str,
        secret: &str,
        ts_ms: i64,
        keep_alive_s: u16,
    ) -> Vec<u8> {
        use iotsync_core::sign::device::{sign_password, DeviceClientId, DeviceUsername};
        let client_id: DeviceClientId =
            format!("raw-{dn}|securemode=3,signmethod=hmacsha256,timestamp={ts_ms}|")
                .parse()
                .unwrap();
        let username: DeviceUsername = format!("{dn}&{pk}").parse().unwrap();
        let mut out = Vec::new();
        codec::encode(
            &Packet::Connect(Box::new(Connect {
                protocol_name: "MQTT".into(),
                protocol_level: 4,
                clean_session: true,
                keep_alive_s,
                client_id: client_id.to_string(),
                will: None,
                username: Some(username.to_string()),
                password: Some(sign_password(&client_id, &username, secret).into_bytes()),
            })),
            &mut out,
        );
        out
    }

    /// Connects and signs in as `dev`; returns the CONNACK return code with the device.
    pub async fn connect(env: &TestServer, pk: &str, dev: &Device) -> (u8, Self) {
        let out = Self::connect_packet(pk, &dev.dn, &dev.secret, SystemClock.now_ms(), 60);
        let s = tokio::net::TcpStream::connect(("127.0.0.1", env.mqtt_port()))
            .await
            .unwrap();
        let mut d = Self { s, buf: Vec::new() };
        d.s.write_all(&out).await.unwrap();
        match d.recv().await {
            Some(Packet::ConnAck { code, .. }) => (code, d),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, p: &Packet) -> bool {
        let mut out = Vec::new();
        codec::encode(p, &mut out);
        self.s.write_all(&out).await.is_ok()
    }

    /// A QoS 1 property post of `items` with packet id `pid`.
    pub async fn post_properties(&mut self, pk: &str, dn: &str, pid: u16, items: Value) -> bool {
        let body = json!({"id": pid.to_string(), "version": "1.0",
            "method": "thing.event.property.post", "params": items});
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: 1,
            retain: false,
            topic: format!("/sys/{pk}/{dn}/thing/event/property/post"),
            packet_id: Some(pid),
            payload: serde_json::to_vec(&body).unwrap(),
        }))
        .await
    }

    /// The next packet from the gateway; `None` once it closed the connection (or after
    /// [`WAIT`] of silence).
    pub async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some((p, used)) = codec::decode(&self.buf, 16 * 1024 * 1024).unwrap() {
                self.buf.drain(..used);
                return Some(p);
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(WAIT, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}
