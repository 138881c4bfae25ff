//! What a consumer group takes: its filter, applied when a message is appended (routing
//! at append, not at delivery), so no channel ever receives a message only to drop it.

use serde::{Deserialize, Serialize};

use crate::ids::ProductKey;
use crate::message::{DataClass, MessageKind, SyncMessage};

/// A consumer group's subscription. Every part that is `None` takes everything; the parts
/// that are set must all take a message (AND). An empty list takes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GroupFilter {
    pub data_classes: Option<Vec<DataClass>>,
    pub kinds: Option<Vec<MessageKind>>,
    /// Messages without a product (account lifecycle) are taken only when this is `None`.
    pub products: Option<Vec<ProductKey>>,
}

impl GroupFilter {
    /// Takes every message.
    pub fn all() -> Self {
        Self::default()
    }

    /// Takes one data class only (e.g. the legacy HTTP push group: user data).
    pub fn data_class(class: DataClass) -> Self {
        Self {
            data_classes: Some(vec![class]),
            ..Self::default()
        }
    }

    pub fn is_all(&self) -> bool {
        self.data_classes.is_none() && self.kinds.is_none() && self.products.is_none()
    }

    /// Whether a group with this filter takes a message of `kind` and `product`.
    pub fn takes_parts(&self, kind: MessageKind, product: Option<&ProductKey>) -> bool {
        if let Some(classes) = &self.data_classes {
            if !classes.contains(&kind.data_class()) {
                return false;
            }
        }
        if let Some(kinds) = &self.kinds {
            if !kinds.contains(&kind) {
                return false;
            }
        }
        if let Some(products) = &self.products {
            match product {
                Some(p) if products.contains(p) => {}
                _ => return false,
            }
        }
        true
    }

    pub fn takes(&self, msg: &SyncMessage) -> bool {
        self.takes_parts(msg.kind, msg.product_key.as_ref())
    }
}

/// The JSON shape of a filter in the REST API and the store (`dataClasses`, `kinds` as
/// message-kind codes, `products`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupFilterDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_classes: Option<Vec<DataClass>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub products: Option<Vec<ProductKey>>,
}

impl From<&GroupFilter> for GroupFilterDoc {
    fn from(f: &GroupFilter) -> Self {
        Self {
            data_classes: f.data_classes.clone(),
            kinds: f
                .kinds
                .as_ref()
                .map(|k| k.iter().map(|k| k.code().to_owned()).collect()),
            products: f.products.clone(),
        }
    }
}

impl TryFrom<&GroupFilterDoc> for GroupFilter {
    type Error = crate::message::UnknownMessageKind;
    fn try_from(d: &GroupFilterDoc) -> Result<Self, Self::Error> {
        let kinds = match &d.kinds {
            None => None,
            Some(k) => Some(
                k.iter()
                    .map(|s| s.parse::<MessageKind>())
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Self {
            data_classes: d.data_classes.clone(),
            kinds,
            products: d.products.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AccountAction, BindingOperation};

    fn pk(s: &str) -> ProductKey {
        s.parse().unwrap()
    }

    #[test]
    fn an_empty_filter_takes_everything() {
        let f = GroupFilter::all();
        for k in MessageKind::ALL {
            assert!(f.takes_parts(k, None));
            assert!(f.takes_parts(k, Some(&pk("a1product1"))));
        }
    }

    #[test]
    fn parts_of_a_filter_must_all_take_a_message() {
        let f = GroupFilter {
            data_classes: Some(vec![DataClass::User]),
            kinds: None,
            products: Some(vec![pk("a1product1")]),
        };
        let bind = MessageKind::Binding(BindingOperation::Bind);
        assert!(f.takes_parts(bind, Some(&pk("a1product1"))));
        assert!(!f.takes_parts(bind, Some(&pk("a1product2"))));
        assert!(!f.takes_parts(MessageKind::PropertyPost, Some(&pk("a1product1"))));
        // An account message has no product: a product filter does not take it.
        assert!(!f.takes_parts(MessageKind::AccountLifecycle(AccountAction::Create), None));
    }

    #[test]
    fn the_json_shape_round_trips_and_refuses_unknown_kinds() {
        let f = GroupFilter {
            data_classes: None,
            kinds: Some(vec![MessageKind::PropertyPost, MessageKind::DeviceStatus]),
            products: None,
        };
        let doc = GroupFilterDoc::from(&f);
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(
            json,
            r#"{"kinds":["device.property.post","device.status"]}"#
        );
        let back: GroupFilterDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(GroupFilter::try_from(&back).unwrap(), f);
        let bad = GroupFilterDoc {
            kinds: Some(vec!["nope".into()]),
            ..Default::default()
        };
        assert!(GroupFilter::try_from(&bad).is_err());
    }
}
