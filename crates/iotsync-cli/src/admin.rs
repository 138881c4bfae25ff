//! `iotsync admin …`: the operator's CLI over the REST API (`/api/v1`), for scripts and
//! people. Human tables by default, `--json` for scripts; errors are printed with their
//! stable code, and the exit code says what failed (see [`Exit`]).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

/// How `iotsync admin` ends. Scripts branch on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The server could not be reached or answered something that is not the API.
    Unreachable = 1,
    /// The operator token is missing or refused (401/403).
    Unauthorized = 3,
    /// What was named does not exist (404).
    NotFound = 4,
    /// The server refused the request as it stands (other 4xx: invalid, conflict, …).
    Refused = 5,
    /// The server failed (5xx).
    ServerError = 6,
    /// The CLI's own input is wrong (a file that cannot be read, bad JSON).
    BadInput = 7,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The server's API address.
    #[arg(
        long,
        global = true,
        env = "IOTSYNC_ADMIN_ENDPOINT",
        default_value = "http://127.0.0.1:7880"
    )]
    endpoint: String,
    /// The operator token (default: the data dir's `operator-token` file).
    #[arg(
        long,
        global = true,
        env = "IOTSYNC_OPERATOR_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Where to find `operator-token` when no token is given.
    #[arg(
        long,
        global = true,
        env = "IOTSYNC_DATA_DIR",
        default_value = "iotsync-data"
    )]
    data_dir: PathBuf,
    /// Print the server's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Projects: create, list, show, rotate-secret.
    #[command(subcommand)]
    Projects(ProjectsCmd),
    /// Products of a project: create, list.
    #[command(subcommand)]
    Products(ProductsCmd),
    /// Devices of a project: create, list.
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Data synchronization settings: show, enable, disable, switch, product on/off.
    #[command(subcommand)]
    Sync(SyncCmd),
    /// Consumer groups: list, create, delete.
    #[command(subcommand)]
    Groups(GroupsCmd),
    /// Backlog figures of a project and each of its groups.
    Stats { project: String },
    /// The dead-letter list: list, retry, drop.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLettersCmd),
    /// Import an existing configuration (a JSON file, `-` for standard input).
    Import { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum ProjectsCmd {
    Create {
        name: String,
    },
    List,
    Show {
        project: String,
    },
    /// A new appSecret (shown once).
    RotateSecret {
        project: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProductsCmd {
    Create {
        project: String,
        name: String,
        #[arg(long, default_value = "Other")]
        device_type: String,
    },
    List {
        project: String,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCmd {
    Create {
        project: String,
        product_key: String,
        device_name: String,
    },
    List {
        project: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Method {
    Amqp,
    Http2,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Amqp => "amqp",
            Method::Http2 => "http2",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
enum SyncCmd {
    Show {
        project: String,
    },
    Enable {
        project: String,
        #[arg(long, value_enum, default_value = "amqp")]
        method: Method,
    },
    Disable {
        project: String,
    },
    /// http2 → amqp without disabling.
    Switch {
        project: String,
        #[arg(long, value_enum, default_value = "amqp")]
        method: Method,
    },
    /// Switch one product's device data on or off.
    Product {
        project: String,
        product_key: String,
        #[arg(value_enum)]
        state: OnOff,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DataClassArg {
    Device,
    User,
}

#[derive(Debug, Subcommand)]
enum GroupsCmd {
    List {
        project: String,
    },
    Create {
        project: String,
        name: String,
        /// Only this data class (repeatable).
        #[arg(long = "data-class", value_enum)]
        data_classes: Vec<DataClassArg>,
        /// Only these topics (topic templates or message kinds; repeatable).
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// Only these products (repeatable).
        #[arg(long = "product")]
        products: Vec<String>,
    },
    Delete {
        project: String,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLettersCmd {
    List {
        project: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    Retry {
        project: String,
        message_id: String,
    },
    Drop {
        project: String,
        message_id: String,
    },
}

/// What to call: method, path under `/api/v1`, body.
struct Call {
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
    /// Columns of the human table (a list answer), or `None` for key: value lines.
    columns: Option<&'static [&'static str]>,
}

fn call(method: reqwest::Method, path: String, body: Option<Value>) -> Call {
    Call {
        method,
        path,
        body,
        columns: None,
    }
}

fn table(mut c: Call, columns: &'static [&'static str]) -> Call {
    c.columns = Some(columns);
    c
}

/// Path segments are escaped: ids come from the command line.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn build(cmd: AdminCommand) -> Result<Call, (Exit, String)> {
    use reqwest::Method as M;
    let p = |id: &str| format!("/projects/{}", seg(id));
    Ok(match cmd {
        AdminCommand::Projects(c) => match c {
            ProjectsCmd::Create { name } => {
                call(M::POST, "/projects".into(), Some(json!({ "name": name })))
            }
            ProjectsCmd::List => table(
                call(M::GET, "/projects".into(), None),
                &["projectId", "name", "appKey", "createdAt"],
            ),
            ProjectsCmd::Show { project } => call(M::GET, p(&project), None),
            ProjectsCmd::RotateSecret { project } => call(
                M::POST,
                format!("{}/rotate-secret", p(&project)),
                Some(json!({})),
            ),
        },
        AdminCommand::Products(c) => match c {
            ProductsCmd::Create {
                project,
                name,
                device_type,
            } => call(
                M::POST,
                format!("{}/products", p(&project)),
                Some(json!({ "name": name, "deviceType": device_type })),
            ),
            ProductsCmd::List { project } => table(
                call(M::GET, format!("{}/products", p(&project)), None),
                &["productKey", "name", "deviceType"],
            ),
        },
        AdminCommand::Devices(c) => match c {
            DevicesCmd::Create {
                project,
                product_key,
                device_name,
            } => call(
                M::POST,
                format!("{}/products/{}/devices", p(&project), seg(&product_key)),
                Some(json!({ "deviceName": device_name })),
            ),
            DevicesCmd::List { project } => table(
                call(M::GET, format!("{}/devices", p(&project)), None),
                &["iotId", "productKey", "deviceName", "status"],
            ),
        },
        AdminCommand::Sync(c) => match c {
            SyncCmd::Show { project } => call(M::GET, format!("{}/sync", p(&project)), None),
            SyncCmd::Enable { project, method } => call(
                M::POST,
                format!("{}/sync/enable", p(&project)),
                Some(json!({ "method": method.as_str() })),
            ),
            SyncCmd::Disable { project } => call(
                M::POST,
                format!("{}/sync/disable", p(&project)),
                Some(json!({})),
            ),
            SyncCmd::Switch { project, method } => call(
                M::POST,
                format!("{}/sync/switch", p(&project)),
                Some(json!({ "method": method.as_str() })),
            ),
            SyncCmd::Product {
                project,
                product_key,
                state,
            } => call(
                M::PUT,
                format!("{}/sync/products/{}", p(&project), seg(&product_key)),
                Some(json!({ "enabled": matches!(state, OnOff::On) })),
            ),
        },
        AdminCommand::Groups(c) => match c {
            GroupsCmd::List { project } => table(
                call(M::GET, format!("{}/consumer-groups", p(&project)), None),
                &[
                    "name",
                    "dataClasses",
                    "kinds",
                    "products",
                    "stacked",
                    "consumers",
                ],
            ),
            GroupsCmd::Create {
                project,
                name,
                data_classes,
                topics,
                products,
            } => {
                let mut body = json!({ "name": name });
                if !data_classes.is_empty() {
                    body["dataClasses"] = data_classes
                        .iter()
                        .map(|c| match c {
                            DataClassArg::Device => json!("device"),
                            DataClassArg::User => json!("user"),
                        })
                        .collect();
                }
                if !topics.is_empty() {
                    body["topics"] = json!(topics);
                }
                if !products.is_empty() {
                    body["products"] = json!(products);
                }
                call(
                    M::POST,
                    format!("{}/consumer-groups", p(&project)),
                    Some(body),
                )
            }
            GroupsCmd::Delete { project, name } => call(
                M::DELETE,
                format!("{}/consumer-groups/{}", p(&project), seg(&name)),
                None,
            ),
        },
        AdminCommand::Stats { project } => table(
            call(M::GET, format!("{}/sync/stats", p(&project)), None),
            &[
                "group",
                "stacked",
                "oldestStackedAgeMs",
                "inFlight",
                "deadLetters",
                "consumers",
                "appendedTotal",
                "ackedTotal",
            ],
        ),
        AdminCommand::DeadLetters(c) => match c {
            DeadLettersCmd::List { project, limit } => table(
                call(
                    M::GET,
                    format!("{}/sync/dead-letters?limit={limit}", p(&project)),
                    None,
                ),
                &["messageId", "group", "topic", "attempts", "deadAt"],
            ),
            DeadLettersCmd::Retry {
                project,
                message_id,
            } => call(
                M::POST,
                format!(
                    "{}/sync/dead-letters/{}/retry",
                    p(&project),
                    seg(&message_id)
                ),
                Some(json!({})),
            ),
            DeadLettersCmd::Drop {
                project,
                message_id,
            } => call(
                M::DELETE,
                format!("{}/sync/dead-letters/{}", p(&project), seg(&message_id)),
                None,
            ),
        },
        AdminCommand::Import { file } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| (Exit::BadInput, format!("reading standard input: {e}")))?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| (Exit::BadInput, format!("reading {}: {e}", file.display())))?
            };
            let body: Value = serde_json::from_str(&text).map_err(|e| {
                (
                    Exit::BadInput,
                    format!("{} is not JSON: {e}", file.display()),
                )
            })?;
            call(M::POST, "/admin/import".into(), Some(body))
        }
    })
}

fn token(a: &AdminArgs) -> Result<String, (Exit, String)> {
    if let Some(t) = &a.token {
        return Ok(t.clone());
    }
    let path = a.data_dir.join("operator-token");
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| {
            (
                Exit::Unauthorized,
                format!(
                    "no operator token: pass --token or IOTSYNC_OPERATOR_TOKEN, or --data-dir with an operator-token file ({}: {e})",
                    path.display()
                ),
            )
        })
}

/// Runs an admin command; prints the answer (stdout) or the error (stderr).
pub async fn run(a: AdminArgs) -> ExitCode {
    match run_inner(a).await {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(code as u8)
        }
    }
}

async fn run_inner(a: AdminArgs) -> Result<(), (Exit, String)> {
    let token = token(&a)?;
    let json_out = a.json;
    let base = a.endpoint.trim_end_matches('/').to_owned();
    let c = build(a.command)?;
    let url = format!("{base}/api/v1{}", c.path);
    let http = reqwest::Client::new();
    let mut req = http.request(c.method, &url).bearer_auth(token);
    if let Some(b) = &c.body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| (Exit::Unreachable, format!("{url}: {e}")))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| (Exit::Unreachable, format!("{url}: reading the answer: {e}")))?;
    let body: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|_| {
            (
                Exit::Unreachable,
                format!("{url} answered {status} with something that is not JSON"),
            )
        })?
    };
    if !status.is_success() {
        let exit = match status.as_u16() {
            401 | 403 => Exit::Unauthorized,
            404 => Exit::NotFound,
            s if s >= 500 => Exit::ServerError,
            _ => Exit::Refused,
        };
        let code = body["code"].as_str().unwrap_or("http.error");
        let message = body["message"].as_str().unwrap_or("");
        let field = body["field"]
            .as_str()
            .map(|f| format!(" (field: {f})"))
            .unwrap_or_default();
        return Err((exit, format!("{code}: {message}{field} [HTTP {status}]")));
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_else(|_| body.to_string())
        );
    } else {
        print!("{}", human(&body, c.columns));
    }
    Ok(())
}

