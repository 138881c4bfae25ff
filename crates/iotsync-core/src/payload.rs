//! Topics and payloads of every sync message of SPEC §4. A builder takes the domain
//! facts and returns a ready [`SyncMessage`]; the payload is a flat JSON object whose
//! field names are exactly the platform's, so existing consumers parse it unchanged.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::ids::{DeviceName, IdentityId, IotId, MessageId, ProductKey, ProjectId};
use crate::message::{
    AccountAction, BindingOperation, Envelope, LifecycleAction, MessageKind, SyncMessage,
};

/// The device a device-data message is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRef {
    pub project_id: ProjectId,
    pub iot_id: IotId,
    pub product_key: ProductKey,
    pub device_name: DeviceName,
    /// The product's category, e.g. "Light".
    pub device_type: String,
}

pub fn status_topic(pk: &ProductKey, dn: &DeviceName) -> String {
    format!("/{pk}/{dn}/mqtt/status")
}
pub fn property_post_topic(pk: &ProductKey, dn: &DeviceName) -> String {
    format!("/{pk}/{dn}/thing/event/property/post")
}
pub fn event_post_topic(pk: &ProductKey, dn: &DeviceName, identifier: &str) -> String {
    format!("/{pk}/{dn}/thing/event/{identifier}/post")
}
pub fn downlink_reply_topic(pk: &ProductKey, dn: &DeviceName) -> String {
    format!("/{pk}/{dn}/thing/downlink/reply/message")
}
pub fn lifecycle_topic(pk: &ProductKey, dn: &DeviceName) -> String {
    format!("/{pk}/{dn}/thing/lifecycle")
}
pub fn account_topic(identity_id: &IdentityId) -> String {
    format!("/_account/{identity_id}/lifecycle")
}
pub fn binding_topic(pk: &ProductKey, dn: &DeviceName) -> String {
    format!("/{pk}/{dn}/thing/user/binding")
}

/// A thing-model identifier (property, event or service name): letters, digits and `_`,
/// starting with a letter or `_`, at most 50 characters.
pub fn validate_identifier(s: &str) -> Result<(), String> {
    let n = s.chars().count();
    if n == 0 || n > 50 {
        return Err(format!("must be 1 to 50 characters long (got {n})"));
    }
    let first_ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok {
        return Err("must start with a letter or '_'".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(format!("contains {c:?}; allowed: letters, digits and '_'"));
    }
    Ok(())
}

fn build(
    project_id: &ProjectId,
    kind: MessageKind,
    product_key: Option<&ProductKey>,
    ordering_key: String,
    topic: String,
    now_ms: i64,
    payload: &impl Serialize,
) -> SyncMessage {
    // Serializing a struct of strings, numbers and `Value`s cannot fail; an empty object
    // is the fallback that keeps the pipeline total rather than panicking.
    let bytes = serde_json::to_vec(payload).unwrap_or_else(|_| b"{}".to_vec());
    SyncMessage {
        project_id: project_id.clone(),
        kind,
        product_key: product_key.cloned(),
        ordering_key,
        envelope: Envelope {
            topic,
            message_id: MessageId::generate_at(now_ms),
            generate_time: now_ms,
            payload: bytes,
        },
    }
}

#[derive(Serialize)]
struct StatusValue {
    value: &'static str,
    time: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusPayload<'a> {
    device_type: &'a str,
    iot_id: &'a IotId,
    product_key: &'a ProductKey,
    device_name: &'a DeviceName,
    action: &'static str,
    status: StatusValue,
    gmt_create: i64,
}

/// `/${pk}/${dn}/mqtt/status`: the device connected (`online`) or disconnected.
pub fn device_status(d: &DeviceRef, online: bool, status_time_ms: i64, now_ms: i64) -> SyncMessage {
    let p = StatusPayload {
        device_type: &d.device_type,
        iot_id: &d.iot_id,
        product_key: &d.product_key,
        device_name: &d.device_name,
        action: if online { "online" } else { "offline" },
        status: StatusValue {
            value: if online { "1" } else { "0" },
            time: status_time_ms,
        },
        gmt_create: now_ms,
    };
    build(
        &d.project_id,
        MessageKind::DeviceStatus,
        Some(&d.product_key),
        d.iot_id.to_string(),
        status_topic(&d.product_key, &d.device_name),
        now_ms,
        &p,
    )
}

/// One reported property value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PropertyItem {
    pub value: Value,
    pub time: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PropertyPayload<'a> {
    device_type: &'a str,
    iot_id: &'a IotId,
    product_key: &'a ProductKey,
    device_name: &'a DeviceName,
    gmt_create: i64,
    items: &'a BTreeMap<String, PropertyItem>,
}

