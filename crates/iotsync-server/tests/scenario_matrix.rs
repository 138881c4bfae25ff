//! The delivery scenarios of SPEC §5 written once against a small channel-neutral
//! consumer ([`Channel`], [`Connection`], [`Received`]) and run over every channel that
//! has them: AMQP 1.0 and HTTP/2, each through the Rust SDK's real client over a real
//! socket. `matrix!` makes one `#[tokio::test]` per `scenario × channel`, named
//! `scenario::channel` (e.g. `release_redelivers_after_the_backoff::http2`).
//!
//! Reject → dead letter runs over AMQP only: HTTP/2 has no reject (a commit failure is
//! "not now", SPEC §7). The legacy webhook is not in the matrix: it carries user data
//! only, and its verdicts are its receiver's HTTP answers on a fixed schedule, not a
//! consumer's choice; `webhook_legacy_push.rs` covers its deliver, retry and give-up.
//!
//! Time: the server's clock is manual, so "redelivered after the backoff" is shown by
//! advancing it; the real time only bounds how long a test waits for what must happen.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use iotsync_core::Envelope;
use iotsync_sdk::amqp::{AmqpConsumer, AmqpMessage, MessageStream};
use iotsync_sdk::backoff::Backoff;
use iotsync_sdk::http2::{Http2Consumer, Http2Message, Http2MessageStream};
use iotsync_testkit::{Project, ProjectSpec, TestServer, WAIT};

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
trait Channel {
    /// The sync method that routes a project's messages to this channel.
    const METHOD: &'static str;
    type Conn: Connection;
    /// Connects a consumer of `p` (returns once the platform has attached it).
    async fn connect(env: &TestServer, p: &Project, o: Opts) -> Self::Conn;
}

trait Connection {
    type Msg: Received;
    /// The next message (fails the test after [`WAIT`]).
    async fn next(&mut self) -> Self::Msg;
    /// A message if one arrives within `d`.
    async fn within(&mut self, d: Duration) -> Option<Self::Msg>;
}

/// A received message and the verdicts every channel has.
trait Received {
    fn envelope(&self) -> &Envelope;
    /// Done: the platform forgets it.
    async fn ack(self);
    /// Not now: the platform retries it after a backoff.
    async fn release(self);
    fn id(&self) -> String {
        self.envelope().message_id.to_string()
    }
}

/// Channels with a "never": the message goes to the dead-letter list.
trait Rejects: Received {
    async fn reject(self);
}

// ---- AMQP 1.0 -------------------------------------------------------------------------

struct Amqp;

impl Channel for Amqp {
    const METHOD: &'static str = "amqp";
    type Conn = MessageStream;
    async fn connect(env: &TestServer, p: &Project, o: Opts) -> MessageStream {
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
}

impl Connection for MessageStream {
    type Msg = AmqpMessage;
    async fn next(&mut self) -> AmqpMessage {
        match tokio::time::timeout(WAIT, MessageStream::next(self)).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => panic!("the AMQP connection ended: {e}"),
            Ok(None) => panic!("the AMQP connection ended"),
            Err(_) => panic!("no AMQP message within {WAIT:?}"),
        }
    }
    async fn within(&mut self, d: Duration) -> Option<AmqpMessage> {
        match tokio::time::timeout(d, MessageStream::next(self)).await {
            Ok(Some(Ok(m))) => Some(m),
            Ok(Some(Err(e))) => panic!("the AMQP connection ended: {e}"),
            Ok(None) | Err(_) => None,
        }
    }
}

