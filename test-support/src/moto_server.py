"""moto's EC2 server as the tests run it (test-support/src/moto.rs writes this file).

Unmodified moto serves the EC2 API; this launcher only makes three behaviours match EC2 where
moto 5.2 differs and the tests (the simulated VPC above all) depend on it:

* Address allocation. moto picks ENI addresses with `random.getrandbits` over the whole
  subnet, so it can hand out the network address, the subnet router (`.1`), the other two
  addresses AWS reserves, the broadcast address, or an address another ENI already has. EC2
  never does: here every address comes from the subnet's free host addresses (lowest first,
  skipping the first four and the last), and a request that does not fit fails as a whole with
  EC2's `InsufficientFreeAddressesInSubnet`.
* MAC addresses are unique within the server (moto draws 24 random bits per ENI).
* An attached ENI cannot be deleted (`InvalidNetworkInterface.InUse`) and the primary ENI
  (device index 0) cannot be detached (`OperationNotPermitted`), as in EC2; moto allows both.
* Requests are served one at a time (moto's backends are plain dictionaries).
* IPv4 prefix delegation (`Ipv4PrefixCount`, `Ipv4Prefix.N`), which moto ignores, as EC2 does
  it: see prefix_delegation.py (written next to this file). Automatic addresses avoid prefixes and
  subnet CIDR reservations.
* IPv6 prefixes (`Ipv6PrefixCount`, `Ipv6Prefix.N`), which moto ignores, as EC2 does them: see
  ipv6_prefixes.py (written next to this file). Automatic IPv6 addresses are free ones (lowest
  first, never in a prefix), and asking IPv6 of a subnet without an IPv6 CIDR block is EC2's 4xx,
  not moto's 500.

For benchmarks it can also play EC2's response times and log every EC2 call (ec2_latency.py,
configured by the VCNI_EC2_LATENCY* and VCNI_EC2_CALL_LOG variables; off unless set).

Usage: python3 moto_server.py HOST PORT
"""

import ipaddress
import os
import random
import sys
import threading

import ec2_latency
import ipv6_prefixes
import prefix_delegation
from moto import server
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import elastic_network_interfaces as eni_models
from moto.ec2.models import subnets as subnet_models
from moto.ec2.responses import elastic_network_interfaces as eni_responses

# Every subnet ever created, by CIDR; a subnet knows its backend (and so the ENIs).
_SUBNETS = {}
# Addresses handed out while serving the current request, before moto stores them on an ENI.
_PENDING = set()
_MACS = set()
_LOCK = threading.RLock()


class InsufficientFreeAddressesInSubnet(EC2ClientError):
    def __init__(self, cidr, wanted):
        super().__init__(
            "InsufficientFreeAddressesInSubnet",
            f"The specified subnet ({cidr}) does not have enough free addresses to satisfy "
            f"the request ({wanted} wanted).",
        )


def _held(cidr):
    """Addresses ENIs and instances hold in the subnet, and those the current request took."""
    used = set(_PENDING)
    backends = {}
    for subnet in _SUBNETS.get(cidr, []):
        used.update(subnet._subnet_ips.keys())
        backends[id(subnet.ec2_backend)] = subnet.ec2_backend
    for backend in backends.values():
        for eni in backend.enis.values():
            if getattr(eni.subnet, "cidr_block", None) != cidr:
                continue
            if eni.private_ip_address:
                used.add(eni.private_ip_address)
            for item in eni.private_ip_addresses:
                used.add(item.get("PrivateIpAddress"))
    return used


def _used(cidr):
    """Addresses automatic assignment must skip: held ones, prefixes, CIDR reservations."""
    used = _held(cidr)
    for subnet in _SUBNETS.get(cidr, []):
        used.update(prefix_delegation.taken_by_prefixes_and_reservations(subnet))
    return used


def _free_hosts(cidr):
    net = ipaddress.ip_network(cidr)
    used = _used(cidr)
    first = int(net.network_address) + 4  # network, router, DNS, reserved
    last = int(net.broadcast_address) - 1
    for value in range(first, last + 1):
        ip = str(ipaddress.IPv4Address(value))
        if ip not in used:
            yield ip


def _free_count(cidr):
    return sum(1 for _ in _free_hosts(cidr))


def _allocate(cidr):
    for ip in _free_hosts(cidr):
        _PENDING.add(ip)
        return ip
    raise InsufficientFreeAddressesInSubnet(cidr, 1)


