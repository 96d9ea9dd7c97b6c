//! Pool management. In instance-metadata-only mode (and with provisioning disabled) the pool is
//! exactly what instance metadata shows, so the only policy is to follow it ([`reconcile`]). In
//! EC2 mode the [`manager`] keeps the warm pool at its targets through EC2 within the instance's
//! limits, by the pure [`policy`], putting new ENIs into the subnets [`subnets`] picks; [`leak`]
//! deletes this node's leaked ENIs; [`situation`] says what limits the pool when an assignment
//! finds nothing.

pub mod host;
pub mod leak;
pub mod manager;
pub mod policy;
pub mod reconcile;
pub mod situation;
pub mod subnets;
