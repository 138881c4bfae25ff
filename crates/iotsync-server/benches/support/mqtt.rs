//! A minimal MQTT 3.1.1 client for the benches (CONNECT, PUBLISH QoS 1, PUBACK, SUBSCRIBE):
//! what a device and a subscriber send, independent of the server's codec. Used by
//! `device_e2e` and, through `#[path]`, by the CLI's `soak` bench.

#![allow(dead_code)]

use tokio::io::AsyncReadExt;

pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

pub fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

pub fn packet(out: &mut Vec<u8>, first: u8, body: &[u8]) {
    out.push(first);
    put_len(out, body.len());
    out.extend_from_slice(body);
}

pub fn connect_packet(
    client_id: &str,
    user: Option<&str>,
    pass: Option<&str>,
    keep_alive_s: u16,
) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, b"MQTT");
    b.push(4);
    let mut flags = 0x02; // clean session
    if user.is_some() {
        flags |= 0x80;
    }
    if pass.is_some() {
        flags |= 0x40;
    }
    b.push(flags);
    b.extend_from_slice(&keep_alive_s.to_be_bytes());
    put_str(&mut b, client_id.as_bytes());
    if let Some(u) = user {
        put_str(&mut b, u.as_bytes());
    }
    if let Some(p) = pass {
        put_str(&mut b, p.as_bytes());
    }
    let mut out = Vec::new();
    packet(&mut out, 0x10, &b);
    out
}

pub fn publish_qos1(out: &mut Vec<u8>, topic: &str, id: u16, payload: &[u8]) {
    let mut b = Vec::with_capacity(topic.len() + payload.len() + 4);
    put_str(&mut b, topic.as_bytes());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(payload);
    packet(out, 0x32, &b);
}

/// Reads whole packets from `s` into `buf`; calls `f(first_byte, body)` for each.
/// Returns false once the connection is closed.
pub async fn read_packets(
    s: &mut (impl AsyncReadExt + Unpin),
    buf: &mut Vec<u8>,
    mut f: impl FnMut(u8, &[u8]),
) -> bool {
    let mut chunk = [0u8; 16384];
    let n = match s.read(&mut chunk).await {
        Ok(0) | Err(_) => return false,
        Ok(n) => n,
    };
    buf.extend_from_slice(&chunk[..n]);
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        if rest.len() < 2 {
            break;
        }
        let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
        let mut complete = false;
        while i < rest.len() && i <= 4 {
            let b = rest[i];
            len += (b & 0x7f) as usize * mult;
            mult *= 128;
            i += 1;
            if b & 0x80 == 0 {
                complete = true;
                break;
            }
        }
        if !complete || rest.len() < i + len {
            break;
        }
        f(rest[0], &rest[i..i + len]);
        at += i + len;
    }
    buf.drain(..at);
    true
}
