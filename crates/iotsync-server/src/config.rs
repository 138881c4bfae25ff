//! Configuration: compiled-in default (`config/iotsync.toml`) → `--config` file →
//! `IOTSYNC_*` environment → flags. Unknown keys are refused; `validate()` names the
//! key's path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Most AMQP connection threads (`amqp.io_threads`).
pub const MAX_IO_THREADS: usize = 64;

pub const DEFAULT_TOML: &str = include_str!("../../../config/iotsync.toml");

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub backlog: BacklogUrlConfig,
    pub node: NodeConfig,
    pub api: ApiConfig,
    pub delivery: DeliveryConfig,
    pub tls: TlsConfig,
    pub amqp: AmqpConfig,
    pub http2: Http2Config,
    pub mqtt: MqttConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub alerts: AlertsConfig,
}

/// `[alerts]`: the consumer-group alert evaluator and the operator webhook
/// (docs/alerts.md). Thresholds themselves are runtime settings, in the store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// How often every group with thresholds is checked.
    pub evaluate_every: HumanDuration,
    /// Empty: no webhook.
    pub webhook_url: String,
    /// The webhook signature's HMAC key.
    pub webhook_secret: String,
}

impl AlertsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            key: format!("alerts.{key}"),
            reason: reason.to_owned(),
        };
        let every = self.evaluate_every.0;
        if every < std::time::Duration::from_millis(100)
            || every > std::time::Duration::from_secs(60)
        {
            return Err(invalid("evaluate_every", "must be between 100ms and 1m"));
        }
        if self.webhook_url.is_empty() {
            return Ok(());
        }
        match reqwest::Url::parse(&self.webhook_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(invalid(
                    "webhook_url",
                    "must be an http:// or https:// URL (or empty: no webhook)",
                ))
            }
        }
        let s = &self.webhook_secret;
        if s.chars().count() < 16 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "webhook_secret",
                "must be at least 16 characters without whitespace when alerts.webhook_url is set",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub url: String,
}

/// Where the backlog lives: empty = the embedded engine under data_dir; else NATS
/// JetStream servers (`nats://h1:4222,nats://h2:4222`) and the node keeps no messages.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BacklogUrlConfig {
    pub url: String,
}

/// `[node]`: this node's name in logs, metrics and the console.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Empty: the host name and the API port (`host:7880`), or the process id when the
    /// API port is chosen at start (port 0).
    pub name: String,
}

impl ServerConfig {
    /// The node's name: `node.name`, or the default above.
    pub fn node_name(&self) -> String {
        if !self.node.name.is_empty() {
            return self.node.name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        match self.api.listen.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => format!("{host}:{}", a.port()),
            _ => format!("{host}:pid{}", std::process::id()),
        }
    }
}

fn validate_node_name(name: &str) -> Result<(), ConfigError> {
    let ok = name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key: "node.name".into(),
            reason: "at most 64 letters, digits, '-', '_', '.' or ':' (or empty: host name and API port)".into(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: String,
    pub operator_token: String,
    pub max_body_bytes: usize,
}

/// A duration written for people: "30s", "5m", "1day", "7days", "250ms".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub std::time::Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a duration (e.g. \"30s\", \"5m\", \"1day\"): {e}"
                ))
            })
    }
}

/// A size written for people: "32 MiB", "512KiB", "1 GiB", "4096" (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl std::str::FromStr for HumanSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (e.g. \"32 MiB\", \"512KiB\")"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" => 1 << 10,
            "MiB" | "M" | "MB" => 1 << 20,
            "GiB" | "G" | "GB" => 1 << 30,
            u => return Err(format!("{s:?}: unknown unit {u:?} (B, KiB, MiB or GiB)")),
        };
        n.checked_mul(mult)
            .map(HumanSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    pub ack_timeout: HumanDuration,
    pub retry_initial: HumanDuration,
    pub retry_factor: f64,
    pub retry_max: HumanDuration,
    pub retry_jitter: f64,
    pub retention_amqp: HumanDuration,
    pub retention_http2: HumanDuration,
    pub connects_per_minute: u32,
    /// Memory for the backlog index's per-message slots; beyond it they go to a spill
    /// file, so memory does not grow with the backlog.
    pub index_memory: HumanSize,
    /// New projects keep acknowledged messages until retention (seek needs them).
    #[serde(default = "keep_acknowledged_default")]
    pub keep_acknowledged: bool,
    /// Expired messages stay this long as traces (lookups answer "expired").
    #[serde(default = "expired_trace_default")]
    pub expired_trace: HumanDuration,
}

