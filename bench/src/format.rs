//! How the report writes figures: units that stay readable, three significant digits, ratios,
//! verdicts, paths relative to the workspace.

/// A path relative to the workspace when it is inside it (reports are read in the repository).
pub(super) fn shown(path: &std::path::Path) -> String {
    let ws = test_support::prereqs::workspace_dir();
    path.strip_prefix(&ws).unwrap_or(path).display().to_string()
}

/// A duration given in ns, in the unit that keeps it readable.
pub(super) fn duration_text(ns: f64) -> String {
    if ns < 10_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 10_000_000.0 {
        format!("{} µs", f2(ns / 1e3))
    } else {
        format!("{} ms", f2(ns / 1e6))
    }
}

/// A rate per second with an SI prefix.
pub(super) fn rate_text(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1} k", per_s / 1e3)
    } else {
        f2(per_s)
    }
}

/// A size in bytes, in KiB below 1 MiB.
pub(super) fn size_text(bytes: u64) -> String {
    // `mib` takes KiB.
    if bytes < 1024 * 1024 {
        format!("{} KiB", f2(mib(bytes)))
    } else {
        format!("{} MiB", f2(mib(bytes / 1024)))
    }
}

/// KiB in MiB.
pub(super) fn mib(kib: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let v = kib as f64 / 1024.0;
    v
}

/// Three significant digits (no decimals from 100 on).
pub(super) fn f2(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A ratio as `0.26×`, a dash when there is none.
pub(super) fn ratio_text(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"))
}

/// A ratio as [`ratio_text`] writes it, but with two significant digits below 0.1 (`0.0021×`),
/// where two decimals would round it to nothing (IPv6 ADD against ptp's address detection).
pub(super) fn fine_ratio_text(r: Option<f64>) -> String {
    match r {
        Some(r) if r > 0.0 && r < 0.1 => {
            // r is in (0, 0.1): its decimal exponent is negative and finite; the second
            // significant digit is one place after it (at most 12 decimals).
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let decimals = ((-r.log10().floor()) as usize + 1).min(12);
            format!("{r:.decimals$}×")
        }
        _ => ratio_text(r),
    }
}

/// A rate, or a dash when it was not measured (0).
pub(super) fn rate_or_dash(v: f64) -> String {
    if v > 0.0 { f2(v) } else { "–".into() }
}

/// Per-repetition medians, `a / b / c`.
pub(super) fn medians_text(v: &[f64]) -> String {
    v.iter().map(|m| f2(*m)).collect::<Vec<_>>().join(" / ")
}

/// A target's verdict.
pub(super) fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_stay_readable() {
        assert_eq!(duration_text(522.4), "522 ns");
        assert_eq!(duration_text(209_144.0), "209 µs");
        assert_eq!(duration_text(248_986_264.0), "249 ms");
        assert_eq!(rate_text(1_910_000.0), "1.91 M");
        assert_eq!(rate_text(4_780.0), "4.8 k");
        assert_eq!(rate_text(98.6), "98.6");
        assert_eq!(size_text(2048), "2.00 KiB");
        assert_eq!(size_text(3 * 1024 * 1024), "3.00 MiB");
    }

    #[test]
    fn number_formatting_keeps_three_significant_digits() {
        assert_eq!(f2(1.23456), "1.23");
        assert_eq!(f2(23.456), "23.5");
        assert_eq!(f2(234.56), "235");
        assert_eq!(ratio_text(Some(0.256)), "0.26×");
        assert_eq!(ratio_text(None), "–");
    }

    #[test]
    fn small_ratios_keep_two_significant_digits() {
        assert_eq!(fine_ratio_text(Some(0.002_13)), "0.0021×");
        assert_eq!(fine_ratio_text(Some(0.06)), "0.060×");
        assert_eq!(fine_ratio_text(Some(0.01)), "0.010×");
        assert_eq!(fine_ratio_text(Some(0.256)), "0.26×");
        assert_eq!(fine_ratio_text(Some(1.5)), "1.50×");
        assert_eq!(fine_ratio_text(Some(0.0)), "0.00×");
        assert_eq!(fine_ratio_text(None), "–");
    }
}
