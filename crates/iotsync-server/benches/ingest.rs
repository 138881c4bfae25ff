//! Ingest throughput: property reports through `Ingest::report_properties` (device and
//! product lookups, sync gate, write-behind of last values, durable backlog append), the
//! path of REST reports and MQTT property posts. Not a timed test.
//!
//! `cargo bench -p iotsync-server --bench ingest` (env: REPORTS, REPORTERS, DEVICES)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use iotsync_server::{ConfigOverrides, ServerConfig};

fn env_or(name: &str, d: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process from /proc/self/stat (clock ticks of 1/100 s).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn main() -> anyhow::Result<()> {
    let reports = env_or("REPORTS", 50_000);
    let reporters = env_or("REPORTERS", 64);
    let devices = env_or("DEVICES", 1_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        let flags = ConfigOverrides {
            data_dir: Some(dir.path().to_owned()),
            operator_token: Some("bench-operator-token-000000".into()),
            ..Default::default()
        }
        .ephemeral_listeners();
        let cfg = ServerConfig::layered(None, Default::default(), flags)?;
        let server = iotsync_server::start(cfg, iotsync_core::clock::system_clock()).await?;
        let reg = server.registry();
        let p = reg.create_project("bench", "bench").await?;
        let pid = p.project.project_id.clone();
        reg.apply_sync(
            &pid,
            &iotsync_core::sync_rules::SyncCommand::Enable { method: "amqp".into() },
            "bench",
        )
        .await?;
        server
            .backlog()
            .create_group(&pid, &iotsync_core::ConsumerGroup::default_for(&p.project.app_key), &iotsync_backlog::GroupSpec::all())
            .await?;
        let prod = reg
            .create_product(
                &pid,
                &iotsync_store::NewProduct {
                    name: "Lamp".into(),
                    device_type: "Light".into(),
                    product_key: None,
                },
            )
            .await?;
        let mut iots = Vec::new();
        for i in 0..devices {
            let d = reg
                .create_device(&pid, &prod.product_key, &format!("dev{i:06}").parse()?)
                .await?;
            iots.push(d.device.iot_id);
        }
        let iots = Arc::new(iots);
        let ingest = server.ingest();
        let per = reports / reporters;
        let filler = "x".repeat(180);
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for r in 0..reporters {
            let (ingest, iots, pid, filler) = (ingest.clone(), iots.clone(), pid.clone(), filler.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..per {
                    let iot = &iots[(r * per + n) % iots.len()];
                    let items = json!({"Seq": n, "Note": filler});
                    let items = items.as_object().cloned().unwrap_or_default();
                    ingest.report_properties(&pid, iot, &items).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        ingest.settle_properties().await;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let n = (per * reporters) as f64;
        println!(
            "ingest: {} reports ({} reporters, {} devices) in {:.2} s = {:.0} reports/s, {:.1} µs CPU per report (whole process)",
            per * reporters,
            reporters,
            devices,
            secs,
            n / secs,
            cpu * 1e6 / n
        );
        server.shutdown(std::time::Duration::from_secs(10)).await;
        anyhow::Ok(())
    })
}
