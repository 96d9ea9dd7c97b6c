//! Connectivity probes between namespaces, as a user would check a network: ICMP to many
//! destinations from one namespace (one `ip netns exec`, one `ping` per destination), a matrix
//! of such probes run in parallel, and a TCP round trip whose server reports the peer address it
//! saw (so tests can prove no address translation happened inside the VPC).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use test_support::netns::{CommandError, Netns};

/// Errors of a probe.
#[derive(Debug, thiserror::Error)]
pub enum ConnectivityError {
    /// The namespace could not be used.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The echo came back different.
    #[error("TCP echo through {what} returned {got:?}")]
    Echo {
        /// The connection.
        what: String,
        /// What came back.
        got: String,
    },
}

/// Pings every destination from `ns` (one probe, a second try with two probes on loss, 2 s
/// deadline per reply); returns the destinations that never answered.
pub fn unreachable_from(
    ns: &Netns,
    destinations: &[IpAddr],
) -> Result<Vec<IpAddr>, ConnectivityError> {
    if destinations.is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<String> = destinations.iter().map(ToString::to_string).collect();
    let script = "for d in \"$@\"; do \
        ping -n -q -c 1 -W 2 \"$d\" >/dev/null 2>&1 || \
        ping -n -q -c 2 -i 0.2 -W 2 \"$d\" >/dev/null 2>&1 || echo \"$d\"; done";
    let mut args = vec!["-c", script, "probe"];
    args.extend(list.iter().map(String::as_str));
    let out = ns.exec("sh", &args)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect())
}

/// Runs [`unreachable_from`] for every `(label, namespace)` source towards `destinations`
/// (skipping a source's own addresses, given as the third tuple element), `parallel` sources
/// at a time. Returns `(source label, unreachable destination)` pairs.
pub fn ping_matrix(
    sources: &[(String, &Netns, Vec<IpAddr>)],
    destinations: &[IpAddr],
    parallel: usize,
) -> Result<Vec<(String, IpAddr)>, ConnectivityError> {
    let mut failures = Vec::new();
    for chunk in sources.chunks(parallel.max(1)) {
        let results: Vec<Result<Vec<(String, IpAddr)>, ConnectivityError>> =
            std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|(label, ns, own)| {
                        s.spawn(move || {
                            let targets: Vec<IpAddr> = destinations
                                .iter()
                                .copied()
                                .filter(|d| !own.contains(d))
                                .collect();
                            unreachable_from(ns, &targets)
                                .map(|u| u.into_iter().map(|d| (label.clone(), d)).collect())
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(ConnectivityError::Io {
                                what: "ping thread".into(),
                                source: std::io::Error::other("panicked"),
                            })
                        })
                    })
                    .collect()
            });
        for r in results {
            failures.extend(r?);
        }
    }
    Ok(failures)
}

/// A TCP connection from `client` to a server listening on `server_ip` (IPv4 or IPv6) inside
/// `server`: the client sends a line, the server echoes it. Returns the client address the
/// server saw.
pub fn tcp_round_trip(
    server: &Netns,
    server_ip: impl Into<IpAddr>,
    client: &Netns,
) -> Result<SocketAddr, ConnectivityError> {
    let server_ip: IpAddr = server_ip.into();
    let listener = server
        .run_in(move || TcpListener::bind((server_ip, 0)))?
        .map_err(|source| ConnectivityError::Io {
            what: format!("listen on {server_ip} in {}", server.name()),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ConnectivityError::Io {
            what: "listener address".into(),
            source,
        })?;
    let what = format!("{} -> {addr} ({})", client.name(), server.name());
    let server_thread = std::thread::spawn(move || -> std::io::Result<SocketAddr> {
        listener.set_nonblocking(false)?;
        let (mut stream, peer) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf)?;
        stream.write_all(&buf[..n])?;
        Ok(peer)
    });
    let message = format!("vcni {}\n", client.name());
    let sent = message.clone();
    let echoed = client.run_in(move || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(sent.as_bytes())?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })?;
    let echoed = match echoed {
        Ok(e) => e,
        Err(source) => {
            // Unblock the server's accept by connecting from its own namespace.
            let _ =
                server.run_in(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
            let _ = server_thread.join();
            return Err(ConnectivityError::Io { what, source });
        }
    };
    let peer = server_thread
        .join()
        .map_err(|_| ConnectivityError::Io {
            what: what.clone(),
            source: std::io::Error::other("server thread panicked"),
        })?
        .map_err(|source| ConnectivityError::Io {
            what: what.clone(),
            source,
        })?;
    if echoed != message {
        return Err(ConnectivityError::Echo { what, got: echoed });
    }
    Ok(peer)
}
