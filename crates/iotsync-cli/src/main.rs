//! The `iotsync` binary.

mod admin;
mod consume;
mod consume_amqp;
mod consume_http2;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use iotsync_server::{ConfigOverrides, ServerConfig, TokenSource};

/// mimalloc instead of the system allocator: fe2o3's per-frame buffers, the AMQP messages
/// and the backlog's leases allocate a few dozen times per delivered message, and glibc's
/// malloc/free/realloc were ~30 % of the server's instructions per message
/// (`docs/benchmarks.md`, AMQP channel).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// iotsync keeps enterprise servers in sync with an IoT platform's device data and user
/// data, over AMQP 1.0 or HTTP/2, with at-least-once delivery and a durable backlog.
#[derive(Debug, Parser)]
#[command(name = "iotsync", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform: REST API, console, cloud API, device gateway, delivery.
    ///
    /// With no options it runs on the embedded store in ./iotsync-data and needs no
    /// other service. Options come from flags, then IOTSYNC_* environment variables,
    /// then --config FILE, then the built-in defaults (see `iotsync config-defaults`).
    Serve(Box<ServeArgs>),
    /// Consume a project's sync messages (prints JSON lines; for testing and debugging).
    #[command(subcommand)]
    Consume(consume::ConsumeCommand),
    /// Print the built-in default configuration, every key commented.
    ConfigDefaults,
    /// Operate a running server over its REST API (projects, products, devices, sync,
    /// consumer groups, stats, dead letters, import). Exit codes: 1 unreachable,
    /// 2 usage, 3 unauthorized, 4 not found, 5 refused, 6 server error, 7 bad input.
    Admin(admin::AdminArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// A TOML config file (keys as in `iotsync config-defaults`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the embedded registry, the backlog and the operator token live.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Registry database URL: sqlite://… or postgres://… (default: embedded SQLite).
    #[arg(long, value_name = "URL")]
    store_url: Option<String>,
    /// Backlog on NATS JetStream: nats://h1:4222,nats://h2:4222 (default: embedded).
    #[arg(long, value_name = "URLS")]
    backlog_url: Option<String>,
    /// This node's name in logs, metrics and the console (default: host name + API port).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// REST API, cloud API and console address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<String>,
    /// Plain AMQP 1.0 listener (development).
    #[arg(long, value_name = "ADDR")]
    amqp_listen: Option<String>,
    /// AMQP 1.0 over TLS listener.
    #[arg(long, value_name = "ADDR")]
    amqps_listen: Option<String>,
    /// HTTP/2 (gRPC) consumer listener.
    #[arg(long, value_name = "ADDR")]
    http2_listen: Option<String>,
    /// HTTP/2 (gRPC) consumer listener over TLS.
    #[arg(long, value_name = "ADDR")]
    http2_tls_listen: Option<String>,
    /// TLS certificate chain (PEM) for amqps, HTTP/2 TLS and mqtts (default: a generated
    /// self-signed development pair in the data dir).
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    tls_cert_file: Option<String>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    tls_key_file: Option<String>,
    /// MQTT device gateway, plain.
    #[arg(long, value_name = "ADDR")]
    mqtt_listen: Option<String>,
    /// MQTT device gateway, TLS.
    #[arg(long, value_name = "ADDR")]
    mqtts_listen: Option<String>,
    /// Operator bearer token for /api/v1 (default: generated into the data dir).
    #[arg(long, value_name = "TOKEN")]
    operator_token: Option<String>,
    /// Log filter, e.g. info or iotsync=debug.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Operator webhook for consumer-group alerts: a signed JSON POST when a group starts
    /// and stops alerting (docs/alerts.md). Needs --alert-webhook-secret.
    #[arg(long, value_name = "URL")]
    alert_webhook_url: Option<String>,
    /// HMAC-SHA256 key of the alert webhook's X-Iotsync-Signature (at least 16
    /// characters). Prefer IOTSYNC_ALERT_WEBHOOK_SECRET: a flag shows in `ps`.
    #[arg(long, value_name = "SECRET")]
    alert_webhook_secret: Option<String>,
}

fn init_logs(cfg: &ServerConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&cfg.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let flags = ConfigOverrides {
        data_dir: args.data_dir,
        store_url: args.store_url,
        backlog_url: args.backlog_url,
        node_name: args.node_name,
        api_listen: args.api_listen,
        operator_token: args.operator_token,
        amqp_listen: args.amqp_listen,
        amqps_listen: args.amqps_listen,
        http2_listen: args.http2_listen,
        http2_tls_listen: args.http2_tls_listen,
        tls_cert_file: args.tls_cert_file,
        tls_key_file: args.tls_key_file,
        mqtt_listen: args.mqtt_listen,
        mqtts_listen: args.mqtts_listen,
        log_level: args.log_level,
        log_format: args.log_format,
        alert_webhook_url: args.alert_webhook_url,
        alert_webhook_secret: args.alert_webhook_secret,
        // No flags for [auth]: file and IOTSYNC_AUTH_* only.
        ..Default::default()
    };
    let env = ConfigOverrides::from_env(|k| std::env::var(k).ok());
    let cfg = ServerConfig::load(args.config.as_deref(), env, flags)?;
    init_logs(&cfg);
    let server = iotsync_server::start(cfg, iotsync_core::clock::system_clock())
        .await
        .context("starting iotsync")?;
    // The banner goes to stdout so scripts and tests can read the chosen addresses. A
    // reader that stopped reading (a closed pipe) must not take the server down:
    // `println!` would panic on EPIPE, so each line is written and its error ignored.
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    macro_rules! println {
        ($($t:tt)*) => {{
            let _ = writeln!(stdout, $($t)*);
        }};
    }
    println!("iotsync {} ready", env!("CARGO_PKG_VERSION"));
    println!("  data dir:       {}", server.data_dir.display());
    println!("  registry:       {}", server.store_description);
    println!(
        "  api listening:  http://{}  (REST /api/v1, OpenAPI /api/v1/openapi.json)",
        server.api_addr
    );
    let r = &server.recovery;
    println!(
        "  backlog:        {} messages recovered from {} segments in {} ms{}{}",
        r.messages,
        r.segments,
        r.duration_ms,
        if r.torn_tail.is_some() {
            "; torn tail of an interrupted write cut off"
        } else {
            ""
        },
        if r.damaged.is_empty() {
            String::new()
        } else {
            format!("; {} DAMAGED ranges skipped (see log)", r.damaged.len())
        },
    );
    for l in &server.listeners {
        println!("  {:<15} {}", format!("{} listening:", l.name), l.url);
    }
    if server.tls.generated {
        println!(
            "  tls:            self-signed development certificate {}",
            server.tls.cert_file.display()
        );
    }
    match &server.token_source {
        TokenSource::Config => println!("  operator token: from configuration"),
        TokenSource::File(p) => println!("  operator token: in {}", p.display()),
        TokenSource::Generated(p) => println!("  operator token: generated into {}", p.display()),
    }
    let _ = stdout.flush();
    drop(stdout);
    tracing::info!(api = %server.api_addr, "iotsync started");
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::ConfigDefaults => {
            print!("{}", iotsync_server::config::DEFAULT_TOML);
        }
        Command::Consume(cmd) => runtime()?.block_on(consume::run(cmd))?,
        Command::Serve(args) => runtime()?.block_on(serve(*args))?,
        Command::Admin(a) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            return Ok(rt.block_on(admin::run(a)));
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
