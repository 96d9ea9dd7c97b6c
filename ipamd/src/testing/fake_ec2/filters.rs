//! EC2's filters as the [`FakeEc2`](super::FakeEc2) applies them, one matcher for
//! `DescribeNetworkInterfaces` and `DescribeSubnets`: a filter names a tag (`tag-key`,
//! `tag:<key>`) or one of the resource's fields, and passes when one of its values (`*` at the
//! end matches any rest) is the tag's or the field's value.

use super::err;
use crate::cloud::ec2::{Ec2Error, Filter, NetworkInterface, Subnet, Tags};

/// A resource EC2 filters.
pub(super) trait Filtered {
    /// Its tags.
    fn tags(&self) -> &Tags;

    /// The value of the field a filter names: `None` when EC2 knows no such filter for this
    /// resource, `Some(None)` when the resource has no value for it.
    fn field(&self, name: &str) -> Option<Option<&str>>;
}

impl Filtered for NetworkInterface {
    fn tags(&self) -> &Tags {
        &self.tags
    }

    fn field(&self, name: &str) -> Option<Option<&str>> {
        Some(match name {
            "status" => Some(self.status.as_str()),
            "vpc-id" => Some(&self.vpc_id),
            "subnet-id" => Some(&self.subnet_id),
            "description" => Some(&self.description),
            "network-interface-id" => Some(&self.id),
            "attachment.instance-id" => self
                .attachment
                .as_ref()
                .and_then(|a| a.instance_id.as_deref()),
            _ => return None,
        })
    }
}

impl Filtered for Subnet {
    fn tags(&self) -> &Tags {
        &self.tags
    }

    fn field(&self, name: &str) -> Option<Option<&str>> {
        Some(match name {
            "vpc-id" => Some(&self.vpc_id),
            "availability-zone" => Some(&self.availability_zone),
            "subnet-id" => Some(&self.id),
            _ => return None,
        })
    }
}

/// The resources that pass every filter; a filter EC2 does not know for them fails the call
/// with `InvalidParameterValue` (once there is a resource to test).
pub(super) fn matching<R: Filtered>(
    api: &'static str,
    resources: impl IntoIterator<Item = R>,
    filters: &[Filter],
) -> Result<Vec<R>, Ec2Error> {
    let mut out = Vec::new();
    for r in resources {
        let mut ok = true;
        for f in filters {
            ok &= passes(api, &r, f)?;
        }
        if ok {
            out.push(r);
        }
    }
    Ok(out)
}

fn passes(api: &'static str, r: &impl Filtered, f: &Filter) -> Result<bool, Ec2Error> {
    let any = |value: &str| f.values.iter().any(|p| glob(p, value));
    Ok(match f.name.as_str() {
        "tag-key" => r.tags().keys().any(|k| any(k)),
        name => match name.strip_prefix("tag:") {
            Some(key) => r.tags().get(key).is_some_and(|val| any(val)),
            None => r
                .field(name)
                .ok_or_else(|| {
                    err(
                        api,
                        "InvalidParameterValue",
                        format!("The filter '{name}' is invalid"),
                    )
                })?
                .is_some_and(any),
        },
    })
}

fn glob(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}
