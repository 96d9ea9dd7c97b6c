//! The allocation checkpoint: the reference's `vpc-cni-ipam/1` JSON at
//! `AWS_VPC_K8S_CNI_BACKING_STORE`, written atomically on every change, so a node switched from
//! the Go ipamd (or restarted) keeps its pods' addresses.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::datastore::{Assignment, IpamKey, PodMetadata};
use crate::fsutil;

/// The only format version there is.
pub const CHECKPOINT_VERSION: &str = "vpc-cni-ipam/1";

/// Checkpoint failures; each names the file.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// Reading failed.
    #[error("cannot read checkpoint {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing failed.
    #[error("cannot write checkpoint {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The content is not a checkpoint (torn, truncated, garbage).
    #[error("checkpoint {path} is not valid checkpoint JSON: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decode error.
        source: serde_json::Error,
    },
    /// A version this build does not know.
    #[error(
        "checkpoint {path} has version {found:?}; this ipamd reads only {CHECKPOINT_VERSION:?}"
    )]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: String,
    },
}

/// Pod metadata as the reference stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// `k8sPodNamespace`.
    #[serde(
        rename = "k8sPodNamespace",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub pod_namespace: String,
    /// `k8sPodName`.
    #[serde(
        rename = "k8sPodName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub pod_name: String,
    /// `interfacesCount`.
    #[serde(rename = "interfacesCount", default, skip_serializing_if = "is_zero")]
    pub interfaces_count: u32,
}

// serde's skip_serializing_if passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointEntry {
    /// `networkName`.
    #[serde(rename = "networkName", default)]
    pub network_name: String,
    /// `containerID`.
    #[serde(rename = "containerID", default)]
    pub container_id: String,
    /// `ifName`.
    #[serde(rename = "ifName", default)]
    pub if_name: String,
    /// `ipv4` (absent for IPv6 allocations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// `ipv6` (absent for IPv4 allocations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    /// `allocationTimestamp`: Unix nanoseconds.
    #[serde(rename = "allocationTimestamp", default)]
    pub allocation_timestamp: i64,
    /// `metadata`.
    #[serde(default)]
    pub metadata: CheckpointMetadata,
}

impl CheckpointEntry {
    /// From a datastore assignment (an IPv6 one is written with `ipv6` and no `ipv4`, as the
    /// reference writes it).
    pub fn from_assignment(a: &Assignment) -> Self {
        Self {
            network_name: a.key.network_name.clone(),
            container_id: a.key.container_id.clone(),
            if_name: a.key.if_name.clone(),
            ipv4: a.ip.is_ipv4().then(|| a.ip.to_string()),
            ipv6: a.ip.is_ipv6().then(|| a.ip.to_string()),
            allocation_timestamp: unix_nanos(a.assigned_at),
            metadata: CheckpointMetadata {
                pod_namespace: a.metadata.namespace.clone(),
                pod_name: a.metadata.name.clone(),
                interfaces_count: a.metadata.interfaces_count,
            },
        }
    }

    /// The key.
    pub fn key(&self) -> IpamKey {
        IpamKey {
            network_name: self.network_name.clone(),
            container_id: self.container_id.clone(),
            if_name: self.if_name.clone(),
        }
    }

    /// The pod metadata.
    pub fn pod_metadata(&self) -> PodMetadata {
        PodMetadata {
            namespace: self.metadata.pod_namespace.clone(),
            name: self.metadata.pod_name.clone(),
            interfaces_count: self.metadata.interfaces_count,
        }
    }

    /// The IPv4 address, if present and well-formed.
    pub fn ipv4_addr(&self) -> Option<Ipv4Addr> {
        self.ipv4.as_deref().and_then(|s| s.parse().ok())
    }

    /// The IPv6 address, if present and well-formed.
    pub fn ipv6_addr(&self) -> Option<Ipv6Addr> {
        self.ipv6.as_deref().and_then(|s| s.parse().ok())
    }

