//! The MQTT device gateway over real sockets, with devices nobody here wrote: paho-mqtt
//! (Python) and mosquitto_pub / mosquitto_sub, each computing its own SPEC §10
//! credentials. Produced messages are read through the in-process delivery hub (the
//! AMQP channel was not available when these were written).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use iotsync_testkit::peers::{self, mosquitto};
use iotsync_testkit::{repo_root, Device, Msg, PeerProc, RawDevice, TestServer};

fn topics(ms: &[Msg]) -> Vec<String> {
    ms.iter().map(|m| m.topic.clone()).collect()
}

#[tokio::test]
async fn paho_device_reports_properties_and_events_as_spec_messages() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let dev = p.devices[0].clone();
    let mut c = env.consumer(&p).await;
    c.until("/thing/lifecycle").await;

    let mut paho = peers::paho(&env, &p.pk, &dev, "post", &[]);
    assert_eq!(paho.next_event("connack").await["code"], 0);
    let prop = paho.next_event("puback").await;
    assert_eq!(prop["acked"], true);
    let r = paho.next_event("reply").await;
    assert_eq!(r["reply"]["id"], "1");
    assert_eq!(r["reply"]["code"], 200);
    assert_eq!(paho.next_event("puback").await["acked"], true);
    let r = paho.next_event("reply").await;
    assert_eq!(
        (r["step"].as_str(), &r["reply"]["code"]),
        (Some("event"), &json!(200))
    );
    let r = paho.next_event("reply").await;
    assert_eq!(r["step"], "malformed");
    assert_eq!(r["reply"]["code"], 460);
    let r = paho.next_event("reply").await;
    assert_eq!(r["step"], "unknown_method");
    assert_eq!(r["reply"]["id"], "4");
    assert_eq!(r["reply"]["code"], 404);
    assert_eq!(paho.next_event("still_connected").await["value"], true);
    paho.next_event("done").await;
    assert!(paho.finish().await.success());

    let ms = c.until("/mqtt/status").await;
    assert_eq!(ms.len(), 1, "online comes first: {:?}", topics(&ms));
    let online = &ms[0].payload;
    assert_eq!(online["action"], "online");
    assert_eq!(online["status"]["value"], "1");
    assert_eq!(online["iotId"], dev.iot.as_str());
    assert_eq!(online["deviceType"], "Light");

    let ms = c
        .until(&format!("/{}/lamp0001/thing/event/Alarm/post", p.pk))
        .await;
    let post = ms
        .iter()
        .find(|m| m.topic == format!("/{}/lamp0001/thing/event/property/post", p.pk))
        .expect("property post message");
    let pl = &post.payload;
    assert_eq!(pl["deviceType"], "Light");
    assert_eq!(pl["productKey"], p.pk.as_str());
    assert_eq!(pl["deviceName"], "lamp0001");
    assert_eq!(pl["iotId"], dev.iot.as_str());
    assert_eq!(pl["items"]["LightSwitch"]["value"], 1);
    assert!(pl["items"]["LightSwitch"]["time"].is_i64());
    assert_eq!(
        pl["items"]["Brightness"],
        json!({"value": 42, "time": 1_700_000_000_123_i64})
    );
    assert!(pl["gmtCreate"].is_i64());
    let ev = &ms.last().unwrap().payload;
    assert_eq!(ev["identifier"], "Alarm");
    assert_eq!(ev["value"], json!({"Level": 3}));
    assert_eq!(ev["time"], 1_700_000_000_456_i64);
    assert_eq!(ev["type"], "info");

    // The malformed and unknown-method posts produced nothing; then the device left.
    let ms = c.until("/mqtt/status").await;
    assert_eq!(topics(&ms), vec![format!("/{}/lamp0001/mqtt/status", p.pk)]);
    assert_eq!(ms[0].payload["action"], "offline");
    assert_eq!(ms[0].payload["status"]["value"], "0");

    // Last values are kept in the registry (written behind the reports: readers settle
    // the property writer first, as the REST and cloud API readers do).
    env.server().ingest().settle_properties().await;
    let props = env
        .server()
        .registry()
        .device_properties(&p.pid.parse().unwrap(), &dev.iot.parse().unwrap())
        .await
        .unwrap();
    let names: Vec<_> = props.iter().map(|p| p.identifier.as_str()).collect();
    assert_eq!(names, vec!["Brightness", "LightSwitch"]);
    env.stop().await;
}

