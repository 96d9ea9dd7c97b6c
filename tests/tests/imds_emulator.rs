//! The IMDS emulator answers the paths ipamd's SDK client reads, IMDSv2 only, like AWS.
//!
//! Every server and client socket lives in a throwaway namespace (opened from a thread that
//! entered it), so nothing listens or connects in the machine's root namespace.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use harness::standard_node;
use test_support::imds::{self, ImdsServer, TOKEN_HEADER, TTL_HEADER};
use test_support::metadata::NodeDescription;
use test_support::netns::Netns;
use test_support::prereqs;

struct Fixture {
    ns: Netns,
    server: ImdsServer,
    dir: tempfile::TempDir,
    node: NodeDescription,
}

impl Fixture {
    fn new() -> Self {
        prereqs::require_root().unwrap();
        let ns = Netns::new("imds").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let node = standard_node(&[3, 2]);
        node.store(&dir.path().join("node.json")).unwrap();
        let listener = ns
            .run_in(|| TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let server = imds::spawn(listener, dir.path().join("node.json")).unwrap();
        Self {
            ns,
            server,
            dir,
            node,
        }
    }

    fn node_file(&self) -> std::path::PathBuf {
        self.dir.path().join("node.json")
    }

    /// Runs `f` on a thread inside the fixture's namespace.
    fn inside<R: Send + 'static>(&self, f: impl FnOnce(SocketAddr) -> R + Send + 'static) -> R {
        let addr = self.server.addr();
        self.ns.run_in(move || f(addr)).unwrap()
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 exchange (Connection: close), enough to probe status codes and headers.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "PUT" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut body = String::new();
    reader.read_to_string(&mut body).unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

fn token(addr: SocketAddr, ttl: &str) -> String {
    let reply = http(addr, "PUT", "/latest/api/token", &[(TTL_HEADER, ttl)]);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

#[test]
fn sdk_client_reads_every_path_ipamd_uses() {
    let fx = Fixture::new();
    let node = fx.node.clone();
    let endpoint = fx.server.endpoint();
    let (values, region) = fx.inside(move |_| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = aws_config::imds::Client::builder()
                .endpoint(&endpoint)
                .unwrap()
                .build();
            let mut paths = vec![
                "/latest/meta-data/instance-id".to_owned(),
                "/latest/meta-data/instance-type".to_owned(),
                "/latest/meta-data/local-ipv4".to_owned(),
                "/latest/meta-data/mac".to_owned(),
                "/latest/meta-data/placement/availability-zone".to_owned(),
                "/latest/meta-data/placement/region".to_owned(),
                "/latest/meta-data/network/interfaces/macs/".to_owned(),
            ];
            for eni in &node.interfaces {
                for field in [
                    "",
                    "device-number",
                    "interface-id",
                    "local-ipv4s",
                    "subnet-id",
                    "subnet-ipv4-cidr-block",
                    "vpc-id",
                    "vpc-ipv4-cidr-blocks",
                    "security-group-ids",
                    "owner-id",
                    "network-card",
                ] {
                    paths.push(format!(
                        "/latest/meta-data/network/interfaces/macs/{}/{field}",
                        eni.mac
                    ));
                }
            }
            let mut values = Vec::new();
            for path in paths {
                let value = client
                    .get(path.clone())
                    .await
                    .unwrap_or_else(|e| panic!("SDK GET {path} failed: {e}"));
                values.push((path, value.as_ref().to_owned()));
            }
            let region = aws_config::imds::region::ImdsRegionProvider::builder()
                .imds_client(client)
                .build()
                .region()
                .await;
            (values, region.map(|r| r.to_string()))
        })
    });
    let get = |suffix: &str| -> &str {
        &values
            .iter()
            .find(|(p, _)| p.ends_with(suffix))
            .unwrap_or_else(|| panic!("no value for {suffix}"))
            .1
    };
    assert_eq!(get("/instance-id"), fx.node.instance_id);
    assert_eq!(get("/instance-type"), "m5.large");
    assert_eq!(get("/local-ipv4"), "10.0.0.10");
    assert_eq!(get("/meta-data/mac"), "02:00:0a:00:00:0a");
    assert_eq!(get("/availability-zone"), "us-west-2a");
    assert_eq!(get("/placement/region"), "us-west-2");
    assert_eq!(get("/macs/"), "02:00:0a:00:00:0a/\n02:00:0a:00:00:14/");
    assert_eq!(
        get("/02:00:0a:00:00:0a/local-ipv4s"),
        "10.0.0.10\n10.0.0.11\n10.0.0.12\n10.0.0.13"
    );
    assert_eq!(
        get("/02:00:0a:00:00:14/local-ipv4s"),
        "10.0.0.20\n10.0.0.21\n10.0.0.22"
    );
    assert_eq!(get("/02:00:0a:00:00:14/device-number"), "1");
    assert_eq!(get("/02:00:0a:00:00:0a/device-number"), "0");
    assert_eq!(
        get("/02:00:0a:00:00:14/interface-id"),
        fx.node.interface_by_device(1).unwrap().interface_id
    );
    assert_eq!(
        get("/02:00:0a:00:00:14/subnet-ipv4-cidr-block"),
        "10.0.0.0/24"
    );
    assert_eq!(
        get("/02:00:0a:00:00:14/vpc-ipv4-cidr-blocks"),
        "10.0.0.0/16"
    );
    assert_eq!(get("/02:00:0a:00:00:14/security-group-ids"), "sg-0a1b2c3d");
    assert_eq!(get("/02:00:0a:00:00:14/network-card"), "0");
    assert!(
        get("/02:00:0a:00:00:14/")
            .lines()
            .any(|l| l == "local-ipv4s")
    );
    assert_eq!(region.as_deref(), Some("us-west-2"));
}

