//! Which subnet a new ENI goes into (`ENABLE_SUBNET_DISCOVERY`, EC2 mode), with the reference's
//! rules (`awsutils.go`: `createENI`, `GetVpcSubnets`, `isSubnetValidForENICreation`,
//! `ValidSubnetTagsMatchingClusterName`, `IsSubnetExcluded`):
//!
//! - `DescribeSubnets` with the filters `vpc-id` and `availability-zone` of the node lists the
//!   subnets a new ENI could use; they are tried in order of `AvailableIpAddressCount`, most
//!   free addresses first (a stable sort: EC2's order breaks ties).
//! - The node's own subnet (its primary ENI's) is a candidate unless tagged
//!   `kubernetes.io/role/cni=0`; any other subnet only when tagged `kubernetes.io/role/cni` with
//!   a value other than `0`.
//! - A tagged subnet that also carries `cni.networking.k8s.aws/cluster/<name>` tags is used only
//!   by the cluster named in one of them, when `CLUSTER_NAME` is set (without `CLUSTER_NAME` the
//!   cluster tags are not consulted, as in the reference).
//! - New ENIs get the primary ENI's security groups, whatever their subnet.
//! - `ENABLE_SUBNET_DISCOVERY=false`: the node's subnet only, unless it is tagged
//!   `kubernetes.io/role/cni=0` (then no ENI is created at all).
//! - `DescribeSubnets` failing (an IAM policy without `ec2:DescribeSubnets`, throttling): the
//!   node's subnet, as the reference's README says.
//!
//! The answer is cached ([`SubnetPicker::is_fresh`]): ENI creation re-reads it when older than
//! a short TTL, the periodic refresh behind `awscni_subnet_available_ips` much less often, and
//! every ENI created or address assigned lowers the cached count at once.

use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::cloud::ec2::{Ec2Api, Ec2Error, Filter, Subnet};

/// The subnet tag that opts a subnet in (any value but `0`) or out (`0`).
pub const ROLE_CNI_TAG: &str = "kubernetes.io/role/cni";
/// The value of [`ROLE_CNI_TAG`] that excludes a subnet.
pub const ROLE_CNI_EXCLUDED: &str = "0";
/// Prefix of the tags that reserve a subnet for named clusters
/// (`cni.networking.k8s.aws/cluster/<CLUSTER_NAME>`).
pub const CLUSTER_TAG_PREFIX: &str = "cni.networking.k8s.aws/cluster/";

/// Whether a subnet may take new ENIs, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eligibility {
    /// It may: the node's subnet, or a subnet tagged for this cluster.
    Eligible,
    /// Tagged `kubernetes.io/role/cni=0`.
    Excluded,
    /// Another subnet without the `kubernetes.io/role/cni` tag (not opted in).
    NotTagged,
    /// Tagged for other clusters only (`cni.networking.k8s.aws/cluster/<other>`).
    OtherCluster,
}

impl Eligibility {
    /// Why a subnet is not used, for logs and status.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Eligible => "eligible",
            Self::Excluded => "tagged kubernetes.io/role/cni=0",
            Self::NotTagged => "not tagged kubernetes.io/role/cni",
            Self::OtherCluster => "tagged for another cluster (cni.networking.k8s.aws/cluster/...)",
        }
    }
}

/// The reference's `isSubnetValidForENICreation`: the role tag first (`0` excludes any subnet;
/// without it only the node's own subnet is used), then the cluster tags.
pub fn eligibility(
    subnet: &Subnet,
    is_node_subnet: bool,
    cluster_name: Option<&str>,
) -> Eligibility {
    match subnet.tags.get(ROLE_CNI_TAG).map(String::as_str) {
        Some(ROLE_CNI_EXCLUDED) => return Eligibility::Excluded,
        // An empty value counts as no tag, as in the reference.
        None | Some("") if is_node_subnet => return Eligibility::Eligible,
        None | Some("") => return Eligibility::NotTagged,
        Some(_) => {}
    }
    let Some(cluster) = cluster_name else {
        return Eligibility::Eligible;
    };
    let mut cluster_tags = subnet
        .tags
        .keys()
        .filter_map(|k| k.strip_prefix(CLUSTER_TAG_PREFIX))
        .peekable();
    if cluster_tags.peek().is_none() || cluster_tags.any(|c| c == cluster) {
        Eligibility::Eligible
    } else {
        Eligibility::OtherCluster
    }
}

