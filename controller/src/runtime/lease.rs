//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator
//! replicas can run and only one reconciles. Whether to take the lease is a
//! pure function; writes use the lease's resourceVersion, so two candidates
//! can never both win, and a leader that cannot renew in time exits.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How long a lease holds without renewal (what other candidates wait).
pub const LEASE_SECONDS: i32 = 15;
/// A leader that has not renewed within this long stops: shorter than the
/// lease, so it is gone before anyone else may take over.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews, and candidates look.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Every call to the API server gives up after this long (kube's client
/// has no default timeout): a hung call must not outlive the deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(4);

/// The lease record as last seen, and when this process first saw it. As
/// in client-go, expiry is judged by local observation time, never by
/// comparing the holder's renewTime with this machine's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub record: LeaseSpec,
    pub since: Instant,
}

/// Whether `current` (seen as `observed`) may be taken at `now`: nobody
/// holds it, or its record has not changed for the lease duration.
pub fn expired(current: &LeaseSpec, observed: Option<&Observed>, now: Instant) -> bool {
    if current.holder_identity.as_deref().is_none_or(str::is_empty) {
        return true;
    }
    let duration = Duration::from_secs(
        current
            .lease_duration_seconds
            .unwrap_or(LEASE_SECONDS)
            .max(1) as u64,
    );
    match observed {
        Some(o) if o.record == *current => now.duration_since(o.since) > duration,
        // A record not seen before was just renewed, as far as we know.
        _ => false,
    }
}

/// The spec to write to hold the lease, or `None` when someone else holds it.
pub fn next_spec(
    current: Option<&LeaseSpec>,
    me: &str,
    expired: bool,
    now: jiff::Timestamp,
) -> Option<LeaseSpec> {
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
    if cur.holder_identity.as_deref() == Some(me) {
        return Some(LeaseSpec {
            renew_time: Some(MicroTime(now)),
            ..cur.clone()
        });
    }
    expired.then(|| fresh(cur.lease_transitions.unwrap_or(0) + 1))
}

