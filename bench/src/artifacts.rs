//! What the benchmark reads from disk rather than measures live: binary sizes, the container
//! image estimate (the Dockerfile's final stage: no Docker engine runs on the benchmark machine),
//! the machine's description, and criterion's results of `ipamd/benches/datastore.rs`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::BenchError;

/// A file and its size.
#[derive(Debug, Clone, Serialize)]
pub struct FileSize {
    /// What it is.
    pub what: String,
    /// Where it is.
    pub path: PathBuf,
    /// Bytes.
    pub bytes: u64,
    /// Whether it is statically linked (no `PT_INTERP` program header).
    pub static_binary: Option<bool>,
}

/// The size of `path` (and whether it is a static ELF), or `None` when it does not exist.
pub(crate) fn file_size(what: &str, path: &Path) -> Option<FileSize> {
    let meta = fs::metadata(path).ok()?;
    Some(FileSize {
        what: what.to_owned(),
        path: path.to_owned(),
        bytes: meta.len(),
        static_binary: fs::read(path).ok().and_then(|b| elf_is_static(&b)),
    })
}

/// Whether a 64-bit little-endian ELF has no interpreter (static); `None` if it is not one.
pub(crate) fn elf_is_static(bytes: &[u8]) -> Option<bool> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(32)?).ok()?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    for i in 0..phnum {
        let off = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = u32::from_le_bytes(bytes.get(off..off + 4)?.try_into().ok()?);
        if p_type == 3 {
            // PT_INTERP
            return Some(false);
        }
    }
    Some(true)
}

/// The image estimate from the Dockerfile's final stage.
#[derive(Debug, Clone, Serialize)]
pub struct ImageEstimate {
    /// The Dockerfile read.
    pub dockerfile: PathBuf,
    /// The final stage's base image.
    pub base: String,
    /// Files the final stage copies in, with the local file measured for each.
    pub files: Vec<FileSize>,
    /// Sources the estimate could not map to a local file.
    pub unresolved: Vec<String>,
    /// Sum of `files`, bytes (the base image is not included unless it is `scratch`).
    pub bytes: u64,
}

