//! Cloud API request signatures in the API-gateway style (SPEC §9).
//!
//! ```text
//! string-to-sign = METHOD "\n" Accept "\n" Content-MD5 "\n" Content-Type "\n" Date "\n"
//!                  { lowercase(name) ":" value "\n" }   for each X-Ca-Signature-Headers name, sorted
//!                  path [ "?" k=v { "&" k=v } ]         query sorted by name, then value
//! X-Ca-Signature = Base64(HMAC-SHA256(appSecret, string-to-sign))
//! ```
//!
//! Missing headers contribute empty strings. The server flow is two steps, because the
//! secret depends on the request: [`GatewayCredentials::from_request`] reads `X-Ca-Key`
//! and the rest, the server looks the secret up (and checks the nonce is unused, which
//! needs state and so is not done here), then [`GatewayCredentials::verify`].
//! [`GatewayRequest::string_to_sign`] is there for server-side logs only: it must never
//! go back to a client, and no error here carries it.

use md5::{Digest, Md5};

use super::{
    base64_decode, base64_encode, check_fresh, mac_matches, parse_ms, HmacMethod, SignError,
};
use crate::ids::AppKey;

pub const HEADER_KEY: &str = "X-Ca-Key";
pub const HEADER_TIMESTAMP: &str = "X-Ca-Timestamp";
pub const HEADER_NONCE: &str = "X-Ca-Nonce";
pub const HEADER_SIGNATURE: &str = "X-Ca-Signature";
pub const HEADER_SIGNATURE_METHOD: &str = "X-Ca-Signature-Method";
pub const HEADER_SIGNATURE_HEADERS: &str = "X-Ca-Signature-Headers";
pub const HEADER_CONTENT_MD5: &str = "Content-MD5";
pub const HEADER_CONTENT_TYPE: &str = "Content-Type";
pub const HEADER_ACCEPT: &str = "Accept";
pub const HEADER_DATE: &str = "Date";

/// The only `X-Ca-Signature-Method` accepted.
pub const SIGNATURE_METHOD: &str = "HmacSHA256";

/// Headers every signature must cover (lowercase, sorted).
pub const REQUIRED_SIGNED_HEADERS: [&str; 4] = [
    "x-ca-key",
    "x-ca-nonce",
    "x-ca-signature-method",
    "x-ca-timestamp",
];

const NONCE_MAX_CHARS: usize = 128;

/// The parts of an HTTP request the signature covers.
///
/// `headers` looks a header up by name and must ignore case, as HTTP does (e.g. a
/// closure over `http::HeaderMap::get`). `query` holds the decoded query parameters.
#[derive(Debug, Clone, Copy)]
pub struct GatewayRequest<'a, H> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    pub headers: H,
}

impl<'a, H> GatewayRequest<'a, H>
where
    H: Fn(&str) -> Option<&'a str>,
{
    pub fn header(&self, name: &str) -> Option<&'a str> {
        (self.headers)(name)
    }

    /// The names listed in `X-Ca-Signature-Headers`: trimmed, lowercase, sorted, each once.
    pub fn signed_header_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .header(HEADER_SIGNATURE_HEADERS)
            .unwrap_or("")
            .split(',')
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The exact text the signature is the HMAC of. For server-side logs; never send it
    /// to a client.
    pub fn string_to_sign(&self) -> String {
        let h = |name: &str| self.header(name).unwrap_or("");
        let mut s = String::with_capacity(256);
        for part in [
            self.method,
            h(HEADER_ACCEPT),
            h(HEADER_CONTENT_MD5),
            h(HEADER_CONTENT_TYPE),
            h(HEADER_DATE),
        ] {
            s.push_str(part);
            s.push('\n');
        }
        for name in self.signed_header_names() {
            let value = h(&name);
            s.push_str(&name);
            s.push(':');
            s.push_str(value);
            s.push('\n');
        }
        s.push_str(self.path);
        if !self.query.is_empty() {
            let mut q: Vec<&(&str, &str)> = self.query.iter().collect();
            q.sort();
            s.push('?');
            for (i, (k, v)) in q.into_iter().enumerate() {
                if i > 0 {
                    s.push('&');
                }
                s.push_str(k);
                s.push('=');
                s.push_str(v);
            }
        }
        s
    }
}

