//! `cnibench run`: the benchmark of issue 6 (see the `vpc_cni_bench` library), writing BENCHMARKS.md and a
//! JSON of every sample. `make bench` builds the release binaries and runs it as root.
//!
//! ```text
//! cnibench run --plugin <aws-cni> --floor <kernel-floor> --peak-rss <peak-rss>
//!              [--out BENCHMARKS.md] [--json results.json] [--rss-pods 50]
//!              [--pods 200] [--conc 1,2,8] [--reps 3] [--cycle-conc 8] [--ptp-dir /usr/lib/cni]
//!              [--exec-reps 300] [--load-clients 8] [--load-iterations 500] [--no-disk-checkpoint]
//!              [--startup-pods 250] [--startup-reps 5] [--idle-seconds 30] [--criterion-dir target/criterion]
//!              [--glibc-plugin target/release/aws-cni] [--dockerfile Dockerfile] [--command "make bench"]
//!              [--previous results.json | --no-previous] [--burst-pods 110,27] [--burst-conc 16] [--burst-reps 3 | --no-burst]
//!              [--v6-pods 40] [--v6-conc 1,2,8] [--v6-reps 1 | --no-v6]
//! ```
//! ipamd is the one next to `cnibench` (or `IPAMD_BIN`). The report compares the run with the
//! previous run's results: `--previous`, by default the `--json` file as it is before this run
//! overwrites it. Exits 1 when the run fails, 3 when it completed with failed calls (the report
//! is written and says so).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use vpc_cni_bench::compare::Previous;
use vpc_cni_bench::report::ReportInputs;
use vpc_cni_bench::{self as bench, BenchConfig};

const USAGE: &str = "usage: cnibench run --plugin <aws-cni> --floor <kernel-floor> --peak-rss <peak-rss>\n\
  [--out FILE.md] [--json FILE.json] [--rss-pods N] [--pods N] [--conc 1,2,8] [--reps R] [--cycle-conc C] [--ptp-dir DIR] [--exec-reps N]\n\
  [--load-clients N] [--load-iterations N] [--no-disk-checkpoint] [--startup-pods N]\n\
  [--startup-reps N] [--idle-seconds N] [--criterion-dir DIR] [--glibc-plugin FILE] [--dockerfile FILE] [--command TEXT] [--quiet]\n\
  [--previous FILE.json | --no-previous]  (default: the --json file, read before it is overwritten)\n\
  [--burst-pods PREFIX,SECONDARY] [--burst-conc N] [--burst-reps R | --no-burst]  (the cold-node bursts, default 110,27 at 16, 3 runs)\n\
  [--v6-pods N] [--v6-conc LIST] [--v6-reps R | --no-v6]  (IPv6 pods, default min(--pods, 40) pods at the --conc list, 1 run)\n\
  Runs as root; builds a simulated node in network namespaces and removes it afterwards.";

struct Cli {
    config: BenchConfig,
    out: Option<PathBuf>,
    json: Option<PathBuf>,
    /// `None`: no comparison (`--no-previous`, or neither `--previous` nor `--json`).
    previous: Option<PathBuf>,
}

fn number(flag: &str, v: &str) -> anyhow::Result<usize> {
    v.parse::<usize>()
        .with_context(|| format!("{flag} wants a whole number, got {v:?}"))
}

/// A comma-separated list of whole numbers (`1,2,8`).
fn numbers(flag: &str, v: &str) -> anyhow::Result<Vec<usize>> {
    v.split(',').map(|c| number(flag, c.trim())).collect()
}

/// What the command line asks for.
enum Parsed {
    Run(Box<Cli>),
    Help,
}

