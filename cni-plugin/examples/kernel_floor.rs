//! `kernel-floor`: the kernel work of one pod, done by the smallest program that can do it, as
//! the floor `aws-cni` is compared with (BENCHMARKS.md, "Where the time goes").
//!
//! It performs the netlink operations the plugin performs for one pod, and nothing else: no
//! CNI config, no ipamd, no logging, no lookups beyond the two interface indexes it needs.
//!
//! ```text
//! kernel-floor add  <pod-netns> <ip> <host-veth> <table>   one pod's ADD (exec'd per pod, timed by the caller)
//! kernel-floor del  <pod-netns> <ip> <host-veth> <table>   its DEL: host route, rules 512/1536, pod address
//! kernel-floor loop <ip-base> <table> <pod-netns>...       ADD then DEL of every namespace in one process,
//!                                                          printing per-operation durations (µs) as JSON:
//!                                                          {"add":[["veth_create",[µs,…]],…],"del":[…]}
//! ```
//!
//! ADD: veth `eth0` created in the pod namespace (up) with its peer `<host-veth>` created directly
//! in the caller's namespace (both MACs and the MTU preset), the host end's index and setting it
//! up, eth0's index, `<ip>/32` on eth0, `169.254.1.1/32 scope link`, `default via 169.254.1.1
//! onlink`, PERMANENT neighbour 169.254.1.1 → host veth MAC; on the host `<ip>/32 dev
//! <host-veth> scope link`, rule 512 `to <ip> lookup main` and, when `table` is not 254, rule
//! 1536 `from <ip> lookup <table>`. DEL removes the host route and both rules by value and
//! `<ip>/32` from eth0, and leaves the veth pair to the removal of the pod namespace, as the
//! plugin does.
//!
//! Run it inside a namespace that stands for the node (never the machine's root namespace):
//! `ip netns exec <node> kernel-floor add /run/netns/<pod> 10.0.0.5 flr0000000001 2`.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::packet_route::rule::RuleAction;
use rtnetlink::{
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder, RuleAddRequest,
};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const MAIN_TABLE: u32 = 254;
const MTU: u32 = 9001;

const USAGE: &str = "usage: kernel-floor add|del <pod-netns> <ip> <host-veth> <table>\n       kernel-floor loop <ip-base> <table> <pod-netns>...";

type Res<T> = Result<T, String>;

/// Durations (µs) of each operation of one pod, in order.
type Ops = Vec<(&'static str, u64)>;

struct Conns {
    host: Handle,
    pod: Handle,
}

/// A netlink connection whose socket is created inside `ns` (it stays there), then the thread
/// returns to `home`.
fn connection_in(ns: &File, home: &File, what: &str) -> Res<Handle> {
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("cannot enter {what}: {e}"))?;
    let conn = rtnetlink::new_connection();
    setns(home, CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("cannot return to the node namespace: {e}"))?;
    let (conn, handle, _) = conn.map_err(|e| format!("netlink socket in {what}: {e}"))?;
    tokio::spawn(conn);
    Ok(handle)
}

fn local_mac(seed: u32, side: u8) -> [u8; 6] {
    let b = seed.to_be_bytes();
    [0x02, side, b[0], b[1], b[2], b[3]]
}

async fn index_of(h: &Handle, name: &str) -> Res<u32> {
    h.link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(|e| format!("look up {name}: {e}"))?
        .map(|m| m.header.index)
        .ok_or_else(|| format!("{name} vanished after creation"))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn timed(ops: &mut Ops, name: &'static str, since: &mut Instant) {
    let now = Instant::now();
    ops.push((name, micros(now.duration_since(*since))));
    *since = now;
}

/// `dst/32 dev <oif> scope link`.
fn link_route(dst: Ipv4Addr, oif: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, 32)
        .output_interface(oif)
        .scope(RouteScope::Link)
        .build()
}

async fn add_route(h: &Handle, route: RouteMessage, what: &str) -> Res<()> {
    h.route()
        .add(route)
        .execute()
        .await
        .map_err(|e| format!("{what}: {e}"))
}

