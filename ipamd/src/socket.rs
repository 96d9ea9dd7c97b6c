//! The Unix sockets ipamd listens on: the gRPC socket of the plugin ([`crate::server`]) and
//! the HTTP endpoints given a `unix:` address ([`crate::http`]). The socket's directory is
//! created (0755), a stale socket is removed (never a file of another kind), and the new socket
//! is made 0660.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::net::UnixListener;

/// A socket that could not be set up.
#[derive(Debug, Error)]
pub enum SocketError {
    /// The socket's directory could not be created.
    #[error("cannot create socket directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Something that is not a socket sits at the socket path.
    #[error("{path} exists and is not a Unix socket; refusing to remove it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The stale socket could not be removed.
    #[error("cannot remove stale socket {path}: {source}")]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Binding failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Setting the socket's mode failed.
    #[error("cannot set mode 0660 on {path}: {source}")]
    Chmod {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Creates the socket's directory (0755), removes a stale socket, binds, and sets mode 0660.
///
/// # Errors
/// Any of those steps failed (the message names the path).
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let dir = crate::fsutil::parent_dir(path);
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|source| SocketError::CreateDir {
                path: dir.clone(),
                source,
            })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(SocketError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        SocketError::Chmod {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}
