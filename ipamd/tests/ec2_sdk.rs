//! `SdkEc2` (aws-sdk-ec2) against moto's EC2 server: every call ipamd makes, the domain types
//! it returns, how EC2's errors are classified, and which endpoint wins. moto (the tests'
//! launcher, `test_support::moto`) runs inside a throwaway network namespace; the client runs
//! on a thread that entered it.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
use aws_sdk_ec2::types as sdk;
use ipamd::cloud::ec2::{
    CreateEni, Ec2Api, Ec2ErrorKind, EniStatus, Filter, INSTANCE_ID_TAG, NetworkInterface,
    Platform, Tags,
};
use ipamd::cloud::ec2_sdk::SdkEc2;
use ipnet::{Ipv4Net, Ipv6Net};
use test_support::moto::MotoServer;
use test_support::netns::Netns;
use test_support::prereqs::require_root;

const PORT: u16 = 5000;

fn shared_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::v2026_01_12())
        .region(Region::new("us-west-2"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKIDTEST", "secret", None, None, "test",
        )))
        .endpoint_url(endpoint)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        )
        .build()
}

/// A VPC, a subnet, a security group and a t3.small instance; returns (subnet, sg, instance).
async fn seed(client: &aws_sdk_ec2::Client) -> (String, String, String) {
    let vpc = client
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
    let subnet = client
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.0.0.0/24")
        .availability_zone("us-west-2a")
        .send()
        .await
        .unwrap();
    let subnet_id = subnet.subnet().unwrap().subnet_id().unwrap().to_owned();
    let sg = client
        .create_security_group()
        .group_name("nodes")
        .description("nodes")
        .vpc_id(&vpc_id)
        .send()
        .await
        .unwrap();
    let sg_id = sg.group_id().unwrap().to_owned();
    let run = client
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(sdk::InstanceType::T3Small)
        .min_count(1)
        .max_count(1)
        .subnet_id(&subnet_id)
        .security_group_ids(&sg_id)
        .send()
        .await
        .unwrap();
    let instance = run.instances()[0].instance_id().unwrap().to_owned();
    (subnet_id, sg_id, instance)
}

/// The VPC of `subnet`.
async fn vpc_of(raw: &aws_sdk_ec2::Client, subnet: &str) -> String {
    raw.describe_subnets()
        .subnet_ids(subnet)
        .send()
        .await
        .unwrap()
        .subnets()[0]
        .vpc_id()
        .unwrap()
        .to_owned()
}

/// The ENI `id` as DescribeNetworkInterfaces shows it.
async fn describe_one(ec2: &SdkEc2, id: &str) -> NetworkInterface {
    ec2.describe_network_interfaces(&[id.to_owned()])
        .await
        .unwrap()
        .remove(0)
}

/// What a test on moto gets: moto's URL, the raw SDK client pointed at it, ipamd's client, and
/// the VPC `seed` made (subnet, security group, instance).
struct OnMoto {
    url: String,
    raw: aws_sdk_ec2::Client,
    ec2: SdkEc2,
    subnet: String,
    sg: String,
    instance: String,
}

