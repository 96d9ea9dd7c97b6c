//! podman 4.3 with its CNI backend runs a container on the simulated node: the container gets a
//! VPC address through aws-cni and the conflist ipamd wrote, and `--rm` leaves nothing behind;
//! `podman network disconnect` / `connect` behave as docs/contracts.md ("DEL") says.

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::Duration;

use harness::node::NETWORK_NAME;
use harness::{NodeOptions, Podman, SimNode, host_veth_name, standard_node};

fn fail(node: &SimNode, msg: String) -> ! {
    panic!("{msg}\n{}", node.diag())
}

/// A simulated node with one ENI of 3 secondary addresses.
fn start_node() -> SimNode {
    SimNode::start(NodeOptions::new(standard_node(&[3])))
        .unwrap_or_else(|e| panic!("cannot start the simulated node: {e}"))
}

/// podman set up on `node`, and the busybox image it runs.
fn podman_with_busybox(node: &SimNode) -> (Podman<'_>, &'static str) {
    let podman = Podman::new(node).unwrap_or_else(|e| fail(node, e.to_string()));
    let image = podman
        .import_busybox()
        .unwrap_or_else(|e| fail(node, e.to_string()));
    (podman, image)
}

#[test]
fn podman_run_gets_a_vpc_address_from_the_written_conflist() {
    let node = start_node();
    let (podman, image) = podman_with_busybox(&node);
    let name = format!("vcni-web-{}", std::process::id());
    let script = "ip -4 addr show eth0; ip route; echo VCNI-READY; sleep 3";
    let mut child = podman
        .spawn(&[
            "run",
            "--rm",
            "--network",
            NETWORK_NAME,
            "--name",
            &name,
            image,
            "sh",
            "-c",
            script,
        ])
        .unwrap_or_else(|e| fail(&node, e.to_string()));

    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    // Follow the container's output until it reports its network.
    let mut output = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) if line == "VCNI-READY" => break,
            Ok(line) => output.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let err = stderr_reader.join().unwrap_or_default();
                fail(
                    &node,
                    format!("the container never got ready; stdout {output:?}\nstderr:\n{err}"),
                );
            }
        }
    }
    let text = output.join("\n");
    let ip: Ipv4Addr = text
        .lines()
        .find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("inet ")?;
            let cidr = rest.split_whitespace().next()?;
            let (addr, len) = cidr.split_once('/')?;
            (len == "32").then(|| addr.parse().ok())?
        })
        .unwrap_or_else(|| {
            fail(
                &node,
                format!("no inet x/32 on the container's eth0:\n{text}"),
            )
        });
    if !node.description().all_secondary_ips().contains(&ip) {
        fail(
            &node,
            format!("container address {ip} is not a secondary IP of the metadata"),
        );
    }
    if !text
        .lines()
        .any(|l| l.trim().starts_with("default via 169.254.1.1 dev eth0"))
    {
        fail(
            &node,
            format!("the container has no default via 169.254.1.1:\n{text}"),
        );
    }
    // podman passes K8S_POD_NAME=<container name> and no namespace: the plugin uses "default".
    let veth = host_veth_name("eni", "default", &name);
    let running_link = node.ns().link(&veth).unwrap();
    let running_routes = node.routes_to(ip).unwrap();
    let running_rules = node.rules_for(ip).unwrap();

    let status = child.wait().unwrap();
    let err = stderr_reader.join().unwrap_or_default();
    if !status.success() {
        fail(&node, format!("podman run exited {status}\nstderr:\n{err}"));
    }
    if running_link.is_none() || running_routes.is_empty() || running_rules.is_empty() {
        fail(
            &node,
            format!(
                "while the container ran the node lacked its veth {veth} ({running_link:?}), \
                 route ({running_routes:?}) or rule 512 ({running_rules:?})"
            ),
        );
    }
    // --rm ran DEL and removed the container's namespace: nothing of the container remains on
    // the node or in ipamd (DEL removed the route and rules; the veth pair went with the
    // namespace, in the kernel's asynchronous namespace cleanup).
    let _ = node
        .ns()
        .wait_link_gone(&veth, Duration::from_secs(10))
        .unwrap();
    let link = node.ns().link(&veth).unwrap();
    let routes = node.routes_to(ip).unwrap();
    let rules = node.rules_for(ip).unwrap();
    if link.is_some() || !routes.is_empty() || !rules.is_empty() {
        fail(
            &node,
            format!(
                "after --rm: veth {link:?}, routes {routes:?}, rules {rules:?} remain\npodman stderr:\n{err}"
            ),
        );
    }
    let status = node.pool_status().unwrap();
    if status.assigned_i_ps != 0 {
        fail(
            &node,
            format!("ipamd still has assignments after --rm: {status:?}"),
        );
    }
}

