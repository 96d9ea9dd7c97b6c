//! The comparison with the previous run, read from the JSON that run left (never from figures
//! kept in the source): only targets with the same key, i.e. measured the same way, are
//! compared, then the IPv6 pods' ratios when both runs measured them (older results have none).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::BenchResults;
use super::format::{fine_ratio_text, shown, verdict};
use super::ipv6::Ipv6Figure;

/// The previous run, as its JSON (`cnibench run --json`) left it.
#[derive(Debug, Clone)]
pub enum Previous {
    /// No comparison was asked for.
    NotAsked,
    /// The file was not there or could not be used, and why.
    Unusable {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Its results.
    Loaded {
        /// The file.
        path: PathBuf,
        /// Its contents.
        results: Value,
    },
}

impl Previous {
    /// Reads the previous run's results from `path` (call before this run overwrites it).
    pub fn load(path: &Path) -> Self {
        let unusable = |why: String| Self::Unusable {
            path: path.to_owned(),
            why,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => match serde_json::from_str::<Value>(&text) {
                Ok(results) if results.is_object() => Self::Loaded {
                    path: path.to_owned(),
                    results,
                },
                Ok(_) => unusable("it is not a JSON object".into()),
                Err(e) => unusable(format!("it is not valid JSON ({e})")),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                unusable("there is no such file (no earlier run)".into())
            }
            Err(e) => unusable(e.to_string()),
        }
    }
}

/// The change from `before` to `now` in percent, signed.
fn change_text(before: Option<f64>, now: Option<f64>) -> String {
    match (before, now) {
        (Some(b), Some(n)) if b != 0.0 && b.is_finite() && n.is_finite() => {
            format!("{:+.0} %", (n / b - 1.0) * 100.0)
        }
        _ => "–".into(),
    }
}

/// The section comparing this run's targets with the previous run's (empty when no comparison
/// was asked for). Only targets with the same key, i.e. measured the same way, are compared.
pub fn comparison_markdown(res: &BenchResults, previous: &Previous) -> String {
    let mut s = String::new();
    let w = &mut s;
    let (path, prev) = match previous {
        Previous::NotAsked => return s,
        Previous::Unusable { path, why } => {
            let _ = writeln!(
                w,
                "\n## Compared with the previous run\n\nNothing to compare: the previous run's results `{}` could not be used: {why}.",
                shown(path)
            );
            return s;
        }
        Previous::Loaded { path, results } => (path, results),
    };
    let _ = writeln!(w, "\n## Compared with the previous run\n");
    previous_run(w, res, path, prev);
    let Some(before) = prev["targets"].as_array() else {
        let _ = writeln!(
            w,
            "Those results carry no evaluated targets (an older driver wrote them), so there is nothing to compare."
        );
        return s;
    };
    target_changes(w, res, before);
    if let Some(v6) = &res.ipv6 {
        ipv6_changes(w, &v6.figures, prev);
    }
    s
}

/// This run's IPv6 ratios (ADD, DEL + netns removal) next to the previous run's, by
/// concurrency; a sentence when the previous run measured no IPv6 pods.
fn ipv6_changes(w: &mut String, now: &[Ipv6Figure], prev: &Value) {
    let Some(before) = prev["ipv6"]["figures"].as_array() else {
        let _ = writeln!(
            w,
            "\nThe previous run measured no IPv6 pods, so their figures have nothing to compare with."
        );
        return;
    };
    let _ = writeln!(
        w,
        "\n| IPv6 pods, ours/ptp median | previous run | this run | change |"
    );
    let _ = writeln!(w, "| --- | ---: | ---: | ---: |");
    for f in now.iter().filter(|f| f.op != "DEL") {
        let p = before
            .iter()
            .find(|p| {
                p["concurrency"].as_u64() == u64::try_from(f.concurrency).ok()
                    && p["op"].as_str() == Some(f.op.as_str())
            })
            .and_then(|p| p["ratio_median"].as_f64());
        let _ = writeln!(
            w,
            "| {} (C={}) | {} | {} | {} |",
            f.op,
            f.concurrency,
            fine_ratio_text(p),
            fine_ratio_text(f.ratio_median),
            change_text(p, f.ratio_median)
        );
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("–").to_owned()
}

/// Which run the previous figures come from, on what machine, and both runs' noise.
fn previous_run(w: &mut String, res: &BenchResults, path: &Path, prev: &Value) {
    let m = &prev["machine"];
    let _ = writeln!(
        w,
        "The previous run's figures come from its results, `{}`: `{}` on {}, {} CPUs ({}), Linux {}{}. Only targets measured the same way in both runs are compared; compare on a quiet machine, and ratios rather than absolute times.\n",
        shown(path),
        text(&prev["command"]),
        text(&prev["date"]),
        m["cpus"]
            .as_u64()
            .map_or_else(|| "–".into(), |c| c.to_string()),
        text(&m["cpu_model"]),
        text(&m["kernel"]),
        if m["cpus"].as_u64() == u64::try_from(res.machine.cpus).ok()
            && m["kernel"].as_str() == Some(res.machine.kernel.as_str())
        {
            ""
        } else {
            " — another machine or kernel than this run's"
        }
    );
    let prev_noise = prev["rounds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["add_other_cpu_pct"].as_f64())
        .reduce(f64::max);
    let noise = res
        .rounds
        .iter()
        .map(|r| r.add_other_cpu_pct)
        .reduce(f64::max);
    if let (Some(p), Some(n)) = (prev_noise, noise) {
        let _ = writeln!(
            w,
            "Noise (other% during the ADD phases): at most {p:.1} % of the machine in the previous run, {n:.1} % in this one.\n"
        );
    }
}

/// Each target of both runs with both figures and the change; those of one run only, named.
fn target_changes(w: &mut String, res: &BenchResults, before: &[Value]) {
    let find = |key: &str| before.iter().find(|t| t["key"].as_str() == Some(key));
    let _ = writeln!(w, "| target | previous run | this run | change |");
    let _ = writeln!(w, "| --- | --- | --- | ---: |");
    let mut new = Vec::new();
    for t in &res.targets {
        let Some(p) = find(&t.key) else {
            new.push(t.target.as_str());
            continue;
        };
        let pv = |met: Option<bool>| verdict(met).trim_matches('*').to_owned();
        let _ = writeln!(
            w,
            "| {} | {} ({}) | {} ({}) | {} |",
            t.target,
            text(&p["measured"]),
            pv(p["met"].as_bool()),
            t.measured,
            pv(t.met),
            change_text(p["value"].as_f64(), t.value)
        );
    }
    let gone: Vec<&str> = before
        .iter()
        .filter(|p| {
            p["key"]
                .as_str()
                .is_none_or(|k| !res.targets.iter().any(|t| t.key == k))
        })
        .filter_map(|p| p["target"].as_str())
        .collect();
    if !new.is_empty() {
        let _ = writeln!(
            w,
            "\nNot in the previous run (new, or measured another way): {}.",
            new.join("; ")
        );
    }
    if !gone.is_empty() {
        let _ = writeln!(
            w,
            "\nIn the previous run only (no longer measured, or measured another way now): {}.",
            gone.join("; ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_signed_percentages() {
        assert_eq!(change_text(Some(0.5), Some(0.25)), "-50 %");
        assert_eq!(change_text(Some(2.0), Some(3.0)), "+50 %");
        assert_eq!(change_text(None, Some(3.0)), "–");
        assert_eq!(change_text(Some(0.0), Some(3.0)), "–");
    }

    fn figure(conc: usize, op: &str, r: f64) -> Ipv6Figure {
        Ipv6Figure {
            concurrency: conc,
            op: op.into(),
            ours: None,
            ptp: None,
            ratio_median: Some(r),
            ratio_p99: None,
            ipv4_ratio_median: None,
            failures: 0,
        }
    }

    #[test]
    fn ipv6_ratios_are_compared_when_both_runs_have_them() {
        let now = [
            figure(1, "ADD", 0.002),
            figure(1, "DEL", 0.1),
            figure(1, "DEL + netns removal", 1.2),
            figure(8, "ADD", 0.01),
        ];
        let prev = serde_json::json!({"ipv6": {"figures": [
            {"concurrency": 1, "op": "ADD", "ratio_median": 0.004},
            {"concurrency": 1, "op": "DEL + netns removal", "ratio_median": null},
        ]}});
        let mut w = String::new();
        ipv6_changes(&mut w, &now, &prev);
        assert!(
            w.contains("| ADD (C=1) | 0.0040× | 0.0020× | -50 % |"),
            "{w}"
        );
        assert!(
            w.contains("| DEL + netns removal (C=1) | – | 1.20× | – |"),
            "{w}"
        );
        assert!(w.contains("| ADD (C=8) | – | 0.010× | – |"), "{w}");
        // Bare DEL is shown in the report's table, not compared (as the targets do).
        assert!(!w.contains("| DEL (C=1)"), "{w}");
        // Results of a run before IPv6 was measured: said so, nothing compared.
        let mut w = String::new();
        ipv6_changes(&mut w, &now, &serde_json::json!({"targets": []}));
        assert!(w.contains("measured no IPv6 pods"), "{w}");
        assert!(!w.contains('|'), "{w}");
    }

    #[test]
    fn a_missing_or_broken_previous_file_is_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("results.json");
        match Previous::load(&missing) {
            Previous::Unusable { why, .. } => assert!(why.contains("no such file"), "{why}"),
            other => panic!("{other:?}"),
        }
        std::fs::write(&missing, "{not json").unwrap();
        match Previous::load(&missing) {
            Previous::Unusable { why, .. } => assert!(why.contains("not valid JSON"), "{why}"),
            other => panic!("{other:?}"),
        }
        std::fs::write(&missing, r#"{"date": "x", "targets": []}"#).unwrap();
        assert!(matches!(Previous::load(&missing), Previous::Loaded { .. }));
    }
}