/// `/${pk}/${dn}/thing/event/property/post`.
pub fn property_post(
    d: &DeviceRef,
    items: &BTreeMap<String, PropertyItem>,
    now_ms: i64,
) -> SyncMessage {
    let p = PropertyPayload {
        device_type: &d.device_type,
        iot_id: &d.iot_id,
        product_key: &d.product_key,
        device_name: &d.device_name,
        gmt_create: now_ms,
        items,
    };
    build(
        &d.project_id,
        MessageKind::PropertyPost,
        Some(&d.product_key),
        d.iot_id.to_string(),
        property_post_topic(&d.product_key, &d.device_name),
        now_ms,
        &p,
    )
}

/// Severity of a reported event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Info,
    Alert,
    Error,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventPayload<'a> {
    device_type: &'a str,
    iot_id: &'a IotId,
    product_key: &'a ProductKey,
    device_name: &'a DeviceName,
    identifier: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    event_type: EventType,
    time: i64,
    value: &'a Value,
}

/// A reported event. `identifier` must pass [`validate_identifier`].
pub struct EventReport<'a> {
    pub identifier: &'a str,
    pub name: &'a str,
    pub event_type: EventType,
    pub time_ms: i64,
    pub value: &'a Value,
}

/// `/${pk}/${dn}/thing/event/${identifier}/post`.
pub fn event_post(d: &DeviceRef, e: &EventReport<'_>, now_ms: i64) -> SyncMessage {
    let p = EventPayload {
        device_type: &d.device_type,
        iot_id: &d.iot_id,
        product_key: &d.product_key,
        device_name: &d.device_name,
        identifier: e.identifier,
        name: e.name,
        event_type: e.event_type,
        time: e.time_ms,
        value: e.value,
    };
    build(
        &d.project_id,
        MessageKind::EventPost,
        Some(&d.product_key),
        d.iot_id.to_string(),
        event_post_topic(&d.product_key, &d.device_name, e.identifier),
        now_ms,
        &p,
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DownlinkReplyPayload<'a> {
    gmt_create: i64,
    iot_id: &'a IotId,
    product_key: &'a ProductKey,
    device_name: &'a DeviceName,
    request_id: &'a str,
    code: i64,
    message: &'a str,
    topic: &'a str,
    data: &'a Value,
}

/// The outcome of a property set or service call sent to a device (a control record).
pub struct DownlinkReply<'a> {
    pub request_id: &'a str,
    pub code: i64,
    pub message: &'a str,
    /// The downlink topic the request went to.
    pub topic: &'a str,
    pub data: &'a Value,
}

/// `/${pk}/${dn}/thing/downlink/reply/message`.
pub fn downlink_reply(d: &DeviceRef, r: &DownlinkReply<'_>, now_ms: i64) -> SyncMessage {
    let p = DownlinkReplyPayload {
        gmt_create: now_ms,
        iot_id: &d.iot_id,
        product_key: &d.product_key,
        device_name: &d.device_name,
        request_id: r.request_id,
        code: r.code,
        message: r.message,
        topic: r.topic,
        data: r.data,
    };
    build(
        &d.project_id,
        MessageKind::DownlinkReply,
        Some(&d.product_key),
        d.iot_id.to_string(),
        downlink_reply_topic(&d.product_key, &d.device_name),
        now_ms,
        &p,
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LifecyclePayload<'a> {
    action: &'static str,
    iot_id: &'a IotId,
    product_key: &'a ProductKey,
    device_name: &'a DeviceName,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_secret: Option<&'a str>,
    message_create_time: i64,
}

/// `/${pk}/${dn}/thing/lifecycle`. The device secret is only carried by `create`.
pub fn device_lifecycle(
    d: &DeviceRef,
    action: LifecycleAction,
    device_secret: Option<&str>,
    now_ms: i64,
) -> SyncMessage {
    let p = LifecyclePayload {
        action: match action {
            LifecycleAction::Create => "create",
            LifecycleAction::Delete => "delete",
            LifecycleAction::Enable => "enable",
            LifecycleAction::Disable => "disable",
        },
        iot_id: &d.iot_id,
        product_key: &d.product_key,
        device_name: &d.device_name,
        device_secret: if action == LifecycleAction::Create {
            device_secret
        } else {
            None
        },
        message_create_time: now_ms,
    };
    build(
        &d.project_id,
        MessageKind::DeviceLifecycle(action),
        Some(&d.product_key),
        d.iot_id.to_string(),
        lifecycle_topic(&d.product_key, &d.device_name),
        now_ms,
        &p,
    )
}

/// An end user's account as carried by account messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountFacts {
    pub identity_id: IdentityId,
    pub login_name: String,
    pub nick_name: String,
    pub phone: String,
    pub email: String,
    pub gmt_create: i64,
    pub gmt_modified: i64,
}

