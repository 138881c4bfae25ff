//! The sync message: the envelope every channel carries (SPEC §4), its kind, and the
//! routing facts the backlog needs (project, product, ordering key).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{IotId, MessageId, ProductKey, ProjectId};

/// What every channel carries, byte for byte the same on AMQP, HTTP/2 and the webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub topic: String,
    pub message_id: MessageId,
    /// Milliseconds since the epoch, when the platform produced the message.
    pub generate_time: i64,
    /// UTF-8 JSON bytes of a flat object.
    #[serde(with = "payload_as_json")]
    pub payload: Vec<u8>,
}

/// Envelopes shown over JSON (REST, CLI) carry the payload as the JSON it is.
mod payload_as_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(v) => v.serialize(s),
            Err(_) => String::from_utf8_lossy(bytes).serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        serde_json::to_vec(&v).map_err(serde::de::Error::custom)
    }
}

/// Device data or user data: one sync method carries both, legacy HTTP carries only user
/// data, and a product switched off silences device data (and bindings, which follow the
/// device's product).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataClass {
    Device,
    User,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleAction {
    Create,
    Delete,
    Enable,
    Disable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountAction {
    Create,
    Update,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingOperation {
    Bind,
    Unbind,
    Share,
    Reset,
}

/// The kind of a sync message, one per row of the tables in SPEC §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    DeviceStatus,
    PropertyPost,
    EventPost,
    DownlinkReply,
    DeviceLifecycle(LifecycleAction),
    AccountLifecycle(AccountAction),
    Binding(BindingOperation),
}

impl MessageKind {
    pub const ALL: [MessageKind; 15] = [
        MessageKind::DeviceStatus,
        MessageKind::PropertyPost,
        MessageKind::EventPost,
        MessageKind::DownlinkReply,
        MessageKind::DeviceLifecycle(LifecycleAction::Create),
        MessageKind::DeviceLifecycle(LifecycleAction::Delete),
        MessageKind::DeviceLifecycle(LifecycleAction::Enable),
        MessageKind::DeviceLifecycle(LifecycleAction::Disable),
        MessageKind::AccountLifecycle(AccountAction::Create),
        MessageKind::AccountLifecycle(AccountAction::Update),
        MessageKind::AccountLifecycle(AccountAction::Delete),
        MessageKind::Binding(BindingOperation::Bind),
        MessageKind::Binding(BindingOperation::Unbind),
        MessageKind::Binding(BindingOperation::Share),
        MessageKind::Binding(BindingOperation::Reset),
    ];

    pub fn data_class(self) -> DataClass {
        match self {
            MessageKind::AccountLifecycle(_) | MessageKind::Binding(_) => DataClass::User,
            MessageKind::DeviceStatus
            | MessageKind::PropertyPost
            | MessageKind::EventPost
            | MessageKind::DownlinkReply
            | MessageKind::DeviceLifecycle(_) => DataClass::Device,
        }
    }

    /// The legacy HTTP push's `msgCode` (SPEC §8): only user data has one.
    pub fn legacy_msg_code(self) -> Option<&'static str> {
        (self.data_class() == DataClass::User).then(|| self.code())
    }

    /// Stable code stored with the message (outbox, backlog).
    pub fn code(self) -> &'static str {
        match self {
            MessageKind::DeviceStatus => "device.status",
            MessageKind::PropertyPost => "device.property.post",
            MessageKind::EventPost => "device.event.post",
            MessageKind::DownlinkReply => "device.downlink.reply",
            MessageKind::DeviceLifecycle(LifecycleAction::Create) => "device.lifecycle.create",
            MessageKind::DeviceLifecycle(LifecycleAction::Delete) => "device.lifecycle.delete",
            MessageKind::DeviceLifecycle(LifecycleAction::Enable) => "device.lifecycle.enable",
            MessageKind::DeviceLifecycle(LifecycleAction::Disable) => "device.lifecycle.disable",
            MessageKind::AccountLifecycle(AccountAction::Create) => "account.create",
            MessageKind::AccountLifecycle(AccountAction::Update) => "account.update",
            MessageKind::AccountLifecycle(AccountAction::Delete) => "account.delete",
            MessageKind::Binding(BindingOperation::Bind) => "user.binding.bind",
            MessageKind::Binding(BindingOperation::Unbind) => "user.binding.unbind",
            MessageKind::Binding(BindingOperation::Share) => "user.binding.share",
            MessageKind::Binding(BindingOperation::Reset) => "user.binding.reset",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown message kind {0:?}")]
pub struct UnknownMessageKind(pub String);

impl FromStr for MessageKind {
    type Err = UnknownMessageKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageKind::ALL
            .iter()
            .copied()
            .find(|k| k.code() == s)
            .ok_or_else(|| UnknownMessageKind(s.to_owned()))
    }
}

/// A message with the facts the backlog routes by. `ordering_key` (the device's iotId,
/// or the identity for account messages) is what per-device order is kept on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncMessage {
    pub project_id: ProjectId,
    pub kind: MessageKind,
    pub product_key: Option<ProductKey>,
    pub ordering_key: String,
    pub envelope: Envelope,
}

impl SyncMessage {
    pub fn data_class(&self) -> DataClass {
        self.kind.data_class()
    }
}

/// Ordering key for device messages.
pub fn device_ordering_key(iot_id: &IotId) -> String {
    iot_id.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_code_round_trips() {
        let mut codes = std::collections::HashSet::new();
        for k in MessageKind::ALL {
            assert_eq!(k.code().parse::<MessageKind>().unwrap(), k);
            assert!(codes.insert(k.code()), "{k} shares its code");
        }
        assert!("nope".parse::<MessageKind>().is_err());
    }

    #[test]
    fn only_user_data_has_a_legacy_msg_code() {
        for k in MessageKind::ALL {
            assert_eq!(
                k.legacy_msg_code().is_some(),
                k.data_class() == DataClass::User,
                "{k}"
            );
        }
    }

    #[test]
    fn envelope_json_shows_payload_as_json() {
        let e = Envelope {
            topic: "/a/b".into(),
            message_id: "m1".parse().unwrap(),
            generate_time: 5,
            payload: br#"{"x":1}"#.to_vec(),
        };
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["payload"]["x"], 1);
        assert_eq!(j["messageId"], "m1");
        let back: Envelope = serde_json::from_value(j).unwrap();
        assert_eq!(back, e);
    }
}
