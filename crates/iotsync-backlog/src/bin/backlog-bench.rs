//! Bench of the embedded backlog (not a test): durable append + lease + ack throughput
//! with concurrent appenders and consumers, and a large stacked backlog (append rate,
//! disk bytes per message, RSS, reopen time).
//!
//! ```text
//! cargo run --release -p iotsync-backlog --bin backlog-bench -- \
//!     [--dir DIR] [--messages 2000000] [--appenders 8] [--batch 64] [--consumers 2] \
//!     [--credit 1000] [--stacked 10000000] [--only throughput|stacked]
//! ```

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
    let (b, _) = EmbeddedBacklog::open(dir, BacklogConfig::default(), system_clock())
        .map_err(|e| e.to_string())?;
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
    println!("messages: {total}, appenders: {}, batch: {}, consumers: {}, credit: {}, ordering keys: 10000", a.appenders, a.batch, a.consumers, a.credit);
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
