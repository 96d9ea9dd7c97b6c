//! Access to the cloud: instance metadata now; the EC2 API (behind its own trait, in its own
//! module) when EC2 provisioning arrives. Everything else in ipamd sees only these traits.

pub mod imds;
pub mod metadata;

#[cfg(test)]
pub mod fake_imds;
