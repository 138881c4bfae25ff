//! Issue 15, findings 1–3: outside input bounded by the bytes received (AMQP before and
//! after SASL), and every listener's connection caps and time-outs (API, h2c, AMQP,
//! MQTT) against floods of idle and half-sent connections, over real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};

use iotsync_core::sign::amqp::{sign_password, AmqpAuthMode, AmqpCredentials};
use iotsync_testkit::{Project, TestServer, TOKEN, WAIT};

/// The frame of issue 15: a 24-byte sasl-init whose mechanism (sym32) claims 1 GiB.
const BOMB: [u8; 24] = [
    0x00, 0x00, 0x00, 0x18, 0x02, 0x01, 0x00, 0x00, 0x00, 0x53, 0x41, 0xc0, 0x0a, 0x01, 0xb3, 0x40,
    0x00, 0x00, 0x00, 0x50, 0x4c, 0x41, 0x49, 0x4e,
];
const SASL_HEADER: &[u8; 8] = b"AMQP\x03\x01\x00\x00";
const AMQP_HEADER: &[u8; 8] = b"AMQP\x00\x01\x00\x00";

/// Short time-outs and caps, so floods are cheap and closures come fast.
const LIMITS: &str = r#"
[limits.api]
max_connections = 1000
max_connections_per_source = 1000
header_read_timeout = "1s"
body_timeout = "1s"
idle_timeout = "2s"
[limits.amqp]
max_connections = 100
max_connections_per_source = 100
handshake_timeout = "1s"
[limits.http2]
max_connections = 100
max_connections_per_source = 100
handshake_timeout = "1s"
idle_timeout = "2s"
[limits.mqtt]
max_connections = 100
max_connections_per_source = 100
handshake_timeout = "1s"
"#;

/// Caps of 5 per source with long time-outs, so a closure can only be the cap's.
const CAPS: &str = r#"
[limits.api]
max_connections = 50
max_connections_per_source = 5
header_read_timeout = "60s"
idle_timeout = "60s"
[limits.amqp]
max_connections = 50
max_connections_per_source = 5
handshake_timeout = "15s"
[limits.http2]
max_connections = 50
max_connections_per_source = 5
handshake_timeout = "60s"
[limits.mqtt]
max_connections = 50
max_connections_per_source = 5
handshake_timeout = "60s"
"#;

/// How long a test waits for the server to close a socket (generous: a loaded machine).
const CLOSE_WAIT: Duration = Duration::from_secs(20);

fn vm_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Reads until the server closes (EOF or reset); returns what came, or `None` if the
/// socket was still open after `wait`.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, wait: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let r = timeout(wait, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    r.ok().map(|()| got)
}

async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

async fn read_sasl_frame<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size).await.unwrap();
    let mut rest = vec![0u8; u32::from_be_bytes(size) as usize - 4];
    s.read_exact(&mut rest).await.unwrap();
    rest
}

/// Sends the issue's frame after the SASL header; returns what the server sent after
/// its mechanisms, up to its close.
async fn send_bomb<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Vec<u8> {
    s.write_all(SASL_HEADER).await.unwrap();
    let mut h = [0u8; 8];
    s.read_exact(&mut h).await.unwrap();
    assert_eq!(&h, SASL_HEADER);
    let mechanisms = read_sasl_frame(&mut s).await;
    assert_eq!(&mechanisms[4..7], &[0x00, 0x53, 0x40], "sasl-mechanisms");
    s.write_all(&BOMB).await.unwrap();
    closed_within(&mut s, CLOSE_WAIT)
        .await
        .expect("the server closes the connection")
}

/// A `sasl-outcome` with code `sys-perm` (3).
fn is_sys_perm_outcome(bytes: &[u8]) -> bool {
    bytes.len() > 8
        && bytes[8..11] == [0x00, 0x53, 0x44]
        && bytes.windows(2).any(|w| w == [0x50, 0x03])
}

