//! [`SdkEc2`]: the [`Ec2Api`] over aws-sdk-ec2.
//!
//! The client is built from `aws_config` with the SDK's standard settings only: region from
//! `AWS_REGION`/`AWS_DEFAULT_REGION`, the profile, else instance metadata; credentials from the
//! SDK's default chain (environment, profile, web identity, container, instance profile through
//! IMDS); endpoint from `AWS_ENDPOINT_URL_EC2` / `AWS_ENDPOINT_URL`, overridden by the reference's
//! `AWS_EC2_ENDPOINT` when that is set. Each request attempt times out after `HTTP_TIMEOUT`.
//!
//! The SDK's own retries are switched off: [`super::ec2_client::Ec2Client`] retries with jittered
//! exponential backoff and counts every attempt, so the number of requests EC2 sees is the number
//! the metrics show.
//!
//! The client is built on first use, not at start-up, because finding the region may need
//! instance metadata, which ipamd waits for before it makes any EC2 call.

use std::net::Ipv4Addr;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types as sdk;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::OnceCell;

use super::ec2::{
    CreateEni, Ec2Api, Ec2Error, Ec2ErrorKind, EniAttachment, EniStatus, Filter, Instance,
    InstanceEni, InstanceTypeLimits, NetworkInterface, Platform, Subnet, Tags,
};
use super::imds::error_chain;
use crate::config::CloudConfig;

/// Page size of filtered `DescribeNetworkInterfaces` (the reference's).
const PAGE_SIZE: i32 = 1000;

/// EC2 through aws-sdk-ec2.
#[derive(Debug)]
pub struct SdkEc2 {
    endpoint: Option<String>,
    timeout: Duration,
    app_name: Option<String>,
    client: OnceCell<Client>,
}

impl SdkEc2 {
    /// A client for `config`'s endpoint override and timeout; nothing is resolved yet.
    pub fn new(config: &CloudConfig) -> Self {
        Self {
            endpoint: config.ec2_endpoint.clone(),
            timeout: config.http_timeout,
            app_name: config
                .vpc_cni_version
                .as_ref()
                .map(|v| format!("aws-vpc-cni-rs-{v}")),
            client: OnceCell::new(),
        }
    }

    /// A client over an already-loaded SDK configuration (region, credentials, timeouts,
    /// endpoint), with `endpoint` (the reference's `AWS_EC2_ENDPOINT`) overriding the
    /// configuration's endpoint when given. The SDK's retries are switched off here too.
    pub fn from_shared_config(shared: &aws_config::SdkConfig, endpoint: Option<String>) -> Self {
        let client = client_from(shared, endpoint.as_deref());
        Self {
            timeout: shared
                .timeout_config()
                .and_then(|t| t.operation_attempt_timeout())
                .unwrap_or(Duration::from_secs(10)),
            endpoint,
            app_name: None,
            client: OnceCell::new_with(Some(client)),
        }
    }

    async fn client(&self, api: &'static str) -> Result<&Client, Ec2Error> {
        self.client
            .get_or_try_init(|| async {
                let mut loader = aws_config::defaults(BehaviorVersion::v2026_01_12())
                    .region(RegionProviderChain::default_provider())
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(
                        TimeoutConfig::builder()
                            .operation_attempt_timeout(self.timeout)
                            .connect_timeout(self.timeout.min(Duration::from_secs(5)))
                            .build(),
                    );
                if let Some(name) = &self.app_name {
                    match aws_config::AppName::new(name.clone()) {
                        Ok(app) => loader = loader.app_name(app),
                        Err(e) => tracing::warn!(app_name = %name, error = %e, "VPC_CNI_VERSION is not usable in the user agent"),
                    }
                }
                let shared = loader.load().await;
                let Some(region) = shared.region() else {
                    return Err(Ec2Error::new(
                        api,
                        Ec2ErrorKind::Config,
                        "no AWS region: set AWS_REGION, or make instance metadata (placement/region) reachable",
                    ));
                };
                let client = client_from(&shared, self.endpoint.as_deref());
                tracing::info!(
                    region = %region,
                    endpoint = self.endpoint.as_deref().unwrap_or("(SDK default: AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL or the regional endpoint)"),
                    timeout = ?self.timeout,
                    "EC2 client ready"
                );
                Ok(client)
            })
            .await
    }
}

