//! Extractors whose failures are API errors naming the field: JSON bodies (with the
//! path of the offending field), query strings and path identifiers; and the caller's
//! address for the sign-in throttles.

use std::str::FromStr;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use iotsync_core::ids::IdError;

/// A JSON body; a malformed one answers 400 `invalid_json` / `invalid_argument` with the
/// field path.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        read_json(req, state, None).await.map(ApiJson)
    }
}

/// A JSON body that may be left out entirely (then `T::default()`).
pub struct ApiJsonOrEmpty<T>(pub T);

impl<S, T> FromRequest<S> for ApiJsonOrEmpty<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        read_json(req, state, Some(T::default))
            .await
            .map(ApiJsonOrEmpty)
    }
}

async fn read_json<S: Send + Sync, T: DeserializeOwned>(
    req: Request,
    state: &S,
    when_empty: Option<fn() -> T>,
) -> Result<T, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("could not read the body: {e}"),
            )
        })?;
    if bytes.is_empty() {
        if let Some(default) = when_empty {
            return Ok(default());
        }
    }
    if !ct.starts_with("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON with Content-Type: application/json",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.to_string();
            if inner.is_syntax() || inner.is_eof() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("the body is not valid JSON: {msg}"),
                ));
            }
            let field = field_of(&path, &msg);
            Err(ApiError::invalid(&field, format!("{field}: {msg}")))
        }
    }
}

/// The field a serde error is about: the path, or for a missing/unknown field its name.
/// An unknown field with an empty name (`{"": 1}`) is about the body (or the object at
/// the path): `field` is never empty.
fn field_of(path: &str, msg: &str) -> String {
    let quoted = msg
        .split('`')
        .nth(1)
        .filter(|name| !name.is_empty())
        .filter(|_| msg.starts_with("missing field") || msg.starts_with("unknown field"));
    // The path of an unknown field ends in that field's own key, which may be empty.
    let path = match path.trim_end_matches('.') {
        "" => ".",
        p => p,
    };
    match (path, quoted) {
        (".", Some(name)) => name.to_owned(),
        (p, Some(name)) if msg.starts_with("missing field") => format!("{p}.{name}"),
        (".", None) => "body".to_owned(),
        (p, _) => p.to_owned(),
    }
}

/// A query string; bad values answer 400 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize::<_, T>(de)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                let msg = e.into_inner().to_string();
                let field = field_of(&path, &msg);
                ApiError::invalid(&field, format!("query parameter {field}: {msg}"))
            })
    }
}

/// Parses a path or body identifier into its newtype.
pub fn id<T: FromStr<Err = IdError>>(field: &str, s: &str) -> Result<T, ApiError> {
    s.parse::<T>().map_err(|e| ApiError::bad_id(field, e))
}

/// The address a request came from (the TCP peer), for the sign-in throttles: from
/// axum's `ConnectInfo<SocketAddr>` or tonic's `TcpConnectInfo`, whichever the listener
/// puts in the request's extensions. A listener giving neither would make every caller
/// one address (an attacker could then slow the real operator down), so that is logged
/// as an error. Forwarded-for headers are not trusted: anyone can write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIp(pub std::net::IpAddr);

impl PeerIp {
    pub fn of(ext: &axum::http::Extensions) -> Self {
        use axum::extract::ConnectInfo;
        let ip = ext
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
            .or_else(|| {
                ext.get::<tonic::transport::server::TcpConnectInfo>()
                    .and_then(|c| c.remote_addr)
                    .map(|a| a.ip())
            });
        PeerIp(ip.unwrap_or_else(|| {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                tracing::error!(
                    "the API listener gives no peer address: sign-in throttles count every caller as one"
                )
            });
            std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        }))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerIp::of(&parts.extensions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_field_with_an_empty_name_is_about_the_body() {
        let msg = "unknown field ``, expected `items` at line 1 column 3";
        // serde_path_to_error puts the unknown key itself on the path.
        assert_eq!(field_of("", msg), "body");
        assert_eq!(field_of("items.", msg), "items");
        let named = "unknown field `x`, expected `items` at line 1 column 3";
        assert_eq!(field_of(".", named), "x");
        let missing = "missing field `items` at line 1 column 2";
        assert_eq!(field_of(".", missing), "items");
    }

    #[test]
    fn the_peer_address_comes_from_axum_or_tonic_connect_info() {
        let addr: std::net::SocketAddr = "192.0.2.9:4242".parse().unwrap();
        let mut a = axum::http::Extensions::new();
        a.insert(axum::extract::ConnectInfo(addr));
        assert_eq!(PeerIp::of(&a).0, addr.ip());
        let mut t = axum::http::Extensions::new();
        t.insert(tonic::transport::server::TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(addr),
        });
        assert_eq!(PeerIp::of(&t).0, addr.ip());
        assert!(PeerIp::of(&axum::http::Extensions::new())
            .0
            .is_unspecified());
    }
}
