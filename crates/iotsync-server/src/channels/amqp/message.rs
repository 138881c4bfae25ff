//! A sync message as an AMQP 1.0 message (SPEC §6): Data section = payload bytes;
//! application-properties `topic`, `messageId`, `generateTime` (long); properties
//! `message-id` = messageId.

use fe2o3_amqp::types::messaging::{ApplicationProperties, Data, Message, MessageId, Properties};
use fe2o3_amqp::types::primitives::{Binary, OrderedMap, SimpleValue};

use iotsync_core::Envelope;

/// Takes the envelope by value: the payload and topic move into the message uncopied.
/// The map is sized up front (the map builder grows it entry by entry).
pub fn to_amqp(env: Envelope) -> Message<Data> {
    let id = env.message_id.to_string();
    let mut ap = OrderedMap::with_capacity(3);
    ap.insert("topic".to_owned(), SimpleValue::String(env.topic));
    ap.insert("messageId".to_owned(), SimpleValue::String(id.clone()));
    ap.insert(
        "generateTime".to_owned(),
        SimpleValue::Long(env.generate_time),
    );
    // A literal, not the builder: the builder moves the whole message at every step.
    Message {
        header: None,
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
        let m = to_amqp(env.clone());
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