#[derive(Serialize)]
struct AccountPayload<'a> {
    action: &'static str,
    #[serde(flatten)]
    facts: &'a AccountFacts,
}

/// `/_account/${identityId}/lifecycle`.
pub fn account_lifecycle(
    project_id: &ProjectId,
    action: AccountAction,
    facts: &AccountFacts,
    now_ms: i64,
) -> SyncMessage {
    let p = AccountPayload {
        action: match action {
            AccountAction::Create => "create",
            AccountAction::Update => "update",
            AccountAction::Delete => "delete",
        },
        facts,
    };
    build(
        project_id,
        MessageKind::AccountLifecycle(action),
        None,
        format!("account:{}", facts.identity_id),
        account_topic(&facts.identity_id),
        now_ms,
        &p,
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BindingPayload<'a> {
    operation: &'static str,
    identity_id: &'a IdentityId,
    iot_id: &'a IotId,
    product_key: &'a ProductKey,
    device_name: &'a DeviceName,
    owned: u8,
    gmt_create: i64,
}

/// `/${pk}/${dn}/thing/user/binding`. `owned` is 1 for the owner, 0 for a share.
pub fn binding(
    d: &DeviceRef,
    operation: BindingOperation,
    identity_id: &IdentityId,
    owned: bool,
    now_ms: i64,
) -> SyncMessage {
    let p = BindingPayload {
        operation: match operation {
            BindingOperation::Bind => "Bind",
            BindingOperation::Unbind => "Unbind",
            BindingOperation::Share => "Share",
            BindingOperation::Reset => "Reset",
        },
        identity_id,
        iot_id: &d.iot_id,
        product_key: &d.product_key,
        device_name: &d.device_name,
        owned: u8::from(owned),
        gmt_create: now_ms,
    };
    build(
        &d.project_id,
        MessageKind::Binding(operation),
        Some(&d.product_key),
        d.iot_id.to_string(),
        binding_topic(&d.product_key, &d.device_name),
        now_ms,
        &p,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dev() -> DeviceRef {
        DeviceRef {
            project_id: "p1".parse().unwrap(),
            iot_id: "iot1".parse().unwrap(),
            product_key: "a1pk0001".parse().unwrap(),
            device_name: "lamp01".parse().unwrap(),
            device_type: "Light".into(),
        }
    }

    fn payload(m: &SyncMessage) -> Value {
        serde_json::from_slice(&m.envelope.payload).unwrap()
    }

    #[test]
    fn status_message_has_platform_topic_and_fields() {
        let m = device_status(&dev(), true, 10, 11);
        assert_eq!(m.envelope.topic, "/a1pk0001/lamp01/mqtt/status");
        assert_eq!(
            payload(&m),
            json!({"deviceType":"Light","iotId":"iot1","productKey":"a1pk0001",
                   "deviceName":"lamp01","action":"online",
                   "status":{"value":"1","time":10},"gmtCreate":11})
        );
        let off = device_status(&dev(), false, 12, 13);
        assert_eq!(payload(&off)["status"]["value"], "0");
        assert_eq!(payload(&off)["action"], "offline");
    }

    #[test]
    fn property_post_carries_items_with_value_and_time() {
        let mut items = BTreeMap::new();
        items.insert(
            "LightSwitch".to_string(),
            PropertyItem {
                value: json!(1),
                time: 7,
            },
        );
        let m = property_post(&dev(), &items, 8);
        assert_eq!(
            m.envelope.topic,
            "/a1pk0001/lamp01/thing/event/property/post"
        );
        assert_eq!(
            payload(&m),
            json!({"deviceType":"Light","iotId":"iot1","productKey":"a1pk0001",
                   "deviceName":"lamp01","gmtCreate":8,
                   "items":{"LightSwitch":{"value":1,"time":7}}})
        );
        assert_eq!(m.envelope.generate_time, 8);
        assert_eq!(m.ordering_key, "iot1");
    }

    #[test]
    fn event_post_names_identifier_in_topic_and_payload() {
        let v = json!({"ErrorCode": 3});
        let m = event_post(
            &dev(),
            &EventReport {
                identifier: "Error",
                name: "Error",
                event_type: EventType::Alert,
                time_ms: 5,
                value: &v,
            },
            6,
        );
        assert_eq!(m.envelope.topic, "/a1pk0001/lamp01/thing/event/Error/post");
        let p = payload(&m);
        assert_eq!(p["type"], "alert");
        assert_eq!(p["identifier"], "Error");
        assert_eq!(p["value"]["ErrorCode"], 3);
        assert_eq!(p["time"], 5);
    }

    #[test]
    fn lifecycle_carries_secret_only_on_create() {
        let c = device_lifecycle(&dev(), LifecycleAction::Create, Some("s3cr3t"), 1);
        assert_eq!(payload(&c)["deviceSecret"], "s3cr3t");
        assert_eq!(payload(&c)["messageCreateTime"], 1);
        let d = device_lifecycle(&dev(), LifecycleAction::Delete, Some("s3cr3t"), 1);
        assert!(payload(&d).get("deviceSecret").is_none());
        assert_eq!(d.envelope.topic, "/a1pk0001/lamp01/thing/lifecycle");
        assert_eq!(d.kind.code(), "device.lifecycle.delete");
    }

    #[test]
    fn account_and_binding_messages_are_user_data() {
        let f = AccountFacts {
            identity_id: "u1".parse().unwrap(),
            login_name: "ann".into(),
            nick_name: "Ann".into(),
            phone: "".into(),
            email: "a@x".into(),
            gmt_create: 1,
            gmt_modified: 2,
        };
        let a = account_lifecycle(&"p1".parse().unwrap(), AccountAction::Update, &f, 3);
        assert_eq!(a.envelope.topic, "/_account/u1/lifecycle");
        assert_eq!(
            payload(&a),
            json!({"action":"update","identityId":"u1","loginName":"ann","nickName":"Ann",
                   "phone":"","email":"a@x","gmtCreate":1,"gmtModified":2})
        );
        assert_eq!(a.kind.legacy_msg_code(), Some("account.update"));
        let b = binding(
            &dev(),
            BindingOperation::Share,
            &"u1".parse().unwrap(),
            false,
            4,
        );
        assert_eq!(b.envelope.topic, "/a1pk0001/lamp01/thing/user/binding");
        assert_eq!(payload(&b)["operation"], "Share");
        assert_eq!(payload(&b)["owned"], 0);
        assert_eq!(b.product_key.as_ref().unwrap().as_str(), "a1pk0001");
    }

    #[test]
    fn downlink_reply_is_a_control_record() {
        let data = json!({});
        let m = downlink_reply(
            &dev(),
            &DownlinkReply {
                request_id: "r1",
                code: 200,
                message: "success",
                topic: "/sys/a1pk0001/lamp01/thing/service/property/set",
                data: &data,
            },
            9,
        );
        assert_eq!(
            m.envelope.topic,
            "/a1pk0001/lamp01/thing/downlink/reply/message"
        );
        assert_eq!(payload(&m)["requestId"], "r1");
        assert_eq!(payload(&m)["code"], 200);
    }

    #[test]
    fn identifiers_are_validated() {
        assert!(validate_identifier("LightSwitch").is_ok());
        assert!(validate_identifier("_x1").is_ok());
        assert!(validate_identifier("1x").is_err());
        assert!(validate_identifier("a/b").is_err());
        assert!(validate_identifier("").is_err());
    }
}