/// Starts moto in a throwaway namespace named `ns_name`, seeds it, and runs `test` on a thread
/// inside that namespace.
fn with_moto<F, Fut>(ns_name: &str, test: F)
where
    F: FnOnce(OnMoto) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    require_root().unwrap();
    let ns = Netns::new(ns_name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start(
        &ns,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT),
        dir.path(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let url = moto.endpoint();
    ns.block_on_in(move || async move {
        let shared = shared_config(&url);
        let raw = aws_sdk_ec2::Client::new(&shared);
        let (subnet, sg, instance) = seed(&raw).await;
        let ec2 = SdkEc2::from_shared_config(&shared, None);
        test(OnMoto {
            url,
            raw,
            ec2,
            subnet,
            sg,
            instance,
        })
        .await;
    })
    .unwrap();
    drop(moto);
}

#[test]
fn every_call_ipamd_makes_works_against_moto() {
    with_moto("moto", |m| async move {
        let OnMoto {
            url: moto_url,
            raw,
            ec2,
            subnet,
            sg,
            instance,
        } = m;

        // DescribeSubnets with subnet discovery's filters, tags and free addresses.
        let vpc_id = vpc_of(&raw, &subnet).await;
        let tagged = raw
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block("10.0.4.0/22")
            .availability_zone("us-west-2a")
            .send()
            .await
            .unwrap()
            .subnet()
            .unwrap()
            .subnet_id()
            .unwrap()
            .to_owned();
        raw.create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block("10.0.8.0/24")
            .availability_zone("us-west-2b")
            .send()
            .await
            .unwrap();
        raw.create_tags()
            .resources(&tagged)
            .tags(
                sdk::Tag::builder()
                    .key("kubernetes.io/role/cni")
                    .value("1")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let mut subnets = ec2
            .describe_subnets(&[
                Filter::one("vpc-id", &vpc_id),
                Filter::one("availability-zone", "us-west-2a"),
            ])
            .await
            .unwrap();
        subnets.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(subnets.len(), 2, "{subnets:?}");
        let t = subnets.iter().find(|s| s.id == tagged).unwrap();
        assert_eq!(t.cidr.to_string(), "10.0.4.0/22");
        assert_eq!(t.availability_zone, "us-west-2a");
        assert_eq!(t.available_ips, 1024 - 5);
        assert_eq!(
            t.tags.get("kubernetes.io/role/cni").map(String::as_str),
            Some("1")
        );
        let node = subnets.iter().find(|s| s.id == subnet).unwrap();
        assert_eq!(
            node.available_ips,
            256 - 5 - 1,
            "the instance's address is taken"
        );
        let by_tag = ec2
            .describe_subnets(&[Filter::one("tag:kubernetes.io/role/cni", "1")])
            .await
            .unwrap();
        assert_eq!(by_tag.len(), 1);
        assert_eq!(by_tag[0].id, tagged);

        let types = ec2
            .describe_instance_types(&["t3.small".to_owned()])
            .await
            .unwrap();
        assert_eq!((types[0].max_enis, types[0].ipv4_per_eni), (3, 4));
        assert_eq!((types[0].vcpus, types[0].platform), (2, Platform::Nitro));
        let xen = ec2
            .describe_instance_types(&["c4.large".to_owned()])
            .await
            .unwrap();
        assert_eq!(xen[0].platform, Platform::Xen);
        assert!(!xen[0].platform.supports_prefix_delegation());
        let e = ec2
            .describe_instance_types(&["z9.mega".to_owned()])
            .await
            .unwrap_err();
        assert_eq!(e.api, "DescribeInstanceTypes");
        assert!(!e.code.is_empty() && e.status.is_some(), "{e:?}");

        let inst = ec2.describe_instance(&instance).await.unwrap();
        assert_eq!(inst.instance_type, "t3.small");
        assert_eq!(inst.enis.len(), 1);
        assert_eq!(inst.enis[0].device_index, 0);
        assert_eq!(inst.first_free_device_index(), Some(1));

        let tags = Tags::from([
            (INSTANCE_ID_TAG.to_owned(), instance.clone()),
            ("team".to_owned(), "net".to_owned()),
        ]);
        let eni = ec2
            .create_network_interface(&CreateEni {
                subnet_id: subnet.clone(),
                security_groups: vec![sg.clone()],
                description: format!("aws-K8S-{instance}"),
                secondary_ip_count: 2,
                prefix_count: 0,
                tags: tags.clone(),
                client_token: "token-1".into(),
            })
            .await
            .unwrap();
        assert_eq!(eni.private_ips.len(), 3, "{eni:?}");
        assert_eq!(eni.private_ips[0], eni.primary_ip.unwrap());
        assert_eq!(eni.secondary_ips().len(), 2);
        assert!(eni.mac.is_some());
        assert_eq!(eni.status, EniStatus::Available);
        assert_eq!(eni.description, format!("aws-K8S-{instance}"));
        assert_eq!(eni.tags, tags);
        assert_eq!(eni.security_groups, vec![sg.clone()]);
        assert_eq!(eni.subnet_id, subnet);

        let attachment = ec2
            .attach_network_interface(&eni.id, &instance, 1)
            .await
            .unwrap();
        assert!(attachment.starts_with("eni-attach-"), "{attachment}");
        ec2.set_delete_on_termination(&eni.id, &attachment)
            .await
            .unwrap();
        let inst = ec2.describe_instance(&instance).await.unwrap();
        assert!(
            inst.enis
                .iter()
                .any(|e| e.eni_id == eni.id && e.device_index == 1),
            "{inst:?}"
        );
        let d = &describe_one(&ec2, &eni.id).await;
        assert_eq!(d.status, EniStatus::InUse);
        let att = d.attachment.as_ref().unwrap();
        assert_eq!(att.attachment_id, attachment);
        assert_eq!(att.instance_id.as_deref(), Some(instance.as_str()));
        assert_eq!(att.device_index, Some(1));

        // moto reports all of the ENI's addresses after an assign; EC2 only the new ones.
        let before: Vec<Ipv4Addr> = d.private_ips.clone();
        let reported = ec2.assign_private_ip_addresses(&eni.id, 1).await.unwrap();
        let now = describe_one(&ec2, &eni.id).await;
        assert_eq!(now.private_ips.len(), 4);
        let new: Vec<Ipv4Addr> = now
            .private_ips
            .iter()
            .copied()
            .filter(|ip| !before.contains(ip))
            .collect();
        assert_eq!(new.len(), 1);
        assert!(reported.contains(&new[0]), "{reported:?}");
        ec2.unassign_private_ip_addresses(&eni.id, &new)
            .await
            .unwrap();
        let now = describe_one(&ec2, &eni.id).await;
        assert_eq!(now.private_ips, before);

        ec2.create_tags(
            std::slice::from_ref(&eni.id),
            &Tags::from([("extra".to_owned(), "1".to_owned())]),
        )
        .await
        .unwrap();
        let mine = ec2
            .describe_network_interfaces_filtered(&[
                Filter::one(format!("tag:{INSTANCE_ID_TAG}"), &instance),
                Filter::one("status", "in-use"),
            ])
            .await
            .unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].tags.get("extra").map(String::as_str), Some("1"));
        let attached = ec2
            .describe_network_interfaces_filtered(&[Filter::one(
                "attachment.instance-id",
                &instance,
            )])
            .await
            .unwrap();
        assert_eq!(attached.len(), 2);

        let e = ec2
            .describe_network_interfaces(&["eni-0123456789abcdef0".to_owned()])
            .await
            .unwrap_err();
        assert_eq!(e.kind, Ec2ErrorKind::NotFound, "{e:?}");
        assert_eq!(e.code, "InvalidNetworkInterfaceID.NotFound");

        ec2.detach_network_interface(&attachment).await.unwrap();
        let d = describe_one(&ec2, &eni.id).await;
        assert_eq!(d.status, EniStatus::Available);
        assert!(d.attachment.is_none());
        ec2.delete_network_interface(&eni.id).await.unwrap();
        let e = ec2.delete_network_interface(&eni.id).await.unwrap_err();
        assert_eq!(e.kind, Ec2ErrorKind::NotFound, "{e:?}");

        // AWS_EC2_ENDPOINT wins over the SDK's configured endpoint.
        let elsewhere = shared_config("http://127.0.0.1:1");
        let overridden = SdkEc2::from_shared_config(&elsewhere, Some(moto_url.clone()));
        assert_eq!(
            overridden
                .describe_instance(&instance)
                .await
                .unwrap()
                .instance_type,
            "t3.small"
        );
        let refused = SdkEc2::from_shared_config(&elsewhere, None)
            .describe_instance(&instance)
            .await
            .unwrap_err();
        assert_eq!(refused.kind, Ec2ErrorKind::Transport, "{refused:?}");
    });
}

