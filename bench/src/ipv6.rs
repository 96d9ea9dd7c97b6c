//! IPv6 pods' ADD and DEL latency, next to IPv4's. A second simulated node, set up the way an
//! IPv6 node of an EKS cluster is: `ipamd install-cni` with `ENABLE_IPv6=true` (IPv6 forwarding
//! on in the node's namespace, as aws-node's init container sets it), then ipamd in IPv6 mode,
//! instance-metadata-only, handing out /128s of the primary ENI's /80, with
//! `ENABLE_V4_EGRESS=false` so the conflist is `aws-cni` alone, as in the IPv4 rounds. The
//! baseline is Debian's `ptp` + `host-local` with an IPv6 range, exec'd the same way in the same
//! node. The rounds are the IPv4 section's ([`latency::run_round`]), plugins alternating, plus
//! one `AWS_CNI_TIMING` round for the phase breakdown.
//!
//! Fewer pods than the IPv4 rounds by default ([`DEFAULT_PODS`]): `ptp` waits for the kernel's
//! duplicate address detection on every IPv6 ADD (1–2 s a call), so 200 pods one at a time
//! would take minutes; `aws-cni` turns detection off on the pod's veth pair (docs/ipv6.md).

use std::net::Ipv6Addr;
use std::path::Path;
use std::time::Instant;

use ipnet::Ipv6Net;
use serde::Serialize;

use super::figures::{Op, concurrencies, op_row};
use super::latency::{self, Ctx, Round};
use super::phases::{self, PhaseTable};
use super::plugins::{Flavor, PTP_SUBNET_V6, Plugin};
use super::stats::{Summary, ratio};
use super::{BenchConfig, BenchError};
use harness::node::{NodeOptions, SimNode};
use test_support::metadata::NodeDescription;

/// Pods per IPv6 round unless told otherwise (fewer when the IPv4 rounds have fewer): ptp's
/// ADD of an IPv6 pod takes 1–2 s, so 40 pods at concurrency 1, 2 and 8 keep the section at
/// about 2.5 minutes.
pub const DEFAULT_PODS: usize = 40;

/// The VPC's IPv6 block of the IPv6 node (documentation space, inside its namespaces only).
const VPC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 0);
/// The /80 delegated to the node's primary ENI, inside the subnet `VPC_V6`/64.
const POD_PREFIX: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0x4a6b, 0, 0, 0);
/// The primary ENI's own IPv6 address (outside the /80).
const NODE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 0x10);

/// ipamd's settings for IPv6 pods (besides the node's), as docs/ipv6.md lists them.
pub const IPV6_MODE: [(&str, &str); 4] = [
    ("ENABLE_IPv6", "true"),
    ("ENABLE_IPv4", "false"),
    ("ENABLE_PREFIX_DELEGATION", "true"),
    ("ENABLE_V4_EGRESS", "false"),
];

/// What the IPv6 section measures; `None` fields follow the IPv4 rounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Config {
    /// Pods per round; `None`: the IPv4 rounds' count, at most [`DEFAULT_PODS`].
    pub pods: Option<usize>,
    /// Concurrencies; `None`: the IPv4 rounds'.
    pub concurrency: Option<Vec<usize>>,
    /// Repetitions of every round.
    pub reps: usize,
}

impl Default for Ipv6Config {
    fn default() -> Self {
        Self {
            pods: None,
            concurrency: None,
            reps: 1,
        }
    }
}

impl Ipv6Config {
    /// Pods per round, given the IPv4 rounds' count.
    pub fn pods(&self, ipv4_pods: usize) -> usize {
        self.pods.unwrap_or(ipv4_pods.min(DEFAULT_PODS))
    }

    /// Concurrencies, given the IPv4 rounds'.
    pub fn concurrency<'a>(&'a self, ipv4: &'a [usize]) -> &'a [usize] {
        self.concurrency.as_deref().unwrap_or(ipv4)
    }
}

