//! Throttles for failed sign-ins: the operator token (REST bearer and console sign-in),
//! MQTT device passwords, consumer logins (AMQP, gRPC).
//!
//! The rule: failures slow down *the place they come from*, never the credential as a
//! whole. A source address (IPv6: its /64) gets a small allowance of failures per
//! credential and a larger one over all credentials; past an allowance every further
//! failure doubles the wait before the next attempt is even looked at (1 s, 2 s, 4 s, …
//! up to a cap). The real user signing in from another address is never slowed by an
//! attacker, and failures never count against a project's legitimate connections.
//!
//! Use [`AuthThrottle`] in a sign-in path:
//!
//! ```ignore
//! let source = peer.ip();
//! throttle.check(source, &credential)?;          // Err(RetryAfter): refuse, don't verify
//! match verify(...) {
//!     Ok(_) => throttle.note_success(source, &credential),
//!     Err(_) => throttle.note_failure(source, &credential),
//! }
//! ```
//!
//! [`FailureThrottle`] is the building block (one key space) if a caller needs another
//! pairing. Both are keyed by outside input, so the map is bounded (`max_keys`): keys are
//! stored as 64-bit keyed hashes, idle entries are swept, and when the map is still full
//! an arbitrary entry makes room. Time comes from the server's [`SharedClock`], so tests
//! move a `ManualClock` instead of sleeping.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use iotsync_core::SharedClock;

/// How long after a refusal the caller may try again. As an HTTP response it is the
/// 429 `{code: "auth.throttled", message, retryAfterSeconds}` with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, rounded up (at least 1), as `Retry-After` wants them.
    pub fn seconds(&self) -> u64 {
        let s = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        s.max(1)
    }
}

impl std::fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "too many failed sign-ins from this address; retry in {} s",
            self.seconds()
        )
    }
}

/// The stable error code of a throttled sign-in.
pub const THROTTLED_CODE: &str = "auth.throttled";

impl axum::response::IntoResponse for RetryAfter {
    fn into_response(self) -> axum::response::Response {
        use axum::http::{header, HeaderValue, StatusCode};
        let secs = self.seconds();
        let body = serde_json::json!({
            "code": THROTTLED_CODE,
            "message": self.to_string(),
            "retryAfterSeconds": secs,
        });
        let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        resp
    }
}

/// One key space's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures allowed before the first wait.
    pub free_failures: u32,
    /// The first wait; each further failure doubles it.
    pub initial: Duration,
    /// The longest wait. A key is forgotten once this long has passed since its last
    /// failure and the end of its wait.
    pub max: Duration,
    /// Most keys remembered.
    pub max_keys: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// No attempt is looked at before this (ms); `i64::MIN` within the allowance.
    blocked_until: i64,
    /// Forgotten from this time on (ms).
    forget_at: i64,
}

#[derive(Default)]
struct State {
    map: HashMap<u64, Entry>,
    next_sweep_ms: i64,
}

/// Failures per key with exponential back-off; see the module doc.
pub struct FailureThrottle {
    cfg: ThrottleConfig,
    clock: SharedClock,
    /// Keys are outside input: hashed with a per-process random key, stored as u64.
    hasher: RandomState,
    state: Mutex<State>,
}

/// `Err` while `e` makes its key wait at `now`; never longer than the cap, even when the
/// clock stepped back.
fn waiting(cfg: &ThrottleConfig, e: &Entry, now: i64) -> Result<(), RetryAfter> {
    if e.blocked_until > now {
        Err(RetryAfter(Duration::from_millis(
            (e.blocked_until - now).min(ms(cfg.max)) as u64,
        )))
    } else {
        Ok(())
    }
}

/// A key's entry after one more failure at `now` (the same rule in memory and in the
/// registry).
fn advance(cfg: &ThrottleConfig, prev: Option<Entry>, now: i64) -> Entry {
    let mut e = prev.unwrap_or(Entry {
        failures: 0,
        blocked_until: i64::MIN,
        forget_at: now,
    });
    if e.forget_at <= now {
        // Idle long enough to be forgotten but not swept yet: start over.
        e.failures = 0;
        e.blocked_until = i64::MIN;
    }
    e.failures = e.failures.saturating_add(1);
    if e.failures > cfg.free_failures {
        let over = e.failures - cfg.free_failures - 1;
        let wait = cfg
            .initial
            .saturating_mul(1u32 << over.min(30))
            .min(cfg.max);
        e.blocked_until = now.saturating_add(ms(wait));
    }
    e.forget_at = now.max(e.blocked_until).saturating_add(ms(cfg.max));
    e
}

