//! What the pool manager reads of its Kubernetes Node, when ipamd has the API: max pods from
//! the Node's capacity (the kubelet's `--max-pods`), as the reference takes it, and whether the
//! node is cordoned. With `AWS_MANAGE_ENIS_NON_SCHEDULABLE=false` (the default) a cordoned node
//! neither grows its pool (no addresses, no ENIs) nor frees ENIs, as in the reference; the
//! addresses beyond the targets still go back. A Node that cannot be read counts as
//! schedulable (the reference's choice: ENIs stay managed).

use std::sync::Arc;

use super::PoolManager;
use crate::cloud::ec2::Ec2Api;
use crate::cloud::imds::Imds;
use crate::k8s::NodeApi;
use crate::limits::Limits;
use crate::pool::host::EniHost;

/// The Node this manager reads.
#[derive(Debug, Clone)]
pub struct NodeCheck {
    api: Arc<dyn NodeApi>,
    name: String,
    /// `AWS_MANAGE_ENIS_NON_SCHEDULABLE`.
    manage_when_unschedulable: bool,
}

impl NodeCheck {
    /// The Node `name` through `api`; `manage_when_unschedulable` is
    /// `AWS_MANAGE_ENIS_NON_SCHEDULABLE`.
    pub fn new(api: Arc<dyn NodeApi>, name: String, manage_when_unschedulable: bool) -> Self {
        Self {
            api,
            name,
            manage_when_unschedulable,
        }
    }

    /// The API.
    pub fn api(&self) -> &dyn NodeApi {
        &*self.api
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<E: Ec2Api, I: Imds, H: EniHost> PoolManager<E, I, H> {
    /// Reads the Node through `check` (max pods, cordons).
    #[must_use]
    pub fn with_node(mut self, check: NodeCheck) -> Self {
        self.node_check = Some(check);
        self
    }

    /// `limits` with max pods from the Node's capacity, when the Node can be read and says.
    pub(super) async fn with_node_max_pods(&self, limits: Limits) -> Limits {
        let Some(check) = &self.node_check else {
            return limits;
        };
        match check.api.node(&check.name).await {
            Ok(facts) => match facts.max_pods {
                Some(n) => {
                    tracing::info!(
                        node = %check.name, max_pods = n, formula = limits.max_pods,
                        "max pods from the Node's capacity"
                    );
                    limits.with_node_max_pods(n)
                }
                None => limits,
            },
            Err(e) => {
                tracing::warn!(error = %e, max_pods = limits.max_pods, "cannot read the Node; max pods from the instance type");
                limits
            }
        }
    }

    /// Whether the pool must stay as it is because the node is cordoned (and
    /// `AWS_MANAGE_ENIS_NON_SCHEDULABLE=false`). Published in the situation (what failed
    /// assignments and `/v1/pool` say).
    pub(super) async fn held_by_cordon(&self) -> bool {
        let Some(check) = &self.node_check else {
            return false;
        };
        if check.manage_when_unschedulable {
            return false;
        }
        let cordoned = match check.api.node(&check.name).await {
            Ok(facts) => facts.unschedulable,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the Node; managing ENIs as on a schedulable node");
                false
            }
        };
        if cordoned != self.situation.unschedulable() {
            if cordoned {
                tracing::info!(node = %check.name, "the node is cordoned: the pool neither grows nor frees ENIs (AWS_MANAGE_ENIS_NON_SCHEDULABLE=false)");
            } else {
                tracing::info!(node = %check.name, "the node is schedulable again: the pool is managed");
            }
            self.situation.set_unschedulable(cordoned);
            self.state
                .update_node_report(|report| report.unschedulable = cordoned);
        }
        cordoned
    }
}
