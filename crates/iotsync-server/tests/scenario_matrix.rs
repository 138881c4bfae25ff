//! The delivery scenarios of SPEC §5 written once against a small channel-neutral
//! consumer ([`Channel`], [`Connection`], [`Received`]) and run over every channel that
//! has them: AMQP 1.0 and HTTP/2 through the Rust SDK's real clients, and the legacy
//! webhook (Python's `http.server` receiving the pushes, the test deciding each answer)
//! where it applies. `matrix!` makes one `#[tokio::test]` per `scenario × channel`,
//! named `scenario::channel` (e.g. `release_redelivers_after_the_backoff::http2`).
//!
//! Where a scenario does not apply: HTTP/2 has no reject (a commit failure is "not now",
//! SPEC §7); the webhook is one pusher per project with no connection, credit or group
//! of its own to share (SPEC §8), and it gives up after 16 pushes rather than on a
//! reject (`webhook_legacy_push.rs` covers that).
//!
//! Time: the server's clock is manual, so "redelivered after the backoff" is shown by
//! advancing it; the real time only bounds how long a test waits for what must happen.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Mutex;

use iotsync_core::message::Envelope;
use iotsync_sdk::amqp::{AmqpConsumer, AmqpMessage, MessageStream};
use iotsync_sdk::backoff::Backoff;
use iotsync_sdk::http2::{Http2Consumer, Http2Message, Http2MessageStream};
use iotsync_server::channels::webhook::{LEGACY_GROUP, LEGACY_SCHEDULE_SECS};
use iotsync_server::delivery::ChannelKind;
use iotsync_testkit::peers::interactive_receiver;
use iotsync_testkit::{PeerProc, Project, ProjectSpec, TestServer, WAIT};

/// How long "nothing more arrives" is watched (a bound, not a timing assertion).
const QUIET: Duration = Duration::from_millis(500);

/// How a test consumer connects.
#[derive(Clone, Copy)]
struct Opts {
    /// `None`: the project's default group (named after the appKey).
    group: Option<&'static str>,
    credit: u32,
    client_id: &'static str,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            group: None,
            credit: 16,
            client_id: "matrix",
        }
    }
}

/// One delivery channel as the scenarios see it.
trait Channel: Default {
    type Conn: Connection;
    /// How far the manual clock must move for a first retry to fall due.
    const FIRST_RETRY_MS: i64;
    /// A project whose messages go to this channel, with `devices` devices and an
    /// empty backlog.
    async fn project(&mut self, env: &TestServer, name: &str, devices: usize) -> Project;
    /// Connects a consumer of `p` (returns once the platform has attached it).
    async fn connect(&mut self, env: &TestServer, p: &Project, o: Opts) -> Self::Conn;
    /// The `i`-th message for this channel: its key (see [`Received::key`]).
    async fn produce(&self, env: &TestServer, p: &Project, i: usize) -> String;
    /// The group whose figures count this channel's deliveries.
    fn group(&self, p: &Project) -> String {
        p.app_key.clone()
    }
}

trait Connection {
    type Msg: Received;
    /// A message if one arrives within `d`.
    async fn within(&mut self, d: Duration) -> Option<Self::Msg>;
    /// The next message (fails the test after [`WAIT`]).
    async fn next(&mut self) -> Self::Msg {
        match self.within(WAIT).await {
            Some(m) => m,
            None => panic!("no message within {WAIT:?}"),
        }
    }
}

/// A received message and the verdicts every channel has.
trait Received {
    /// What identifies the message end to end (what [`Channel::produce`] returned).
    fn key(&self) -> String;
    /// Asserts the message is one of `p`'s, in the form its channel promises.
    fn assert_from(&self, p: &Project);
    /// Done: the platform forgets it.
    async fn ack(self);
    /// Not now: the platform retries it after a backoff.
    async fn release(self);
}

/// Channels with a "never": the message goes to the dead-letter list.
trait Rejects: Received {
    async fn reject(self);
}

// ---- AMQP 1.0 and HTTP/2: SPEC §4 envelopes of property reports -----------------------

