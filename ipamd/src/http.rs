//! The small HTTP/1.1 server behind `/metrics` and the introspection endpoint: binds a TCP
//! address or a Unix socket, serves an axum `Router` with the reference's 5 s read and 5 s write
//! budget per connection (its Go servers set `ReadTimeout`/`WriteTimeout` of 5 s), and keeps
//! retrying the bind with backoff when the address is taken, as the reference does: neither
//! endpoint may ever stop ipamd from serving pods.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tower::ServiceExt;

use crate::config::parse::BindAddress;

/// How long a client has to send its request headers.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long answering one request may take once its headers are in.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const BIND_BACKOFF_START: Duration = Duration::from_secs(1);
const BIND_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Binding failed.
#[derive(Debug, Error)]
pub enum HttpError {
    /// The TCP address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    BindTcp {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The Unix socket could not be set up.
    #[error(transparent)]
    BindUnix(#[from] crate::socket::SocketError),
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket at this path (removed when serving ends).
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `addr`. A Unix socket's directory is created (0755), a stale socket removed, and
    /// the new one made 0660.
    ///
    /// # Errors
    /// The address is taken or not allowed, or the socket path is unusable.
    pub async fn bind(addr: &BindAddress) -> Result<Self, HttpError> {
        match addr {
            BindAddress::Tcp(a) => TcpListener::bind(a)
                .await
                .map(Self::Tcp)
                .map_err(|source| HttpError::BindTcp { addr: *a, source }),
            BindAddress::Unix(path) => Ok(Self::Unix(crate::socket::bind(path)?, path.clone())),
        }
    }

    /// What it listens on, for logs (`127.0.0.1:61679`, `unix:/run/x.sock`).
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| format!("tcp (unknown address: {e})"), |a| a.to_string()),
            Self::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    /// The bound TCP address (tests bind port 0).
    pub fn local_tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().ok(),
            Self::Unix(..) => None,
        }
    }
}

/// Binds `addr`, retrying with exponential backoff (1 s doubling to 60 s) while it fails, until
/// `shutdown` resolves (then `None`). `what` names the endpoint in logs.
pub async fn bind_with_retry(
    what: &str,
    addr: &BindAddress,
    shutdown: impl Future<Output = ()>,
) -> Option<Listener> {
    tokio::pin!(shutdown);
    let mut delay = BIND_BACKOFF_START;
    loop {
        match Listener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(e) => {
                tracing::warn!(endpoint = what, error = %e, retry_in = ?delay, "cannot serve; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut shutdown => return None,
        }
        delay = (delay * 2).min(BIND_BACKOFF_MAX);
    }
}

/// Per-connection time budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Until the request headers are in.
    pub read: Duration,
    /// Then until the answer is written.
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            read: READ_TIMEOUT,
            write: WRITE_TIMEOUT,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves. Each connection carries one request
/// (no keep-alive): headers within [`READ_TIMEOUT`], the answer within [`WRITE_TIMEOUT`]
/// after that. A Unix socket is removed at the end.
pub async fn serve(
    what: &'static str,
    listener: Listener,
    router: axum::Router,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(what, listener, router, Timeouts::default(), shutdown).await;
}

/// [`serve`] with other timeouts.
pub async fn serve_with(
    what: &'static str,
    listener: Listener,
    router: axum::Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let described = listener.describe();
    tracing::info!(endpoint = what, address = %described, "serving");
    loop {
        let accepted = match &listener {
            Listener::Tcp(l) => tokio::select! {
                r = l.accept() => r.map(|(s, peer)| (Box::new(s) as Box<dyn Io>, peer.to_string())),
                () = &mut shutdown => break,
            },
            Listener::Unix(l, _) => tokio::select! {
                r = l.accept() => r.map(|(s, _)| (Box::new(s) as Box<dyn Io>, "unix".to_owned())),
                () = &mut shutdown => break,
            },
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(
                    what,
                    stream,
                    peer,
                    router.clone(),
                    timeouts,
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(endpoint = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    if let Listener::Unix(_, path) = &listener {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(endpoint = what, socket = %path.display(), error = %e, "cannot remove socket");
            }
        }
    }
    tracing::info!(endpoint = what, address = %described, "stopped serving");
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

async fn serve_connection(
    what: &'static str,
    stream: Box<dyn Io>,
    peer: String,
    router: axum::Router,
    timeouts: Timeouts,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let router = router.clone();
        let method = req.method().clone();
        let uri = req.uri().clone();
        async move {
            let response = router.oneshot(req.map(axum::body::Body::new)).await;
            if let Ok(r) = &response {
                tracing::debug!(endpoint = what, %method, %uri, status = r.status().as_u16(), "HTTP request");
            }
            response
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.read)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(timeouts.read + timeouts.write, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(endpoint = what, %peer, error = %e, "connection ended with an error")
        }
        Err(_) => {
            tracing::debug!(endpoint = what, %peer, "connection closed after the read/write timeout")
        }
    }
}

#[cfg(test)]
mod tests {

    // Unix sockets only: unit tests open no TCP listener in the machine's network namespace.

    use std::path::Path;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(path: &Path, uri: &str) -> String {
        let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
        s.write_all(format!("GET {uri} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_one_request_per_connection_and_removes_the_socket_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("introspect.sock");
        let listener = Listener::bind(&BindAddress::Unix(path.clone()))
            .await
            .unwrap();
        assert_eq!(listener.describe(), format!("unix:{}", path.display()));
        assert_eq!(listener.local_tcp_addr(), None);
        let router = axum::Router::new().route("/x", axum::routing::get(|| async { "hello" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve("test", listener, router, async {
            let _ = rx.await;
        }));
        let answer = get(&path, "/x").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hello"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(get(&path, "/nope").await.starts_with("HTTP/1.1 404"));
        tx.send(()).unwrap();
        task.await.unwrap();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_after_the_read_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slow.sock");
        let listener = Listener::bind(&BindAddress::Unix(path.clone()))
            .await
            .unwrap();
        let timeouts = Timeouts {
            read: Duration::from_millis(200),
            write: Duration::from_millis(200),
        };
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "root" }));
        tokio::spawn(serve_with(
            "test",
            listener,
            router,
            timeouts,
            std::future::pending(),
        ));
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let start = std::time::Instant::now();
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "the server kept the silent connection open");
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "{:?}",
            start.elapsed()
        );
        let text = String::from_utf8_lossy(&buf);
        assert!(!text.contains(" 200 "), "{text}");
    }

    #[tokio::test]
    async fn an_unusable_address_is_retried_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-socket");
        std::fs::write(&path, "x").unwrap();
        let addr = BindAddress::Unix(path.clone());
        let err = Listener::bind(&addr).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} exists and is not a Unix socket; refusing to remove it",
                path.display()
            )
        );
        let got =
            bind_with_retry("test", &addr, tokio::time::sleep(Duration::from_millis(50))).await;
        assert!(got.is_none());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x");
    }
}
