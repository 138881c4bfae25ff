//! Bench of the embedded backlog (not a test): durable append + lease + ack throughput
//! with concurrent appenders and consumers, and a large stacked backlog (append rate,
//! disk bytes per message, RSS, reopen time).
//!
//! ```text
//! cargo run --release -p iotsync-backlog --bin backlog-bench -- \
//!     [--dir DIR] [--messages 2000000] [--appenders 8] [--batch 64] [--consumers 2] \
//!     [--credit 1000] [--stacked 10000000] [--lookup 10000000] \
//!     [--keep 0|1] [--only throughput|stacked|lookup|keep]
//! ```
//!
//! `lookup`: N stored messages (half acknowledged, kept) from 10 000 devices; the time of
//! a lookup by messageId and of a device's newest 50 / a device's messages in one minute.
//! `keep`: the disk a message costs once acknowledged, with and without
//! `keepAcknowledged`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotsync_backlog::{Backlog, BacklogConfig, BacklogError, ConsumerId, EmbeddedBacklog};
use iotsync_core::clock::system_clock;
use iotsync_core::{ConsumerGroup, Envelope, MessageKind, ProjectId, SyncMessage};

struct Args {
    dir: Option<PathBuf>,
    messages: u64,
    appenders: u64,
    batch: u64,
    consumers: u64,
    credit: usize,
    stacked: u64,
    lookup: u64,
    /// `--keep 1`: the throughput run keeps acknowledged messages (the server's default).
    keep: bool,
    only: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        dir: None,
        messages: 2_000_000,
        appenders: 8,
        batch: 64,
        consumers: 2,
        credit: 1000,
        stacked: 10_000_000,
        lookup: 10_000_000,
        keep: false,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let num = || v.parse::<u64>().map_err(|e| format!("{k}: {e}"));
        match k.as_str() {
            "--dir" => a.dir = Some(PathBuf::from(&v)),
            "--messages" => a.messages = num()?,
            "--appenders" => a.appenders = num()?.max(1),
            "--batch" => a.batch = num()?.max(1),
            "--consumers" => a.consumers = num()?.max(1),
            "--credit" => a.credit = num()? as usize,
            "--stacked" => a.stacked = num()?,
            "--lookup" => a.lookup = num()?,
            "--keep" => a.keep = num()? != 0,
            "--only" => a.only = Some(v),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(a)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn message(
    project: &ProjectId,
    device: u64,
    n: u64,
    payload: &[u8],
) -> Result<SyncMessage, String> {
    Ok(SyncMessage {
        project_id: project.clone(),
        kind: MessageKind::PropertyPost,
        product_key: Some("a1benchprod".parse().map_err(|e| format!("{e}"))?),
        ordering_key: format!("dev{device:05}"),
        envelope: Envelope {
            topic: format!("/a1benchprod/dev{device:05}/thing/event/property/post"),
            message_id: format!("b{n:016x}").parse().map_err(|e| format!("{e}"))?,
            generate_time: system_clock().now_ms(),
            payload: payload.to_vec(),
        },
    })
}

fn payload() -> Vec<u8> {
    let mut p = br#"{"deviceType":"Light","iotId":"0123456789abcdefghij","items":{"LightSwitch":{"value":1,"time":1700000000000}},"pad":""#.to_vec();
    while p.len() < 254 {
        p.push(b'x');
    }
    p.extend_from_slice(b"\"}");
    p
}

/// `appenders` tasks append `total` messages in batches; returns the elapsed time.
async fn append_all(
    b: Arc<EmbeddedBacklog>,
    project: &ProjectId,
    total: u64,
    appenders: u64,
    batch: u64,
) -> Result<Duration, String> {
    append_all_from(b, project, 0, total, appenders, batch).await
}

/// Like `append_all`, numbering the messages from `first`.
async fn append_all_from(
    b: Arc<EmbeddedBacklog>,
    project: &ProjectId,
    first: u64,
    count: u64,
    appenders: u64,
    batch: u64,
) -> Result<Duration, String> {
    let total = first + count;
    let next = Arc::new(AtomicU64::new(first));
    let body = Arc::new(payload());
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (b, next, body, project) = (b.clone(), next.clone(), body.clone(), project.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(batch, Ordering::Relaxed);
                if start >= total {
                    return Ok::<(), String>(());
                }
                let end = (start + batch).min(total);
                let msgs = (start..end)
                    .map(|n| message(&project, n % 10_000, n, &body))
                    .collect::<Result<Vec<_>, _>>()?;
                b.append(msgs).await.map_err(|e| e.to_string())?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(t.elapsed())
}

async fn throughput(dir: &Path, a: &Args) -> Result<(), String> {
    let cfg = BacklogConfig {
        keep_acknowledged: a.keep,
        ..BacklogConfig::default()
    };
    let (b, _) = EmbeddedBacklog::open(dir, cfg, system_clock()).map_err(|e| e.to_string())?;
    let b = Arc::new(b);
    let p: ProjectId = "benchproject".parse().map_err(|e| format!("{e}"))?;
    let g: ConsumerGroup = "benchgroup".parse().map_err(|e| format!("{e}"))?;
    b.create_group(&p, &g, &iotsync_backlog::GroupSpec::all())
        .await
        .map_err(|e| e.to_string())?;
    let acked = Arc::new(AtomicU64::new(0));
    let total = a.messages;
    let t = Instant::now();
    let mut consumers = Vec::new();
    for c in 0..a.consumers {
        let (b, p, g, acked, credit) = (b.clone(), p.clone(), g.clone(), acked.clone(), a.credit);
        consumers.push(tokio::spawn(async move {
            let mut watch = b.watch(&p, &g)?;
            while acked.load(Ordering::Relaxed) < total {
                let ds = b.lease(&p, &g, ConsumerId(c), credit).await?;
                if ds.is_empty() {
                    let _ = tokio::time::timeout(Duration::from_millis(5), watch.changed()).await;
                    continue;
                }
                for d in &ds {
                    b.ack(&d.token).await?;
                }
                acked.fetch_add(ds.len() as u64, Ordering::Relaxed);
            }
            Ok::<(), BacklogError>(())
        }));
    }
    let append_time = append_all(b.clone(), &p, total, a.appenders, a.batch).await?;
    for c in consumers {
        c.await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    let all = t.elapsed();
    let s = b.stats(&p).await.map_err(|e| e.to_string())?;
    println!("## append + lease + ack (durable, group commit, 256-byte payloads)");
    println!("messages: {total}, appenders: {}, batch: {}, consumers: {}, credit: {}, ordering keys: 10000, keepAcknowledged: {}", a.appenders, a.batch, a.consumers, a.credit, a.keep);
    println!(
        "appended: {:.0} msg/s ({:.2} s)",
        total as f64 / append_time.as_secs_f64(),
        append_time.as_secs_f64()
    );
    println!(
        "appended and acked: {:.0} msg/s ({:.2} s)",
        total as f64 / all.as_secs_f64(),
        all.as_secs_f64()
    );
    println!(
        "left stacked: {}, acked total: {}",
        s.groups[0].stacked, s.groups[0].acked_total
    );
    println!("RSS: {} MiB", rss_kib() / 1024);
    b.close().await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn single_appender_latency(dir: &Path) -> Result<(), String> {
    let (b, _) = EmbeddedBacklog::open(dir, BacklogConfig::default(), system_clock())
        .map_err(|e| e.to_string())?;
    let p: ProjectId = "latency".parse().map_err(|e| format!("{e}"))?;
    b.create_group(
        &p,
        &"g".parse().map_err(|e| format!("{e}"))?,
        &iotsync_backlog::GroupSpec::all(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let body = payload();
    let n = 2000;
    let t = Instant::now();
    for i in 0..n {
        b.append(vec![message(&p, i, i, &body)?])
            .await
            .map_err(|e| e.to_string())?;
    }
    let e = t.elapsed();
    println!("## one appender, one message per append (no group commit possible)");
    println!(
        "{n} appends: {:.0} msg/s, {:.3} ms per durable append",
        n as f64 / e.as_secs_f64(),
        e.as_secs_f64() * 1000.0 / n as f64
    );
    b.close().await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn stacked(dir: &Path, a: &Args) -> Result<(), String> {
    let rss0 = rss_kib();
    let cfg = BacklogConfig::default();
    let (b, _) =
        EmbeddedBacklog::open(dir, cfg.clone(), system_clock()).map_err(|e| e.to_string())?;
    let b = Arc::new(b);
    let p: ProjectId = "stacked".parse().map_err(|e| format!("{e}"))?;
    let g: ConsumerGroup = "g".parse().map_err(|e| format!("{e}"))?;
    b.create_group(&p, &g, &iotsync_backlog::GroupSpec::all())
        .await
        .map_err(|e| e.to_string())?;
    let rss_before = rss_kib();
    println!(
        "## {} stacked messages (256-byte payloads, nobody consuming), index budget {} MiB",
        a.stacked,
        cfg.index_memory_bytes >> 20
    );
    println!("| stacked | RSS | index slots in memory | index slots spilled |");
    println!("|---:|---:|---:|---:|");
    // In ten steps, so the RSS can be seen to stay flat as the backlog grows.
    let step = a.stacked.div_ceil(10);
    let mut elapsed = Duration::ZERO;
    let mut done = 0;
    while done < a.stacked {
        let n = step.min(a.stacked - done);
        elapsed += append_all_from(b.clone(), &p, done, n, a.appenders, 512).await?;
        done += n;
        let m = b.index_memory();
        println!(
            "| {done} | {} MiB | {} MiB | {} MiB |",
            rss_kib() / 1024,
            m.resident_bytes >> 20,
            m.spilled_bytes >> 20
        );
    }
    let rss_after = rss_kib();
    let s = b.stats(&p).await.map_err(|e| e.to_string())?;
    b.close().await.map_err(|e| e.to_string())?;
    drop(b);
    let bytes = dir_bytes(dir);
    println!(
        "append: {:.0} msg/s ({:.1} s, {} appenders, batch 512)",
        a.stacked as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        a.appenders
    );
    println!("stacked (engine figure): {}", s.groups[0].stacked);
    println!(
        "disk: {} MiB, {:.0} bytes per message (segments + index spill file)",
        bytes >> 20,
        bytes as f64 / a.stacked as f64
    );
    println!("RSS: process start {} MiB, engine open {} MiB, after append {} MiB => {:.2} bytes per stacked message", rss0 / 1024, rss_before / 1024, rss_after / 1024, (rss_after.saturating_sub(rss_before) * 1024) as f64 / a.stacked as f64);
    let t = Instant::now();
    let (b, report) = EmbeddedBacklog::open(dir, cfg, system_clock()).map_err(|e| e.to_string())?;
    println!(
        "reopen (replay of {} MiB): {:.1} s, {} messages recovered, RSS {} MiB",
        report.bytes >> 20,
        t.elapsed().as_secs_f64(),
        report.messages,
        rss_kib() / 1024
    );
    // Drain it all: the index comes back from the spill file chunk by chunk.
    let t = Instant::now();
    let mut acked = 0u64;
    let mut max_rss = 0;
    let mut drain_rss = Vec::new();
    let mut watch = b.watch(&p, &g).map_err(|e| e.to_string())?;
    while acked < a.stacked {
        let ds = b
            .lease(&p, &g, ConsumerId(1), 4096)
            .await
            .map_err(|e| e.to_string())?;
        if ds.is_empty() {
            let _ = tokio::time::timeout(Duration::from_millis(50), watch.changed()).await;
            if b.stats(&p).await.map_err(|e| e.to_string())?.groups[0].stacked == 0 {
                break;
            }
            continue;
        }
        for d in &ds {
            b.ack(&d.token).await.map_err(|e| e.to_string())?;
        }
        let before = acked;
        acked += ds.len() as u64;
        let quarter = a.stacked.div_ceil(4).max(1);
        if before / quarter != acked / quarter {
            let rss = rss_kib();
            max_rss = max_rss.max(rss);
            drain_rss.push(format!("{acked}: {} MiB", rss / 1024));
        }
    }
    let e = t.elapsed();
    let s = b.stats(&p).await.map_err(|e| e.to_string())?;
    println!(
        "drain (lease 4096 + ack each, one consumer): {acked} in {:.1} s = {:.0} msg/s, left stacked {}, max RSS {} MiB",
        e.as_secs_f64(),
        acked as f64 / e.as_secs_f64(),
        s.groups[0].stacked,
        max_rss / 1024
    );
    println!("RSS while draining (acked: RSS): {}", drain_rss.join(", "));
    b.close().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// A message as the server makes it: a UUIDv7 id from its generateTime.
fn server_message(project: &ProjectId, device: u64, body: &[u8]) -> Result<SyncMessage, String> {
    let now = system_clock().now_ms();
    let mut m = message(project, device, 0, body)?;
    m.envelope.generate_time = now;
    m.envelope.message_id = iotsync_core::MessageId::generate_at(now);
    Ok(m)
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    )
}

/// Acks everything group `g` has (one consumer), up to `limit` messages.
async fn ack_up_to(
    b: &EmbeddedBacklog,
    p: &ProjectId,
    g: &ConsumerGroup,
    limit: u64,
) -> Result<u64, String> {
    let mut acked = 0;
    while acked < limit {
        let ds = b
            .lease(p, g, ConsumerId(7), 4096.min((limit - acked) as usize))
            .await
            .map_err(|e| e.to_string())?;
        if ds.is_empty() {
            break;
        }
        for d in &ds {
            b.ack(&d.token).await.map_err(|e| e.to_string())?;
        }
        acked += ds.len() as u64;
    }
    Ok(acked)
}

async fn lookup(dir: &Path, a: &Args) -> Result<(), String> {
    let cfg = BacklogConfig {
        keep_acknowledged: true,
        ..BacklogConfig::default()
    };
    let (b, _) =
        EmbeddedBacklog::open(dir, cfg.clone(), system_clock()).map_err(|e| e.to_string())?;
    let b = Arc::new(b);
    let p: ProjectId = "lookup".parse().map_err(|e| format!("{e}"))?;
    let g: ConsumerGroup = "g".parse().map_err(|e| format!("{e}"))?;
    b.create_group(&p, &g, &iotsync_backlog::GroupSpec::all())
        .await
        .map_err(|e| e.to_string())?;
    let body = payload();
    let devices = 10_000u64;
    let mut sample = Vec::new();
    let fill_from = system_clock().now_ms();
    let t = Instant::now();
    let mut n = 0u64;
    while n < a.lookup {
        let k = 512.min(a.lookup - n);
        let batch = (n..n + k)
            .map(|i| server_message(&p, i % devices, &body))
            .collect::<Result<Vec<_>, _>>()?;
        if n % 10_007 < k {
            sample.push((
                batch[0].envelope.message_id.clone(),
                batch[0].ordering_key.clone(),
            ));
        }
        b.append(batch).await.map_err(|e| e.to_string())?;
        n += k;
    }
    let appended = t.elapsed();
    let fill_ms = (system_clock().now_ms() - fill_from).max(1);
    let t = Instant::now();
    let acked = ack_up_to(&b, &p, &g, a.lookup / 2).await?;
    println!(
        "## Lookups with {} stored messages ({devices} devices, {} acknowledged and kept), index budget {} MiB",
        a.lookup,
        acked,
        cfg.index_memory_bytes >> 20
    );
    println!(
        "fill: append {:.1} s ({:.0} msg/s), ack {:.1} s; disk {} MiB; RSS {} MiB",
        appended.as_secs_f64(),
        a.lookup as f64 / appended.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        dir_bytes(dir) >> 20,
        rss_kib() / 1024
    );
    // Spread the samples over the whole backlog: ids near the head and far in the
    // spilled past.
    let mut by_id = Vec::new();
    for (id, _) in &sample {
        let t = Instant::now();
        let found = b.find_message(&p, id).await.map_err(|e| e.to_string())?;
        by_id.push(t.elapsed());
        if found.is_none() {
            return Err(format!("message {id} not found"));
        }
    }
    println!(
        "by messageId ({} lookups): {}",
        by_id.len(),
        percentiles(by_id)
    );
    let missing = iotsync_core::MessageId::generate_at(system_clock().now_ms() - 60_000);
    let t = Instant::now();
    let none = b
        .find_message(&p, &missing)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "an id not stored (UUIDv7 of a minute ago): {:.2} ms, found {}",
        t.elapsed().as_secs_f64() * 1e3,
        none.is_some()
    );
    let keys: Vec<String> = sample.iter().take(1000).map(|(_, k)| k.clone()).collect();
    device_queries(&b, &p, "a device's newest 50", &keys, |_| (0, i64::MAX)).await?;
    // A one-minute window starting somewhere in the fill.
    device_queries(
        &b,
        &p,
        "a device's messages in one minute, limit 50",
        &keys,
        |i| {
            let from = fill_from + (i as i64 * 997) % fill_ms;
            (from, from + 60_000)
        },
    )
    .await?;
    let t = Instant::now();
    let absent = iotsync_backlog::MessageQuery {
        ordering_key: "no-such-device".into(),
        from_ms: 0,
        to_ms: i64::MAX,
        before_seq: None,
        limit: 50,
    };
    let none = b
        .device_messages(&p, &absent)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "a device with no messages, whole retention: {:.1} ms ({} found)",
        t.elapsed().as_secs_f64() * 1e3,
        none.len()
    );
    // The operator actions: each walks the project's stored slots under the lock.
    let t = Instant::now();
    let out = b
        .seek(&p, &g, fill_from + fill_ms / 2)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "seek to the middle of the fill: {:.2} s (replayed {}, dropped {}, owed {})",
        t.elapsed().as_secs_f64(),
        out.replayed,
        out.dropped,
        out.owed
    );
    let t = Instant::now();
    let out = b.purge(&p, &g).await.map_err(|e| e.to_string())?;
    println!(
        "purge: {:.2} s (dropped {})",
        t.elapsed().as_secs_f64(),
        out.dropped
    );
    b.close().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// One device query per key (limit 50, the range `range(i)` for the i-th), timed.
async fn device_queries(
    b: &EmbeddedBacklog,
    p: &ProjectId,
    what: &str,
    keys: &[String],
    range: impl Fn(usize) -> (i64, i64),
) -> Result<(), String> {
    let mut times = Vec::new();
    let mut got = 0;
    for (i, key) in keys.iter().enumerate() {
        let (from_ms, to_ms) = range(i);
        let q = iotsync_backlog::MessageQuery {
            ordering_key: key.clone(),
            from_ms,
            to_ms,
            before_seq: None,
            limit: 50,
        };
        let t = Instant::now();
        got += b
            .device_messages(p, &q)
            .await
            .map_err(|e| e.to_string())?
            .len();
        times.push(t.elapsed());
    }
    println!(
        "{what} ({} queries, {:.1} per query): {}",
        times.len(),
        got as f64 / times.len().max(1) as f64,
        percentiles(times)
    );
    Ok(())
}

/// Disk per message once acknowledged, with and without keepAcknowledged.
async fn keep_cost(root: &Path, n: u64) -> Result<(), String> {
    println!("## Disk per message once acknowledged ({n} messages, 256-byte payloads)");
    println!("| keepAcknowledged | disk after acking all | bytes per message |");
    println!("|---|---:|---:|");
    for keep in [false, true] {
        let dir = root.join(format!("keep-{keep}"));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = BacklogConfig {
            keep_acknowledged: keep,
            segment_bytes: 8 << 20,
            ..BacklogConfig::default()
        };
        let (b, _) = EmbeddedBacklog::open(&dir, cfg, system_clock()).map_err(|e| e.to_string())?;
        let b = Arc::new(b);
        let p: ProjectId = "keep".parse().map_err(|e| format!("{e}"))?;
        let g: ConsumerGroup = "g".parse().map_err(|e| format!("{e}"))?;
        b.create_group(&p, &g, &iotsync_backlog::GroupSpec::all())
            .await
            .map_err(|e| e.to_string())?;
        let body = payload();
        let mut i = 0;
        while i < n {
            let k = 512.min(n - i);
            let batch = (i..i + k)
                .map(|j| server_message(&p, j % 10_000, &body))
                .collect::<Result<Vec<_>, _>>()?;
            b.append(batch).await.map_err(|e| e.to_string())?;
            i += k;
        }
        ack_up_to(&b, &p, &g, n).await?;
        // Let the writer drop finished segments.
        b.flush().await.map_err(|e| e.to_string())?;
        b.tick().await.map_err(|e| e.to_string())?;
        b.flush().await.map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.flush().await.map_err(|e| e.to_string())?;
        let bytes = dir_bytes(&dir);
        b.close().await.map_err(|e| e.to_string())?;
        println!(
            "| {keep} | {:.1} MiB | {:.0} |",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / n as f64
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("backlog-bench: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), String> {
    let a = parse_args()?;
    let tmp;
    let root = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("backlog-bench-{}", std::process::id()));
            tmp
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let only = a.only.as_deref();
        if only == Some("lookup") {
            let d = root.join("lookup");
            let _ = std::fs::remove_dir_all(&d);
            lookup(&d, &a).await?;
            let _ = std::fs::remove_dir_all(&d);
            return Ok(());
        }
        if only == Some("keep") {
            return keep_cost(&root, a.messages).await;
        }
        if a.only.as_deref() != Some("stacked") {
            let d = root.join("throughput");
            let _ = std::fs::remove_dir_all(&d);
            throughput(&d, &a).await?;
            let d = root.join("latency");
            let _ = std::fs::remove_dir_all(&d);
            single_appender_latency(&d).await?;
        }
        if a.only.as_deref() != Some("throughput") && a.stacked > 0 {
            let d = root.join("stacked");
            let _ = std::fs::remove_dir_all(&d);
            stacked(&d, &a).await?;
        }
        Ok::<(), String>(())
    })?;
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}