/// A project with `devices` devices; sync on `method` once they exist.
async fn device_project(env: &TestServer, name: &str, devices: usize, method: &str) -> Project {
    let names: Vec<String> = (1..=devices).map(|i| format!("lamp{i:04}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    env.create_project(&ProjectSpec::new(name).devices(&names).sync_after(method))
        .await
}

/// A property report of device `i % n`; its messageId.
async fn report(env: &TestServer, p: &Project, i: usize) -> String {
    let r = env
        .report_on(p, i % p.devices.len(), json!({ "Counter": i }))
        .await;
    r["messageId"].as_str().unwrap().to_owned()
}

fn assert_envelope_from(e: &Envelope, p: &Project) {
    let pl: Value = serde_json::from_slice(&e.payload).unwrap();
    let dn = pl["deviceName"].as_str().unwrap_or_default();
    assert_eq!(
        e.topic,
        format!("/{}/{dn}/thing/event/property/post", p.pk),
        "{pl}"
    );
    assert_eq!(pl["productKey"], p.pk.as_str(), "{pl}");
    assert!(
        p.devices
            .iter()
            .any(|d| pl["iotId"] == d.iot.as_str() && d.dn == dn),
        "not a device of the project: {pl}"
    );
    assert!(pl["items"]["Counter"]["value"].is_number(), "{pl}");
}

#[derive(Default)]
struct Amqp;

impl Channel for Amqp {
    type Conn = MessageStream;
    // 1 s ± 20 %.
    const FIRST_RETRY_MS: i64 = 1_300;
    async fn project(&mut self, env: &TestServer, name: &str, devices: usize) -> Project {
        device_project(env, name, devices, "amqp").await
    }
    async fn connect(&mut self, env: &TestServer, p: &Project, o: Opts) -> MessageStream {
        let mut b = AmqpConsumer::builder()
            .endpoint(env.amqp_url())
            .app_key(p.app_key.clone())
            .app_secret(p.app_secret.clone())
            .client_id(o.client_id)
            .credit(o.credit)
            .clock(Arc::new(env.clock.clone()));
        if let Some(g) = o.group {
            b = b.group(g);
        }
        // One connection: it is open and its receiver attached when this returns.
        b.build().unwrap().connect().await.unwrap()
    }
    async fn produce(&self, env: &TestServer, p: &Project, i: usize) -> String {
        report(env, p, i).await
    }
}

impl Connection for MessageStream {
    type Msg = AmqpMessage;
    async fn within(&mut self, d: Duration) -> Option<AmqpMessage> {
        match tokio::time::timeout(d, MessageStream::next(self)).await {
            Ok(Some(Ok(m))) => Some(m),
            Ok(Some(Err(e))) => panic!("the AMQP connection ended: {e}"),
            Ok(None) => panic!("the AMQP connection ended"),
            Err(_) => None,
        }
    }
}

impl Received for AmqpMessage {
    fn key(&self) -> String {
        self.envelope.message_id.to_string()
    }
    fn assert_from(&self, p: &Project) {
        assert_envelope_from(&self.envelope, p);
    }
    async fn ack(self) {
        AmqpMessage::ack(self).await.unwrap();
    }
    async fn release(self) {
        AmqpMessage::release(self).await.unwrap();
    }
}

impl Rejects for AmqpMessage {
    async fn reject(self) {
        AmqpMessage::reject(self).await.unwrap();
    }
}

#[derive(Default)]
struct Http2;

impl Channel for Http2 {
    type Conn = Http2MessageStream;
    const FIRST_RETRY_MS: i64 = 1_300;
    async fn project(&mut self, env: &TestServer, name: &str, devices: usize) -> Project {
        device_project(env, name, devices, "http2").await
    }
    async fn connect(&mut self, env: &TestServer, p: &Project, o: Opts) -> Http2MessageStream {
        let mut b = Http2Consumer::builder()
            .endpoint(env.http2_url())
            .app_key(&p.app_key)
            .app_secret(&p.app_secret)
            .client_id(o.client_id)
            .credit(o.credit)
            .backoff(Backoff::new(
                Duration::from_millis(50),
                Duration::from_millis(200),
            ));
        if let Some(g) = o.group {
            b = b.group(g);
        }
        // The SDK's stream connects in the background: wait until the platform has it.
        let group = o.group.unwrap_or(&p.app_key);
        let before = env.consumer_count(&p.pid, group);
        let s = b.build().unwrap().stream();
        env.wait_consumers(&p.pid, group, before + 1).await;
        s
    }
    async fn produce(&self, env: &TestServer, p: &Project, i: usize) -> String {
        report(env, p, i).await
    }
}

impl Connection for Http2MessageStream {
    type Msg = Http2Message;
    async fn within(&mut self, d: Duration) -> Option<Http2Message> {
        match tokio::time::timeout(d, Http2MessageStream::next(self)).await {
            Ok(Some(Ok(m))) => Some(m),
            // The stream would reconnect by itself; the scenarios never have it closed.
            Ok(Some(Err(e))) => panic!("the HTTP/2 stream ended: {e}"),
            Ok(None) | Err(_) => None,
        }
    }
}

impl Received for Http2Message {
    fn key(&self) -> String {
        self.envelope.message_id.to_string()
    }
    fn assert_from(&self, p: &Project) {
        assert_envelope_from(&self.envelope, p);
    }
    async fn ack(self) {
        Http2Message::ack(self).await.unwrap();
    }
    async fn release(self) {
        self.fail().await.unwrap();
    }
}

// ---- the legacy webhook: signed form pushes of user data ------------------------------

/// Imported projects pushing user data to a receiver each; the receiver of a project is
/// started with it (its URL is part of the import) and handed out by `connect`.
#[derive(Default)]
struct Webhook {
    receivers: HashMap<String, PeerProc>,
    imported: u32,
}

impl Channel for Webhook {
    type Conn = Receiver;
    const FIRST_RETRY_MS: i64 = LEGACY_SCHEDULE_SECS[0] as i64 * 1_000;
    async fn project(&mut self, env: &TestServer, _name: &str, _devices: usize) -> Project {
        self.imported += 1;
        let app_key = format!("{}", 31_415_900 + self.imported);
        let secret = "imported-secret-1";
        let (rx, url) = interactive_receiver(&app_key, secret).await;
        let p = env
            .import(&app_key, secret, "none", "legacy_http", Some(&url))
            .await;
        self.receivers.insert(p.pid.clone(), rx);
        p
    }
    async fn connect(&mut self, env: &TestServer, p: &Project, _: Opts) -> Receiver {
        let peer = self
            .receivers
            .remove(&p.pid)
            .expect("one receiver a project");
        env.wait_consumer(&p.pid, ChannelKind::Webhook).await;
        Receiver(Arc::new(Mutex::new(peer)))
    }
    async fn produce(&self, env: &TestServer, p: &Project, i: usize) -> String {
        env.add_user(&p.pid, &format!("user{i}")).await
    }
    fn group(&self, _: &Project) -> String {
        LEGACY_GROUP.to_owned()
    }
}

struct Receiver(Arc<Mutex<PeerProc>>);

/// One push, held until the test answers it.
struct Push {
    line: Value,
    receiver: Arc<Mutex<PeerProc>>,
}

impl Push {
    async fn answer(self, status: u16) {
        self.receiver.lock().await.send(&json!(status));
    }
    fn message(&self) -> Value {
        serde_json::from_str(self.line["message"].as_str().unwrap()).unwrap()
    }
}

impl Connection for Receiver {
    type Msg = Push;
    async fn next(&mut self) -> Push {
        let line = self.0.lock().await.next_event("push").await;
        Push {
            line,
            receiver: self.0.clone(),
        }
    }
    async fn within(&mut self, d: Duration) -> Option<Push> {
        let line = self.0.lock().await.line_within(d).await?;
        assert_eq!(line["event"], "push", "{line}");
        Some(Push {
            line,
            receiver: self.0.clone(),
        })
    }
}

impl Received for Push {
    fn key(&self) -> String {
        self.message()["identityId"].as_str().unwrap().to_owned()
    }
    fn assert_from(&self, p: &Project) {
        let l = &self.line;
        assert_eq!(l["signOk"], true, "signed with the project's secret: {l}");
        assert_eq!(l["appKey"], p.app_key.as_str(), "{l}");
        assert_eq!(l["msgCode"], "account.create", "{l}");
        assert_eq!(self.message()["action"], "create", "{l}");
    }
    async fn ack(self) {
        self.answer(200).await;
    }
    async fn release(self) {
        self.answer(500).await;
    }
}

// ---- shared steps ---------------------------------------------------------------------

/// `n` messages for channel `C`; their keys.
async fn produce<C: Channel>(ch: &C, env: &TestServer, p: &Project, n: usize) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for i in 0..n {
        keys.insert(ch.produce(env, p, i).await);
    }
    keys
}

async fn assert_quiet(c: &mut impl Connection) {
    if let Some(m) = c.within(QUIET).await {
        panic!("unexpected message {}", m.key());
    }
}

/// Acknowledges messages until the keys `want` were all received; each exactly once.
async fn ack_until_all(c: &mut impl Connection, want: &BTreeSet<String>) {
    let mut got = BTreeSet::new();
    while got.len() < want.len() {
        let m = c.next().await;
        assert!(got.insert(m.key()), "{} delivered twice", m.key());
        m.ack().await;
    }
    assert_eq!(&got, want);
}

// ---- the scenarios --------------------------------------------------------------------

/// A message arrives, in its channel's form, identified as the one produced.
async fn delivers_a_message_in_its_channels_form<C: Channel>() {
    let env = TestServer::start().await;
    let mut ch = C::default();
    let p = ch.project(&env, "Home", 1).await;
    let mut c = ch.connect(&env, &p, Opts::default()).await;
    let key = ch.produce(&env, &p, 0).await;
    let m = c.next().await;
    assert_eq!(m.key(), key);
    m.assert_from(&p);
    m.ack().await;
    env.stop().await;
}

/// An acknowledged message is done: counted as acked, never delivered again, not even
/// to a new connection of the group.
async fn an_acknowledged_message_is_never_delivered_again<C: Channel>() {
    let env = TestServer::start().await;
    let mut ch = C::default();
    let p = ch.project(&env, "Home", 1).await;
    let mut c = ch.connect(&env, &p, Opts::default()).await;
    produce(&ch, &env, &p, 1).await;
    c.next().await.ack().await;
    let group = ch.group(&p);
    env.wait_stat(&p.pid, &group, "ackedTotal", 1).await;
    env.wait_stat(&p.pid, &group, "stacked", 0).await;
    drop(c);
    env.wait_consumers(&p.pid, &group, 0).await;
    let mut again = ch.connect(&env, &p, Opts::default()).await;
    assert_quiet(&mut again).await;
    let st = env.group_stats(&p.pid, &group).await;
    assert_eq!(st["redeliveredTotal"], 0, "{st}");
    env.stop().await;
}

/// A released message waits out the retry backoff on the manual clock: not redelivered
/// while the clock stands, redelivered (the same message) once it has moved past it.
async fn release_redelivers_after_the_backoff<C: Channel>() {
    let env = TestServer::start().await;
    let mut ch = C::default();
    let p = ch.project(&env, "Home", 1).await;
    let mut c = ch.connect(&env, &p, Opts::default()).await;
    let key = ch.produce(&env, &p, 0).await;
    let m = c.next().await;
    assert_eq!(m.key(), key);
    m.release().await;
    let group = ch.group(&p);
    env.wait_stat(&p.pid, &group, "retryWaiting", 1).await;
    assert_quiet(&mut c).await;
    env.clock.advance_ms(C::FIRST_RETRY_MS);
    let again = c.next().await;
    assert_eq!(again.key(), key);
    again.assert_from(&p);
    again.ack().await;
    env.wait_stat(&p.pid, &group, "stacked", 0).await;
    let st = env.group_stats(&p.pid, &group).await;
    assert_eq!(st["redeliveredTotal"], 1, "{st}");
    env.stop().await;
}

/// A rejected message goes to the project's dead-letter list, not back to the group.
async fn reject_moves_the_message_to_the_dead_letters<C: Channel>()
where
    <C::Conn as Connection>::Msg: Rejects,
{
    let env = TestServer::start().await;
    let mut ch = C::default();
    let p = ch.project(&env, "Home", 1).await;
    let mut c = ch.connect(&env, &p, Opts::default()).await;
    let key = ch.produce(&env, &p, 0).await;
    let m = c.next().await;
    assert_eq!(m.key(), key);
    m.reject().await;
    let mut dead = Vec::new();
    iotsync_testkit::wait_for("the dead letter", async || {
        dead = env.dead_letters(&p.pid).await;
        !dead.is_empty()
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["messageId"], key.as_str());
    assert_eq!(dead[0]["group"], ch.group(&p).as_str());
    env.clock.advance_ms(10 * C::FIRST_RETRY_MS);
    assert_quiet(&mut c).await;
    env.stop().await;
}

/// Deliveries of a connection that drops are at once the next consumer's: no backoff
/// (the clock stands), no ack time-out.
async fn a_dropped_connections_deliveries_go_to_the_next_consumer<C: Channel>() {
    let env = TestServer::start().await;
    let mut ch = C::default();
    let p = ch.project(&env, "Home", 3).await;
    let mut a = ch.connect(&env, &p, Opts::default()).await;
    let want = produce(&ch, &env, &p, 3).await;
    let mut held = BTreeSet::new();
    for _ in 0..3 {
        held.insert(a.next().await.key());
    }
    assert_eq!(held, want);
    drop(a);
    env.wait_consumers(&p.pid, &ch.group(&p), 0).await;
    let mut b = ch.connect(&env, &p, Opts::default()).await;
    ack_until_all(&mut b, &want).await;
    assert_quiet(&mut b).await;
    env.stop().await;
}

/// No more messages are on the wire than the consumer's credit: a full window stays the
/// window until something is settled; settling lets the rest through.
async fn never_more_in_flight_than_the_credit<C: Channel>() {
    const CREDIT: usize = 3;
    let env = TestServer::start().await;
    let mut ch = C::default();
    // One message per device is in flight at a time: more devices than the credit, so
    // the credit is the bound under test.
    let p = ch.project(&env, "Home", 8).await;
    let want = produce(&ch, &env, &p, 8).await;
    let o = Opts {
        credit: CREDIT as u32,
        ..Opts::default()
    };
    let mut c = ch.connect(&env, &p, o).await;
    let mut window = Vec::new();
    for _ in 0..CREDIT {
        window.push(c.next().await);
    }
    // (The backlog's `inFlight` figure may be higher: the AMQP pump leases a few ahead
    // of the credit, ADR 0003. What reaches the consumer is what is bounded.)
    assert_quiet(&mut c).await;
    let st = env.group_stats(&p.pid, &ch.group(&p)).await;
    assert_eq!(st["stacked"], want.len(), "nothing was settled yet: {st}");
    assert_eq!(st["ackedTotal"], 0, "{st}");
    // Settled, the window moves on (how far at once is the client's credit policy).
    let mut got = BTreeSet::new();
    for m in window {
        got.insert(m.key());
        m.ack().await;
    }
    while got.len() < want.len() {
        let m = c.next().await;
        assert!(got.insert(m.key()), "{} delivered twice", m.key());
        m.ack().await;
    }
    assert_eq!(got, want);
    env.stop().await;
}

/// Two consumers of one group share its messages: each message to exactly one of them,
/// both get some.
async fn two_consumers_of_one_group_share<C: Channel>() {
    let env = TestServer::start().await;
    let mut ch = C::default();
    let p = ch.project(&env, "Home", 3).await;
    let o = |client_id| Opts {
        group: Some("analytics"),
        client_id,
        ..Opts::default()
    };
    let mut a = ch.connect(&env, &p, o("a")).await;
    let mut b = ch.connect(&env, &p, o("b")).await;
    let want = produce(&ch, &env, &p, 12).await;
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + WAIT;
    while got_a.len() + got_b.len() < want.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} + {} of {}",
            got_a.len(),
            got_b.len(),
            want.len()
        );
        tokio::select! {
            Some(m) = a.within(QUIET) => { got_a.push(m.key()); m.ack().await; }
            Some(m) = b.within(QUIET) => { got_b.push(m.key()); m.ack().await; }
            else => {}
        }
    }
    let all: HashSet<&String> = got_a.iter().chain(got_b.iter()).collect();
    assert_eq!(all.len(), want.len(), "a message went to both consumers");
    assert_eq!(all, want.iter().collect::<HashSet<_>>());
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both consumers got a share: {} / {}",
        got_a.len(),
        got_b.len()
    );
    assert_quiet(&mut a).await;
    assert_quiet(&mut b).await;
    env.stop().await;
}

