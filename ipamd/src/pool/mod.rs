//! Pool management. In instance-metadata-only mode the pool is exactly what instance metadata
//! shows, so the only policy is to follow it ([`reconcile`]). The warm-pool policy and the EC2
//! manager of a later milestone live here too, beside it.

pub mod reconcile;
