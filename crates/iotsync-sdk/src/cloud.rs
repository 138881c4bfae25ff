//! A cloud API client (SPEC §9): signs every request in the API-gateway style with the
//! project's appKey/appSecret, gets a cloud token and renews it before it expires (or
//! when the server says it is no longer valid), and unwraps the `{id, code, message,
//! data}` answer.
//!
//! ```no_run
//! # async fn demo() -> Result<(), iotsync_sdk::cloud::CloudError> {
//! use iotsync_sdk::cloud::{CloudClient, CloudConfig};
//! let client = CloudClient::new(CloudConfig::new(
//!     "http://127.0.0.1:8080", "appKey", "appSecret", "projectId",
//! ))?;
//! let status = client
//!     .call("/cloud/thing/status/get", serde_json::json!({"iotId": "..."}))
//!     .await?;
//! # let _ = status; Ok(()) }
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::Mutex;

use iotsync_core::sign::api_gateway::{sign_request, OutgoingRequest};
use iotsync_core::AppKey;

/// Codes of the cloud API answer (HTTP status is 200 for all of them).
pub mod code {
    pub const SUCCESS: i64 = 200;
    pub const SIGNATURE: i64 = 401;
    pub const FORBIDDEN: i64 = 403;
    pub const NOT_FOUND: i64 = 404;
    pub const BAD_PARAMETER: i64 = 460;
    pub const DEVICE_OFFLINE: i64 = 9201;
    pub const DEVICE_TIMEOUT: i64 = 9202;
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("unexpected answer (HTTP {status}): {body}")]
    Unexpected { status: u16, body: String },
    /// The platform answered with a code other than 200.
    #[error("cloud API code {code}: {message}")]
    Api { code: i64, message: String },
}

impl CloudError {
    /// The answer code, when the platform answered.
    pub fn code(&self) -> Option<i64> {
        match self {
            CloudError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// `http(s)://host:port` of the API listener.
    pub endpoint: String,
    pub app_key: String,
    pub app_secret: String,
    pub project_id: String,
    pub api_ver: String,
    /// Renew the token this long before it expires.
    pub renew_before: Duration,
    pub timeout: Duration,
}

impl CloudConfig {
    pub fn new(endpoint: &str, app_key: &str, app_secret: &str, project_id: &str) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            app_key: app_key.to_owned(),
            app_secret: app_secret.to_owned(),
            project_id: project_id.to_owned(),
            api_ver: "1.0.0".into(),
            renew_before: Duration::from_secs(300),
            timeout: Duration::from_secs(30),
        }
    }
}

struct Token {
    value: String,
    expires_at_ms: i64,
}

pub struct CloudClient {
    cfg: CloudConfig,
    app_key: AppKey,
    http: reqwest::Client,
    token: Mutex<Option<Token>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl CloudClient {
    pub fn new(cfg: CloudConfig) -> Result<Self, CloudError> {
        let app_key: AppKey = cfg.app_key.parse().map_err(|e: iotsync_core::IdError| {
            CloudError::Config(format!("appKey: {}", e.reason))
        })?;
        let http = reqwest::Client::builder().timeout(cfg.timeout).build()?;
        Ok(Self {
            cfg,
            app_key,
            http,
            token: Mutex::new(None),
        })
    }

    /// One signed POST: the `data` of a 200 answer, else the answer's code and message.
    pub async fn call_raw(
        &self,
        path: &str,
        params: Value,
        cloud_token: Option<&str>,
    ) -> Result<Value, CloudError> {
        let mut request = json!({"apiVer": self.cfg.api_ver});
        if let Some(t) = cloud_token {
            request["cloudToken"] = json!(t);
        }
        let body = serde_json::to_vec(&json!({
            "id": nonce(), "version": "1.0", "request": request, "params": params,
        }))
        .map_err(|e| CloudError::Config(e.to_string()))?;
        let nonce = nonce();
        let headers = sign_request(
            &self.app_key,
            &self.cfg.app_secret,
            &OutgoingRequest {
                method: "POST",
                path,
                query: &[],
                body: &body,
                accept: "application/json",
                content_type: "application/json; charset=utf-8",
                timestamp_ms: now_ms(),
                nonce: &nonce,
            },
        );
        let mut req = self
            .http
            .post(format!("{}{}", self.cfg.endpoint, path))
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let v: Value = serde_json::from_str(&text).map_err(|_| CloudError::Unexpected {
            status,
            body: text.chars().take(500).collect(),
        })?;
        match v.get("code").and_then(Value::as_i64) {
            Some(code::SUCCESS) => Ok(v.get("data").cloned().unwrap_or(Value::Null)),
            Some(code) => Err(CloudError::Api {
                code,
                message: v
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }),
            None => Err(CloudError::Unexpected {
                status,
                body: text.chars().take(500).collect(),
            }),
        }
    }

    /// Gets a new cloud token (the previous one stops working).
    pub async fn refresh_token(&self) -> Result<String, CloudError> {
        let mut slot = self.token.lock().await;
        self.fetch_token(&mut slot).await
    }

    async fn fetch_token(&self, slot: &mut Option<Token>) -> Result<String, CloudError> {
        let data = self
            .call_raw(
                "/cloud/token",
                json!({"grantType": "project", "res": self.cfg.project_id}),
                None,
            )
            .await?;
        let value = data
            .get("cloudToken")
            .and_then(Value::as_str)
            .ok_or_else(|| CloudError::Unexpected {
                status: 200,
                body: data.to_string(),
            })?
            .to_owned();
        let expire_in = data.get("expireIn").and_then(Value::as_i64).unwrap_or(0);
        *slot = Some(Token {
            value: value.clone(),
            expires_at_ms: now_ms() + expire_in,
        });
        Ok(value)
    }

    /// The live token, fetched or renewed when missing or about to expire.
    pub async fn token(&self) -> Result<String, CloudError> {
        let mut slot = self.token.lock().await;
        let margin = self.cfg.renew_before.as_millis() as i64;
        match &*slot {
            Some(t) if t.expires_at_ms - margin > now_ms() => Ok(t.value.clone()),
            _ => self.fetch_token(&mut slot).await,
        }
    }

    /// Calls an operation with the cloud token; on a 401 about the token it gets a new
    /// one and tries once more.
    pub async fn call(&self, path: &str, params: Value) -> Result<Value, CloudError> {
        let t = self.token().await?;
        match self.call_raw(path, params.clone(), Some(&t)).await {
            Err(CloudError::Api { code: 401, message }) if message.contains("cloudToken") => {
                let t = self.refresh_token().await?;
                self.call_raw(path, params, Some(&t)).await
            }
            r => r,
        }
    }
}
