//! `ipamd status`: reads `/v1/pool` and `/v1/enis` from the introspection endpoint of the
//! running ipamd and prints the node's pool at a glance (readiness, IP counts, limits, the last
//! EC2 error, one line per ENI).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::wire::{EniInfos, PoolReport};
use crate::config::parse::BindAddress;

/// How long the whole exchange with ipamd may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 16 << 20;

/// Why the status could not be read.
#[derive(Debug, Error)]
pub enum StatusError {
    /// Nothing answers at the address.
    #[error(
        "cannot connect to ipamd's introspection endpoint at {addr}: {source} (is ipamd running, and is DISABLE_INTROSPECTION unset?)"
    )]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("GET {path} from {addr}: {reason}")]
    Http {
        /// The address.
        addr: String,
        /// The path.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A status other than 200.
    #[error("GET {path} from {addr}: HTTP {status}: {body}")]
    Status {
        /// The address.
        addr: String,
        /// The path.
        path: String,
        /// The status code.
        status: u16,
        /// The body.
        body: String,
    },
    /// The body is not the expected JSON.
    #[error(
        "GET {path} from {addr}: unexpected answer ({source}); is this an ipamd of this project?"
    )]
    Decode {
        /// The address.
        addr: String,
        /// The path.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// No answer in time.
    #[error("GET {path} from {addr}: no answer within {TIMEOUT:?}")]
    Timeout {
        /// The address.
        addr: String,
        /// The path.
        path: String,
    },
}

/// The address to connect to for a bind address: a wildcard bind is reached over loopback.
pub fn connect_address(bind: &BindAddress) -> BindAddress {
    match bind {
        BindAddress::Tcp(a) if a.ip().is_unspecified() => {
            BindAddress::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port()))
        }
        other => other.clone(),
    }
}

fn describe(addr: &BindAddress) -> String {
    match addr {
        BindAddress::Tcp(a) => a.to_string(),
        BindAddress::Unix(p) => format!("unix:{}", p.display()),
    }
}

