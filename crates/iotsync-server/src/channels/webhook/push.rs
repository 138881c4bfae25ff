//! One legacy push (SPEC §8): the signed form POST and the classification of its answer.

use std::time::Duration;

use iotsync_core::sign::webhook::{self, WebhookFields};
use iotsync_core::AppKey;

/// Why a push did not count as delivered; every variant is retried by the schedule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("receiver answered HTTP {status}")]
    Status { status: u16 },
    #[error("receiver answered HTTP 200 without {{\"code\":200}}: {body}")]
    Body { body: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(String),
}

/// The form fields of one push, signed.
pub fn form(
    app_key: &AppKey,
    app_secret: &str,
    msg_code: &str,
    message: &str,
) -> [(&'static str, String); 4] {
    let sign = webhook::sign(
        &WebhookFields {
            app_key,
            msg_code,
            message,
        },
        app_secret,
    );
    [
        ("appKey", app_key.to_string()),
        ("msgCode", msg_code.to_owned()),
        ("message", message.to_owned()),
        ("sign", sign),
    ]
}

/// Success is HTTP 200 with a JSON body whose `code` is 200 (number or string).
pub fn classify(status: u16, body: &[u8]) -> Result<(), PushError> {
    if status != 200 {
        return Err(PushError::Status { status });
    }
    let ok = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("code").map(|c| match c {
                serde_json::Value::Number(n) => n.as_i64() == Some(200),
                serde_json::Value::String(s) => s.trim() == "200",
                _ => false,
            })
        })
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(PushError::Body {
            body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        })
    }
}

/// Sends one push and classifies the answer.
pub async fn push(
    http: &reqwest::Client,
    url: &str,
    fields: &[(&'static str, String); 4],
    timeout: Duration,
) -> Result<(), PushError> {
    let send = async {
        let resp = http
            .post(url)
            .form(fields)
            .send()
            .await
            .map_err(|e| PushError::Connect(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| PushError::Connect(e.to_string()))?;
        classify(status, &body)
    };
    match tokio::time::timeout(timeout, send).await {
        Ok(r) => r,
        Err(_) => Err(PushError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_200_with_code_200_is_success() {
        assert_eq!(classify(200, br#"{"code":200,"message":"ok"}"#), Ok(()));
        assert_eq!(classify(200, br#"{"code":"200"}"#), Ok(()));
        assert!(matches!(
            classify(200, br#"{"code":500}"#),
            Err(PushError::Body { .. })
        ));
        assert!(matches!(classify(200, b"OK"), Err(PushError::Body { .. })));
        assert_eq!(
            classify(500, br#"{"code":200}"#),
            Err(PushError::Status { status: 500 })
        );
    }

    #[test]
    fn form_carries_the_md5_sign_of_the_legacy_scheme() {
        let k: AppKey = "12345678".parse().unwrap();
        let f = form(&k, "secret", "account.create", r#"{"a":1}"#);
        assert_eq!(f[0], ("appKey", "12345678".to_owned()));
        assert_eq!(f[1].1, "account.create");
        let fields = WebhookFields {
            app_key: &k,
            msg_code: "account.create",
            message: r#"{"a":1}"#,
        };
        webhook::verify(&fields, &f[3].1, "secret").unwrap();
    }
}
