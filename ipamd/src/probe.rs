//! `ipamd probe`: the DaemonSet's readiness and liveness check, a `grpc-health-probe`
//! work-alike (the reference ships that binary as `/app/grpc-health-probe`). It asks the
//! standard `grpc.health.v1.Health` service on ipamd's Unix socket and maps the answer to the
//! same exit codes: 0 SERVING, 1 invalid arguments, 2 connection failure, 3 RPC failure,
//! 4 unhealthy.
//!
//! Flags as `grpc-health-probe` spells them (`-addr=unix:///var/run/aws-node/ipamd.sock`,
//! `-service`, `-connect-timeout=5s`, `-rpc-timeout=5s`; one or two dashes, `=value` or a
//! separate value). Unlike that tool, `-addr` may be omitted: the default is the socket ipamd
//! serves, `AWS_VPC_K8S_CNI_IPAMD_SOCKET` or `/var/run/aws-node/ipamd.sock`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
/// The socket ipamd serves by default.
pub use vpc_cni_contract::connect::DEFAULT_SOCKET;
use vpc_cni_contract::connect::{self as unix, ConnectError, Timeouts};
/// Default connect and RPC timeout (the manifest passes 5 s for both, as the reference's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the health service is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAddress {
    /// A Unix socket.
    Unix(PathBuf),
    /// `host:port` (plaintext gRPC).
    Tcp(SocketAddr),
}

impl std::fmt::Display for ProbeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOptions {
    /// The health service's address.
    pub addr: ProbeAddress,
    /// The service name asked about (`""`: the whole server).
    pub service: String,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long the Check RPC may take.
    pub rpc_timeout: Duration,
}

/// The outcome, with `grpc-health-probe`'s exit codes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProbeError {
    /// Bad flags (exit 1).
    #[error("{0}")]
    InvalidArguments(String),
    /// Could not connect (exit 2).
    #[error("failed to connect to service at {addr:?}: {reason}")]
    Connection {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The Check RPC failed (exit 3).
    #[error("health rpc failed: {0}")]
    Rpc(String),
    /// The service answered, but not SERVING (exit 4).
    #[error("service unhealthy (responded with {0:?})")]
    Unhealthy(String),
}

impl ProbeError {
    /// `grpc-health-probe`'s exit code for this outcome.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::InvalidArguments(_) => 1,
            Self::Connection { .. } => 2,
            Self::Rpc(_) => 3,
            Self::Unhealthy(_) => 4,
        }
    }
}

/// Parses `-addr` values: `unix:///abs/path`, `unix:/abs/path`, `unix:relative`, `host:port`.
///
/// # Errors
/// Anything else, named.
pub fn parse_addr(value: &str) -> Result<ProbeAddress, ProbeError> {
    let bad = |why: &str| ProbeError::InvalidArguments(format!("invalid -addr {value:?}: {why}"));
    if let Some(rest) = value.strip_prefix("unix://") {
        if !rest.starts_with('/') {
            return Err(bad("unix:// must be followed by an absolute path"));
        }
        return Ok(ProbeAddress::Unix(PathBuf::from(rest)));
    }
    if let Some(rest) = value.strip_prefix("unix:") {
        if rest.is_empty() {
            return Err(bad("no socket path"));
        }
        return Ok(ProbeAddress::Unix(PathBuf::from(rest)));
    }
    value
        .parse::<SocketAddr>()
        .map(ProbeAddress::Tcp)
        .map_err(|_| bad("expected unix:///path/to.sock or ip:port"))
}

