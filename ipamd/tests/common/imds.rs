//! A small IMDSv2 server for daemon tests: token PUT with the TTL header the SDK insists on,
//! token-checked GETs of the paths ipamd reads, answered from a node description tests can edit.
//! It listens inside the node namespace (loopback is per namespace).

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

use super::Netns;

const TOKEN: &str = "test-token-0123456789";

#[derive(Debug, Clone)]
pub struct Eni {
    pub mac: String,
    pub id: String,
    pub device: u32,
    pub subnet: String,
    /// Primary first.
    pub ips: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Node {
    pub enis: Vec<Eni>,
}

#[derive(Debug, Clone)]
pub struct Imds {
    pub node: Arc<Mutex<Node>>,
    /// When set, every request answers 503.
    pub down: Arc<AtomicBool>,
    pub addr: SocketAddr,
}

impl Imds {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn edit(&self, f: impl FnOnce(&mut Node)) {
        f(&mut self.node.lock().unwrap());
    }
}

#[derive(Clone)]
struct App {
    node: Arc<Mutex<Node>>,
    down: Arc<AtomicBool>,
}

async fn token(State(app): State<App>, headers: HeaderMap) -> Response {
    if app.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let Some(ttl) = headers.get("x-aws-ec2-metadata-token-ttl-seconds") else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    (
        [(
            "x-aws-ec2-metadata-token-ttl-seconds",
            ttl.to_str().unwrap().to_owned(),
        )],
        TOKEN,
    )
        .into_response()
}

fn lookup(node: &Node, path: &str) -> Option<String> {
    let primary = node.enis.iter().find(|e| e.device == 0)?;
    match path {
        "instance-id" => return Some("i-0a1b2c3d4e5f60001".into()),
        "instance-type" => return Some("m5.large".into()),
        "placement/availability-zone" => return Some("us-west-2a".into()),
        "placement/region" => return Some("us-west-2".into()),
        "mac" => return Some(primary.mac.clone()),
        "local-ipv4" => return primary.ips.first().cloned(),
        "network/interfaces/macs" | "network/interfaces/macs/" => {
            return Some(
                node.enis
                    .iter()
                    .map(|e| format!("{}/", e.mac))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
        _ => {}
    }
    let rest = path.strip_prefix("network/interfaces/macs/")?;
    let (mac, field) = rest.split_once('/')?;
    let eni = node.enis.iter().find(|e| e.mac == mac)?;
    Some(match field {
        "device-number" => eni.device.to_string(),
        "interface-id" => eni.id.clone(),
        "local-ipv4s" => eni.ips.join("\n"),
        "subnet-id" => "subnet-0a1b2c3d".into(),
        "subnet-ipv4-cidr-block" => eni.subnet.clone(),
        "vpc-ipv4-cidr-blocks" => "10.0.0.0/16".into(),
        "security-group-ids" => "sg-0a1b2c3d".into(),
        _ => return None,
    })
}

async fn meta(State(app): State<App>, Path(path): Path<String>, headers: HeaderMap) -> Response {
    if app.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        != Some(TOKEN)
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let node = app.node.lock().unwrap();
    match lookup(&node, &path) {
        Some(body) => body.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Starts the server on 127.0.0.1 inside `ns`, served by the caller's tokio runtime.
pub fn spawn(ns: &Netns, node: Node) -> Imds {
    let path = ns.path();
    let std_listener = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(
            std::os::fd::AsFd::as_fd(&file),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )
        .unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        l
    })
    .join()
    .unwrap();
    let addr = std_listener.local_addr().unwrap();
    let node = Arc::new(Mutex::new(node));
    let down = Arc::new(AtomicBool::new(false));
    let app = App {
        node: node.clone(),
        down: down.clone(),
    };
    let router = Router::new()
        .route("/latest/api/token", put(token))
        .route("/latest/meta-data/{*path}", get(meta))
        .with_state(app);
    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Imds { node, down, addr }
}
