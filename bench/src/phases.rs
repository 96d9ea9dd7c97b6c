//! Where the time of one ADD (and DEL) goes: the plugin's own phase marks (`AWS_CNI_TIMING`,
//! see `aws_cni::timing`) joined with the driver's spawn and reap times, the exec floors
//! (`/bin/true`, `CNI_COMMAND=VERSION` of each plugin) and the kernel floor (the same netlink
//! operations done in one process by `kernel-floor loop`).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::BenchError;
use super::exec::exec_timed;
use super::latency::{Ctx, RoundOutput, parallel, settle};
use super::plugins::Plugin;
use super::pods::PodSet;
use super::stats::{Summary, median_ns, nearest_rank};

/// One phase over many calls.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseStat {
    /// Phase name (`exec_startup` and `exit_reap` come from the driver's clock).
    pub name: String,
    /// Median, µs.
    pub median_us: f64,
    /// 95th percentile, µs.
    pub p95_us: f64,
    /// Calls that went through this phase.
    pub n: usize,
}

/// The breakdown of one verb.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseTable {
    /// `ADD` or `DEL`.
    pub command: String,
    /// Calls with a timing line.
    pub n: usize,
    /// Phases in execution order.
    pub phases: Vec<PhaseStat>,
    /// Spawn → reap, median ms.
    pub total_median_ms: f64,
    /// `main` → last mark, median ms.
    pub in_process_median_ms: f64,
    /// The plugin's own peak RSS (`VmHWM` when it wrote its line), KiB: median and max.
    pub vm_hwm_kib: Option<(u64, u64)>,
}

fn us(ns: u64) -> f64 {
    super::stats::ns_to_ms(ns) * 1_000.0
}

fn stat(name: &str, samples: &[u64]) -> PhaseStat {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    PhaseStat {
        name: name.to_owned(),
        median_us: us(median_ns(samples)),
        p95_us: us(nearest_rank(&sorted, 95.0)),
        n: samples.len(),
    }
}

#[derive(Debug)]
struct TimingLine {
    t_main_ns: u64,
    t_end_ns: u64,
    vm_hwm_kib: Option<u64>,
    phases: Vec<(String, u64)>,
}

fn parse_timing(text: &str) -> Result<HashMap<(String, String), TimingLine>, BenchError> {
    let mut out = HashMap::new();
    for (no, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| {
            BenchError::Invalid(format!("timing line {} is not JSON ({e}): {line}", no + 1))
        })?;
        let bad = || BenchError::Invalid(format!("timing line {} lacks fields: {line}", no + 1));
        let phases = v["phases"]
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|p| Some((p.get(0)?.as_str()?.to_owned(), p.get(1)?.as_u64()?)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        out.insert(
            (
                v["command"].as_str().ok_or_else(bad)?.to_owned(),
                v["container_id"].as_str().ok_or_else(bad)?.to_owned(),
            ),
            TimingLine {
                t_main_ns: v["t_main_ns"].as_u64().ok_or_else(bad)?,
                t_end_ns: v["t_end_ns"].as_u64().ok_or_else(bad)?,
                vm_hwm_kib: v["vm_hwm_kib"].as_u64(),
                phases,
            },
        );
    }
    Ok(out)
}