/// Parses a Go duration as `grpc-health-probe` takes it (`5s`, `500ms`, `1m`, `1.5s`).
///
/// # Errors
/// Not a positive duration.
pub fn parse_duration(flag: &str, value: &str) -> Result<Duration, ProbeError> {
    let bad = || {
        ProbeError::InvalidArguments(format!(
            "invalid value {value:?} for flag -{flag}: expected a duration such as 5s, 500ms or 1m"
        ))
    };
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (number, unit) = value.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let secs = n * scale;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(ProbeError::InvalidArguments(format!(
            "flag -{flag} must be greater than zero (got {value:?})"
        )));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// Parses the flags after `ipamd probe`; `default_socket` is used without `-addr`.
///
/// # Errors
/// Unknown flags, missing or bad values.
pub fn parse_args(args: &[String], default_socket: PathBuf) -> Result<ProbeOptions, ProbeError> {
    let mut opts = ProbeOptions {
        addr: ProbeAddress::Unix(default_socket),
        service: String::new(),
        connect_timeout: DEFAULT_TIMEOUT,
        rpc_timeout: DEFAULT_TIMEOUT,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(ProbeError::InvalidArguments(format!(
                "unexpected argument {arg:?} (flags: -addr, -service, -connect-timeout, -rpc-timeout)"
            )));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (flag, None),
        };
        let mut value = || match &inline {
            Some(v) => Ok(v.clone()),
            None => it.next().cloned().ok_or_else(|| {
                ProbeError::InvalidArguments(format!("flag needs an argument: -{name}"))
            }),
        };
        match name {
            "addr" => opts.addr = parse_addr(&value()?)?,
            "service" => opts.service = value()?,
            "connect-timeout" => opts.connect_timeout = parse_duration(name, &value()?)?,
            "rpc-timeout" => opts.rpc_timeout = parse_duration(name, &value()?)?,
            _ => {
                return Err(ProbeError::InvalidArguments(format!(
                    "flag provided but not defined: -{name} (flags: -addr, -service, -connect-timeout, -rpc-timeout)"
                )));
            }
        }
    }
    Ok(opts)
}

async fn connect(opts: &ProbeOptions) -> Result<Channel, ProbeError> {
    let conn_err = |reason: String| ProbeError::Connection {
        addr: opts.addr.to_string(),
        reason,
    };
    let attempt = async {
        match &opts.addr {
            ProbeAddress::Unix(path) => {
                let timeouts = Timeouts {
                    connect: opts.connect_timeout,
                    call: None,
                };
                unix::connect(path, timeouts)
                    .await
                    .map_err(|e| conn_err(unix_reason(&e)))
            }
            ProbeAddress::Tcp(a) => Endpoint::from_shared(format!("http://{a}"))
                .map_err(|e| conn_err(e.to_string()))
                .map(|e| e.connect_timeout(opts.connect_timeout))?
                .connect()
                .await
                .map_err(|e| conn_err(crate::cloud::imds::error_chain(&e))),
        }
    };
    tokio::time::timeout(opts.connect_timeout, attempt)
        .await
        .map_err(|_| conn_err(format!("timeout after {:?}", opts.connect_timeout)))?
}

/// Why the Unix socket could not be used, without the socket path (the probe's message names
/// the address already).
fn unix_reason(err: &ConnectError) -> String {
    match err {
        ConnectError::Connect { source, .. } => source.to_string(),
        ConnectError::Transport { source, .. } => crate::cloud::imds::error_chain(source),
        ConnectError::Timeout { timeout, .. } => format!("timeout after {timeout:?}"),
    }
}