#[tokio::test]
async fn mosquitto_pub_property_post_arrives_between_online_and_offline() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["sensor01"]).await;
    let dev = p.devices[0].clone();
    let mut c = env.consumer(&p).await;
    c.until("/thing/lifecycle").await;
    let topic = format!("/sys/{}/sensor01/thing/event/property/post", p.pk);
    let body = r#"{"id":"11","version":"1.0","method":"thing.event.property.post","params":{"Temperature":21.5}}"#;
    let (code, _, err) = mosquitto(&env, "pub", &p.pk, &dev, &topic, body).await;
    assert_eq!(code, 0, "mosquitto_pub failed: {err}");
    let mut ms = c.until("/mqtt/status").await;
    ms.extend(c.until("/property/post").await);
    ms.extend(c.until("/mqtt/status").await);
    let actions: Vec<Value> = ms
        .iter()
        .map(|m| m.payload.get("action").cloned().unwrap_or(Value::Null))
        .collect();
    assert_eq!(
        actions,
        vec![json!("online"), Value::Null, json!("offline")]
    );
    assert_eq!(ms[1].payload["items"]["Temperature"]["value"], 21.5);
    env.stop().await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_the_mqtt_return_code() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let mut wrong = p.devices[0].clone();
    wrong.secret = "not-the-device-secret".into();
    let mut paho = peers::paho(&env, &p.pk, &wrong, "connect-only", &[]);
    let code = paho.next_event("connack").await["code"].as_i64().unwrap();
    // paho v2 reports CONNACK 4 of MQTT 3.1.1 as reason code 134 "bad user name or password".
    assert_eq!(code, 134);
    paho.finish().await;

    let topic = format!("/sys/{}/lamp0001/thing/event/property/post", p.pk);
    let (code, _, err) = mosquitto(&env, "bad", &p.pk, &p.devices[0], &topic, "{}").await;
    assert_ne!(code, 0);
    assert!(
        err.to_lowercase().contains("bad user name or password"),
        "{err}"
    );
    // Unknown device: the same answer, so names cannot be probed.
    let ghost = Device {
        iot: String::new(),
        dn: "ghost001".into(),
        secret: "x".into(),
    };
    let (code, _, err) = mosquitto(&env, "pub", &p.pk, &ghost, &topic, "{}").await;
    assert_ne!(code, 0);
    assert!(
        err.to_lowercase().contains("bad user name or password"),
        "{err}"
    );
    env.stop().await;
}

#[tokio::test]
async fn disabled_device_is_not_authorized() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let dev = p.devices[0].clone();
    let (s, v) = env
        .post(
            &format!("/api/v1/projects/{}/devices/{}/disable", p.pid, dev.iot),
            json!({}),
        )
        .await;
    assert!(s.is_success(), "{v}");
    let mut paho = peers::paho(&env, &p.pk, &dev, "connect-only", &[]);
    // CONNACK 5 "not authorized" → paho v2 reason code 135.
    assert_eq!(paho.next_event("connack").await["code"], 135);
    paho.finish().await;
    env.stop().await;
}

#[tokio::test]
async fn device_publishing_on_another_devices_topic_is_disconnected() {
    let env = TestServer::start().await;
    let p = env
        .project_with_devices("Home", &["lamp0001", "lamp0002"])
        .await;
    let mut c = env.consumer(&p).await;
    // Both devices' lifecycle messages, in one batch or two.
    let mut lifecycles = 0;
    while lifecycles < 2 {
        lifecycles += c
            .until("/thing/lifecycle")
            .await
            .iter()
            .filter(|m| m.topic.ends_with("/thing/lifecycle"))
            .count();
    }
    let mut paho = peers::paho(
        &env,
        &p.pk,
        &p.devices[0],
        "foreign",
        &["--foreign-dn", "lamp0002"],
    );
    assert_eq!(paho.next_event("connack").await["code"], 0);
    assert_eq!(paho.next_event("disconnected").await["value"], true);
    paho.finish().await;

    let topic = format!("/sys/{}/lamp0001/thing/event/property/post", p.pk);
    let body = r#"{"id":"1","params":{"LightSwitch":1}}"#;
    let (code, _, _) = mosquitto(&env, "pub", &p.pk, &p.devices[1], &topic, body).await;
    assert_ne!(code, 0, "mosquitto_pub on a foreign topic must fail");

    // Only status messages (online/offline of each connection): no property post
    // reached anyone. They may come in one batch or several.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let ms = c.until("/mqtt/status").await;
        assert!(
            ms.iter().all(|m| m.topic.ends_with("/mqtt/status")),
            "{:?}",
            topics(&ms)
        );
        seen.extend(ms);
    }
    assert_eq!(seen.len(), 4, "{:?}", topics(&seen));
    c.nothing().await;
    env.stop().await;
}

#[tokio::test]
async fn second_connect_takes_over_and_status_stays_online() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let dev = p.devices[0].clone();
    let mut c = env.consumer(&p).await;
    c.until("/thing/lifecycle").await;
    let mut first = peers::paho(&env, &p.pk, &dev, "connect-only", &[]);
    assert_eq!(first.next_event("connack").await["code"], 0);
    first.next_event("ready").await;
    let mut second = peers::paho(&env, &p.pk, &dev, "connect-only", &[]);
    assert_eq!(second.next_event("connack").await["code"], 0);
    second.next_event("ready").await;
    // The first one is thrown out (paho may reconnect on its own; stop it).
    first.finish().await;

    let mut actions = Vec::new();
    for _ in 0..3 {
        let ms = c.until("/mqtt/status").await;
        actions.push(ms.last().unwrap().payload["action"].clone());
    }
    assert_eq!(
        actions,
        vec![json!("online"), json!("offline"), json!("online")]
    );
    let d = env
        .server()
        .registry()
        .get_device(&p.pid.parse().unwrap(), &dev.iot.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(d.status.as_str(), "online");
    c.nothing().await;
    second.finish().await;
    let ms = c.until("/mqtt/status").await;
    assert_eq!(ms.last().unwrap().payload["action"], "offline");
    env.stop().await;
}

