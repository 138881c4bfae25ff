//! A sync message as an AMQP 1.0 message (SPEC §6): Data section = payload bytes;
//! application-properties `topic`, `messageId`, `generateTime` (long); properties
//! `message-id` = messageId.

use fe2o3_amqp::types::messaging::{ApplicationProperties, Data, Message, MessageId, Properties};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue};

use iotsync_core::Envelope;

/// Takes the envelope by value: the payload and topic move into the message uncopied.
pub fn to_amqp(env: Envelope) -> Message<Data> {
    let id = env.message_id.to_string();
    Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::String(id.clone())),
            ..Default::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert("topic", SimpleValue::String(env.topic))
                .insert("messageId", SimpleValue::String(id))
                .insert("generateTime", SimpleValue::Long(env.generate_time))
                .build(),
        )
        .data(Binary::from(env.payload))
        .build()
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
