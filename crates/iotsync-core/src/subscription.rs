//! Declared consumer groups: what a user may name a group, which topic templates of
//! SPEC §4 stand for which message kinds, and the groups the platform declares itself
//! (the default group, named after the appKey, and the internal legacy push group).

use crate::group::{GroupFilter, GroupFilterDoc};
use crate::ids::ConsumerGroup;
use crate::message::{AccountAction, BindingOperation, DataClass, LifecycleAction, MessageKind};
use crate::sync_rules::{Route, SyncMode, SyncSettings};

/// The internal group the legacy HTTP pusher consumes (user data only).
pub const LEGACY_GROUP: &str = "_legacy_http";

/// Names starting with this are the platform's own; users cannot declare or delete them.
pub const RESERVED_PREFIX: char = '_';

/// The most characters a group name may have (the `groupId` of the credentials).
pub const MAX_GROUP_NAME: usize = 64;

/// Why a group name or filter was refused; `field` names the request field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SubscriptionError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> SubscriptionError {
    SubscriptionError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A group name a user may declare: 1 to 64 letters, digits, `-` and `_`, not starting
/// with the reserved `_`.
pub fn user_group_name(field: &str, name: &str) -> Result<ConsumerGroup, SubscriptionError> {
    let g: ConsumerGroup = name
        .parse()
        .map_err(|e: crate::ids::IdError| err(field, e.reason))?;
    if g.as_str().starts_with(RESERVED_PREFIX) {
        return Err(err(
            field,
            format!("names starting with '{RESERVED_PREFIX}' are reserved for the platform"),
        ));
    }
    Ok(g)
}

/// The device-topic templates of SPEC §4 and the kinds each stands for. Placeholders may
/// be written `${pk}`/`${productKey}`, `${dn}`/`${deviceName}`, `${identifier}` and
/// `${identityId}`.
const TEMPLATES: &[(&str, &[MessageKind])] = &[
    ("/${pk}/${dn}/mqtt/status", &[MessageKind::DeviceStatus]),
    (
        "/${pk}/${dn}/thing/event/property/post",
        &[MessageKind::PropertyPost],
    ),
    (
        "/${pk}/${dn}/thing/event/${identifier}/post",
        &[MessageKind::EventPost],
    ),
    (
        "/${pk}/${dn}/thing/downlink/reply/message",
        &[MessageKind::DownlinkReply],
    ),
    (
        "/${pk}/${dn}/thing/lifecycle",
        &[
            MessageKind::DeviceLifecycle(LifecycleAction::Create),
            MessageKind::DeviceLifecycle(LifecycleAction::Delete),
            MessageKind::DeviceLifecycle(LifecycleAction::Enable),
            MessageKind::DeviceLifecycle(LifecycleAction::Disable),
        ],
    ),
    (
        "/_account/${identityId}/lifecycle",
        &[
            MessageKind::AccountLifecycle(AccountAction::Create),
            MessageKind::AccountLifecycle(AccountAction::Update),
            MessageKind::AccountLifecycle(AccountAction::Delete),
        ],
    ),
    (
        "/${pk}/${dn}/thing/user/binding",
        &[
            MessageKind::Binding(BindingOperation::Bind),
            MessageKind::Binding(BindingOperation::Unbind),
            MessageKind::Binding(BindingOperation::Share),
            MessageKind::Binding(BindingOperation::Reset),
        ],
    ),
];

/// Every topic template a group may subscribe to, for error messages and docs.
pub fn topic_templates() -> impl Iterator<Item = &'static str> {
    TEMPLATES.iter().map(|(t, _)| *t)
}

fn normalize_template(t: &str) -> String {
    t.trim()
        .replace("${productKey}", "${pk}")
        .replace("${deviceName}", "${dn}")
}

/// The kinds a topic template (or a message-kind code such as `device.property.post`)
/// stands for.
pub fn kinds_for_topic(topic: &str) -> Option<&'static [MessageKind]> {
    let t = normalize_template(topic);
    if let Some((_, kinds)) = TEMPLATES.iter().find(|(tpl, _)| *tpl == t) {
        return Some(kinds);
    }
    MessageKind::ALL
        .iter()
        .position(|k| k.code() == t)
        .map(|i| std::slice::from_ref(&MessageKind::ALL[i]))
}

