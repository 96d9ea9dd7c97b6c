//! The sandbox ("pause") image without a registry: an OCI image layout archive written here,
//! whose single layer holds Debian's static busybox (`/bin/busybox`), imported into containerd
//! with `ctr images import`. Its entrypoint sleeps, which is all a pod sandbox's container does;
//! the same image runs the tests' workload containers (`busybox nc`, ...).
//!
//! Digests come from `sha256sum` and tar files from GNU tar with fixed owners and times, so the
//! archive is the same on every run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use super::{CriError, io_err};
use test_support::netns::run_checked;
use test_support::prereqs::{self, PrereqError};

/// The image name the sandboxes use (`sandbox_image`), and the workload containers too.
pub const PAUSE_IMAGE: &str = "localhost/vcni-pause:1";

/// The static busybox copied into the image.
const BUSYBOX: &str = "/bin/busybox";

/// A blob written into the layout: its digest (`sha256:…`) and size.
struct Blob {
    digest: String,
    size: u64,
}

/// Writes `bytes` (or the file at `from`) as a blob of the layout in `oci`.
fn put_blob(oci: &Path, from: &Path) -> Result<Blob, CriError> {
    let out = run_checked(Command::new("sha256sum").arg(from))?;
    let hex = out
        .split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .ok_or_else(|| CriError::Image(format!("sha256sum printed {out:?}")))?
        .to_owned();
    let size = fs::metadata(from)
        .map_err(io_err(format!("cannot stat {}", from.display())))?
        .len();
    let dir = oci.join("blobs/sha256");
    fs::create_dir_all(&dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    fs::copy(from, dir.join(&hex)).map_err(io_err(format!("cannot copy {}", from.display())))?;
    Ok(Blob {
        digest: format!("sha256:{hex}"),
        size,
    })
}

fn put_json(
    oci: &Path,
    work: &Path,
    name: &str,
    value: &serde_json::Value,
) -> Result<Blob, CriError> {
    let path = work.join(name);
    fs::write(&path, value.to_string())
        .map_err(io_err(format!("cannot write {}", path.display())))?;
    put_blob(oci, &path)
}

/// Tar with fixed owner, group and times, entries sorted: the same bytes on every run.
fn reproducible_tar(from: &Path, to: &Path, entries: &[&str]) -> Result<(), CriError> {
    run_checked(
        Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
            ])
            .arg("-C")
            .arg(from)
            .arg("-cf")
            .arg(to)
            .args(entries),
    )?;
    Ok(())
}

/// Writes the image as an OCI archive in `work` (a scratch directory) and returns its path.
pub(crate) fn write_pause_archive(work: &Path) -> Result<PathBuf, CriError> {
    prereqs::require_tool("tar", "apt-get install tar")?;
    prereqs::require_tool("sha256sum", "apt-get install coreutils")?;
    let busybox = fs::canonicalize(BUSYBOX).map_err(|_| PrereqError::MissingTool {
        tool: BUSYBOX.into(),
        hint: "apt-get install busybox-static".into(),
    })?;
    let rootfs = work.join("rootfs");
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin).map_err(io_err(format!("cannot create {}", bin.display())))?;
    fs::copy(&busybox, bin.join("busybox"))
        .map_err(io_err(format!("cannot copy {}", busybox.display())))?;
    let layer_tar = work.join("layer.tar");
    reproducible_tar(&rootfs, &layer_tar, &["."])?;

    let oci = work.join("oci");
    let layer = put_blob(&oci, &layer_tar)?;
    let config = put_json(
        &oci,
        work,
        "config.json",
        &json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                // A sandbox container only holds the pod's namespaces; SIGKILL stops it.
                "Entrypoint": ["/bin/busybox", "sleep", "2147483647"],
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        }),
    )?;
    let manifest = put_json(
        &oci,
        work,
        "manifest.json",
        &json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.digest,
                "size": config.size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer.digest,
                "size": layer.size,
            }],
        }),
    )?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.digest,
            "size": manifest.size,
            "platform": {"architecture": "amd64", "os": "linux"},
            // containerd's importer names the image from this annotation.
            "annotations": {
                "io.containerd.image.name": PAUSE_IMAGE,
                "org.opencontainers.image.ref.name": "1",
            },
        }],
    });
    fs::write(oci.join("index.json"), index.to_string())
        .map_err(io_err("cannot write index.json"))?;
    fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io_err("cannot write oci-layout"))?;
    let archive = work.join("pause.oci.tar");
    reproducible_tar(&oci, &archive, &["oci-layout", "index.json", "blobs"])?;
    Ok(archive)
}
