//! Leaked-ENI cleanup. EC2 needs detach-then-delete, and an instance that dies between the two
//! (or an ipamd that crashes) leaves an `available` ENI behind (reference issue #608). This job
//! deletes this node's leaked ENIs: `DescribeNetworkInterfaces` with the filters
//! `tag:node.k8s.amazonaws.com/instance_id=<this instance>` (the reference filters on the tag
//! key and deletes any node's; the issue asks for this node's only), `status=available`,
//! `vpc-id`, and `tag:cluster.k8s.amazonaws.com/name` when `CLUSTER_NAME` is set; then only
//! ENIs whose description starts with `aws-K8S-`, not tagged `no_manage=true`. One without a
//! readable `createdAt` tag is tagged now and left for a later run; one created more than five
//! minutes ago is deleted.
//!
//! The first run comes soon after start (so a restarted node cleans up after itself), after a
//! random delay of up to [`FIRST_RUN_MAX_JITTER`] (the reference waits 0–300 s; a shorter
//! spread keeps the first cleanup prompt while still spreading a fleet restart), then hourly.
//! It is off in instance-metadata-only mode, with `DISABLE_NETWORK_RESOURCE_PROVISIONING`, and
//! with `DISABLE_LEAKED_ENI_CLEANUP`.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::cloud::ec2::{
    CLUSTER_NAME_TAG, CREATED_AT_TAG, ENI_DESCRIPTION_PREFIX, Ec2Api, Ec2ErrorKind, Filter,
    INSTANCE_ID_TAG, Tags, parse_created_at, rfc3339,
};
use crate::datastore::Clock;

/// ENIs younger than this are never deleted (the reference's 5 minutes).
pub const MIN_LEAK_AGE: Duration = Duration::from_secs(300);
/// Time between runs (the reference's hour).
pub const INTERVAL: Duration = Duration::from_secs(3600);
/// The first run comes after a random delay of at most this.
pub const FIRST_RUN_MAX_JITTER: Duration = Duration::from_secs(30);

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// ENIs deleted.
    pub deleted: Vec<String>,
    /// ENIs that had no `createdAt` and were tagged now.
    pub tagged: Vec<String>,
    /// Candidates too young to delete.
    pub too_young: Vec<String>,
}

/// The cleanup job of one node.
#[derive(Debug)]
pub struct LeakCleaner<E> {
    ec2: Arc<E>,
    instance_id: String,
    primary_eni: String,
    vpc_id: Option<String>,
    cluster_name: Option<String>,
    clock: Arc<dyn Clock>,
    min_age: Duration,
}

