//! `imds-emulator --listen 127.0.0.1:PORT --node FILE`: serves EC2 instance metadata (IMDSv2)
//! for the node described by FILE (format in docs/contracts.md), re-reading it when it changes.
//! Prints `listening on http://ADDR` on stdout once bound (useful with port 0); logs go to
//! stderr (`RUST_LOG`, default `info`). Stops on SIGINT/SIGTERM. To serve a simulated node, run
//! it inside the node's namespace: `ip netns exec <node> imds-emulator ...`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use test_support::imds;
use test_support::metadata::FileSource;

const USAGE: &str = "usage: imds-emulator --listen ADDR:PORT --node FILE";

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    node: PathBuf,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Option<Args>> {
    let mut listen = None;
    let mut node = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> anyhow::Result<String> {
            match inline.clone().or_else(|| it.next()) {
                Some(v) => Ok(v),
                None => bail!("{name} needs a value\n{USAGE}"),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                let v = value("--listen")?;
                listen = Some(
                    v.parse::<SocketAddr>()
                        .with_context(|| format!("--listen {v:?} is not an IP:PORT address"))?,
                );
            }
            "--node" => node = Some(PathBuf::from(value("--node")?)),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let Some(listen) = listen else {
        bail!("--listen is required\n{USAGE}")
    };
    let Some(node) = node else {
        bail!("--node is required\n{USAGE}")
    };
    Ok(Some(Args { listen, node }))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop the emulator with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let Some(args) = parse_args(std::env::args().skip(1))? else {
        writeln!(std::io::stdout(), "{USAGE}")?;
        return Ok(());
    };
    let source = FileSource::new(&args.node)
        .with_context(|| format!("cannot serve node file {}", args.node.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        writeln!(std::io::stdout(), "listening on http://{addr}")?;
        std::io::stdout().flush()?;
        tracing::info!(%addr, node = %args.node.display(), "IMDS emulator serving");
        imds::serve_until(listener, Arc::new(source), shutdown_signal())
            .await
            .context("IMDS emulator failed")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> anyhow::Result<Option<Args>> {
        parse_args(v.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_both_flag_styles() {
        let a = args(&["--listen", "127.0.0.1:8080", "--node=/tmp/n.json"])
            .unwrap()
            .unwrap();
        assert_eq!(a.listen.port(), 8080);
        assert_eq!(a.node, PathBuf::from("/tmp/n.json"));
        assert!(args(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn errors_name_the_argument() {
        let e = args(&["--listen", "localhost"]).unwrap_err().to_string();
        assert!(e.contains("--listen"), "{e}");
        let e = args(&["--listen", "127.0.0.1:1"]).unwrap_err().to_string();
        assert!(e.contains("--node is required"), "{e}");
        let e = args(&["--bogus"]).unwrap_err().to_string();
        assert!(e.contains("--bogus"), "{e}");
    }
}
