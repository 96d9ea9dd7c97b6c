//! The CNI specification as this plugin speaks it: versions, environment, request config,
//! results and errors.

pub mod config;
pub mod env;
pub mod error;
pub mod result;
pub mod version;

pub use config::NetConf;
pub use env::{CniEnv, Command};
pub use error::CniError;
pub use result::{AddResult, PrevResult};
pub use version::CniVersion;
