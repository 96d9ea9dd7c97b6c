//! Small address pools for unit tests: a datastore on a manual clock whose ENIs share
//! 10.0.0.0/24, and the key the plugin sends for a container.

use std::sync::Arc;
use std::time::Duration;

use crate::datastore::{Datastore, EniSpec, IpamKey, ManualClock};

/// The subnet every ENI of [`datastore`] is in.
pub const SUBNET: &str = "10.0.0.0/24";

/// The plugin's key for `container_id`'s `eth0` in the `aws-cni` network.
pub fn key(container_id: &str) -> IpamKey {
    IpamKey {
        network_name: "aws-cni".into(),
        container_id: container_id.into(),
        if_name: "eth0".into(),
    }
}

/// A datastore on a manual clock, addresses cooling for `cooldown` after release, holding
/// `enis` in order: each `(id, device number, primary IP, secondary IPs)`, all in [`SUBNET`].
/// Panics on malformed test input.
pub fn datastore(cooldown: Duration, enis: &[(&str, u32, &str, &[&str])]) -> Datastore {
    let mut ds = Datastore::new(cooldown, Arc::new(ManualClock::new()), "note");
    for (id, device_number, primary, ips) in enis {
        ds.add_eni(EniSpec {
            id: (*id).into(),
            device_number: *device_number,
            primary_ip: primary.parse().unwrap(),
            subnet: SUBNET.parse().unwrap(),
        })
        .unwrap();
        for ip in *ips {
            ds.add_ip(id, ip.parse().unwrap()).unwrap();
        }
    }
    ds
}

/// Two ENIs with two free addresses each, cooling 30 s: eni-a (device 0, 10.0.0.10; .11, .12)
/// and eni-b (device 1, 10.0.0.20; .21, .22).
pub fn two_enis() -> Datastore {
    datastore(
        Duration::from_secs(30),
        &[
            ("eni-a", 0, "10.0.0.10", &["10.0.0.11", "10.0.0.12"]),
            ("eni-b", 1, "10.0.0.20", &["10.0.0.21", "10.0.0.22"]),
        ],
    )
}
