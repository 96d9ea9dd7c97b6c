"""EC2's response times and the EC2 call log as ec2_latency.py adds them to the launcher, checked
through boto3 (test-support/tests/ec2_latency.rs runs this with the pinned moto).

Most checks run the launcher's patched server in this process and set ec2_latency's
configuration directly; the variables themselves (delays, call log, bad values) are checked on
the launcher run as moto's tests run it, a child process on 127.0.0.1.

Timing checks use wide margins: a delayed call takes at least its delay, an undelayed one less
than half of it.

Usage: python3 ec2_latency_test.py LAUNCHER_DIR
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

LAUNCHER_DIR = sys.argv.pop(1) if len(sys.argv) > 1 else "."
sys.path.insert(0, LAUNCHER_DIR)

import boto3  # noqa: E402
import ec2_latency  # noqa: E402
import moto_server  # noqa: E402,F401  (installs the launcher's patches)
from botocore.exceptions import ClientError  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

DELAY = 0.4
QUICK = 0.2
START_TIMEOUT = 45


def _client(endpoint):
    return boto3.client(
        "ec2",
        region_name="us-west-2",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def _timed(call, **kwargs):
    start = time.monotonic()
    result = call(**kwargs)
    return time.monotonic() - start, result


class InProcess(unittest.TestCase):
    """The wrapper on the launcher's server in this process, configured per test."""

    @classmethod
    def setUpClass(cls):
        cls.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        cls.server.start()
        host, port = cls.server.get_host_and_port()
        cls.endpoint = f"http://{host}:{port}"
        cls.ec2 = _client(cls.endpoint)

    @classmethod
    def tearDownClass(cls):
        ec2_latency.configure({})
        cls.server.stop()

    def setUp(self):
        ec2_latency.configure({})
        # Connections and moto's first answers cost time once; warm them before timing.
        self.ec2.describe_vpcs()

    def _configure(self, latency, clients=None):
        env = {ec2_latency.LATENCY_ENV: latency}
        if clients is not None:
            env[ec2_latency.CLIENTS_ENV] = clients
        ec2_latency.configure(env)

    def test_a_configured_action_waits_and_others_do_not(self):
        self._configure(f'{{"DescribeVpcs": {DELAY}}}')
        took, _ = _timed(self.ec2.describe_vpcs)
        self.assertGreaterEqual(took, DELAY)
        took, _ = _timed(self.ec2.describe_subnets)
        self.assertLess(took, QUICK)

    def test_the_default_delays_every_other_action(self):
        self._configure(f'{{"*": {DELAY}, "DescribeVpcs": 0}}')
        took, _ = _timed(self.ec2.describe_subnets)
        self.assertGreaterEqual(took, DELAY)
        took, _ = _timed(self.ec2.describe_vpcs)
        self.assertLess(took, QUICK)

    def test_form_bodies_still_parse_after_the_action_was_read(self):
        self._configure('{"*": 0.01}')
        vpc = self.ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
        subnet = self.ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.0.0/24")["Subnet"]["SubnetId"]
        enis = [
            self.ec2.create_network_interface(SubnetId=subnet, Description=f"eni {i}")[
                "NetworkInterface"
            ]["NetworkInterfaceId"]
            for i in range(3)
        ]
        self.ec2.create_tags(Resources=[enis[1]], Tags=[{"Key": "picked", "Value": "yes"}])
        found = self.ec2.describe_network_interfaces(
            Filters=[
                {"Name": "subnet-id", "Values": [subnet]},
                {"Name": "tag:picked", "Values": ["yes"]},
            ]
        )["NetworkInterfaces"]
        self.assertEqual([e["NetworkInterfaceId"] for e in found], [enis[1]])
        self.assertEqual(found[0]["TagSet"], [{"Key": "picked", "Value": "yes"}])
        found = self.ec2.describe_network_interfaces(NetworkInterfaceIds=[enis[2]])
        self.assertEqual(found["NetworkInterfaces"][0]["Description"], "eni 2")

    def test_a_get_request_is_delayed_by_its_query_action(self):
        self._configure(f'{{"DescribeVpcs": {DELAY}}}')
        request = urllib.request.Request(
            f"{self.endpoint}/?Action=DescribeVpcs&Version=2016-11-15",
            headers={
                "Authorization": "AWS4-HMAC-SHA256 "
                "Credential=test/20240101/us-west-2/ec2/aws4_request, "
                "SignedHeaders=host, Signature=0"
            },
        )
        start = time.monotonic()
        with urllib.request.urlopen(request, timeout=30) as reply:
            body = reply.read().decode()
        self.assertGreaterEqual(time.monotonic() - start, DELAY)
        self.assertIn("DescribeVpcsResponse", body)

    def test_only_clients_inside_the_cidrs_wait(self):
        self._configure(f'{{"*": {DELAY}}}', "10.0.0.0/8, 192.168.0.0/16")
        took, _ = _timed(self.ec2.describe_vpcs)
        self.assertLess(took, QUICK)
        self._configure(f'{{"*": {DELAY}}}', "10.0.0.0/8,127.0.0.0/8")
        took, _ = _timed(self.ec2.describe_vpcs)
        self.assertGreaterEqual(took, DELAY)

    def test_concurrent_calls_wait_together(self):
        # Serialized delays would take 3 x DELAY; overlapping ones about one.
        self._configure(f'{{"DescribeVpcs": {DELAY}}}')
        clients = [_client(self.endpoint) for _ in range(3)]
        for client in clients:
            client.describe_subnets()
        errors = []

        def call(client):
            try:
                client.describe_vpcs()
            except Exception as err:  # noqa: BLE001 (reported below)
                errors.append(err)

        threads = [threading.Thread(target=call, args=(c,)) for c in clients]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - start
        self.assertEqual(errors, [])
        self.assertGreaterEqual(took, DELAY)
        self.assertLess(took, 2 * DELAY)


