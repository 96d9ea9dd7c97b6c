//! Read-only questions to a running ipamd over its gRPC Unix socket (the contract in
//! `contract/proto/rpc.proto`): pool counters and the assignment of one attachment. Each call runs
//! on a short-lived current-thread runtime so synchronous tests can use it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipamd::rpc::cni_backend_client::CniBackendClient;
use ipamd::rpc::{CheckNetworkReply, CheckNetworkRequest, PoolStatusReply, PoolStatusRequest};
use tonic::transport::Channel;
use vpc_cni_contract::connect::{Timeouts, connect as connect_unix};

/// How long one question may take (connect + RPC).
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of talking to ipamd.
#[derive(Debug, thiserror::Error)]
pub enum IpamdClientError {
    /// No runtime could be built.
    #[error("cannot build a tokio runtime: {0}")]
    Runtime(std::io::Error),
    /// The socket did not accept a connection.
    #[error("cannot connect to ipamd at {socket}: {reason}")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
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

async fn connect(socket: &Path) -> Result<CniBackendClient<Channel>, IpamdClientError> {
    let timeouts = Timeouts {
        connect: RPC_TIMEOUT,
        call: None,
    };
    let channel = connect_unix(socket, timeouts)
        .await
        .map_err(|e| IpamdClientError::Connect {
            socket: socket.to_owned(),
            reason: format!("{e:?}"),
        })?;
    Ok(CniBackendClient::new(channel))
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
        let mut client = connect(socket).await?;
        client
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
pub(crate) fn check_network(
    socket: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<Option<CheckNetworkReply>, IpamdClientError> {
    block_on("CheckNetwork", async {
        let mut client = connect(socket).await?;
        let request = CheckNetworkRequest {
            client_version: format!("vpc-cni-tests/{}", env!("CARGO_PKG_VERSION")),
            container_id: container_id.to_owned(),
            if_name: ifname.to_owned(),
            network_name: network.to_owned(),
        };
        match client.check_network(request).await {
            Ok(reply) => Ok(Some(reply.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(IpamdClientError::Rpc {
                rpc: "CheckNetwork",
                status: Box::new(status),
            }),
        }
    })
}