/// What a signed request claims, read from its headers before the secret is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCredentials {
    pub app_key: AppKey,
    pub timestamp_ms: i64,
    /// For the server's single-use check.
    pub nonce: String,
    /// As received (Base64).
    pub signature: String,
    /// From `X-Ca-Signature-Headers`, lowercase and sorted.
    pub signed_headers: Vec<String>,
}

impl GatewayCredentials {
    /// Reads and checks the `X-Ca-*` headers: all present, `HmacSHA256`, and a
    /// signed-header list that covers at least [`REQUIRED_SIGNED_HEADERS`].
    pub fn from_request<'a, H>(req: &GatewayRequest<'a, H>) -> Result<Self, SignError>
    where
        H: Fn(&str) -> Option<&'a str>,
    {
        let require = |name: &'static str| {
            req.header(name)
                .filter(|v| !v.is_empty())
                .ok_or(SignError::MissingField { field: name })
        };
        let app_key = require(HEADER_KEY)?
            .parse::<AppKey>()
            .map_err(|e| SignError::malformed(HEADER_KEY, e.reason))?;
        let timestamp_ms = parse_ms(HEADER_TIMESTAMP, require(HEADER_TIMESTAMP)?)?;
        let nonce = require(HEADER_NONCE)?;
        check_nonce(nonce)?;
        let signature = require(HEADER_SIGNATURE)?;
        let method = require(HEADER_SIGNATURE_METHOD)?;
        if !method.eq_ignore_ascii_case(SIGNATURE_METHOD) {
            return Err(SignError::unsupported(
                HEADER_SIGNATURE_METHOD,
                method,
                SIGNATURE_METHOD,
            ));
        }
        require(HEADER_SIGNATURE_HEADERS)?;
        let signed_headers = req.signed_header_names();
        if let Some(missing) = REQUIRED_SIGNED_HEADERS
            .iter()
            .find(|r| !signed_headers.iter().any(|s| s == *r))
        {
            return Err(SignError::malformed(
                HEADER_SIGNATURE_HEADERS,
                format!(
                    "does not list {missing}; it must list at least {}",
                    REQUIRED_SIGNED_HEADERS.join(",")
                ),
            ));
        }
        if signed_headers.iter().any(|s| s == "x-ca-signature") {
            return Err(SignError::malformed(
                HEADER_SIGNATURE_HEADERS,
                "must not list x-ca-signature, which cannot sign itself",
            ));
        }
        Ok(Self {
            app_key,
            timestamp_ms,
            nonce: nonce.to_owned(),
            signature: signature.to_owned(),
            signed_headers,
        })
    }

    /// Checks freshness, `Content-MD5` against `body` (required when the body is not
    /// empty) and the signature, the last in constant time.
    pub fn verify<'a, H>(
        &self,
        req: &GatewayRequest<'a, H>,
        body: &[u8],
        app_secret: &str,
        now_ms: i64,
        window_ms: i64,
    ) -> Result<(), SignError>
    where
        H: Fn(&str) -> Option<&'a str>,
    {
        check_fresh(HEADER_TIMESTAMP, self.timestamp_ms, now_ms, window_ms)?;
        match req.header(HEADER_CONTENT_MD5).filter(|v| !v.is_empty()) {
            Some(claimed) if claimed.trim() != content_md5(body) => {
                return Err(SignError::ContentMd5Mismatch)
            }
            Some(_) => {}
            None if !body.is_empty() => {
                return Err(SignError::MissingField {
                    field: HEADER_CONTENT_MD5,
                })
            }
            None => {}
        }
        let expected = mac(app_secret, &req.string_to_sign());
        mac_matches(&expected, &base64_decode(&self.signature)?)
    }
}

