//! IMDS emulator: an HTTP server answering the EC2 instance metadata service the way AWS does
//! with IMDSv2 required (session token from `PUT /latest/api/token`, every GET needs it).
//!
//! Answers come from a [`MetadataSource`], asked per caller, so a later source can describe
//! several instances (from moto's state) by the caller's source address. The server runs on a
//! thread of its own with a current-thread tokio runtime, so synchronous tests can use it; the
//! listener is handed in already bound, which lets a test open it inside a node's network
//! namespace (loopback is per namespace) and serve it from anywhere. A test can take the
//! service down ([`ImdsServer::set_unavailable`]: 503 to every request) and bring it back.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::sync::oneshot;

use crate::metadata::{FileSource, InterfaceDescription, MetadataSource, NodeFileError};

/// Request header carrying the session token on GETs.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// Request and response header carrying the token's TTL in seconds.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// Largest TTL AWS accepts (6 hours).
const MAX_TTL_SECONDS: u64 = 21_600;

/// Errors of starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum ImdsServerError {
    /// The node file is unusable.
    #[error(transparent)]
    Metadata(#[from] NodeFileError),
    /// The listener could not be prepared for tokio.
    #[error("cannot use the IMDS listener: {0}")]
    Listener(std::io::Error),
    /// The server thread could not be started.
    #[error("cannot start the IMDS server thread: {0}")]
    Thread(std::io::Error),
}

/// AWS's HTML error page, as IMDS sends it for 400/401/403/404/405.
fn aws_error_body(status: StatusCode) -> String {
    let title = format!(
        "{} - {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\
         <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\
         \t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n \
         <head>\n  <title>{title}</title>\n </head>\n \
         <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
    )
}

fn aws_error(status: StatusCode) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html")],
        aws_error_body(status),
    )
        .into_response()
}

fn text(body: String) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

#[derive(Debug, Default)]
struct Tokens {
    live: HashMap<String, Instant>,
}

impl Tokens {
    fn issue(&mut self, ttl: Duration) -> String {
        let now = Instant::now();
        self.live.retain(|_, expiry| *expiry > now);
        let token: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(56)
            .map(char::from)
            .collect();
        self.live.insert(token.clone(), now + ttl);
        token
    }

    fn valid(&self, token: &str) -> bool {
        self.live
            .get(token)
            .is_some_and(|expiry| *expiry > Instant::now())
    }
}

#[derive(Debug)]
struct AppState {
    source: Arc<dyn MetadataSource>,
    tokens: Mutex<Tokens>,
    /// While set, every request is answered 503 (IMDS down or throttling).
    unavailable: AtomicBool,
}

impl AppState {
    fn new(source: Arc<dyn MetadataSource>) -> Self {
        Self {
            source,
            tokens: Mutex::new(Tokens::default()),
            unavailable: AtomicBool::new(false),
        }
    }
}

