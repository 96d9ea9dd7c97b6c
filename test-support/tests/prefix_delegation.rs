//! The EC2 prefix delegation the moto launcher adds (test-support/src/prefix_delegation.py),
//! checked by its Python tests through boto3 against the launcher's patched server, with the
//! pinned moto. Fails when that Python is missing: the end-to-end prefix-delegation tests rely
//! on this extension.

const PYTHON_TESTS: &str = include_str!("prefix_delegation_test.py");

#[test]
fn moto_serves_ipv4_prefixes_as_ec2_does() {
    if let Err(report) =
        test_support::moto::run_launcher_checks("prefix_delegation_test.py", PYTHON_TESTS)
    {
        panic!("prefix delegation checks: {report}");
    }
}
