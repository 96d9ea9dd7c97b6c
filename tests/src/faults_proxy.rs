//! A fault-injecting HTTP/1.1 proxy for the reliability campaigns: it sits between ipamd and
//! one of its servers (moto as EC2, the IMDS emulator) inside a namespace the test created, and
//! answers chosen requests with EC2's throttling error, a 500, a slow answer (forwarded, then
//! held beyond the SDK's timeout) or a reset connection, instead of forwarding them.
//!
//! Rules match EC2 actions (`Action=...` of the query API's form body) or path prefixes, and
//! fire a given number of times or until removed; [`FaultProxy::set_down`] resets every
//! request (the server "unreachable"). The proxy keeps its own counters (requests per action,
//! with their times, and faults injected per kind), which is what the tests hold ipamd's call
//! rate and metrics against.
//!
//! It runs on its own thread that entered the namespace first, so its listening socket and its
//! connections to the upstream all live in that namespace; nothing touches the root namespace.
//! Requests are framed by `Content-Length` (the AWS SDK's EC2 and IMDS calls never send chunked
//! bodies; one is refused with 501); responses by `Content-Length`, chunked encoding, or the
//! upstream closing the connection.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use test_support::netns::Netns;

/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest body accepted either way.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// How long a connection to the upstream may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the upstream may take to answer a forwarded request.
const UPSTREAM_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The namespace could not be entered.
    #[error("cannot enter namespace {netns}: {reason}")]
    Netns {
        /// The namespace.
        netns: String,
        /// Why.
        reason: String,
    },
    /// The listening socket could not be made.
    #[error("cannot listen on {addr} in {netns}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The namespace.
        netns: String,
        /// The OS error.
        source: io::Error,
    },
    /// The proxy thread could not start.
    #[error("cannot start the proxy thread: {0}")]
    Thread(String),
}

/// What to do instead of (or on top of) forwarding a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 503 with EC2's `RequestLimitExceeded` error; not forwarded (EC2 did not run it).
    Throttle,
    /// HTTP 500 with EC2's `InternalError`; not forwarded.
    InternalError,
    /// Forwarded at once (the upstream runs it), but the answer is held this long: beyond the
    /// client's timeout the client gives up on a call that did happen.
    SlowAnswer(Duration),
    /// The connection is reset (RST) without forwarding.
    Reset,
}

impl Fault {
    /// A short name for counters and messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Throttle => "throttle",
            Self::InternalError => "internal_error",
            Self::SlowAnswer(_) => "slow_answer",
            Self::Reset => "reset",
        }
    }
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Every request.
    Any,
    /// EC2 query API requests of this action (`Action=AttachNetworkInterface`).
    Action(String),
    /// Requests whose path starts with this (`/latest/meta-data/`).
    PathPrefix(String),
}

/// A fault and the requests it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// Which requests.
    pub matcher: Match,
    /// What happens to them.
    pub fault: Fault,
    /// How many more times it fires (`None`: until removed).
    pub remaining: Option<u64>,
}

impl FaultRule {
    /// `fault` for the next `times` requests of EC2 action `action`.
    pub fn action(action: &str, fault: Fault, times: u64) -> Self {
        Self {
            matcher: Match::Action(action.to_owned()),
            fault,
            remaining: Some(times),
        }
    }

    /// `fault` for the next `times` requests, whatever they are.
    pub fn any(fault: Fault, times: u64) -> Self {
        Self {
            matcher: Match::Any,
            fault,
            remaining: Some(times),
        }
    }

    /// `fault` for every request from now until the rules are cleared.
    pub fn always(fault: Fault) -> Self {
        Self {
            matcher: Match::Any,
            fault,
            remaining: None,
        }
    }
}

/// What the proxy saw and did.
#[derive(Debug, Clone, Default)]
pub struct ProxyStats {
    /// Requests by label (the EC2 action, else `METHOD path`).
    pub requests: BTreeMap<String, u64>,
    /// Every request's arrival time and label, in order.
    pub request_times: Vec<(Instant, String)>,
    /// Faults injected by kind ([`Fault::kind`]).
    pub faults: BTreeMap<String, u64>,
    /// Faults injected by (label, kind).
    pub faults_by_label: BTreeMap<(String, String), u64>,
    /// Requests forwarded to the upstream and answered.
    pub forwarded: u64,
    /// Forwarded requests the upstream did not answer (connect or read failure).
    pub upstream_errors: u64,
}

impl ProxyStats {
    /// Requests that arrived in `[from, to)`.
    pub fn requests_between(&self, from: Instant, to: Instant) -> usize {
        self.request_times
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .count()
    }