/// Where the candidates came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Subnet discovery over `DescribeSubnets`.
    Discovered,
    /// `ENABLE_SUBNET_DISCOVERY=false`: the node's subnet only.
    NodeSubnetOnly,
    /// `DescribeSubnets` has not answered (yet): the node's subnet, as the reference does.
    Fallback(String),
}

/// A subnet a new ENI may go into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `subnet-…`.
    pub id: String,
    /// Its CIDR (the ENI's address prefix and route-table gateway come from it).
    pub cidr: Ipv4Net,
    /// Free addresses as last read (`None`: not read).
    pub available_ips: Option<u32>,
    /// The node's own subnet.
    pub is_node_subnet: bool,
}

/// The subnets of the node's VPC and zone, as the picker last read them.
#[derive(Debug)]
pub struct SubnetPicker {
    discovery: bool,
    cluster_name: Option<String>,
    node_subnet: String,
    node_cidr: Ipv4Net,
    zone: String,
    read: Option<(Instant, Vec<Subnet>)>,
    last_error: Option<String>,
}

impl SubnetPicker {
    /// A picker for a node whose primary ENI is in `node_subnet` (`node_cidr`) in `zone`.
    pub fn new(
        discovery: bool,
        cluster_name: Option<String>,
        node_subnet: &str,
        node_cidr: Ipv4Net,
        zone: &str,
    ) -> Self {
        Self {
            discovery,
            cluster_name,
            node_subnet: node_subnet.to_owned(),
            node_cidr,
            zone: zone.to_owned(),
            read: None,
            last_error: None,
        }
    }

    /// Whether subnet discovery is on.
    pub fn discovery(&self) -> bool {
        self.discovery
    }

