//! Atomic file replacement: temp file in the same directory, write, fsync, rename over the
//! target, fsync the directory. A reader (or a crash) sees the old content or the new one, never
//! a torn file (the reference's checkpoint writer skips the directory fsync; youki's state file
//! shows why in-place rewrites are not enough).
//!
//! [`atomic_publish`] is the variant for a file that another program watches with inotify
//! (the conflist in the CNI conf dir, watched by the container runtime): the file is written in
//! a hidden subdirectory, so the watched directory sees no write to any file but the finished
//! one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `contents` atomically, creating the file with `mode` (the umask does not
/// apply: permissions are set explicitly).
///
/// # Errors
/// The underlying I/O error; the temp file is removed on failure.
pub fn atomic_write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let (dir, file_name) = dir_and_name(path)?;
    let tmp = dir.join(temp_name(file_name));
    let result = write_and_rename(&tmp, path, contents, mode);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(&dir)
}

/// Replaces `path` with `contents` atomically, like [`atomic_write`], for a file in a directory
/// that another program watches (inotify on the directory, not on its subdirectories): the
/// content is written and fsynced in a fresh hidden subdirectory `.<name>.tmp-<pid>-<n>/`, then
/// renamed over `path` (same filesystem), and the subdirectory is removed.
///
/// Why: containerd's CRI (1.6) reloads its CNI configuration on every write, rename or
/// remove event in its conf dir and ignores create events. With the temp file in the watched
/// directory, the temp file's first write makes it reload while the conflist does not exist
/// yet, which it logs as `failed to reload cni configuration after receiving fs change
/// event(WRITE ".10-aws.conflist.tmp-…")` and reports the network as not ready until the next
/// event. Here the watched directory sees: the subdirectory created (ignored), the finished file
/// appearing under its final name (ignored by containerd, a complete file for watchers that do
/// read on create), the subdirectory removed: containerd's reload then finds the complete file.
/// Directories are never candidates for libcni (`ConfFiles` skips them). Subdirectories left by
/// writers that died are removed after the rename, when a reload they trigger finds the file.
///
/// # Errors
/// The underlying I/O error; the subdirectory is removed on failure.
pub fn atomic_publish(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let (dir, file_name) = dir_and_name(path)?;
    let staging = dir.join(temp_name(file_name));
    fs::create_dir(&staging)?;
    let result = write_and_rename(&staging.join(file_name), path, contents, mode);
    // The subdirectory's removal is the event containerd reloads on: it must come after the
    // rename, and it is what makes a failed write leave nothing behind.
    let removed = fs::remove_dir_all(&staging);
    result?;
    removed?;
    remove_stale_temp_files(path);
    sync_dir(&dir)
}

/// The directory `path` is in and its file name.
fn dir_and_name(path: &Path) -> io::Result<(PathBuf, &std::ffi::OsStr)> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Ok((parent_dir(path), file_name))
}

/// `.<name>.tmp-<pid>-<n>`: hidden, unique per write, and recognisable by
/// [`remove_stale_temp_files`].
fn temp_name(file_name: &std::ffi::OsStr) -> String {
    format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn write_and_rename(tmp: &Path, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)
}

/// Removes the temp files [`atomic_write`] and the staging subdirectories [`atomic_publish`]
/// leave behind when the process dies between creating one and renaming it over `path`
/// (`.<name>.tmp-<pid>-<n>`), except those of processes that still run. Returns the names
/// removed; errors are skipped (a leftover is harmless).
pub fn remove_stale_temp_files(path: &Path) -> Vec<String> {
    let dir = parent_dir(path);
    let Some(name) = path.file_name() else {
        return Vec::new();
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| {
            p == std::process::id() || Path::new("/proc").join(p.to_string()).exists()
        });
        if alive {
            continue;
        }
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let gone = if is_dir {
            fs::remove_dir_all(entry.path())
        } else {
            fs::remove_file(entry.path())
        };
        if gone.is_ok() {
            removed.push(file);
        }
    }
    removed
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsyncs a directory so a rename inside it is durable.
///
/// # Errors
/// Opening or syncing the directory failed.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {

    use super::*;

    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    }

    #[test]
    fn both_writers_replace_content_and_leave_only_the_file() {
        type Writer = fn(&Path, &[u8], u32) -> io::Result<()>;
        let writers: [(Writer, &str); 2] = [
            (atomic_write, "state.json"),
            (atomic_publish, "10-aws.conflist"),
        ];
        for (write, name) in writers {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(name);
            write(&path, b"one", 0o644).unwrap();
            write(&path, b"two", 0o600).unwrap();
            assert_eq!(fs::read(&path).unwrap(), b"two", "{name}");
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
            assert_eq!(names(dir.path()), vec![std::ffi::OsString::from(name)]);
        }
    }

    #[test]
    fn stale_temp_files_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        atomic_write(&path, b"{}", 0o600).unwrap();
        // pid 0x7fffffff never exists; our own pid does.
        let dead = dir.path().join(".ipam.json.tmp-2147483647-3");
        let ours = dir
            .path()
            .join(format!(".ipam.json.tmp-{}-9", std::process::id()));
        let other = dir.path().join(".other.json.tmp-2147483647-3");
        for f in [&dead, &ours, &other] {
            fs::write(f, b"{\"torn").unwrap();
        }
        let removed = remove_stale_temp_files(&path);
        assert_eq!(removed, vec![".ipam.json.tmp-2147483647-3".to_owned()]);
        assert!(!dead.exists() && ours.exists() && other.exists());
        assert_eq!(fs::read(&path).unwrap(), b"{}");
    }

    #[test]
    fn publish_removes_staging_directories_of_dead_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("10-aws.conflist");
        let dead = dir.path().join(".10-aws.conflist.tmp-2147483647-0");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join("10-aws.conflist"), b"{\"torn").unwrap();
        let neighbour = dir.path().join("05-other.conflist");
        fs::write(&neighbour, b"{}").unwrap();
        atomic_publish(&path, b"{}", 0o644).unwrap();
        assert!(!dead.exists());
        assert!(neighbour.exists());
        assert_eq!(fs::read(&path).unwrap(), b"{}");
    }

    #[test]
    fn publish_failure_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails.
        let path = dir.path().join("10-aws.conflist");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep"), b"x").unwrap();
        assert!(atomic_publish(&path, b"{}", 0o644).is_err());
        assert_eq!(
            names(dir.path()),
            vec![std::ffi::OsString::from("10-aws.conflist")]
        );
    }

    #[test]
    fn failure_keeps_old_content_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("state.json");
        assert!(atomic_write(&path, b"x", 0o644).is_err());
        assert!(!dir.path().join("missing-dir").exists());
    }
}
