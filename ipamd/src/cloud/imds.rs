//! Instance metadata (IMDSv2): the [`Imds`] trait with what ipamd reads, and [`SdkImds`], the
//! real implementation over `aws_config::imds::Client`. The endpoint comes only from the SDK's own
//! settings (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE`, the
//! profile file, else `http://169.254.169.254`); nothing is hard-wired here.

use std::future::Future;
use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use thiserror::Error;

use crate::mac::MacAddr;

/// Prefix of every metadata path.
pub const META_DATA: &str = "/latest/meta-data/";

/// A failed metadata read; always names the path.
#[derive(Debug, Error)]
pub enum ImdsError {
    /// The path does not exist (HTTP 404).
    #[error("instance metadata {path}: not found")]
    NotFound {
        /// The metadata path.
        path: String,
    },
    /// IMDS could not be reached or answered with an error.
    #[error("instance metadata {path}: {detail}")]
    Request {
        /// The metadata path.
        path: String,
        /// What went wrong, with the SDK's cause chain.
        detail: String,
    },
    /// The value does not parse.
    #[error("instance metadata {path}: unexpected value {value:?}: {reason}")]
    Invalid {
        /// The metadata path.
        path: String,
        /// The raw value.
        value: String,
        /// Why it does not parse.
        reason: String,
    },
}

impl ImdsError {
    /// The metadata path the error is about.
    pub fn path(&self) -> &str {
        match self {
            Self::NotFound { path } | Self::Request { path, .. } | Self::Invalid { path, .. } => {
                path
            }
        }
    }
}

/// What ipamd reads from instance metadata. Per-ENI calls take the ENI's MAC, as IMDS does.
pub trait Imds: Send + Sync + 'static {
    /// `instance-id`.
    fn instance_id(&self) -> impl Future<Output = Result<String, ImdsError>> + Send;
    /// `instance-type`.
    fn instance_type(&self) -> impl Future<Output = Result<String, ImdsError>> + Send;
    /// `placement/availability-zone`.
    fn availability_zone(&self) -> impl Future<Output = Result<String, ImdsError>> + Send;
    /// `placement/region`.
    fn region(&self) -> impl Future<Output = Result<String, ImdsError>> + Send;
    /// `mac`: the primary ENI's MAC.
    fn primary_mac(&self) -> impl Future<Output = Result<MacAddr, ImdsError>> + Send;
    /// `local-ipv4`: the primary ENI's primary address.
    fn local_ipv4(&self) -> impl Future<Output = Result<Ipv4Addr, ImdsError>> + Send;
    /// `network/interfaces/macs/`: every attached ENI.
    fn macs(&self) -> impl Future<Output = Result<Vec<MacAddr>, ImdsError>> + Send;
    /// `network/interfaces/macs/<mac>/device-number`.
    fn device_number(&self, mac: MacAddr) -> impl Future<Output = Result<u32, ImdsError>> + Send;
    /// `network/interfaces/macs/<mac>/interface-id`.
    fn interface_id(&self, mac: MacAddr) -> impl Future<Output = Result<String, ImdsError>> + Send;
    /// `network/interfaces/macs/<mac>/local-ipv4s`: primary address first. An ENI without IPv4
    /// addresses (EFA-only) answers 404, returned here as an empty list.
    fn local_ipv4s(
        &self,
        mac: MacAddr,
    ) -> impl Future<Output = Result<Vec<Ipv4Addr>, ImdsError>> + Send;
    /// `network/interfaces/macs/<mac>/ipv4-prefix`: the ENI's delegated /28 prefixes. Absent
    /// (404) when it has none, returned here as an empty list.
    fn ipv4_prefixes(
        &self,
        mac: MacAddr,
    ) -> impl Future<Output = Result<Vec<Ipv4Net>, ImdsError>> + Send;
    /// `network/interfaces/macs/<mac>/subnet-id`.
    fn subnet_id(&self, mac: MacAddr) -> impl Future<Output = Result<String, ImdsError>> + Send;
    /// `network/interfaces/macs/<mac>/subnet-ipv4-cidr-block`.
    fn subnet_ipv4_cidr_block(
        &self,
        mac: MacAddr,
    ) -> impl Future<Output = Result<Ipv4Net, ImdsError>> + Send;
    /// `network/interfaces/macs/<mac>/vpc-ipv4-cidr-blocks`.
    fn vpc_ipv4_cidr_blocks(
        &self,
        mac: MacAddr,
    ) -> impl Future<Output = Result<Vec<Ipv4Net>, ImdsError>> + Send;
    /// `network/interfaces/macs/<mac>/security-group-ids`.
    fn security_group_ids(
        &self,
        mac: MacAddr,
    ) -> impl Future<Output = Result<Vec<String>, ImdsError>> + Send;
    /// `network/interfaces/macs/<mac>/ipv6-prefix` (empty when absent). Read in IPv6 mode only.
    fn ipv6_prefixes(
        &self,
        mac: MacAddr,
    ) -> impl Future<Output = Result<Vec<Ipv6Net>, ImdsError>> + Send;
    /// `network/interfaces/macs/<mac>/vpc-ipv6-cidr-blocks` (empty when absent). Read in IPv6
    /// mode only.
    fn vpc_ipv6_cidr_blocks(
        &self,
        mac: MacAddr,
    ) -> impl Future<Output = Result<Vec<Ipv6Net>, ImdsError>> + Send;
}