/// Asks the health service. `Ok` means SERVING.
///
/// # Errors
/// The outcome as a [`ProbeError`] (see [`ProbeError::exit_code`]).
pub async fn probe(opts: &ProbeOptions) -> Result<(), ProbeError> {
    let channel = connect(opts).await?;
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: opts.service.clone(),
    };
    let reply = tokio::time::timeout(opts.rpc_timeout, client.check(request))
        .await
        .map_err(|_| ProbeError::Rpc(format!("timeout after {:?}", opts.rpc_timeout)))?
        .map_err(|status| match status.code() {
            tonic::Code::NotFound => ProbeError::Unhealthy(format!(
                "SERVICE_UNKNOWN: {:?} is not a health service name",
                opts.service
            )),
            code => ProbeError::Rpc(format!("{code:?}: {}", status.message())),
        })?
        .into_inner();
    match ServingStatus::try_from(reply.status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(ProbeError::Unhealthy(other.as_str_name().to_owned())),
        Err(_) => Err(ProbeError::Unhealthy(format!(
            "unknown status {}",
            reply.status
        ))),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_the_reference_probe_command_line() {
        let o = parse_args(
            &args(&[
                "-addr=unix:///var/run/aws-node/ipamd.sock",
                "-connect-timeout=5s",
                "-rpc-timeout=5s",
            ]),
            "/nowhere".into(),
        )
        .unwrap();
        assert_eq!(
            o.addr,
            ProbeAddress::Unix("/var/run/aws-node/ipamd.sock".into())
        );
        assert_eq!(o.connect_timeout, Duration::from_secs(5));
        assert_eq!(o.rpc_timeout, Duration::from_secs(5));
        assert_eq!(o.service, "");
        let o = parse_args(
            &args(&[
                "--addr",
                "127.0.0.1:50051",
                "-service",
                "grpc.health.v1.aws-node",
                "-rpc-timeout",
                "1500ms",
            ]),
            "/nowhere".into(),
        )
        .unwrap();
        assert_eq!(
            o.addr,
            ProbeAddress::Tcp("127.0.0.1:50051".parse().unwrap())
        );
        assert_eq!(o.service, "grpc.health.v1.aws-node");
        assert_eq!(o.rpc_timeout, Duration::from_millis(1500));
        let o = parse_args(&[], "/run/x.sock".into()).unwrap();
        assert_eq!(o.addr, ProbeAddress::Unix("/run/x.sock".into()));
        assert_eq!(o.connect_timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn bad_arguments_exit_1_naming_the_problem() {
        let e = parse_args(&args(&["-adr=x"]), "/s".into()).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(
            e.to_string()
                .contains("flag provided but not defined: -adr"),
            "{e}"
        );
        let e = parse_args(&args(&["-addr"]), "/s".into()).unwrap_err();
        assert_eq!(e.to_string(), "flag needs an argument: -addr");
        let e = parse_args(&args(&["-addr=unix://relative"]), "/s".into()).unwrap_err();
        assert!(e.to_string().contains("absolute path"), "{e}");
        let e = parse_args(&args(&["-rpc-timeout=5"]), "/s".into()).unwrap_err();
        assert!(e.to_string().contains("-rpc-timeout"), "{e}");
        let e = parse_args(&args(&["-connect-timeout=0s"]), "/s".into()).unwrap_err();
        assert!(e.to_string().contains("greater than zero"), "{e}");
        let e = parse_args(&args(&["extra"]), "/s".into()).unwrap_err();
        assert!(
            e.to_string().contains("unexpected argument \"extra\""),
            "{e}"
        );
        assert_eq!(parse_duration("x", "1m").unwrap(), Duration::from_secs(60));
        assert_eq!(
            parse_duration("x", "0.5s").unwrap(),
            Duration::from_millis(500)
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connection_failure() {
        let dir = tempfile::tempdir().unwrap();
        let opts = ProbeOptions {
            addr: ProbeAddress::Unix(dir.path().join("ipamd.sock")),
            service: String::new(),
            connect_timeout: Duration::from_secs(1),
            rpc_timeout: Duration::from_secs(1),
        };
        let e = probe(&opts).await.unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains("ipamd.sock"), "{e}");
    }

    #[tokio::test]
    async fn serving_passes_and_not_serving_is_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipamd.sock");
        let listener = crate::socket::bind(&path).unwrap();
        let (reporter, health) = tonic_health::server::health_reporter();
        crate::server::set_health(&reporter, false).await;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        let opts = |service: &str| ProbeOptions {
            addr: ProbeAddress::Unix(path.clone()),
            service: service.into(),
            connect_timeout: Duration::from_secs(2),
            rpc_timeout: Duration::from_secs(2),
        };
        let e = probe(&opts("")).await.unwrap_err();
        assert_eq!(e, ProbeError::Unhealthy("NOT_SERVING".into()));
        assert_eq!(e.exit_code(), 4);
        crate::server::set_health(&reporter, true).await;
        probe(&opts("")).await.unwrap();
        probe(&opts("grpc.health.v1.aws-node")).await.unwrap();
        let e = probe(&opts("no.such.Service")).await.unwrap_err();
        assert_eq!(e.exit_code(), 4, "{e}");
    }
}