/// Both steps at once, for a caller that already knows the secret.
pub fn verify<'a, H>(
    req: &GatewayRequest<'a, H>,
    body: &[u8],
    app_secret: &str,
    now_ms: i64,
    window_ms: i64,
) -> Result<GatewayCredentials, SignError>
where
    H: Fn(&str) -> Option<&'a str>,
{
    let creds = GatewayCredentials::from_request(req)?;
    creds.verify(req, body, app_secret, now_ms, window_ms)?;
    Ok(creds)
}

fn check_nonce(nonce: &str) -> Result<(), SignError> {
    let n = nonce.chars().count();
    if n > NONCE_MAX_CHARS {
        return Err(SignError::malformed(
            HEADER_NONCE,
            format!("is {n} characters long; at most {NONCE_MAX_CHARS} allowed"),
        ));
    }
    if nonce.chars().any(|c| c.is_control()) {
        return Err(SignError::malformed(
            HEADER_NONCE,
            "contains a control character",
        ));
    }
    Ok(())
}

fn mac(app_secret: &str, string_to_sign: &str) -> Vec<u8> {
    HmacMethod::Sha256.mac(app_secret.as_bytes(), string_to_sign.as_bytes())
}

/// `X-Ca-Signature` for a string-to-sign: Base64(HMAC-SHA256(appSecret, it)).
pub fn sign(app_secret: &str, string_to_sign: &str) -> String {
    base64_encode(&mac(app_secret, string_to_sign))
}

/// `Content-MD5` for a body: Base64(MD5(body)).
pub fn content_md5(body: &[u8]) -> String {
    base64_encode(&Md5::digest(body))
}

/// An outgoing request for the client side to sign.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub accept: &'a str,
    pub content_type: &'a str,
    pub timestamp_ms: i64,
    /// Unique per request, e.g. a UUID.
    pub nonce: &'a str,
}

