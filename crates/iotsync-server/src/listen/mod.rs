//! What every listener shares against floods (issue 15, docs/security.md): a cap on
//! connections per listener and per source address ([`ConnLimiter`]), an accept helper
//! that closes what is over a cap at once, a stream wrapper that times out a peer that
//! does not finish its handshake, idles, or stops reading ([`guarded::Guarded`]), and
//! the HTTP serving loop with header, body and idle time-outs ([`http`]).
//!
//! `axum::serve` and tonic's `serve_with_incoming` set none of these (STYLE.md), so the
//! API and the gRPC listeners are served from our own accept loops through
//! hyper-util's connection builder.

pub mod guarded;
pub mod http;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the listener has its {0} connections")]
    Listener(usize),
    #[error("the source address has its {0} connections")]
    Source(usize),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Counts one listener's connections, in total and per source address.
#[derive(Debug)]
pub struct ConnLimiter {
    name: &'static str,
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    source: IpAddr,
}

impl ConnLimiter {
    pub fn new(name: &'static str, max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            name,
            max_total,
            max_per_source,
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `source` if both caps allow it.
    pub fn try_acquire(self: &Arc<Self>, source: IpAddr) -> Result<ConnPermit, Refused> {
        // IPv4 clients of a dual-stack listener arrive as ::ffff:a.b.c.d.
        let source = source.to_canonical();
        let mut c = self.counts();
        if c.total >= self.max_total {
            return Err(Refused::Listener(self.max_total));
        }
        let n = c.by_source.entry(source).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Refused::Source(self.max_per_source));
        }
        *n += 1;
        c.total += 1;
        Ok(ConnPermit {
            limiter: self.clone(),
            source,
        })
    }

    /// Connections admitted and not yet closed.
    pub fn open(&self) -> usize {
        self.counts().total
    }

    /// Accepts the next connection within the caps. Connections over a cap are closed
    /// at once (the peer sees the socket close) and logged at debug: a flood must not
    /// flood the log. Accept errors (out of file descriptors) back off briefly.
    pub async fn accept(
        self: &Arc<Self>,
        listener: &TcpListener,
    ) -> (TcpStream, SocketAddr, ConnPermit) {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => match self.try_acquire(remote.ip()) {
                    Ok(permit) => return (stream, remote, permit),
                    Err(why) => {
                        tracing::debug!(listener = self.name, %remote, %why, "connection refused");
                        drop(stream);
                    }
                },
                Err(e) => {
                    tracing::warn!(listener = self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut c = self.limiter.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_listener_and_per_source_and_free_on_drop() {
        let l = ConnLimiter::new("t", 3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.try_acquire(a).unwrap();
        let _a2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err(), Refused::Source(2));
        // The same address written as IPv4-mapped IPv6 is the same source.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(l.try_acquire(mapped).unwrap_err(), Refused::Source(2));
        let _b1 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).unwrap_err(), Refused::Listener(3));
        assert_eq!(l.open(), 3);
        drop(a1);
        assert_eq!(l.open(), 2);
        let _b2 = l.try_acquire(b).unwrap();
        assert_eq!(l.counts().by_source.len(), 2);
    }
}