/// A running emulator. Dropping it stops the server (open connections are closed).
#[derive(Debug)]
pub struct ImdsServer {
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ImdsServer {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL for `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// While `unavailable`, every request (token or metadata) is answered 503 Service
    /// Unavailable, as IMDS does when it is down or throttling.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            // The receiver is gone only if the server already stopped.
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("IMDS emulator thread panicked");
        }
    }
}

impl Drop for ImdsServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Serves instance metadata from `source` on an already bound listener.
pub fn spawn_with_source(
    listener: TcpListener,
    source: Arc<dyn MetadataSource>,
) -> Result<ImdsServer, ImdsServerError> {
    listener
        .set_nonblocking(true)
        .map_err(ImdsServerError::Listener)?;
    let addr = listener.local_addr().map_err(ImdsServerError::Listener)?;
    let (tx, rx) = oneshot::channel::<()>();
    let state = Arc::new(AppState::new(source));
    let served = Arc::clone(&state);
    let thread = std::thread::Builder::new()
        .name(format!("imds-{addr}"))
        .spawn(move || serve_blocking(listener, served, rx))
        .map_err(ImdsServerError::Thread)?;
    Ok(ImdsServer {
        addr,
        state,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// Serves the node described by the JSON file at `node_file` (re-read when it changes).
pub fn spawn(
    listener: TcpListener,
    node_file: impl Into<PathBuf>,
) -> Result<ImdsServer, ImdsServerError> {
    let source = FileSource::new(node_file)?;
    spawn_with_source(listener, Arc::new(source))
}

fn serve_blocking(listener: TcpListener, state: Arc<AppState>, stop: oneshot::Receiver<()>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(%err, "IMDS emulator: cannot build a tokio runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(err) => {
                tracing::error!(%err, "IMDS emulator: cannot register the listener");
                return;
            }
        };
        let app = router(state);
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        );
        tokio::select! {
            res = server => {
                if let Err(err) = res {
                    tracing::error!(%err, "IMDS emulator stopped");
                }
            }
            _ = stop => {}
        }
    });
}

/// Runs the emulator on the current thread until `stop` resolves (for the CLI binary).
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    source: Arc<dyn MetadataSource>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(AppState::new(source));
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
}

fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}

async fn handle(
    State(state): State<Arc<AppState>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().to_owned();
    let response = answer(&state, caller, &method, &path, &headers);
    tracing::debug!(%caller, %method, path, status = response.status().as_u16(), "imds");
    response
}

fn answer(
    state: &AppState,
    caller: SocketAddr,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Response {
    if state.unavailable.load(Ordering::SeqCst) {
        return aws_error(StatusCode::SERVICE_UNAVAILABLE);
    }
    if path == "/latest/api/token" {
        if method != Method::PUT {
            return aws_error(StatusCode::METHOD_NOT_ALLOWED);
        }
        return issue_token(state, headers);
    }
    if method != Method::GET && method != Method::HEAD {
        return aws_error(StatusCode::METHOD_NOT_ALLOWED);
    }
    let token_ok = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            state
                .tokens
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .valid(t)
        });
    if !token_ok {
        return aws_error(StatusCode::UNAUTHORIZED);
    }
    let node = match state.source.describe(caller) {
        Ok(node) => node,
        Err(err) => {
            tracing::error!(%err, %caller, "IMDS emulator has no valid node description");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain")],
                format!("IMDS emulator: {err}\n"),
            )
                .into_response();
        }
    };
    match lookup(&node, path) {
        Some(body) => text(body),
        None => aws_error(StatusCode::NOT_FOUND),
    }
}

fn issue_token(state: &AppState, headers: &HeaderMap) -> Response {
    // AWS refuses token requests that went through a proxy (a hop limit in spirit).
    if headers.contains_key("x-forwarded-for") {
        return aws_error(StatusCode::FORBIDDEN);
    }
    let ttl = headers
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ttl| (1..=MAX_TTL_SECONDS).contains(ttl));
    let Some(ttl) = ttl else {
        return aws_error(StatusCode::BAD_REQUEST);
    };
    let token = state
        .tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .issue(Duration::from_secs(ttl));
    let mut response = text(token);
    response
        .headers_mut()
        .insert(TTL_HEADER, HeaderValue::from(ttl));
    response
}

fn lines<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(item.as_ref());
    }
    out
}

const META_INDEX: &[&str] = &[
    "iam/",
    "instance-id",
    "instance-type",
    "local-ipv4",
    "mac",
    "network/",
    "placement/",
];

const MAC_FIELDS: &[&str] = &[
    "device-number",
    "interface-id",
    "local-ipv4s",
    "mac",
    "network-card",
    "owner-id",
    "security-group-ids",
    "subnet-id",
    "subnet-ipv4-cidr-block",
    "vpc-id",
    "vpc-ipv4-cidr-block",
    "vpc-ipv4-cidr-blocks",
];

/// Name of the IAM role of every simulated instance's instance profile.
pub const INSTANCE_PROFILE_ROLE: &str = "vcni-node-role";
/// How long the instance-profile credentials the emulator hands out are valid.
const CREDENTIALS_VALIDITY: Duration = Duration::from_secs(6 * 3600);

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (the format of IMDS's credential documents).
pub fn rfc3339_utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm), in unsigned arithmetic.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn instance_profile_credentials(
    node: &crate::metadata::NodeDescription,
    now: SystemTime,
) -> String {
    let suffix: String = node
        .instance_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let key_id = format!("ASIA{suffix:0>16}");
    let doc = serde_json::json!({
        "Code": "Success",
        "LastUpdated": rfc3339_utc(now),
        "Type": "AWS-HMAC",
        "AccessKeyId": &key_id[..20.min(key_id.len())],
        "SecretAccessKey": format!("vcni-simulated-secret-of-{}", node.instance_id),
        "Token": format!("vcni-simulated-session-token-of-{}", node.instance_id),
        "Expiration": rfc3339_utc(now + CREDENTIALS_VALIDITY),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

fn instance_profile_info(node: &crate::metadata::NodeDescription, now: SystemTime) -> String {
    let doc = serde_json::json!({
        "Code": "Success",
        "LastUpdated": rfc3339_utc(now),
        "InstanceProfileArn": format!(
            "arn:aws:iam::{}:instance-profile/{INSTANCE_PROFILE_ROLE}",
            node.account_id
        ),
        "InstanceProfileId": "AIPAVCNISIMULATED0001",
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// The body for a metadata path, `None` when AWS would answer 404.
pub fn lookup(node: &crate::metadata::NodeDescription, path: &str) -> Option<String> {
    lookup_at(node, path, SystemTime::now())
}

/// [`lookup`] at time `now` (credential documents carry times).
fn lookup_at(
    node: &crate::metadata::NodeDescription,
    path: &str,
    now: SystemTime,
) -> Option<String> {
    // Directory listings are served with or without the trailing slash, as on AWS.
    let path = path.strip_suffix('/').unwrap_or(path);
    if path == "/latest" {
        return Some(lines(["dynamic", "meta-data"]));
    }
    if path == "/latest/dynamic" {
        return Some("instance-identity/".to_owned());
    }
    if path == "/latest/dynamic/instance-identity" {
        return Some("document".to_owned());
    }
    if path == "/latest/dynamic/instance-identity/document" {
        return Some(identity_document(node));
    }
    let meta = path.strip_prefix("/latest/meta-data")?;
    let primary = node.primary_interface()?;
    match meta {
        "" => {
            let mut index = META_INDEX.to_vec();
            // Listed only when the instance has an IPv6 address, as on EC2.
            if node.ipv6().is_some() {
                index.push("ipv6");
                index.sort_unstable();
            }
            return Some(lines(index));
        }
        "/instance-id" => return Some(node.instance_id.clone()),
        "/instance-type" => return Some(node.instance_type.clone()),
        "/local-ipv4" => return primary.primary_ip().map(|ip| ip.to_string()),
        // The primary ENI's first IPv6 address; 404 without one.
        "/ipv6" => return primary.primary_ipv6().map(|ip| ip.to_string()),
        "/mac" => return Some(primary.mac.clone()),
        "/placement" => return Some(lines(["availability-zone", "region"])),
        "/placement/availability-zone" => return Some(node.availability_zone.clone()),
        "/placement/region" => return Some(node.region.clone()),
        "/network" => return Some("interfaces/".to_owned()),
        "/network/interfaces" => return Some("macs/".to_owned()),
        "/iam" => return Some(lines(["info", "security-credentials/"])),
        "/iam/info" => return Some(instance_profile_info(node, now)),
        "/iam/security-credentials" => return Some(INSTANCE_PROFILE_ROLE.to_owned()),
        p if p == format!("/iam/security-credentials/{INSTANCE_PROFILE_ROLE}") => {
            return Some(instance_profile_credentials(node, now));
        }
        "/network/interfaces/macs" => {
            let mut enis: Vec<&InterfaceDescription> = node.interfaces.iter().collect();
            enis.sort_by_key(|e| (e.network_card, e.device_number));
            return Some(lines(enis.iter().map(|e| format!("{}/", e.mac))));
        }
        _ => {}
    }
    let rest = meta.strip_prefix("/network/interfaces/macs/")?;
    let (mac, field) = rest.split_once('/').unwrap_or((rest, ""));
    let eni = node.interface_by_mac(mac)?;
    let value = match field {
        "" => lines(mac_index(node, eni)),
        // Absent (404) when the ENI has no prefix, address or block of that kind, as on EC2.
        "ipv4-prefix" if eni.ipv4_prefixes.is_empty() => return None,
        "ipv4-prefix" => lines(eni.ipv4_prefixes.iter().map(ToString::to_string)),
        "ipv6s" if eni.ipv6s.is_empty() => return None,
        "ipv6s" => lines(eni.ipv6s.iter().map(ToString::to_string)),
        "ipv6-prefix" if eni.ipv6_prefixes.is_empty() => return None,
        "ipv6-prefix" => lines(eni.ipv6_prefixes.iter().map(ToString::to_string)),
        "subnet-ipv6-cidr-blocks" if eni.subnet_ipv6_cidr_blocks.is_empty() => return None,
        "subnet-ipv6-cidr-blocks" => {
            lines(eni.subnet_ipv6_cidr_blocks.iter().map(ToString::to_string))
        }
        "vpc-ipv6-cidr-blocks" if node.vpc_ipv6_cidr_blocks.is_empty() => return None,
        "vpc-ipv6-cidr-blocks" => lines(node.vpc_ipv6_cidr_blocks.iter().map(ToString::to_string)),
        "device-number" => eni.device_number.to_string(),
        "interface-id" => eni.interface_id.clone(),
        "local-ipv4s" => lines(eni.local_ipv4s.iter().map(ToString::to_string)),
        "mac" => eni.mac.clone(),
        "network-card" => eni.network_card.to_string(),
        "owner-id" => node.account_id.clone(),
        "security-group-ids" => lines(&eni.security_group_ids),
        "subnet-id" => eni.subnet_id.clone(),
        "subnet-ipv4-cidr-block" => eni.subnet_ipv4_cidr_block.to_string(),
        "vpc-id" => node.vpc_id.clone(),
        "vpc-ipv4-cidr-block" => node.vpc_ipv4_cidr_blocks.first()?.to_string(),
        "vpc-ipv4-cidr-blocks" => lines(node.vpc_ipv4_cidr_blocks.iter().map(ToString::to_string)),
        _ => return None,
    };
    Some(value)
}

/// The directory index of `network/interfaces/macs/<mac>/`: the fields every ENI has, plus
/// each optional field (prefixes, IPv6) the ENI or its VPC has, sorted as EC2 lists them.
fn mac_index(
    node: &crate::metadata::NodeDescription,
    eni: &InterfaceDescription,
) -> Vec<&'static str> {
    let mut fields = MAC_FIELDS.to_vec();
    for (field, present) in [
        ("ipv4-prefix", !eni.ipv4_prefixes.is_empty()),
        ("ipv6s", !eni.ipv6s.is_empty()),
        ("ipv6-prefix", !eni.ipv6_prefixes.is_empty()),
        (
            "subnet-ipv6-cidr-blocks",
            !eni.subnet_ipv6_cidr_blocks.is_empty(),
        ),
        (
            "vpc-ipv6-cidr-blocks",
            !node.vpc_ipv6_cidr_blocks.is_empty(),
        ),
    ] {
        if present {
            fields.push(field);
        }
    }
    fields.sort_unstable();
    fields
}

fn identity_document(node: &crate::metadata::NodeDescription) -> String {
    let doc = serde_json::json!({
        "accountId": node.account_id,
        "architecture": "x86_64",
        "availabilityZone": node.availability_zone,
        "instanceId": node.instance_id,
        "instanceType": node.instance_type,
        "privateIp": node.local_ipv4().map(|ip| ip.to_string()),
        "region": node.region,
        "version": "2017-09-30",
    });
    // AWS pretty-prints the document with `" : "` separators; clients parse it as JSON.
    let mut out = String::from("{\n");
    if let Some(map) = doc.as_object() {
        let n = map.len();
        for (i, (k, v)) in map.iter().enumerate() {
            let comma = if i + 1 < n { "," } else { "" };
            let _ = writeln!(out, "  \"{k}\" : {v}{comma}");
        }
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::metadata::NodeDescription;

    fn node() -> NodeDescription {
        NodeDescription::from_json(
            r#"{"instance-id":"i-1","instance-type":"m5.large","region":"us-west-2",
            "availability-zone":"us-west-2a","vpc-id":"vpc-1","vpc-ipv4-cidr-blocks":["10.0.0.0/16","10.1.0.0/16"],
            "interfaces":[
             {"mac":"02:00:0a:00:00:14","interface-id":"eni-b","device-number":1,"subnet-id":"subnet-1",
              "subnet-ipv4-cidr-block":"10.0.0.0/24","security-group-ids":["sg-1","sg-2"],
              "local-ipv4s":["10.0.0.20","10.0.0.21"]},
             {"mac":"02:00:0a:00:00:0a","interface-id":"eni-a","device-number":0,"subnet-id":"subnet-1",
              "subnet-ipv4-cidr-block":"10.0.0.0/24","security-group-ids":["sg-1"],
              "local-ipv4s":["10.0.0.10","10.0.0.11","10.0.0.12"]}]}"#,
            Path::new("t.json"),
        )
        .unwrap()
    }

    #[test]
    fn paths_answer_like_aws() {
        let n = node();
        let get = |p: &str| lookup(&n, p);
        assert_eq!(get("/latest/meta-data/local-ipv4").unwrap(), "10.0.0.10");
        assert_eq!(get("/latest/meta-data/mac").unwrap(), "02:00:0a:00:00:0a");
        assert_eq!(
            get("/latest/meta-data/network/interfaces/macs/").unwrap(),
            "02:00:0a:00:00:0a/\n02:00:0a:00:00:14/"
        );
        assert_eq!(
            get("/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:0a/local-ipv4s").unwrap(),
            "10.0.0.10\n10.0.0.11\n10.0.0.12"
        );
        assert_eq!(
            get("/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:14/device-number")
                .unwrap(),
            "1"
        );
        assert_eq!(
            get("/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:14/security-group-ids")
                .unwrap(),
            "sg-1\nsg-2"
        );
        assert_eq!(
            get("/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:14/vpc-ipv4-cidr-block")
                .unwrap(),
            "10.0.0.0/16"
        );
        assert!(get("/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:99/").is_none());
        assert!(get("/latest/meta-data/ami-id").is_none());
        let no_prefix = "/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:14/";
        assert!(get(&format!("{no_prefix}ipv4-prefix")).is_none());
        assert!(!get(no_prefix).unwrap().contains("ipv4-prefix"));
        let mut delegated = n.clone();
        delegated.interfaces[0].ipv4_prefixes = vec![
            "10.0.0.32/28".parse().unwrap(),
            "10.0.0.64/28".parse().unwrap(),
        ];
        let with = "/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:14/";
        assert_eq!(
            lookup(&delegated, &format!("{with}ipv4-prefix")).unwrap(),
            "10.0.0.32/28\n10.0.0.64/28"
        );
        let index = lookup(&delegated, with).unwrap();
        assert!(index.lines().any(|l| l == "ipv4-prefix"), "{index}");
        let doc: serde_json::Value =
            serde_json::from_str(&get("/latest/dynamic/instance-identity/document").unwrap())
                .unwrap();
        assert_eq!(doc["privateIp"], "10.0.0.10");
        assert_eq!(doc["region"], "us-west-2");
        assert_eq!(doc["accountId"], crate::metadata::DEFAULT_ACCOUNT_ID);
    }

    /// [`node`] in an IPv6 VPC: the primary ENI (device 0) has two addresses and a /80, the
    /// other ENI only the subnet's block.
    fn ipv6_node() -> NodeDescription {
        let mut n = node();
        n.vpc_ipv6_cidr_blocks = vec!["2600:1f14:abc:de00::/56".parse().unwrap()];
        for eni in &mut n.interfaces {
            eni.subnet_ipv6_cidr_blocks = vec!["2600:1f14:abc:de00::/64".parse().unwrap()];
        }
        let primary = &mut n.interfaces[1];
        primary.ipv6s = vec![
            "2600:1f14:abc:de00::a".parse().unwrap(),
            "2600:1f14:abc:de00::b".parse().unwrap(),
        ];
        primary.ipv6_prefixes = vec!["2600:1f14:abc:de00:1::/80".parse().unwrap()];
        n.validate().unwrap();
        n
    }

    #[test]
    fn ipv6_paths_answer_like_aws() {
        let n = ipv6_node();
        let get = |p: &str| lookup(&n, p);
        let primary = "/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:0a/";
        let other = "/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:14/";
        assert_eq!(
            get("/latest/meta-data/ipv6").unwrap(),
            "2600:1f14:abc:de00::a"
        );
        assert_eq!(
            get(&format!("{primary}ipv6s")).unwrap(),
            "2600:1f14:abc:de00::a\n2600:1f14:abc:de00::b"
        );
        assert_eq!(
            get(&format!("{primary}ipv6-prefix")).unwrap(),
            "2600:1f14:abc:de00:1::/80"
        );
        for mac in [primary, other] {
            assert_eq!(
                get(&format!("{mac}subnet-ipv6-cidr-blocks")).unwrap(),
                "2600:1f14:abc:de00::/64"
            );
            assert_eq!(
                get(&format!("{mac}vpc-ipv6-cidr-blocks")).unwrap(),
                "2600:1f14:abc:de00::/56"
            );
        }
        // The other ENI has no address and no prefix of its own.
        assert!(get(&format!("{other}ipv6s")).is_none());
        assert!(get(&format!("{other}ipv6-prefix")).is_none());
        // Directory indexes list exactly the fields present, sorted.
        let index = get(primary).unwrap();
        let fields: Vec<&str> = index.lines().collect();
        let mut sorted = fields.clone();
        sorted.sort_unstable();
        assert_eq!(fields, sorted);
        for field in [
            "ipv6-prefix",
            "ipv6s",
            "subnet-ipv6-cidr-blocks",
            "vpc-ipv6-cidr-blocks",
        ] {
            assert!(fields.contains(&field), "{index}");
        }
        assert!(!fields.contains(&"ipv4-prefix"), "{index}");
        let index = get(other).unwrap();
        assert!(
            !index.lines().any(|l| l == "ipv6s" || l == "ipv6-prefix"),
            "{index}"
        );
        assert!(
            index.lines().any(|l| l == "subnet-ipv6-cidr-blocks"),
            "{index}"
        );
        let top = get("/latest/meta-data/").unwrap();
        let top: Vec<&str> = top.lines().collect();
        assert!(top.contains(&"ipv6"), "{top:?}");
        let mut sorted = top.clone();
        sorted.sort_unstable();
        assert_eq!(top, sorted);
    }

    #[test]
    fn ipv6_paths_are_absent_on_an_ipv4_node() {
        let n = node();
        let get = |p: &str| lookup(&n, p);
        assert!(get("/latest/meta-data/ipv6").is_none());
        assert!(
            !get("/latest/meta-data/")
                .unwrap()
                .lines()
                .any(|l| l == "ipv6")
        );
        let mac = "/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:0a/";
        for field in [
            "ipv6s",
            "ipv6-prefix",
            "subnet-ipv6-cidr-blocks",
            "vpc-ipv6-cidr-blocks",
        ] {
            assert!(get(&format!("{mac}{field}")).is_none(), "{field}");
            assert!(
                !get(mac).unwrap().lines().any(|l| l == field),
                "{field} listed"
            );
        }
        // The IPv4 index is unchanged: exactly the always-present fields.
        assert_eq!(get(mac).unwrap(), lines(MAC_FIELDS));
        // An IPv6 VPC whose primary ENI has no IPv6 address: no `ipv6`, the blocks are shown.
        let mut n = ipv6_node();
        n.interfaces[1].ipv6s.clear();
        assert!(lookup(&n, "/latest/meta-data/ipv6").is_none());
        assert!(lookup(&n, &format!("{mac}ipv6s")).is_none());
        assert_eq!(
            lookup(&n, &format!("{mac}vpc-ipv6-cidr-blocks")).unwrap(),
            "2600:1f14:abc:de00::/56"
        );
    }

    #[test]
    fn instance_profile_credentials_look_like_aws() {
        let n = node();
        let now = UNIX_EPOCH + Duration::from_secs(1_764_115_200); // 2025-11-26T00:00:00Z
        let get = |p: &str| lookup_at(&n, p, now);
        assert_eq!(
            get("/latest/meta-data/iam/security-credentials/").unwrap(),
            INSTANCE_PROFILE_ROLE
        );
        let creds: serde_json::Value = serde_json::from_str(
            &get(&format!(
                "/latest/meta-data/iam/security-credentials/{INSTANCE_PROFILE_ROLE}"
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(creds["Code"], "Success");
        assert_eq!(creds["Expiration"], "2025-11-26T06:00:00Z");
        assert_eq!(creds["LastUpdated"], "2025-11-26T00:00:00Z");
        assert!(creds["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
        assert_eq!(creds["AccessKeyId"].as_str().unwrap().len(), 20);
        assert!(creds["Token"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(get("/latest/meta-data/iam/security-credentials/other-role").is_none());
        assert!(
            get("/latest/meta-data/")
                .unwrap()
                .lines()
                .any(|l| l == "iam/")
        );
    }

    #[test]
    fn rfc3339_handles_leap_years_and_epoch() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400 + 86_399); // 2000-02-29
        assert_eq!(rfc3339_utc(leap), "2000-02-29T23:59:59Z");
        let y2038 = UNIX_EPOCH + Duration::from_secs(2_147_483_647);
        assert_eq!(rfc3339_utc(y2038), "2038-01-19T03:14:07Z");
    }

    #[test]
    fn tokens_expire() {
        let mut t = Tokens::default();
        let a = t.issue(Duration::from_secs(60));
        let b = t.issue(Duration::from_millis(1));
        assert_ne!(a, b);
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.valid(&a));
        assert!(!t.valid(&b));
        assert!(!t.valid("forged"));
    }

    #[test]
    fn error_bodies_name_the_status() {
        assert!(aws_error_body(StatusCode::NOT_FOUND).contains("<title>404 - Not Found</title>"));
        assert!(aws_error_body(StatusCode::UNAUTHORIZED).contains("<h1>401 - Unauthorized</h1>"));
    }
}
