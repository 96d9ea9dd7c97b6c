//! What the tests of the Rust AWS VPC CNI share, whichever crate they are in (`cni-plugin/tests`,
//! `ipamd/tests`, the end-to-end harness `tests/`, the benchmark `bench/`):
//!
//! - [`netns`]: network namespaces owned by a test (deleted on drop), commands and long-running
//!   processes inside them; [`ip`]: what `ip -j` shows inside one;
//! - [`cleanup`]: the last-resort registry emptied on SIGINT/SIGTERM and the reaper of
//!   namespaces left by killed test processes;
//! - [`metadata`] and [`imds`]: an instance's description and the IMDSv2 emulator serving it;
//! - [`ipamd_client`]: the gRPC client to ipamd (the contract crate's connector);
//! - [`moto`]: moto's EC2 server inside a namespace;
//! - [`prereqs`]: where the programs under test are, root and tool checks.
//!
//! Everything kernel-related happens in namespaces these helpers create and delete; the
//! machine's root namespace is never changed. Nothing here depends on ipamd or the AWS SDK, so
//! the plugin's tests build without them.

#![warn(unreachable_pub)]

pub mod cleanup;
pub mod imds;
pub mod ip;
pub mod ipamd_client;
pub mod metadata;
pub mod moto;
pub mod netns;
pub mod prereqs;