/// Prefix delegation through the SDK against moto with the launcher's prefix extension: an ENI
/// created with a prefix, more assigned, described, one given back; a fragmented subnet answers
/// `InsufficientCidrBlocks`, which ipamd tells apart from a full subnet.
#[test]
fn prefixes_round_trip_against_moto() {
    with_moto("motopd", |m| async move {
        let OnMoto {
            raw,
            ec2,
            subnet,
            sg,
            instance,
            ..
        } = m;
        let eni = ec2
            .create_network_interface(&CreateEni {
                subnet_id: subnet.clone(),
                security_groups: vec![sg],
                description: format!("aws-K8S-{instance}"),
                secondary_ip_count: 0,
                prefix_count: 1,
                tags: Tags::new(),
                client_token: "token-pd".into(),
            })
            .await
            .unwrap();
        assert_eq!(eni.private_ips.len(), 1, "{eni:?}");
        assert_eq!(eni.ipv4_prefixes.len(), 1, "{eni:?}");
        let added = ec2.assign_ipv4_prefixes(&eni.id, 2).await.unwrap();
        assert_eq!(added.len(), 2);
        let shown = describe_one(&ec2, &eni.id).await;
        assert_eq!(shown.ipv4_prefixes.len(), 3);
        for p in &shown.ipv4_prefixes {
            assert_eq!(p.prefix_len(), 28);
            assert!(!p.contains(&shown.primary_ip.unwrap()));
        }
        ec2.unassign_ipv4_prefixes(&eni.id, &added[..1])
            .await
            .unwrap();
        let shown = describe_one(&ec2, &eni.id).await;
        assert_eq!(shown.ipv4_prefixes.len(), 2);
        assert!(!shown.ipv4_prefixes.contains(&added[0]));
        let bogus: Ipv4Net = "10.0.0.240/28".parse().unwrap();
        let e = ec2
            .unassign_ipv4_prefixes(&eni.id, &[bogus])
            .await
            .unwrap_err();
        assert_eq!(e.code, "InvalidParameterValue", "{e:?}");

        // Pin one address in every free /28: addresses remain, aligned blocks do not.
        let subnet_net: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let held: Vec<Ipv4Net> = shown.ipv4_prefixes.clone();
        let pins: Vec<String> = subnet_net
            .subnets(28)
            .unwrap()
            .filter(|b| !held.contains(b))
            .map(|b| Ipv4Addr::from(u32::from(b.network()) + 9).to_string())
            .collect();
        raw.assign_private_ip_addresses()
            .network_interface_id(&eni.id)
            .set_private_ip_addresses(Some(pins))
            .send()
            .await
            .unwrap();
        let e = ec2.assign_ipv4_prefixes(&eni.id, 1).await.unwrap_err();
        assert_eq!(e.kind, Ec2ErrorKind::NoFreePrefix, "{e:?}");
        assert_eq!(e.code, "InsufficientCidrBlocks");
        // Secondary addresses still come: ipamd's fallback.
        let fallback = ec2.assign_private_ip_addresses(&eni.id, 2).await.unwrap();
        assert!(fallback.len() >= 2, "{fallback:?}");
    });
}

