//! The tests' gRPC client to a running ipamd over its Unix socket, on the contract crate's
//! connector and messages (`contract/proto/rpc.proto`): a channel or a `CNIBackend` client for
//! async tests, and read-only questions (pool counters, the assignment of one attachment) for
//! synchronous ones, each on a short-lived current-thread runtime.

use std::path::Path;
use std::time::Duration;

use tonic::transport::Channel;
use vpc_cni_contract::connect::{ConnectError, Timeouts, connect};
use vpc_cni_contract::rpc::cni_backend_client::CniBackendClient;
use vpc_cni_contract::rpc::{
    CheckNetworkReply, CheckNetworkRequest, PoolStatusReply, PoolStatusRequest,
};

/// How long one question may take (connect + RPC), and connecting alone.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of talking to ipamd.
#[derive(Debug, thiserror::Error)]
pub enum IpamdClientError {
    /// No runtime could be built.
    #[error("cannot build a tokio runtime: {0}")]
    Runtime(std::io::Error),
    /// The socket did not accept a connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The RPC failed.
    #[error("ipamd {rpc} failed: {status}")]
    Rpc {
        /// Which RPC.
        rpc: &'static str,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },
    /// The RPC did not finish in time.
    #[error("ipamd {rpc} timed out after {RPC_TIMEOUT:?}")]
    Timeout {
        /// Which RPC.
        rpc: &'static str,
    },
}

/// A gRPC channel to ipamd on `socket` (for any service it offers, e.g. health); connecting
/// and the handshake are bounded by [`RPC_TIMEOUT`], calls are not.
pub async fn channel(socket: &Path) -> Result<Channel, ConnectError> {
    let timeouts = Timeouts {
        connect: RPC_TIMEOUT,
        call: None,
    };
    connect(socket, timeouts).await
}

/// ipamd's `CNIBackend` client on a [`channel`].
pub async fn client(socket: &Path) -> Result<CniBackendClient<Channel>, ConnectError> {
    Ok(CniBackendClient::new(channel(socket).await?))
}

fn block_on<T>(
    rpc: &'static str,
    fut: impl std::future::Future<Output = Result<T, IpamdClientError>>,
) -> Result<T, IpamdClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(IpamdClientError::Runtime)?;
    runtime.block_on(async {
        tokio::time::timeout(RPC_TIMEOUT, fut)
            .await
            .map_err(|_| IpamdClientError::Timeout { rpc })?
    })
}

/// `PoolStatus`: total, assigned, cooling and assignable counts.
pub fn pool_status(socket: &Path) -> Result<PoolStatusReply, IpamdClientError> {
    block_on("PoolStatus", async {
        client(socket)
            .await?
            .pool_status(PoolStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| IpamdClientError::Rpc {
                rpc: "PoolStatus",
                status: Box::new(status),
            })
    })
}

/// `CheckNetwork` of one attachment; `Ok(None)` when ipamd answers NOT_FOUND.
pub fn check_network(
    socket: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<Option<CheckNetworkReply>, IpamdClientError> {
    block_on("CheckNetwork", async {
        let request = CheckNetworkRequest {
            client_version: format!("vpc-cni-tests/{}", env!("CARGO_PKG_VERSION")),
            container_id: container_id.to_owned(),
            if_name: ifname.to_owned(),
            network_name: network.to_owned(),
        };
        match client(socket).await?.check_network(request).await {
            Ok(reply) => Ok(Some(reply.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(IpamdClientError::Rpc {
                rpc: "CheckNetwork",
                status: Box::new(status),
            }),
        }
    })
}
