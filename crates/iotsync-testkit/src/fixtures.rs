//! Projects, products and devices made over the REST API, the way an operator makes them.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::Rest;

/// Three device names, for tests that need several devices (the backlog delivers one
/// message per device at a time).
pub const LAMPS: [&str; 3] = ["lamp0001", "lamp0002", "lamp0003"];

/// What [`Rest::create_project`] makes: a project, one product ("Lamp", device type
/// "Light"), the devices, and sync on a method if asked.
#[derive(Debug, Clone)]
pub struct ProjectSpec {
    name: String,
    devices: Vec<String>,
    sync: Option<String>,
    sync_first: bool,
}

impl ProjectSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            devices: Vec::new(),
            sync: None,
            sync_first: false,
        }
    }

    pub fn devices(mut self, names: &[&str]) -> Self {
        self.devices = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sync on `method` once the devices exist: the backlog starts empty.
    pub fn sync_after(mut self, method: &str) -> Self {
        self.sync = Some(method.to_owned());
        self.sync_first = false;
        self
    }

    /// Sync on `method` before the product is made: each device's lifecycle `create`
    /// message is stacked first.
    pub fn sync_first(mut self, method: &str) -> Self {
        self.sync = Some(method.to_owned());
        self.sync_first = true;
        self
    }
}

#[derive(Debug, Clone)]
pub struct Device {
    pub iot: String,
    pub dn: String,
    pub secret: String,
}

#[derive(Debug, Clone)]
pub struct Project {
    pub pid: String,
    pub app_key: String,
    pub app_secret: String,
    /// Empty until a product exists.
    pub pk: String,
    pub devices: Vec<Device>,
}

impl Project {
    /// The first device's iotId.
    pub fn iot(&self) -> &str {
        &self.first().iot
    }
    /// The first device's name.
    pub fn dn(&self) -> &str {
        &self.first().dn
    }
    /// Every device's iotId, in the order they were made.
    pub fn iots(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.iot.clone()).collect()
    }
    fn first(&self) -> &Device {
        self.devices.first().expect("the project has no device")
    }
}

impl Rest {
    /// A project with one product and the three [`LAMPS`], then sync on AMQP (enabled
    /// after the devices exist: the backlog starts empty).
    pub async fn project(&self, name: &str) -> Project {
        self.create_project(&ProjectSpec::new(name).devices(&LAMPS).sync_after("amqp"))
            .await
    }

    /// A project with sync on `method` first, then one product and the device
    /// "lamp0001" (whose lifecycle `create` message is the project's first message).
    pub async fn synced_project(&self, method: &str) -> Project {
        self.create_project(
            &ProjectSpec::new("Home")
                .devices(&LAMPS[..1])
                .sync_first(method),
        )
        .await
    }

    /// A project with sync on AMQP first, one product and the devices `names`.
    pub async fn project_with_devices(&self, name: &str, names: &[&str]) -> Project {
        self.create_project(&ProjectSpec::new(name).devices(names).sync_first("amqp"))
            .await
    }

    /// Makes what `spec` says; fails the test on any error answer.
    pub async fn create_project(&self, spec: &ProjectSpec) -> Project {
        let p = self
            .post_expect(
                "/api/v1/projects",
                json!({"name": spec.name}),
                StatusCode::CREATED,
            )
            .await;
        let mut project = Project {
            pid: str_of(&p, "projectId"),
            app_key: str_of(&p, "appKey"),
            app_secret: str_of(&p, "appSecret"),
            pk: String::new(),
            devices: Vec::new(),
        };
        if spec.sync_first {
            self.enable_sync(&project.pid, spec.sync.as_deref().unwrap_or("amqp"))
                .await;
        }
        project.pk = self.add_product(&project.pid).await;
        for dn in &spec.devices {
            self.add_device(&mut project, dn).await;
        }
        if let (Some(method), false) = (&spec.sync, spec.sync_first) {
            self.enable_sync(&project.pid, method).await;
        }
        project
    }

