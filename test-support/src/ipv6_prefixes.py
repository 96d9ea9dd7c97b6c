"""EC2's IPv6 prefixes on network interfaces, which moto 5.2 lacks (moto_server.py installs it).

moto 5.2 gives a subnet an IPv6 CIDR block (CreateSubnet / AssociateSubnetCidrBlock
`Ipv6CidrBlock`) and ENIs IPv6 addresses (`Ipv6AddressCount`, `Ipv6Addresses`), but parses
`Ipv6PrefixCount` and `Ipv6Prefix.N` on CreateNetworkInterface, AssignIpv6Addresses and
UnassignIpv6Addresses and ignores them. It picks addresses at random over the whole block, takes
any explicit address unchecked, and on a subnet without an IPv6 CIDR block answers HTTP 500 to
AssignIpv6Addresses with a count and silently assigns nothing to CreateNetworkInterface or
RunInstances with one. EC2, which ipamd's IPv6 mode is written against, behaves as follows, and
so does this module:

* A prefix is an aligned /80 of the subnet's IPv6 CIDR block (a /64). It never overlaps
  another prefix, an IPv6 address of any ENI of the subnet, or the addresses AWS reserves (the
  block's first four and its last one, so its first and last /80 are never handed out). Free
  /80s are taken lowest first.
* Automatic IPv6 addresses (`Ipv6AddressCount` on CreateNetworkInterface, AssignIpv6Addresses
  and RunInstances) are the lowest free addresses of the block: never reserved, in use or inside
  a prefix. An explicit address outside the block, reserved, inside a prefix or held by another
  ENI is `InvalidParameterValue`.
* A request asks for exactly one of: a count of addresses, addresses, a count of prefixes,
  prefixes (`InvalidParameterCombination` otherwise). It is served whole or not at all:
  `InsufficientCidrBlocks` when fewer free /80s remain than asked, `InvalidParameterValue` for a
  prefix that is not an aligned /80 of the block or is in use (a failed CreateNetworkInterface
  leaves no ENI).
* IPv6 addresses or prefixes asked on a subnet without an IPv6 CIDR block (CreateNetworkInterface,
  AssignIpv6Addresses, RunInstances `Ipv6AddressCount`): `InvalidParameterValue` naming the
  subnet, never a 500.
* DescribeNetworkInterfaces (and DescribeInstances) show an ENI's prefixes in `ipv6PrefixSet`;
  AssignIpv6Addresses answers `assignedIpv6PrefixSet` with the new ones.
* UnassignIpv6Addresses with `Ipv6Prefix.N` frees them and answers `unassignedIpv6PrefixSet`; a
  prefix the ENI does not hold is `InvalidParameterValue` and nothing is freed. Deleting the ENI
  frees its prefixes.
"""

import ipaddress

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import elastic_network_interfaces as eni_models
from moto.ec2.responses import elastic_network_interfaces as eni_responses
from moto.ec2.responses import instances as instance_responses
from prefix_delegation import (
    InsufficientCidrBlocks,
    InvalidParameterCombination,
    InvalidParameterValue,
)

PREFIX_LENGTH = 80
# The block's first four addresses (network, router, DNS, future use) and its last one.
RESERVED_HEAD = 4


class NoIpv6CidrBlock(InvalidParameterValue):
    def __init__(self, subnet_id):
        super().__init__(
            "Cannot assign IPv6 addresses or prefixes unless the subnet "
            f"({subnet_id}) has an IPv6 CIDR block associated with it."
        )


def subnet_block(subnet):
    """The subnet's associated IPv6 CIDR block, or None (moto keeps disassociated ones)."""
    for association in getattr(subnet, "ipv6_cidr_block_associations", {}).values():
        if association.get("ipv6CidrBlockState", {}).get("State") == "associated":
            return ipaddress.IPv6Network(association["ipv6CidrBlock"], strict=False)
    return None


def require_block(subnet):
    block = subnet_block(subnet)
    if block is None:
        raise NoIpv6CidrBlock(subnet.id)
    return block