/// A cell: strings as they are, everything else as compact JSON, nothing as "-".
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.iter().all(|x| x.is_string()) => a
            .iter()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// The rows of a list answer: an array, or the array under `items`/`groups`.
fn rows(v: &Value) -> Option<&Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        Value::Object(o) => ["items", "groups"]
            .iter()
            .find_map(|k| o.get(*k).and_then(|x| x.as_array())),
        _ => None,
    }
}

fn human(v: &Value, columns: Option<&[&str]>) -> String {
    if let (Some(cols), Some(rows)) = (columns, rows(v)) {
        let mut grid: Vec<Vec<String>> = vec![cols.iter().map(|c| c.to_string()).collect()];
        for r in rows {
            grid.push(cols.iter().map(|c| cell(r.get(*c))).collect());
        }
        let widths: Vec<usize> = (0..cols.len())
            .map(|i| grid.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for r in &grid {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        if rows.is_empty() {
            out.push_str("(none)\n");
        }
        return out;
    }
    match v {
        Value::Object(o) => {
            let w = o.keys().map(|k| k.len()).max().unwrap_or(0);
            o.iter()
                .map(|(k, v)| format!("{k:<w$}  {}\n", cell(Some(v))))
                .collect()
        }
        Value::Null => "ok\n".into(),
        other => format!("{}\n", cell(Some(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(seg("a1b/../x y"), "a1b%2F..%2Fx%20y");
        assert_eq!(seg("lamp_01"), "lamp_01");
    }

    #[test]
    fn a_list_answer_becomes_an_aligned_table() {
        let v = json!({"items": [{"name": "a", "n": 1}, {"name": "bbb", "n": null}]});
        assert_eq!(
            human(&v, Some(&["name", "n"])),
            "name  n\na     1\nbbb   -\n"
        );
        assert_eq!(human(&json!([]), Some(&["name"])), "name\n(none)\n");
    }

    #[test]
    fn an_object_answer_becomes_key_value_lines() {
        let v = json!({"enabled": true, "method": "amqp"});
        assert_eq!(human(&v, None), "enabled  true\nmethod   amqp\n");
    }
}
