//! One authenticated device's MQTT session as plain state: which topics it may use, what
//! an uplink topic means, Alink request parsing and replies. No I/O, tested beside it.

use serde_json::{json, Map, Value};

use iotsync_core::{DeviceName, ProductKey};

use super::codec::SUBACK_FAILURE;

/// Alink reply codes the gateway sends.
pub mod code {
    pub const SUCCESS: i64 = 200;
    pub const NOT_FOUND: i64 = 404;
    pub const BAD_PARAMS: i64 = 460;
    pub const INTERNAL: i64 = 500;
    /// The server's disk is full: nothing was stored (no PUBACK); the message starts with
    /// the REST code (`store.disk_full` or `backlog.disk_full`).
    pub const DISK_FULL: i64 = 507;
}

/// What an uplink PUBLISH on one of the device's own topics is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uplink {
    PropertyPost,
    EventPost(String),
    /// `_reply` to a property set the cloud sent.
    PropertySetReply,
    /// `_reply` to a service call the cloud sent.
    ServiceReply(String),
    /// A `/sys/…` topic the platform does not serve (gets an error `_reply`).
    UnknownSys(String),
    /// The device's own custom topics (`/${pk}/${dn}/…`): accepted, not synchronized.
    Custom,
}

impl Uplink {
    /// The Alink `method` a request on this topic must carry (when it carries one).
    pub fn method(&self) -> Option<String> {
        match self {
            Uplink::PropertyPost => Some("thing.event.property.post".into()),
            Uplink::EventPost(id) => Some(format!("thing.event.{id}.post")),
            _ => None,
        }
    }
}

/// A device's session state once CONNECT is accepted.
#[derive(Debug, Clone)]
pub struct DeviceSession {
    pub product_key: ProductKey,
    pub device_name: DeviceName,
    sys_prefix: String,
    own_prefix: String,
    pub subscriptions: Vec<(String, u8)>,
}

impl DeviceSession {
    pub fn new(product_key: ProductKey, device_name: DeviceName) -> Self {
        Self {
            sys_prefix: format!("/sys/{product_key}/{device_name}/"),
            own_prefix: format!("/{product_key}/{device_name}/"),
            product_key,
            device_name,
            subscriptions: Vec::new(),
        }
    }

    /// A device may publish only on its own topics, without wildcards.
    pub fn may_publish(&self, topic: &str) -> bool {
        !topic.contains(['+', '#'])
            && (topic.starts_with(&self.sys_prefix) || topic.starts_with(&self.own_prefix))
    }

    /// A filter is the device's own when its literal prefix is the device's prefix; a
    /// wildcard may only appear after it.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        for prefix in [&self.sys_prefix, &self.own_prefix] {
            if let Some(rest) = filter.strip_prefix(prefix.as_str()) {
                return valid_filter_tail(rest);
            }
        }
        false
    }

    /// SUBACK return codes for `filters`, recording the granted ones (QoS at most 1).
    pub fn subscribe(&mut self, filters: &[(String, u8)]) -> Vec<u8> {
        filters
            .iter()
            .map(|(f, q)| {
                if !self.may_subscribe(f) {
                    return SUBACK_FAILURE;
                }
                let granted = (*q).min(1);
                self.subscriptions.retain(|(s, _)| s != f);
                self.subscriptions.push((f.clone(), granted));
                granted
            })
            .collect()
    }

    pub fn unsubscribe(&mut self, filters: &[String]) {
        self.subscriptions.retain(|(s, _)| !filters.contains(s));
    }

    /// What a publish on `topic` (already checked with [`Self::may_publish`]) is.
    pub fn classify(&self, topic: &str) -> Uplink {
        let Some(rest) = topic.strip_prefix(&self.sys_prefix) else {
            return Uplink::Custom;
        };
        if rest == "thing/event/property/post" {
            return Uplink::PropertyPost;
        }
        if rest == "thing/service/property/set_reply" {
            return Uplink::PropertySetReply;
        }
        if let Some(id) = rest
            .strip_prefix("thing/event/")
            .and_then(|r| r.strip_suffix("/post"))
        {
            if !id.contains('/') {
                return Uplink::EventPost(id.to_owned());
            }
        }
        if let Some(id) = rest
            .strip_prefix("thing/service/")
            .and_then(|r| r.strip_suffix("_reply"))
        {
            if !id.contains('/') {
                return Uplink::ServiceReply(id.to_owned());
            }
        }
        Uplink::UnknownSys(rest.to_owned())
    }

    pub fn property_set_topic(&self) -> String {
        format!("{}thing/service/property/set", self.sys_prefix)
    }

    pub fn service_topic(&self, identifier: &str) -> String {
        format!("{}thing/service/{identifier}", self.sys_prefix)
    }
}

