//! Access to the cloud: instance metadata ([`imds`], [`metadata`]) and the EC2 API ([`ec2`]: the
//! trait and domain types; [`ec2_sdk`]: aws-sdk-ec2; [`ec2_client`]: metrics and retries around
//! any implementation). Everything else in ipamd sees only the traits.

pub mod ec2;
pub mod ec2_client;
pub mod ec2_sdk;
pub mod imds;
pub mod metadata;