/// Instance metadata over the AWS SDK's IMDSv2 client (token handling, retries, timeouts).
#[derive(Debug, Clone)]
pub struct SdkImds {
    client: aws_config::imds::Client,
}

impl SdkImds {
    /// A client configured from the SDK's standard environment and profile settings.
    pub fn from_env() -> Self {
        Self {
            client: aws_config::imds::Client::builder().build(),
        }
    }

    /// Wraps an already-configured client.
    pub fn new(client: aws_config::imds::Client) -> Self {
        Self { client }
    }

    async fn get(&self, relative: &str) -> Result<String, ImdsError> {
        let path = format!("{META_DATA}{relative}");
        match self.client.get(path.clone()).await {
            Ok(value) => Ok(String::from(value)),
            Err(err) => Err(convert_error(path, &err)),
        }
    }

    async fn get_parsed<T>(
        &self,
        relative: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ImdsError> {
        let value = self.get(relative).await?;
        parse(value.trim()).map_err(|reason| ImdsError::Invalid {
            path: format!("{META_DATA}{relative}"),
            value,
            reason,
        })
    }
}

fn convert_error(path: String, err: &aws_config::imds::client::error::ImdsError) -> ImdsError {
    use aws_config::imds::client::error::ImdsError as SdkError;
    if let SdkError::ErrorResponse(resp) = err {
        let status = resp.response().status().as_u16();
        if status == 404 {
            return ImdsError::NotFound { path };
        }
        return ImdsError::Request {
            path,
            detail: format!("HTTP status {status}"),
        };
    }
    ImdsError::Request {
        path,
        detail: error_chain(err),
    }
}

/// `err: cause: cause…`, so a log line says *why* (connection refused, timeout, no TTL header).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Non-empty lines of a list value, trimmed (IMDS lists are newline-separated).
pub fn lines(value: &str) -> impl Iterator<Item = &str> {
    value.lines().map(str::trim).filter(|l| !l.is_empty())
}

fn parse_mac(value: &str) -> Result<MacAddr, String> {
    value
        .parse()
        .map_err(|e: crate::mac::ParseMacError| e.to_string())
}

fn parse_ip(value: &str) -> Result<Ipv4Addr, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not an IPv4 address"))
}

fn parse_net(value: &str) -> Result<Ipv4Net, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not an IPv4 CIDR"))
}

fn parse_non_empty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("empty".into())
    } else {
        Ok(value.to_owned())
    }
}

/// Parses the `network/interfaces/macs/` listing (`<mac>/` per line).
pub fn parse_mac_list(value: &str) -> Result<Vec<MacAddr>, String> {
    lines(value)
        .map(|l| parse_mac(l.trim_end_matches('/')))
        .collect()
}

/// Parses a newline-separated list of IPv4 addresses.
pub fn parse_ip_list(value: &str) -> Result<Vec<Ipv4Addr>, String> {
    lines(value).map(parse_ip).collect()
}

/// Parses a newline-separated list of IPv6 CIDRs.
pub fn parse_net6_list(value: &str) -> Result<Vec<Ipv6Net>, String> {
    lines(value)
        .map(|l| l.parse().map_err(|_| format!("{l:?} is not an IPv6 CIDR")))
        .collect()
}

/// Parses a newline-separated list of IPv4 CIDRs.
pub fn parse_net_list(value: &str) -> Result<Vec<Ipv4Net>, String> {
    lines(value).map(parse_net).collect()
}

fn mac_path(mac: MacAddr, field: &str) -> String {
    format!("network/interfaces/macs/{mac}/{field}")
}

impl Imds for SdkImds {
    async fn instance_id(&self) -> Result<String, ImdsError> {
        self.get_parsed("instance-id", parse_non_empty).await
    }

    async fn instance_type(&self) -> Result<String, ImdsError> {
        self.get_parsed("instance-type", parse_non_empty).await
    }

    async fn availability_zone(&self) -> Result<String, ImdsError> {
        self.get_parsed("placement/availability-zone", parse_non_empty)
            .await
    }