fn parse(args: &[String]) -> anyhow::Result<Parsed> {
    if args
        .iter()
        .any(|a| matches!(a.as_str(), "--help" | "-h" | "help"))
    {
        return Ok(Parsed::Help);
    }
    if args.first().map(String::as_str) != Some("run") {
        bail!("{USAGE}");
    }
    let mut plugin = None;
    let mut floor = None;
    let mut peak_rss = None;
    let mut rest: Vec<(String, Option<String>)> = Vec::new();
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--no-disk-checkpoint" | "--quiet" | "--no-previous" | "--no-burst" | "--no-v6" => {
                rest.push((flag.clone(), None));
            }
            "--plugin" | "--floor" | "--peak-rss" | "--out" | "--json" | "--pods" | "--conc"
            | "--reps" | "--cycle-conc" | "--ptp-dir" | "--exec-reps" | "--load-clients"
            | "--load-iterations" | "--rss-pods" | "--startup-pods" | "--startup-reps"
            | "--idle-seconds" | "--criterion-dir" | "--glibc-plugin" | "--dockerfile"
            | "--command" | "--previous" | "--burst-pods" | "--burst-conc" | "--burst-reps"
            | "--v6-pods" | "--v6-conc" | "--v6-reps" => {
                let v = it
                    .next()
                    .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
                match flag.as_str() {
                    "--plugin" => plugin = Some(PathBuf::from(v)),
                    "--floor" => floor = Some(PathBuf::from(v)),
                    "--peak-rss" => peak_rss = Some(PathBuf::from(v)),
                    _ => rest.push((flag.clone(), Some(v.clone()))),
                }
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let plugin = plugin.with_context(|| format!("--plugin is required\n{USAGE}"))?;
    let floor = floor.with_context(|| format!("--floor is required\n{USAGE}"))?;
    let peak_rss = peak_rss.with_context(|| format!("--peak-rss is required\n{USAGE}"))?;
    let mut config = BenchConfig::full(plugin, floor, peak_rss);
    let mut out = None;
    let mut json = None;
    let mut previous = None;
    let mut no_previous = false;
    for (flag, v) in rest {
        let v = v.unwrap_or_default();
        match flag.as_str() {
            "--no-disk-checkpoint" => config.disk_checkpoint = false,
            "--no-burst" => config.burst = None,
            "--burst-pods" => {
                let (pd, secondary) = v.split_once(',').with_context(|| {
                    format!("{flag} wants PREFIX_PODS,SECONDARY_PODS, got {v:?}")
                })?;
                let b = config.burst.get_or_insert_with(Default::default);
                b.prefix_pods = number(&flag, pd.trim())?;
                b.secondary_pods = number(&flag, secondary.trim())?;
            }
            "--burst-reps" => {
                config.burst.get_or_insert_with(Default::default).reps = number(&flag, &v)?;
            }
            "--burst-conc" => {
                config
                    .burst
                    .get_or_insert_with(Default::default)
                    .concurrency = number(&flag, &v)?;
            }
            "--no-v6" => config.ipv6 = None,
            "--v6-pods" => {
                config.ipv6.get_or_insert_with(Default::default).pods = Some(number(&flag, &v)?);
            }
            "--v6-conc" => {
                config.ipv6.get_or_insert_with(Default::default).concurrency =
                    Some(numbers(&flag, &v)?);
            }
            "--v6-reps" => {
                config.ipv6.get_or_insert_with(Default::default).reps = number(&flag, &v)?;
            }
            "--quiet" => config.progress = false,
            "--out" => out = Some(PathBuf::from(v)),
            "--json" => json = Some(PathBuf::from(v)),
            "--previous" => previous = Some(PathBuf::from(v)),
            "--no-previous" => no_previous = true,
            "--pods" => config.pods = number(&flag, &v)?,
            "--conc" => config.concurrency = numbers(&flag, &v)?,
            "--reps" => config.reps = number(&flag, &v)?,
            "--cycle-conc" => config.cycle_concurrency = number(&flag, &v)?,
            "--ptp-dir" => config.ptp_dir = PathBuf::from(v),
            "--exec-reps" => config.exec_floor_reps = number(&flag, &v)?,
            "--load-clients" => config.load_clients = number(&flag, &v)?,
            "--load-iterations" => config.load_iterations = number(&flag, &v)?,
            "--rss-pods" => config.rss_pods = number(&flag, &v)?,
            "--startup-pods" => config.startup_pods = number(&flag, &v)?,
            "--startup-reps" => config.startup_reps = number(&flag, &v)?,
            "--idle-seconds" => {
                config.idle_window =
                    std::time::Duration::from_secs(u64::try_from(number(&flag, &v)?)?);
            }
            "--criterion-dir" => config.criterion_dir = Some(PathBuf::from(v)),
            "--glibc-plugin" => config.glibc_plugin = Some(PathBuf::from(v)),
            "--dockerfile" => config.dockerfile = PathBuf::from(v),
            "--command" => config.command = v,
            _ => unreachable!("flags are matched above"),
        }
    }
    if excludes_v6_sizes(args) {
        bail!("--no-v6 excludes --v6-pods, --v6-conc and --v6-reps\n{USAGE}");
    }
    if no_previous && previous.is_some() {
        bail!("--previous and --no-previous exclude each other\n{USAGE}");
    }
    let previous = if no_previous {
        None
    } else {
        previous.or_else(|| json.clone())
    };
    Ok(Parsed::Run(Box::new(Cli {
        config,
        out,
        json,
        previous,
    })))
}

