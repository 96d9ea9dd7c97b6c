"""EC2's IPv4 prefix delegation, which moto 5.2 does not implement (moto_server.py installs it).

moto 5.2 parses `Ipv4PrefixCount` and `Ipv4Prefix.N` on CreateNetworkInterface,
AssignPrivateIpAddresses and UnassignPrivateIpAddresses and ignores them. EC2, which ipamd's
prefix-delegation mode is written against, behaves as follows, and so does this module:

* A prefix is an aligned /28 of the ENI's subnet (16 addresses, all usable by pods). It never
  overlaps an address in use (ENI or instance addresses), another prefix, the four addresses
  AWS reserves at the start of the subnet or the last one, or an explicit CIDR reservation.
  Blocks inside a `prefix` CIDR reservation are handed out before any other block; blocks are
  otherwise taken lowest first.
* Auto-assigned secondary addresses (and ENI primaries) avoid prefixes and every CIDR
  reservation (moto_server.py's allocator asks `taken_by_prefixes_and_reservations`).
* `AvailableIpAddressCount` drops by 16 for each prefix outside a `prefix` reservation (moto
  already subtracts a prefix reservation's size when it is made).
* A request asks for prefixes by count or by value, never both, and never together with
  secondary addresses (`InvalidParameterCombination`). It is served whole or not at all: when
  the subnet has fewer free aligned blocks than asked, EC2's `InsufficientCidrBlocks`.
* DescribeNetworkInterfaces (and DescribeInstances) show an ENI's prefixes in `ipv4PrefixSet`;
  AssignPrivateIpAddresses answers `assignedIpv4PrefixSet` with the new ones.
* UnassignPrivateIpAddresses with `Ipv4Prefix.N` frees them; a prefix the ENI does not hold is
  `InvalidParameterValue` and nothing is freed.
"""

import ipaddress

from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import elastic_network_interfaces as eni_models
from moto.ec2.models import subnets as subnet_models
from moto.ec2.responses import elastic_network_interfaces as eni_responses

PREFIX_LENGTH = 28
PREFIX_SIZE = 16


class InsufficientCidrBlocks(EC2ClientError):
    def __init__(self, cidr, wanted, prefix_length=PREFIX_LENGTH):
        super().__init__(
            "InsufficientCidrBlocks",
            f"There are not enough free cidr blocks in the specified subnet ({cidr}) to "
            f"satisfy the request ({wanted} /{prefix_length} wanted).",
        )


class InvalidParameterCombination(EC2ClientError):
    def __init__(self, message):
        super().__init__("InvalidParameterCombination", message)


class InvalidParameterValue(EC2ClientError):
    def __init__(self, message):
        super().__init__("InvalidParameterValue", message)


def prefixes_of(eni):
    """The ENI's prefixes as networks (an ENI moto made before this module loaded has none)."""
    return [ipaddress.ip_network(p["Ipv4Prefix"]) for p in getattr(eni, "ipv4_prefixes", [])]


def _enis_in(subnet):
    return [
        eni
        for eni in subnet.ec2_backend.enis.values()
        if getattr(eni.subnet, "id", None) == subnet.id
    ]


def _subnet_prefixes(subnet):
    return [net for eni in _enis_in(subnet) for net in prefixes_of(eni)]


def _reservations(subnet, kind=None):
    return [
        r.cidr
        for r in getattr(subnet, "_cidr_reservations", [])
        if isinstance(r.cidr, ipaddress.IPv4Network) and (kind is None or r.reservation_type == kind)
    ]


def taken_by_prefixes_and_reservations(subnet):
    """Addresses (as strings) that automatic address assignment must not hand out."""
    taken = set()
    for net in _subnet_prefixes(subnet) + _reservations(subnet):
        taken.update(str(ip) for ip in net)
    return taken


def _edges(subnet):
    """The addresses AWS keeps: network, router, DNS, future use, and the last one."""
    net = subnet.cidr
    first = int(net.network_address)
    return {str(ipaddress.IPv4Address(first + i)) for i in range(4)} | {
        str(net.broadcast_address)
    }


def _blocked(subnet, addresses_in_use):
    """Addresses no prefix may cover: in use, AWS's, in another prefix, explicitly reserved."""
    blocked = set(addresses_in_use) | _edges(subnet)
    for net in _subnet_prefixes(subnet) + _reservations(subnet, "explicit"):
        blocked.update(str(ip) for ip in net)
    return blocked


def _is_free(block, blocked):
    return not any(str(ip) in blocked for ip in block)


def _inside_prefix_reservation(subnet, block):
    return any(block.subnet_of(r) for r in _reservations(subnet, "prefix"))


def _overlaps_other_reservation(subnet, block):
    return any(
        block.overlaps(r) and not block.subnet_of(r) for r in _reservations(subnet, "prefix")
    )


def free_blocks(subnet, addresses_in_use):
    """Aligned /28s that could be assigned now, prefix-reservation blocks first."""
    if subnet.cidr.prefixlen > PREFIX_LENGTH:
        return []
    blocked = _blocked(subnet, addresses_in_use)
    reserved, other = [], []
    for block in subnet.cidr.subnets(new_prefix=PREFIX_LENGTH):
        if not _is_free(block, blocked) or _overlaps_other_reservation(subnet, block):
            continue
        (reserved if _inside_prefix_reservation(subnet, block) else other).append(block)
    return reserved + other