    async fn region(&self) -> Result<String, ImdsError> {
        self.get_parsed("placement/region", parse_non_empty).await
    }

    async fn primary_mac(&self) -> Result<MacAddr, ImdsError> {
        self.get_parsed("mac", parse_mac).await
    }

    async fn local_ipv4(&self) -> Result<Ipv4Addr, ImdsError> {
        self.get_parsed("local-ipv4", parse_ip).await
    }

    async fn macs(&self) -> Result<Vec<MacAddr>, ImdsError> {
        self.get_parsed("network/interfaces/macs/", parse_mac_list)
            .await
    }

    async fn device_number(&self, mac: MacAddr) -> Result<u32, ImdsError> {
        self.get_parsed(&mac_path(mac, "device-number"), |v| {
            v.parse::<u32>()
                .map_err(|_| "not a device number".to_owned())
        })
        .await
    }

    async fn interface_id(&self, mac: MacAddr) -> Result<String, ImdsError> {
        self.get_parsed(&mac_path(mac, "interface-id"), parse_non_empty)
            .await
    }

    async fn local_ipv4s(&self, mac: MacAddr) -> Result<Vec<Ipv4Addr>, ImdsError> {
        match self
            .get_parsed(&mac_path(mac, "local-ipv4s"), parse_ip_list)
            .await
        {
            Err(ImdsError::NotFound { .. }) => Ok(Vec::new()),
            other => other,
        }
    }

    async fn ipv4_prefixes(&self, mac: MacAddr) -> Result<Vec<Ipv4Net>, ImdsError> {
        match self
            .get_parsed(&mac_path(mac, "ipv4-prefix"), parse_net_list)
            .await
        {
            Err(ImdsError::NotFound { .. }) => Ok(Vec::new()),
            other => other,
        }
    }

    async fn ipv6_prefixes(&self, mac: MacAddr) -> Result<Vec<Ipv6Net>, ImdsError> {
        match self
            .get_parsed(&mac_path(mac, "ipv6-prefix"), parse_net6_list)
            .await
        {
            Err(ImdsError::NotFound { .. }) => Ok(Vec::new()),
            other => other,
        }
    }

    async fn vpc_ipv6_cidr_blocks(&self, mac: MacAddr) -> Result<Vec<Ipv6Net>, ImdsError> {
        match self
            .get_parsed(&mac_path(mac, "vpc-ipv6-cidr-blocks"), parse_net6_list)
            .await
        {
            Err(ImdsError::NotFound { .. }) => Ok(Vec::new()),
            other => other,
        }
    }

    async fn subnet_id(&self, mac: MacAddr) -> Result<String, ImdsError> {
        self.get_parsed(&mac_path(mac, "subnet-id"), parse_non_empty)
            .await
    }

    async fn subnet_ipv4_cidr_block(&self, mac: MacAddr) -> Result<Ipv4Net, ImdsError> {
        self.get_parsed(&mac_path(mac, "subnet-ipv4-cidr-block"), parse_net)
            .await
    }

    async fn vpc_ipv4_cidr_blocks(&self, mac: MacAddr) -> Result<Vec<Ipv4Net>, ImdsError> {
        self.get_parsed(&mac_path(mac, "vpc-ipv4-cidr-blocks"), parse_net_list)
            .await
    }

    async fn security_group_ids(&self, mac: MacAddr) -> Result<Vec<String>, ImdsError> {
        match self
            .get_parsed(&mac_path(mac, "security-group-ids"), |v| {
                Ok(lines(v).map(str::to_owned).collect())
            })
            .await
        {
            Err(ImdsError::NotFound { .. }) => Ok(Vec::new()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn list_parsers() {
        let macs = parse_mac_list("02:00:0a:00:00:0a/\n02:00:0a:00:00:0b/\n").unwrap();
        assert_eq!(macs.len(), 2);
        assert_eq!(macs[1].to_string(), "02:00:0a:00:00:0b");
        assert!(parse_mac_list("nonsense/").is_err());
        let ips = parse_ip_list("10.0.0.10\n10.0.0.11\n").unwrap();
        assert_eq!(
            ips,
            vec![Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 11)]
        );
        assert!(parse_ip_list("10.0.0.300").is_err());
        assert_eq!(parse_net_list("10.0.0.0/16\n").unwrap().len(), 1);
        assert!(parse_net_list("10.0.0.0").is_err());
    }

    #[test]
    fn errors_name_the_path() {
        let e = ImdsError::Invalid {
            path: "/latest/meta-data/mac".into(),
            value: "x".into(),
            reason: "bad".into(),
        };
        assert!(e.to_string().contains("/latest/meta-data/mac"));
        assert_eq!(e.path(), "/latest/meta-data/mac");
    }
}