#[tokio::test]
async fn tls_listener_accepts_a_paho_device() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let mut c = env.consumer(&p).await;
    c.until("/thing/lifecycle").await;
    let port = env.server().addr("mqtts").expect("mqtts listener").port();
    let ca = env.server().tls.cert_file.display().to_string();
    let script = repo_root().join("tests/peers/mqtt/device.py");
    let d = &p.devices[0];
    let mut paho = PeerProc::command(
        "peer",
        "python3",
        &[
            script.display().to_string(),
            "--port".into(),
            port.to_string(),
            "--pk".into(),
            p.pk.clone(),
            "--dn".into(),
            d.dn.clone(),
            "--secret".into(),
            d.secret.clone(),
            "--mode".into(),
            "post".into(),
            "--tls-ca".into(),
            ca,
        ],
    );
    assert_eq!(paho.next_event("connack").await["code"], 0);
    assert_eq!(paho.next_event("puback").await["acked"], true);
    paho.next_event("done").await;
    paho.finish().await;
    c.until("/property/post").await;
    env.stop().await;
}

/// Raw CONNECT with a 1 s keep-alive, then silence: the gateway closes the connection
/// (1.5 × keep-alive) and records the device offline.
#[tokio::test]
async fn silent_device_is_dropped_after_its_keep_alive() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let dev = &p.devices[0];
    let mut c = env.consumer(&p).await;
    c.until("/thing/lifecycle").await;
    // A fresh timestamp: one outside auth.device_timestamp_window is refused.
    let ts = iotsync_core::Clock::now_ms(&env.clock);
    let out = RawDevice::connect_packet(&p.pk, &dev.dn, &dev.secret, ts, 1);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", env.mqtt_port()))
        .await
        .unwrap();
    s.write_all(&out).await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, [0x20, 2, 0, 0], "CONNACK accepted");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest))
        .await
        .expect("the gateway must close a silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let ms = c.until("/mqtt/status").await;
    assert_eq!(ms[0].payload["action"], "online");
    let ms = c.until("/mqtt/status").await;
    assert_eq!(ms[0].payload["action"], "offline");
    env.stop().await;
}

/// End to end with outside clients on both sides: a paho-mqtt device publishes, a
/// python-qpid-proton consumer receives the SPEC §4 messages over the AMQP channel.
#[tokio::test]
async fn paho_device_messages_reach_a_proton_amqp_consumer_in_order() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let amqp = env.server().addr("amqp").expect("amqp listener");
    let script = repo_root().join("tests/peers/amqp/consumer.py");
    let ts = iotsync_core::Clock::now_ms(&env.clock);
    let mut consumer = PeerProc::command(
        "peer",
        "python3",
        &[
            script.display().to_string(),
            "--url".into(),
            format!("amqp://{amqp}"),
            "--app-key".into(),
            p.app_key.clone(),
            "--app-secret".into(),
            p.app_secret.clone(),
            "--ts".into(),
            ts.to_string(),
        ],
    );
    let mut paho = peers::paho(&env, &p.pk, &p.devices[0], "post", &[]);
    assert_eq!(paho.next_event("connack").await["code"], 0);
    paho.next_event("done").await;
    paho.finish().await;
    let mut got = Vec::new();
    while got.len() < 5 {
        let m = consumer.next_event("message").await;
        got.push(m);
    }
    let topics: Vec<&str> = got.iter().map(|m| m["topic"].as_str().unwrap()).collect();
    let pk = &p.pk;
    assert_eq!(
        topics,
        vec![
            format!("/{pk}/lamp0001/thing/lifecycle"),
            format!("/{pk}/lamp0001/mqtt/status"),
            format!("/{pk}/lamp0001/thing/event/property/post"),
            format!("/{pk}/lamp0001/thing/event/Alarm/post"),
            format!("/{pk}/lamp0001/mqtt/status"),
        ]
    );
    assert_eq!(got[1]["payload"]["action"], "online");
    assert_eq!(got[2]["payload"]["items"]["Brightness"]["value"], 42);
    assert_eq!(got[3]["payload"]["value"]["Level"], 3);
    assert_eq!(got[4]["payload"]["action"], "offline");
    for m in &got {
        assert_eq!(m["amqpMessageId"], m["messageId"]);
    }
    drop(consumer);
    env.stop().await;
}
