//! One kube-runtime watcher per kind, turned into whole-set replacements and single changes.
//!
//! The watcher lists (paged), then watches from the list's resourceVersion; after a dropped
//! connection it re-watches from the last version it saw, and after a 410 Gone it relists.
//! Errors are retried with [`Backoff`]. A kind the server does not serve (404 on list: a CRD that
//! is not installed) is reported once, counts as an empty set, and is retried quietly every
//! `missing_retry`.

use std::{fmt::Debug, time::Duration};

use futures::StreamExt as _;
use kube::{
    Api, Resource,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;

/// What a watcher reports, after buffering the initial list.
#[derive(Debug)]
pub enum Change<K> {
    /// The complete current set (after a list or relist, or empty for a kind not served).
    Replace(Vec<K>),
    /// Added or modified.
    Apply(K),
    /// Deleted.
    Delete(K),
}

/// Exponential backoff with jitter between `min` and `max`, as kube-runtime's `Backoff` wants.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, doubles up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = (self.next * 2).min(self.max);
        // Up to 25% jitter so agents on every node do not reconnect in step.
        let jitter = current.mul_f64(fastrand::f64() * 0.25);
        Some(current + jitter)
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// How a watch behaves.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Retry delays after errors.
    pub backoff: Backoff,
    /// How often a kind the server does not serve is tried again.
    pub missing_retry: Duration,
}

/// Whether a watcher error says the resource is not served (404 on list or watch).
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

/// Whether a watcher error is the server saying our resourceVersion is too old (a relist follows).
fn gone(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(s) if s.code == 410)
}

/// Watches `api` with `config` for ever, calling `sink` with every change. `what` names the kind
/// in logs.
pub async fn run<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    opts: WatchOptions,
    mut sink: impl FnMut(Change<K>) + Send,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut reported_missing = false;
    loop {
        let stream = watcher(api.clone(), config.clone()).backoff(opts.backoff.clone());
        let mut stream = std::pin::pin!(stream);
        let mut buffer = Vec::new();
        let mut missing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => buffer.clear(),
                Ok(watcher::Event::InitApply(o)) => buffer.push(o),
                Ok(watcher::Event::InitDone) => {
                    tracing::debug!(kind = what, objects = buffer.len(), "listed");
                    if reported_missing {
                        tracing::info!(kind = what, "now served by the API server; watching it");
                        reported_missing = false;
                    }
                    sink(Change::Replace(std::mem::take(&mut buffer)));
                }
                Ok(watcher::Event::Apply(o)) => sink(Change::Apply(o)),
                Ok(watcher::Event::Delete(o)) => sink(Change::Delete(o)),
                Err(e) if not_served(&e) => {
                    missing = true;
                    break;
                }
                Err(e) if gone(&e) => {
                    tracing::info!(kind = what, "watch expired (410 Gone); relisting")
                }
                Err(e) => {
                    tracing::warn!(kind = what, error = %e, "watch failed; retrying with backoff")
                }
            }
        }
        if !missing {
            // The stream never ends on its own; if it does, start over after a pause.
            tokio::time::sleep(opts.backoff.min).await;
            continue;
        }
        if !reported_missing {
            tracing::warn!(
                kind = what,
                retry = %humantime::format_duration(opts.missing_retry),
                "not served by the API server (CRD not installed?); ignoring this kind, retrying quietly"
            );
            reported_missing = true;
        } else {
            tracing::debug!(kind = what, "still not served");
        }
        sink(Change::Replace(Vec::new()));
        tokio::time::sleep(opts.missing_retry).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff as _;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let got: Vec<Duration> = (0..4).map(|_| b.next().unwrap()).collect();
        for (d, base) in got.iter().zip([100u64, 200, 400, 400]) {
            let base = Duration::from_millis(base);
            assert!(*d >= base && *d <= base.mul_f64(1.25), "{d:?} vs {base:?}");
        }
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(125));
    }

    #[test]
    fn classifies_404_and_410() {
        let status = |code| {
            Box::new(kube::core::Status {
                code,
                ..Default::default()
            })
        };
        assert!(not_served(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(404))
        )));
        assert!(!not_served(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(403))
        )));
        assert!(gone(&watcher::Error::WatchError(status(410))));
        assert!(!gone(&watcher::Error::WatchError(status(500))));
    }
}