    /// The allocation time.
    pub fn allocated_at(&self) -> SystemTime {
        match u64::try_from(self.allocation_timestamp) {
            Ok(ns) => SystemTime::UNIX_EPOCH + Duration::from_nanos(ns),
            Err(_) => SystemTime::UNIX_EPOCH,
        }
    }
}

/// Unix nanoseconds, saturating (the reference's `time.UnixNano()`).
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointData {
    /// `version`.
    #[serde(default)]
    pub version: String,
    /// `allocations`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub allocations: Vec<CheckpointEntry>,
}

/// Go writes a nil slice as `null`.
fn null_as_empty<'de, D>(d: D) -> Result<Vec<CheckpointEntry>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<Vec<CheckpointEntry>>::deserialize(d)?.unwrap_or_default())
}

impl CheckpointData {
    /// A checkpoint of these assignments.
    pub fn from_assignments(assignments: &[Assignment]) -> Self {
        Self {
            version: CHECKPOINT_VERSION.to_owned(),
            allocations: assignments
                .iter()
                .map(CheckpointEntry::from_assignment)
                .collect(),
        }
    }
}

/// What a checkpoint file starts with, before its first allocation.
const FILE_HEAD: &[u8] = b"{\"version\":\"vpc-cni-ipam/1\",\"allocations\":[";
/// What it ends with, after its last allocation.
const FILE_TAIL: &[u8] = b"]}\n";

/// One allocation as it appears in the file (compact JSON, no separator): what
/// [`encode_file`] joins. Encoding entries one at a time lets a writer keep them and re-encode
/// only what changed.
pub fn encode_entry(a: &Assignment) -> Vec<u8> {
    // Serializing plain strings and integers into a Vec cannot fail.
    serde_json::to_vec(&CheckpointEntry::from_assignment(a)).unwrap_or_default()
}

/// The bytes of a checkpoint file holding `entries` (from [`encode_entry`], in file order):
/// byte for byte what serializing a [`CheckpointData`] of the same allocations gives, plus the
/// trailing newline the Go ipamd writes. `out` is cleared first (a reused buffer).
pub fn encode_file<'a>(entries: impl IntoIterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(FILE_HEAD);
    for (i, e) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.extend_from_slice(FILE_TAIL);
}

impl CheckpointError {
    /// The same error, once more (the underlying I/O and JSON errors are not `Clone`): a write
    /// that covered several changes fails each of their requests with it.
    #[must_use]
    pub fn duplicate(&self) -> Self {
        let io = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match self {
            Self::Read { path, source } => Self::Read {
                path: path.clone(),
                source: io(source),
            },
            Self::Write { path, source } => Self::Write {
                path: path.clone(),
                source: io(source),
            },
            Self::Corrupt { path, source } => Self::Read {
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, source.to_string()),
            },
            Self::UnknownVersion { path, found } => Self::UnknownVersion {
                path: path.clone(),
                found: found.clone(),
            },
        }
    }
}

/// Persists allocations.
pub trait Checkpointer: Send + Sync + std::fmt::Debug {
    /// The stored checkpoint; `None` when there is none yet (a fresh node).
    ///
    /// # Errors
    /// Unreadable, corrupt, or of an unknown version.
    fn load(&self) -> Result<Option<CheckpointData>, CheckpointError>;

    /// Replaces the stored checkpoint.
    ///
    /// # Errors
    /// The write failed; the old checkpoint is intact.
    fn save(&self, data: &CheckpointData) -> Result<(), CheckpointError>;

    /// Replaces the stored checkpoint with `bytes`, a whole file from [`encode_file`]. The
    /// default decodes them and calls [`Checkpointer::save`]; a file-backed checkpointer writes
    /// them as they are.
    ///
    /// # Errors
    /// The bytes are not a checkpoint, or the write failed; the old checkpoint is intact.
    fn save_encoded(&self, bytes: &[u8]) -> Result<(), CheckpointError> {
        let data = decode(Path::new(&self.location()), bytes)?;
        self.save(&data)
    }