class Launcher(unittest.TestCase):
    """The launcher as a child process, configured by the variables."""

    def _env(self, extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("VCNI_EC2_")}
        env.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", **extra)
        return env

    def _run(self, extra):
        """Runs the launcher until it exits (a bad configuration) and returns (code, stderr)."""
        port = _free_port()
        done = subprocess.run(
            [sys.executable, os.path.join(LAUNCHER_DIR, "moto_server.py"), "127.0.0.1", str(port)],
            env=self._env(extra),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        return done.returncode, done.stderr

    def _start(self, extra):
        """Starts the launcher; returns its endpoint and its log file (stopped on cleanup)."""
        port = _free_port()
        log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.addCleanup(os.unlink, log.name)
        process = subprocess.Popen(
            [sys.executable, os.path.join(LAUNCHER_DIR, "moto_server.py"), "127.0.0.1", str(port)],
            env=self._env(extra),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()

        def stop():
            process.terminate()
            process.wait(timeout=10)

        self.addCleanup(stop)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                self.fail(f"launcher exited ({process.returncode}):\n{_read(log.name)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.fail(f"launcher not listening:\n{_read(log.name)}")
                time.sleep(0.05)
        return f"http://127.0.0.1:{port}", log.name

    def test_the_variables_delay_and_log_every_ec2_call(self):
        endpoint, log = self._start(
            {
                ec2_latency.LATENCY_ENV: f'{{"DescribeVpcs": {DELAY}}}',
                ec2_latency.CLIENTS_ENV: "127.0.0.0/8",
                ec2_latency.CALL_LOG_ENV: "1",
            }
        )
        ec2 = _client(endpoint)
        took, _ = _timed(ec2.describe_vpcs)
        self.assertGreaterEqual(took, DELAY)
        took, _ = _timed(ec2.describe_subnets)
        self.assertLess(took, QUICK)
        with self.assertRaises(ClientError):
            ec2.describe_network_interfaces(NetworkInterfaceIds=["eni-00000000000000000"])
        calls = _call_lines(log)
        self.assertEqual(
            calls,
            [
                f"vcni-ec2-call action=DescribeVpcs client=127.0.0.1 delay_ms={round(DELAY * 1000)} status=200",
                "vcni-ec2-call action=DescribeSubnets client=127.0.0.1 delay_ms=0 status=200",
                "vcni-ec2-call action=DescribeNetworkInterfaces client=127.0.0.1 delay_ms=0 status=400",
            ],
        )

    def test_without_the_call_log_nothing_is_logged(self):
        endpoint, log = self._start({ec2_latency.LATENCY_ENV: '{"DescribeVpcs": 0.01}'})
        _client(endpoint).describe_vpcs()
        self.assertIn("POST / HTTP/1.1", _read(log))
        self.assertEqual(_call_lines(log), [])

    def test_bad_values_stop_the_launcher_naming_the_variable(self):
        cases = [
            (ec2_latency.LATENCY_ENV, "{not json"),
            (ec2_latency.LATENCY_ENV, '{"DescribeVpcs": -0.1}'),
            (ec2_latency.LATENCY_ENV, '{"DescribeVpcs": "0.2"}'),
            (ec2_latency.LATENCY_ENV, '{"*": true}'),
            (ec2_latency.LATENCY_ENV, "[0.2]"),
            (ec2_latency.CLIENTS_ENV, "10.0.0.0/33"),
            (ec2_latency.CALL_LOG_ENV, "yes"),
        ]
        for name, value in cases:
            with self.subTest(name=name, value=value):
                code, stderr = self._run({name: value})
                self.assertNotEqual(code, 0, stderr)
                self.assertIn(name, stderr)
                self.assertNotIn("Traceback", stderr)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _call_lines(path):
    return [line for line in _read(path).splitlines() if line.startswith(ec2_latency.CALL_LOG_TAG)]


if __name__ == "__main__":
    unittest.main(verbosity=2)
