//! EC2's response times and the EC2 call log the moto launcher adds
//! (test-support/src/ec2_latency.py), checked by its Python tests through boto3 against the
//! launcher's patched server, with the pinned moto. Fails when that Python is missing: the
//! benchmarks that replay EC2's latency rely on this extension.

use std::process::Command;

const PYTHON_TESTS: &str = include_str!("ec2_latency_test.py");

#[test]
fn moto_answers_in_ec2_time_and_logs_ec2_calls() {
    let python = test_support::prereqs::python_with_moto().expect("moto's Python");
    let dir = tempfile::tempdir().expect("temporary directory");
    test_support::moto::write_launcher(dir.path()).expect("launcher written");
    let tests = dir.path().join("ec2_latency_test.py");
    std::fs::write(&tests, PYTHON_TESTS).expect("tests written");
    let out = Command::new(&python)
        .arg(&tests)
        .arg(dir.path())
        .env("HOME", dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python runs");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "EC2 latency tests failed:\n{report}");
    // "OK (skipped=N)" would mean a check did not run.
    assert!(
        report.trim_end().ends_with("\nOK"),
        "not every check ran:\n{report}"
    );
}