async fn tls_client(
    env: &TestServer,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(env.ca_file()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

async fn consumer_gets_a_message(env: &TestServer, p: &Project, endpoint: String) {
    let mut b = iotsync_sdk::amqp::AmqpConsumer::builder()
        .endpoint(endpoint.clone())
        .app_key(p.app_key.clone())
        .app_secret(p.app_secret.clone())
        .client_id("after-the-bomb")
        .credit(10)
        .clock(Arc::new(env.clock.clone()));
    if endpoint.starts_with("amqps") {
        b = b.ca_pem(std::fs::read(env.ca_file()).unwrap());
    }
    let mut s = b.build().unwrap().connect().await.unwrap();
    env.report(p, json!({"LightSwitch": 1})).await;
    match timeout(WAIT, s.next()).await {
        Ok(Some(Ok(m))) => m.ack().await.unwrap(),
        other => panic!(
            "expected a message, got {:?}",
            other.map(|o| o.map(|r| r.is_ok()))
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sasl_init_claiming_a_gibibyte_is_refused_on_amqp_and_amqps() {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let amqp = env.server().addr("amqp").unwrap();
    let amqps = env.server().addr("amqps").unwrap();
    let rss_before = vm_rss_kib();
    for _ in 0..4 {
        let rest = send_bomb(TcpStream::connect(amqp).await.unwrap()).await;
        assert!(is_sys_perm_outcome(&rest), "amqp: {rest:02x?}");
        let rest = send_bomb(tls_client(&env, amqps).await).await;
        assert!(is_sys_perm_outcome(&rest), "amqps: {rest:02x?}");
    }
    let grown_mib = vm_rss_kib().saturating_sub(rss_before) / 1024;
    eprintln!("8 bombs: RSS grew {grown_mib} MiB");
    assert!(grown_mib < 256, "RSS grew {grown_mib} MiB");
    // Real consumers are still served, on both listeners.
    consumer_gets_a_message(&env, &p, env.amqp_url()).await;
    consumer_gets_a_message(&env, &p, env.amqps_url()).await;
    env.stop().await;
}

/// Logs in over SASL with the project's credentials; the stream is then at the AMQP
/// protocol header.
async fn logged_in(env: &TestServer, p: &Project) -> TcpStream {
    let creds = AmqpCredentials {
        client_id: "raw".into(),
        auth: AmqpAuthMode::AppKey {
            random_ms: env.now(),
        },
        app_key: p.app_key.parse().unwrap(),
        group: None,
        iot_instance_id: None,
    };
    let mut response = vec![0u8];
    response.extend_from_slice(creds.username().as_bytes());
    response.push(0);
    response.extend_from_slice(sign_password(&creds, &p.app_secret).as_bytes());
    let mut s = TcpStream::connect(env.server().addr("amqp").unwrap())
        .await
        .unwrap();
    s.write_all(SASL_HEADER).await.unwrap();
    let mut h = [0u8; 8];
    s.read_exact(&mut h).await.unwrap();
    read_sasl_frame(&mut s).await;
    // sasl-init: mechanism PLAIN, initial-response.
    let mut body = vec![0x00, 0x53, 0x41, 0xd0];
    let mut list = vec![0, 0, 0, 2, 0xa3, 5];
    list.extend_from_slice(b"PLAIN");
    list.push(0xb0);
    list.extend_from_slice(&(response.len() as u32).to_be_bytes());
    list.extend_from_slice(&response);
    body.extend_from_slice(&((list.len()) as u32).to_be_bytes());
    body.extend_from_slice(&list);
    let mut frame = ((8 + body.len()) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[2, 1, 0, 0]);
    frame.extend_from_slice(&body);
    s.write_all(&frame).await.unwrap();
    let outcome = read_sasl_frame(&mut s).await;
    assert_eq!(&outcome[4..7], &[0x00, 0x53, 0x44], "{outcome:02x?}");
    assert!(
        outcome.windows(2).any(|w| w == [0x50, 0x00]),
        "ok: {outcome:02x?}"
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sasl_frames_claiming_more_than_they_hold_close_the_connection() {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    // A frame whose size claims 2 GiB.
    let huge_frame = [0x7f, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00];
    // An open whose container-id (str32) claims 1 GiB, in a 24-byte frame.
    let open_bomb = [
        0x00, 0x00, 0x00, 0x18, 0x02, 0x00, 0x00, 0x00, 0x00, 0x53, 0x10, 0xc0, 0x0b, 0x01, 0xb1,
        0x40, 0x00, 0x00, 0x00, 0x61, 0x62, 0x63, 0x64, 0x65,
    ];
    let rss_before = vm_rss_kib();
    for bad in [&huge_frame[..], &open_bomb[..]] {
        let mut s = logged_in(&env, &p).await;
        s.write_all(AMQP_HEADER).await.unwrap();
        s.write_all(bad).await.unwrap();
        let t0 = Instant::now();
        // Closed by the frame check, long before the 15 s the receiver link is due in.
        let got = closed_within(&mut s, Duration::from_secs(10))
            .await
            .expect("closed after a bad frame");
        eprintln!("closed {:?} after the bad frame", t0.elapsed());
        assert!(got.len() <= 8 || &got[..8] == AMQP_HEADER, "{got:02x?}");
    }
    let grown_mib = vm_rss_kib().saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 256, "RSS grew {grown_mib} MiB");
    consumer_gets_a_message(&env, &p, env.amqp_url()).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_api_connections_are_closed_while_the_api_answers() {
    let mut env = TestServer::builder().config(LIMITS).start().await;
    // The server closes idle keep-alive connections after 2 s here: a pooled one could be
    // reused just as it is closed (IncompleteMessage). One connection per request.
    env.http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let api = env.server().api_addr;
    let mut socks = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(api).await.unwrap();
        match i % 4 {
            0 => {}
            1 => s
                .write_all(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap(),
            2 => s
                .write_all(
                    format!(
                        "POST /api/v1/projects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":"
                    )
                    .as_bytes(),
                )
                .await
                .unwrap(),
            _ => {
                // A whole request, then silence on the keep-alive connection.
                s.write_all(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap()
            }
        }
        socks.push((i % 4, s));
    }
    // The API answers during the flood.
    let (status, _) = env.get("/api/v1/openapi.json").await;
    assert!(status.is_success());
    let mut waits = Vec::new();
    for (kind, mut s) in socks {
        waits.push(tokio::spawn(async move {
            let got = closed_within(&mut s, CLOSE_WAIT).await;
            (kind, got)
        }));
    }
    for w in waits {
        let (kind, got) = w.await.unwrap();
        let got = got.unwrap_or_else(|| panic!("a kind-{kind} socket stayed open"));
        let text = String::from_utf8_lossy(&got);
        match kind {
            2 => assert!(
                text.starts_with("HTTP/1.1 408") && text.contains("body_timeout"),
                "{text}"
            ),
            3 => assert!(text.starts_with("HTTP/1.1 200"), "{text}"),
            _ => assert!(got.is_empty(), "{text}"),
        }
    }
    let (status, _) = env.get("/api/v1/openapi.json").await;
    assert!(status.is_success());
    env.stop().await;
}

/// Opens `n` connections from 127.0.0.1 that stay open (nothing sent), then checks that
/// one more from there is closed at once while one from 127.0.0.2 is not.
async fn per_source_cap_holds(name: &str, addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(connect_from("127.0.0.1", addr).await);
    }
    let mut over = connect_from("127.0.0.1", addr).await;
    assert!(
        closed_within(&mut over, CLOSE_WAIT).await.is_some(),
        "{name}: the connection over the cap stayed open"
    );
    let mut other = connect_from("127.0.0.2", addr).await;
    assert!(
        closed_within(&mut other, Duration::from_millis(1500))
            .await
            .is_none(),
        "{name}: another source was refused"
    );
    held.push(other);
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_per_source_cap_connections_are_closed_and_other_sources_are_served() {
    let env = TestServer::builder().config(CAPS).start().await;
    let p = env.project("Home").await;
    let api = env.server().api_addr;
    let held = per_source_cap_holds("api", api, 5).await;
    // Another source gets answers while 127.0.0.1 is at its cap.
    let http = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let r = http
        .get(format!("http://{api}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    drop(held);
    // Places are given back when connections close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = env.get("/api/v1/openapi.json").await;
    assert!(status.is_success());

    for name in ["amqp", "amqps", "http2", "http2-tls", "mqtt", "mqtts"] {
        let addr = env.server().addr(name).unwrap();
        let held = per_source_cap_holds(name, addr, 5).await;
        drop(held);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer_gets_a_message(&env, &p, env.amqp_url()).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_amqp_and_mqtt_close_sockets_that_never_finish_their_handshake() {
    let mut env = TestServer::builder().config(LIMITS).start().await;
    // The server closes idle keep-alive connections after 2 s here: a pooled one could be
    // reused just as it is closed (IncompleteMessage). One connection per request.
    env.http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let p = env.project("Home").await;
    let mut waits = Vec::new();
    let sends: [(&str, &[u8]); 8] = [
        ("http2", b""),
        ("http2", b"PRI * HTTP/2.0\r\n"),
        ("http2-tls", b""),
        ("amqp", b""),
        ("amqp", b"AMQP\x03"),
        ("amqps", b""),
        ("mqtt", b""),
        ("mqtt", b"\x10\x20\x00\x04MQ"),
    ];
    for (name, bytes) in sends {
        let addr = env.server().addr(name).unwrap();
        for _ in 0..20 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(bytes).await.unwrap();
            waits.push(tokio::spawn(async move {
                (
                    name,
                    bytes.len(),
                    closed_within(&mut s, CLOSE_WAIT).await.is_some(),
                )
            }));
        }
    }
    // h2c stays usable: a client that sends the preface gets the server's SETTINGS.
    let mut h2 = TcpStream::connect(env.server().addr("http2").unwrap())
        .await
        .unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    timeout(WAIT, h2.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[3], 0x04, "a SETTINGS frame: {head:02x?}");
    for w in waits {
        let (name, sent, closed) = w.await.unwrap();
        assert!(closed, "{name} kept a socket that sent {sent} bytes");
    }
    // A gRPC connection with no stream is closed after limits.http2.idle_timeout.
    assert!(
        closed_within(&mut h2, CLOSE_WAIT).await.is_some(),
        "an idle h2c connection stayed open"
    );
    consumer_gets_a_message(&env, &p, env.amqp_url()).await;
    env.stop().await;
}
