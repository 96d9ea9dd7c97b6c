//! Test doubles for ipamd's unit tests, beside the code rather than inside the modules they
//! stand in for, so that nothing the product uses depends on them: [`fake_ec2`], a stateful EC2
//! that enforces the instance's limits, with views of one instance's metadata and links,
//! [`fake_imds`], an in-memory instance metadata service, and [`pools`], small datastores
//! and pod keys.

pub mod fake_ec2;
pub mod fake_imds;
pub mod pools;