/// A container whose network is disconnected keeps its namespace: DEL removes the node's route
/// and rules of its address and the address from its eth0 (so it cannot use an address ipamd
/// may give to another pod) and releases the address; the veth pair stays until the container
/// goes. Connecting the same network again adds eth0 once more, which is refused because eth0
/// still exists (docs/contracts.md, "DEL").
#[test]
fn podman_network_disconnect_unroutes_and_releases_and_connect_again_is_refused() {
    let node = start_node();
    let (podman, image) = podman_with_busybox(&node);
    let name = format!("vcni-dis-{}", std::process::id());
    let podman_ok = |args: &[&str]| -> String {
        let out = podman
            .run(args)
            .unwrap_or_else(|e| fail(&node, e.to_string()));
        if !out.status.success() {
            fail(
                &node,
                format!(
                    "podman {args:?} exited {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    podman_ok(&[
        "run",
        "-d",
        "--network",
        NETWORK_NAME,
        "--name",
        &name,
        image,
        "sleep",
        "600",
    ]);
    let ipv4 = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet")?;
                words.next().map(str::to_owned)
            })
            .filter(|a| !a.starts_with("127."))
            .collect()
    };
    let addrs = ipv4(&podman_ok(&["exec", &name, "ip", "-4", "-o", "addr"]));
    let ip: Ipv4Addr = match addrs.as_slice() {
        [one] if one.ends_with("/32") => one.trim_end_matches("/32").parse().unwrap(),
        _ => fail(&node, format!("the container's addresses: {addrs:?}")),
    };
    let veth = host_veth_name("eni", "default", &name);
    if node.ns().link(&veth).unwrap().is_none() || node.rules_for(ip).unwrap().is_empty() {
        fail(
            &node,
            format!("the container's veth {veth} or rules are missing"),
        );
    }

    // Disconnect: DEL. The node no longer routes the address, ipamd has it back, the container
    // has no address any more; the veth pair stays with the container's namespace.
    podman_ok(&["network", "disconnect", NETWORK_NAME, &name]);
    let routes = node.routes_to(ip).unwrap();
    let rules = node.rules_for(ip).unwrap();
    if !routes.is_empty() || !rules.is_empty() {
        fail(
            &node,
            format!("after disconnect: routes {routes:?}, rules {rules:?} of {ip} remain"),
        );
    }
    let status = node.pool_status().unwrap();
    if status.assigned_i_ps != 0 {
        fail(&node, format!("{ip} was not released: {status:?}"));
    }
    let left = ipv4(&podman_ok(&["exec", &name, "ip", "-4", "-o", "addr"]));
    if !left.is_empty() {
        fail(
            &node,
            format!("the disconnected container still holds {left:?}"),
        );
    }
    let links = podman_ok(&["exec", &name, "ip", "-o", "link"]);
    if !links.contains("eth0") || node.ns().link(&veth).unwrap().is_none() {
        fail(
            &node,
            format!("the veth pair should stay with the namespace: container links {links}"),
        );
    }

    // Connect again: ADD of eth0 where eth0 exists is refused (CNI code 121), nothing taken.
    let out = podman
        .run(&["network", "connect", NETWORK_NAME, &name])
        .unwrap_or_else(|e| fail(&node, e.to_string()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !stderr.contains("interface eth0 already exists") {
        fail(
            &node,
            format!("connect after disconnect: {} {stderr}", out.status),
        );
    }
    if node.pool_status().unwrap().assigned_i_ps != 0 {
        fail(&node, "the refused ADD kept an address".into());
    }

    // Removing the container removes its namespace, and the pair goes with it.
    podman_ok(&["rm", "--force", "--time", "0", &name]);
    if !node
        .ns()
        .wait_link_gone(&veth, Duration::from_secs(10))
        .unwrap()
    {
        fail(&node, format!("{veth} outlived the container's namespace"));
    }
}