fn valid_filter_tail(rest: &str) -> bool {
    let levels: Vec<&str> = rest.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return false;
        }
        if l.contains('+') && *l != "+" {
            return false;
        }
    }
    true
}

/// An Alink request `{id, version, params, method}`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlinkRequest {
    pub id: String,
    pub method: Option<String>,
    pub params: Value,
}

/// Why an uplink was refused: the code and message of the error `_reply`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlinkError {
    pub id: String,
    pub code: i64,
    pub message: String,
}

fn alink_id(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.chars().take(64).collect(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Parses an Alink request for `uplink` (method checked against the topic).
pub fn parse_request(payload: &[u8], uplink: &Uplink) -> Result<AlinkRequest, AlinkError> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| AlinkError {
        id: String::new(),
        code: code::BAD_PARAMS,
        message: format!("request parameter error: payload is not JSON ({e})"),
    })?;
    let Value::Object(mut o) = v else {
        return Err(AlinkError {
            id: String::new(),
            code: code::BAD_PARAMS,
            message: "request parameter error: payload must be a JSON object".into(),
        });
    };
    let id = alink_id(o.get("id"));
    let err = |code: i64, message: String| AlinkError {
        id: id.clone(),
        code,
        message,
    };
    let method = match o.get("method") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => {
            return Err(err(
                code::BAD_PARAMS,
                "request parameter error: method must be a string".into(),
            ))
        }
    };
    if let (Some(m), Some(expected)) = (&method, uplink.method()) {
        if *m != expected {
            return Err(err(
                code::NOT_FOUND,
                format!("method {m:?} is not served on this topic (expected {expected:?})"),
            ));
        }
    }
    let params = o.remove("params").unwrap_or(Value::Null);
    Ok(AlinkRequest { id, method, params })
}

/// The property map of a property post, `{id: value}` or `{id: {value, time}}`.
pub fn property_params(req: &AlinkRequest) -> Result<&Map<String, Value>, AlinkError> {
    match &req.params {
        Value::Object(m) if !m.is_empty() => Ok(m),
        _ => Err(AlinkError {
            id: req.id.clone(),
            code: code::BAD_PARAMS,
            message: "request parameter error: params must be a non-empty object of properties"
                .into(),
        }),
    }
}

/// The event output and time of an event post, `params: {value: {…}, time?}`.
pub fn event_params(req: &AlinkRequest) -> Result<(&Value, Option<i64>), AlinkError> {
    let bad = |m: &str| AlinkError {
        id: req.id.clone(),
        code: code::BAD_PARAMS,
        message: format!("request parameter error: {m}"),
    };
    let Value::Object(p) = &req.params else {
        return Err(bad("params must be an object {value, time}"));
    };
    let value = p
        .get("value")
        .filter(|v| v.is_object())
        .ok_or_else(|| bad("params.value must be an object of output parameters"))?;
    let time = match p.get("time") {
        None | Some(Value::Null) => None,
        Some(t) => Some(
            t.as_i64()
                .ok_or_else(|| bad("params.time must be milliseconds since the epoch"))?,
        ),
    };
    Ok((value, time))
}

/// The `_reply` payload `{id, code, data, message}`.
pub fn reply_payload(id: &str, code: i64, message: &str, data: Value) -> Vec<u8> {
    // Written directly (one per uplink): `{"code","data","id","message"}`, the order
    // `json!` gave, without building a `Value` map first.
    let mut out = Vec::with_capacity(64 + id.len() + message.len());
    out.extend_from_slice(b"{\"code\":");
    out.extend_from_slice(code.to_string().as_bytes());
    out.extend_from_slice(b",\"data\":");
    // Writing JSON values and strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &data);
    out.extend_from_slice(b",\"id\":");
    let _ = serde_json::to_writer(&mut out, id);
    out.extend_from_slice(b",\"message\":");
    let _ = serde_json::to_writer(&mut out, message);
    out.push(b'}');
    out
}

