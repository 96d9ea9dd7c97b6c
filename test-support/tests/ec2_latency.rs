//! EC2's response times and the EC2 call log the moto launcher adds
//! (test-support/src/ec2_latency.py), checked by its Python tests through boto3 against the
//! launcher's patched server, with the pinned moto. Fails when that Python is missing: the
//! benchmarks that replay EC2's latency rely on this extension.

const PYTHON_TESTS: &str = include_str!("ec2_latency_test.py");

#[test]
fn moto_answers_in_ec2_time_and_logs_ec2_calls() {
    if let Err(report) =
        test_support::moto::run_launcher_checks("ec2_latency_test.py", PYTHON_TESTS)
    {
        panic!("EC2 latency checks: {report}");
    }
}