#[test]
fn sdk_instance_profile_provider_gets_credentials_valid_for_hours() {
    let fx = Fixture::new();
    let endpoint = fx.server.endpoint();
    let (access_key, session_token, valid_for) = fx.inside(move |_| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use aws_sdk_ec2::config::ProvideCredentials;
            let client = aws_config::imds::Client::builder()
                .endpoint(&endpoint)
                .unwrap()
                .build();
            let creds = aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                .imds_client(client)
                .build()
                .provide_credentials()
                .await
                .unwrap_or_else(|e| panic!("the SDK got no instance-profile credentials: {e}"));
            let valid_for = creds
                .expiry()
                .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
                .unwrap_or_default();
            (
                creds.access_key_id().to_owned(),
                creds.session_token().map(str::to_owned),
                valid_for,
            )
        })
    });
    assert!(
        access_key.starts_with("ASIA") && access_key.len() == 20,
        "{access_key}"
    );
    assert!(session_token.is_some_and(|t| t.contains(&fx.node.instance_id)));
    assert!(
        valid_for > Duration::from_secs(5 * 3600),
        "credentials expire in {valid_for:?}"
    );
}

#[test]
fn only_imdsv2_sessions_are_served() {
    let fx = Fixture::new();
    fx.inside(|addr| {
        let meta = "/latest/meta-data/instance-id";
        // IMDSv1 (no token) is refused with AWS's 401 page.
        let r = http(addr, "GET", meta, &[]);
        assert_eq!(r.status, 401);
        assert!(r.body.contains("401 - Unauthorized"), "{}", r.body);
        // Token requests need a TTL of 1..=21600 seconds.
        for bad in [None, Some("0"), Some("21601"), Some("abc"), Some("-5")] {
            let headers: Vec<(&str, &str)> = bad.map(|v| (TTL_HEADER, v)).into_iter().collect();
            let r = http(addr, "PUT", "/latest/api/token", &headers);
            assert_eq!(r.status, 400, "TTL {bad:?} must be refused: {r:?}");
        }
        // A proxied token request is refused.
        let r = http(
            addr,
            "PUT",
            "/latest/api/token",
            &[(TTL_HEADER, "60"), ("X-Forwarded-For", "10.9.9.9")],
        );
        assert_eq!(r.status, 403);
        // GET on the token path is not allowed.
        assert_eq!(http(addr, "GET", "/latest/api/token", &[]).status, 405);
        // The token reply echoes the TTL header (the SDK fails without it).
        let r = http(addr, "PUT", "/latest/api/token", &[(TTL_HEADER, "21600")]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header(TTL_HEADER), Some("21600"));
        let good = r.body;
        assert!(good.len() >= 32, "token {good:?}");
        // A forged token is refused, a real one works.
        assert_eq!(
            http(addr, "GET", meta, &[(TOKEN_HEADER, "forged")]).status,
            401
        );
        let r = http(addr, "GET", meta, &[(TOKEN_HEADER, &good)]);
        assert_eq!(r.status, 200);
        assert!(r.body.starts_with("i-"));
        // Unknown paths answer 404 with AWS's body.
        let r = http(
            addr,
            "GET",
            "/latest/meta-data/ami-id",
            &[(TOKEN_HEADER, &good)],
        );
        assert_eq!(r.status, 404);
        assert!(
            r.body.contains("<title>404 - Not Found</title>"),
            "{}",
            r.body
        );
        assert_eq!(r.header("content-type"), Some("text/html"));
        // Tokens expire.
        let short = token(addr, "1");
        assert_eq!(
            http(addr, "GET", meta, &[(TOKEN_HEADER, &short)]).status,
            200
        );
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            http(addr, "GET", meta, &[(TOKEN_HEADER, &short)]).status,
            401
        );
    });
}