fn keep_acknowledged_default() -> bool {
    true
}

fn expired_trace_default() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(3600))
}

impl DeliveryConfig {
    pub fn retention(&self) -> crate::delivery::controller::RetentionPolicy {
        crate::delivery::controller::RetentionPolicy {
            amqp: self.retention_amqp.0,
            http2: self.retention_http2.0,
        }
    }

    pub fn backlog_config(&self) -> iotsync_backlog::BacklogConfig {
        iotsync_backlog::BacklogConfig {
            ack_timeout: self.ack_timeout.0,
            retry: iotsync_backlog::RetryPolicy {
                initial: self.retry_initial.0,
                factor: self.retry_factor,
                max: self.retry_max.0,
                jitter: self.retry_jitter,
            },
            default_retention: self.retention_amqp.0,
            index_memory_bytes: usize::try_from(self.index_memory.0).unwrap_or(usize::MAX),
            keep_acknowledged: self.keep_acknowledged,
            expired_trace: self.expired_trace.0,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    pub listen: String,
    pub tls_listen: String,
    /// Threads that run AMQP connections, each its own event loop; 0: one per core.
    pub io_threads: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Config {
    pub listen: String,
    pub tls_listen: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub listen: String,
    pub tls_listen: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: String,
}

// ---- limits: connection caps and time-outs of every listener (docs/security.md) ----

/// `[limits.*]`: one table per listener family, the same keys in each; every cap counts
/// per listener (a plain and a TLS listener each have their own).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub api: ApiLimits,
    pub amqp: AmqpLimits,
    pub http2: Http2Limits,
    pub mqtt: MqttLimits,
}

/// `[limits.api]`: the REST API, cloud API and console listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiLimits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub header_read_timeout: HumanDuration,
    pub body_timeout: HumanDuration,
    pub idle_timeout: HumanDuration,
}

/// `[limits.amqp]`: the AMQP listeners (plain and TLS).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpLimits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub handshake_timeout: HumanDuration,
    pub max_frame_size: HumanSize,
}

/// `[limits.http2]`: the gRPC listeners (h2c and TLS).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Limits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub handshake_timeout: HumanDuration,
    pub idle_timeout: HumanDuration,
}

/// `[limits.mqtt]`: the device gateway listeners (plain and TLS).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttLimits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub handshake_timeout: HumanDuration,
}

/// Smallest frame size AMQP allows a peer to announce (MIN-MAX-FRAME-SIZE).
pub const AMQP_MIN_MAX_FRAME_SIZE: u64 = 512;

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: format!("limits.{key}"),
            reason,
        };
        let caps = [
            (
                "api",
                self.api.max_connections,
                self.api.max_connections_per_source,
            ),
            (
                "amqp",
                self.amqp.max_connections,
                self.amqp.max_connections_per_source,
            ),
            (
                "http2",
                self.http2.max_connections,
                self.http2.max_connections_per_source,
            ),
            (
                "mqtt",
                self.mqtt.max_connections,
                self.mqtt.max_connections_per_source,
            ),
        ];
        for (l, total, per_source) in caps {
            if !(1..=1_000_000).contains(&total) {
                return Err(invalid(
                    &format!("{l}.max_connections"),
                    "must be between 1 and 1000000".into(),
                ));
            }
            if per_source == 0 || per_source > total {
                return Err(invalid(
                    &format!("{l}.max_connections_per_source"),
                    format!("must be between 1 and limits.{l}.max_connections ({total})"),
                ));
            }
        }
        let second = std::time::Duration::from_secs(1);
        let hour = std::time::Duration::from_secs(3600);
        for (key, d) in [
            ("api.header_read_timeout", self.api.header_read_timeout),
            ("api.body_timeout", self.api.body_timeout),
            ("api.idle_timeout", self.api.idle_timeout),
            ("amqp.handshake_timeout", self.amqp.handshake_timeout),
            ("http2.handshake_timeout", self.http2.handshake_timeout),
            ("http2.idle_timeout", self.http2.idle_timeout),
            ("mqtt.handshake_timeout", self.mqtt.handshake_timeout),
        ] {
            if d.0 < std::time::Duration::from_millis(100) || d.0 > hour {
                return Err(invalid(key, "must be between 100ms and 1h".into()));
            }
        }
        // The AMQP spec wants the receiver link within 15 s of connecting (SPEC §6).
        if self.amqp.handshake_timeout.0 > 15 * second {
            return Err(invalid(
                "amqp.handshake_timeout",
                "must be at most 15s (a receiver link is due within 15 s of connecting)".into(),
            ));
        }
        let f = self.amqp.max_frame_size.0;
        if !(AMQP_MIN_MAX_FRAME_SIZE..=16 << 20).contains(&f) {
            return Err(invalid(
                "amqp.max_frame_size",
                "must be between 512 B and 16 MiB".into(),
            ));
        }
        Ok(())
    }
}

