//! Channels turn deliveries into outcomes over a wire protocol. Each one only sees a
//! [`crate::delivery::hub::ConsumerLink`], never the backlog.

pub mod amqp;
pub mod http2;
pub mod webhook;