#[test]
fn identity_document_and_indexes_look_like_aws() {
    let fx = Fixture::new();
    let (doc, index, macs_field_list) = fx.inside(|addr| {
        let t = token(addr, "60");
        let h = [(TOKEN_HEADER, t.as_str())];
        let doc = http(
            addr,
            "GET",
            "/latest/dynamic/instance-identity/document",
            &h,
        );
        let index = http(addr, "GET", "/latest/meta-data/", &h);
        let fields = http(
            addr,
            "GET",
            "/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:0a",
            &h,
        );
        (doc.body, index.body, fields.body)
    });
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["region"], "us-west-2");
    assert_eq!(doc["instanceId"], fx.node.instance_id.as_str());
    assert_eq!(doc["instanceType"], "m5.large");
    assert_eq!(doc["availabilityZone"], "us-west-2a");
    assert_eq!(doc["privateIp"], "10.0.0.10");
    assert_eq!(doc["accountId"], "123456789012");
    let index: Vec<&str> = index.lines().collect();
    for entry in [
        "instance-id",
        "instance-type",
        "local-ipv4",
        "mac",
        "network/",
        "placement/",
    ] {
        assert!(index.contains(&entry), "index {index:?} lacks {entry}");
    }
    for field in ["device-number", "interface-id", "local-ipv4s", "subnet-id"] {
        assert!(
            macs_field_list.lines().any(|l| l == field),
            "{macs_field_list}"
        );
    }
}

/// The IPv6 paths the reference reads in IPv6 mode: 404 (and unlisted) on an IPv4-only node,
/// served through the SDK's client once the node file gives the node an IPv6 VPC.
#[test]
fn ipv6_paths_are_absent_until_the_node_has_ipv6() {
    const PRIMARY: &str = "/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:0a/";
    const FIELDS: [&str; 4] = [
        "ipv6s",
        "ipv6-prefix",
        "subnet-ipv6-cidr-blocks",
        "vpc-ipv6-cidr-blocks",
    ];
    let fx = Fixture::new();
    let (top, index, absent) = fx.inside(|addr| {
        let t = token(addr, "60");
        let h = [(TOKEN_HEADER, t.as_str())];
        let top = http(addr, "GET", "/latest/meta-data/ipv6", &h);
        let index = http(addr, "GET", PRIMARY, &h).body;
        let absent: Vec<(String, u16)> = FIELDS
            .iter()
            .map(|f| {
                (
                    f.to_string(),
                    http(addr, "GET", &format!("{PRIMARY}{f}"), &h).status,
                )
            })
            .collect();
        (top, index, absent)
    });
    assert_eq!(top.status, 404, "{top:?}");
    assert!(top.body.contains("404 - Not Found"), "{top:?}");
    for (field, status) in absent {
        assert_eq!(status, 404, "{field}");
        assert!(
            !index.lines().any(|l| l == field),
            "{field} listed in {index}"
        );
    }

    let mut node = fx.node.clone();
    node.vpc_ipv6_cidr_blocks = vec!["2600:1f14:abc:de00::/56".parse().unwrap()];
    for eni in &mut node.interfaces {
        eni.subnet_ipv6_cidr_blocks = vec!["2600:1f14:abc:de00::/64".parse().unwrap()];
    }
    let primary = node.interface_by_device_mut(0).unwrap();
    primary.ipv6s = vec!["2600:1f14:abc:de00::a".parse().unwrap()];
    primary.ipv6_prefixes = vec!["2600:1f14:abc:de00:1::/80".parse().unwrap()];
    node.store(&fx.node_file()).unwrap();
    let endpoint = fx.server.endpoint();
    let values = fx.inside(move |_| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = aws_config::imds::Client::builder()
                .endpoint(&endpoint)
                .unwrap()
                .build();
            let mut paths = vec![
                "/latest/meta-data/".to_owned(),
                "/latest/meta-data/ipv6".to_owned(),
                PRIMARY.to_owned(),
            ];
            paths.extend(FIELDS.iter().map(|f| format!("{PRIMARY}{f}")));
            let mut values = Vec::new();
            for path in paths {
                let value = client
                    .get(path.clone())
                    .await
                    .unwrap_or_else(|e| panic!("SDK GET {path} failed: {e}"));
                values.push(value.as_ref().to_owned());
            }
            values
        })
    });
    assert!(values[0].lines().any(|l| l == "ipv6"), "{}", values[0]);
    assert_eq!(values[1], "2600:1f14:abc:de00::a");
    for field in FIELDS {
        assert!(
            values[2].lines().any(|l| l == field),
            "{field} not in {}",
            values[2]
        );
    }
    assert_eq!(values[3], "2600:1f14:abc:de00::a");
    assert_eq!(values[4], "2600:1f14:abc:de00:1::/80");
    assert_eq!(values[5], "2600:1f14:abc:de00::/64");
    assert_eq!(values[6], "2600:1f14:abc:de00::/56");
}