    /// Whether the last read is younger than `max_age`.
    pub fn is_fresh(&self, now: Instant, max_age: Duration) -> bool {
        self.read
            .as_ref()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < max_age)
    }

    /// Reads the subnets of `vpc_id` in the node's zone. On failure the last read (if any) is
    /// kept and the error remembered for [`Self::candidates`].
    ///
    /// # Errors
    /// EC2's answer to `DescribeSubnets`.
    pub async fn refresh(
        &mut self,
        ec2: &impl Ec2Api,
        vpc_id: &str,
        now: Instant,
    ) -> Result<(), Ec2Error> {
        let filters = [
            Filter::one("vpc-id", vpc_id),
            Filter::one("availability-zone", &self.zone),
        ];
        match ec2.describe_subnets(&filters).await {
            Ok(mut subnets) => {
                // Most free addresses first; stable, so EC2's order breaks ties.
                subnets.sort_by_key(|s| std::cmp::Reverse(s.available_ips));
                self.read = Some((now, subnets));
                self.last_error = None;
                Ok(())
            }
            Err(e) => {
                self.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Remembers that the VPC is not known, so subnets cannot be read.
    pub fn unreadable(&mut self, why: &str) {
        self.last_error = Some(why.to_owned());
    }

    /// Every subnet of the last read with its eligibility, most free addresses first.
    pub fn subnets(&self) -> Vec<(&Subnet, Eligibility)> {
        let Some((_, subnets)) = &self.read else {
            return Vec::new();
        };
        subnets
            .iter()
            .map(|s| {
                let node = s.id == self.node_subnet;
                (s, eligibility(s, node, self.cluster_name.as_deref()))
            })
            .collect()
    }

    /// The subnets a new ENI may go into, in the order to try them, and where that list came
    /// from. Empty when the node's subnet is excluded and nothing else qualifies.
    pub fn candidates(&self) -> (Vec<Candidate>, Source) {
        let node_only = |available_ips| Candidate {
            id: self.node_subnet.clone(),
            cidr: self.node_cidr,
            available_ips,
            is_node_subnet: true,
        };
        let candidate = |s: &Subnet| Candidate {
            id: s.id.clone(),
            cidr: s.cidr,
            available_ips: Some(s.available_ips),
            is_node_subnet: s.id == self.node_subnet,
        };
        let Some((_, subnets)) = &self.read else {
            let source = if self.discovery {
                Source::Fallback(
                    self.last_error
                        .clone()
                        .unwrap_or_else(|| "subnets not read yet".to_owned()),
                )
            } else {
                Source::NodeSubnetOnly
            };
            return (vec![node_only(None)], source);
        };
        let eligible: Vec<Candidate> = self
            .subnets()
            .into_iter()
            .filter(|(s, e)| {
                *e == Eligibility::Eligible && (self.discovery || s.id == self.node_subnet)
            })
            .map(|(s, _)| candidate(s))
            .collect();
        if self.discovery {
            return (eligible, Source::Discovered);
        }
        // Discovery off: the node's subnet unless it is excluded; when the read did not list it
        // (another account's subnet, say) it is used, as the reference does.
        let listed = subnets.iter().any(|s| s.id == self.node_subnet);
        if listed {
            (eligible, Source::NodeSubnetOnly)
        } else {
            (vec![node_only(None)], Source::NodeSubnetOnly)
        }
    }

    /// Lowers the cached free-address count of `subnet` by `n` (an ENI or addresses were just
    /// created there), so the next choice sees it before the next read.
    pub fn took(&mut self, subnet: &str, n: u32) {
        if let Some((_, subnets)) = &mut self.read
            && let Some(s) = subnets.iter_mut().find(|s| s.id == subnet)
        {
            s.available_ips = s.available_ips.saturating_sub(n);
            subnets.sort_by_key(|s| std::cmp::Reverse(s.available_ips));
        }
    }

    /// The CIDR of a subnet of the last read (or the node's).
    pub fn cidr_of(&self, subnet: &str) -> Option<Ipv4Net> {
        if subnet == self.node_subnet {
            return Some(self.node_cidr);
        }
        self.read
            .as_ref()
            .and_then(|(_, subnets)| subnets.iter().find(|s| s.id == subnet))
            .map(|s| s.cidr)
    }

    /// Whether `subnet` may no longer take pods' addresses (tagged `kubernetes.io/role/cni=0`
    /// or for another cluster, as far as the last read shows). Only with discovery on, as in the
    /// reference.
    pub fn is_excluded(&self, subnet: &str) -> bool {
        if !self.discovery {
            return false;
        }
        self.subnets().into_iter().any(|(s, e)| {
            s.id == subnet && matches!(e, Eligibility::Excluded | Eligibility::OtherCluster)
        })
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::cloud::ec2::Tags;
    use crate::testing::fake_ec2::{FakeEc2, SUBNET_ID, VPC_ID};

    /// Tagged for ENIs (`kubernetes.io/role/cni=1`).
    const FOR_CNI: (&str, &str) = (ROLE_CNI_TAG, "1");
    /// Tagged for the `dev` cluster.
    const DEV: (&str, &str) = ("cni.networking.k8s.aws/cluster/dev", "1");

    fn subnet(id: &str, available: u32, tags: &[(&str, &str)]) -> Subnet {
        Subnet {
            id: id.into(),
            cidr: "10.0.9.0/24".parse().unwrap(),
            availability_zone: "us-west-2a".into(),
            vpc_id: "vpc-1".into(),
            available_ips: available,
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Tags>(),
        }
    }

    /// Tags, whether it is the node's subnet, `CLUSTER_NAME`, the expected answer.
    type Case<'a> = (&'a [(&'a str, &'a str)], bool, Option<&'a str>, Eligibility);

    #[test]
    fn eligibility_follows_the_reference_rules() {
        use Eligibility::*;
        let cases: [Case<'_>; 12] = [
            (&[], true, None, Eligible),
            (&[], false, None, NotTagged),
            (&[(ROLE_CNI_TAG, "0")], true, None, Excluded),
            (&[(ROLE_CNI_TAG, "0")], false, None, Excluded),
            (&[FOR_CNI], false, None, Eligible),
            (&[(ROLE_CNI_TAG, "")], false, None, NotTagged),
            (&[(ROLE_CNI_TAG, "yes")], false, Some("prod"), Eligible),
            (
                &[FOR_CNI, ("cni.networking.k8s.aws/cluster/prod", "1")],
                false,
                Some("prod"),
                Eligible,
            ),
            (&[FOR_CNI, DEV], false, Some("prod"), OtherCluster),
            (
                &[
                    FOR_CNI,
                    DEV,
                    ("cni.networking.k8s.aws/cluster/prod", "shared"),
                ],
                false,
                Some("prod"),
                Eligible,
            ),
            // Without CLUSTER_NAME the cluster tags are not consulted.
            (&[FOR_CNI, DEV], false, None, Eligible),
            // The node's subnet tagged for another cluster: excluded as well.
            (&[FOR_CNI, DEV], true, Some("prod"), OtherCluster),
        ];
        for (tags, node, cluster, want) in cases {
            assert_eq!(
                eligibility(&subnet("s", 10, tags), node, cluster),
                want,
                "{tags:?} node={node} cluster={cluster:?}"
            );
        }
    }

    fn picker(discovery: bool, cluster: Option<&str>) -> SubnetPicker {
        SubnetPicker::new(
            discovery,
            cluster.map(str::to_owned),
            SUBNET_ID,
            "10.0.0.0/24".parse().unwrap(),
            "us-west-2a",
        )
    }

    #[tokio::test]
    async fn candidates_are_eligible_subnets_with_most_free_addresses_first() {
        let ec2 = FakeEc2::new();
        ec2.add_subnet("subnet-small", "10.0.1.0/28", "us-west-2a", &[FOR_CNI]);
        ec2.add_subnet("subnet-big", "10.0.4.0/22", "us-west-2a", &[FOR_CNI]);
        ec2.add_subnet("subnet-untagged", "10.0.8.0/21", "us-west-2a", &[]);
        ec2.add_subnet(
            "subnet-off",
            "10.0.16.0/20",
            "us-west-2a",
            &[(ROLE_CNI_TAG, "0")],
        );
        ec2.add_subnet("subnet-zone-b", "10.0.32.0/20", "us-west-2b", &[FOR_CNI]);
        ec2.add_subnet("subnet-dev", "10.0.48.0/20", "us-west-2a", &[FOR_CNI, DEV]);
        let mut p = picker(true, Some("prod"));
        let now = Instant::now();
        p.refresh(&ec2, VPC_ID, now).await.unwrap();
        let (c, source) = p.candidates();
        assert_eq!(source, Source::Discovered);
        let ids: Vec<&str> = c.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["subnet-big", SUBNET_ID, "subnet-small"]);
        assert_eq!(c[0].available_ips, Some(1024 - 5));
        assert_eq!(c[0].cidr, "10.0.4.0/22".parse::<Ipv4Net>().unwrap());
        assert!(c[1].is_node_subnet);
        assert!(p.is_fresh(now, Duration::from_secs(1)));
        assert!(!p.is_fresh(now + Duration::from_secs(2), Duration::from_secs(1)));
        assert!(p.is_excluded("subnet-off") && p.is_excluded("subnet-dev"));
        assert!(!p.is_excluded("subnet-untagged") && !p.is_excluded(SUBNET_ID));

        // Taking addresses reorders before the next read.
        p.took("subnet-big", 1000);
        let ids: Vec<String> = p.candidates().0.into_iter().map(|c| c.id).collect();
        assert_eq!(ids, [SUBNET_ID, "subnet-big", "subnet-small"]);
    }

    #[tokio::test]
    async fn the_node_subnet_tagged_zero_is_not_a_candidate() {
        let ec2 = FakeEc2::new();
        ec2.tag_subnet(SUBNET_ID, ROLE_CNI_TAG, "0");
        ec2.add_subnet("subnet-pods", "10.0.4.0/22", "us-west-2a", &[FOR_CNI]);
        let mut on = picker(true, None);
        on.refresh(&ec2, VPC_ID, Instant::now()).await.unwrap();
        let ids: Vec<String> = on.candidates().0.into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["subnet-pods"]);
        assert!(on.is_excluded(SUBNET_ID));

        // Discovery off: only the node's subnet, and it is excluded: nothing.
        let mut off = picker(false, None);
        off.refresh(&ec2, VPC_ID, Instant::now()).await.unwrap();
        let (c, source) = off.candidates();
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(source, Source::NodeSubnetOnly);
    }

    #[tokio::test]
    async fn discovery_off_uses_the_node_subnet_only() {
        let ec2 = FakeEc2::new();
        ec2.add_subnet("subnet-pods", "10.0.4.0/22", "us-west-2a", &[FOR_CNI]);
        let mut p = picker(false, None);
        assert_eq!(p.candidates().1, Source::NodeSubnetOnly);
        p.refresh(&ec2, VPC_ID, Instant::now()).await.unwrap();
        let (c, source) = p.candidates();
        assert_eq!(source, Source::NodeSubnetOnly);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].id, SUBNET_ID);
        assert!(!p.is_excluded("subnet-pods"));
    }

    #[tokio::test]
    async fn a_failed_read_falls_back_to_the_node_subnet() {
        let ec2 = FakeEc2::new();
        ec2.fail_next(
            "DescribeSubnets",
            crate::cloud::ec2::Ec2ErrorKind::Unauthorized,
            1,
        );
        let mut p = picker(true, None);
        assert!(p.refresh(&ec2, VPC_ID, Instant::now()).await.is_err());
        let (c, source) = p.candidates();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].id, SUBNET_ID);
        assert!(c[0].available_ips.is_none());
        match source {
            Source::Fallback(why) => assert!(why.contains("UnauthorizedOperation"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
