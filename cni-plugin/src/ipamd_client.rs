//! The gRPC client for ipamd (`rpc.CNIBackend`, contract/proto/rpc.proto) over its Unix socket,
//! with every connect and call bounded in time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::Channel;
use vpc_cni_contract::connect::{self, CONNECT_TIMEOUT, ConnectError, Timeouts};
/// The generated messages and client (the contract crate's).
pub use vpc_cni_contract::rpc;

use rpc::cni_backend_client::CniBackendClient;

/// How long one RPC may take (AddNetwork: [`ADD_RPC_TIMEOUT`]).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How long AddNetwork may take: ipamd holds it up to 10 s while the pool grows through EC2 for
/// a burst of pods (a new ENI takes seconds), which spares the pod kubelet's 10 s back-off. The
/// reference's plugin sets no deadline at all.
pub const ADD_RPC_TIMEOUT: Duration = Duration::from_secs(15);

/// `DelNetwork` reason of a normal DEL.
pub const REASON_POD_DELETED: &str = "PodDeleted";
/// `DelNetwork` reason of an ADD rollback.
pub const REASON_SETUP_FAILED: &str = "SetupNSFailed";

/// Failures talking to ipamd.
#[derive(Debug, thiserror::Error)]
pub enum IpamdError {
    /// No connection: the socket could not be connected, the handshake failed, or either took
    /// longer than [`CONNECT_TIMEOUT`].
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A call took too long.
    #[error("ipamd at {socket} did not answer {what} within {timeout:?}")]
    Timeout {
        /// The socket path.
        socket: PathBuf,
        /// The step.
        what: &'static str,
        /// The bound.
        timeout: Duration,
    },
    /// The connection broke during the call (ipamd died or closed it): no answer came, and
    /// ipamd may or may not have acted on the request.
    #[error("the connection to ipamd at {socket} broke during {rpc}: {message}")]
    Broken {
        /// The socket path.
        socket: PathBuf,
        /// The RPC.
        rpc: &'static str,
        /// What the transport said.
        message: String,
    },
    /// ipamd answered with an error status.
    #[error("ipamd {rpc}: {message} ({code:?})")]
    Status {
        /// The RPC.
        rpc: &'static str,
        /// The gRPC code.
        code: tonic::Code,
        /// ipamd's message.
        message: String,
    },
}

impl IpamdError {
    /// Whether retrying later may help (ipamd unreachable, not ready, or out of addresses): the
    /// cases reported as CNI code 11.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout { .. } | Self::Broken { .. } => true,
            Self::Status { code, .. } => matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::ResourceExhausted
            ),
        }
    }

    /// Whether ipamd could not be reached at all (as opposed to answering with an error).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout { .. } | Self::Broken { .. } => true,
            Self::Status { code, .. } => *code == tonic::Code::Unavailable,
        }
    }

    /// Whether ipamd said the key is unknown.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Status {
                code: tonic::Code::NotFound,
                ..
            }
        )
    }
}

/// A connected ipamd client.
#[derive(Debug)]
pub struct IpamdClient {
    client: CniBackendClient<Channel>,
    socket: PathBuf,
}

impl IpamdClient {
    /// Connects to the socket and sets up the gRPC connection, each within
    /// [`CONNECT_TIMEOUT`]; every call is bounded by [`RPC_TIMEOUT`] (AddNetwork by
    /// [`ADD_RPC_TIMEOUT`]). Must run inside a tokio runtime.
    pub async fn connect(socket: &Path) -> Result<Self, IpamdError> {
        let timeouts = Timeouts {
            connect: CONNECT_TIMEOUT,
            call: Some(ADD_RPC_TIMEOUT),
        };
        let channel = connect::connect(socket, timeouts).await?;
        Ok(Self {
            client: CniBackendClient::new(channel),
            socket: socket.to_path_buf(),
        })
    }

    async fn bounded<T>(
        &self,
        rpc: &'static str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, IpamdError> {
        let timeout = if rpc == "AddNetwork" {
            ADD_RPC_TIMEOUT
        } else {
            RPC_TIMEOUT
        };
        match tokio::time::timeout(timeout, fut).await {
            Err(_) => Err(IpamdError::Timeout {
                socket: self.socket.clone(),
                what: rpc,
                timeout,
            }),
            Ok(Ok(r)) => Ok(r.into_inner()),
            // A status that carries a source error was made here from a transport failure
            // (tonic: code Unknown, "transport error"); ipamd's own answers carry none.
            Ok(Err(status)) if std::error::Error::source(&status).is_some() => {
                Err(IpamdError::Broken {
                    socket: self.socket.clone(),
                    rpc,
                    message: status.message().to_string(),
                })
            }
            Ok(Err(status)) => Err(IpamdError::Status {
                rpc,
                code: status.code(),
                message: status.message().to_string(),
            }),
        }
    }

    /// `AddNetwork`.
    pub async fn add_network(
        &mut self,
        req: rpc::AddNetworkRequest,
    ) -> Result<rpc::AddNetworkReply, IpamdError> {
        let mut c = self.client.clone();
        self.bounded("AddNetwork", c.add_network(req)).await
    }

    /// `DelNetwork`.
    pub async fn del_network(
        &mut self,
        req: rpc::DelNetworkRequest,
    ) -> Result<rpc::DelNetworkReply, IpamdError> {
        let mut c = self.client.clone();
        self.bounded("DelNetwork", c.del_network(req)).await
    }

    /// `CheckNetwork`.
    pub async fn check_network(
        &mut self,
        req: rpc::CheckNetworkRequest,
    ) -> Result<rpc::CheckNetworkReply, IpamdError> {
        let mut c = self.client.clone();
        self.bounded("CheckNetwork", c.check_network(req)).await
    }

    /// `PoolStatus`.
    pub async fn pool_status(&mut self) -> Result<rpc::PoolStatusReply, IpamdError> {
        let mut c = self.client.clone();
        self.bounded("PoolStatus", c.pool_status(rpc::PoolStatusRequest {}))
            .await
    }

    /// `GarbageCollect`.
    pub async fn garbage_collect(
        &mut self,
        req: rpc::GarbageCollectRequest,
    ) -> Result<rpc::GarbageCollectReply, IpamdError> {
        let mut c = self.client.clone();
        self.bounded("GarbageCollect", c.garbage_collect(req)).await
    }
}