/// The headers that sign `req` with `app_key`/`app_secret`, `X-Ca-Signature` included,
/// covering exactly [`REQUIRED_SIGNED_HEADERS`]. `Content-MD5` is sent only with a body.
pub fn sign_request(
    app_key: &AppKey,
    app_secret: &str,
    req: &OutgoingRequest<'_>,
) -> Vec<(&'static str, String)> {
    let mut headers: Vec<(&'static str, String)> = vec![
        (HEADER_ACCEPT, req.accept.to_owned()),
        (HEADER_CONTENT_TYPE, req.content_type.to_owned()),
        (HEADER_KEY, app_key.to_string()),
        (HEADER_TIMESTAMP, req.timestamp_ms.to_string()),
        (HEADER_NONCE, req.nonce.to_owned()),
        (HEADER_SIGNATURE_METHOD, SIGNATURE_METHOD.to_owned()),
        (HEADER_SIGNATURE_HEADERS, REQUIRED_SIGNED_HEADERS.join(",")),
    ];
    if !req.body.is_empty() {
        headers.push((HEADER_CONTENT_MD5, content_md5(req.body)));
    }
    let to_sign = {
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        GatewayRequest {
            method: req.method,
            path: req.path,
            query: req.query,
            headers: lookup,
        }
        .string_to_sign()
    };
    headers.push((HEADER_SIGNATURE, sign(app_secret, &to_sign)));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::FRESHNESS_WINDOW_MS;

    const NOW: i64 = 1_700_000_000_000;
    const SECRET: &str = "app-secret";
    const BODY: &[u8] = br#"{"id":"1","version":"1.0","request":{"apiVer":"1.0.0"},"params":{}}"#;

    type Headers = Vec<(String, String)>;

    fn signed_headers(body: &[u8], query: &[(&str, &str)]) -> Headers {
        sign_request(
            &"12345678".parse().unwrap(),
            SECRET,
            &OutgoingRequest {
                method: "POST",
                path: "/cloud/token",
                query,
                body,
                accept: "application/json",
                content_type: "application/json; charset=utf-8",
                timestamp_ms: NOW,
                nonce: "5a2b3c4d-0000-4000-8000-000000000001",
            },
        )
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn set(h: &mut Headers, name: &str, value: &str) {
        h.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        h.push((name.to_owned(), value.to_owned()));
    }

    fn remove(h: &mut Headers, name: &str) {
        h.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    fn lookup<'h>(h: &'h Headers) -> impl Fn(&str) -> Option<&'h str> + 'h {
        move |name| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn check(
        h: &Headers,
        body: &[u8],
        query: &[(&str, &str)],
    ) -> Result<GatewayCredentials, SignError> {
        let req = GatewayRequest {
            method: "POST",
            path: "/cloud/token",
            query,
            headers: lookup(h),
        };
        verify(&req, body, SECRET, NOW + 1_000, FRESHNESS_WINDOW_MS)
    }

    #[test]
    fn request_signed_by_the_client_verifies_and_exposes_nonce_and_timestamp() {
        let h = signed_headers(BODY, &[]);
        let c = check(&h, BODY, &[]).unwrap();
        assert_eq!(c.app_key.as_str(), "12345678");
        assert_eq!(c.timestamp_ms, NOW);
        assert_eq!(c.nonce, "5a2b3c4d-0000-4000-8000-000000000001");
        assert_eq!(c.signed_headers, REQUIRED_SIGNED_HEADERS);
    }

    #[test]
    fn string_to_sign_follows_the_spec_layout() {
        let h: Headers = [
            ("accept", "application/json"),
            ("content-md5", "MD5=="),
            ("content-type", "application/json"),
            ("x-ca-key", "12345678"),
            ("x-ca-timestamp", "1700000000000"),
            ("x-ca-nonce", "n1"),
            ("x-ca-signature-method", "HmacSHA256"),
            (
                "x-ca-signature-headers",
                "X-Ca-Timestamp, x-ca-key,x-ca-nonce,x-ca-signature-method,x-ca-stage",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let req = GatewayRequest {
            method: "GET",
            path: "/cloud/thing/info/get",
            query: &[("b", "2"), ("a", "1"), ("c", "")],
            headers: lookup(&h),
        };
        assert_eq!(
            req.string_to_sign(),
            "GET\napplication/json\nMD5==\napplication/json\n\n\
             x-ca-key:12345678\nx-ca-nonce:n1\nx-ca-signature-method:HmacSHA256\n\
             x-ca-stage:\nx-ca-timestamp:1700000000000\n\
             /cloud/thing/info/get?a=1&b=2&c="
        );
    }

    #[test]
    fn query_parameters_are_signed_in_name_order() {
        let q = [("pageSize", "10"), ("pageNo", "1")];
        let h = signed_headers(BODY, &q);
        check(&h, BODY, &[("pageNo", "1"), ("pageSize", "10")]).unwrap();
        assert_eq!(
            check(&h, BODY, &[("pageNo", "2"), ("pageSize", "10")]),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn empty_body_needs_no_content_md5() {
        let h = signed_headers(b"", &[]);
        assert!(!h.iter().any(|(k, _)| k == HEADER_CONTENT_MD5));
        check(&h, b"", &[]).unwrap();
    }

    #[test]
    fn non_empty_body_without_content_md5_is_refused_naming_it() {
        let mut h = signed_headers(b"", &[]);
        remove(&mut h, HEADER_CONTENT_MD5);
        let e = check(&h, BODY, &[]).unwrap_err();
        assert_eq!(
            e,
            SignError::MissingField {
                field: HEADER_CONTENT_MD5
            }
        );
        assert!(e.to_string().contains("Content-MD5"), "{e}");
    }

    #[test]
    fn tampered_body_fails_content_md5() {
        let h = signed_headers(BODY, &[]);
        assert_eq!(check(&h, b"{}", &[]), Err(SignError::ContentMd5Mismatch));
    }

    #[test]
    fn each_missing_required_header_is_named() {
        for name in [
            HEADER_KEY,
            HEADER_TIMESTAMP,
            HEADER_NONCE,
            HEADER_SIGNATURE,
            HEADER_SIGNATURE_METHOD,
            HEADER_SIGNATURE_HEADERS,
        ] {
            let mut h = signed_headers(BODY, &[]);
            remove(&mut h, name);
            let e = check(&h, BODY, &[]).unwrap_err();
            assert_eq!(e, SignError::MissingField { field: name });
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn signature_method_other_than_hmac_sha256_is_refused() {
        let mut h = signed_headers(BODY, &[]);
        set(&mut h, HEADER_SIGNATURE_METHOD, "HmacSHA1");
        let e = check(&h, BODY, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                SignError::Unsupported {
                    field: HEADER_SIGNATURE_METHOD,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn signed_header_list_must_cover_the_required_headers() {
        let mut h = signed_headers(BODY, &[]);
        set(
            &mut h,
            HEADER_SIGNATURE_HEADERS,
            "x-ca-key,x-ca-timestamp,x-ca-signature-method",
        );
        let e = check(&h, BODY, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: HEADER_SIGNATURE_HEADERS,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("x-ca-nonce"), "{e}");
    }

    #[test]
    fn signed_header_list_may_not_include_the_signature() {
        let mut h = signed_headers(BODY, &[]);
        set(
            &mut h,
            HEADER_SIGNATURE_HEADERS,
            "x-ca-key,x-ca-nonce,x-ca-signature-method,x-ca-timestamp,x-ca-signature",
        );
        let e = check(&h, BODY, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: HEADER_SIGNATURE_HEADERS,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn non_numeric_timestamp_is_refused_naming_it() {
        let mut h = signed_headers(BODY, &[]);
        set(&mut h, HEADER_TIMESTAMP, "2024-01-01");
        let e = check(&h, BODY, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: HEADER_TIMESTAMP,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn stale_timestamp_is_refused() {
        let h = signed_headers(BODY, &[]);
        let req = GatewayRequest {
            method: "POST",
            path: "/cloud/token",
            query: &[],
            headers: lookup(&h),
        };
        let e = verify(
            &req,
            BODY,
            SECRET,
            NOW + FRESHNESS_WINDOW_MS + 1,
            FRESHNESS_WINDOW_MS,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                SignError::Stale {
                    field: HEADER_TIMESTAMP,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let h = signed_headers(BODY, &[]);
        let req = GatewayRequest {
            method: "POST",
            path: "/cloud/token",
            query: &[],
            headers: lookup(&h),
        };
        assert_eq!(
            verify(&req, BODY, "other", NOW, FRESHNESS_WINDOW_MS),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn changing_a_signed_header_method_or_path_breaks_the_signature() {
        let mut h = signed_headers(BODY, &[]);
        set(&mut h, HEADER_NONCE, "another-nonce");
        assert_eq!(check(&h, BODY, &[]), Err(SignError::BadSignature));

        let h = signed_headers(BODY, &[]);
        for (method, path) in [("PUT", "/cloud/token"), ("POST", "/cloud/thing/info/get")] {
            let req = GatewayRequest {
                method,
                path,
                query: &[],
                headers: lookup(&h),
            };
            assert_eq!(
                verify(&req, BODY, SECRET, NOW, FRESHNESS_WINDOW_MS),
                Err(SignError::BadSignature)
            );
        }
    }

    #[test]
    fn bad_signature_error_does_not_carry_the_string_to_sign() {
        let h = signed_headers(BODY, &[]);
        let req = GatewayRequest {
            method: "POST",
            path: "/cloud/token",
            query: &[],
            headers: lookup(&h),
        };
        let e = verify(&req, BODY, "other", NOW, FRESHNESS_WINDOW_MS).unwrap_err();
        assert!(!format!("{e:?}{e}").contains("/cloud/token"));
    }

    #[test]
    fn content_md5_is_base64_of_the_md5_digest() {
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }
}