def prefixes_of(eni):
    """The ENI's prefixes as networks (an ENI moto made before this module loaded has none)."""
    return [ipaddress.ip_network(p["Ipv6Prefix"]) for p in getattr(eni, "ipv6_prefixes", [])]


def _parsed(texts):
    """IPv6 addresses as ints (moto stores explicit ones unchecked: others are skipped)."""
    held = set()
    for text in texts or []:
        try:
            held.add(int(ipaddress.IPv6Address(text)))
        except ValueError:
            continue
    return held


def _taken(subnet, block, skip=None):
    """Addresses (as ints) and prefixes ENIs hold in the block, but for the ENI `skip`."""
    addresses, prefixes = set(), []
    for eni in subnet.ec2_backend.enis.values():
        other = subnet_block(eni.subnet) if eni.subnet is not None else None
        if eni is skip or other is None or not other.overlaps(block):
            continue
        addresses |= _parsed(eni.ipv6_addresses)
        prefixes.extend(p for p in prefixes_of(eni) if p.subnet_of(block))
    return addresses, prefixes


def _block_count(block):
    return 1 << (PREFIX_LENGTH - block.prefixlen) if block.prefixlen <= PREFIX_LENGTH else 0


def _block_index(block, address):
    return (address - int(block.network_address)) >> (128 - PREFIX_LENGTH)


def _block_at(block, index):
    start = int(block.network_address) + (index << (128 - PREFIX_LENGTH))
    return ipaddress.IPv6Network((start, PREFIX_LENGTH))


def _reserved(block):
    first = int(block.network_address)
    return set(range(first, first + RESERVED_HEAD)) | {int(block.broadcast_address)}


def _busy_blocks(block, addresses, prefixes):
    """Indexes of the /80s no new prefix may take: reserved, holding an address, a prefix."""
    inside = range(int(block.network_address), int(block.broadcast_address) + 1)
    busy = {_block_index(block, a) for a in _reserved(block) | addresses if a in inside}
    busy |= {_block_index(block, int(p.network_address)) for p in prefixes}
    return busy


def _parse_prefix(text, subnet, block):
    try:
        prefix = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidParameterValue(f"Invalid IPv6 prefix: {text}")
    if prefix.network_address != ipaddress.ip_interface(text).ip:
        raise InvalidParameterValue(f"Prefix {text} is not aligned on its /{prefix.prefixlen}.")
    if prefix.version != 6 or prefix.prefixlen != PREFIX_LENGTH:
        raise InvalidParameterValue(
            f"Prefix {text} is not an IPv6 /{PREFIX_LENGTH}; EC2 assigns only "
            f"/{PREFIX_LENGTH} IPv6 prefixes to a network interface."
        )
    if not prefix.subnet_of(block):
        raise InvalidParameterValue(
            f"Prefix {text} is not in the IPv6 CIDR block {block} of subnet {subnet.id}."
        )
    return prefix


def choose(subnet, count, explicit):
    """The /80s a request gets, or the EC2 error it fails with (nothing is taken then)."""
    block = require_block(subnet)
    busy = _busy_blocks(block, *_taken(subnet, block))
    if explicit:
        chosen = []
        for text in explicit:
            prefix = _parse_prefix(text, subnet, block)
            index = _block_index(block, int(prefix.network_address))
            if index in busy or prefix in chosen:
                raise InvalidParameterValue(
                    f"Prefix {text} is already in use or reserved in subnet {subnet.id}."
                )
            chosen.append(prefix)
        return chosen
    total = _block_count(block)
    if total - len(busy) < count:
        raise InsufficientCidrBlocks(str(block), count, PREFIX_LENGTH)
    free = (index for index in range(total) if index not in busy)
    return [_block_at(block, next(free)) for _ in range(count)]