/// Builds the ADD and DEL breakdowns from a round run with `AWS_CNI_TIMING=<timing_file>`.
pub(crate) fn breakdown(
    out: &RoundOutput,
    timing_file: &Path,
) -> Result<Vec<PhaseTable>, BenchError> {
    let text = std::fs::read_to_string(timing_file).map_err(|source| BenchError::Io {
        context: format!(
            "cannot read the plugin's timing file {} (was the plugin built with phase timing?)",
            timing_file.display()
        ),
        source,
    })?;
    let lines = parse_timing(&text)?;
    let mut tables = Vec::new();
    for (command, outcomes) in [("ADD", &out.adds), ("DEL", &out.dels)] {
        let mut order: Vec<String> = Vec::new();
        let mut samples: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut totals = Vec::new();
        let mut in_process = Vec::new();
        let mut hwm = Vec::new();
        let mut push = |name: &str, v: u64, order: &mut Vec<String>| {
            if !order.iter().any(|o| o == name) {
                order.push(name.to_owned());
            }
            samples.entry(name.to_owned()).or_default().push(v);
        };
        for (pod, outcome) in out.pods.iter().zip(outcomes) {
            let Some(o) = outcome else { continue };
            let Some(t) = lines.get(&(command.to_owned(), pod.container_id.clone())) else {
                continue;
            };
            push(
                "exec_startup",
                t.t_main_ns.saturating_sub(o.t_spawn_ns),
                &mut order,
            );
            for (name, ns) in &t.phases {
                push(name, *ns, &mut order);
            }
            push(
                "exit_reap",
                o.t_reaped_ns.saturating_sub(t.t_end_ns),
                &mut order,
            );
            totals.push(o.latency_ns());
            in_process.push(t.t_end_ns.saturating_sub(t.t_main_ns));
            hwm.extend(t.vm_hwm_kib);
        }
        if totals.is_empty() {
            return Err(BenchError::Invalid(format!(
                "no {command} call of the timing round left a line in {}",
                timing_file.display()
            )));
        }
        tables.push(PhaseTable {
            command: command.to_owned(),
            n: totals.len(),
            phases: order
                .iter()
                .map(|name| stat(name, &samples[name]))
                .collect(),
            total_median_ms: super::stats::ns_to_ms(median_ns(&totals)),
            in_process_median_ms: super::stats::ns_to_ms(median_ns(&in_process)),
            vm_hwm_kib: hwm.iter().max().map(|&max| (median_ns(&hwm), max)),
        });
    }
    Ok(tables)
}

/// Exec floors: what it costs to start a program and reap it.
#[derive(Debug, Clone, Serialize)]
pub struct ExecFloors {
    /// `/bin/true`.
    pub bin_true: Summary,
    /// `aws-cni` with `CNI_COMMAND=VERSION`.
    pub ours_version: Summary,
    /// The glibc (dynamically linked) build of `aws-cni`, `CNI_COMMAND=VERSION`.
    pub ours_glibc_version: Option<Summary>,
    /// `ptp` with `CNI_COMMAND=VERSION`.
    pub ptp_version: Summary,
    /// `/bin/true` started with `ip netns exec <node>` (what the harness's own helpers pay;
    /// runtimes do not).
    pub ip_netns_exec_true: Option<Summary>,
}