    /// The most requests that arrived within any `window` (a sliding window over arrivals).
    pub fn max_requests_in(&self, window: Duration) -> usize {
        let times: Vec<Instant> = self.request_times.iter().map(|(t, _)| *t).collect();
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end].duration_since(times[start]) >= window {
                start += 1;
            }
            best = best.max(end + 1 - start);
        }
        best
    }

    /// All faults injected.
    pub fn total_faults(&self) -> u64 {
        self.faults.values().sum()
    }

    /// Requests with `label`.
    pub fn count(&self, label: &str) -> u64 {
        self.requests.get(label).copied().unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct Shared {
    rules: Vec<FaultRule>,
    down: bool,
    stats: ProxyStats,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running proxy; stopped (its connections cut) on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on `listen` (port 0: any) inside `netns` and forwards to `upstream`, reached
    /// from the same namespace.
    pub fn start(
        netns: &Netns,
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<Self, ProxyError> {
        let ns_name = netns.name().to_owned();
        let file = File::open(netns.path()).map_err(|e| ProxyError::Netns {
            netns: ns_name.clone(),
            reason: e.to_string(),
        })?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, ProxyError>>();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", listen.port()))
            .spawn(move || {
                // This thread never leaves the namespace: every socket it makes lives there.
                if let Err(e) = setns(&file, CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(ProxyError::Netns {
                        netns: ns_name,
                        reason: e.to_string(),
                    }));
                    return;
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ProxyError::Thread(e.to_string())));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::bind(listen).await {
                        Ok(l) => l,
                        Err(source) => {
                            let _ = ready_tx.send(Err(ProxyError::Listen {
                                addr: listen,
                                netns: ns_name,
                                source,
                            }));
                            return;
                        }
                    };
                    let addr = listener.local_addr().unwrap_or(listen);
                    let _ = ready_tx.send(Ok(addr));
                    serve(listener, upstream, thread_shared, stop_rx).await;
                });
            })
            .map_err(|e| ProxyError::Thread(e.to_string()))?;
        let addr = ready_rx
            .recv()
            .map_err(|_| ProxyError::Thread("the proxy thread ended before listening".into()))??;
        Ok(Self {
            addr,
            upstream,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Adds a rule (rules are tried in the order added; the first that matches fires).
    pub fn add_rule(&self, rule: FaultRule) {
        lock(&self.shared).rules.push(rule);
    }

    /// Removes every rule (requests are forwarded again).
    pub fn clear_rules(&self) {
        lock(&self.shared).rules.clear();
    }

    /// `true`: every request's connection is reset (the server is unreachable); `false`:
    /// rules and forwarding apply again.
    pub fn set_down(&self, down: bool) {
        lock(&self.shared).down = down;
    }

    /// A copy of the counters.
    pub fn stats(&self) -> ProxyStats {
        lock(&self.shared).stats.clone()
    }

    /// Stops listening and cuts every connection.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the fault proxy thread panicked");
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, upstream, &shared).await {
                            tracing::debug!(error = %e, "fault proxy connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fault proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One request as read from a client or one response from the upstream.
struct Message {
    /// Head and body, verbatim.
    raw: Vec<u8>,
    /// The first line.
    start_line: String,
    /// The body.
    body_range: std::ops::Range<usize>,
    /// The peer asked for the connection to be closed after it.
    close: bool,
}

/// Reads until the end of a head (`\r\n\r\n`); `Ok(None)` on EOF before any byte.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            return Ok(Some(pos + 4));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP head larger than 64 KiB",
            ));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside an HTTP head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Head {
    start_line: String,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn parse_head(head: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(head)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "HTTP head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let start_line = lines.next().unwrap_or_default().to_owned();
    let mut parsed = Head {
        start_line,
        content_length: None,
        chunked: false,
        close: false,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                parsed.content_length = Some(value.parse().map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad Content-Length {value:?}"),
                    )
                })?);
            }
            "transfer-encoding" => {
                parsed.chunked = value.to_ascii_lowercase().contains("chunked");
            }
            "connection" => parsed.close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    Ok(parsed)
}

/// Makes sure `buf` holds at least `len` bytes.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    while buf.len() < len {
        let mut chunk = [0u8; 16384];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside an HTTP body",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// Reads one request from a client; `Ok(None)` when the client closed the connection.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Message>> {
    let Some(head_len) = read_head(stream, buf).await? else {
        return Ok(None);
    };
    let head = parse_head(&buf[..head_len])?;
    if head.chunked {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "chunked request bodies are not supported",
        ));
    }
    let body_len = head.content_length.unwrap_or(0);
    if body_len > MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request body too large",
        ));
    }
    fill(stream, buf, head_len + body_len).await?;
    let raw: Vec<u8> = buf.drain(..head_len + body_len).collect();
    Ok(Some(Message {
        raw,
        start_line: head.start_line,
        body_range: head_len..head_len + body_len,
        close: head.close,
    }))
}