/// `[auth]`: sign-in throttles and the device password's timestamp window
/// (docs/security.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub failures_per_credential: u32,
    pub failures_per_source: u32,
    pub backoff_initial: HumanDuration,
    pub backoff_max: HumanDuration,
    pub throttle_max_entries: usize,
    /// Zero: device timestamps are not checked.
    pub device_timestamp_window: HumanDuration,
    pub device_timestamp_required: bool,
}

/// `IOTSYNC_AUTH_*`: each names the `[auth]` key it sets.
#[derive(Debug, Clone, Default)]
pub struct AuthOverrides {
    pub values: Vec<(&'static str, String)>,
}

/// `[auth]` keys and their environment variables.
const AUTH_ENV: &[(&str, &str)] = &[
    (
        "failures_per_credential",
        "IOTSYNC_AUTH_FAILURES_PER_CREDENTIAL",
    ),
    ("failures_per_source", "IOTSYNC_AUTH_FAILURES_PER_SOURCE"),
    ("backoff_initial", "IOTSYNC_AUTH_BACKOFF_INITIAL"),
    ("backoff_max", "IOTSYNC_AUTH_BACKOFF_MAX"),
    ("throttle_max_entries", "IOTSYNC_AUTH_THROTTLE_MAX_ENTRIES"),
    (
        "device_timestamp_window",
        "IOTSYNC_AUTH_DEVICE_TIMESTAMP_WINDOW",
    ),
    (
        "device_timestamp_required",
        "IOTSYNC_AUTH_DEVICE_TIMESTAMP_REQUIRED",
    ),
];

impl AuthOverrides {
    fn from_env(get: &impl Fn(&str) -> Option<String>) -> Self {
        Self {
            values: AUTH_ENV
                .iter()
                .filter_map(|(key, var)| get(var).map(|v| (*key, v)))
                .collect(),
        }
    }

    fn apply(self, c: &mut AuthConfig) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e| ConfigError::Invalid {
                key: format!("auth.{key}"),
                reason: format!("{v:?} (from IOTSYNC_AUTH_{}): {e}", key.to_uppercase()),
            })
        }
        let dur = |key: &str, v: &str| {
            humantime::parse_duration(v.trim())
                .map(HumanDuration)
                .map_err(|e| ConfigError::Invalid {
                    key: format!("auth.{key}"),
                    reason: format!("{v:?} is not a duration (e.g. \"30s\", \"15m\"): {e}"),
                })
        };
        for (key, v) in self.values {
            match key {
                "failures_per_credential" => c.failures_per_credential = parse(key, &v)?,
                "failures_per_source" => c.failures_per_source = parse(key, &v)?,
                "backoff_initial" => c.backoff_initial = dur(key, &v)?,
                "backoff_max" => c.backoff_max = dur(key, &v)?,
                "throttle_max_entries" => c.throttle_max_entries = parse(key, &v)?,
                "device_timestamp_window" => c.device_timestamp_window = dur(key, &v)?,
                "device_timestamp_required" => c.device_timestamp_required = parse(key, &v)?,
                _ => {}
            }
        }
        Ok(())
    }
}

impl AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            key: format!("auth.{key}"),
            reason: reason.to_owned(),
        };
        if self.failures_per_source < self.failures_per_credential {
            return Err(invalid(
                "failures_per_source",
                "must be at least auth.failures_per_credential",
            ));
        }
        if self.backoff_initial.0 < std::time::Duration::from_millis(10)
            || self.backoff_max.0 < self.backoff_initial.0
        {
            return Err(invalid(
                "backoff_max",
                "must be at least auth.backoff_initial, which must be at least 10ms",
            ));
        }
        if self.backoff_max.0 > std::time::Duration::from_secs(86_400) {
            return Err(invalid("backoff_max", "must be at most 1day"));
        }
        if !(100..=10_000_000).contains(&self.throttle_max_entries) {
            return Err(invalid(
                "throttle_max_entries",
                "must be between 100 and 10000000",
            ));
        }
        let w = self.device_timestamp_window.0;
        if !w.is_zero() && w < std::time::Duration::from_secs(1) {
            return Err(invalid(
                "device_timestamp_window",
                "must be at least 1s (or \"0s\": not checked)",
            ));
        }
        Ok(())
    }
}

