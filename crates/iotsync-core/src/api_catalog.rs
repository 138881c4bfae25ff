//! The catalogue of cloud API operations (SPEC §9): each operation belongs to a group
//! (a feature) that a project activates or deactivates as a whole.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ApiGroup {
    CloudToken,
    ThingModel,
    UserAccount,
    DeviceBinding,
    DataSync,
}

impl ApiGroup {
    pub const ALL: [ApiGroup; 5] = [
        ApiGroup::CloudToken,
        ApiGroup::ThingModel,
        ApiGroup::UserAccount,
        ApiGroup::DeviceBinding,
        ApiGroup::DataSync,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApiGroup::CloudToken => "cloud_token",
            ApiGroup::ThingModel => "thing_model",
            ApiGroup::UserAccount => "user_account",
            ApiGroup::DeviceBinding => "device_binding",
            ApiGroup::DataSync => "data_sync",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ApiGroup::CloudToken => "Cloud token",
            ApiGroup::ThingModel => "Thing model",
            ApiGroup::UserAccount => "User accounts",
            ApiGroup::DeviceBinding => "Device binding",
            ApiGroup::DataSync => "Data synchronization",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            ApiGroup::CloudToken => "Obtain the cloud token every other cloud API call carries.",
            ApiGroup::ThingModel => {
                "Read device info, status and properties, set properties, invoke services, read property history."
            }
            ApiGroup::UserAccount => "Query the end-user accounts of the project.",
            ApiGroup::DeviceBinding => "Query and remove user–device bindings.",
            ApiGroup::DataSync => "Read the data-synchronization backlog figures.",
        }
    }

    /// Only the cloud token is active on a new project.
    pub fn activated_by_default(self) -> bool {
        self == ApiGroup::CloudToken
    }
}

impl fmt::Display for ApiGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown API group {0:?}; expected one of cloud_token, thing_model, user_account, device_binding, data_sync")]
pub struct UnknownApiGroup(pub String);

impl FromStr for ApiGroup {
    type Err = UnknownApiGroup;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApiGroup::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| UnknownApiGroup(s.to_owned()))
    }
}

/// One cloud API operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiOperation {
    pub group: ApiGroup,
    pub path: &'static str,
    pub version: &'static str,
    pub name: &'static str,
    pub description: &'static str,
}

const fn op(
    group: ApiGroup,
    path: &'static str,
    name: &'static str,
    description: &'static str,
) -> ApiOperation {
    ApiOperation {
        group,
        path,
        version: "1.0.0",
        name,
        description,
    }
}

/// Every operation the platform offers, in catalogue order.
pub const OPERATIONS: &[ApiOperation] = &[
    op(ApiGroup::CloudToken, "/cloud/token", "Get cloud token",
        "Exchange the project's appKey signature for a cloud token (grantType \"project\"); a new token invalidates the previous one."),
    op(ApiGroup::ThingModel, "/cloud/thing/info/get", "Get device info",
        "Device identity, product, status and creation time, by iotId or productKey + deviceName."),
    op(ApiGroup::ThingModel, "/cloud/thing/status/get", "Get device status",
        "online, offline, inactive or disabled, with the time of the last change."),
    op(ApiGroup::ThingModel, "/cloud/thing/properties/get", "Get device properties",
        "The last reported value and time of each property."),
    op(ApiGroup::ThingModel, "/cloud/thing/properties/set", "Set device properties",
        "Send a property set to the device; its reply arrives as a control record."),
    op(ApiGroup::ThingModel, "/cloud/thing/service/invoke", "Invoke device service",
        "Call a service of the device's thing model and return its output."),
    op(ApiGroup::ThingModel, "/cloud/thing/property/timeline/get", "Get property timeline",
        "Reported values of one property between two times."),
    op(ApiGroup::ThingModel, "/cloud/thing/productList/get", "List products",
        "The products of the project, page by page."),
    op(ApiGroup::UserAccount, "/cloud/account/queryIdentityByPage", "Query accounts",
        "The end-user accounts of the project, page by page."),
    op(ApiGroup::DeviceBinding, "/cloud/device/queryByUser", "Devices of a user",
        "The devices bound to a user, with the owner flag."),
    op(ApiGroup::DeviceBinding, "/cloud/user/device/unbind", "Unbind a device",
        "Remove a user's binding to a device; produces a binding message."),
    op(ApiGroup::DataSync, "/cloud/sync/stats/get", "Get sync figures",
        "Backlog figures per consumer group: stacked messages, oldest age, rates, redeliveries, expirations, dead letters, consumers."),
    op(ApiGroup::DataSync, "/cloud/sync/message/get", "Get a pushed message",
        "A message by its messageId: topic, generate time, payload, and its state in every consumer group (stacked, in flight, acknowledged, dead-lettered, expired, dropped)."),
    op(ApiGroup::DataSync, "/cloud/sync/message/query", "Query a device's pushed messages",
        "A device's messages in a time range, newest first, each with its state in every consumer group; paged by beforeSeq."),
];

/// The operation served at `path`, if any.
pub fn operation_by_path(path: &str) -> Option<&'static ApiOperation> {
    OPERATIONS.iter().find(|o| o.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_has_operations_and_paths_are_unique() {
        for g in ApiGroup::ALL {
            assert!(OPERATIONS.iter().any(|o| o.group == g), "{g}");
            assert_eq!(g.as_str().parse::<ApiGroup>().unwrap(), g);
        }
        let mut paths: Vec<_> = OPERATIONS.iter().map(|o| o.path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), OPERATIONS.len());
        assert!(paths.iter().all(|p| p.starts_with("/cloud/")));
    }

    #[test]
    fn only_cloud_token_is_on_by_default() {
        let on: Vec<_> = ApiGroup::ALL
            .into_iter()
            .filter(|g| g.activated_by_default())
            .collect();
        assert_eq!(on, vec![ApiGroup::CloudToken]);
    }

    #[test]
    fn operations_are_found_by_path() {
        assert_eq!(
            operation_by_path("/cloud/thing/status/get").unwrap().group,
            ApiGroup::ThingModel
        );
        assert!(operation_by_path("/cloud/nope").is_none());
    }
}