/// GETs `path` from the introspection endpoint at `addr` and decodes its JSON.
///
/// # Errors
/// Connection, HTTP, status or JSON errors, each naming the address and path.
pub async fn get_json<T: DeserializeOwned>(
    addr: &BindAddress,
    path: &str,
) -> Result<T, StatusError> {
    let where_ = describe(addr);
    match tokio::time::timeout(TIMEOUT, get_bytes(addr, path)).await {
        Ok(Ok(body)) => serde_json::from_slice(&body).map_err(|source| StatusError::Decode {
            addr: where_,
            path: path.to_owned(),
            source,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StatusError::Timeout {
            addr: where_,
            path: path.to_owned(),
        }),
    }
}

async fn get_bytes(addr: &BindAddress, path: &str) -> Result<Vec<u8>, StatusError> {
    let where_ = describe(addr);
    let http_err = |reason: String| StatusError::Http {
        addr: where_.clone(),
        path: path.to_owned(),
        reason,
    };
    let connect_err = |source| StatusError::Connect {
        addr: where_.clone(),
        source,
    };
    let io: Box<dyn IoStream> = match addr {
        BindAddress::Tcp(a) => Box::new(
            tokio::net::TcpStream::connect(a)
                .await
                .map_err(connect_err)?,
        ),
        BindAddress::Unix(p) => Box::new(
            tokio::net::UnixStream::connect(p)
                .await
                .map_err(connect_err)?,
        ),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http_err(e.to_string()))?;
    let conn_task = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "ipamd")
        .body(axum::body::Body::empty())
        .map_err(|e| http_err(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| http_err(e.to_string()))?;
    let status = response.status();
    let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), MAX_BODY)
        .await
        .map_err(|e| http_err(format!("reading the body: {e}")))?;
    conn_task.abort();
    if !status.is_success() {
        return Err(StatusError::Status {
            addr: where_,
            path: path.to_owned(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    Ok(body.to_vec())
}

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> IoStream for T {}

/// Reads the pool and the ENIs and renders them.
///
/// # Errors
/// See [`get_json`].
pub async fn status(addr: &BindAddress) -> Result<String, StatusError> {
    let addr = connect_address(addr);
    let pool: PoolReport = get_json(&addr, "/v1/pool").await?;
    let enis: BTreeMap<String, EniInfos> = get_json(&addr, "/v1/enis").await?;
    Ok(render(&pool, &enis))
}

fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The human view of a pool report and its ENIs: the node's summary, its subnets, then a table
/// of the ENIs.
pub fn render(pool: &PoolReport, enis: &BTreeMap<String, EniInfos>) -> String {
    let mut out = String::new();
    write_summary(&mut out, pool);
    write_subnets(&mut out, pool);
    if !pool.message.is_empty() {
        let _ = writeln!(out, "note:           {}", pool.message);
    }
    out.push('\n');
    out.push_str(&eni_table(enis));
    out
}

/// The phase, mode, address counts, limits and last EC2 error.
fn write_summary(out: &mut String, pool: &PoolReport) {
    let instance = match (pool.instance_id.as_str(), pool.instance_type.as_str()) {
        ("", _) => "instance not known yet".to_owned(),
        (id, "") => format!("instance {id}"),
        (id, ty) => format!("instance {id} ({ty})"),
    };
    let _ = writeln!(out, "ipamd:          {} — {instance}", pool.phase);
    let _ = writeln!(out, "mode:           {}", pool.mode);
    let _ = writeln!(
        out,
        "IPs:            {} total, {} assigned, {} cooling, {} assignable, on {} ENI{}",
        pool.ips.total,
        pool.ips.assigned,
        pool.ips.cooling,
        pool.assignable_ips,
        pool.enis,
        if pool.enis == 1 { "" } else { "s" }
    );
    match pool.limits {
        Some(l) => {
            let _ = writeln!(
                out,
                "limits:         {} ENIs x {} IPs = {} pod IPs, max pods {}",
                l.max_enis,
                l.ips_per_eni,
                u64::from(l.max_enis) * u64::from(l.ips_per_eni),
                l.max_pods
            );
        }
        None => {
            let _ = writeln!(
                out,
                "limits:         not known (ipamd reads them from EC2 in EC2 mode only)"
            );
        }
    }
    if pool.unschedulable {
        let _ = writeln!(
            out,
            "cordoned:       the pool neither grows nor frees ENIs (AWS_MANAGE_ENIS_NON_SCHEDULABLE=false)"
        );
    }
    match &pool.last_ec2_error {
        Some(e) => {
            let _ = writeln!(
                out,
                "last EC2 error: {} at {}: {}",
                e.operation, e.time, e.message
            );
        }
        None => {
            let _ = writeln!(out, "last EC2 error: none");
        }
    }
}

/// One line per subnet new ENIs may go into, with the low-address warning.
fn write_subnets(out: &mut String, pool: &PoolReport) {
    for s in &pool.subnets {
        let role = if s.node_subnet {
            "node subnet"
        } else {
            "kubernetes.io/role/cni"
        };
        let _ = writeln!(
            out,
            "subnet:         {} {} ({role}): {} free{}",
            s.subnet_id,
            s.cidr,
            s.available_ips,
            if s.low_ips {
                format!(
                    " — LOW: one more {} node takes {}; free addresses or tag another subnet kubernetes.io/role/cni=1",
                    if pool.instance_type.is_empty() {
                        "such"
                    } else {
                        pool.instance_type.as_str()
                    },
                    s.one_node_takes
                )
            } else {
                String::new()
            }
        );
    }
}

/// The ENIs by device number, one row each (or a line saying there are none yet).
fn eni_table(enis: &BTreeMap<String, EniInfos>) -> String {
    let mut rows = vec![
        [
            "ENI",
            "DEVICE",
            "TABLE",
            "PRIMARY IP",
            "SUBNET",
            "IPS",
            "ASSIGNED",
            "COOLING",
            "FREE",
            "PREFIXES",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect::<Vec<_>>(),
    ];
    let mut all: Vec<_> = enis.values().flat_map(|card| card.enis.values()).collect();
    all.sort_by_key(|e| e.device_number);
    for e in &all {
        let table_name = if e.route_table_id == 254 {
            "main".to_owned()
        } else {
            e.route_table_id.to_string()
        };
        let free = e.ips.free();
        rows.push(vec![
            e.id.clone(),
            e.device_number.to_string(),
            table_name,
            e.primary_ip.clone(),
            e.subnet_cidr.clone(),
            e.ips.total.to_string(),
            e.ips.assigned.to_string(),
            e.ips.cooling.to_string(),
            free.to_string(),
            e.available_ipv4_cidrs
                .values()
                .filter(|c| c.is_prefix)
                .count()
                .to_string(),
        ]);
    }
    if all.is_empty() {
        "no ENIs in the pool yet\n".to_owned()
    } else {
        table(&rows)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::introspect::wire::{CloudErrorJson, EniInfo, IpCounts, LimitsJson, SubnetJson};

    fn eni(id: &str, device: u32, total: usize, assigned: usize, cooling: usize) -> EniInfo {
        EniInfo {
            id: id.into(),
            is_primary: device == 0,
            is_trunk: false,
            is_efa: false,
            is_excluded_for_pod_ips: false,
            device_number: device,
            route_table_id: if device == 0 { 254 } else { device + 1 },
            primary_ip: format!("10.0.0.{}", 10 + 10 * device),
            subnet_cidr: "10.0.0.0/24".into(),
            ips: IpCounts {
                total,
                assigned,
                cooling,
            },
            available_ipv4_cidrs: BTreeMap::new(),
            ipv6_cidrs: BTreeMap::new(),
        }
    }

    fn report() -> PoolReport {
        PoolReport {
            ready: true,
            phase: "ready".into(),
            message: String::new(),
            mode: "EC2 provisioning".into(),
            instance_id: "i-0a1b".into(),
            instance_type: "t3.small".into(),
            enis: 2,
            ips: IpCounts {
                total: 9,
                assigned: 5,
                cooling: 1,
            },
            assignable_ips: 3,
            limits: Some(LimitsJson {
                max_enis: 3,
                ips_per_eni: 3,
                max_pods: 11,
            }),
            last_ec2_error: Some(CloudErrorJson {
                operation: "CreateNetworkInterface".into(),
                message: "InsufficientFreeAddressesInSubnet: subnet-1 is full".into(),
                time: "2026-11-27T10:00:00Z".into(),
            }),
            subnets: Vec::new(),
            unschedulable: false,
        }
    }

    #[test]
    fn renders_subnets_with_the_low_address_warning() {
        let mut r = report();
        r.subnets = vec![
            SubnetJson {
                subnet_id: "subnet-pods".into(),
                cidr: "10.0.4.0/22".into(),
                available_ips: 1000,
                node_subnet: false,
                low_ips: false,
                one_node_takes: 4,
            },
            SubnetJson {
                subnet_id: "subnet-node".into(),
                cidr: "10.0.0.0/24".into(),
                available_ips: 3,
                node_subnet: true,
                low_ips: true,
                one_node_takes: 4,
            },
        ];
        let text = render(&r, &BTreeMap::new());
        assert!(
            text.contains(
                "subnet:         subnet-pods 10.0.4.0/22 (kubernetes.io/role/cni): 1000 free\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("subnet:         subnet-node 10.0.0.0/24 (node subnet): 3 free — LOW: one more t3.small node takes 4; "),
            "{text}"
        );
    }

    #[test]
    fn renders_counts_limits_error_and_one_line_per_eni() {
        let enis = BTreeMap::from([(
            "0".to_owned(),
            EniInfos {
                ips: IpCounts {
                    total: 9,
                    assigned: 5,
                    cooling: 1,
                },
                enis: BTreeMap::from([
                    ("eni-b".to_owned(), eni("eni-b", 1, 6, 2, 1)),
                    ("eni-a".to_owned(), eni("eni-a", 0, 3, 3, 0)),
                ]),
            },
        )]);
        let text = render(&report(), &enis);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ipamd:          ready — instance i-0a1b (t3.small)"
        );
        assert_eq!(
            lines[2],
            "IPs:            9 total, 5 assigned, 1 cooling, 3 assignable, on 2 ENIs"
        );
        assert_eq!(
            lines[3],
            "limits:         3 ENIs x 3 IPs = 9 pod IPs, max pods 11"
        );
        assert_eq!(
            lines[4],
            "last EC2 error: CreateNetworkInterface at 2026-11-27T10:00:00Z: InsufficientFreeAddressesInSubnet: subnet-1 is full"
        );
        assert_eq!(
            &lines[6..],
            [
                "ENI    DEVICE  TABLE  PRIMARY IP  SUBNET       IPS  ASSIGNED  COOLING  FREE  PREFIXES",
                "eni-a  0       main   10.0.0.10   10.0.0.0/24  3    3         0        0     0",
                "eni-b  1       2      10.0.0.20   10.0.0.0/24  6    2         1        3     0",
            ]
        );
    }

    #[test]
    fn renders_a_cordoned_node() {
        let mut r = report();
        assert!(!render(&r, &BTreeMap::new()).contains("cordoned"));
        r.unschedulable = true;
        let text = render(&r, &BTreeMap::new());
        assert!(
            text.contains("cordoned:       the pool neither grows nor frees ENIs"),
            "{text}"
        );
    }

    #[test]
    fn renders_a_starting_node_without_limits() {
        let mut r = report();
        r.ready = false;
        r.phase = "starting".into();
        r.message = "ipamd is not ready yet: reading instance metadata".into();
        r.instance_id.clear();
        r.limits = None;
        r.last_ec2_error = None;
        let text = render(&r, &BTreeMap::new());
        assert!(
            text.starts_with("ipamd:          starting — instance not known yet\n"),
            "{text}"
        );
        assert!(text.contains("limits:         not known"), "{text}");
        assert!(text.contains("last EC2 error: none\n"), "{text}");
        assert!(
            text.contains("note:           ipamd is not ready yet: reading instance metadata\n"),
            "{text}"
        );
        assert!(text.ends_with("no ENIs in the pool yet\n"), "{text}");
    }

    #[test]
    fn wildcard_binds_are_reached_over_loopback() {
        assert_eq!(
            connect_address(&BindAddress::Tcp("0.0.0.0:61679".parse().unwrap())),
            BindAddress::Tcp("127.0.0.1:61679".parse().unwrap())
        );
        let unix = BindAddress::Unix("/run/i.sock".into());
        assert_eq!(connect_address(&unix), unix);
    }

    #[tokio::test]
    async fn errors_name_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let missing = BindAddress::Unix(dir.path().join("none.sock"));
        let err = status(&missing).await.unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "cannot connect to ipamd's introspection endpoint at unix:{}",
                dir.path().join("none.sock").display()
            )),
            "{err}"
        );
    }
}