/// One operation at one concurrency: both plugins on IPv6 pods, their ratio, and the IPv4
/// rounds' ratio for the same operation and concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Ipv6Figure {
    /// Calls in flight.
    pub concurrency: usize,
    /// `ADD`, `DEL` or `DEL + netns removal`.
    pub op: String,
    /// aws-cni, pooled over the repetitions.
    pub ours: Option<Summary>,
    /// ptp + host-local, pooled over the repetitions.
    pub ptp: Option<Summary>,
    /// ours / ptp, medians.
    pub ratio_median: Option<f64>,
    /// ours / ptp, 99th percentiles.
    pub ratio_p99: Option<f64>,
    /// ours / ptp, medians, of the IPv4 rounds at this concurrency (when they ran at it).
    pub ipv4_ratio_median: Option<f64>,
    /// Failed calls of both plugins.
    pub failures: usize,
}

/// The IPv6 section's results.
#[derive(Debug, Clone, Serialize)]
pub struct Ipv6Results {
    /// Pods per round.
    pub pods: usize,
    /// Repetitions.
    pub reps: usize,
    /// Concurrencies.
    pub concurrency: Vec<usize>,
    /// The /80 ipamd handed the pods' addresses out of.
    pub pod_prefix: String,
    /// host-local's range for ptp.
    pub ptp_subnet: String,
    /// Latency rounds of both plugins on IPv6 pods.
    pub rounds: Vec<Round>,
    /// aws-cni's ADD and DEL phases on IPv6 pods (one `AWS_CNI_TIMING` round at concurrency 1).
    pub phases: Vec<PhaseTable>,
    /// The figures the report shows, one per concurrency and operation.
    pub figures: Vec<Ipv6Figure>,
    /// Wall time of the whole section (node set-up, rounds, timing round, teardown), s.
    pub wall_s: f64,
}

impl Ipv6Results {
    /// Failed calls and leftovers over its rounds.
    pub fn failures(&self) -> usize {
        self.rounds.iter().map(Round::failures).sum()
    }
}

/// The IPv6 node: one ENI (an m5.large, a Nitro type as IPv6 mode requires), its subnet's and
/// VPC's IPv6 blocks, its own IPv6 address and the /80 delegated to it.
pub fn bench_node_v6() -> NodeDescription {
    let mut d = harness::node::standard_node(&[1]);
    let net = |addr: Ipv6Addr, len: u8| Ipv6Net::new(addr, len).unwrap_or_default();
    d.vpc_ipv6_cidr_blocks = vec![net(VPC_V6, 56)];
    if let Some(primary) = d.interfaces.first_mut() {
        primary.subnet_ipv6_cidr_blocks = vec![net(VPC_V6, 64)];
        primary.ipv6s = vec![NODE_V6];
        primary.ipv6_prefixes = vec![net(POD_PREFIX, 80)];
    }
    d
}

/// The figures of the IPv6 rounds `v6`, with the IPv4 rounds' ratios from `v4`.
pub(crate) fn figures(v6: &[Round], v4: &[Round]) -> Vec<Ipv6Figure> {
    let mut out = Vec::new();
    for conc in concurrencies(v6) {
        for op in [Op::Add, Op::Del, Op::DelNetns] {
            let ours = op_row(v6, Flavor::Ours, conc, op);
            let ptp = op_row(v6, Flavor::Ptp, conc, op);
            let both = |f: fn(&Summary) -> f64| {
                ours.summary
                    .zip(ptp.summary)
                    .and_then(|(o, p)| ratio(f(&o), f(&p)))
            };
            let v4_ours = op_row(v4, Flavor::Ours, conc, op).summary;
            let v4_ptp = op_row(v4, Flavor::Ptp, conc, op).summary;
            out.push(Ipv6Figure {
                concurrency: conc,
                op: op.label().to_owned(),
                ratio_median: both(|s| s.median_ms),
                ratio_p99: both(|s| s.p99_ms),
                ipv4_ratio_median: v4_ours
                    .zip(v4_ptp)
                    .and_then(|(o, p)| ratio(o.median_ms, p.median_ms)),
                failures: ours.failures + ptp.failures,
                ours: ours.summary,
                ptp: ptp.summary,
            });
        }
    }
    out
}