/// The pod's host rules: 512 `to <ip> lookup main` and, when `table` is not main, 1536 `from
/// <ip> lookup <table>` (ADD adds them, DEL deletes them by value).
fn pod_rules(
    h: &Handle,
    ip: Ipv4Addr,
    table: u32,
) -> Vec<(&'static str, RuleAddRequest<Ipv4Addr>)> {
    let rule = |priority| {
        h.rule()
            .add()
            .v4()
            .priority(priority)
            .action(RuleAction::ToTable)
    };
    let mut rules = vec![(
        "rule 512 to",
        rule(512).destination_prefix(ip, 32).table_id(MAIN_TABLE),
    )];
    if table != MAIN_TABLE {
        rules.push((
            "rule 1536 from",
            rule(1536).source_prefix(ip, 32).table_id(table),
        ));
    }
    rules
}

async fn add(c: &Conns, host_ns: &File, ip: Ipv4Addr, host_veth: &str, table: u32) -> Res<Ops> {
    let mut ops = Ops::new();
    let mut t = Instant::now();
    let seed = u32::from(ip);
    let host_mac = local_mac(seed, 0xfe);
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(host_veth.to_string())
        .address(host_mac.to_vec())
        .mtu(MTU)
        .setns_by_fd(host_ns.as_raw_fd())
        .build();
    let veth = LinkVeth::new("eth0", host_veth)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .address(local_mac(seed, 0xfd).to_vec())
        .mtu(MTU)
        .up()
        .build();
    c.pod
        .link()
        .add(veth)
        .execute()
        .await
        .map_err(|e| format!("create veth eth0/{host_veth}: {e}"))?;
    timed(&mut ops, "veth_create", &mut t);
    let host_idx = index_of(&c.host, host_veth).await?;
    // The peer cannot be created up: the kernel configures it before the pair is linked, and
    // opening a veth without a peer fails with ENOTCONN.
    c.host
        .link()
        .set(LinkUnspec::new_with_index(host_idx).up().build())
        .execute()
        .await
        .map_err(|e| format!("set {host_veth} up: {e}"))?;
    timed(&mut ops, "host_veth_up", &mut t);
    let pod_idx = index_of(&c.pod, "eth0").await?;
    timed(&mut ops, "pod_link_lookup", &mut t);

    c.pod
        .address()
        .add(pod_idx, IpAddr::V4(ip), 32)
        .execute()
        .await
        .map_err(|e| format!("address {ip}/32: {e}"))?;
    timed(&mut ops, "pod_addr", &mut t);
    let gw_route = link_route(GATEWAY, pod_idx);
    add_route(&c.pod, gw_route, &format!("route {GATEWAY}/32")).await?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(GATEWAY)
        .output_interface(pod_idx)
        .onlink()
        .build();
    add_route(&c.pod, default, "default route").await?;
    timed(&mut ops, "pod_routes", &mut t);
    c.pod
        .neighbours()
        .add(pod_idx, IpAddr::V4(GATEWAY))
        .link_layer_address(&host_mac)
        .state(NeighbourState::Permanent)
        .execute()
        .await
        .map_err(|e| format!("neighbour {GATEWAY}: {e}"))?;
    timed(&mut ops, "pod_neigh", &mut t);

    let host_route = link_route(ip, host_idx);
    add_route(&c.host, host_route, &format!("host route {ip}/32")).await?;
    timed(&mut ops, "host_route", &mut t);
    for (what, rule) in pod_rules(&c.host, ip, table) {
        rule.execute()
            .await
            .map_err(|e| format!("{what} {ip}: {e}"))?;
    }
    timed(&mut ops, "host_rules", &mut t);
    Ok(ops)
}

async fn del(c: &Conns, ip: Ipv4Addr, table: u32) -> Res<Ops> {
    let mut ops = Ops::new();
    let mut t = Instant::now();
    // The kernel matches a route delete on the attributes it carries: dst/32, scope link, in
    // main (as added).
    let host_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(ip, 32)
        .scope(RouteScope::Link)
        .build();
    c.host
        .route()
        .del(host_route)
        .execute()
        .await
        .map_err(|e| format!("delete host route {ip}/32: {e}"))?;
    timed(&mut ops, "host_route_del", &mut t);
    for (_, mut rule) in pod_rules(&c.host, ip, table) {
        let msg = rule.message_mut().clone();
        c.host
            .rule()
            .del(msg)
            .execute()
            .await
            .map_err(|e| format!("delete rule for {ip}: {e}"))?;
    }
    timed(&mut ops, "host_rules_del", &mut t);
    let pod_idx = index_of(&c.pod, "eth0").await?;
    let mut addr = AddressMessage::default();
    addr.header.family = AddressFamily::Inet;
    addr.header.prefix_len = 32;
    addr.header.index = pod_idx;
    addr.attributes
        .push(AddressAttribute::Local(IpAddr::V4(ip)));
    addr.attributes
        .push(AddressAttribute::Address(IpAddr::V4(ip)));
    c.pod
        .address()
        .del(addr)
        .execute()
        .await
        .map_err(|e| format!("delete {ip}/32 from eth0: {e}"))?;
    timed(&mut ops, "pod_addr_del", &mut t);
    Ok(ops)
}