_original_random_private_ip = eni_models.random_private_ip


def _eni_private_ip(cidr=None, ipv6=False):
    if ipv6 or cidr is None:
        return _original_random_private_ip(cidr, ipv6=ipv6)
    return _allocate(cidr)


def _unique_mac():
    while True:
        mac = "02:%02x:%02x:%02x:%02x:%02x" % tuple(random.randint(0, 255) for _ in range(5))
        if mac not in _MACS:
            _MACS.add(mac)
            return mac


_original_subnet_init = subnet_models.Subnet.__init__


def _subnet_init(self, *args, **kwargs):
    _original_subnet_init(self, *args, **kwargs)
    _SUBNETS.setdefault(self.cidr_block, []).append(self)


def _get_available_subnet_ip(self, instance):
    ip = _allocate(self.cidr_block)
    self._subnet_ips[ip] = instance
    return ip


_Backend = eni_models.NetworkInterfaceBackend
_original_create = _Backend.create_network_interface
_original_assign = _Backend.assign_private_ip_addresses


def _create_network_interface(self, subnet, private_ip_address, *args, **kwargs):
    subnet_obj = self.get_subnet(subnet) if isinstance(subnet, str) else subnet
    wanted = int(kwargs.get("secondary_ips_count") or 0)
    if not private_ip_address and not (args and args[0]):
        wanted += 1
    if wanted and _free_count(subnet_obj.cidr_block) < wanted:
        raise InsufficientFreeAddressesInSubnet(subnet_obj.cidr_block, wanted)
    return _original_create(self, subnet, private_ip_address, *args, **kwargs)


def _assign_private_ip_addresses(self, eni_id, private_ip_addresses=None, secondary_ips_count=None):
    if secondary_ips_count and not private_ip_addresses:
        eni = self.get_network_interface(eni_id)
        if _free_count(eni.subnet.cidr_block) < int(secondary_ips_count):
            raise InsufficientFreeAddressesInSubnet(eni.subnet.cidr_block, secondary_ips_count)
    return _original_assign(self, eni_id, private_ip_addresses, secondary_ips_count)


_Responses = eni_responses.ElasticNetworkInterfaces


def _delete_network_interface(self):
    eni_id = self._get_param("NetworkInterfaceId")
    eni = self.ec2_backend.enis.get(eni_id)
    if eni is not None and eni.attachment_id:
        raise EC2ClientError("InvalidNetworkInterface.InUse", f"Interface: [{eni_id}] in use.")
    return _original_delete_response(self)


def _detach_network_interface(self):
    attachment_id = self._get_param("AttachmentId")
    for eni in self.ec2_backend.enis.values():
        if eni.attachment_id == attachment_id and eni.device_index == 0:
            raise EC2ClientError(
                "OperationNotPermitted",
                "The network interface at device index 0 and networkCard index 0 cannot be "
                "detached.",
            )
    return _original_detach_response(self)


_original_delete_response = _Responses.delete_network_interface
_original_detach_response = _Responses.detach_network_interface

_original_call = server.DomainDispatcherApplication.__call__


def _locked_call(self, environ, start_response):
    with _LOCK:
        _PENDING.clear()
        try:
            return _original_call(self, environ, start_response)
        finally:
            _PENDING.clear()


def _serialized_call(self, environ, start_response):
    # EC2's latency (if configured) is spent before the lock: concurrent calls overlap as on EC2,
    # while moto's state still changes one request at a time.
    return ec2_latency.serve(
        environ, start_response, lambda env, respond: _locked_call(self, env, respond)
    )


eni_models.random_private_ip = _eni_private_ip
eni_models.random_mac_address = _unique_mac
subnet_models.Subnet.__init__ = _subnet_init
subnet_models.Subnet.get_available_subnet_ip = _get_available_subnet_ip
_Backend.create_network_interface = _create_network_interface
_Backend.assign_private_ip_addresses = _assign_private_ip_addresses
_Responses.delete_network_interface = _delete_network_interface
_Responses.detach_network_interface = _detach_network_interface
server.DomainDispatcherApplication.__call__ = _serialized_call
prefix_delegation.install(_held, _PENDING)
ipv6_prefixes.install()

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: moto_server.py HOST PORT")
    try:
        ec2_latency.configure(os.environ)
    except ec2_latency.ConfigError as err:
        sys.exit(f"moto_server.py: {err}")
    server.main(["-H", sys.argv[1], "-p", sys.argv[2]])
