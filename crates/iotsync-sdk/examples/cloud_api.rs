//! Calls the iotsync cloud API with the SDK client: token, device status, property set.
//!
//! ```text
//! cargo run -p iotsync-sdk --example cloud_api -- \
//!     http://127.0.0.1:8080 APP_KEY APP_SECRET PROJECT_ID IOT_ID
//! ```
//! The project needs the thing-model API group activated
//! (`PUT /api/v1/projects/{id}/api-operations/thing_model {"activated": true}`).

use iotsync_sdk::cloud::{CloudClient, CloudConfig};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, app_key, app_secret, project_id, iot_id] = args.as_slice() else {
        anyhow::bail!("usage: cloud_api ENDPOINT APP_KEY APP_SECRET PROJECT_ID IOT_ID");
    };
    let client = CloudClient::new(CloudConfig::new(endpoint, app_key, app_secret, project_id))?;
    let info = client
        .call("/cloud/thing/info/get", json!({"iotId": iot_id}))
        .await?;
    println!("device: {info}");
    let status = client
        .call("/cloud/thing/status/get", json!({"iotId": iot_id}))
        .await?;
    println!("status: {status}");
    match client
        .call(
            "/cloud/thing/properties/set",
            json!({"iotId": iot_id, "items": {"LightSwitch": 1}}),
        )
        .await
    {
        Ok(r) => println!("property set sent, requestId {}", r["requestId"]),
        Err(e) if e.code() == Some(iotsync_sdk::cloud::code::DEVICE_OFFLINE) => {
            println!("the device is offline")
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
