//! Console sessions: signing in with the operator token gives a random session token in
//! an `HttpOnly; SameSite=Strict` cookie; the registry keeps SHA-256(token) → (CSRF token,
//! expiry). `/api/v1` accepts such a cookie in place of the bearer token, and for every
//! state-changing call also wants the header `X-CSRF-Token` to match the session's token
//! (a page of another site can make the browser send the cookie, never that header).
//!
//! Sessions live in the registry (issue 13), so every node sharing it accepts a session
//! made on any of them and a sign-out on one ends it on all at once: there is no
//! in-process cache, every cookie-authenticated call reads its row (one primary-key
//! lookup). Only the token's hash is stored, so the table signs nobody in. Each session
//! remembers a fingerprint of the operator token it proved: servers with different
//! operator tokens never accept each other's sessions, even on one registry.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use iotsync_store::ConsoleSession;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, PeerIp};
use crate::api::{ApiState, OPERATOR_CREDENTIAL};

/// The cookie holding the session token.
pub const COOKIE: &str = "iotsync_session";
/// The header a cookie-authenticated state-changing call must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Absolute session lifetime (no sliding renewal: sign in again after it).
pub const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;
/// Upper bound on live sessions; the one expiring soonest is dropped beyond it.
const MAX_SESSIONS: usize = 10_000;

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What the registry stores for a session token.
fn token_hash(token: &str) -> String {
    sha256_hex(&[token.as_bytes()])
}

/// Which operator token a session proved (domain-separated from the token hash).
fn operator_fp(operator_token: &str) -> String {
    sha256_hex(&[b"iotsync console operator\0", operator_token.as_bytes()])
}

/// The session id from the request's `Cookie` headers, if any.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// What `require_operator` asks when a request has no bearer token: `None` without a
/// session cookie; else whether the session is live (and, for a write, the CSRF header
/// matches).
pub async fn authorize(
    st: &ApiState,
    headers: &HeaderMap,
    method: &Method,
) -> Option<Result<(), ApiError>> {
    let id = session_id(headers)?;
    Some(check(st, &id, headers, method).await.map(|_| ()))
}

/// The live session's CSRF token and expiry.
async fn check(
    st: &ApiState,
    id: &str,
    headers: &HeaderMap,
    method: &Method,
) -> Result<(String, i64), ApiError> {
    let now = st.clock.now_ms();
    let row = st.registry.console_session(&token_hash(id), now).await?;
    let fp = operator_fp(&st.operator_token);
    let Some(s) = row.filter(|s| bool::from(s.operator_fp.as_bytes().ct_eq(fp.as_bytes()))) else {
        return Err(ApiError::unauthorized(
            "the console session has expired or is not valid; sign in again",
        ));
    };
    if !is_safe(method) {
        let given = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(s.csrf_token.as_bytes())) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "a console call that changes something needs the X-CSRF-Token header of its session",
            ));
        }
    }
    Ok((s.csrf_token, s.expires_at))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub token: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub csrf_token: String,
    pub expires_at: i64,
}

fn cookie(headers: &HeaderMap, value: &str, max_age_s: i64) -> Option<HeaderValue> {
    // Behind a TLS-terminating proxy the cookie is marked Secure as well.
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let s = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&s).ok()
}

/// `POST /console/session {token}`: signs in. JSON only, so a plain cross-site form
/// cannot post it.
///
/// Wrong tokens are throttled per address, shared with the REST bearer check (the same
/// secret): 429 `auth.throttled` with `Retry-After` while the address waits.
pub async fn sign_in(
    State(st): State<ApiState>,
    PeerIp(ip): PeerIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SignIn>,
) -> Result<Response, ApiError> {
    let given = body.token.trim();
    if given.is_empty() {
        return Err(ApiError::invalid("token", "enter the operator token"));
    }
    let throttle = &st.throttles.operator;
    let checked = match throttle.check(ip, OPERATOR_CREDENTIAL).await {
        Ok(c) => c,
        Err(wait) => {
            tracing::info!(peer = %ip, retry_after_s = wait.seconds(), "console sign-in throttled");
            return Ok(wait.into_response());
        }
    };
    if !bool::from(given.as_bytes().ct_eq(st.operator_token.as_bytes())) {
        throttle.note_failure(ip, OPERATOR_CREDENTIAL).await;
        tracing::info!(peer = %ip, "console sign-in with a wrong token");
        return Err(ApiError::unauthorized("the operator token is not valid").with_field("token"));
    }
    throttle
        .note_success(ip, OPERATOR_CREDENTIAL, checked)
        .await;
    let now = st.clock.now_ms();
    let id = random_hex(32);
    let csrf = random_hex(32);
    let expires_at = now + SESSION_TTL_MS;
    st.registry
        .create_console_session(
            &ConsoleSession {
                token_hash: token_hash(&id),
                operator_fp: operator_fp(&st.operator_token),
                csrf_token: csrf.clone(),
                created_at: now,
                expires_at,
            },
            now,
            MAX_SESSIONS,
        )
        .await?;
    tracing::info!("console sign-in");
    let mut resp = Json(SessionView {
        csrf_token: csrf,
        expires_at,
    })
    .into_response();
    if let Some(c) = cookie(&headers, &id, SESSION_TTL_MS / 1000) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `GET /console/session`: the live session's CSRF token (read by the page at load).
pub async fn current(State(st): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let id = session_id(&headers)
        .ok_or_else(|| ApiError::unauthorized("not signed in to the console"))?;
    let (csrf, expires_at) = check(&st, &id, &headers, &Method::GET).await?;
    let mut resp = Json(SessionView {
        csrf_token: csrf,
        expires_at,
    })
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `DELETE /console/session`: signs out (needs the CSRF header like every write).
pub async fn sign_out(
    State(st): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(id) = session_id(&headers) {
        match check(&st, &id, &headers, &Method::DELETE).await {
            Ok(_) => {
                st.registry.delete_console_session(&token_hash(&id)).await?;
            }
            // Unknown or expired: nothing to end, the cookie is cleared all the same.
            Err(e) if e.status == StatusCode::UNAUTHORIZED => {}
            Err(e) => return Err(e),
        }
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Some(c) = cookie(&headers, "", 0) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(resp)
}

/// Whether a request carries a live session (for the console's own read-only routes).
pub async fn signed_in(st: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    match authorize(st, headers, &Method::GET).await {
        Some(r) => r,
        None => Err(ApiError::unauthorized("not signed in to the console")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_session_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; iotsync_session=abc ; b=2"),
        );
        assert_eq!(session_id(&h).as_deref(), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("iotsync_session=xyz"),
        );
        assert_eq!(session_id(&h).as_deref(), Some("xyz"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("iotsync_session="));
        assert_eq!(session_id(&h), None);
    }

    #[test]
    fn only_reads_are_safe_without_the_csrf_header() {
        assert!(is_safe(&Method::GET));
        assert!(!is_safe(&Method::POST));
        assert!(!is_safe(&Method::PUT));
        assert!(!is_safe(&Method::DELETE));
        assert!(!is_safe(&Method::PATCH));
    }

    #[test]
    fn the_stored_hash_is_not_the_token_and_operator_fingerprints_differ() {
        let t = random_hex(32);
        assert_ne!(token_hash(&t), t);
        assert_eq!(token_hash(&t).len(), 64);
        assert_ne!(operator_fp("a"), operator_fp("b"));
        assert_ne!(operator_fp(&t), token_hash(&t));
    }

    #[test]
    fn session_ids_are_long_and_random() {
        let a = random_hex(32);
        assert_eq!(a.len(), 64);
        assert_ne!(a, random_hex(32));
    }
}
