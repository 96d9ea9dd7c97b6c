//! The EC2 IPv6 prefixes the moto launcher adds (test-support/src/ipv6_prefixes.py), checked by
//! its Python tests through boto3 against the launcher's patched server, with the pinned moto.
//! Fails when that Python is missing: the IPv6 tests rely on this extension.

const PYTHON_TESTS: &str = include_str!("ipv6_prefixes_test.py");

#[test]
fn moto_serves_ipv6_prefixes_as_ec2_does() {
    if let Err(report) =
        test_support::moto::run_launcher_checks("ipv6_prefixes_test.py", PYTHON_TESTS)
    {
        panic!("IPv6 prefix checks: {report}");
    }
}