    /// A product of the project; its productKey.
    pub async fn add_product(&self, pid: &str) -> String {
        let pr = self
            .post_expect(
                &format!("/api/v1/projects/{pid}/products"),
                json!({"name": "Lamp", "deviceType": "Light"}),
                StatusCode::CREATED,
            )
            .await;
        str_of(&pr, "productKey")
    }

    /// A device named `dn` of the project's product (made first if there is none).
    pub async fn add_device(&self, p: &mut Project, dn: &str) -> Device {
        if p.pk.is_empty() {
            p.pk = self.add_product(&p.pid).await;
        }
        let d = self
            .post_expect(
                &format!("/api/v1/projects/{}/products/{}/devices", p.pid, p.pk),
                json!({ "deviceName": dn }),
                StatusCode::CREATED,
            )
            .await;
        let dev = Device {
            iot: str_of(&d, "iotId"),
            dn: dn.to_owned(),
            secret: str_of(&d, "deviceSecret"),
        };
        p.devices.push(dev.clone());
        dev
    }

    pub async fn enable_sync(&self, pid: &str, method: &str) {
        self.post_expect(
            &format!("/api/v1/projects/{pid}/sync/enable"),
            json!({ "method": method }),
            StatusCode::OK,
        )
        .await;
    }

    /// An end user of the project; its identityId.
    pub async fn add_user(&self, pid: &str, login: &str) -> String {
        let u = self
            .post_expect(
                &format!("/api/v1/projects/{pid}/users"),
                json!({ "loginName": login }),
                StatusCode::CREATED,
            )
            .await;
        str_of(&u, "identityId")
    }

    /// Property `items` reported on the `i`-th device's behalf (0-based).
    pub async fn report_on(&self, p: &Project, i: usize, items: Value) -> Value {
        self.report_device(&p.pid, &p.devices[i].iot, items).await
    }

    /// Property `items` reported on the first device's behalf.
    pub async fn report(&self, p: &Project, items: Value) -> Value {
        self.report_on(p, 0, items).await
    }

    /// `n` property reports of the first device (`Brightness` 0, 1, …).
    pub async fn reports(&self, p: &Project, n: usize) {
        for i in 0..n {
            self.report(p, json!({ "Brightness": i })).await;
        }
    }

    /// A property report, an event, an account and a binding (4 messages).
    pub async fn produce_each_kind(&self, p: &Project) {
        let base = format!("/api/v1/projects/{}/devices/{}", p.pid, p.iot());
        self.report(p, json!({"LightSwitch": 1})).await;
        self.post_expect(
            &format!("{base}/events/Overheat"),
            json!({"value": {"temperature": 91}, "type": "alert"}),
            StatusCode::OK,
        )
        .await;
        let ident = self.add_user(&p.pid, "ann").await;
        self.post_expect(
            &format!("/api/v1/projects/{}/bindings", p.pid),
            json!({"identityId": ident, "iotId": p.iot(), "owned": 1}),
            StatusCode::CREATED,
        )
        .await;
    }

    /// The operator's import of an existing project (`POST /admin/import`) with sync on
    /// for `device_data` / `user_data`, and the legacy push URL if given; no product yet.
    pub async fn import(
        &self,
        app_key: &str,
        app_secret: &str,
        device_data: &str,
        user_data: &str,
        url: Option<&str>,
    ) -> Project {
        let mut sync = json!({"enabled": true, "deviceData": device_data, "userData": user_data});
        if let Some(u) = url {
            sync["legacyHttpUrl"] = json!(u);
        }
        let p = self
            .post_expect(
                "/api/v1/admin/import",
                json!({"name": "Imported", "appKey": app_key, "appSecret": app_secret, "sync": sync}),
                StatusCode::CREATED,
            )
            .await;
        Project {
            pid: str_of(&p, "projectId"),
            app_key: app_key.to_owned(),
            app_secret: app_secret.to_owned(),
            pk: String::new(),
            devices: Vec::new(),
        }
    }
}

fn str_of(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .to_owned()
}