#[test]
fn edits_of_the_node_file_are_served_at_once() {
    let fx = Fixture::new();
    let mut node = fx.node.clone();
    let path = "/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:14/local-ipv4s";
    let before = fx.inside(move |addr| {
        let t = token(addr, "60");
        http(addr, "GET", path, &[(TOKEN_HEADER, &t)]).body
    });
    assert_eq!(before, "10.0.0.20\n10.0.0.21\n10.0.0.22");
    let eth1 = node.interface_by_device_mut(1).unwrap();
    eth1.local_ipv4s
        .retain(|ip| *ip != Ipv4Addr::new(10, 0, 0, 21));
    eth1.local_ipv4s.push(Ipv4Addr::new(10, 0, 0, 29));
    node.store(&fx.node_file()).unwrap();
    let after = fx.inside(move |addr| {
        let t = token(addr, "60");
        http(addr, "GET", path, &[(TOKEN_HEADER, &t)]).body
    });
    assert_eq!(after, "10.0.0.20\n10.0.0.22\n10.0.0.29");
    // A broken file is an error the operator sees, not stale data.
    std::fs::write(fx.node_file(), "{\"instance-id\": 5}").unwrap();
    let broken = fx.inside(move |addr| {
        let t = token(addr, "60");
        http(addr, "GET", path, &[(TOKEN_HEADER, &t)])
    });
    assert_eq!(broken.status, 500);
    assert!(
        broken
            .body
            .contains("node.json is not a valid node description")
            && broken.body.contains("line 1 column 17"),
        "{}",
        broken.body
    );
}

#[test]
fn cli_serves_a_node_file_inside_a_namespace_and_stops_on_sigterm() {
    let fx = Fixture::new();
    let bin = env!("CARGO_BIN_EXE_imds-emulator");
    let mut child = fx
        .ns
        .command(bin)
        .args(["--listen", "127.0.0.1:0", "--node"])
        .arg(fx.node_file())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    let body = fx.ns.run_in(move || {
        let t = token(addr, "60");
        http(
            addr,
            "GET",
            "/latest/meta-data/local-ipv4",
            &[(TOKEN_HEADER, &t)],
        )
        .body
    });
    assert_eq!(body.unwrap(), "10.0.0.10");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "imds-emulator exited with {status}");

    // Bad arguments fail with a message naming them.
    let out = std::process::Command::new(bin)
        .args([
            "--listen",
            "127.0.0.1:1",
            "--node",
            "/nonexistent/node.json",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/node.json"), "{stderr}");
    assert!(Path::new(bin).is_file());
}