impl From<iotsync_store::AuthFailures> for Entry {
    fn from(a: iotsync_store::AuthFailures) -> Self {
        Entry {
            failures: a.failures,
            blocked_until: a.blocked_until,
            forget_at: a.forget_at,
        }
    }
}

impl From<Entry> for iotsync_store::AuthFailures {
    fn from(e: Entry) -> Self {
        iotsync_store::AuthFailures {
            failures: e.failures,
            blocked_until: e.blocked_until,
            forget_at: e.forget_at,
        }
    }
}

/// How often idle entries are swept even while the map is not full.
const SWEEP_EVERY_MS: i64 = 60_000;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl FailureThrottle {
    pub fn new(cfg: ThrottleConfig, clock: SharedClock) -> Self {
        Self {
            cfg,
            clock,
            hasher: RandomState::new(),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The map holds plain values: one left by a panicking holder is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hash<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// `Err` while `key` must wait; the caller refuses without checking the credential.
    pub fn check<K: Hash + ?Sized>(&self, key: &K) -> Result<(), RetryAfter> {
        let h = self.hash(key);
        let now = self.clock.now_ms();
        let s = self.lock();
        match s.map.get(&h) {
            Some(e) => waiting(&self.cfg, e, now),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt of `key`; past the allowance it sets the next wait.
    pub fn note_failure<K: Hash + ?Sized>(&self, key: &K) {
        let h = self.hash(key);
        let now = self.clock.now_ms();
        let mut s = self.lock();
        self.sweep(&mut s, now, false);
        if !s.map.contains_key(&h) && s.map.len() >= self.cfg.max_keys {
            self.sweep(&mut s, now, true);
            if s.map.len() >= self.cfg.max_keys {
                if let Some(victim) = s.map.keys().next().copied() {
                    s.map.remove(&victim);
                }
            }
        }
        let prev = s.map.get(&h).copied();
        s.map.insert(h, advance(&self.cfg, prev, now));
    }

    /// Forgets `key`'s failures.
    pub fn note_success<K: Hash + ?Sized>(&self, key: &K) {
        let h = self.hash(key);
        self.lock().map.remove(&h);
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep(&self, s: &mut State, now: i64, force: bool) {
        if force || now >= s.next_sweep_ms {
            s.map.retain(|_, e| e.forget_at > now);
            s.next_sweep_ms = now.saturating_add(SWEEP_EVERY_MS);
        }
    }
}

/// The rule of one sign-in path (from `[auth]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthThrottleConfig {
    /// Failures one source may have with one credential before back-off.
    pub failures_per_credential: u32,
    /// Failures one source may have over all credentials before back-off.
    pub failures_per_source: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Most entries remembered, in each of the two key spaces.
    pub max_keys: usize,
}

impl AuthThrottleConfig {
    pub fn from_config(c: &crate::config::AuthConfig) -> Self {
        Self {
            failures_per_credential: c.failures_per_credential,
            failures_per_source: c.failures_per_source,
            backoff_initial: c.backoff_initial.0,
            backoff_max: c.backoff_max.0,
            max_keys: c.throttle_max_entries,
        }
    }
}

/// A sign-in path's throttle: per (source, credential) and per source.
pub struct AuthThrottle {
    per_credential: FailureThrottle,
    per_source: FailureThrottle,
}

/// The operator token's throttle (REST bearer and console sign-in). With a registry
/// shared by several nodes the counters live there too (issue 13): a failure on any node
/// counts on every node, so an attacker gains nothing by spreading guesses over them.
/// Only failures write; a right token reads the two counters (and clears its pair only
/// if that read found one). The in-memory throttle in front refuses without a round trip
/// what this node already knows is waiting.
pub struct OperatorThrottle {
    local: AuthThrottle,
    shared: Option<SharedCounters>,
}

struct SharedCounters {
    registry: std::sync::Arc<dyn iotsync_store::Registry>,
    clock: SharedClock,
    per_credential: ThrottleConfig,
    per_source: ThrottleConfig,
}

/// What [`OperatorThrottle::check`] saw, for [`OperatorThrottle::note_success`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Checked {
    shared_pair_failed: bool,
}

/// The registry's key of a counter: the same on every node, no address in clear.
fn shared_key(space: &str, src: IpAddr, credential: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"iotsync auth throttle\0");
    h.update(space.as_bytes());
    h.update(b"\0");
    h.update(src.to_string().as_bytes());
    if let Some(c) = credential {
        h.update(b"\0");
        h.update(c.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl OperatorThrottle {
    /// Counters in this process only (a registry of one node).
    pub fn local(cfg: AuthThrottleConfig, clock: SharedClock) -> Self {
        Self {
            local: AuthThrottle::new(cfg, clock),
            shared: None,
        }
    }

    /// Counters in the registry as well, shared by the nodes on it.
    pub fn shared(
        cfg: AuthThrottleConfig,
        clock: SharedClock,
        registry: std::sync::Arc<dyn iotsync_store::Registry>,
    ) -> Self {
        let part = |free| ThrottleConfig {
            free_failures: free,
            initial: cfg.backoff_initial,
            max: cfg.backoff_max,
            max_keys: cfg.max_keys,
        };
        Self {
            local: AuthThrottle::new(cfg, clock.clone()),
            shared: Some(SharedCounters {
                registry,
                clock,
                per_credential: part(cfg.failures_per_credential),
                per_source: part(cfg.failures_per_source),
            }),
        }
    }

    fn keys(src: IpAddr, credential: &str) -> (String, String) {
        (
            shared_key("source", src, None),
            shared_key("credential", src, Some(credential)),
        )
    }

    /// `Err` while `source` must wait, on this node's knowledge or the registry's. A
    /// registry that cannot be read leaves the local answer (the call itself then
    /// fails on the registry anyway).
    pub async fn check(&self, source: IpAddr, credential: &str) -> Result<Checked, RetryAfter> {
        self.local.check(source, credential)?;
        let Some(sh) = &self.shared else {
            return Ok(Checked::default());
        };
        let src = source_of(source);
        let (by_source, by_pair) = Self::keys(src, credential);
        let rows = match sh.registry.auth_failures(&[&by_source, &by_pair]).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading shared sign-in failures failed");
                return Ok(Checked::default());
            }
        };
        let now = sh.clock.now_ms();
        let mut worst: Option<RetryAfter> = None;
        let mut checked = Checked::default();
        for (key, a) in rows {
            let cfg = if key == by_source {
                &sh.per_source
            } else {
                checked.shared_pair_failed = true;
                &sh.per_credential
            };
            if let Err(w) = waiting(cfg, &Entry::from(a), now) {
                worst = Some(worst.map_or(w, |x| x.max(w)));
            }
        }
        match worst {
            Some(w) => Err(w),
            None => Ok(checked),
        }
    }

    pub async fn note_failure(&self, source: IpAddr, credential: &str) {
        self.local.note_failure(source, credential);
        let Some(sh) = &self.shared else {
            return;
        };
        let src = source_of(source);
        let (by_source, by_pair) = Self::keys(src, credential);
        let now = sh.clock.now_ms();
        for (key, cfg) in [(by_source, sh.per_source), (by_pair, sh.per_credential)] {
            let next = move |prev: Option<iotsync_store::AuthFailures>| {
                advance(&cfg, prev.map(Entry::from), now).into()
            };
            if let Err(e) = sh.registry.note_auth_failure(&key, now, &next).await {
                tracing::warn!(error = %e, "counting a shared sign-in failure failed");
            }
        }
    }

    /// Clears the (source, credential) pair; writes to the registry only if `checked`
    /// found a counter there.
    pub async fn note_success(&self, source: IpAddr, credential: &str, checked: Checked) {
        self.local.note_success(source, credential);
        if let (Some(sh), true) = (&self.shared, checked.shared_pair_failed) {
            let (_, by_pair) = Self::keys(source_of(source), credential);
            if let Err(e) = sh.registry.clear_auth_failures(&by_pair).await {
                tracing::warn!(error = %e, "clearing shared sign-in failures failed");
            }
        }
    }
}

/// The address failures are counted against: an IPv4 address (IPv4-mapped IPv6 too), or
/// the /64 of an IPv6 address (one host easily holds a whole /64).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl AuthThrottle {
    pub fn new(cfg: AuthThrottleConfig, clock: SharedClock) -> Self {
        let part = |free| ThrottleConfig {
            free_failures: free,
            initial: cfg.backoff_initial,
            max: cfg.backoff_max,
            max_keys: cfg.max_keys,
        };
        Self {
            per_credential: FailureThrottle::new(part(cfg.failures_per_credential), clock.clone()),
            per_source: FailureThrottle::new(part(cfg.failures_per_source), clock),
        }
    }

    /// `Err` while `source` must wait (for `credential` or for everything).
    pub fn check(&self, source: IpAddr, credential: &str) -> Result<(), RetryAfter> {
        let src = source_of(source);
        let a = self.per_source.check(&src);
        let b = self.per_credential.check(&(src, credential));
        match (a, b) {
            (Err(x), Err(y)) => Err(x.max(y)),
            (Err(x), Ok(())) | (Ok(()), Err(x)) => Err(x),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    pub fn note_failure(&self, source: IpAddr, credential: &str) {
        let src = source_of(source);
        self.per_source.note_failure(&src);
        self.per_credential.note_failure(&(src, credential));
    }

    /// Clears the (source, credential) pair. The source's count over all credentials
    /// stays: one valid credential must not wash out guesses at others.
    pub fn note_success(&self, source: IpAddr, credential: &str) {
        self.per_credential
            .note_success(&(source_of(source), credential));
    }
}

impl PartialOrd for RetryAfter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RetryAfter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// The server's sign-in throttles, one per path, built from `[auth]`.
pub struct Throttles {
    /// The operator token: REST bearer and console sign-in share it (one secret).
    pub operator: OperatorThrottle,
    /// MQTT device passwords; the credential is `${deviceName}&${productKey}`.
    pub device: AuthThrottle,
    /// Consumer logins on AMQP and gRPC; the credential is the appKey (and group).
    pub consumer: AuthThrottle,
}

impl Throttles {
    pub fn new(cfg: AuthThrottleConfig, clock: SharedClock) -> Self {
        Self {
            operator: OperatorThrottle::local(cfg, clock.clone()),
            device: AuthThrottle::new(cfg, clock.clone()),
            consumer: AuthThrottle::new(cfg, clock),
        }
    }

    /// As [`Throttles::new`], the operator token's counters shared through `registry`
    /// (several nodes on one PostgreSQL registry).
    pub fn shared(
        cfg: AuthThrottleConfig,
        clock: SharedClock,
        registry: std::sync::Arc<dyn iotsync_store::Registry>,
    ) -> Self {
        Self {
            operator: OperatorThrottle::shared(cfg, clock.clone(), registry),
            device: AuthThrottle::new(cfg, clock.clone()),
            consumer: AuthThrottle::new(cfg, clock),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotsync_core::ManualClock;
    use std::sync::Arc;

    fn throttle(free: u32, max_keys: usize) -> (FailureThrottle, ManualClock) {
        let clock = ManualClock::new(1_000_000);
        let t = FailureThrottle::new(
            ThrottleConfig {
                free_failures: free,
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
                max_keys,
            },
            Arc::new(clock.clone()),
        );
        (t, clock)
    }

    #[test]
    fn waits_start_after_the_allowance_and_double_up_to_the_cap() {
        let (t, clock) = throttle(3, 100);
        for _ in 0..3 {
            assert_eq!(t.check("k"), Ok(()));
            t.note_failure("k");
        }
        assert_eq!(t.check("k"), Ok(()), "three failures are free");
        let mut waits = Vec::new();
        for _ in 0..8 {
            t.note_failure("k");
            let w = t.check("k").unwrap_err();
            waits.push(w.seconds());
            clock.advance_ms(ms(w.0));
            assert_eq!(t.check("k"), Ok(()), "the wait ends on time");
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn other_keys_are_untouched_and_success_forgets() {
        let (t, _clock) = throttle(0, 100);
        t.note_failure("attacker");
        assert!(t.check("attacker").is_err());
        assert_eq!(t.check("user"), Ok(()));
        t.note_success("attacker");
        assert_eq!(t.check("attacker"), Ok(()));
        assert!(t.is_empty());
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_max_period() {
        let (t, clock) = throttle(2, 100);
        t.note_failure("k");
        t.note_failure("k");
        clock.advance_ms(60_001);
        t.note_failure("k");
        assert_eq!(t.check("k"), Ok(()), "the old failures no longer count");
        // The sweep drops idle entries.
        clock.advance_ms(120_000);
        t.note_failure("other");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn the_map_never_grows_past_its_bound() {
        let (t, _clock) = throttle(0, 50);
        for i in 0..10_000 {
            t.note_failure(&i);
        }
        assert_eq!(t.len(), 50);
        // The newest key is always kept.
        assert!(t.check(&9_999).is_err());
    }

    #[test]
    fn a_clock_stepping_back_never_makes_a_wait_longer_than_the_cap() {
        let (t, clock) = throttle(1, 100);
        t.note_failure("free");
        t.note_failure("k");
        t.note_failure("k");
        clock.advance_ms(-3_600_000);
        assert_eq!(
            t.check("free"),
            Ok(()),
            "within the allowance nothing waits"
        );
        assert_eq!(t.check("k").unwrap_err().seconds(), 60);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter(Duration::from_millis(1)).seconds(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1001)).seconds(), 2);
        assert_eq!(RetryAfter(Duration::from_secs(3)).seconds(), 3);
        assert_eq!(RetryAfter(Duration::ZERO).seconds(), 1);
    }

    fn auth(clock: &ManualClock) -> AuthThrottle {
        AuthThrottle::new(
            AuthThrottleConfig {
                failures_per_credential: 2,
                failures_per_source: 5,
                backoff_initial: Duration::from_secs(1),
                backoff_max: Duration::from_secs(300),
                max_keys: 1000,
            },
            Arc::new(clock.clone()),
        )
    }

    #[test]
    fn an_attacker_address_is_slowed_and_the_real_user_elsewhere_is_not() {
        let clock = ManualClock::new(5_000_000);
        let t = auth(&clock);
        let attacker: IpAddr = "203.0.113.7".parse().unwrap();
        let user: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..3 {
            t.note_failure(attacker, "dev&pk");
        }
        assert!(t.check(attacker, "dev&pk").is_err());
        assert_eq!(
            t.check(user, "dev&pk"),
            Ok(()),
            "same credential, other address"
        );
        // Another credential from the attacker: its own allowance, until the source's
        // overall allowance runs out.
        assert_eq!(t.check(attacker, "other&pk"), Ok(()));
        t.note_failure(attacker, "other&pk");
        t.note_failure(attacker, "third&pk");
        t.note_failure(attacker, "fourth&pk");
        assert!(
            t.check(attacker, "fifth&pk").is_err(),
            "six failures over all credentials"
        );
        assert_eq!(t.check(user, "fifth&pk"), Ok(()));
    }

    #[test]
    fn success_clears_the_pair_but_not_the_sources_overall_count() {
        let clock = ManualClock::new(5_000_000);
        let t = auth(&clock);
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        for i in 0..5 {
            t.note_failure(a, &format!("guess{i}"));
        }
        t.note_success(a, "mine");
        t.note_failure(a, "guess5");
        assert!(t.check(a, "mine").is_err(), "the source is waiting");
    }

    #[test]
    fn ipv6_failures_count_per_64_and_mapped_ipv4_as_ipv4() {
        let clock = ManualClock::new(5_000_000);
        let t = auth(&clock);
        for i in 1..=3u16 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i));
            t.note_failure(ip, "c");
        }
        let same64: IpAddr = "2001:db8:0:1::ffff".parse().unwrap();
        let other64: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        assert!(t.check(same64, "c").is_err());
        assert_eq!(t.check(other64, "c"), Ok(()));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(source_of(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_throttled_http_answer_is_429_with_retry_after_and_the_code() {
        use axum::response::IntoResponse;
        let r = RetryAfter(Duration::from_millis(2500)).into_response();
        assert_eq!(r.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "3");
    }
}