/// Reads one response from the upstream (which is then closed).
async fn read_response(stream: &mut TcpStream, method: &str) -> io::Result<Message> {
    let mut buf = Vec::new();
    let head_len = read_head(stream, &mut buf).await?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the upstream closed without answering",
        )
    })?;
    let head = parse_head(&buf[..head_len])?;
    let status: u16 = head
        .start_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let bodiless = method == "HEAD" || (100..200).contains(&status) || matches!(status, 204 | 304);
    let mut close = head.close;
    if bodiless {
        buf.truncate(head_len);
    } else if let Some(len) = head.content_length {
        if len > MAX_BODY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response body too large",
            ));
        }
        fill(stream, &mut buf, head_len + len).await?;
        buf.truncate(head_len + len);
    } else if head.chunked {
        let mut pos = head_len;
        loop {
            let line_end = loop {
                if let Some(i) = find(&buf[pos..], b"\r\n") {
                    break pos + i;
                }
                let want = buf.len() + 1;
                fill(stream, &mut buf, want).await?;
            };
            let size_text = std::str::from_utf8(&buf[pos..line_end]).unwrap_or("");
            let size_hex = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {size_hex:?}"),
                )
            })?;
            pos = line_end + 2;
            if size == 0 {
                // Trailers, then an empty line.
                loop {
                    let end = loop {
                        if let Some(i) = find(&buf[pos..], b"\r\n") {
                            break pos + i;
                        }
                        let want = buf.len() + 1;
                        fill(stream, &mut buf, want).await?;
                    };
                    let empty = end == pos;
                    pos = end + 2;
                    if empty {
                        break;
                    }
                }
                buf.truncate(pos);
                break;
            }
            if pos + size > MAX_BODY {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response body too large",
                ));
            }
            fill(stream, &mut buf, pos + size + 2).await?;
            pos += size + 2;
        }
    } else {
        // Delimited by the upstream closing: so must the client connection be.
        stream.read_to_end(&mut buf).await?;
        close = true;
    }
    let len = buf.len();
    Ok(Message {
        raw: buf,
        start_line: head.start_line,
        body_range: head_len.min(len)..len,
        close,
    })
}

/// The EC2 action of a query API request (`Action=...` in the form body or the query string),
/// else `METHOD path`.
fn label_of(request: &Message) -> String {
    let body = &request.raw[request.body_range.clone()];
    let mut parts = request.start_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let from = |text: &str| {
        text.split('&')
            .find_map(|kv| kv.strip_prefix("Action="))
            .map(str::to_owned)
    };
    from(&String::from_utf8_lossy(body))
        .or_else(|| from(query))
        .unwrap_or_else(|| {
            let path = target.split('?').next().unwrap_or("");
            format!("{method} {path}")
        })
}

fn path_of(request: &Message) -> &str {
    request
        .start_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('?')
        .next()
        .unwrap_or("")
}

/// Picks the fault for a request (consuming one firing of its rule) and counts it.
fn decide(shared: &Mutex<Shared>, label: &str, path: &str) -> Option<Fault> {
    let mut s = lock(shared);
    *s.stats.requests.entry(label.to_owned()).or_default() += 1;
    s.stats
        .request_times
        .push((Instant::now(), label.to_owned()));
    let fault = if s.down {
        Some(Fault::Reset)
    } else {
        let rule = s.rules.iter_mut().find(|r| {
            r.remaining != Some(0)
                && match &r.matcher {
                    Match::Any => true,
                    Match::Action(a) => a == label,
                    Match::PathPrefix(p) => path.starts_with(p.as_str()),
                }
        });
        rule.map(|r| {
            if let Some(n) = r.remaining.as_mut() {
                *n -= 1;
            }
            r.fault
        })
    };
    if let Some(f) = fault {
        *s.stats.faults.entry(f.kind().to_owned()).or_default() += 1;
        *s.stats
            .faults_by_label
            .entry((label.to_owned(), f.kind().to_owned()))
            .or_default() += 1;
    }
    fault
}

fn ec2_error(status: &str, code: &str, message: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>vcni-fault-{}</RequestID></Response>",
        rand::random::<u32>()
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Closes `stream` with an RST instead of a FIN (SO_LINGER 0).
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).unwrap_or(8);
    // SAFETY: the fd is open (owned by `stream`, dropped right after), and `linger` is a valid
    // `struct linger` of the size passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            len,
        );
    }
    drop(stream);
}