/// Whether the command line both turns the IPv6 rounds off and sizes them.
fn excludes_v6_sizes(args: &[String]) -> bool {
    args.iter().any(|a| a == "--no-v6")
        && args
            .iter()
            .any(|a| matches!(a.as_str(), "--v6-pods" | "--v6-conc" | "--v6-reps"))
}

fn write(path: &PathBuf, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cli = match parse(&args) {
        Ok(Parsed::Run(c)) => c,
        Ok(Parsed::Help) => {
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    // Read now: this run overwrites the file (by default the previous run's is the same path).
    let previous = cli
        .previous
        .as_deref()
        .map_or(Previous::NotAsked, Previous::load);
    let results = match bench::run(&cli.config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cnibench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = bench::report::markdown(
        &results,
        &ReportInputs {
            json: cli.json.clone(),
            previous,
        },
    );
    let written = (|| {
        if let Some(json) = &cli.json {
            let text = serde_json::to_string_pretty(&results).context("encoding the results")?;
            write(json, &text)?;
            eprintln!("cnibench: raw results in {}", json.display());
        }
        match &cli.out {
            Some(out) => {
                write(out, &report)?;
                eprintln!("cnibench: report in {}", out.display());
            }
            None => {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(report.as_bytes())
                    .context("writing the report")?;
            }
        }
        anyhow::Ok(())
    })();
    if let Err(e) = written {
        eprintln!("cnibench: {e:#}");
        return ExitCode::FAILURE;
    }
    for t in &results.targets {
        eprintln!(
            "cnibench: {:<8} {} — {}",
            match t.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "n/a",
            },
            t.target,
            t.measured
        );
    }
    if let Some(v6) = &results.ipv6 {
        for f in v6.figures.iter().filter(|f| f.op != "DEL") {
            let r = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |r| format!("{r:.3}×"));
            eprintln!(
                "cnibench: IPv6 pods C={} {}: ours/ptp median {} (IPv4: {})",
                f.concurrency,
                f.op,
                r(f.ratio_median),
                r(f.ipv4_ratio_median)
            );
        }
    }
    if results.failures() > 0 {
        eprintln!(
            "cnibench: {} calls failed or left links behind (see the report)",
            results.failures()
        );
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(extra: &[&str]) -> anyhow::Result<Parsed> {
        let mut args: Vec<String> = ["run", "--plugin", "/p", "--floor", "/f", "--peak-rss", "/r"]
            .iter()
            .map(ToString::to_string)
            .collect();
        args.extend(extra.iter().map(ToString::to_string));
        parse(&args)
    }

    fn previous(extra: &[&str]) -> Option<PathBuf> {
        match run_args(extra).unwrap() {
            Parsed::Run(cli) => cli.previous,
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn the_previous_run_is_the_json_file_unless_told_otherwise() {
        assert_eq!(
            previous(&["--json", "/t/results.json"]),
            Some(PathBuf::from("/t/results.json"))
        );
        assert_eq!(
            previous(&["--json", "/t/r.json", "--previous", "/old.json"]),
            Some(PathBuf::from("/old.json"))
        );
        assert_eq!(previous(&["--json", "/t/r.json", "--no-previous"]), None);
        assert_eq!(previous(&[]), None);
        assert!(run_args(&["--previous", "/a", "--no-previous"]).is_err());
    }

    fn ipv6(extra: &[&str]) -> Option<vpc_cni_bench::ipv6::Ipv6Config> {
        match run_args(extra).unwrap() {
            Parsed::Run(cli) => cli.config.ipv6,
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn ipv6_rounds_follow_the_ipv4_ones_unless_sized_or_turned_off() {
        let default = ipv6(&["--pods", "40", "--conc", "1,8"]).unwrap();
        assert_eq!(default, vpc_cni_bench::ipv6::Ipv6Config::default());
        assert_eq!(
            (default.pods(40), default.concurrency(&[1, 8])),
            (40, &[1, 8][..])
        );
        let sized = ipv6(&["--v6-pods", "20", "--v6-conc", "1, 8", "--v6-reps", "2"]).unwrap();
        assert_eq!(
            (sized.pods, sized.concurrency, sized.reps),
            (Some(20), Some(vec![1, 8]), 2)
        );
        assert_eq!(ipv6(&["--no-v6"]), None);
        assert!(run_args(&["--no-v6", "--v6-pods", "3"]).is_err());
        assert!(run_args(&["--v6-conc", "1,x"]).is_err());
    }

    #[test]
    fn help_is_not_an_error() {
        assert!(matches!(parse(&["--help".into()]).unwrap(), Parsed::Help));
        assert!(matches!(run_args(&["-h"]).unwrap(), Parsed::Help));
        assert!(parse(&["walk".into()]).is_err());
    }
}
