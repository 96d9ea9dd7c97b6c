"""EC2's IPv6 prefixes as ipv6_prefixes.py adds them to moto, checked through boto3 against the
launcher's server (test-support/tests/ipv6_prefixes.rs runs this with the pinned moto).

Usage: python3 ipv6_prefixes_test.py LAUNCHER_DIR
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

AMI = "ami-12c6146b"
# /80 blocks in a /64: the first holds AWS's four reserved addresses, the last its last one.
BLOCKS = 1 << 16


class Ipv6Prefixes(unittest.TestCase):
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
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16", AmazonProvidedIpv6CidrBlock=True)
        self.vpc = vpc["Vpc"]["VpcId"]
        self.vpc_block = ipaddress.ip_network(
            vpc["Vpc"]["Ipv6CidrBlockAssociationSet"][0]["Ipv6CidrBlock"]
        )
        self.block = self._slash64(1)
        self.subnet = self.ec2.create_subnet(
            VpcId=self.vpc, CidrBlock="10.0.1.0/24", Ipv6CidrBlock=str(self.block)
        )["Subnet"]["SubnetId"]

    # Helpers

    def _slash64(self, index):
        return list(self.vpc_block.subnets(new_prefix=64))[index]

    def _prefix(self, index, block=None):
        """The index-th /80 of the subnet's /64 (or of `block`), as text."""
        net = block or self.block
        return str(ipaddress.ip_network((int(net.network_address) + (index << 48), 80)))

    def _address(self, block_index, offset):
        start = int(self.block.network_address) + (block_index << 48)
        return str(ipaddress.ip_address(start + offset))

    def _create(self, subnet=None, **kwargs):
        return self.ec2.create_network_interface(SubnetId=subnet or self.subnet, **kwargs)[
            "NetworkInterface"
        ]

    def _assign(self, eni, **kwargs):
        return self.ec2.assign_ipv6_addresses(NetworkInterfaceId=eni, **kwargs)

    def _unassign(self, eni, **kwargs):
        return self.ec2.unassign_ipv6_addresses(NetworkInterfaceId=eni, **kwargs)

    def _eni(self, eni_id):
        return self.ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])[
            "NetworkInterfaces"
        ][0]

    def _prefixes(self, eni_id):
        return sorted(p["Ipv6Prefix"] for p in self._eni(eni_id).get("Ipv6Prefixes", []))

    def _addresses(self, eni_id):
        return sorted(a["Ipv6Address"] for a in self._eni(eni_id).get("Ipv6Addresses", []))

    def _subnet_enis(self, subnet):
        return self.ec2.describe_network_interfaces(
            Filters=[{"Name": "subnet-id", "Values": [subnet]}]
        )["NetworkInterfaces"]

    def _error(self, call, **kwargs):
        with self.assertRaises(ClientError) as caught:
            call(**kwargs)
        response = caught.exception.response
        status = response["ResponseMetadata"]["HTTPStatusCode"]
        self.assertTrue(400 <= status < 500, f"{call.__name__} {kwargs}: HTTP {status}")
        return response["Error"]

    def _code(self, call, **kwargs):
        return self._error(call, **kwargs)["Code"]

    # Checks

    def test_vpc_and_subnets_get_ipv6_cidr_blocks(self):
        self.assertEqual(self.vpc_block.prefixlen, 56)
        vpc = self.ec2.describe_vpcs(VpcIds=[self.vpc])["Vpcs"][0]
        association = vpc["Ipv6CidrBlockAssociationSet"][0]
        self.assertEqual(association["Ipv6CidrBlock"], str(self.vpc_block))
        self.assertEqual(association["Ipv6CidrBlockState"]["State"], "associated")
        subnet = self.ec2.describe_subnets(SubnetIds=[self.subnet])["Subnets"][0]
        self.assertEqual(
            [a["Ipv6CidrBlock"] for a in subnet["Ipv6CidrBlockAssociationSet"]], [str(self.block)]
        )
        # A /64 can also be added to an existing subnet, and a /56 to an existing VPC.
        later = self.ec2.create_subnet(VpcId=self.vpc, CidrBlock="10.0.2.0/24")["Subnet"]
        self.assertEqual(later["Ipv6CidrBlockAssociationSet"], [])
        added = self.ec2.associate_subnet_cidr_block(
            SubnetId=later["SubnetId"], Ipv6CidrBlock=str(self._slash64(2))
        )["Ipv6CidrBlockAssociation"]
        self.assertEqual(added["Ipv6CidrBlock"], str(self._slash64(2)))
        eni = self._create(subnet=later["SubnetId"], Ipv6PrefixCount=1)
        self.assertEqual(
            [p["Ipv6Prefix"] for p in eni["Ipv6Prefixes"]], [self._prefix(1, self._slash64(2))]
        )
        plain = self.ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
        associated = self.ec2.associate_vpc_cidr_block(
            VpcId=plain, AmazonProvidedIpv6CidrBlock=True
        )["Ipv6CidrBlockAssociation"]
        self.assertEqual(ipaddress.ip_network(associated["Ipv6CidrBlock"]).prefixlen, 56)

    def test_create_with_prefix_count_takes_the_lowest_free_aligned_blocks(self):
        eni = self._create(Ipv6PrefixCount=2)
        created = [p["Ipv6Prefix"] for p in eni["Ipv6Prefixes"]]
        # Block 0 holds the addresses AWS reserves: the first free /80 is block 1.
        self.assertEqual(created, [self._prefix(1), self._prefix(2)])
        for text in created:
            prefix = ipaddress.ip_network(text)  # strict: aligned
            self.assertEqual(prefix.prefixlen, 80)
            self.assertTrue(prefix.subnet_of(self.block), f"{prefix} not in {self.block}")
        self.assertEqual(self._prefixes(eni["NetworkInterfaceId"]), created)
        self.assertEqual(eni["Ipv6Addresses"], [])
        other = self._create(Ipv6PrefixCount=1)
        self.assertEqual([p["Ipv6Prefix"] for p in other["Ipv6Prefixes"]], [self._prefix(3)])

    def test_assign_answers_the_new_prefixes_and_both_describes_show_them(self):
        instance = self.ec2.run_instances(
            ImageId=AMI, MinCount=1, MaxCount=1, SubnetId=self.subnet, Ipv6AddressCount=1
        )["Instances"][0]
        nic = instance["NetworkInterfaces"][0]
        eni = nic["NetworkInterfaceId"]
        self.assertEqual([a["Ipv6Address"] for a in nic["Ipv6Addresses"]], [self._address(0, 4)])
        reply = self._assign(eni, Ipv6PrefixCount=1)
        self.assertEqual(reply["AssignedIpv6Prefixes"], [self._prefix(1)])
        self.assertEqual(reply.get("AssignedIpv6Addresses", []), [])
        reply = self._assign(eni, Ipv6PrefixCount=2)
        self.assertEqual(reply["AssignedIpv6Prefixes"], [self._prefix(2), self._prefix(3)])
        held = [self._prefix(i) for i in (1, 2, 3)]
        self.assertEqual(self._prefixes(eni), held)
        described = self.ec2.describe_instances(InstanceIds=[instance["InstanceId"]])
        nic = described["Reservations"][0]["Instances"][0]["NetworkInterfaces"][0]
        self.assertEqual(sorted(p["Ipv6Prefix"] for p in nic["Ipv6Prefixes"]), held)
        self.assertEqual([a["Ipv6Address"] for a in nic["Ipv6Addresses"]], [self._address(0, 4)])

    def test_prefixes_and_addresses_never_overlap(self):
        eni = self._create()["NetworkInterfaceId"]
        # An explicit address in block 1 keeps that block from ever becoming a prefix.
        pinned = self._address(1, 77)
        self._assign(eni, Ipv6Addresses=[pinned])
        reply = self._assign(eni, Ipv6PrefixCount=1)
        self.assertEqual(reply["AssignedIpv6Prefixes"], [self._prefix(2)])
        self.assertEqual(
            self._code(self._assign, eni=eni, Ipv6Prefixes=[self._prefix(1)]),
            "InvalidParameterValue",
        )
        # An address inside a prefix, held by another ENI, reserved or outside the /64: refused.
        other = self._create()["NetworkInterfaceId"]
        for bad in [
            self._address(2, 9),
            pinned,
            self._address(0, 1),
            str(self.block.broadcast_address),
            str(self._slash64(7).network_address + 5),
        ]:
            code = self._code(self._assign, eni=other, Ipv6Addresses=[bad])
            self.assertEqual(code, "InvalidParameterValue", bad)
            code = self._code(self._create, Ipv6Addresses=[{"Ipv6Address": bad}])
            self.assertEqual(code, "InvalidParameterValue", bad)
        self.assertEqual(self._addresses(other), [])
        # Automatic addresses: the lowest free ones, unique in the subnet, never in a prefix.
        self._assign(other, Ipv6AddressCount=3)
        third = self._create(Ipv6AddressCount=2)["NetworkInterfaceId"]
        self.assertEqual(self._addresses(other), [self._address(0, k) for k in (4, 5, 6)])
        self.assertEqual(self._addresses(third), [self._address(0, k) for k in (7, 8)])
        prefix = ipaddress.ip_network(self._prefix(2))
        every = self._addresses(eni) + self._addresses(other) + self._addresses(third)
        self.assertEqual(len(every), len(set(every)))
        self.assertFalse(any(ipaddress.ip_address(a) in prefix for a in every), every)
        # Unchanged moto behaviour for addresses: unassigning one frees it for the next request.
        self._unassign(other, Ipv6Addresses=[self._address(0, 5)])
        self._assign(third, Ipv6AddressCount=1)
        self.assertIn(self._address(0, 5), self._addresses(third))

    def test_explicit_prefixes_are_validated(self):
        eni = self._create()["NetworkInterfaceId"]
        reply = self._assign(eni, Ipv6Prefixes=[self._prefix(5)])
        self.assertEqual(reply["AssignedIpv6Prefixes"], [self._prefix(5)])
        elsewhere = self._create(Ipv6Prefixes=[{"Ipv6Prefix": self._prefix(9)}])
        self.assertEqual([p["Ipv6Prefix"] for p in elsewhere["Ipv6Prefixes"]], [self._prefix(9)])
        base = self.block.network_address
        bad = [
            self._prefix(5),  # held by this ENI
            self._prefix(9),  # held by another ENI
            self._prefix(0),  # holds AWS's first four addresses
            self._prefix(BLOCKS - 1),  # holds the subnet's last address
            f"{base + (6 << 48) + (1 << 32)}/80",  # not aligned
            f"{base + (6 << 48)}/96",
            f"{base + (6 << 48)}/79",
            str(self.block),
            self._prefix(1, self._slash64(7)),  # another /64 of the VPC
            "10.0.1.16/28",
            "not-a-prefix",
        ]
        for text in bad:
            code = self._code(self._assign, eni=eni, Ipv6Prefixes=[text])
            self.assertEqual(code, "InvalidParameterValue", text)
        self.assertEqual(self._prefixes(eni), [self._prefix(5)])

    def test_requests_are_whole_or_nothing(self):
        eni = self._create()["NetworkInterfaceId"]
        # One bad prefix fails the request: the good one is not assigned either.
        code = self._code(
            self._assign,
            eni=eni,
            Ipv6Prefixes=[self._prefix(3), self._prefix(0)],
        )
        self.assertEqual(code, "InvalidParameterValue")
        code = self._code(
            self._assign,
            eni=eni,
            Ipv6Prefixes=[self._prefix(3), self._prefix(3)],
        )
        self.assertEqual(code, "InvalidParameterValue")
        self.assertEqual(self._prefixes(eni), [])
        # 65534 /80s are free: one more than that is InsufficientCidrBlocks, and nothing is taken.
        code = self._code(self._assign, eni=eni, Ipv6PrefixCount=BLOCKS - 1)
        self.assertEqual(code, "InsufficientCidrBlocks")
        self.assertEqual(self._prefixes(eni), [])
        for kwargs in [
            dict(Ipv6PrefixCount=BLOCKS - 1),
            dict(Ipv6Prefixes=[{"Ipv6Prefix": self._prefix(4)}, {"Ipv6Prefix": self._prefix(0)}]),
        ]:
            self._code(self._create, **kwargs)
        self.assertEqual(len(self._subnet_enis(self.subnet)), 1, "a failed create leaves no ENI")
        reply = self._assign(eni, Ipv6PrefixCount=1)
        self.assertEqual(reply["AssignedIpv6Prefixes"], [self._prefix(1)])

    def test_one_kind_of_ipv6_request_at_a_time(self):
        eni = self._create()["NetworkInterfaceId"]
        combos = [
            dict(Ipv6PrefixCount=1, Ipv6Prefixes=[self._prefix(3)]),
            dict(Ipv6PrefixCount=1, Ipv6AddressCount=1),
            dict(Ipv6Prefixes=[self._prefix(3)], Ipv6Addresses=[self._address(0, 40)]),
            dict(Ipv6AddressCount=1, Ipv6Addresses=[self._address(0, 40)]),
        ]
        for combo in combos:
            code = self._code(self._assign, eni=eni, **combo)
            self.assertEqual(code, "InvalidParameterCombination", combo)
        for combo in [
            dict(Ipv6PrefixCount=1, Ipv6Prefixes=[{"Ipv6Prefix": self._prefix(3)}]),
            dict(Ipv6PrefixCount=1, Ipv6AddressCount=1),
            dict(Ipv6PrefixCount=1, Ipv6Addresses=[{"Ipv6Address": self._address(0, 40)}]),
        ]:
            code = self._code(self._create, **combo)
            self.assertEqual(code, "InvalidParameterCombination", combo)
        self.assertEqual(self._prefixes(eni), [])
        self.assertEqual(self._addresses(eni), [])
        self.assertEqual(len(self._subnet_enis(self.subnet)), 1)
        self._assign(eni, Ipv6PrefixCount=1)
        code = self._code(
            self._unassign,
            eni=eni,
            Ipv6Prefixes=[self._prefix(1)],
            Ipv6Addresses=[self._address(0, 4)],
        )
        self.assertEqual(code, "InvalidParameterCombination")
        self.assertEqual(self._prefixes(eni), [self._prefix(1)])

    def test_unassign_frees_and_rejects_prefixes_not_held(self):
        eni = self._create(Ipv6PrefixCount=3)["NetworkInterfaceId"]
        other = self._create(Ipv6PrefixCount=1)["NetworkInterfaceId"]
        held = self._prefixes(eni)
        self.assertEqual(held, [self._prefix(i) for i in (1, 2, 3)])
        for wanted in [[held[0], self._prefix(9)], [self._prefix(4)], ["not-a-prefix"]]:
            code = self._code(self._unassign, eni=eni, Ipv6Prefixes=wanted)
            self.assertEqual(code, "InvalidParameterValue", wanted)
        self.assertEqual(self._prefixes(eni), held)
        self.assertEqual(self._prefixes(other), [self._prefix(4)])
        # The prefix may be written in any valid form.
        expanded = ipaddress.ip_network(held[1]).exploded
        reply = self._unassign(eni, Ipv6Prefixes=[expanded])
        self.assertEqual(reply["UnassignedIpv6Prefixes"], [held[1]])
        self.assertEqual(self._prefixes(eni), [held[0], held[2]])
        # The freed block is the lowest free one again.
        reply = self._assign(other, Ipv6PrefixCount=1)
        self.assertEqual(reply["AssignedIpv6Prefixes"], [held[1]])

    def test_deleting_the_eni_frees_its_prefixes(self):
        eni = self._create(Ipv6PrefixCount=2)["NetworkInterfaceId"]
        self.ec2.delete_network_interface(NetworkInterfaceId=eni)
        again = self._create(Ipv6PrefixCount=1)
        self.assertEqual([p["Ipv6Prefix"] for p in again["Ipv6Prefixes"]], [self._prefix(1)])
        explicit = self._create(Ipv6Prefixes=[{"Ipv6Prefix": self._prefix(2)}])
        self.assertEqual([p["Ipv6Prefix"] for p in explicit["Ipv6Prefixes"]], [self._prefix(2)])

    def test_a_subnet_without_an_ipv6_cidr_block_is_a_client_error(self):
        plain = self.ec2.create_subnet(VpcId=self.vpc, CidrBlock="10.0.3.0/24")["Subnet"]
        plain = plain["SubnetId"]
        eni = self._create(subnet=plain)["NetworkInterfaceId"]
        somewhere = self._address(0, 50)
        asks = [
            dict(Ipv6AddressCount=1),
            dict(Ipv6Addresses=[somewhere]),
            dict(Ipv6PrefixCount=1),
            dict(Ipv6Prefixes=[self._prefix(1)]),
        ]
        for ask in asks:
            # moto alone answers AssignIpv6Addresses with a count here by HTTP 500.
            error = self._error(self._assign, eni=eni, **ask)
            self.assertEqual(error["Code"], "InvalidParameterValue", ask)
            self.assertIn(plain, error["Message"])
        creates = [
            dict(Ipv6AddressCount=1),
            dict(Ipv6Addresses=[{"Ipv6Address": somewhere}]),
            dict(Ipv6PrefixCount=1),
            dict(Ipv6Prefixes=[{"Ipv6Prefix": self._prefix(1)}]),
        ]
        for ask in creates:
            error = self._error(self._create, subnet=plain, **ask)
            self.assertEqual(error["Code"], "InvalidParameterValue", ask)
            self.assertIn(plain, error["Message"])
        error = self._error(
            self.ec2.run_instances,
            ImageId=AMI,
            MinCount=1,
            MaxCount=1,
            SubnetId=plain,
            Ipv6AddressCount=1,
        )
        self.assertEqual(error["Code"], "InvalidParameterValue")
        self.assertEqual(len(self._subnet_enis(plain)), 1, "nothing was created")
        self.assertEqual(self._addresses(eni), [])
        self.assertEqual(self._prefixes(eni), [])
        # A disassociated block counts as none.
        association = self.ec2.associate_subnet_cidr_block(
            SubnetId=plain, Ipv6CidrBlock=str(self._slash64(3))
        )["Ipv6CidrBlockAssociation"]["AssociationId"]
        self._assign(eni, Ipv6PrefixCount=1)
        self.ec2.disassociate_subnet_cidr_block(AssociationId=association)
        error = self._error(self._assign, eni=eni, Ipv6PrefixCount=1)
        self.assertEqual(error["Code"], "InvalidParameterValue")
        # Plain IPv4 requests in that subnet are unaffected.
        self.ec2.assign_private_ip_addresses(
            NetworkInterfaceId=eni, SecondaryPrivateIpAddressCount=1
        )
        self.assertEqual(len(self._eni(eni)["PrivateIpAddresses"]), 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