async fn forward(upstream: SocketAddr, request: &Message) -> io::Result<Message> {
    let method = request
        .start_line
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    let mut up = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting to the upstream"))??;
    up.write_all(&request.raw).await?;
    tokio::time::timeout(UPSTREAM_ANSWER_TIMEOUT, read_response(&mut up, &method))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "waiting for the upstream"))?
}

async fn connection(
    mut stream: TcpStream,
    upstream: SocketAddr,
    shared: &Mutex<Shared>,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                let body = e.to_string();
                let reply = format!(
                    "HTTP/1.1 501 Not Implemented\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(reply.as_bytes()).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let label = label_of(&request);
        let fault = decide(shared, &label, path_of(&request));
        let (reply, close) = match fault {
            Some(Fault::Reset) => {
                reset(stream);
                return Ok(());
            }
            Some(Fault::Throttle) => (
                ec2_error(
                    "503 Service Unavailable",
                    "RequestLimitExceeded",
                    "Request limit exceeded.",
                ),
                request.close,
            ),
            Some(Fault::InternalError) => (
                ec2_error(
                    "500 Internal Server Error",
                    "InternalError",
                    "An internal error has occurred.",
                ),
                request.close,
            ),
            Some(Fault::SlowAnswer(_)) | None => {
                let answer = forward(upstream, &request).await;
                let answer = match answer {
                    Ok(a) => {
                        lock(shared).stats.forwarded += 1;
                        a
                    }
                    Err(e) => {
                        lock(shared).stats.upstream_errors += 1;
                        tracing::debug!(error = %e, %label, "fault proxy: upstream failed");
                        reset(stream);
                        return Err(e);
                    }
                };
                if let Some(Fault::SlowAnswer(hold)) = fault {
                    tokio::time::sleep(hold).await;
                }
                (answer.raw, request.close || answer.close)
            }
        };
        stream.write_all(&reply).await?;
        if close {
            let _ = stream.shutdown().await;
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(raw: &str) -> Message {
        let head_len = find(raw.as_bytes(), b"\r\n\r\n").unwrap() + 4;
        Message {
            raw: raw.as_bytes().to_vec(),
            start_line: raw.lines().next().unwrap().to_owned(),
            body_range: head_len..raw.len(),
            close: false,
        }
    }

    #[test]
    fn labels_are_ec2_actions_or_method_and_path() {
        let m = message(
            "POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\nAction=AttachNetworkInterface&Version=1",
        );
        assert_eq!(label_of(&m), "AttachNetworkInterface");
        let m = message("GET /latest/meta-data/mac?x=1 HTTP/1.1\r\n\r\n");
        assert_eq!(label_of(&m), "GET /latest/meta-data/mac");
        assert_eq!(path_of(&m), "/latest/meta-data/mac");
        let m = message("GET /?Action=DescribeInstances&Version=2016 HTTP/1.1\r\n\r\n");
        assert_eq!(label_of(&m), "DescribeInstances");
    }

    #[test]
    fn rules_fire_in_order_and_run_out() {
        let shared = Mutex::new(Shared::default());
        lock(&shared)
            .rules
            .push(FaultRule::action("CreateTags", Fault::Throttle, 2));
        lock(&shared)
            .rules
            .push(FaultRule::any(Fault::InternalError, 1));
        assert_eq!(decide(&shared, "CreateTags", "/"), Some(Fault::Throttle));
        assert_eq!(
            decide(&shared, "DescribeInstances", "/"),
            Some(Fault::InternalError)
        );
        assert_eq!(decide(&shared, "CreateTags", "/"), Some(Fault::Throttle));
        assert_eq!(decide(&shared, "CreateTags", "/"), None);
        lock(&shared).down = true;
        assert_eq!(decide(&shared, "CreateTags", "/"), Some(Fault::Reset));
        let s = lock(&shared).stats.clone();
        assert_eq!(s.count("CreateTags"), 4);
        assert_eq!(s.faults["throttle"], 2);
        assert_eq!(s.total_faults(), 4);
        assert_eq!(s.max_requests_in(Duration::from_secs(60)), 5);
    }

    #[test]
    fn ec2_errors_carry_the_code() {
        let reply = String::from_utf8(ec2_error(
            "503 Service Unavailable",
            "RequestLimitExceeded",
            "x",
        ))
        .unwrap();
        assert!(reply.starts_with("HTTP/1.1 503"));
        assert!(reply.contains("<Code>RequestLimitExceeded</Code>"));
        let head = parse_head(reply.split("\r\n\r\n").next().unwrap().as_bytes()).unwrap();
        let body_len = reply.split("\r\n\r\n").nth(1).unwrap().len();
        assert_eq!(head.content_length, Some(body_len));
    }
}