def allocate_addresses(subnet, count, pending=()):
    """The `count` lowest free addresses of the subnet's block (text), skipping `pending`."""
    block = require_block(subnet)
    addresses, prefixes = _taken(subnet, block)
    addresses |= _parsed(pending)
    in_prefix = {_block_index(block, int(p.network_address)) for p in prefixes}
    candidate = int(block.network_address) + RESERVED_HEAD
    last = int(block.broadcast_address) - 1
    chosen = []
    while len(chosen) < count:
        if candidate > last:
            raise EC2ClientError(
                "InsufficientFreeAddressesInSubnet",
                f"The specified subnet ({subnet.id}) does not have enough free IPv6 addresses "
                f"to satisfy the request ({count} wanted).",
            )
        index = _block_index(block, candidate)
        if index in in_prefix:
            candidate = int(_block_at(block, index + 1).network_address)
            continue
        if candidate not in addresses:
            chosen.append(str(ipaddress.IPv6Address(candidate)))
        candidate += 1
    return chosen


def check_addresses(subnet, texts, eni=None):
    """Explicit addresses must be free addresses of the block (this ENI's own may repeat)."""
    block = require_block(subnet)
    addresses, prefixes = _taken(subnet, block, skip=eni)
    reserved = _reserved(block)
    for text in texts:
        try:
            address = ipaddress.IPv6Address(text)
        except ValueError:
            raise InvalidParameterValue(f"Invalid IPv6 address: {text}")
        if address not in block:
            raise InvalidParameterValue(
                f"Address {text} is not in the IPv6 CIDR block {block} of subnet {subnet.id}."
            )
        value = int(address)
        if value in reserved or value in addresses or any(address in p for p in prefixes):
            raise InvalidParameterValue(
                f"Address {text} is already in use or reserved in subnet {subnet.id}."
            )


class _Request:
    """What a request asks: a count of addresses, addresses, a count of prefixes, prefixes."""

    def __init__(self, response, address_key=None):
        self.address_count = _count(response, "Ipv6AddressCount")
        self.addresses = _items(response, "Ipv6Addresses", address_key)
        self.prefix_count = _count(response, "Ipv6PrefixCount")
        self.prefixes = _items(response, "Ipv6Prefixes", "Ipv6Prefix")

    def kinds(self):
        return [
            name
            for name, value in [
                ("Ipv6AddressCount", self.address_count),
                ("Ipv6Addresses", self.addresses),
                ("Ipv6PrefixCount", self.prefix_count),
                ("Ipv6Prefixes", self.prefixes),
            ]
            if value
        ]

    def only_one_kind(self, action):
        kinds = self.kinds()
        if len(kinds) > 1:
            raise InvalidParameterCombination(
                f"{action}: specify only one of Ipv6AddressCount, Ipv6Addresses, "
                f"Ipv6PrefixCount and Ipv6Prefixes, not {' and '.join(kinds)}."
            )

    def wants_prefixes(self):
        return bool(self.prefix_count or self.prefixes)


def _count(response, name):
    count = response._get_int_param(name, 0) or 0
    if count < 0:
        raise InvalidParameterValue(f"{name} {count} is negative.")
    return count


def _items(response, name, key):
    return [
        item.get(key) if isinstance(item, dict) else item
        for item in response._get_param(name, []) or []
    ]


def _prefix_items(blocks):
    return [{"Ipv6Prefix": str(b)} for b in blocks]