/// One candidate's view of the lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    me: String,
    observed: Mutex<Option<Observed>>,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: String, me: String) -> Self {
        Self {
            api,
            name,
            me,
            observed: Mutex::new(None),
        }
    }

    /// One attempt to take or renew the lease, bounded in time; `Ok(true)`
    /// when we hold it.
    pub async fn try_hold(&self) -> Result<bool, String> {
        tokio::time::timeout(CALL_TIMEOUT * 2, self.try_hold_once())
            .await
            .unwrap_or_else(|_| Err("the API server did not answer in time".into()))
    }

    async fn try_hold_once(&self) -> Result<bool, String> {
        let now = jiff::Timestamp::now();
        let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
        let current = bounded(self.api.get_opt(&self.name))
            .await?
            .map_err(|e| e.to_string())?;
        let Some(mut lease) = current else {
            let mut lease = Lease {
                spec: next_spec(None, &self.me, true, now),
                ..Default::default()
            };
            lease.metadata.name = Some(self.name.clone());
            return match bounded(self.api.create(&PostParams::default(), &lease)).await? {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e.to_string()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let expired = {
            let mut seen = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            let local = Instant::now();
            let expired = expired(&spec, seen.as_ref(), local);
            if seen.as_ref().is_none_or(|o| o.record != spec) {
                *seen = Some(Observed {
                    record: spec.clone(),
                    since: local,
                });
            }
            expired
        };
        let Some(next) = next_spec(Some(&spec), &self.me, expired, now) else {
            return Ok(false);
        };
        lease.spec = Some(next);
        // resourceVersion is kept: a concurrent writer makes this a 409.
        match bounded(self.api.replace(&self.name, &PostParams::default(), &lease)).await? {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// An API call that gives up after [`CALL_TIMEOUT`].
async fn bounded<T>(
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, kube::Error>, String> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| "the API server did not answer in time".to_string())
}

/// What the reconcilers ask before each reconcile: whether this process
/// still leads (renewed within [`RENEW_DEADLINE`]).
#[derive(Debug)]
pub struct Leadership {
    renewed: Mutex<Instant>,
}

impl Leadership {
    pub fn leads(&self) -> bool {
        self.renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            < RENEW_DEADLINE
    }
}

/// Waits until this replica holds the lease, then keeps renewing it in the
/// background. A renewal counts from when it was sent; a leader that has not
/// renewed within [`RENEW_DEADLINE`] (a hung API server, a paused process)
/// exits, and reconcilers check [`Leadership::leads`] before each run, so a
/// stale leader never reconciles.
pub async fn acquire(api: Api<Lease>, name: String, me: String) -> std::sync::Arc<Leadership> {
    let elector = Elector::new(api, name.clone(), me.clone());
    loop {
        let sent = Instant::now();
        match elector.try_hold().await {
            Ok(true) => {
                tracing::info!(lease = %name, identity = %me, "became leader");
                let leadership = std::sync::Arc::new(Leadership {
                    renewed: Mutex::new(sent),
                });
                tokio::spawn(renew(elector, leadership.clone()));
                return leadership;
            }
            Ok(false) => tracing::debug!(lease = %name, "another replica leads; waiting"),
            Err(e) => tracing::warn!(lease = %name, error = %e, "leader election failed; retrying"),
        }
        tokio::time::sleep(RETRY_PERIOD).await;
    }
}

async fn renew(elector: Elector, leadership: std::sync::Arc<Leadership>) {
    loop {
        tokio::time::sleep(RETRY_PERIOD).await;
        if !leadership.leads() {
            tracing::error!("could not renew the leader lease in time; exiting");
            std::process::exit(1);
        }
        let sent = Instant::now();
        match elector.try_hold().await {
            Ok(true) => *leadership.renewed.lock().unwrap_or_else(|p| p.into_inner()) = sent,
            Ok(false) => {
                tracing::error!("lost the leader lease; exiting");
                std::process::exit(1);
            }
            Err(e) => tracing::warn!(error = %e, "could not renew the leader lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn a_free_or_expired_lease_is_taken_and_a_live_one_is_not() {
        let taken = next_spec(None, "a", true, at(0)).unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(0));
        // b sees a's live lease: waits.
        assert!(next_spec(Some(&taken), "b", false, at(10)).is_none());
        // a renews: same holder, same transitions, new renew time.
        let renewed = next_spec(Some(&taken), "a", false, at(10)).unwrap();
        assert_eq!(
            (
                renewed.holder_identity.as_deref(),
                renewed.lease_transitions
            ),
            (Some("a"), Some(0))
        );
        assert_eq!(renewed.renew_time, Some(MicroTime(at(10))));
        // Expired: b takes over, one more transition.
        let b = next_spec(Some(&renewed), "b", true, at(30)).unwrap();
        assert_eq!(
            (b.holder_identity.as_deref(), b.lease_transitions),
            (Some("b"), Some(1))
        );
    }

    #[test]
    fn expiry_is_judged_by_local_observation_not_by_the_holders_clock() {
        let t0 = Instant::now();
        // The holder's clock is a day ahead: its renewTime means nothing here.
        let rec = next_spec(None, "a", true, at(86_400)).unwrap();
        let seen = Observed {
            record: rec.clone(),
            since: t0,
        };
        let lease = Duration::from_secs(LEASE_SECONDS as u64);
        assert!(!expired(&rec, Some(&seen), t0 + lease));
        assert!(expired(
            &rec,
            Some(&seen),
            t0 + lease + Duration::from_secs(1)
        ));
        // A record not seen before (a renewal happened) is live.
        let renewed = next_spec(Some(&rec), "a", false, at(86_402)).unwrap();
        assert!(!expired(&renewed, Some(&seen), t0 + lease * 2));
        assert!(!expired(&rec, None, t0 + lease * 2));
        // A lease nobody holds is free.
        let free = LeaseSpec::default();
        assert!(expired(&free, None, t0));
        assert!(RENEW_DEADLINE < lease);
    }
}
