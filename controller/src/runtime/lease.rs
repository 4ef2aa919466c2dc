//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator
//! replicas can run and only one reconciles. Whether to take the lease is a
//! pure function; writes use the lease's resourceVersion, so two candidates
//! can never both win, and a leader that cannot renew in time exits.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use std::time::Duration;

pub const LEASE_SECONDS: i32 = 15;
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// The spec to write to hold the lease, or `None` when someone else holds it.
pub fn next_spec(current: Option<&LeaseSpec>, me: &str, now: jiff::Timestamp) -> Option<LeaseSpec> {
    let fresh = |transitions: i32| LeaseSpec {
        holder_identity: Some(me.into()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(cur) = current else {
        return Some(fresh(0));
    };
    let transitions = cur.lease_transitions.unwrap_or(0);
    if cur.holder_identity.as_deref() == Some(me) {
        return Some(LeaseSpec {
            renew_time: Some(MicroTime(now)),
            ..cur.clone()
        });
    }
    let expired = match (&cur.renew_time, cur.lease_duration_seconds) {
        (Some(MicroTime(t)), Some(d)) => *t + jiff::SignedDuration::from_secs(d.into()) < now,
        _ => true,
    };
    (cur.holder_identity.is_none() || expired).then(|| fresh(transitions + 1))
}

/// One attempt to take or renew the lease; `Ok(true)` when we hold it.
pub async fn try_hold(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let now = jiff::Timestamp::now();
    match api.get_opt(name).await? {
        None => {
            let mut lease = Lease {
                spec: next_spec(None, me, now),
                ..Default::default()
            };
            lease.metadata.name = Some(name.into());
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => match next_spec(lease.spec.as_ref(), me, now) {
            None => Ok(false),
            Some(spec) => {
                lease.spec = Some(spec);
                // resourceVersion is kept: a concurrent writer makes this 409.
                match api.replace(name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        },
    }
}

/// Waits until this replica holds the lease, then keeps renewing it in the
/// background; if a renewal does not succeed within the lease duration the
/// process exits, so a stale leader never keeps reconciling.
pub async fn acquire(api: Api<Lease>, name: String, me: String) {
    loop {
        match try_hold(&api, &name, &me).await {
            Ok(true) => break,
            Ok(false) => tracing::debug!(lease = %name, "another replica leads; waiting"),
            Err(e) => tracing::warn!(lease = %name, error = %e, "leader election failed; retrying"),
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
    tracing::info!(lease = %name, identity = %me, "became leader");
    tokio::spawn(async move {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match try_hold(&api, &name, &me).await {
                Ok(true) => last = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("lost the leader lease; exiting");
                    std::process::exit(1);
                }
                Err(e) => tracing::warn!(error = %e, "could not renew the leader lease"),
            }
            if last.elapsed() > Duration::from_secs(LEASE_SECONDS as u64) {
                tracing::error!("could not renew the leader lease in time; exiting");
                std::process::exit(1);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn a_free_or_expired_lease_is_taken_and_a_live_one_is_not() {
        let taken = next_spec(None, "a", at(0)).unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(0));
        // b sees a's live lease: waits.
        assert!(next_spec(Some(&taken), "b", at(10)).is_none());
        // a renews: same holder, same transitions, new renew time.
        let renewed = next_spec(Some(&taken), "a", at(10)).unwrap();
        assert_eq!(
            (
                renewed.holder_identity.as_deref(),
                renewed.lease_transitions
            ),
            (Some("a"), Some(0))
        );
        assert_eq!(renewed.renew_time, Some(MicroTime(at(10))));
        // a stops renewing: after the lease duration b takes over.
        assert!(next_spec(Some(&renewed), "b", at(10 + LEASE_SECONDS as i64)).is_none());
        let b = next_spec(Some(&renewed), "b", at(11 + LEASE_SECONDS as i64)).unwrap();
        assert_eq!(
            (b.holder_identity.as_deref(), b.lease_transitions),
            (Some("b"), Some(1))
        );
    }
}