/// IPv6 mode's one EC2 write through the SDK against moto with the launcher's IPv6 prefix
/// extension: the VPC gets an Amazon-provided /56, the subnet a /64 of it, and
/// `AssignIpv6Addresses` with `Ipv6PrefixCount=1` delegates an aligned /80 of the /64, which
/// `DescribeNetworkInterfaces` then shows; a subnet without IPv6 is EC2's 400 error, not 500.
#[test]
fn ipv6_prefix_round_trip_against_moto() {
    with_moto("moto6", |m| async move {
        let OnMoto {
            raw,
            ec2,
            subnet,
            instance,
            ..
        } = m;
        let primary = raw
            .describe_instances()
            .instance_ids(&instance)
            .send()
            .await
            .unwrap()
            .reservations()[0]
            .instances()[0]
            .network_interfaces()[0]
            .network_interface_id()
            .unwrap()
            .to_owned();
        // No IPv6 CIDR on the subnet yet: a client error naming the parameter.
        let e = ec2.assign_ipv6_prefixes(&primary, 1).await.unwrap_err();
        assert_eq!(e.code, "InvalidParameterValue", "{e:?}");

        let vpc_id = vpc_of(&raw, &subnet).await;
        let vpc_block: Ipv6Net = raw
            .associate_vpc_cidr_block()
            .vpc_id(&vpc_id)
            .amazon_provided_ipv6_cidr_block(true)
            .send()
            .await
            .unwrap()
            .ipv6_cidr_block_association()
            .and_then(|a| a.ipv6_cidr_block())
            .unwrap()
            .parse()
            .unwrap();
        let subnet_block = vpc_block.subnets(64).unwrap().next().unwrap();
        raw.associate_subnet_cidr_block()
            .subnet_id(&subnet)
            .ipv6_cidr_block(subnet_block.to_string())
            .send()
            .await
            .unwrap();

        let assigned = ec2.assign_ipv6_prefixes(&primary, 1).await.unwrap();
        assert_eq!(assigned.len(), 1, "{assigned:?}");
        let prefix = assigned[0];
        assert_eq!(prefix.prefix_len(), 80);
        assert!(
            subnet_block.contains(&prefix),
            "{prefix} outside {subnet_block}"
        );
        let shown = describe_one(&ec2, &primary).await;
        assert_eq!(shown.ipv6_prefixes, vec![prefix]);
    });
}