impl<E: Ec2Api> LeakCleaner<E> {
    /// A cleaner for `instance_id`'s leaked ENIs. The VPC is looked up from the primary ENI on
    /// the first run when not given.
    pub fn new(
        ec2: Arc<E>,
        instance_id: &str,
        primary_eni: &str,
        vpc_id: Option<String>,
        cluster_name: Option<String>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            ec2,
            instance_id: instance_id.to_owned(),
            primary_eni: primary_eni.to_owned(),
            vpc_id,
            cluster_name,
            clock,
            min_age: MIN_LEAK_AGE,
        }
    }

    async fn vpc(&mut self) -> Option<String> {
        if self.vpc_id.is_none() {
            match self
                .ec2
                .describe_network_interfaces(std::slice::from_ref(&self.primary_eni))
                .await
            {
                Ok(v) => {
                    self.vpc_id = v
                        .first()
                        .map(|e| e.vpc_id.clone())
                        .filter(|v| !v.is_empty())
                }
                Err(e) => tracing::warn!(error = %e, "leaked-ENI cleanup: cannot find the VPC"),
            }
        }
        self.vpc_id.clone()
    }

    /// One run.
    ///
    /// # Errors
    /// The search failed (deletions that fail are logged and retried next run).
    pub async fn run_once(&mut self) -> Result<CleanupReport, crate::cloud::ec2::Ec2Error> {
        let mut filters = vec![
            Filter::one(format!("tag:{INSTANCE_ID_TAG}"), &self.instance_id),
            Filter::one("status", "available"),
        ];
        if let Some(vpc) = self.vpc().await {
            filters.push(Filter::one("vpc-id", vpc));
        }
        if let Some(cluster) = &self.cluster_name {
            filters.push(Filter::one(format!("tag:{CLUSTER_NAME_TAG}"), cluster));
        }
        let candidates = self
            .ec2
            .describe_network_interfaces_filtered(&filters)
            .await?;
        let mut report = CleanupReport::default();
        let now = self.clock.wall();
        for eni in candidates {
            if !eni.description.starts_with(ENI_DESCRIPTION_PREFIX)
                || eni.is_no_manage()
                || eni.attachment.is_some()
                || eni.tags.get(INSTANCE_ID_TAG) != Some(&self.instance_id)
            {
                continue;
            }
            let created = eni
                .tags
                .get(CREATED_AT_TAG)
                .and_then(|v| parse_created_at(v));
            let Some(created) = created else {
                let tags = Tags::from([(CREATED_AT_TAG.to_owned(), rfc3339(now))]);
                match self
                    .ec2
                    .create_tags(std::slice::from_ref(&eni.id), &tags)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(eni = %eni.id, "leaked-ENI cleanup: available ENI without createdAt tagged now; deleted in a later run if still unused");
                        report.tagged.push(eni.id);
                    }
                    Err(e) => {
                        tracing::warn!(eni = %eni.id, error = %e, "leaked-ENI cleanup: cannot tag ENI")
                    }
                }
                continue;
            };
            let age = now.duration_since(created).unwrap_or_default();
            if age < self.min_age {
                report.too_young.push(eni.id);
                continue;
            }
            match self.ec2.delete_network_interface(&eni.id).await {
                Ok(()) => {
                    tracing::info!(eni = %eni.id, age_s = age.as_secs(), "leaked-ENI cleanup: deleted an available ENI of this node");
                    report.deleted.push(eni.id);
                }
                Err(e) if e.kind == Ec2ErrorKind::NotFound => report.deleted.push(eni.id),
                Err(e) => {
                    tracing::warn!(eni = %eni.id, error = %e, "leaked-ENI cleanup: cannot delete ENI; retrying next run")
                }
            }
        }
        Ok(report)
    }

    /// Runs forever: first after a random delay of up to [`FIRST_RUN_MAX_JITTER`], then every
    /// [`INTERVAL`].
    pub async fn run(&mut self) {
        let jitter_ms = u64::try_from(FIRST_RUN_MAX_JITTER.as_millis()).unwrap_or(u64::MAX);
        let first = Duration::from_millis(rand::rng().random_range(0..=jitter_ms));
        tracing::info!(first_run_in = ?first, every = ?INTERVAL, "leaked-ENI cleanup scheduled");
        tokio::time::sleep(first).await;
        loop {
            match self.run_once().await {
                Ok(r) => tracing::info!(
                    deleted = r.deleted.len(),
                    tagged = r.tagged.len(),
                    too_young = r.too_young.len(),
                    "leaked-ENI cleanup done"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "leaked-ENI cleanup: cannot list available ENIs; retrying next run")
                }
            }
            tokio::time::sleep(INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::cloud::ec2::NO_MANAGE_TAG;
    use crate::datastore::ManualClock;
    use crate::testing::fake_ec2::FakeEc2;

    /// A detached ENI with `description`, tagged as created by `instance` at `created_at`, and
    /// with the `more` tags.
    fn left_behind(
        ec2: &FakeEc2,
        description: &str,
        instance: &str,
        created_at: &str,
        more: &[(&str, &str)],
    ) -> String {
        let mut tags = vec![(INSTANCE_ID_TAG, instance), (CREATED_AT_TAG, created_at)];
        tags.extend_from_slice(more);
        ec2.create_detached(description, &tags)
    }

    #[test]
    fn created_at_parses_rfc3339() {
        let t = parse_created_at("2024-05-01T10:00:00Z").unwrap();
        assert_eq!(rfc3339(t), "2024-05-01T10:00:00Z");
        assert!(parse_created_at("2024-05-01T10:00:00.123Z").is_some());
        assert!(parse_created_at("yesterday").is_none());
    }

    #[tokio::test]
    async fn deletes_only_this_nodes_old_available_enis() {
        let ec2 = FakeEc2::new();
        let me = ec2.launch("m5.large");
        let other = ec2.launch("m5.large");
        let clock = Arc::new(ManualClock::new());
        let old = rfc3339(clock.wall() - Duration::from_secs(600));
        let recent = rfc3339(clock.wall() - Duration::from_secs(60));
        let desc = format!("aws-K8S-{me}");
        let leaked = left_behind(&ec2, &desc, &me, &old, &[]);
        let young = left_behind(&ec2, &desc, &me, &recent, &[]);
        let untagged = ec2.create_detached(&desc, &[]);
        let foreign = left_behind(&ec2, &format!("aws-K8S-{other}"), &other, &old, &[]);
        let no_manage = left_behind(&ec2, &desc, &me, &old, &[(NO_MANAGE_TAG, "true")]);
        let not_ours = left_behind(&ec2, "made by hand", &me, &old, &[]);
        let no_date = ec2.create_detached(&desc, &[(INSTANCE_ID_TAG, me.as_str())]);
        let primary = ec2.primary_eni(&me).id;

        let mut cleaner = LeakCleaner::new(
            Arc::new(ec2.clone()),
            &me,
            &primary,
            None,
            None,
            clock.clone(),
        );
        let r = cleaner.run_once().await.unwrap();
        assert_eq!(r.deleted, vec![leaked.clone()]);
        assert_eq!(r.tagged, vec![no_date.clone()]);
        assert_eq!(r.too_young, vec![young.clone()]);
        assert!(ec2.eni(&leaked).is_none());
        for kept in [
            &young, &untagged, &foreign, &no_manage, &not_ours, &no_date, &primary,
        ] {
            assert!(ec2.eni(kept).is_some(), "{kept} must be left alone");
        }
        assert!(ec2.eni(&no_date).unwrap().tags.contains_key(CREATED_AT_TAG));
        assert_eq!(
            cleaner.vpc_id.as_deref(),
            Some(crate::testing::fake_ec2::VPC_ID)
        );

        // Five minutes later the young one and the freshly dated one go too.
        clock.advance(Duration::from_secs(301));
        let r = cleaner.run_once().await.unwrap();
        let mut deleted = r.deleted.clone();
        deleted.sort();
        let mut want = vec![young, no_date];
        want.sort();
        assert_eq!(deleted, want);
    }

    #[tokio::test]
    async fn cluster_name_scopes_the_search() {
        let ec2 = FakeEc2::new();
        let me = ec2.launch("m5.large");
        let clock = Arc::new(ManualClock::new());
        let old = rfc3339(clock.wall() - Duration::from_secs(600));
        let desc = format!("aws-K8S-{me}");
        let mine = left_behind(&ec2, &desc, &me, &old, &[(CLUSTER_NAME_TAG, "prod")]);
        let other_cluster = left_behind(&ec2, &desc, &me, &old, &[(CLUSTER_NAME_TAG, "dev")]);
        let primary = ec2.primary_eni(&me).id;
        let mut cleaner = LeakCleaner::new(
            Arc::new(ec2.clone()),
            &me,
            &primary,
            Some(crate::testing::fake_ec2::VPC_ID.into()),
            Some("prod".into()),
            clock,
        );
        assert_eq!(cleaner.run_once().await.unwrap().deleted, vec![mine]);
        assert!(ec2.eni(&other_cluster).is_some());
    }
}