def install():
    """Patches moto: ENIs get `ipv6_prefixes`, the ENI actions and RunInstances the rules above."""

    original_eni_init = eni_models.NetworkInterface.__init__

    def eni_init(self, *args, **kwargs):
        self.ipv6_prefixes = []
        count = int(kwargs.pop("ipv6_address_count", 0) or 0)
        original_eni_init(self, *args, **kwargs)
        if count:
            pending = list(self.ipv6_addresses)
            self.ipv6_addresses.extend(allocate_addresses(self.subnet, count, pending))

    backend = eni_models.NetworkInterfaceBackend
    original_backend_assign = backend.assign_ipv6_addresses

    def backend_assign_ipv6_addresses(self, eni_id, ipv6_addresses=None, ipv6_count=None):
        eni = original_backend_assign(self, eni_id, ipv6_addresses, None)
        if ipv6_count:
            new = allocate_addresses(eni.subnet, int(ipv6_count), eni.ipv6_addresses)
            eni.ipv6_addresses.extend(new)
        return eni

    responses = eni_responses.ElasticNetworkInterfaces
    original_create = responses.create_network_interface
    original_assign = responses.assign_ipv6_addresses
    original_unassign = responses.unassign_ipv6_addresses

    def create_network_interface(self):
        request = _Request(self, "Ipv6Address")
        if not request.kinds():
            return original_create(self)
        subnet = self.ec2_backend.get_subnet(self._get_param("SubnetId"))
        require_block(subnet)
        request.only_one_kind("CreateNetworkInterface")
        if not request.wants_prefixes():
            check_addresses(subnet, request.addresses)
            return original_create(self)
        blocks = choose(subnet, request.prefix_count, request.prefixes)
        result = original_create(self)
        result.result["NetworkInterface"].ipv6_prefixes = _prefix_items(blocks)
        return result

    def assign_ipv6_addresses(self):
        request = _Request(self)
        if not request.kinds():
            return original_assign(self)
        eni = self.ec2_backend.get_network_interface(self._get_param("NetworkInterfaceId"))
        require_block(eni.subnet)
        request.only_one_kind("AssignIpv6Addresses")
        if not request.wants_prefixes():
            check_addresses(eni.subnet, request.addresses, eni)
            return original_assign(self)
        blocks = choose(eni.subnet, request.prefix_count, request.prefixes)
        eni.ipv6_prefixes.extend(_prefix_items(blocks))
        return ActionResult(
            {
                "NetworkInterfaceId": eni.id,
                "AssignedIpv6Addresses": [],
                "AssignedIpv6Prefixes": [str(b) for b in blocks],
            }
        )

    def unassign_ipv6_addresses(self):
        wanted = _items(self, "Ipv6Prefixes", "Ipv6Prefix")
        if not wanted:
            return original_unassign(self)
        if self._get_param("Ipv6Addresses", []):
            raise InvalidParameterCombination(
                "UnassignIpv6Addresses: IPv6 addresses and IPv6 prefixes cannot be released "
                "together."
            )
        eni = self.ec2_backend.get_network_interface(self._get_param("NetworkInterfaceId"))
        held = {p["Ipv6Prefix"] for p in eni.ipv6_prefixes}
        freed = [_canonical(text) for text in wanted]
        missing = [text for text, prefix in zip(wanted, freed) if prefix not in held]
        if missing:
            raise InvalidParameterValue(
                f"Some of the specified prefixes are not assigned to interface {eni.id}: "
                + ", ".join(missing)
            )
        eni.ipv6_prefixes = [p for p in eni.ipv6_prefixes if p["Ipv6Prefix"] not in freed]
        return ActionResult(
            {
                "NetworkInterfaceId": eni.id,
                "UnassignedIpv6Addresses": [],
                "UnassignedIpv6Prefixes": sorted(set(freed)),
            }
        )

    instances = instance_responses.InstanceResponse
    original_run = instances.run_instances

    def run_instances(self):
        if _count(self, "Ipv6AddressCount"):
            subnet_ids = [self._get_param("SubnetId")] + [
                nic.get("SubnetId") for nic in self._get_param("NetworkInterfaces", []) or []
            ]
            for subnet_id in filter(None, subnet_ids):
                require_block(self.ec2_backend.get_subnet(subnet_id))
        return original_run(self)

    eni_models.NetworkInterface.__init__ = eni_init
    backend.assign_ipv6_addresses = backend_assign_ipv6_addresses
    responses.create_network_interface = create_network_interface
    responses.assign_ipv6_addresses = assign_ipv6_addresses
    responses.unassign_ipv6_addresses = unassign_ipv6_addresses
    instances.run_instances = run_instances


def _canonical(text):
    """A prefix's text as this module stores it (compressed), or the text itself if invalid."""
    try:
        return str(ipaddress.ip_network(text))
    except ValueError:
        return text