/// Copies what the image ships in `/app/cni/bin` into `dir` for `install-cni`: the aws-cni
/// under test, every other plugin from its directory when it is there (`make bench`: the staged
/// image), else from this build or Debian's plugins.
fn stage_image(dir: &Path, plugin: &Path) -> Result<(), BenchError> {
    let io = |context: String| move |source| BenchError::Io { context, source };
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let beside = plugin.parent().unwrap_or(Path::new("/"));
    for name in ipamd::install::SHIPPED_PLUGINS {
        let from = if name == ipamd::install::PLUGIN {
            plugin.to_owned()
        } else if beside.join(name).is_file() {
            beside.join(name)
        } else {
            test_support::prereqs::stage_plugins(dir, &[name])?;
            continue;
        };
        std::fs::copy(&from, dir.join(name)).map_err(io(format!(
            "cannot copy {} into {}",
            from.display(),
            dir.display()
        )))?;
    }
    Ok(())
}

/// Runs the IPv6 section: the node, the rounds of both plugins at every concurrency (round ids
/// from `round_id` on), the timing round; `v4` are the IPv4 rounds the figures are set next to.
pub(crate) fn run(
    config: &BenchConfig,
    v6: &Ipv6Config,
    tmp: &Path,
    cpus: usize,
    round_id: &mut usize,
    v4: &[Round],
    say: &dyn Fn(&str),
) -> Result<Ipv6Results, BenchError> {
    let t0 = Instant::now();
    let pods = v6.pods(config.pods);
    let concs = v6.concurrency(&config.concurrency).to_vec();
    say("starting an IPv6 node (install-cni, ipamd in IPv6 mode)");
    let mut options = NodeOptions::new(bench_node_v6())
        .cooldown_seconds(0)
        .ipamd_env(
            "AWS_VPC_K8S_CNI_BACKING_STORE",
            &tmp.join("ipam-v6.json").display().to_string(),
        )
        .without_ipamd();
    for (k, v) in IPV6_MODE {
        options = options.ipamd_env(k, v);
    }
    let mut node = SimNode::start(options)?;
    let image = tmp.join("image-v6");
    stage_image(&image, &config.plugin)?;
    node.install_cni(&image)?;
    node.start_ipamd()?;
    let ctx = Ctx {
        node_netns: node.ns().path(),
        node_name: node.ns().name().to_owned(),
        ipamd_pid: node.ipamd_pid(),
        cpus,
    };
    let cni_version = "1.0.0";
    let ours = Plugin::ours(&config.plugin, node.plugin_config(cni_version, None)?, tmp);
    let ptp = Plugin::ptp_v6(&config.ptp_dir, cni_version, tmp)?;

    let mut rounds = Vec::new();
    for rep in 0..v6.reps {
        for (ci, &conc) in concs.iter().enumerate() {
            let order = if (rep + ci) % 2 == 0 {
                [&ours, &ptp]
            } else {
                [&ptp, &ours]
            };
            for plugin in order {
                *round_id += 1;
                say(&format!(
                    "IPv6 rep {}/{} C={conc} {}: {pods} ADD + {pods} DEL",
                    rep + 1,
                    v6.reps,
                    plugin.flavor.label(),
                ));
                let out = latency::run_round(&ctx, plugin, *round_id, rep, conc, pods, &[])?;
                rounds.push(out.round);
            }
        }
    }
    say("IPv6 phase breakdown (AWS_CNI_TIMING)");
    let timing_file = tmp.join("timing-v6.jsonl");
    *round_id += 1;
    let timed = latency::run_round(
        &ctx,
        &ours,
        *round_id,
        0,
        1,
        pods,
        &[(
            aws_cni::timing::TIMING_ENV.to_owned(),
            timing_file.display().to_string(),
        )],
    )?;
    let phase_tables = phases::breakdown(&timed, &timing_file)?;
    if timed.round.failures() > 0 {
        rounds.push(timed.round);
    }
    drop(node);
    Ok(Ipv6Results {
        pods,
        reps: v6.reps,
        figures: figures(&rounds, v4),
        concurrency: concs,
        pod_prefix: Ipv6Net::new(POD_PREFIX, 80).unwrap_or_default().to_string(),
        ptp_subnet: PTP_SUBNET_V6.to_owned(),
        rounds,
        phases: phase_tables,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::OpSamples;

    fn round(flavor: Flavor, conc: usize, add_ms: &[u64], del_ms: &[u64]) -> Round {
        let samples = |ms: &[u64]| OpSamples {
            latencies_ns: ms.iter().map(|m| m * 1_000_000).collect(),
            wall_ns: 1_000_000_000,
            failures: Vec::new(),
        };
        Round {
            rep: 0,
            flavor,
            program: flavor.label().to_owned(),
            concurrency: conc,
            add: samples(add_ms),
            del: samples(del_ms),
            del_netns: samples(&del_ms.iter().map(|d| d + 30).collect::<Vec<_>>()),
            netns_removal_ns: Vec::new(),
            veth_wait_ns: Vec::new(),
            veths_left_by_del: 0,
            other_cpu_pct: 0.0,
            add_other_cpu_pct: 0.0,
            del_other_cpu_pct: 0.0,
            leaked_links: Vec::new(),
        }
    }

    #[test]
    fn the_ipv6_node_is_valid_and_delegates_an_80_to_its_primary_eni() {
        let d = bench_node_v6();
        d.validate().unwrap();
        let primary = d.primary_interface().unwrap();
        assert_eq!(
            primary.ipv6_prefixes,
            vec!["2001:db8:1000:0:4a6b::/80".parse::<Ipv6Net>().unwrap()]
        );
        assert_eq!(d.instance_type, "m5.large");
        // The baseline's range is outside the VPC, so the two never meet in a route.
        let ptp: Ipv6Net = PTP_SUBNET_V6.parse().unwrap();
        assert!(d.vpc_ipv6_cidr_blocks.iter().all(|v| !v.contains(&ptp)));
    }

    #[test]
    fn pods_and_concurrency_follow_the_ipv4_rounds_unless_set() {
        let c = Ipv6Config::default();
        assert_eq!((c.pods(200), c.pods(3)), (DEFAULT_PODS, 3));
        assert_eq!(c.concurrency(&[1, 2, 8]), &[1, 2, 8]);
        let c = Ipv6Config {
            pods: Some(80),
            concurrency: Some(vec![1, 8]),
            reps: 2,
        };
        assert_eq!(c.pods(3), 80);
        assert_eq!(c.concurrency(&[1, 2, 8]), &[1, 8]);
    }

    #[test]
    fn figures_put_the_ipv6_ratio_next_to_the_ipv4_one() {
        let v6 = [
            round(Flavor::Ours, 1, &[3, 3, 3], &[4, 4, 4]),
            round(Flavor::Ptp, 1, &[1500, 1500, 1500], &[40, 40, 40]),
            round(Flavor::Ours, 8, &[12, 12], &[8, 8]),
            round(Flavor::Ptp, 8, &[1600, 1600], &[40, 40]),
        ];
        let v4 = [
            round(Flavor::Ours, 1, &[2, 2], &[3, 3]),
            round(Flavor::Ptp, 1, &[8, 8], &[36, 36]),
        ];
        let f = figures(&v6, &v4);
        assert_eq!(f.len(), 6, "{f:#?}");
        let add1 = &f[0];
        assert_eq!((add1.concurrency, add1.op.as_str()), (1, "ADD"));
        assert_eq!(add1.ratio_median, Some(3.0 / 1500.0));
        assert_eq!(add1.ipv4_ratio_median, Some(0.25));
        assert_eq!(add1.ours.map(|s| s.n), Some(3));
        let del_netns1 = &f[2];
        assert_eq!(del_netns1.op, "DEL + netns removal");
        assert_eq!(del_netns1.ratio_median, Some(34.0 / 70.0));
        // No IPv4 round ran at C=8: no IPv4 ratio to show there.
        assert_eq!((f[3].concurrency, f[3].ipv4_ratio_median), (8, None));
        assert!(f.iter().all(|x| x.failures == 0));
    }

    #[test]
    fn the_image_is_staged_from_beside_the_plugin_under_test() {
        let image = tempfile::tempdir().unwrap();
        for name in ipamd::install::SHIPPED_PLUGINS {
            std::fs::write(image.path().join(name), name.as_bytes()).unwrap();
        }
        let benchmarked = image.path().join("aws-cni.musl");
        std::fs::write(&benchmarked, b"under test").unwrap();
        // stage_image copies aws-cni from the given path, the rest from beside it.
        let staged = tempfile::tempdir().unwrap();
        stage_image(staged.path(), &benchmarked).unwrap();
        for name in ipamd::install::SHIPPED_PLUGINS {
            let got = std::fs::read(staged.path().join(name)).unwrap();
            let want: &[u8] = if name == "aws-cni" {
                b"under test"
            } else {
                name.as_bytes()
            };
            assert_eq!(got, want, "{name}");
        }
    }
}