/// The EC2 client of a loaded configuration: `endpoint` (when given) wins over the
/// configuration's (`AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL`, profile), and the SDK's own
/// retries are off ([`super::ec2_client::Ec2Client`] retries and counts every attempt).
fn client_from(shared: &aws_config::SdkConfig, endpoint: Option<&str>) -> Client {
    let mut builder =
        aws_sdk_ec2::config::Builder::from(shared).retry_config(RetryConfig::disabled());
    if let Some(url) = endpoint {
        builder = builder.endpoint_url(url);
    }
    Client::from_conf(builder.build())
}

/// Awaits one request; an SDK failure becomes the [`Ec2Error`] of `api`.
async fn send<T, E>(
    api: &'static str,
    request: impl Future<Output = Result<T, SdkError<E, HttpResponse>>>,
) -> Result<T, Ec2Error>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    request.await.map_err(|e| convert(api, &e))
}

/// Every item of a paginated call: `page` sends the request for one page, given the token
/// the previous page ended with (none for the first), and returns the page's items and its
/// token; an absent or empty token ends the listing.
async fn all_pages<T, P, F>(mut page: P) -> Result<Vec<T>, Ec2Error>
where
    P: FnMut(Option<String>) -> F,
    F: Future<Output = Result<(Vec<T>, Option<String>), Ec2Error>>,
{
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let (items, next) = page(token.take()).await?;
        all.extend(items);
        match next {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    Ok(all)
}

/// Converts an SDK failure, keeping EC2's code and message.
fn convert<E>(api: &'static str, err: &SdkError<E, HttpResponse>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code().unwrap_or("Unknown").to_owned();
            let message = ctx
                .err()
                .message()
                .map_or_else(|| error_chain(ctx.err()), str::to_owned);
            Ec2Error::from_code(api, code, message, Some(status))
        }
        SdkError::TimeoutError(_) => Ec2Error::new(api, Ec2ErrorKind::Timeout, error_chain(err)),
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            Ec2Error::new(api, Ec2ErrorKind::Timeout, error_chain(err))
        }
        SdkError::DispatchFailure(_) => {
            Ec2Error::new(api, Ec2ErrorKind::Transport, error_chain(err))
        }
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            let kind = if status >= 500 {
                Ec2ErrorKind::Server
            } else {
                Ec2ErrorKind::InvalidResponse
            };
            let mut e = Ec2Error::new(api, kind, error_chain(err));
            e.status = Some(status);
            e
        }
        SdkError::ConstructionFailure(_) => {
            Ec2Error::new(api, Ec2ErrorKind::Config, error_chain(err))
        }
        _ => Ec2Error::new(api, Ec2ErrorKind::Other, error_chain(err)),
    }
}

fn parse_ip(api: &'static str, what: &str, value: &str) -> Result<Ipv4Addr, Ec2Error> {
    value.parse().map_err(|_| {
        Ec2Error::new(
            api,
            Ec2ErrorKind::InvalidResponse,
            format!("{what} {value:?} is not an IPv4 address"),
        )
    })
}

fn parse_prefix6(api: &'static str, what: &str, value: &str) -> Result<Ipv6Net, Ec2Error> {
    value
        .parse::<Ipv6Net>()
        .ok()
        .filter(|p| p.trunc() == *p)
        .ok_or_else(|| {
            Ec2Error::new(
                api,
                Ec2ErrorKind::InvalidResponse,
                format!("{what} {value:?} is not an IPv6 prefix"),
            )
        })
}

fn parse_prefix(api: &'static str, what: &str, value: &str) -> Result<Ipv4Net, Ec2Error> {
    value
        .parse::<Ipv4Net>()
        .ok()
        .filter(|p| p.trunc() == *p)
        .ok_or_else(|| {
            Ec2Error::new(
                api,
                Ec2ErrorKind::InvalidResponse,
                format!("{what} {value:?} is not an IPv4 prefix"),
            )
        })
}

fn to_u32(v: Option<i32>) -> Option<u32> {
    v.and_then(|n| u32::try_from(n).ok())
}