def choose(subnet, count, explicit, addresses_in_use):
    """The blocks a request gets, or the EC2 error it fails with (nothing is taken then)."""
    if explicit:
        blocked = _blocked(subnet, addresses_in_use)
        chosen = []
        for text in explicit:
            try:
                block = ipaddress.ip_network(text)
            except ValueError:
                raise InvalidParameterValue(f"Invalid IPv4 prefix: {text}")
            if block.version != 4 or block.prefixlen != PREFIX_LENGTH:
                raise InvalidParameterValue(
                    f"Prefix {text} is not an IPv4 /{PREFIX_LENGTH}; EC2 assigns only "
                    f"/{PREFIX_LENGTH} IPv4 prefixes to a network interface."
                )
            if not block.subnet_of(subnet.cidr):
                raise InvalidParameterValue(
                    f"Prefix {text} is not in the subnet's CIDR block {subnet.cidr}."
                )
            if not _is_free(block, blocked) or block in chosen:
                raise InvalidParameterValue(f"Prefix {text} is already in use in subnet {subnet.id}.")
            chosen.append(block)
        return chosen
    blocks = free_blocks(subnet, addresses_in_use)
    if len(blocks) < count:
        raise InsufficientCidrBlocks(subnet.cidr_block, count)
    return blocks[:count]


def _prefix_request(response, explicit_key):
    """(count, explicit prefixes) of a request; both given is InvalidParameterCombination."""
    count = response._get_int_param("Ipv4PrefixCount", 0) or 0
    explicit = []
    for item in response._get_param("Ipv4Prefixes", []) or []:
        explicit.append(item.get(explicit_key) if isinstance(item, dict) else item)
    if count < 0:
        raise InvalidParameterValue(f"Ipv4PrefixCount {count} is negative.")
    if count and explicit:
        raise InvalidParameterCombination(
            "Specify either Ipv4PrefixCount or Ipv4Prefixes, not both."
        )
    return count, explicit


def _no_secondary_addresses(response, what):
    if response._get_int_param("SecondaryPrivateIpAddressCount", 0):
        raise InvalidParameterCombination(
            f"{what}: secondary private IPv4 addresses and IPv4 prefixes cannot be requested "
            "together."
        )


def install(addresses_in_use, pending):
    """Patches moto. `addresses_in_use(cidr)` is the launcher's set of addresses held by ENIs,
    instances and the current request; `pending` is the current request's set, which new
    prefixes join until the ENI that receives them exists."""

    original_eni_init = eni_models.NetworkInterface.__init__

    def eni_init(self, *args, **kwargs):
        self.ipv4_prefixes = []
        original_eni_init(self, *args, **kwargs)

    responses = eni_responses.ElasticNetworkInterfaces
    original_create = responses.create_network_interface
    original_assign = responses.assign_private_ip_addresses
    original_unassign = responses.unassign_private_ip_addresses

    def create_network_interface(self):
        count, explicit = _prefix_request(self, "Ipv4Prefix")
        if not (count or explicit):
            return original_create(self)
        _no_secondary_addresses(self, "CreateNetworkInterface")
        subnet = self.ec2_backend.get_subnet(self._get_param("SubnetId"))
        blocks = choose(subnet, count, explicit, addresses_in_use(subnet.cidr_block))
        for block in blocks:
            pending.update(str(ip) for ip in block)
        result = original_create(self)
        eni = result.result["NetworkInterface"]
        eni.ipv4_prefixes = [{"Ipv4Prefix": str(b)} for b in blocks]
        return result

    def assign_private_ip_addresses(self):
        count, explicit = _prefix_request(self, "Ipv4Prefix")
        if not (count or explicit):
            return original_assign(self)
        _no_secondary_addresses(self, "AssignPrivateIpAddresses")
        if self._get_param("PrivateIpAddresses", []):
            raise InvalidParameterCombination(
                "AssignPrivateIpAddresses: private IPv4 addresses and IPv4 prefixes cannot be "
                "requested together."
            )
        eni = self.ec2_backend.get_network_interface(self._get_param("NetworkInterfaceId"))
        subnet = eni.subnet
        blocks = choose(subnet, count, explicit, addresses_in_use(subnet.cidr_block))
        assigned = [{"Ipv4Prefix": str(b)} for b in blocks]
        eni.ipv4_prefixes.extend(assigned)
        return ActionResult(
            {
                "NetworkInterfaceId": eni.id,
                "AssignedPrivateIpAddresses": [],
                "AssignedIpv4Prefixes": assigned,
            }
        )

    def unassign_private_ip_addresses(self):
        wanted = self._get_param("Ipv4Prefixes", []) or []
        if not wanted:
            return original_unassign(self)
        if self._get_param("PrivateIpAddresses", []):
            raise InvalidParameterCombination(
                "UnassignPrivateIpAddresses: private IPv4 addresses and IPv4 prefixes cannot "
                "be released together."
            )
        eni = self.ec2_backend.get_network_interface(self._get_param("NetworkInterfaceId"))
        held = {p["Ipv4Prefix"] for p in eni.ipv4_prefixes}
        missing = [p for p in wanted if p not in held]
        if missing:
            raise InvalidParameterValue(
                f"Some of the specified prefixes are not assigned to interface {eni.id}: "
                + ", ".join(missing)
            )
        eni.ipv4_prefixes = [p for p in eni.ipv4_prefixes if p["Ipv4Prefix"] not in wanted]
        return EmptyResult()

    subnet_count = subnet_models.Subnet.available_ip_address_count

    def available_ip_address_count(self):
        outside = [
            net for net in _subnet_prefixes(self) if not _inside_prefix_reservation(self, net)
        ]
        return subnet_count.fget(self) - PREFIX_SIZE * len(outside)

    eni_models.NetworkInterface.__init__ = eni_init
    responses.create_network_interface = create_network_interface
    responses.assign_private_ip_addresses = assign_private_ip_addresses
    responses.unassign_private_ip_addresses = unassign_private_ip_addresses
    subnet_models.Subnet.available_ip_address_count = property(available_ip_address_count)
