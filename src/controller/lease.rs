//! Leader election on a coordination.k8s.io/v1 Lease.

use std::time::Duration;

/// How this replica takes part in leader election.
#[derive(Clone, Debug)]
pub struct Election {
    pub name: String,
    pub namespace: String,
    /// This replica's name in the Lease (the pod's name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}