impl Received for AmqpMessage {
    fn envelope(&self) -> &Envelope {
        &self.envelope
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

// ---- HTTP/2 (gRPC) --------------------------------------------------------------------

struct Http2;

impl Channel for Http2 {
    const METHOD: &'static str = "http2";
    type Conn = Http2MessageStream;
    async fn connect(env: &TestServer, p: &Project, o: Opts) -> Http2MessageStream {
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
}

impl Connection for Http2MessageStream {
    type Msg = Http2Message;
    async fn next(&mut self) -> Http2Message {
        match self.within(WAIT).await {
            Some(m) => m,
            None => panic!("no HTTP/2 message within {WAIT:?}"),
        }
    }
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
    fn envelope(&self) -> &Envelope {
        &self.envelope
    }
    async fn ack(self) {
        Http2Message::ack(self).await.unwrap();
    }
    async fn release(self) {
        self.fail().await.unwrap();
    }
}

// ---- shared steps ---------------------------------------------------------------------

/// A project on channel `C` with `devices` devices; sync is enabled once they exist, so
/// the backlog starts empty.
async fn project<C: Channel>(env: &TestServer, name: &str, devices: usize) -> Project {
    let names: Vec<String> = (1..=devices).map(|i| format!("lamp{i:04}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    env.create_project(&ProjectSpec::new(name).devices(&names).sync_after(C::METHOD))
        .await
}

/// One property report on each device in turn, `n` in all; their messageIds.
async fn reports(env: &TestServer, p: &Project, n: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let r = env
            .report_on(p, i % p.devices.len(), json!({ "Counter": i }))
            .await;
        ids.insert(r["messageId"].as_str().unwrap().to_owned());
    }
    ids
}

fn payload(m: &impl Received) -> Value {
    serde_json::from_slice(&m.envelope().payload).unwrap()
}

async fn assert_quiet(c: &mut impl Connection) {
    if let Some(m) = c.within(QUIET).await {
        panic!("unexpected message {:?}", m.envelope());
    }
}

/// Acknowledges messages until the ids `want` were all received; each exactly once.
async fn ack_until_all(c: &mut impl Connection, want: &BTreeSet<String>) {
    let mut got = BTreeSet::new();
    while got.len() < want.len() {
        let m = c.next().await;
        assert!(got.insert(m.id()), "{} delivered twice", m.id());
        m.ack().await;
    }
    assert_eq!(&got, want);
}

// ---- the scenarios --------------------------------------------------------------------

/// A property report arrives with its topic, id and SPEC §4 payload.
async fn delivers_a_report_with_its_envelope<C: Channel>() {
    let env = TestServer::start().await;
    let p = project::<C>(&env, "Home", 1).await;
    let mut c = C::connect(&env, &p, Opts::default()).await;
    let r = env.report(&p, json!({"LightSwitch": 1})).await;
    let m = c.next().await;
    assert_eq!(m.id(), r["messageId"].as_str().unwrap());
    assert_eq!(
        m.envelope().topic,
        format!("/{}/{}/thing/event/property/post", p.pk, p.dn())
    );
    assert_eq!(m.envelope().generate_time, env.now());
    let pl = payload(&m);
    assert_eq!(pl["iotId"], p.iot());
    assert_eq!(pl["productKey"], p.pk.as_str());
    assert_eq!(pl["items"]["LightSwitch"]["value"], 1, "{pl}");
    m.ack().await;
    env.stop().await;
}

/// An acknowledged message is done: counted as acked, never delivered again, not even
/// to a new connection of the group.
async fn an_acknowledged_message_is_never_delivered_again<C: Channel>() {
    let env = TestServer::start().await;
    let p = project::<C>(&env, "Home", 1).await;
    let mut c = C::connect(&env, &p, Opts::default()).await;
    reports(&env, &p, 1).await;
    c.next().await.ack().await;
    env.stats_until(&p.pid, |st| {
        st["groups"][0]["ackedTotal"] == 1 && st["groups"][0]["stacked"] == 0
    })
    .await;
    drop(c);
    env.wait_consumers(&p.pid, &p.app_key, 0).await;
    let mut again = C::connect(&env, &p, Opts::default()).await;
    assert_quiet(&mut again).await;
    let st = env.group_stats(&p.pid, &p.app_key).await;
    assert_eq!(st["redeliveredTotal"], 0, "{st}");
    env.stop().await;
}

/// A released message waits out the retry backoff (1 s ± 20 % on the manual clock):
/// not redelivered while the clock stands, redelivered once it has moved past it.
async fn release_redelivers_after_the_backoff<C: Channel>() {
    let env = TestServer::start().await;
    let p = project::<C>(&env, "Home", 1).await;
    let mut c = C::connect(&env, &p, Opts::default()).await;
    reports(&env, &p, 1).await;
    let m = c.next().await;
    let id = m.id();
    m.release().await;
    env.wait_stat(&p.pid, &p.app_key, "retryWaiting", 1).await;
    assert_quiet(&mut c).await;
    env.clock.advance_ms(1_300);
    let again = c.next().await;
    assert_eq!(again.id(), id);
    again.ack().await;
    let st = env
        .stats_until(&p.pid, |st| st["groups"][0]["stacked"] == 0)
        .await;
    assert_eq!(st["groups"][0]["redeliveredTotal"], 1, "{st}");
    env.stop().await;
}

/// A rejected message goes to the project's dead-letter list, not back to the group.
async fn reject_moves_the_message_to_the_dead_letters<C: Channel>()
where
    <C::Conn as Connection>::Msg: Rejects,
{
    let env = TestServer::start().await;
    let p = project::<C>(&env, "Home", 1).await;
    let mut c = C::connect(&env, &p, Opts::default()).await;
    reports(&env, &p, 1).await;
    let m = c.next().await;
    let (id, topic) = (m.id(), m.envelope().topic.clone());
    m.reject().await;
    let mut dead = Vec::new();
    iotsync_testkit::wait_for("the dead letter", async || {
        dead = env.dead_letters(&p.pid).await;
        !dead.is_empty()
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["messageId"], id.as_str());
    assert_eq!(dead[0]["topic"], topic.as_str());
    assert_eq!(dead[0]["group"], p.app_key.as_str());
    env.clock.advance_ms(10_000);
    assert_quiet(&mut c).await;
    env.stop().await;
}

/// Deliveries of a connection that drops are at once the next consumer's: no backoff
/// (the clock stands), no ack time-out.
async fn a_dropped_connections_deliveries_go_to_the_next_consumer<C: Channel>() {
    let env = TestServer::start().await;
    let p = project::<C>(&env, "Home", 3).await;
    let mut a = C::connect(&env, &p, Opts::default()).await;
    let want = reports(&env, &p, 3).await;
    let mut held = BTreeSet::new();
    for _ in 0..3 {
        held.insert(a.next().await.id());
    }
    assert_eq!(held, want);
    drop(a);
    env.wait_consumers(&p.pid, &p.app_key, 0).await;
    let mut b = C::connect(&env, &p, Opts::default()).await;
    ack_until_all(&mut b, &want).await;
    assert_quiet(&mut b).await;
    env.stop().await;
}

/// No more messages are in flight than the consumer's credit: a full window stays the
/// window until something is settled; settling lets the rest through.
async fn never_more_in_flight_than_the_credit<C: Channel>() {
    const CREDIT: usize = 3;
    let env = TestServer::start().await;
    // One message per device is in flight at a time: more devices than the credit, so
    // the credit is the bound under test.
    let p = project::<C>(&env, "Home", 8).await;
    let want = reports(&env, &p, 8).await;
    let o = Opts {
        credit: CREDIT as u32,
        ..Opts::default()
    };
    let mut c = C::connect(&env, &p, o).await;
    let mut window = Vec::new();
    for _ in 0..CREDIT {
        window.push(c.next().await);
    }
    // What is on the wire is bounded by the credit. (The backlog's `inFlight` figure is
    // not: the AMQP pump leases a few ahead of the credit, ADR 0003.)
    assert_quiet(&mut c).await;
    let st = env.group_stats(&p.pid, &p.app_key).await;
    assert_eq!(st["stacked"], want.len(), "nothing was settled yet: {st}");
    assert_eq!(st["ackedTotal"], 0, "{st}");
    // Settled, the window moves on (how far at once is the client's credit policy).
    let mut got = BTreeSet::new();
    for m in window {
        got.insert(m.id());
        m.ack().await;
    }
    while got.len() < want.len() {
        let m = c.next().await;
        assert!(got.insert(m.id()), "{} delivered twice", m.id());
        m.ack().await;
    }
    assert_eq!(got, want);
    env.stop().await;
}

/// Two consumers of one group share its messages: each message to exactly one of them,
/// both get some.
async fn two_consumers_of_one_group_share<C: Channel>() {
    let env = TestServer::start().await;
    let p = project::<C>(&env, "Home", 3).await;
    let o = |client_id| Opts {
        group: Some("analytics"),
        client_id,
        ..Opts::default()
    };
    let mut a = C::connect(&env, &p, o("a")).await;
    let mut b = C::connect(&env, &p, o("b")).await;
    let want = reports(&env, &p, 12).await;
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
            Some(m) = a.within(QUIET) => { got_a.push(m.id()); m.ack().await; }
            Some(m) = b.within(QUIET) => { got_b.push(m.id()); m.ack().await; }
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
    let p = project::<C>(&env, "Home", 3).await;
    let group = |g, client_id| Opts {
        group: Some(g),
        client_id,
        ..Opts::default()
    };
    let mut billing = C::connect(&env, &p, group("billing", "b")).await;
    let mut analytics = C::connect(&env, &p, group("analytics", "a")).await;
    let want = reports(&env, &p, 9).await;
    ack_until_all(&mut billing, &want).await;
    ack_until_all(&mut analytics, &want).await;
    assert_quiet(&mut billing).await;
    assert_quiet(&mut analytics).await;
    env.stop().await;
}

/// A project's consumer gets its own project's messages only.
async fn a_consumer_sees_its_own_projects_messages_only<C: Channel>() {
    let env = TestServer::start().await;
    let a = project::<C>(&env, "A", 1).await;
    let b = project::<C>(&env, "B", 1).await;
    let mut ca = C::connect(&env, &a, Opts::default()).await;
    let mut cb = C::connect(&env, &b, Opts::default()).await;
    let from_a = reports(&env, &a, 1).await;
    let from_b = reports(&env, &b, 1).await;
    let m = ca.next().await;
    assert!(from_a.contains(&m.id()), "{:?}", m.envelope());
    assert!(m.envelope().topic.starts_with(&format!("/{}/", a.pk)));
    assert_eq!(payload(&m)["iotId"], a.iot());
    m.ack().await;
    let m = cb.next().await;
    assert!(from_b.contains(&m.id()), "{:?}", m.envelope());
    assert_eq!(payload(&m)["iotId"], b.iot());
    m.ack().await;
    assert_quiet(&mut ca).await;
    assert_quiet(&mut cb).await;
    env.stop().await;
}

/// `scenario: [channel => Type, …];` makes `mod scenario { #[tokio::test] fn channel }`.
macro_rules! matrix {
    ($($scenario:ident: [$($channel:ident => $ty:ty),+ $(,)?];)+) => {
        $(
            mod $scenario {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $channel() {
                        super::$scenario::<$ty>().await
                    }
                )+
            }
        )+
    };
}

matrix! {
    delivers_a_report_with_its_envelope: [amqp => super::Amqp, http2 => super::Http2];
    an_acknowledged_message_is_never_delivered_again: [amqp => super::Amqp, http2 => super::Http2];
    release_redelivers_after_the_backoff: [amqp => super::Amqp, http2 => super::Http2];
    reject_moves_the_message_to_the_dead_letters: [amqp => super::Amqp];
    a_dropped_connections_deliveries_go_to_the_next_consumer: [amqp => super::Amqp, http2 => super::Http2];
    never_more_in_flight_than_the_credit: [amqp => super::Amqp, http2 => super::Http2];
    two_consumers_of_one_group_share: [amqp => super::Amqp, http2 => super::Http2];
    two_groups_each_get_every_message: [amqp => super::Amqp, http2 => super::Http2];
    a_consumer_sees_its_own_projects_messages_only: [amqp => super::Amqp, http2 => super::Http2];
}