/// Estimates the image from `dockerfile`'s last stage: every `COPY`/`ADD` source is mapped to
/// local files. A `--from=<stage>` path under that stage's `WORKDIR` is taken relative to the
/// build context (the Dockerfile's directory), since build stages copy the context into their
/// `WORKDIR`; failing that, by file name among `candidates` (the build outputs). Plain sources
/// are relative to the context. Directories count with every file in them. `None` when there
/// is no Dockerfile.
pub(crate) fn image_estimate(dockerfile: &Path, candidates: &[PathBuf]) -> Option<ImageEstimate> {
    let text = fs::read_to_string(dockerfile).ok()?;
    let root = dockerfile.parent().unwrap_or(Path::new("."));
    // Join continuation lines, drop comments.
    let mut lines = Vec::new();
    let mut cur = String::new();
    for raw in text.lines() {
        let l = raw.trim();
        if l.starts_with('#') {
            continue;
        }
        if let Some(stripped) = l.strip_suffix('\\') {
            cur.push_str(stripped);
            cur.push(' ');
            continue;
        }
        cur.push_str(l);
        lines.push(std::mem::take(&mut cur));
    }
    let last_from = lines
        .iter()
        .rposition(|l| l.to_ascii_uppercase().starts_with("FROM "))?;
    // WORKDIR of every named stage (the last one set in it).
    let mut workdirs: Vec<(String, String)> = Vec::new();
    let mut stage: Option<String> = None;
    for l in &lines[..last_from] {
        let words: Vec<&str> = l.split_whitespace().collect();
        match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
            Some("FROM") => {
                stage = words
                    .iter()
                    .position(|w| w.eq_ignore_ascii_case("AS"))
                    .and_then(|i| words.get(i + 1))
                    .map(|s| (*s).to_owned());
            }
            Some("WORKDIR") => {
                if let (Some(name), Some(dir)) = (&stage, words.get(1)) {
                    workdirs.retain(|(n, _)| n != name);
                    workdirs.push((name.clone(), dir.trim_end_matches('/').to_owned()));
                }
            }
            _ => {}
        }
    }
    let base = lines[last_from]
        .split_whitespace()
        .skip(1)
        .find(|w| !w.starts_with("--"))
        .unwrap_or("")
        .to_owned();
    let mut files = Vec::new();
    let mut unresolved = Vec::new();
    for l in &lines[last_from + 1..] {
        let upper = l.to_ascii_uppercase();
        if !(upper.starts_with("COPY ") || upper.starts_with("ADD ")) {
            continue;
        }
        let words: Vec<&str> = l.split_whitespace().skip(1).collect();
        let from_stage = words
            .iter()
            .find_map(|w| w.strip_prefix("--from="))
            .map(str::to_owned);
        let args: Vec<&str> = words
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        if args.len() < 2 {
            continue;
        }
        for src in &args[..args.len() - 1] {
            let src = src.trim_matches(|c| c == '"' || c == '[' || c == ']' || c == ',');
            let found = if let Some(stage) = &from_stage {
                let in_context = workdirs
                    .iter()
                    .find(|(n, _)| n == stage)
                    .and_then(|(_, dir)| src.strip_prefix(&format!("{dir}/")))
                    .map(|rel| root.join(rel))
                    .filter(|p| p.exists());
                let name = Path::new(src).file_name();
                in_context.or_else(|| {
                    candidates
                        .iter()
                        .find(|c| c.file_name() == name && c.is_file())
                        .cloned()
                })
            } else {
                let p = root.join(src);
                p.exists().then_some(p)
            };
            match found {
                Some(p) if p.is_dir() => {
                    for f in walk(&p) {
                        let what = f.strip_prefix(root).unwrap_or(&f).display().to_string();
                        if let Some(s) = file_size(&what, &f) {
                            files.push(s);
                        }
                    }
                }
                Some(p) => {
                    if let Some(s) = file_size(src, &p) {
                        files.push(s);
                    }
                }
                None => unresolved.push(src.to_owned()),
            }
        }
    }
    let bytes = files.iter().map(|f| f.bytes).sum();
    Some(ImageEstimate {
        dockerfile: dockerfile.to_owned(),
        base,
        files,
        unresolved,
        bytes,
    })
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The machine the run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Online CPUs.
    pub cpus: usize,
    /// CPU model (`/proc/cpuinfo`).
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Rust compiler (`rustc --version`), if found.
    pub rustc: String,
}

/// Describes this machine.
pub(crate) fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let mem_kib: u64 = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    #[allow(clippy::cast_precision_loss)]
    let memory_gib = (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0;
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        cpu_model,
        kernel,
        memory_gib,
        rustc,
    }
}

/// One criterion benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct CriterionResult {
    /// `group/function/parameter`.
    pub id: String,
    /// Median time per iteration, ns.
    pub median_ns: f64,
    /// Mean time per iteration, ns.
    pub mean_ns: f64,
    /// Elements per iteration (criterion's `Throughput::Elements`), 1 if unset.
    pub elements: u64,
}

impl CriterionResult {
    /// Elements per second at the median.
    pub fn per_second(&self) -> f64 {
        if self.median_ns > 0.0 {
            #[allow(clippy::cast_precision_loss)]
            let e = self.elements as f64;
            e * 1e9 / self.median_ns
        } else {
            0.0
        }
    }
}

