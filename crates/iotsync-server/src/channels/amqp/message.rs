//! A sync message as an AMQP 1.0 message (SPEC §6): Data section = payload bytes;
//! application-properties `topic`, `messageId`, `generateTime` (long); properties
//! `message-id` = messageId. A redelivery carries a header whose `delivery-count` is
//! the number of earlier deliveries (AMQP 1.0 §3.2.1); a first delivery has none (its
//! defaults say 0).

use std::sync::LazyLock;

use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Data, Header, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, OrderedMap, SimpleValue};

use iotsync_core::Envelope;

/// The application-properties keys, in wire order, with placeholder values.
static KEYS: LazyLock<OrderedMap<String, SimpleValue>> = LazyLock::new(|| {
    let mut m = OrderedMap::with_capacity(3);
    for k in ["topic", "messageId", "generateTime"] {
        m.insert(k.to_owned(), SimpleValue::Null);
    }
    m
});

/// Takes the envelope by value: the payload and topic move into the message uncopied.
/// The application-properties map is a clone of [`KEYS`] whose values are then set in
/// place: no key is hashed and no hasher seeded per message.
pub fn to_amqp(env: Envelope, attempt: u32) -> Message<Data> {
    let id = env.message_id.to_string();
    let mut ap = KEYS.clone();
    let values = [
        SimpleValue::String(env.topic),
        SimpleValue::String(id.clone()),
        SimpleValue::Long(env.generate_time),
    ];
    for (slot, v) in ap.values_mut().zip(values) {
        *slot = v;
    }
    // A literal, not the builder: the builder moves the whole message at every step.
    Message {
        header: (attempt > 1).then(|| Header {
            durable: true,
            delivery_count: attempt - 1,
            ..Default::default()
        }),
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties {
            message_id: Some(MessageId::String(id)),
            ..Default::default()
        }),
        application_properties: Some(ApplicationProperties(ap)),
        body: Data(Binary::from(env.payload)),
        footer: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_the_envelope_in_properties_and_data() {
        let env = Envelope {
            topic: "/pk/dn/thing/event/property/post".into(),
            message_id: "m-1".parse().unwrap(),
            generate_time: 1_800_000_000_123,
            payload: br#"{"a":1}"#.to_vec(),
        };
        let m = to_amqp(env.clone(), 1);
        assert!(m.header.is_none(), "a first delivery has no header");
        let again = to_amqp(env.clone(), 3);
        assert_eq!(again.header.map(|h| h.delivery_count), Some(2));
        let ap = m.application_properties.unwrap();
        assert_eq!(
            ap.get("topic"),
            Some(&SimpleValue::String(env.topic.clone()))
        );
        assert_eq!(
            ap.get("messageId"),
            Some(&SimpleValue::String("m-1".into()))
        );
        assert_eq!(
            ap.get("generateTime"),
            Some(&SimpleValue::Long(1_800_000_000_123))
        );
        assert_eq!(
            m.properties.unwrap().message_id,
            Some(MessageId::String("m-1".into()))
        );
        assert_eq!(m.body.0.as_ref(), br#"{"a":1}"#);
    }
}
