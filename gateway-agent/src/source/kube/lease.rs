//! Leader election for the status writer on a coordination.k8s.io/v1 Lease.
//!
//! The holder renews the Lease every `duration / 3`. Another agent takes the Lease over when it is
//! free (no holder) or when its holder and renewTime have not changed for `leaseDurationSeconds`
//! of the observer's own clock (as client-go does: no trust in other nodes' clocks). Updates go
//! through PUT with the observed resourceVersion, so two agents racing for it cannot both win.
//!
//! On a clean shutdown the holder releases the Lease (as client-go's `ReleaseOnCancel`): it
//! clears holderIdentity with the resourceVersion it last wrote, so another agent takes over at
//! its next attempt instead of after leaseDurationSeconds.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};

/// Where the Lease lives and who we are.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// Our holderIdentity (the node name).
    pub identity: String,
    /// leaseDurationSeconds: how long a holder that stopped renewing keeps the Lease.
    pub duration: Duration,
}

/// What we last saw of another holder's record, and since when (our clock).
#[derive(Debug, PartialEq)]
struct Observed {
    holder: String,
    renew: Option<String>,
    since: Instant,
}

/// Runs the election until `stop` fires (or its sender is dropped); `leader` says whether we
/// hold the Lease. On stop, a Lease we hold is released before returning.
pub async fn run(
    api: Api<Lease>,
    opts: LeaseOptions,
    leader: watch::Sender<bool>,
    mut stop: oneshot::Receiver<()>,
) {
    let renew_every = opts.duration / 3;
    let mut observed: Option<Observed> = None;
    let mut last_renewed: Option<Instant> = None;
    // The Lease as we last wrote it (its resourceVersion), while we hold it.
    let mut held: Option<Lease> = None;
    loop {
        match attempt(&api, &opts, &mut observed).await {
            Ok(Some(lease)) => {
                last_renewed = Some(Instant::now());
                held = Some(lease);
                if !*leader.borrow() {
                    tracing::info!(lease = %opts.name, identity = %opts.identity, "acquired the status-writer lease");
                }
                leader.send_replace(true);
            }
            Ok(None) => {
                if *leader.borrow() {
                    tracing::warn!(lease = %opts.name, "lost the status-writer lease");
                }
                last_renewed = None;
                held = None;
                leader.send_replace(false);
            }
            Err(e) => {
                tracing::warn!(lease = %opts.name, error = %e, "lease request failed");
                // Without a successful renewal within the duration, someone else may hold it now.
                if last_renewed.is_none_or(|t| t.elapsed() >= opts.duration) && *leader.borrow() {
                    tracing::warn!(lease = %opts.name, "could not renew in time; no longer the status writer");
                    leader.send_replace(false);
                    held = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(renew_every) => {}
            _ = &mut stop => break,
        }
    }
    // Stop writing first, then hand the Lease over.
    leader.send_replace(false);
    if let Some(lease) = held {
        release(&api, &opts, lease).await;
    }
}

/// Gives the Lease up: no holder, a one-second duration, renewed now, written with the
/// resourceVersion we hold (a 409 means someone else already wrote it: nothing to release).
async fn release(api: &Api<Lease>, opts: &LeaseOptions, mut lease: Lease) {
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    spec.acquire_time = Some(now());
    match conflict_is_none(
        api.replace(&opts.name, &PostParams::default(), &lease)
            .await,
    ) {
        Ok(Some(_)) => {
            tracing::info!(lease = %opts.name, identity = %opts.identity, "released the status-writer lease")
        }
        Ok(None) => {
            tracing::info!(lease = %opts.name, "the lease changed meanwhile; nothing to release")
        }
        Err(e) => {
            tracing::warn!(lease = %opts.name, error = %e, "releasing the lease failed; the next holder waits for it to expire")
        }
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// One round: create, renew or take over. `Ok(Some(lease))` (as written) when we hold the Lease
/// afterwards.
async fn attempt(
    api: &Api<Lease>,
    opts: &LeaseOptions,
    observed: &mut Option<Observed>,
) -> kube::Result<Option<Lease>> {
    let Some(mut lease) = api.get_opt(&opts.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(opts.name.clone()),
                namespace: Some(opts.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(opts.identity.clone()),
                lease_duration_seconds: Some(seconds(opts.duration)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return conflict_is_none(api.create(&PostParams::default(), &lease).await);
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != opts.identity && !holder.is_empty() {
        let renew = spec.renew_time.as_ref().map(|t| t.0.to_string());
        let duration = spec
            .lease_duration_seconds
            .map_or(opts.duration, |s| Duration::from_secs(s.max(0) as u64));
        let seen = match observed.take() {
            Some(o) if o.holder == holder && o.renew == renew => o,
            _ => Observed {
                holder: holder.clone(),
                renew,
                since: Instant::now(),
            },
        };
        let expired = seen.since.elapsed() >= duration;
        *observed = Some(seen);
        if !expired {
            return Ok(None);
        }
        tracing::info!(lease = %opts.name, previous = %holder, "holder stopped renewing; taking the lease over");
    }
    if holder != opts.identity {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(opts.identity.clone());
    spec.lease_duration_seconds = Some(seconds(opts.duration));
    spec.renew_time = Some(now());
    *observed = None;
    conflict_is_none(
        api.replace(&opts.name, &PostParams::default(), &lease)
            .await,
    )
}

/// A 409 (someone else wrote first) means we do not hold the Lease; other errors are errors.
fn conflict_is_none(r: kube::Result<Lease>) -> kube::Result<Option<Lease>> {
    match r {
        Ok(lease) => Ok(Some(lease)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}