/// Two groups each get every message.
async fn two_groups_each_get_every_message<C: Channel>() {
    let env = TestServer::start().await;
    let mut ch = C::default();
    let p = ch.project(&env, "Home", 3).await;
    let group = |g, client_id| Opts {
        group: Some(g),
        client_id,
        ..Opts::default()
    };
    let mut billing = ch.connect(&env, &p, group("billing", "b")).await;
    let mut analytics = ch.connect(&env, &p, group("analytics", "a")).await;
    let want = produce(&ch, &env, &p, 9).await;
    ack_until_all(&mut billing, &want).await;
    ack_until_all(&mut analytics, &want).await;
    assert_quiet(&mut billing).await;
    assert_quiet(&mut analytics).await;
    env.stop().await;
}

/// A project's consumer gets its own project's messages only.
async fn a_consumer_sees_its_own_projects_messages_only<C: Channel>() {
    let env = TestServer::start().await;
    let mut ch = C::default();
    let a = ch.project(&env, "A", 1).await;
    let b = ch.project(&env, "B", 1).await;
    let mut ca = ch.connect(&env, &a, Opts::default()).await;
    let mut cb = ch.connect(&env, &b, Opts::default()).await;
    let from_a = ch.produce(&env, &a, 0).await;
    let from_b = ch.produce(&env, &b, 1).await;
    let m = ca.next().await;
    assert_eq!(m.key(), from_a);
    m.assert_from(&a);
    m.ack().await;
    let m = cb.next().await;
    assert_eq!(m.key(), from_b);
    m.assert_from(&b);
    m.ack().await;
    assert_quiet(&mut ca).await;
    assert_quiet(&mut cb).await;
    env.stop().await;
}