impl AmqpLimits {
    /// The frame-size limit in the form AMQP announces it.
    pub fn max_frame_size(&self) -> u32 {
        u32::try_from(self.max_frame_size.0).unwrap_or(u32::MAX)
    }
}

// ---- end of limits ----

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("config key {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("reading config file {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
}

/// Values given by the environment or by flags; `None` keeps the lower layer's value.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    pub data_dir: Option<PathBuf>,
    pub store_url: Option<String>,
    pub backlog_url: Option<String>,
    pub node_name: Option<String>,
    pub api_listen: Option<String>,
    pub operator_token: Option<String>,
    pub amqp_listen: Option<String>,
    pub amqps_listen: Option<String>,
    pub http2_listen: Option<String>,
    pub http2_tls_listen: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub mqtt_listen: Option<String>,
    pub mqtts_listen: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub alert_webhook_url: Option<String>,
    pub alert_webhook_secret: Option<String>,
    pub auth: AuthOverrides,
}

/// The environment variables read, and the override each one sets.
pub const ENV_VARS: &[&str] = &[
    "IOTSYNC_DATA_DIR",
    "IOTSYNC_STORE_URL",
    "IOTSYNC_BACKLOG_URL",
    "IOTSYNC_NODE_NAME",
    "IOTSYNC_API_LISTEN",
    "IOTSYNC_OPERATOR_TOKEN",
    "IOTSYNC_AMQP_LISTEN",
    "IOTSYNC_AMQPS_LISTEN",
    "IOTSYNC_HTTP2_LISTEN",
    "IOTSYNC_HTTP2_TLS_LISTEN",
    "IOTSYNC_TLS_CERT_FILE",
    "IOTSYNC_TLS_KEY_FILE",
    "IOTSYNC_MQTT_LISTEN",
    "IOTSYNC_MQTTS_LISTEN",
    "IOTSYNC_LOG_LEVEL",
    "IOTSYNC_LOG_FORMAT",
    "IOTSYNC_ALERT_WEBHOOK_URL",
    "IOTSYNC_ALERT_WEBHOOK_SECRET",
    "IOTSYNC_AUTH_FAILURES_PER_CREDENTIAL",
    "IOTSYNC_AUTH_FAILURES_PER_SOURCE",
    "IOTSYNC_AUTH_BACKOFF_INITIAL",
    "IOTSYNC_AUTH_BACKOFF_MAX",
    "IOTSYNC_AUTH_THROTTLE_MAX_ENTRIES",
    "IOTSYNC_AUTH_DEVICE_TIMESTAMP_WINDOW",
    "IOTSYNC_AUTH_DEVICE_TIMESTAMP_REQUIRED",
];

impl ConfigOverrides {
    /// Reads the `IOTSYNC_*` variables through `get` (the process environment in main).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            data_dir: get("IOTSYNC_DATA_DIR").map(PathBuf::from),
            store_url: get("IOTSYNC_STORE_URL"),
            backlog_url: get("IOTSYNC_BACKLOG_URL"),
            node_name: get("IOTSYNC_NODE_NAME"),
            api_listen: get("IOTSYNC_API_LISTEN"),
            operator_token: get("IOTSYNC_OPERATOR_TOKEN"),
            amqp_listen: get("IOTSYNC_AMQP_LISTEN"),
            amqps_listen: get("IOTSYNC_AMQPS_LISTEN"),
            http2_listen: get("IOTSYNC_HTTP2_LISTEN"),
            http2_tls_listen: get("IOTSYNC_HTTP2_TLS_LISTEN"),
            tls_cert_file: get("IOTSYNC_TLS_CERT_FILE"),
            tls_key_file: get("IOTSYNC_TLS_KEY_FILE"),
            mqtt_listen: get("IOTSYNC_MQTT_LISTEN"),
            mqtts_listen: get("IOTSYNC_MQTTS_LISTEN"),
            log_level: get("IOTSYNC_LOG_LEVEL"),
            log_format: get("IOTSYNC_LOG_FORMAT"),
            alert_webhook_url: get("IOTSYNC_ALERT_WEBHOOK_URL"),
            alert_webhook_secret: get("IOTSYNC_ALERT_WEBHOOK_SECRET"),
            auth: AuthOverrides::from_env(&get),
        }
    }

    /// Every listener on 127.0.0.1 port 0 (a free port each), for tests and for running
    /// several servers side by side.
    pub fn ephemeral_listeners(mut self) -> Self {
        let any = || Some("127.0.0.1:0".to_string());
        self.api_listen = any();
        self.amqp_listen = any();
        self.amqps_listen = any();
        self.http2_listen = any();
        self.http2_tls_listen = any();
        self.mqtt_listen = any();
        self.mqtts_listen = any();
        self
    }

    fn apply(self, c: &mut ServerConfig) -> Result<(), ConfigError> {
        macro_rules! set {
            ($src:expr, $dst:expr) => {
                if let Some(v) = $src {
                    $dst = v;
                }
            };
        }
        set!(self.data_dir, c.data_dir);
        set!(self.store_url, c.store.url);
        set!(self.backlog_url, c.backlog.url);
        set!(self.node_name, c.node.name);
        set!(self.api_listen, c.api.listen);
        set!(self.operator_token, c.api.operator_token);
        set!(self.amqp_listen, c.amqp.listen);
        set!(self.amqps_listen, c.amqp.tls_listen);
        set!(self.http2_listen, c.http2.listen);
        set!(self.http2_tls_listen, c.http2.tls_listen);
        set!(self.tls_cert_file, c.tls.cert_file);
        set!(self.tls_key_file, c.tls.key_file);
        set!(self.mqtt_listen, c.mqtt.listen);
        set!(self.mqtts_listen, c.mqtt.tls_listen);
        set!(self.log_level, c.log.level);
        set!(self.log_format, c.log.format);
        set!(self.alert_webhook_url, c.alerts.webhook_url);
        set!(self.alert_webhook_secret, c.alerts.webhook_secret);
        self.auth.apply(&mut c.auth)
    }
}