/// Reads every `<dir>/**/new/{benchmark,estimates}.json` criterion wrote whose id starts with
/// one of `groups`, sorted by id.
pub(crate) fn criterion_results(
    dir: &Path,
    groups: &[&str],
) -> Result<Vec<CriterionResult>, BenchError> {
    if !dir.is_dir() {
        return Err(BenchError::Missing {
            what: "criterion's results".into(),
            path: dir.to_owned(),
            hint: "run `cargo bench -p ipamd --bench datastore` first (make bench does)".into(),
        });
    }
    let mut out = Vec::new();
    for f in walk(dir) {
        if !(f.ends_with("new/benchmark.json")) {
            continue;
        }
        let Some(new_dir) = f.parent() else { continue };
        let read = |p: &Path| -> Result<Value, BenchError> {
            let text = fs::read_to_string(p).map_err(|source| BenchError::Io {
                context: format!("cannot read {}", p.display()),
                source,
            })?;
            serde_json::from_str(&text).map_err(|e| {
                BenchError::Invalid(format!("{} is not criterion JSON: {e}", p.display()))
            })
        };
        let bench = read(&f)?;
        let id = bench["full_id"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| new_dir.display().to_string());
        if !groups.iter().any(|g| id.starts_with(g)) {
            continue;
        }
        let est = read(&new_dir.join("estimates.json"))?;
        let elements = bench["throughput"]["Elements"].as_u64().unwrap_or(1);
        out.push(CriterionResult {
            id,
            median_ns: est["median"]["point_estimate"].as_f64().unwrap_or(0.0),
            mean_ns: est["mean"]["point_estimate"].as_f64().unwrap_or(0.0),
            elements,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_elves_are_told_apart() {
        // /bin/true on Debian is dynamic.
        let bytes = fs::read("/bin/true").unwrap();
        assert_eq!(elf_is_static(&bytes), Some(false));
        assert_eq!(elf_is_static(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn image_estimate_follows_the_final_stage() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("out");
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join("ipamd"), vec![0u8; 1000]).unwrap();
        fs::write(bin.join("aws-cni"), vec![0u8; 300]).unwrap();
        fs::create_dir_all(dir.path().join("conf")).unwrap();
        fs::write(dir.path().join("conf/10-aws.conflist"), vec![0u8; 20]).unwrap();
        let df = dir.path().join("Dockerfile");
        fs::write(
            &df,
            "FROM rust:1.95 AS build\nCOPY . /src\nRUN make image-binaries\n\
             # final\nFROM gcr.io/distroless/static-debian12:nonroot\n\
             COPY --from=build /src/target/release/ipamd \\\n  /src/target/x86_64-unknown-linux-musl/release/aws-cni /app/\n\
             COPY conf/10-aws.conflist /app/\nCOPY --from=build /src/missing /app/\n",
        )
        .unwrap();
        let est = image_estimate(&df, &[bin.join("ipamd"), bin.join("aws-cni")]).unwrap();
        assert_eq!(est.base, "gcr.io/distroless/static-debian12:nonroot");
        assert_eq!(est.bytes, 1320);
        assert_eq!(est.unresolved, vec!["/src/missing".to_owned()]);
        assert!(image_estimate(&dir.path().join("nope"), &[]).is_none());

        // A staged tree in the build stage's WORKDIR maps to the same path in the context.
        let staged = dir.path().join("target/image/cni/bin");
        fs::create_dir_all(&staged).unwrap();
        fs::write(staged.join("aws-cni"), vec![0u8; 300]).unwrap();
        fs::write(dir.path().join("target/image/ipamd"), vec![0u8; 1000]).unwrap();
        fs::write(
            &df,
            "FROM rust:1.95 AS build\nWORKDIR /src\nCOPY . .\nRUN make image-binaries\n\
             FROM gcr.io/distroless/cc-debian12:nonroot\nCOPY --from=build /src/target/image/ /app/\n",
        )
        .unwrap();
        let est = image_estimate(&df, &[]).unwrap();
        assert_eq!(est.bytes, 1300);
        assert!(est.unresolved.is_empty(), "{:?}", est.unresolved);
        assert!(
            est.files
                .iter()
                .any(|f| f.what == "target/image/cni/bin/aws-cni")
        );
    }

    #[test]
    fn criterion_results_are_read_with_their_throughput() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("datastore/assign_release/250/new");
        fs::create_dir_all(&new).unwrap();
        fs::write(
            new.join("benchmark.json"),
            r#"{"group_id":"datastore","function_id":"assign_release","value_str":"250","throughput":{"Elements":1},"full_id":"datastore/assign_release/250"}"#,
        )
        .unwrap();
        fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"point_estimate":520.0},"median":{"point_estimate":500.0}}"#,
        )
        .unwrap();
        let r = criterion_results(dir.path(), &["datastore"]).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].id, "datastore/assign_release/250");
        assert!((r[0].per_second() - 2_000_000.0).abs() < 1e-6);
        assert!(
            criterion_results(dir.path(), &["other"])
                .unwrap()
                .is_empty()
        );
        assert!(criterion_results(&dir.path().join("none"), &["x"]).is_err());
    }
}