    /// Where it is stored (for messages).
    fn location(&self) -> String;
}

/// A JSON file, replaced atomically (temp file, fsync, rename, fsync directory).
#[derive(Debug, Clone)]
pub struct FileCheckpointer {
    path: PathBuf,
}

impl FileCheckpointer {
    /// At `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Decodes and checks a checkpoint's bytes.
///
/// # Errors
/// Corrupt content or an unknown version.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<CheckpointData, CheckpointError> {
    let data: CheckpointData =
        serde_json::from_slice(bytes).map_err(|source| CheckpointError::Corrupt {
            path: path.to_owned(),
            source,
        })?;
    if data.version != CHECKPOINT_VERSION {
        return Err(CheckpointError::UnknownVersion {
            path: path.to_owned(),
            found: data.version,
        });
    }
    Ok(data)
}

impl Checkpointer for FileCheckpointer {
    fn load(&self) -> Result<Option<CheckpointData>, CheckpointError> {
        // A write cut short by a crash (SIGKILL between the temp file and the rename) leaves
        // its temp file; the checkpoint itself is intact (old content), the temp file is junk.
        for stale in fsutil::remove_stale_temp_files(&self.path) {
            tracing::info!(file = %stale, checkpoint = %self.path.display(), "removed the temp file of an interrupted checkpoint write");
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        decode(&self.path, &bytes).map(Some)
    }

    fn save(&self, data: &CheckpointData) -> Result<(), CheckpointError> {
        let mut bytes = serde_json::to_vec(data).map_err(|e| CheckpointError::Write {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        bytes.push(b'\n');
        self.save_encoded(&bytes)
    }

    fn save_encoded(&self, bytes: &[u8]) -> Result<(), CheckpointError> {
        fsutil::atomic_write(&self.path, bytes, 0o600).map_err(|source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// Keeps nothing: a pool whose allocations need not survive the process (unit tests, the
/// datastore benchmark). It loads no checkpoint and takes every write without decoding it,
/// so a write costs what encoding the allocations costs and nothing more.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullCheckpointer;

impl Checkpointer for NullCheckpointer {
    fn load(&self) -> Result<Option<CheckpointData>, CheckpointError> {
        Ok(None)
    }

    fn save(&self, data: &CheckpointData) -> Result<(), CheckpointError> {
        // Taken as if stored, so the optimizer cannot drop the work that produced it.
        std::hint::black_box(data);
        Ok(())
    }

    fn save_encoded(&self, bytes: &[u8]) -> Result<(), CheckpointError> {
        std::hint::black_box(bytes);
        Ok(())
    }

    fn location(&self) -> String {
        "nowhere (not persisted)".to_owned()
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    /// As the Go ipamd writes it (json.Encoder, one line, trailing newline).
    const REFERENCE_SAMPLE: &str = concat!(
        r#"{"version":"vpc-cni-ipam/1","allocations":["#,
        r#"{"networkName":"aws-cni","containerID":"5b4c0f1e2d3a","ifName":"eth0","ipv4":"10.0.2.20","allocationTimestamp":1723456789012345678,"metadata":{"k8sPodNamespace":"default","k8sPodName":"web-0","interfacesCount":1}},"#,
        r#"{"networkName":"_migrated-from-cri","containerID":"legacy","ifName":"unknown","ipv4":"10.0.2.21","allocationTimestamp":0,"metadata":{}},"#,
        r#"{"networkName":"aws-cni","containerID":"v6pod","ifName":"eth0","ipv6":"2600:1f14::5","allocationTimestamp":1,"metadata":{"k8sPodNamespace":"kube-system","k8sPodName":"dns"}}"#,
        "]}\n"
    );

    #[test]
    fn reads_the_reference_sample() {
        let data = decode(Path::new("ipam.json"), REFERENCE_SAMPLE.as_bytes()).unwrap();
        assert_eq!(data.allocations.len(), 3);
        let a = &data.allocations[0];
        assert_eq!(a.key().to_string(), "aws-cni/5b4c0f1e2d3a/eth0");
        assert_eq!(a.ipv4_addr(), Some(Ipv4Addr::new(10, 0, 2, 20)));
        assert_eq!(a.pod_metadata().name, "web-0");
        assert_eq!(a.pod_metadata().interfaces_count, 1);
        assert_eq!(
            a.allocated_at(),
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_723_456_789_012_345_678)
        );
        assert_eq!(data.allocations[1].metadata, CheckpointMetadata::default());
        assert_eq!(data.allocations[2].ipv4_addr(), None);
        assert_eq!(data.allocations[2].ipv6.as_deref(), Some("2600:1f14::5"));
        assert_eq!(
            data.allocations[2].ipv6_addr(),
            Some("2600:1f14::5".parse().unwrap())
        );
        assert_eq!(a.ipv6_addr(), None);
    }

    #[test]
    fn an_ipv6_assignment_is_written_as_the_reference_writes_it() {
        let a = Assignment {
            ip: "2600:1f14::5".parse().unwrap(),
            key: IpamKey {
                network_name: "aws-cni".into(),
                container_id: "v6pod".into(),
                if_name: "eth0".into(),
            },
            metadata: PodMetadata {
                namespace: "kube-system".into(),
                name: "dns".into(),
                interfaces_count: 0,
            },
            assigned_at: SystemTime::UNIX_EPOCH + Duration::from_nanos(1),
            eni_id: "eni-a".into(),
            device_number: 0,
        };
        let sample = decode(Path::new("x"), REFERENCE_SAMPLE.as_bytes()).unwrap();
        assert_eq!(CheckpointEntry::from_assignment(&a), sample.allocations[2]);
    }

    #[test]
    fn writes_the_reference_layout() {
        let data = decode(Path::new("x"), REFERENCE_SAMPLE.as_bytes()).unwrap();
        let text = serde_json::to_string(&data).unwrap();
        assert_eq!(format!("{text}\n"), REFERENCE_SAMPLE);
    }

    #[test]
    fn round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cp = FileCheckpointer::new(dir.path().join("ipam.json"));
        assert!(cp.load().unwrap().is_none(), "no file = fresh node");
        let a = Assignment {
            ip: Ipv4Addr::new(10, 0, 0, 11).into(),
            key: IpamKey {
                network_name: "aws-cni".into(),
                container_id: "abc".into(),
                if_name: "eth0".into(),
            },
            metadata: PodMetadata {
                namespace: "ns".into(),
                name: "pod".into(),
                interfaces_count: 1,
            },
            assigned_at: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            eni_id: "eni-a".into(),
            device_number: 0,
        };
        let data = CheckpointData::from_assignments(std::slice::from_ref(&a));
        cp.save(&data).unwrap();
        let back = cp.load().unwrap().unwrap();
        assert_eq!(back, data);
        assert_eq!(back.allocations[0].allocated_at(), a.assigned_at);
        let text = std::fs::read_to_string(cp.path()).unwrap();
        assert!(
            text.contains(r#""allocationTimestamp":1700000000123456789"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#""metadata":{"k8sPodNamespace":"ns","k8sPodName":"pod","interfacesCount":1}"#
            ),
            "{text}"
        );
    }

    fn sample_assignment(i: u8, name: &str) -> Assignment {
        Assignment {
            ip: Ipv4Addr::new(10, 0, 0, i).into(),
            key: IpamKey {
                network_name: "aws-cni".into(),
                container_id: format!("c{i}\"\\{name}"),
                if_name: "eth0".into(),
            },
            metadata: PodMetadata {
                namespace: "ns".into(),
                name: name.into(),
                interfaces_count: u32::from(i % 2),
            },
            assigned_at: SystemTime::UNIX_EPOCH
                + Duration::from_nanos(1_700_000_000_000 + u64::from(i)),
            eni_id: "eni-a".into(),
            device_number: 0,
        }
    }

    #[test]
    fn entry_by_entry_encoding_is_the_serialized_checkpoint() {
        let mut out = Vec::new();
        for n in [0u8, 1, 2, 5] {
            let list: Vec<Assignment> = (1..=n)
                .map(|i| sample_assignment(i, &format!("p-{i}")))
                .collect();
            let entries: Vec<Vec<u8>> = list.iter().map(encode_entry).collect();
            encode_file(entries.iter().map(Vec::as_slice), &mut out);
            let mut want = serde_json::to_vec(&CheckpointData::from_assignments(&list)).unwrap();
            want.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want)
            );
            assert_eq!(
                decode(Path::new("x"), &out).unwrap(),
                CheckpointData::from_assignments(&list)
            );
        }
    }

    #[test]
    fn encoded_bytes_go_to_the_file_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let cp = FileCheckpointer::new(dir.path().join("ipam.json"));
        let a = sample_assignment(7, "web");
        let mut bytes = Vec::new();
        encode_file([encode_entry(&a).as_slice()], &mut bytes);
        cp.save_encoded(&bytes).unwrap();
        assert_eq!(std::fs::read(cp.path()).unwrap(), bytes);
        assert_eq!(
            cp.load().unwrap().unwrap(),
            CheckpointData::from_assignments(&[a])
        );
    }

    #[test]
    fn duplicated_errors_keep_the_path_and_the_cause() {
        let e = CheckpointError::Write {
            path: "/var/run/aws-node/ipam.json".into(),
            source: io::Error::new(io::ErrorKind::StorageFull, "No space left on device"),
        };
        let d = e.duplicate();
        assert_eq!(d.to_string(), e.to_string());
        assert!(
            matches!(d, CheckpointError::Write { ref source, .. } if source.kind() == io::ErrorKind::StorageFull)
        );
    }

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let cp = FileCheckpointer::new(dir.path().join("ipam.json"));
        for _ in 0..5 {
            cp.save(&CheckpointData::from_assignments(&[])).unwrap();
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["ipam.json".to_owned()]);
        assert_eq!(
            std::fs::read_to_string(cp.path()).unwrap(),
            "{\"version\":\"vpc-cni-ipam/1\",\"allocations\":[]}\n"
        );
    }

    #[test]
    fn unknown_version_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        std::fs::write(&path, r#"{"version":"vpc-cni-ipam/2","allocations":[]}"#).unwrap();
        let err = FileCheckpointer::new(&path).load().unwrap_err().to_string();
        assert!(
            err.contains("vpc-cni-ipam/2") && err.contains(&path.display().to_string()),
            "{err}"
        );
        std::fs::write(&path, r#"{"allocations":[]}"#).unwrap();
        assert!(matches!(
            FileCheckpointer::new(&path).load(),
            Err(CheckpointError::UnknownVersion { .. })
        ));
    }

    #[test]
    fn torn_or_garbage_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        for content in [
            &REFERENCE_SAMPLE[..60],
            "garbage",
            "",
            "{\"version\":\"vpc-cni-ipam/1\",\"allocations\":{}}",
        ] {
            std::fs::write(&path, content).unwrap();
            let err = FileCheckpointer::new(&path).load().unwrap_err();
            assert!(
                matches!(err, CheckpointError::Corrupt { .. }),
                "{content:?}: {err}"
            );
            assert!(err.to_string().contains("ipam.json"));
        }
    }

    #[test]
    fn null_allocations_read_as_empty() {
        let data = decode(
            Path::new("x"),
            br#"{"version":"vpc-cni-ipam/1","allocations":null}"#,
        )
        .unwrap();
        assert!(data.allocations.is_empty());
    }

    #[test]
    fn write_failure_is_reported_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let cp = FileCheckpointer::new(dir.path().join("missing").join("ipam.json"));
        let err = cp.save(&CheckpointData::from_assignments(&[])).unwrap_err();
        assert!(err.to_string().contains("missing/ipam.json"), "{err}");
    }
}