/// Turns the `topics` of a request into message kinds (in first-seen order, without
/// repeats). An unknown entry is refused naming `field[i]`.
pub fn kinds_for_topics(
    field: &str,
    topics: &[String],
) -> Result<Vec<MessageKind>, SubscriptionError> {
    if topics.is_empty() {
        return Err(err(
            field,
            "must name at least one topic (leave it out to take every topic)",
        ));
    }
    let mut out: Vec<MessageKind> = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        let kinds = kinds_for_topic(t).ok_or_else(|| {
            err(
                format!("{field}[{i}]"),
                format!(
                    "unknown topic {t:?}; expected a topic template of SPEC §4 ({}) or a message kind such as \"device.property.post\"",
                    topic_templates().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        for k in kinds {
            if !out.contains(k) {
                out.push(*k);
            }
        }
    }
    Ok(out)
}

/// The filter of a project's default group: everything, except in the mixed
/// configuration, where user data goes to the legacy push and the default group takes
/// device data only (also for legacy-only projects, which produce no device data).
pub fn default_group_filter(s: &SyncSettings) -> GroupFilter {
    match s.mode() {
        SyncMode::Mixed | SyncMode::LegacyOnly => GroupFilter::data_class(DataClass::Device),
        _ => GroupFilter::all(),
    }
}

/// The filter of the internal legacy group: user data.
pub fn legacy_group_filter() -> GroupFilter {
    GroupFilter::data_class(DataClass::User)
}

/// Whether the project pushes user data over legacy HTTP (so it needs [`LEGACY_GROUP`]).
pub fn needs_legacy_group(s: &SyncSettings) -> bool {
    s.enabled && s.user_data == Route::LegacyHttp
}

/// The JSON shape of the default group's filter, for the store.
pub fn default_group_filter_doc(s: &SyncSettings) -> GroupFilterDoc {
    GroupFilterDoc::from(&default_group_filter(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_codes_map_to_kinds() {
        assert_eq!(
            kinds_for_topic("/${pk}/${dn}/thing/event/property/post").unwrap(),
            &[MessageKind::PropertyPost]
        );
        assert_eq!(
            kinds_for_topic("/${productKey}/${deviceName}/mqtt/status").unwrap(),
            &[MessageKind::DeviceStatus]
        );
        assert_eq!(
            kinds_for_topic("device.event.post").unwrap(),
            &[MessageKind::EventPost]
        );
        assert_eq!(
            kinds_for_topic("/_account/${identityId}/lifecycle")
                .unwrap()
                .len(),
            3
        );
        assert!(kinds_for_topic("/a1b2/dev1/thing/event/property/post").is_none());
        // Every kind is reachable by some template.
        for k in MessageKind::ALL {
            assert!(
                TEMPLATES.iter().any(|(_, ks)| ks.contains(&k)),
                "{k} has no template"
            );
        }
    }

    #[test]
    fn an_unknown_topic_is_refused_naming_its_index() {
        let e = kinds_for_topics(
            "topics",
            &["device.status".into(), "/${pk}/${dn}/nope".into()],
        )
        .unwrap_err();
        assert_eq!(e.field, "topics[1]");
        assert!(e.reason.contains("/${pk}/${dn}/nope"), "{}", e.reason);
        let e = kinds_for_topics("topics", &[]).unwrap_err();
        assert_eq!(e.field, "topics");
        let k = kinds_for_topics(
            "topics",
            &[
                "device.status".into(),
                "/${pk}/${dn}/mqtt/status".into(),
                "device.property.post".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            k,
            vec![MessageKind::DeviceStatus, MessageKind::PropertyPost]
        );
    }

    #[test]
    fn user_names_are_checked_and_the_prefix_is_reserved() {
        assert_eq!(
            user_group_name("name", "billing-1").unwrap().as_str(),
            "billing-1"
        );
        assert_eq!(user_group_name("name", "_mine").unwrap_err().field, "name");
        assert!(user_group_name("name", "").is_err());
        assert!(user_group_name("name", "a b").is_err());
        assert!(user_group_name("name", &"x".repeat(MAX_GROUP_NAME + 1)).is_err());
        assert!(user_group_name("name", &"x".repeat(MAX_GROUP_NAME)).is_ok());
        assert!(LEGACY_GROUP.parse::<ConsumerGroup>().is_ok());
    }

    #[test]
    fn the_default_group_of_a_mixed_project_takes_device_data_only() {
        let mut s = SyncSettings {
            enabled: true,
            device_data: Route::Http2,
            user_data: Route::LegacyHttp,
            legacy_http_url: Some("http://x/".into()),
            ..SyncSettings::default()
        };
        assert_eq!(
            default_group_filter(&s),
            GroupFilter::data_class(DataClass::Device)
        );
        assert!(needs_legacy_group(&s));
        s.user_data = Route::Http2;
        assert!(default_group_filter(&s).is_all());
        assert!(!needs_legacy_group(&s));
    }
}