fn parse_toml(source_name: &str, text: &str) -> Result<toml::Value, ConfigError> {
    text.parse::<toml::Value>().map_err(|e| ConfigError::Parse {
        source_name: source_name.to_owned(),
        message: e.to_string(),
    })
}

/// Deep-merges `over` into `base` (tables merge key by key, other values replace).
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(bv) => merge(bv, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

impl ServerConfig {
    /// The compiled-in defaults.
    pub fn defaults() -> Self {
        // The default file is part of the binary and covered by a test.
        Self::layered(None, ConfigOverrides::default(), ConfigOverrides::default())
            .unwrap_or_else(|e| panic!("built-in config/iotsync.toml is invalid: {e}"))
    }

    /// Builds the configuration from every layer and validates it.
    pub fn layered(
        file: Option<(&str, &str)>,
        env: ConfigOverrides,
        flags: ConfigOverrides,
    ) -> Result<Self, ConfigError> {
        let mut value = parse_toml("built-in defaults", DEFAULT_TOML)?;
        if let Some((name, text)) = file {
            let over = parse_toml(name, text)?;
            merge(&mut value, over);
        }
        let source = file.map(|f| f.0).unwrap_or("built-in defaults");
        let mut c: ServerConfig =
            value
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    source_name: source.to_owned(),
                    message: e.to_string(),
                })?;
        env.apply(&mut c)?;
        flags.apply(&mut c)?;
        c.validate()?;
        Ok(c)
    }

    pub fn load(
        file: Option<&Path>,
        env: ConfigOverrides,
        flags: ConfigOverrides,
    ) -> Result<Self, ConfigError> {
        match file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|err| ConfigError::Read {
                    path: p.to_owned(),
                    err,
                })?;
                Self::layered(Some((&p.display().to_string(), &text)), env, flags)
            }
            None => Self::layered(None, env, flags),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_owned(),
            reason,
        };
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty".into()));
        }
        for (key, addr) in [
            ("api.listen", &self.api.listen),
            ("amqp.listen", &self.amqp.listen),
            ("amqp.tls_listen", &self.amqp.tls_listen),
            ("http2.listen", &self.http2.listen),
            ("http2.tls_listen", &self.http2.tls_listen),
            ("mqtt.listen", &self.mqtt.listen),
            ("mqtt.tls_listen", &self.mqtt.tls_listen),
        ] {
            if !addr.is_empty() {
                addr.parse::<SocketAddr>().map_err(|e| {
                    invalid(
                        key,
                        format!("{addr:?} is not a socket address (host:port): {e}"),
                    )
                })?;
            }
        }
        if self.tls.cert_file.is_empty() != self.tls.key_file.is_empty() {
            return Err(invalid(
                "tls.key_file",
                "tls.cert_file and tls.key_file are given together (or both left empty)".into(),
            ));
        }
        if self.api.listen.is_empty() {
            return Err(invalid("api.listen", "must not be empty".into()));
        }
        let url = &self.store.url;
        if !(url.is_empty()
            || url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return Err(invalid(
                "store.url",
                "must be empty, sqlite:… or postgres://…".into(),
            ));
        }
        if !self.backlog.url.is_empty()
            && self.backlog.url.split(',').any(|u| {
                let u = u.trim();
                !(u.starts_with("nats://") || u.starts_with("tls://")) || u.len() < 8
            })
        {
            return Err(invalid(
                "backlog.url",
                "must be empty or nats://host:port[,nats://host:port…]".into(),
            ));
        }
        validate_node_name(&self.node.name)?;
        let t = &self.api.operator_token;
        if !t.is_empty() && (t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid(
                "api.operator_token",
                "must be at least 16 characters without whitespace".into(),
            ));
        }
        if self.api.max_body_bytes < 1024 {
            return Err(invalid(
                "api.max_body_bytes",
                "must be at least 1024".into(),
            ));
        }
        let d = &self.delivery;
        if d.ack_timeout.0 < std::time::Duration::from_millis(100) {
            return Err(invalid(
                "delivery.ack_timeout",
                "must be at least 100ms".into(),
            ));
        }
        if d.retry_initial.0.is_zero() || d.retry_max.0 < d.retry_initial.0 {
            return Err(invalid(
                "delivery.retry_max",
                "must be at least delivery.retry_initial, which must be above 0".into(),
            ));
        }
        if !(1.0..=10.0).contains(&d.retry_factor) {
            return Err(invalid(
                "delivery.retry_factor",
                "must be between 1.0 and 10.0".into(),
            ));
        }
        if !(0.0..=1.0).contains(&d.retry_jitter) {
            return Err(invalid(
                "delivery.retry_jitter",
                "must be between 0.0 and 1.0".into(),
            ));
        }
        if d.retention_amqp.0 < std::time::Duration::from_secs(1)
            || d.retention_http2.0 < std::time::Duration::from_secs(1)
        {
            return Err(invalid(
                "delivery.retention_amqp",
                "retentions must be at least 1s".into(),
            ));
        }
        if d.connects_per_minute == 0 {
            return Err(invalid(
                "delivery.connects_per_minute",
                "must be at least 1".into(),
            ));
        }
        if d.index_memory.0 < 64 << 10 {
            return Err(invalid(
                "delivery.index_memory",
                "must be at least 64 KiB".into(),
            ));
        }
        if self.amqp.io_threads > MAX_IO_THREADS {
            return Err(invalid(
                "amqp.io_threads",
                format!("must be at most {MAX_IO_THREADS} (0: one per CPU core)"),
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", "must be \"text\" or \"json\"".into()));
        }
        self.limits.validate()?;
        self.auth.validate()?;
        self.alerts.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_with_binary_units_and_bad_ones_are_named() {
        assert_eq!("32 MiB".parse::<HumanSize>(), Ok(HumanSize(32 << 20)));
        assert_eq!("512KiB".parse::<HumanSize>(), Ok(HumanSize(512 << 10)));
        assert_eq!("1 GiB".parse::<HumanSize>(), Ok(HumanSize(1 << 30)));
        assert_eq!("4096".parse::<HumanSize>(), Ok(HumanSize(4096)));
        assert!("12 parsecs"
            .parse::<HumanSize>()
            .unwrap_err()
            .contains("unknown unit"));
        assert!("MiB"
            .parse::<HumanSize>()
            .unwrap_err()
            .contains("not a size"));
        assert!("99999999999 GiB"
            .parse::<HumanSize>()
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn built_in_defaults_are_valid_and_avoid_broker_ports() {
        let c = ServerConfig::defaults();
        for a in [
            &c.api.listen,
            &c.amqp.listen,
            &c.amqp.tls_listen,
            &c.http2.listen,
            &c.http2.tls_listen,
            &c.mqtt.listen,
            &c.mqtt.tls_listen,
        ] {
            let port = a.parse::<SocketAddr>().unwrap().port();
            assert!(![5672, 5671, 1883, 8883].contains(&port), "{a}");
        }
    }

    #[test]
    fn backlog_url_comes_from_file_env_or_flag_and_must_be_nats_urls() {
        let c = ServerConfig::defaults();
        assert_eq!(c.backlog.url, "", "the embedded engine by default");
        let env = ConfigOverrides::from_env(|k| {
            (k == "IOTSYNC_BACKLOG_URL").then(|| "nats://h1:4222,nats://h2:4222".to_owned())
        });
        let c = ServerConfig::layered(None, env, ConfigOverrides::default()).unwrap();
        assert_eq!(c.backlog.url, "nats://h1:4222,nats://h2:4222");
        let file = "[backlog]\nurl = \"nats://f:4222\"\n";
        let c = ServerConfig::layered(
            Some(("t.toml", file)),
            Default::default(),
            Default::default(),
        )
        .unwrap();
        assert_eq!(c.backlog.url, "nats://f:4222");
        let bad = ConfigOverrides {
            backlog_url: Some("postgres://x".into()),
            ..Default::default()
        };
        let e = ServerConfig::layered(None, Default::default(), bad).unwrap_err();
        assert!(e.to_string().contains("backlog.url"), "{e}");
    }

    #[test]
    fn node_name_comes_from_file_env_or_flag_and_is_checked() {
        let c = ServerConfig::defaults();
        assert_eq!(c.node.name, "");
        assert!(c.node_name().ends_with(":7880"), "{}", c.node_name());
        let env =
            ConfigOverrides::from_env(|k| (k == "IOTSYNC_NODE_NAME").then(|| "n1.eu".to_owned()));
        let c = ServerConfig::layered(None, env, ConfigOverrides::default()).unwrap();
        assert_eq!(c.node_name(), "n1.eu");
        let eph = ServerConfig::layered(
            None,
            Default::default(),
            ConfigOverrides::default().ephemeral_listeners(),
        )
        .unwrap();
        assert!(eph.node_name().contains(":pid"), "{}", eph.node_name());
        for bad in ["two words", "n/1", &"x".repeat(65)] {
            let o = ConfigOverrides {
                node_name: Some(bad.to_string()),
                ..Default::default()
            };
            let e = ServerConfig::layered(None, Default::default(), o).unwrap_err();
            assert!(e.to_string().contains("node.name"), "{bad}: {e}");
        }
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let env = ConfigOverrides {
            api_listen: Some("127.0.0.1:1".into()),
            data_dir: Some("/env".into()),
            ..Default::default()
        };
        let flags = ConfigOverrides {
            api_listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let file = "data_dir = \"/file\"\n[log]\nlevel = \"debug\"\n";
        let c = ServerConfig::layered(Some(("f.toml", file)), env, flags).unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:2");
        assert_eq!(c.data_dir, PathBuf::from("/env"));
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.log.format, "text");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = ServerConfig::layered(
            Some(("f.toml", "[api]\nlisten_addr = \"x\"\n")),
            Default::default(),
            Default::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }

    #[test]
    fn durations_are_human_readable() {
        let c = ServerConfig::defaults();
        assert_eq!(c.delivery.ack_timeout.0, std::time::Duration::from_secs(30));
        assert_eq!(
            c.delivery.retention_http2.0,
            std::time::Duration::from_secs(7 * 86_400)
        );
        let e = ServerConfig::layered(
            Some(("f.toml", "[delivery]\nack_timeout = \"soon\"\n")),
            Default::default(),
            Default::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ack_timeout"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let flags = ConfigOverrides {
            amqp_listen: Some("nope".into()),
            ..Default::default()
        };
        let e = ServerConfig::layered(None, Default::default(), flags).unwrap_err();
        assert!(e.to_string().contains("amqp.listen"), "{e}");
        let e = ServerConfig::layered(
            Some(("f.toml", "[api]\noperator_token = \"short\"\n")),
            Default::default(),
            Default::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("api.operator_token"), "{e}");
        for (file, key, says) in [
            (
                "[delivery]\nindex_memory = \"1 KiB\"\n",
                "index_memory",
                "at least 64 KiB",
            ),
            (
                "[delivery]\nindex_memory = \"12 parsecs\"\n",
                "index_memory",
                "unknown unit",
            ),
            ("[amqp]\nio_threads = 65\n", "io_threads", "at most 64"),
            ("[amqp]\nio_threads = -1\n", "io_threads", "invalid value"),
        ] {
            let e = ServerConfig::layered(
                Some(("f.toml", file)),
                Default::default(),
                Default::default(),
            )
            .unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains(key) && e.contains(says), "{e}");
        }
    }

    #[test]
    fn listener_limits_have_defaults_and_bad_ones_name_their_key() {
        let c = ServerConfig::defaults();
        assert_eq!(c.limits.api.max_connections, 1024);
        assert_eq!(c.limits.amqp.max_frame_size(), 64 * 1024);
        assert_eq!(
            c.limits.http2.idle_timeout.0,
            std::time::Duration::from_secs(120)
        );
        for (file, key, says) in [
            (
                "[limits.api]\nmax_connections = 0\n",
                "limits.api.max_connections",
                "between 1",
            ),
            (
                "[limits.mqtt]\nmax_connections_per_source = 5000\n",
                "limits.mqtt.max_connections_per_source",
                "limits.mqtt.max_connections (4096)",
            ),
            (
                "[limits.api]\nbody_timeout = \"0s\"\n",
                "limits.api.body_timeout",
                "100ms",
            ),
            (
                "[limits.amqp]\nhandshake_timeout = \"20s\"\n",
                "limits.amqp.handshake_timeout",
                "at most 15s",
            ),
            (
                "[limits.amqp]\nmax_frame_size = \"100\"\n",
                "limits.amqp.max_frame_size",
                "512 B",
            ),
            ("[limits.http2]\nidle = \"1s\"\n", "idle", "unknown field"),
        ] {
            let e = ServerConfig::layered(
                Some(("f.toml", file)),
                Default::default(),
                Default::default(),
            )
            .unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains(key) && e.contains(says), "{e}");
        }
    }

    #[test]
    fn the_alert_webhook_comes_from_the_environment_and_needs_a_secret() {
        let env = |pairs: &[(&'static str, &'static str)]| {
            let pairs = pairs.to_vec();
            ConfigOverrides::from_env(move |k| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            })
        };
        let d = ServerConfig::defaults();
        assert!(d.alerts.webhook_url.is_empty());
        assert_eq!(d.alerts.evaluate_every.0, std::time::Duration::from_secs(1));
        let c = ServerConfig::layered(
            None,
            env(&[
                ("IOTSYNC_ALERT_WEBHOOK_URL", "https://ops.example.com/hook"),
                ("IOTSYNC_ALERT_WEBHOOK_SECRET", "0123456789abcdef"),
            ]),
            Default::default(),
        )
        .unwrap();
        assert_eq!(c.alerts.webhook_url, "https://ops.example.com/hook");
        assert_eq!(c.alerts.webhook_secret, "0123456789abcdef");
        for (pairs, file, key) in [
            (
                &[("IOTSYNC_ALERT_WEBHOOK_URL", "https://ops.example.com/hook")][..],
                "",
                "alerts.webhook_secret",
            ),
            (
                &[
                    ("IOTSYNC_ALERT_WEBHOOK_URL", "ftp://ops.example.com/"),
                    ("IOTSYNC_ALERT_WEBHOOK_SECRET", "0123456789abcdef"),
                ][..],
                "",
                "alerts.webhook_url",
            ),
            (
                &[][..],
                "[alerts]\nevaluate_every = \"10ms\"\n",
                "alerts.evaluate_every",
            ),
        ] {
            let file = (!file.is_empty()).then_some(("f.toml", file));
            let e = ServerConfig::layered(file, env(pairs), Default::default()).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn auth_keys_come_from_the_environment_and_bad_ones_are_named() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            ConfigOverrides::from_env(|k| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            })
        };
        let c = ServerConfig::layered(
            None,
            env(&[
                ("IOTSYNC_AUTH_FAILURES_PER_CREDENTIAL", "3"),
                ("IOTSYNC_AUTH_BACKOFF_MAX", "2m"),
                ("IOTSYNC_AUTH_DEVICE_TIMESTAMP_WINDOW", "0s"),
                ("IOTSYNC_AUTH_DEVICE_TIMESTAMP_REQUIRED", "true"),
            ]),
            Default::default(),
        )
        .unwrap();
        assert_eq!(c.auth.failures_per_credential, 3);
        assert_eq!(c.auth.failures_per_source, 50);
        assert_eq!(c.auth.backoff_max.0, std::time::Duration::from_secs(120));
        assert!(c.auth.device_timestamp_window.0.is_zero());
        assert!(c.auth.device_timestamp_required);
        let d = ServerConfig::defaults();
        assert_eq!(
            d.auth.device_timestamp_window.0,
            std::time::Duration::from_secs(15 * 60)
        );
        for (pairs, key) in [
            (
                &[("IOTSYNC_AUTH_BACKOFF_INITIAL", "soon")][..],
                "auth.backoff_initial",
            ),
            (
                &[("IOTSYNC_AUTH_FAILURES_PER_SOURCE", "-1")][..],
                "auth.failures_per_source",
            ),
            (
                &[("IOTSYNC_AUTH_FAILURES_PER_SOURCE", "2")][..],
                "auth.failures_per_source",
            ),
            (
                &[("IOTSYNC_AUTH_DEVICE_TIMESTAMP_WINDOW", "10ms")][..],
                "auth.device_timestamp_window",
            ),
            (
                &[("IOTSYNC_AUTH_THROTTLE_MAX_ENTRIES", "1")][..],
                "auth.throttle_max_entries",
            ),
        ] {
            let e = ServerConfig::layered(None, env(pairs), Default::default()).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }
}