/// `scenario: [channel => Type, …];` makes `mod scenario { #[tokio::test] fn channel }`.
macro_rules! matrix {
    ($($scenario:ident: [$($channel:ident => $ty:ident),+ $(,)?];)+) => {
        $(
            mod $scenario {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $channel() {
                        super::$scenario::<super::$ty>().await
                    }
                )+
            }
        )+
    };
}

matrix! {
    delivers_a_message_in_its_channels_form: [amqp => Amqp, http2 => Http2, webhook => Webhook];
    an_acknowledged_message_is_never_delivered_again: [amqp => Amqp, http2 => Http2];
    release_redelivers_after_the_backoff: [amqp => Amqp, http2 => Http2, webhook => Webhook];
    reject_moves_the_message_to_the_dead_letters: [amqp => Amqp];
    a_dropped_connections_deliveries_go_to_the_next_consumer: [amqp => Amqp, http2 => Http2];
    never_more_in_flight_than_the_credit: [amqp => Amqp, http2 => Http2];
    two_consumers_of_one_group_share: [amqp => Amqp, http2 => Http2];
    two_groups_each_get_every_message: [amqp => Amqp, http2 => Http2];
    a_consumer_sees_its_own_projects_messages_only: [amqp => Amqp, http2 => Http2, webhook => Webhook];
}
