//! The gRPC channel to ipamd over its Unix socket: the one way the plugin, `ipamd probe` and
//! the test and benchmark clients reach ipamd.
//!
//! The socket is connected here, before tonic sees it, so that a failure names the OS error
//! (ENOENT: ipamd never started or removed its socket; ECONNREFUSED: nobody listens) instead of
//! tonic's generic transport error. The channel carries that one connection: it does not dial
//! again when the connection breaks (a broken call is an answer the caller must see, not
//! something to retry behind its back); a new [`connect`] makes a new connection.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The socket ipamd serves by default (`AWS_VPC_K8S_CNI_IPAMD_SOCKET` moves it).
pub const DEFAULT_SOCKET: &str = "/var/run/aws-node/ipamd.sock";

/// How long connecting to the socket may take, and again the HTTP/2 handshake: the plugin's
/// bound, short because ipamd answers from the same node (kubelet retries a failed ADD).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The authority tonic puts in requests; ipamd's server ignores it (there is no host on a Unix
/// socket), but an HTTP/2 request needs one.
const AUTHORITY: &str = "http://[::]:50051";

/// The time bounds of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Bound of connecting to the socket, and separately of the HTTP/2 handshake.
    pub connect: Duration,
    /// Bound the channel puts on every call (`None`: calls are bounded by the caller, if at all).
    pub call: Option<Duration>,
}

impl Default for Timeouts {
    /// [`CONNECT_TIMEOUT`], calls unbounded.
    fn default() -> Self {
        Self {
            connect: CONNECT_TIMEOUT,
            call: None,
        }
    }
}

/// Why no channel could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket could not be connected.
    #[error("cannot connect to ipamd at {socket}: {source}")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The HTTP/2 connection could not be set up.
    #[error("cannot open a gRPC connection to ipamd at {socket}: {source}")]
    Transport {
        /// The socket path.
        socket: PathBuf,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// Connecting or the handshake took longer than [`Timeouts::connect`].
    #[error("ipamd at {socket} did not answer {what} within {timeout:?}")]
    Timeout {
        /// The socket path.
        socket: PathBuf,
        /// The step: "the connection" or "the gRPC handshake".
        what: &'static str,
        /// The bound.
        timeout: Duration,
    },
}

/// Opens a gRPC channel to the server on the Unix socket `socket`. Must run inside a tokio
/// runtime. Wrap it in the generated client: `CniBackendClient::new(channel)` (or another
/// service the server offers, such as the standard health service).
///
/// # Errors
/// The socket could not be connected, the handshake failed, or either took too long.
pub async fn connect(socket: &Path, timeouts: Timeouts) -> Result<Channel, ConnectError> {
    let timeout = |what| ConnectError::Timeout {
        socket: socket.to_path_buf(),
        what,
        timeout: timeouts.connect,
    };
    let stream = tokio::time::timeout(timeouts.connect, UnixStream::connect(socket))
        .await
        .map_err(|_| timeout("the connection"))?
        .map_err(|source| ConnectError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
    let slot = Arc::new(Mutex::new(Some(stream)));
    let connector = tower::service_fn(move |_: Uri| {
        let slot = Arc::clone(&slot);
        async move {
            let stream = slot
                .lock()
                .map_err(|_| io::Error::other("connector lock poisoned"))?
                .take()
                .ok_or_else(|| io::Error::other("the ipamd connection was closed"))?;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    let mut endpoint = Endpoint::from_static(AUTHORITY);
    if let Some(call) = timeouts.call {
        endpoint = endpoint.timeout(call);
    }
    tokio::time::timeout(timeouts.connect, endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| timeout("the gRPC handshake"))?
        .map_err(|source| ConnectError::Transport {
            socket: socket.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {

    use tokio_stream::wrappers::UnixListenerStream;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    #[tokio::test]
    async fn a_missing_socket_names_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ipamd.sock");
        let err = connect(&socket, Timeouts::default()).await.unwrap_err();
        match &err {
            ConnectError::Connect { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound, "{err}");
            }
            other => panic!("expected a connect error, got {other}"),
        }
        assert!(err.to_string().contains("ipamd.sock"), "{err}");
    }

    #[tokio::test]
    async fn a_channel_reaches_the_server_on_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ipamd.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        let timeouts = Timeouts {
            call: Some(Duration::from_secs(5)),
            ..Timeouts::default()
        };
        let channel = connect(&socket, timeouts).await.unwrap();
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status, ServingStatus::Serving as i32);
    }
}
