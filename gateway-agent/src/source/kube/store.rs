//! The objects every watcher has reported, and the debounced readings made from them.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use gateway_model::{Kind, Object, ObjectKey, Objects};
use tokio::sync::mpsc;

use super::watch::Change;
use crate::source::file::Reading;

/// How long the watchers must stay quiet before a new reading is made: a burst of changes (a
/// relist, `kubectl apply -f` of many objects) makes one model.
pub const DEBOUNCE: Duration = crate::source::file::DEBOUNCE;
/// A steady stream of changes still produces a reading this often.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// A change of one kind, as the watcher tasks send it.
pub type Message = (Kind, Change<Object>);

/// What the status writer needs to know about the objects besides their statuses.
#[derive(Debug, Default)]
pub struct Known {
    /// (kind, namespace, name) → uid, for Events about our objects.
    pub uids: BTreeMap<ObjectKey, String>,
    /// Gateways with spec.addresses (the others report the Nodes' addresses).
    pub addressed: BTreeSet<ObjectKey>,
}

/// [`Known`], shared between the store and the status writer.
pub type Uids = std::sync::Arc<std::sync::Mutex<Known>>;

/// The current objects, and which kinds have been listed at least once.
#[derive(Debug, Default)]
pub struct Store {
    objects: Objects,
    synced: BTreeSet<Kind>,
}

impl Store {
    /// An empty store; `preferred_node` is passed on to the model (prefer-local-endpoints).
    pub fn new(preferred_node: Option<String>) -> Self {
        let mut objects = Objects::default();
        objects.set_preferred_node(preferred_node);
        Store {
            objects,
            synced: BTreeSet::new(),
        }
    }

    /// Applies one change.
    pub fn apply(&mut self, kind: Kind, change: Change<Object>) {
        match change {
            Change::Replace(objects) => {
                let old: Vec<ObjectKey> = self.objects.of_kind(kind).map(Object::key).collect();
                for key in old {
                    self.objects.remove(&key);
                }
                for o in objects {
                    self.objects.insert(o);
                }
                self.synced.insert(kind);
            }
            Change::Apply(o) => self.objects.insert(o),
            Change::Delete(o) => {
                self.objects.remove(&o.key());
            }
        }
    }

    /// Whether every kind in `kinds` has been listed (or found not served).
    pub fn synced(&self, kinds: &[Kind]) -> bool {
        kinds.iter().all(|k| self.synced.contains(k))
    }

    /// The objects as a reading.
    pub fn reading(&self) -> Reading {
        Reading {
            objects: self.objects.clone(),
            errors: Vec::new(),
        }
    }

    /// Every object's uid, and which Gateways have spec.addresses.
    pub fn known(&self) -> Known {
        let uids = self
            .objects
            .iter()
            .filter_map(|o| Some((o.key(), o.meta().uid.clone()?)))
            .collect();
        let addressed = self
            .objects
            .of_kind(Kind::Gateway)
            .filter(|o| {
                matches!(o, Object::Gateway(g) if g.spec.addresses.as_ref().is_some_and(|a| !a.is_empty()))
            })
            .map(Object::key)
            .collect();
        Known { uids, addressed }
    }
}

/// Applies messages from the watchers and sends a reading after each quiet burst. The first
/// reading waits until every kind in `kinds` has been listed, or `initial_timeout` has passed.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<Message>,
    preferred_node: Option<String>,
    kinds: Vec<Kind>,
    initial_timeout: Duration,
    uids: Uids,
    tx: mpsc::Sender<Reading>,
) {
    let mut store = Store::new(preferred_node);
    let started = tokio::time::Instant::now();
    let mut first_sent = false;
    loop {
        // Wait for the first change of a burst (or, before the first reading, for the timeout).
        let first = if first_sent {
            rx.recv().await
        } else {
            match tokio::time::timeout_at(started + initial_timeout, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    tracing::warn!(
                        "not every kind was listed in time; starting with what is known"
                    );
                    first_sent = true;
                    publish(&store, &uids, &tx).await;
                    continue;
                }
            }
        };
        let Some((kind, change)) = first else { return };
        store.apply(kind, change);
        let burst = tokio::time::Instant::now();
        loop {
            let quiet = tokio::time::Instant::now() + DEBOUNCE;
            match tokio::time::timeout_at(quiet.min(burst + MAX_DELAY), rx.recv()).await {
                Ok(Some((kind, change))) => store.apply(kind, change),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if !first_sent && !store.synced(&kinds) && started.elapsed() < initial_timeout {
            continue;
        }
        first_sent = true;
        if !publish(&store, &uids, &tx).await {
            return;
        }
    }
}

async fn publish(store: &Store, uids: &Uids, tx: &mpsc::Sender<Reading>) -> bool {
    if let Ok(mut u) = uids.lock() {
        *u = store.known();
    }
    tx.send(store.reading()).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str) -> Object {
        Object::Namespace(k8s_openapi::api::core::v1::Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    #[test]
    fn replace_drops_objects_of_that_kind_that_are_gone() {
        let mut s = Store::default();
        s.apply(
            Kind::Namespace,
            Change::Replace(vec![namespace("a"), namespace("b")]),
        );
        assert!(s.synced(&[Kind::Namespace]));
        assert!(!s.synced(&[Kind::Namespace, Kind::Service]));
        s.apply(Kind::Namespace, Change::Apply(namespace("c")));
        s.apply(Kind::Namespace, Change::Delete(namespace("a")));
        let names: Vec<String> = s.reading().objects.iter().map(|o| o.key().name).collect();
        assert_eq!(names, ["b", "c"]);
        s.apply(Kind::Namespace, Change::Replace(vec![namespace("d")]));
        assert_eq!(s.reading().objects.len(), 1);
        assert_eq!(
            s.known().uids.values().next().map(String::as_str),
            Some("uid-d")
        );
    }

    #[tokio::test]
    async fn a_burst_makes_one_reading_after_every_kind_is_listed() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (out_tx, mut out) = mpsc::channel(4);
        let task = tokio::spawn(run(
            rx,
            None,
            vec![Kind::Namespace, Kind::Service],
            Duration::from_secs(30),
            Uids::default(),
            out_tx,
        ));
        tx.send((Kind::Namespace, Change::Replace(vec![namespace("a")])))
            .unwrap();
        tokio::time::sleep(DEBOUNCE * 2).await;
        assert!(out.try_recv().is_err(), "Services are not listed yet");
        tx.send((Kind::Service, Change::Replace(vec![]))).unwrap();
        for n in ["b", "c", "d"] {
            tx.send((Kind::Namespace, Change::Apply(namespace(n))))
                .unwrap();
        }
        let first = out.recv().await.unwrap();
        assert_eq!(first.objects.len(), 4);
        tokio::time::sleep(DEBOUNCE * 2).await;
        assert!(out.try_recv().is_err(), "one reading per burst");
        task.abort();
    }
}