/// Reads a device's `_reply` `{id, code, data, message?}`.
pub fn parse_reply(payload: &[u8]) -> Option<(String, super::sessions::DeviceReply)> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let id = alink_id(v.get("id"));
    if id.is_empty() {
        return None;
    }
    let code = v
        .get("code")
        .and_then(Value::as_i64)
        .unwrap_or(code::SUCCESS);
    Some((
        id,
        super::sessions::DeviceReply {
            code,
            message: v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or(if code == code::SUCCESS { "success" } else { "" })
                .to_owned(),
            data: v.get("data").cloned().unwrap_or_else(|| json!({})),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> DeviceSession {
        DeviceSession::new("pk000001".parse().unwrap(), "lamp".parse().unwrap())
    }

    #[test]
    fn device_uses_only_its_own_topics() {
        let s = s();
        assert!(s.may_publish("/sys/pk000001/lamp/thing/event/property/post"));
        assert!(s.may_publish("/pk000001/lamp/user/update"));
        assert!(!s.may_publish("/sys/pk000001/lamp2/thing/event/property/post"));
        assert!(!s.may_publish("/sys/pk000002/lamp/thing/event/property/post"));
        assert!(!s.may_publish("/sys/pk000001/lamp/+/x"));
        assert!(s.may_subscribe("/sys/pk000001/lamp/thing/service/#"));
        assert!(s.may_subscribe("/sys/pk000001/lamp/#"));
        assert!(s.may_subscribe("/sys/pk000001/lamp/thing/+/property/set"));
        assert!(!s.may_subscribe("/sys/pk000001/+/thing/#"));
        assert!(!s.may_subscribe("#"));
        assert!(!s.may_subscribe("/sys/pk000001/lamp/a#"));
        assert!(!s.may_subscribe("/sys/pk000001/lamp/#/x"));
    }

    #[test]
    fn subscribe_grants_own_filters_at_most_qos_1() {
        let mut s = s();
        let codes = s.subscribe(&[
            ("/sys/pk000001/lamp/thing/service/#".into(), 2),
            ("/sys/pk000001/other/#".into(), 0),
        ]);
        assert_eq!(codes, vec![1, SUBACK_FAILURE]);
        assert_eq!(s.subscriptions.len(), 1);
    }

    #[test]
    fn classifies_uplink_topics() {
        let s = s();
        let p = "/sys/pk000001/lamp/";
        assert_eq!(
            s.classify(&format!("{p}thing/event/property/post")),
            Uplink::PropertyPost
        );
        assert_eq!(
            s.classify(&format!("{p}thing/event/Alarm/post")),
            Uplink::EventPost("Alarm".into())
        );
        assert_eq!(
            s.classify(&format!("{p}thing/service/property/set_reply")),
            Uplink::PropertySetReply
        );
        assert_eq!(
            s.classify(&format!("{p}thing/service/Reboot_reply")),
            Uplink::ServiceReply("Reboot".into())
        );
        assert!(matches!(
            s.classify(&format!("{p}thing/deviceinfo/update")),
            Uplink::UnknownSys(_)
        ));
        assert_eq!(s.classify("/pk000001/lamp/user/x"), Uplink::Custom);
    }

    #[test]
    fn parses_alink_requests_and_refuses_bad_ones() {
        let r = parse_request(
            br#"{"id":"7","version":"1.0","params":{"T":{"value":1,"time":5}},"method":"thing.event.property.post"}"#,
            &Uplink::PropertyPost,
        )
        .unwrap();
        assert_eq!(r.id, "7");
        assert!(property_params(&r).is_ok());
        let r = parse_request(br#"{"id":8,"params":{}}"#, &Uplink::PropertyPost).unwrap();
        assert_eq!(r.id, "8");
        assert_eq!(property_params(&r).unwrap_err().code, code::BAD_PARAMS);
        assert_eq!(
            parse_request(b"{not json", &Uplink::PropertyPost)
                .unwrap_err()
                .code,
            code::BAD_PARAMS
        );
        let e = parse_request(
            br#"{"id":"9","method":"thing.event.nope.post","params":{}}"#,
            &Uplink::PropertyPost,
        )
        .unwrap_err();
        assert_eq!((e.id.as_str(), e.code), ("9", code::NOT_FOUND));
        let r = parse_request(
            br#"{"id":"1","params":{"value":{"c":1},"time":3}}"#,
            &Uplink::EventPost("Alarm".into()),
        )
        .unwrap();
        assert_eq!(event_params(&r).unwrap().1, Some(3));
    }

    #[test]
    fn reads_device_replies() {
        let (id, r) = parse_reply(br#"{"id":"5","code":200,"data":{"x":1}}"#).unwrap();
        assert_eq!(id, "5");
        assert_eq!(r.code, 200);
        assert_eq!(r.data["x"], 1);
        assert!(parse_reply(b"[]").is_none());
    }
}