/// Measures the exec floors, `reps` calls each, one at a time inside the node.
pub(crate) fn exec_floors(
    ctx: &Ctx,
    ours: &Plugin,
    ours_glibc: Option<&Plugin>,
    ptp: &Plugin,
    cni_version: &str,
    reps: usize,
) -> Result<ExecFloors, BenchError> {
    let env = vec![(
        "PATH".to_owned(),
        "/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    )];
    let bin_true = Path::new("/bin/true");
    let run = |f: &(dyn Fn() -> Result<super::exec::ExecOutcome, BenchError> + Sync),
               what: &str|
     -> Result<Summary, BenchError> {
        let (outs, _) = parallel(&ctx.node_netns, 1, reps, |_| f())?;
        let mut lat = Vec::with_capacity(reps);
        for o in outs {
            let o = o?;
            if !o.success() {
                return Err(BenchError::Plugin {
                    what: what.to_owned(),
                    detail: o.output_excerpt(500),
                });
            }
            lat.push(o.latency_ns());
        }
        Summary::from_ns(&lat).ok_or_else(|| BenchError::Invalid(format!("no samples of {what}")))
    };
    let bin_true_s = run(&|| exec_timed(bin_true, &[], &env, b""), "/bin/true")?;
    let ours_v = run(&|| ours.version(cni_version), "aws-cni VERSION")?;
    let ptp_v = run(&|| ptp.version(cni_version), "ptp VERSION")?;
    let glibc_v = match ours_glibc {
        Some(g) => Some(run(&|| g.version(cni_version), "aws-cni (glibc) VERSION")?),
        None => None,
    };
    let ip = Path::new("/usr/bin/ip");
    let ip_netns = if ip.is_file() {
        let node = ctx.node_name.clone();
        Some(run(
            &|| exec_timed(ip, &["netns", "exec", &node, "/bin/true"], &env, b""),
            "ip netns exec /bin/true",
        )?)
    } else {
        None
    };
    Ok(ExecFloors {
        bin_true: bin_true_s,
        ours_version: ours_v,
        ours_glibc_version: glibc_v,
        ptp_version: ptp_v,
        ip_netns_exec_true: ip_netns,
    })
}

/// The kernel floor in one process: per-operation medians (µs) of `n` pods.
#[derive(Debug, Clone, Serialize)]
pub struct KernelFloor {
    /// Pods measured.
    pub n: usize,
    /// ADD operations in order: (name, median µs, p95 µs).
    pub add: Vec<(String, f64, f64)>,
    /// DEL operations in order.
    pub del: Vec<(String, f64, f64)>,
    /// Sum of the ADD medians, ms.
    pub add_total_ms: f64,
    /// Sum of the DEL medians, ms.
    pub del_total_ms: f64,
}

/// `[["op",[µs,…]],…]` → (op, median µs, p95 µs) in the printed order.
fn op_stats(v: &Value) -> Result<Vec<(String, f64, f64)>, BenchError> {
    let bad = || BenchError::Invalid(format!("kernel-floor printed {v} (not [[op,[µs…]]…])"));
    let mut out = Vec::new();
    for entry in v.as_array().ok_or_else(bad)? {
        let name = entry.get(0).and_then(Value::as_str).ok_or_else(bad)?;
        let us_samples: Vec<u64> = entry
            .get(1)
            .and_then(Value::as_array)
            .ok_or_else(bad)?
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        let mut sorted = us_samples.clone();
        sorted.sort_unstable();
        #[allow(clippy::cast_precision_loss)]
        out.push((
            name.to_owned(),
            median_ns(&us_samples) as f64,
            nearest_rank(&sorted, 95.0) as f64,
        ));
    }
    Ok(out)
}

/// Runs `kernel-floor loop` over `n` fresh namespaces inside the node.
pub(crate) fn kernel_floor_in_process(
    ctx: &Ctx,
    floor: &Path,
    n: usize,
    ip_base: Ipv4Addr,
    table: u32,
) -> Result<KernelFloor, BenchError> {
    let set = PodSet::create(n, "bk")?;
    let mut args = vec!["loop".to_owned(), ip_base.to_string(), table.to_string()];
    args.extend((0..set.len()).map(|i| set.path(i).display().to_string()));
    let env = vec![(
        "PATH".to_owned(),
        "/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    )];
    let (mut outs, _) = parallel(&ctx.node_netns, 1, 1, |_| {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        exec_timed(floor, &argv, &env, b"")
    })?;
    let out = outs.remove(0)?;
    drop(set);
    settle();
    if !out.success() {
        return Err(BenchError::Plugin {
            what: "kernel-floor loop".into(),
            detail: out.output_excerpt(2000),
        });
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        BenchError::Invalid(format!(
            "kernel-floor loop printed invalid JSON ({e}): {}",
            out.output_excerpt(500)
        ))
    })?;
    let add = op_stats(&v["add"])?;
    let del = op_stats(&v["del"])?;
    let total = |ops: &[(String, f64, f64)]| ops.iter().map(|(_, m, _)| m).sum::<f64>() / 1_000.0;
    Ok(KernelFloor {
        n,
        add_total_ms: total(&add),
        del_total_ms: total(&del),
        add,
        del,
    })
}

#[cfg(test)]
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    #[test]
    fn timing_lines_parse_and_bad_ones_are_named() {
        let text = concat!(
            r#"{"command":"ADD","container_id":"c1","ok":true,"t_main_ns":100,"t_end_ns":400,"phases":[["stdin",50],["print",250]]}"#,
            "\n\n"
        );
        let m = parse_timing(text).unwrap();
        let t = &m[&("ADD".to_owned(), "c1".to_owned())];
        assert_eq!(t.t_main_ns, 100);
        assert_eq!(t.phases[1], ("print".to_owned(), 250));
        let e = parse_timing("{\"command\":\"ADD\"}\n").err().unwrap();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn op_stats_take_medians() {
        let v: Value =
            serde_json::from_str(r#"[["veth_create",[500,700,600]],["pod_addr",[40,60]]]"#)
                .unwrap();
        let s = op_stats(&v).unwrap();
        assert_eq!(s[0], ("veth_create".to_owned(), 600.0, 700.0));
        assert_eq!(s[1].0, "pod_addr");
        assert!(op_stats(&serde_json::json!({"a": 1})).is_err());
    }
}