fn tags_of(tags: &[sdk::Tag]) -> Tags {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn sdk_tags(tags: &Tags) -> Vec<sdk::Tag> {
    tags.iter()
        .map(|(k, v)| sdk::Tag::builder().key(k).value(v).build())
        .collect()
}

fn network_interface(
    api: &'static str,
    eni: &sdk::NetworkInterface,
) -> Result<NetworkInterface, Ec2Error> {
    let id = eni
        .network_interface_id()
        .ok_or_else(|| {
            Ec2Error::new(
                api,
                Ec2ErrorKind::InvalidResponse,
                "a network interface without NetworkInterfaceId",
            )
        })?
        .to_owned();
    let mut primary_ip = eni
        .private_ip_address()
        .map(|ip| parse_ip(api, "PrivateIpAddress", ip))
        .transpose()?;
    let mut private_ips = Vec::with_capacity(eni.private_ip_addresses().len());
    for entry in eni.private_ip_addresses() {
        let Some(raw) = entry.private_ip_address() else {
            continue;
        };
        let ip = parse_ip(api, "PrivateIpAddresses.PrivateIpAddress", raw)?;
        if entry.primary() == Some(true) {
            primary_ip = Some(ip);
        }
        if !private_ips.contains(&ip) {
            private_ips.push(ip);
        }
    }
    if let Some(p) = primary_ip {
        private_ips.retain(|ip| *ip != p);
        private_ips.insert(0, p);
    }
    let attachment = eni.attachment().and_then(|a| {
        Some(EniAttachment {
            attachment_id: a.attachment_id()?.to_owned(),
            instance_id: a.instance_id().map(str::to_owned),
            device_index: to_u32(a.device_index()),
            network_card_index: to_u32(a.network_card_index()),
            status: a
                .status()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            delete_on_termination: a.delete_on_termination().unwrap_or(false),
        })
    });
    let ipv4_prefixes = eni
        .ipv4_prefixes()
        .iter()
        .filter_map(|p| p.ipv4_prefix())
        .map(|p| parse_prefix(api, "Ipv4Prefixes.Ipv4Prefix", p))
        .collect::<Result<Vec<_>, _>>()?;
    let ipv6_prefixes = eni
        .ipv6_prefixes()
        .iter()
        .filter_map(|p| p.ipv6_prefix())
        .map(|p| parse_prefix6(api, "Ipv6Prefixes.Ipv6Prefix", p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NetworkInterface {
        mac: eni.mac_address().and_then(|m| m.parse().ok()),
        description: eni.description().unwrap_or_default().to_owned(),
        status: EniStatus::parse(eni.status().map(|s| s.as_str()).unwrap_or_default()),
        subnet_id: eni.subnet_id().unwrap_or_default().to_owned(),
        vpc_id: eni.vpc_id().unwrap_or_default().to_owned(),
        primary_ip,
        private_ips,
        ipv4_prefixes,
        ipv6_prefixes,
        attachment,
        tags: tags_of(eni.tag_set()),
        security_groups: eni
            .groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_owned))
            .collect(),
        id,
    })
}

fn sdk_filters(filters: &[Filter]) -> Vec<sdk::Filter> {
    filters
        .iter()
        .map(|f| {
            sdk::Filter::builder()
                .name(&f.name)
                .set_values(Some(f.values.clone()))
                .build()
        })
        .collect()
}

fn subnet(api: &'static str, s: &sdk::Subnet) -> Result<Subnet, Ec2Error> {
    let invalid = |what: String| Ec2Error::new(api, Ec2ErrorKind::InvalidResponse, what);
    let id = s
        .subnet_id()
        .ok_or_else(|| invalid("a subnet without SubnetId".into()))?
        .to_owned();
    let cidr = s.cidr_block().and_then(|c| c.parse().ok()).ok_or_else(|| {
        invalid(format!(
            "{id}: CidrBlock {:?} is not an IPv4 CIDR",
            s.cidr_block()
        ))
    })?;
    Ok(Subnet {
        cidr,
        availability_zone: s.availability_zone().unwrap_or_default().to_owned(),
        vpc_id: s.vpc_id().unwrap_or_default().to_owned(),
        available_ips: to_u32(s.available_ip_address_count()).unwrap_or(0),
        tags: tags_of(s.tags()),
        id,
    })
}

