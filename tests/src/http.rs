//! A minimal HTTP/1.1 client that opens its connection inside a network namespace (from a thread
//! that entered it), for what a process on a node would ask: instance metadata on
//! 169.254.169.254, ipamd's introspection endpoint on the node's loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use test_support::netns::{CommandError, Netns};

/// Errors of an HTTP exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpExchangeError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Connecting, writing or reading failed.
    #[error("HTTP {method} http://{addr}{path} failed: {source}")]
    Io {
        /// Method.
        method: String,
        /// Server.
        addr: SocketAddr,
        /// Path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server's answer is not HTTP.
    #[error("HTTP {method} http://{addr}{path}: malformed response: {detail}")]
    Malformed {
        /// Method.
        method: String,
        /// Server.
        addr: SocketAddr,
        /// Path.
        path: String,
        /// What was wrong.
        detail: String,
    },
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body as text.
    pub body: String,
}

impl HttpReply {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// One request (`Connection: close`) from inside `ns`.
pub fn request(
    ns: &Netns,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpReply, HttpExchangeError> {
    let (m, p) = (method.to_owned(), path.to_owned());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    ns.run_in(move || exchange(addr, &m, &p, &headers))?
}

fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<HttpReply, HttpExchangeError> {
    let io = |source| HttpExchangeError::Io {
        method: method.to_owned(),
        addr,
        path: path.to_owned(),
        source,
    };
    let malformed = |detail: &str| HttpExchangeError::Malformed {
        method: method.to_owned(),
        addr,
        path: path.to_owned(),
        detail: detail.to_owned(),
    };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "PUT" || method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).map_err(io)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed(&format!("status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(io)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| malformed(&format!("header line {line:?}")))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut body = String::new();
    reader.read_to_string(&mut body).map_err(io)?;
    let reply = HttpReply {
        status,
        headers,
        body,
    };
    // Chunked bodies (axum streams JSON that way) are decoded here; Connection: close means
    // the rest of the stream is the body otherwise.
    if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let body = dechunk(&reply.body).ok_or_else(|| malformed("bad chunked encoding"))?;
        return Ok(HttpReply { body, ..reply });
    }
    Ok(reply)
}

fn dechunk(raw: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = raw;
    loop {
        let (size_line, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// A GET of instance metadata from inside `ns` (IMDSv2: token first), at `endpoint`
/// (`169.254.169.254:80` on a node of the simulated VPC).
pub fn imds_get(
    ns: &Netns,
    endpoint: SocketAddr,
    path: &str,
) -> Result<HttpReply, HttpExchangeError> {
    let token = request(
        ns,
        endpoint,
        "PUT",
        "/latest/api/token",
        &[("x-aws-ec2-metadata-token-ttl-seconds", "60")],
    )?;
    if token.status != 200 {
        return Ok(token);
    }
    request(
        ns,
        endpoint,
        "GET",
        path,
        &[("x-aws-ec2-metadata-token", token.body.trim())],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").as_deref(),
            Some("hello world")
        );
        assert_eq!(dechunk("zz\r\n"), None);
    }
}
