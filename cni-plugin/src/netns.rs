//! Network namespaces by file descriptor: opening and identifying them, and a guard that moves
//! the current thread into one and always moves it back.
//!
//! `setns(2)` changes the calling *thread's* namespace, so everything here is meant for the
//! plugin's single-threaded runtime (or a dedicated thread in tests).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

/// Errors about namespaces, each naming the path.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path does not exist.
    #[error("{path} does not exist")]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// The path exists but is not a network namespace.
    #[error("{path} is not a network namespace ({reason})")]
    NotANetns {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// Opening or inspecting the path failed.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `setns` failed.
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: nix::Error,
    },
}

impl NetnsError {
    /// Whether the file is a namespace of another kind (`setns` said `EINVAL`).
    pub fn is_wrong_kind(&self) -> bool {
        matches!(
            self,
            Self::Enter {
                source: nix::Error::EINVAL,
                ..
            }
        )
    }
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens `path` and checks that it is a namespace file (nsfs). That it is a *network*
    /// namespace is verified by [`Netns::enter`] (`setns` refuses other kinds with `EINVAL`),
    /// which every user of a pod namespace does before talking to ipamd.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => NetnsError::NotFound { path: path.clone() },
            _ => NetnsError::Open {
                path: path.clone(),
                source,
            },
        })?;
        let fs = fstatfs(file.as_fd()).map_err(|e| NetnsError::Open {
            path: path.clone(),
            source: e.into(),
        })?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(NetnsError::NotANetns {
                path,
                reason: "not on nsfs".into(),
            });
        }
        Ok(Self { file, path })
    }

    /// The network namespace of the calling thread.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open namespace file (for `IFLA_NET_NS_FD`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether both handles refer to the same namespace (same nsfs inode).
    pub fn same_as(&self, other: &Netns) -> Result<bool, NetnsError> {
        let meta = |n: &Netns| {
            n.file.metadata().map_err(|source| NetnsError::Open {
                path: n.path.clone(),
                source,
            })
        };
        let (a, b) = (meta(self)?, meta(other)?);
        Ok(a.dev() == b.dev() && a.ino() == b.ino())
    }

    /// Moves the calling thread into this namespace until the guard is dropped.
    pub fn enter(&self) -> Result<NetnsGuard, NetnsError> {
        let home = Netns::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        Ok(NetnsGuard { home })
    }
}

/// Keeps the calling thread in another network namespace; dropping it returns the thread to
/// where it was, on every path including `?` and panics.
#[derive(Debug)]
#[must_use = "the thread returns to its namespace when the guard is dropped"]
pub struct NetnsGuard {
    home: Netns,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.home.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A thread stuck in the pod's namespace would program the pod where the host was
            // meant; no caller can recover from that, so stop the process.
            tracing::error!(error = %e, "cannot return to the original network namespace");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_namespace_opens_and_equals_itself() {
        let a = Netns::current().unwrap_or_else(|e| panic!("{e}"));
        let b = Netns::open("/proc/self/ns/net").unwrap_or_else(|e| panic!("{e}"));
        assert!(a.same_as(&b).unwrap_or(false));
    }

    #[test]
    fn missing_path_and_wrong_kinds_are_told_apart() {
        assert!(matches!(
            Netns::open("/nonexistent/netns/x"),
            Err(NetnsError::NotFound { .. })
        ));
        assert!(matches!(
            Netns::open("/proc/self/status"),
            Err(NetnsError::NotANetns { .. })
        ));
        let mnt = Netns::open("/proc/self/ns/mnt").unwrap_or_else(|e| panic!("{e}"));
        match mnt.enter() {
            Err(e) => assert!(e.is_wrong_kind(), "{e}"),
            Ok(_) => panic!("entered a mount namespace as a network namespace"),
        }
    }
}