fn network_interfaces(
    api: &'static str,
    enis: &[sdk::NetworkInterface],
) -> Result<Vec<NetworkInterface>, Ec2Error> {
    enis.iter().map(|e| network_interface(api, e)).collect()
}

impl Ec2Api for SdkEc2 {
    async fn describe_instance_types(
        &self,
        instance_types: &[String],
    ) -> Result<Vec<InstanceTypeLimits>, Ec2Error> {
        const API: &str = "DescribeInstanceTypes";
        let client = self.client(API).await?;
        let types = instance_types
            .iter()
            .map(|t| sdk::InstanceType::from(t.as_str()))
            .collect();
        let request = client
            .describe_instance_types()
            .set_instance_types(Some(types));
        let out = send(API, request.send()).await?;
        let mut limits = Vec::new();
        for info in out.instance_types() {
            let Some(name) = info.instance_type().map(|t| t.as_str().to_owned()) else {
                continue;
            };
            let Some(net) = info.network_info() else {
                return Err(Ec2Error::new(
                    API,
                    Ec2ErrorKind::InvalidResponse,
                    format!("{name} has no NetworkInfo"),
                ));
            };
            // Multi-card types: the limit that matters is the default card's.
            let default_card = net.default_network_card_index().unwrap_or(0);
            let card_max = net
                .network_cards()
                .iter()
                .find(|c| c.network_card_index() == Some(default_card))
                .and_then(|c| c.maximum_network_interfaces());
            let max_enis = to_u32(card_max.or(net.maximum_network_interfaces()));
            let ipv4 = to_u32(net.ipv4_addresses_per_interface());
            match (max_enis, ipv4) {
                (Some(max_enis), Some(ipv4_per_eni)) if max_enis > 0 && ipv4_per_eni > 0 => {
                    limits.push(InstanceTypeLimits {
                        instance_type: name,
                        max_enis,
                        ipv4_per_eni,
                        vcpus: to_u32(info.v_cpu_info().and_then(|v| v.default_v_cpus()))
                            .unwrap_or(0),
                        platform: Platform::from_ec2(
                            info.hypervisor().map(|h| h.as_str()),
                            info.bare_metal().unwrap_or(false),
                        ),
                    });
                }
                _ => {
                    return Err(Ec2Error::new(
                        API,
                        Ec2ErrorKind::InvalidResponse,
                        format!(
                            "{name}: MaximumNetworkInterfaces {max_enis:?} / Ipv4AddressesPerInterface {ipv4:?} missing or zero"
                        ),
                    ));
                }
            }
        }
        Ok(limits)
    }

    async fn describe_network_interfaces(
        &self,
        eni_ids: &[String],
    ) -> Result<Vec<NetworkInterface>, Ec2Error> {
        const API: &str = "DescribeNetworkInterfaces";
        if eni_ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client(API).await?;
        let request = client
            .describe_network_interfaces()
            .set_network_interface_ids(Some(eni_ids.to_vec()));
        let out = send(API, request.send()).await?;
        network_interfaces(API, out.network_interfaces())
    }

    async fn describe_network_interfaces_filtered(
        &self,
        filters: &[Filter],
    ) -> Result<Vec<NetworkInterface>, Ec2Error> {
        const API: &str = "DescribeNetworkInterfaces";
        let client = self.client(API).await?;
        let sdk_filters = sdk_filters(filters);
        all_pages(|token| {
            let request = client
                .describe_network_interfaces()
                .set_filters(Some(sdk_filters.clone()))
                .max_results(PAGE_SIZE)
                .set_next_token(token);
            async move {
                let out = send(API, request.send()).await?;
                let enis = network_interfaces(API, out.network_interfaces())?;
                Ok((enis, out.next_token().map(str::to_owned)))
            }
        })
        .await
    }

