"""EC2 prefix delegation as prefix_delegation.py adds it to moto, checked through boto3 against the
launcher's server (test-support/tests/prefix_delegation.rs runs this with the pinned moto).

Usage: python3 prefix_delegation_test.py LAUNCHER_DIR
"""

import ipaddress
import sys
import unittest

LAUNCHER_DIR = sys.argv.pop(1) if len(sys.argv) > 1 else "."
sys.path.insert(0, LAUNCHER_DIR)

import boto3  # noqa: E402
import moto_server  # noqa: E402,F401  (installs the launcher's patches)
from botocore.exceptions import ClientError  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402


class PrefixDelegation(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        cls.server.start()
        host, port = cls.server.get_host_and_port()
        cls.ec2 = boto3.client(
            "ec2",
            region_name="us-west-2",
            endpoint_url=f"http://{host}:{port}",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def setUp(self):
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        self.vpc = vpc
        self.cidr = f"10.0.{self._next_octet()}.0/24"
        self.subnet = self._subnet(self.cidr)

    _octet = 0

    @classmethod
    def _next_octet(cls):
        cls._octet += 1
        return cls._octet

    def _subnet(self, cidr):
        return self.ec2.create_subnet(VpcId=self.vpc, CidrBlock=cidr)["Subnet"]["SubnetId"]

    def _net(self):
        return ipaddress.ip_network(self.cidr)

    def _block(self, index):
        """The index-th /28 of the test's subnet, as text."""
        return str(list(self._net().subnets(new_prefix=28))[index])

    def _eni(self, eni_id):
        return self.ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])[
            "NetworkInterfaces"
        ][0]

    def _prefixes(self, eni_id):
        return sorted(p["Ipv4Prefix"] for p in self._eni(eni_id).get("Ipv4Prefixes", []))

    def _available(self, subnet=None):
        return self.ec2.describe_subnets(SubnetIds=[subnet or self.subnet])["Subnets"][0][
            "AvailableIpAddressCount"
        ]

    def _error(self, call, **kwargs):
        with self.assertRaises(ClientError) as caught:
            call(**kwargs)
        return caught.exception.response["Error"]["Code"]

    def _create(self, **kwargs):
        return self.ec2.create_network_interface(SubnetId=self.subnet, **kwargs)[
            "NetworkInterface"
        ]

    def test_create_with_prefix_count_skips_reserved_and_used_blocks(self):
        eni = self._create(Ipv4PrefixCount=1)
        # .0-.3 are AWS's and .4 is the ENI's primary: the first block is not free.
        self.assertEqual(eni["PrivateIpAddress"], str(self._net()[4]))
        self.assertEqual([p["Ipv4Prefix"] for p in eni["Ipv4Prefixes"]], [self._block(1)])
        self.assertEqual(self._prefixes(eni["NetworkInterfaceId"]), [self._block(1)])
        self.assertEqual(self._available(), 256 - 5 - 1 - 16)

    def test_assign_answers_new_prefixes_and_secondary_addresses_avoid_them(self):
        eni = self._create()["NetworkInterfaceId"]
        reply = self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4PrefixCount=2)
        new = sorted(p["Ipv4Prefix"] for p in reply["AssignedIpv4Prefixes"])
        self.assertEqual(new, [self._block(1), self._block(2)])
        self.assertEqual(self._prefixes(eni), new)
        self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, SecondaryPrivateIpAddressCount=20)
        addresses = [
            ipaddress.ip_address(a["PrivateIpAddress"])
            for a in self._eni(eni)["PrivateIpAddresses"]
        ]
        self.assertEqual(len(addresses), 21)
        for block in new:
            net = ipaddress.ip_network(block)
            self.assertFalse(any(a in net for a in addresses), f"{addresses} overlap {block}")
        self.assertEqual(self._available(), 256 - 5 - 21 - 32)

    def test_requests_are_whole_or_nothing(self):
        eni = self._create()["NetworkInterfaceId"]
        # Blocks 1..14 are free (block 0 holds AWS's and the primary, block 15 the last address).
        self.assertEqual(
            self._error(
                self.ec2.assign_private_ip_addresses, NetworkInterfaceId=eni, Ipv4PrefixCount=15
            ),
            "InsufficientCidrBlocks",
        )
        self.assertEqual(self._prefixes(eni), [])
        self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4PrefixCount=14)
        self.assertEqual(len(self._prefixes(eni)), 14)
        self.assertEqual(
            self._error(self._create, Ipv4PrefixCount=1), "InsufficientCidrBlocks"
        )
        self.assertEqual(len(self.ec2.describe_network_interfaces()["NetworkInterfaces"]) > 0, True)
        enis = self.ec2.describe_network_interfaces(
            Filters=[{"Name": "subnet-id", "Values": [self.subnet]}]
        )["NetworkInterfaces"]
        self.assertEqual(len(enis), 1, "a failed create leaves no ENI")

    def test_a_fragmented_subnet_has_addresses_but_no_aligned_block(self):
        eni = self._create()["NetworkInterfaceId"]
        net = self._net()
        # One explicit address in every /28 block: 224 addresses stay free, no block does.
        pinned = [str(net[16 * k + 9]) for k in range(16)]
        self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=pinned)
        self.assertGreater(self._available(), 200)
        code = self._error(
            self.ec2.assign_private_ip_addresses, NetworkInterfaceId=eni, Ipv4PrefixCount=1
        )
        self.assertEqual(code, "InsufficientCidrBlocks")
        # Secondary addresses still come: that is what ipamd falls back to.
        self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, SecondaryPrivateIpAddressCount=4)
        self.assertEqual(len(self._eni(eni)["PrivateIpAddresses"]), 1 + 16 + 4)
        # Freeing one block's pinned address makes that block assignable again.
        self.ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=[pinned[7]])
        self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4PrefixCount=1)
        self.assertEqual(self._prefixes(eni), [self._block(7)])

    def test_prefixes_and_addresses_are_never_mixed(self):
        eni = self._create()["NetworkInterfaceId"]
        combos = [
            dict(Ipv4PrefixCount=1, SecondaryPrivateIpAddressCount=1),
            dict(Ipv4PrefixCount=1, Ipv4Prefixes=[self._block(3)]),
            dict(Ipv4PrefixCount=1, PrivateIpAddresses=[str(self._net()[100])]),
        ]
        for combo in combos:
            code = self._error(
                self.ec2.assign_private_ip_addresses, NetworkInterfaceId=eni, **combo
            )
            self.assertEqual(code, "InvalidParameterCombination", combo)
        code = self._error(self._create, Ipv4PrefixCount=1, SecondaryPrivateIpAddressCount=2)
        self.assertEqual(code, "InvalidParameterCombination")
        self.assertEqual(self._prefixes(eni), [])
        self.assertEqual(len(self._eni(eni)["PrivateIpAddresses"]), 1)

    def test_explicit_prefixes_are_validated(self):
        eni = self._create()["NetworkInterfaceId"]
        self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4Prefixes=[self._block(5)])
        self.assertEqual(self._prefixes(eni), [self._block(5)])
        net = self._net()
        for bad in [self._block(5), self._block(0), f"{net[8]}/28", f"{net[32]}/27", "10.9.0.0/28"]:
            code = self._error(
                self.ec2.assign_private_ip_addresses, NetworkInterfaceId=eni, Ipv4Prefixes=[bad]
            )
            self.assertEqual(code, "InvalidParameterValue", bad)
        self.assertEqual(self._prefixes(eni), [self._block(5)])

    def test_unassign_frees_and_rejects_prefixes_not_held(self):
        eni = self._create()["NetworkInterfaceId"]
        self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4PrefixCount=3)
        held = self._prefixes(eni)
        code = self._error(
            self.ec2.unassign_private_ip_addresses,
            NetworkInterfaceId=eni,
            Ipv4Prefixes=[held[0], self._block(9)],
        )
        self.assertEqual(code, "InvalidParameterValue")
        self.assertEqual(self._prefixes(eni), held)
        self.ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4Prefixes=[held[1]])
        self.assertEqual(self._prefixes(eni), [held[0], held[2]])
        self.assertEqual(self._available(), 256 - 5 - 1 - 32)
        # The freed block is the lowest free one again.
        self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4PrefixCount=1)
        self.assertEqual(self._prefixes(eni), held)

    def test_deleting_the_eni_frees_its_prefixes(self):
        eni = self._create(Ipv4PrefixCount=2)["NetworkInterfaceId"]
        self.assertEqual(self._available(), 256 - 5 - 1 - 32)
        self.ec2.delete_network_interface(NetworkInterfaceId=eni)
        self.assertEqual(self._available(), 256 - 5)
        again = self._create(Ipv4PrefixCount=1)
        self.assertEqual([p["Ipv4Prefix"] for p in again["Ipv4Prefixes"]], [self._block(1)])

    def test_describe_instances_shows_the_prefixes(self):
        instance = self.ec2.run_instances(
            ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=self.subnet
        )["Instances"][0]
        eni = instance["NetworkInterfaces"][0]["NetworkInterfaceId"]
        self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4PrefixCount=1)
        described = self.ec2.describe_instances(InstanceIds=[instance["InstanceId"]])
        nic = described["Reservations"][0]["Instances"][0]["NetworkInterfaces"][0]
        self.assertEqual([p["Ipv4Prefix"] for p in nic["Ipv4Prefixes"]], [self._block(1)])

    def test_cidr_reservations(self):
        self.ec2.create_subnet_cidr_reservation(
            SubnetId=self.subnet, Cidr=self._block(8), ReservationType="prefix"
        )
        self.ec2.create_subnet_cidr_reservation(
            SubnetId=self.subnet, Cidr=self._block(1), ReservationType="explicit"
        )
        before = self._available()
        eni = self._create(Ipv4PrefixCount=2)["NetworkInterfaceId"]
        # The prefix reservation's block first, then the lowest free one past the explicit one.
        self.assertEqual(self._prefixes(eni), sorted([self._block(8), self._block(2)]))
        self.assertEqual(self._available(), before - 1 - 16)
        self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, SecondaryPrivateIpAddressCount=40)
        reserved = [ipaddress.ip_network(self._block(i)) for i in (1, 2, 8)]
        for item in self._eni(eni)["PrivateIpAddresses"]:
            ip = ipaddress.ip_address(item["PrivateIpAddress"])
            self.assertFalse(any(ip in net for net in reserved), f"{ip} is reserved")


if __name__ == "__main__":
    unittest.main(verbosity=2)