fn parse_ip(s: &str) -> Res<Ipv4Addr> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address"))
}

fn parse_table(s: &str) -> Res<u32> {
    match s.parse::<u32>() {
        Ok(t) if t > 0 && t != 255 => Ok(t),
        _ => Err(format!(
            "table {s:?} must be a route table number (1..=2^32-1, not 255)"
        )),
    }
}

fn open_ns(path: &str) -> Res<File> {
    File::open(path).map_err(|e| format!("cannot open network namespace {path}: {e}"))
}

/// `[["op",[µs,…]],…]` in execution order.
fn json_ops(out: &mut String, all: &[Ops]) {
    out.push('[');
    let names: Vec<&str> = all
        .first()
        .map(|o| o.iter().map(|(n, _)| *n).collect())
        .unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("[\"");
        out.push_str(name);
        out.push_str("\",[");
        let values: Vec<String> = all
            .iter()
            .filter_map(|o| {
                o.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.to_string())
            })
            .collect();
        out.push_str(&values.join(","));
        out.push_str("]]");
    }
    out.push(']');
}

async fn run(args: &[String]) -> Res<Option<String>> {
    let home = open_ns("/proc/thread-self/ns/net")?;
    match args {
        [cmd, netns, ip, veth, table] if cmd == "add" || cmd == "del" => {
            let ip = parse_ip(ip)?;
            let table = parse_table(table)?;
            if veth.is_empty() || veth.len() > 15 {
                return Err(format!("host veth name {veth:?} must be 1..=15 bytes"));
            }
            let host = connection_in(&home, &home, "the node namespace")?;
            let pod_ns = open_ns(netns)?;
            let pod = connection_in(&pod_ns, &home, netns)?;
            let c = Conns { host, pod };
            if cmd == "del" {
                del(&c, ip, table).await?;
            } else {
                add(&c, &home, ip, veth, table).await?;
            }
            Ok(None)
        }
        [cmd, base, table, netns @ ..] if cmd == "loop" && !netns.is_empty() => {
            let base = u32::from(parse_ip(base)?);
            let table = parse_table(table)?;
            let host = connection_in(&home, &home, "the node namespace")?;
            let mut adds = Vec::new();
            let mut pods = Vec::new();
            for (i, path) in netns.iter().enumerate() {
                let ns = open_ns(path)?;
                let n = u32::try_from(i).map_err(|_| "too many namespaces".to_string())?;
                let ip = Ipv4Addr::from(base.wrapping_add(n));
                let veth = format!("flr{:011x}", n);
                let t0 = Instant::now();
                let pod = connection_in(&ns, &home, path)?;
                let mut ops = vec![("netlink_open", micros(t0.elapsed()))];
                let c = Conns {
                    host: host.clone(),
                    pod,
                };
                ops.extend(add(&c, &home, ip, &veth, table).await?);
                adds.push(ops);
                pods.push((ip, c));
            }
            let mut dels = Vec::new();
            for (ip, c) in &pods {
                dels.push(del(c, *ip, table).await?);
            }
            let mut out = String::from("{\"add\":");
            json_ops(&mut out, &adds);
            out.push_str(",\"del\":");
            json_ops(&mut out, &dels);
            out.push('}');
            Ok(Some(out))
        }
        _ => Err(USAGE.to_string()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kernel-floor: cannot build the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(Some(json)) => {
            #[allow(clippy::print_stdout)] // The JSON on stdout is this program's output.
            {
                println!("{json}");
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kernel-floor: {e}");
            ExitCode::from(2)
        }
    }
}