    async fn describe_subnets(&self, filters: &[Filter]) -> Result<Vec<Subnet>, Ec2Error> {
        const API: &str = "DescribeSubnets";
        let client = self.client(API).await?;
        let sdk_filters = sdk_filters(filters);
        all_pages(|token| {
            let request = client
                .describe_subnets()
                .set_filters(Some(sdk_filters.clone()))
                .max_results(PAGE_SIZE)
                .set_next_token(token);
            async move {
                let out = send(API, request.send()).await?;
                let subnets = out
                    .subnets()
                    .iter()
                    .map(|s| subnet(API, s))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((subnets, out.next_token().map(str::to_owned)))
            }
        })
        .await
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<Instance, Ec2Error> {
        const API: &str = "DescribeInstances";
        let client = self.client(API).await?;
        let request = client.describe_instances().instance_ids(instance_id);
        let out = send(API, request.send()).await?;
        let inst = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance_id))
            .ok_or_else(|| {
                Ec2Error::from_code(
                    API,
                    "InvalidInstanceID.NotFound",
                    format!("instance {instance_id} is not in the DescribeInstances answer"),
                    None,
                )
            })?;
        let enis = inst
            .network_interfaces()
            .iter()
            .filter_map(|n| {
                let att = n.attachment()?;
                Some(InstanceEni {
                    eni_id: n.network_interface_id()?.to_owned(),
                    device_index: to_u32(att.device_index())?,
                    network_card_index: to_u32(att.network_card_index()).unwrap_or(0),
                })
            })
            .collect();
        Ok(Instance {
            id: instance_id.to_owned(),
            instance_type: inst
                .instance_type()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            enis,
        })
    }

    async fn create_network_interface(
        &self,
        request: &CreateEni,
    ) -> Result<NetworkInterface, Ec2Error> {
        const API: &str = "CreateNetworkInterface";
        let client = self.client(API).await?;
        let mut call = client
            .create_network_interface()
            .subnet_id(&request.subnet_id)
            .set_groups(Some(request.security_groups.clone()))
            .description(&request.description)
            .client_token(&request.client_token);
        if request.secondary_ip_count > 0 {
            call = call.secondary_private_ip_address_count(
                i32::try_from(request.secondary_ip_count).unwrap_or(i32::MAX),
            );
        }
        if request.prefix_count > 0 {
            call = call.ipv4_prefix_count(i32::try_from(request.prefix_count).unwrap_or(i32::MAX));
        }
        if !request.tags.is_empty() {
            call = call.tag_specifications(
                sdk::TagSpecification::builder()
                    .resource_type(sdk::ResourceType::NetworkInterface)
                    .set_tags(Some(sdk_tags(&request.tags)))
                    .build(),
            );
        }
        let out = send(API, call.send()).await?;
        let eni = out.network_interface().ok_or_else(|| {
            Ec2Error::new(
                API,
                Ec2ErrorKind::InvalidResponse,
                "no NetworkInterface in the answer",
            )
        })?;
        network_interface(API, eni)
    }

    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        const API: &str = "AttachNetworkInterface";
        let client = self.client(API).await?;
        let request = client
            .attach_network_interface()
            .network_interface_id(eni_id)
            .instance_id(instance_id)
            .device_index(i32::try_from(device_index).unwrap_or(i32::MAX))
            .network_card_index(0);
        let out = send(API, request.send()).await?;
        out.attachment_id().map(str::to_owned).ok_or_else(|| {
            Ec2Error::new(
                API,
                Ec2ErrorKind::InvalidResponse,
                format!("no AttachmentId in the answer for {eni_id}"),
            )
        })
    }

    async fn set_delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        const API: &str = "ModifyNetworkInterfaceAttribute";
        let client = self.client(API).await?;
        let change = sdk::NetworkInterfaceAttachmentChanges::builder()
            .attachment_id(attachment_id)
            .delete_on_termination(true)
            .build();
        let request = client
            .modify_network_interface_attribute()
            .network_interface_id(eni_id)
            .attachment(change);
        send(API, request.send()).await.map(drop)
    }

    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        const API: &str = "DetachNetworkInterface";
        let client = self.client(API).await?;
        let request = client
            .detach_network_interface()
            .attachment_id(attachment_id);
        send(API, request.send()).await.map(drop)
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        const API: &str = "DeleteNetworkInterface";
        let client = self.client(API).await?;
        let request = client
            .delete_network_interface()
            .network_interface_id(eni_id);
        send(API, request.send()).await.map(drop)
    }

    async fn assign_private_ip_addresses(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        const API: &str = "AssignPrivateIpAddresses";
        let client = self.client(API).await?;
        let request = client
            .assign_private_ip_addresses()
            .network_interface_id(eni_id)
            .secondary_private_ip_address_count(i32::try_from(count).unwrap_or(i32::MAX));
        let out = send(API, request.send()).await?;
        out.assigned_private_ip_addresses()
            .iter()
            .filter_map(|a| a.private_ip_address())
            .map(|ip| parse_ip(API, "AssignedPrivateIpAddresses.PrivateIpAddress", ip))
            .collect()
    }

    async fn unassign_private_ip_addresses(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> Result<(), Ec2Error> {
        const API: &str = "UnassignPrivateIpAddresses";
        if ips.is_empty() {
            return Ok(());
        }
        let client = self.client(API).await?;
        let request = client
            .unassign_private_ip_addresses()
            .network_interface_id(eni_id)
            .set_private_ip_addresses(Some(ips.iter().map(ToString::to_string).collect()));
        send(API, request.send()).await.map(drop)
    }

    async fn assign_ipv4_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv4Net>, Ec2Error> {
        const API: &str = "AssignPrivateIpAddresses";
        let client = self.client(API).await?;
        let request = client
            .assign_private_ip_addresses()
            .network_interface_id(eni_id)
            .ipv4_prefix_count(i32::try_from(count).unwrap_or(i32::MAX));
        let out = send(API, request.send()).await?;
        out.assigned_ipv4_prefixes()
            .iter()
            .filter_map(|p| p.ipv4_prefix())
            .map(|p| parse_prefix(API, "AssignedIpv4Prefixes.Ipv4Prefix", p))
            .collect()
    }

    async fn unassign_ipv4_prefixes(
        &self,
        eni_id: &str,
        prefixes: &[Ipv4Net],
    ) -> Result<(), Ec2Error> {
        const API: &str = "UnassignPrivateIpAddresses";
        if prefixes.is_empty() {
            return Ok(());
        }
        let client = self.client(API).await?;
        let request = client
            .unassign_private_ip_addresses()
            .network_interface_id(eni_id)
            .set_ipv4_prefixes(Some(prefixes.iter().map(ToString::to_string).collect()));
        send(API, request.send()).await.map(drop)
    }

    async fn assign_ipv6_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv6Net>, Ec2Error> {
        const API: &str = "AssignIpv6Addresses";
        let client = self.client(API).await?;
        let request = client
            .assign_ipv6_addresses()
            .network_interface_id(eni_id)
            .ipv6_prefix_count(i32::try_from(count).unwrap_or(i32::MAX));
        let out = send(API, request.send()).await?;
        out.assigned_ipv6_prefixes()
            .iter()
            .map(|p| parse_prefix6(API, "AssignedIpv6Prefixes", p))
            .collect()
    }

    async fn create_tags(&self, resource_ids: &[String], tags: &Tags) -> Result<(), Ec2Error> {
        const API: &str = "CreateTags";
        if resource_ids.is_empty() || tags.is_empty() {
            return Ok(());
        }
        let client = self.client(API).await?;
        let request = client
            .create_tags()
            .set_resources(Some(resource_ids.to_vec()))
            .set_tags(Some(sdk_tags(tags)));
        send(API, request.send()).await.map(drop)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[tokio::test]
    async fn all_pages_follows_tokens_until_an_absent_or_empty_one() {
        for last in [None, Some(String::new())] {
            let mut asked = Vec::new();
            let items = all_pages(|token| {
                asked.push(token.clone());
                let next = match token.as_deref() {
                    None => Some("p2".to_owned()),
                    Some("p2") => Some("p3".to_owned()),
                    _ => last.clone(),
                };
                let page = vec![asked.len()];
                async move { Ok((page, next)) }
            })
            .await
            .unwrap();
            assert_eq!(items, [1, 2, 3]);
            assert_eq!(asked, [None, Some("p2".into()), Some("p3".into())]);
        }
    }

    #[tokio::test]
    async fn all_pages_stops_at_the_first_failed_page() {
        let mut pages = 0;
        let err = all_pages(|_| {
            pages += 1;
            let n = pages;
            async move {
                if n == 2 {
                    Err(Ec2Error::new(
                        "DescribeSubnets",
                        Ec2ErrorKind::Server,
                        "unavailable",
                    ))
                } else {
                    Ok((vec![n], Some("more".to_owned())))
                }
            }
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind, Ec2ErrorKind::Server);
        assert_eq!(pages, 2);
    }
}
