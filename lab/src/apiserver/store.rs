//! The one object store: every object of every resource type as JSON, keyed
//! by resource, namespace and name, one global resourceVersion counter, and
//! a bounded history of change events that every watch reads from.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::resources::{self, NAMESPACES};
use super::selectors::Selectors;
use super::status::ApiError;

/// `(resource index, namespace or "", name)`.
pub type Key = (usize, String, String);

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Deleted.
    Deleted,
}

impl EventType {
    /// The watch event `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion this change produced (history RVs are contiguous).
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    /// Resource index.
    pub resource: usize,
    /// Namespace or "".
    pub namespace: String,
    /// The object after the change (for DELETED: its last state, with this RV).
    pub object: Arc<Value>,
    /// `object` serialised once, shared by every watch.
    pub json: Bytes,
    /// The object before the change, so selector watches can turn a change
    /// that stops matching into DELETED.
    pub prev: Option<Arc<Value>>,
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    /// The store's resourceVersion when the page was read.
    pub rv: u64,
    /// Matching objects, in key order.
    pub items: Vec<Arc<Value>>,
    /// The last key returned, when more matching objects remain.
    pub next: Option<(String, String)>,
}

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<Event>>,
    /// Every event with an RV above this is still in `history`.
    floor: u64,
}

/// The store. All writes take one lock, so RVs and event order agree.
pub struct Store {
    inner: Mutex<Inner>,
    rv_tx: tokio::sync::watch::Sender<u64>,
    history_cap: usize,
}

/// What a DELETE does to an object.
#[derive(Debug)]
pub enum Deletion {
    /// Remove it now.
    Now,
    /// Keep it as this (with `deletionTimestamp` set): finalizers remain, or
    /// a Pod's kubelet has not confirmed yet.
    Keep(Value),
}

/// Is this object being deleted with nothing left to wait for (no
/// finalizers, no grace period)?
pub fn finalized(v: &Value) -> bool {
    let meta = v.get("metadata");
    let marked = meta
        .and_then(|m| m.get("deletionTimestamp"))
        .is_some_and(|t| !t.is_null());
    let finalizers = meta
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let grace = meta
        .and_then(|m| m.get("deletionGracePeriodSeconds"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    marked && !finalizers && grace <= 0
}

/// A watch from an RV the history no longer covers.
#[derive(Debug, Clone, Copy)]
pub struct TooOld {
    /// The RV asked for.
    pub requested: u64,
    /// The oldest RV the history can serve from.
    pub oldest: u64,
}

/// Now, as the API server writes timestamps.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn uid_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/uid").and_then(Value::as_str)
}

fn set_rv(v: &mut Value, rv: u64) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

impl Store {
    /// An empty store keeping `history_cap` events.
    pub fn new(history_cap: usize) -> Self {
        let (rv_tx, _) = tokio::sync::watch::channel(1);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                floor: 1,
            }),
            rv_tx,
            history_cap: history_cap.max(1),
        }
    }

    /// Wakes whenever the RV moves.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    /// The current resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.inner.lock().rv
    }

    /// One object.
    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.inner.lock().objects.get(key).cloned()
    }

    /// Does this namespace exist?
    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.get(&(NAMESPACES, String::new(), ns.to_string()))
            .is_some()
    }

    /// Up to `limit` matching objects after `after` (a `(namespace, name)`),
    /// in one namespace or all.
    pub fn list(
        &self,
        resource: usize,
        namespace: Option<&str>,
        after: Option<(&str, &str)>,
        selectors: &Selectors,
        limit: Option<usize>,
    ) -> Page {
        let inner = self.inner.lock();
        let start: Bound<Key> = match (after, namespace) {
            (Some((ns, name)), _) => Bound::Excluded((resource, ns.to_string(), name.to_string())),
            (None, Some(ns)) => Bound::Included((resource, ns.to_string(), String::new())),
            (None, None) => Bound::Included((resource, String::new(), String::new())),
        };
        let mut items = Vec::new();
        let mut next = None;
        for ((r, ns, name), obj) in inner.objects.range((start, Bound::Unbounded)) {
            if *r != resource || namespace.is_some_and(|want| want != ns) {
                break;
            }
            if !selectors.matches(obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                // One more match exists: the page ends at the previous item.
                next = items.last().map(|o: &Arc<Value>| {
                    let ns = o
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    (ns.to_string(), name_of(o).to_string())
                });
                break;
            }
            let _ = name;
            items.push(obj.clone());
        }
        Page {
            rv: inner.rv,
            items,
            next,
        }
    }

    /// Events after `rv`, or [`TooOld`] when the history has lost some.
    pub fn events_after(&self, rv: u64) -> Result<Vec<Arc<Event>>, TooOld> {
        let inner = self.inner.lock();
        if rv < inner.floor {
            return Err(TooOld {
                requested: rv,
                oldest: inner.floor,
            });
        }
        let Some(front) = inner.history.front() else {
            return Ok(Vec::new());
        };
        let skip = (rv + 1).saturating_sub(front.rv) as usize;
        Ok(inner.history.iter().skip(skip).cloned().collect())
    }

    fn commit(
        &self,
        inner: &mut Inner,
        kind: EventType,
        key: &Key,
        mut obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        inner.rv += 1;
        let rv = inner.rv;
        set_rv(&mut obj, rv);
        let json = Bytes::from(serde_json::to_vec(&obj).unwrap_or_default());
        let obj = Arc::new(obj);
        match kind {
            EventType::Deleted => {
                inner.objects.remove(key);
            }
            _ => {
                inner.objects.insert(key.clone(), obj.clone());
            }
        }
        inner.history.push_back(Arc::new(Event {
            rv,
            kind,
            resource: key.0,
            namespace: key.1.clone(),
            object: obj.clone(),
            json,
            prev,
        }));
        while inner.history.len() > self.history_cap {
            if let Some(e) = inner.history.pop_front() {
                inner.floor = e.rv;
            }
        }
        self.rv_tx.send_replace(rv);
        obj
    }

    /// Store a new object. `obj` is admitted already; this resolves
    /// `generateName` and stamps uid, creationTimestamp and resourceVersion.
    pub fn create(
        &self,
        resource: usize,
        namespace: &str,
        mut obj: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let def = resources::def(resource);
        let mut inner = self.inner.lock();
        let given = name_of(&obj).to_string();
        let name = if given.is_empty() {
            let prefix = obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let mut tries = 0;
            loop {
                let candidate = format!("{prefix}{}", random_suffix());
                if !inner.objects.contains_key(&(
                    resource,
                    namespace.to_string(),
                    candidate.clone(),
                )) {
                    break candidate;
                }
                tries += 1;
                if tries > 16 {
                    return Err(ApiError::new(
                        409,
                        "AlreadyExists",
                        format!("could not generate a free name with prefix {prefix:?}"),
                    ));
                }
            }
        } else {
            given
        };
        let key = (resource, namespace.to_string(), name.clone());
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(def, &name));
        }
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("name".into(), json!(name));
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        }
        Ok(self.commit(&mut inner, EventType::Added, &key, obj, None))
    }

    /// Read-modify-write one object under the lock. `f` gets the current
    /// object and returns its replacement (admitted, old RV still in it).
    /// An update that changes nothing keeps the RV and sends no event, as
    /// etcd does.
    pub fn update(
        &self,
        key: &Key,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Arc<Value>, ApiError> {
        let def = resources::def(key.0);
        let mut inner = self.inner.lock();
        let old = inner
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(def, &key.2))?;
        let new = f(&old)?;
        if new == *old {
            return Ok(old);
        }
        if finalized(&new) {
            // The last finalizer of an object being deleted went: the update
            // is the deletion (one DELETED event, as the real registry does).
            let gone = self.commit(&mut inner, EventType::Deleted, key, new, Some(old.clone()));
            self.cascade(&mut inner, key, &old);
            return Ok(gone);
        }
        Ok(self.commit(&mut inner, EventType::Modified, key, new, Some(old)))
    }

    /// A DELETE: `decide` (given the current object) says whether it goes
    /// now or is kept, marked as being deleted ([`Deletion`]). Returns the
    /// object and whether it is gone. Unless `orphan`, an object deleted now
    /// takes with it the objects it owns (ownerReferences, recursively) and,
    /// for a Namespace, everything in it.
    pub fn delete_with(
        &self,
        key: &Key,
        decide: impl FnOnce(&Value) -> Result<Deletion, ApiError>,
        orphan: bool,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        let def = resources::def(key.0);
        let mut inner = self.inner.lock();
        let old = inner
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(def, &key.2))?;
        match decide(&old)? {
            Deletion::Now => {
                let gone = self.commit(
                    &mut inner,
                    EventType::Deleted,
                    key,
                    (*old).clone(),
                    Some(old.clone()),
                );
                if !orphan {
                    self.cascade(&mut inner, key, &old);
                }
                Ok((gone, true))
            }
            Deletion::Keep(new) if new == *old => Ok((old, false)),
            Deletion::Keep(new) => Ok((
                self.commit(&mut inner, EventType::Modified, key, new, Some(old)),
                false,
            )),
        }
    }

    fn cascade(&self, inner: &mut Inner, key: &Key, old: &Value) {
        let mut deleted: HashSet<String> = uid_of(old)
            .map(|u| vec![u.to_string()])
            .unwrap_or_default()
            .into_iter()
            .collect();
        if key.0 == NAMESPACES {
            let inside: Vec<Key> = inner
                .objects
                .keys()
                .filter(|(r, ns, _)| resources::def(*r).namespaced && *ns == key.2)
                .cloned()
                .collect();
            for k in inside {
                if let Some(o) = inner.objects.get(&k).cloned() {
                    if let Some(u) = uid_of(&o) {
                        deleted.insert(u.to_string());
                    }
                    self.commit(inner, EventType::Deleted, &k, (*o).clone(), Some(o));
                }
            }
        }
        // The garbage collector: delete dependents whose owners are all gone.
        loop {
            let alive: HashSet<&str> = inner.objects.values().filter_map(|o| uid_of(o)).collect();
            let doomed: Vec<Key> = inner
                .objects
                .iter()
                .filter(|(_, o)| {
                    let refs: Vec<&str> = o
                        .pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                                .collect()
                        })
                        .unwrap_or_default();
                    refs.iter().any(|u| deleted.contains(*u))
                        && !refs.iter().any(|u| alive.contains(u))
                })
                .map(|(k, _)| k.clone())
                .collect();
            if doomed.is_empty() {
                break;
            }
            for k in doomed {
                if let Some(o) = inner.objects.get(&k).cloned() {
                    if let Some(u) = uid_of(&o) {
                        deleted.insert(u.to_string());
                    }
                    self.commit(inner, EventType::Deleted, &k, (*o).clone(), Some(o));
                }
            }
        }
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    // The real API server's alphabet: no vowels, no confusable digits.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "a"}})
    }

    #[test]
    fn history_is_bounded_and_reports_too_old() {
        let s = Store::new(3);
        for i in 0..5 {
            s.create(resources::SECRETS, "a", obj(&format!("s{i}")))
                .unwrap();
        }
        assert_eq!(s.current_rv(), 6);
        assert!(s.events_after(1).is_err());
        let evs = s.events_after(3).unwrap();
        assert_eq!(evs.iter().map(|e| e.rv).collect::<Vec<_>>(), vec![4, 5, 6]);
        assert_eq!(s.events_after(6).unwrap().len(), 0);
    }

    #[test]
    fn paging_and_cascade() {
        let s = Store::new(100);
        let owner = s.create(resources::SECRETS, "a", obj("owner")).unwrap();
        let uid = owner["metadata"]["uid"].as_str().unwrap().to_string();
        let mut child = obj("child");
        child["metadata"]["ownerReferences"] =
            json!([{"uid": uid, "name": "owner", "kind": "Secret", "apiVersion": "v1"}]);
        s.create(resources::SECRETS, "a", child).unwrap();
        let p = s.list(
            resources::SECRETS,
            Some("a"),
            None,
            &Selectors::default(),
            Some(1),
        );
        assert_eq!(p.items.len(), 1);
        let (ns, name) = p.next.unwrap();
        let p2 = s.list(
            resources::SECRETS,
            Some("a"),
            Some((&ns, &name)),
            &Selectors::default(),
            Some(1),
        );
        assert_eq!(p2.items.len(), 1);
        assert!(p2.next.is_none());
        s.delete_with(
            &(resources::SECRETS, "a".into(), "owner".into()),
            |_| Ok(Deletion::Now),
            false,
        )
        .unwrap();
        assert!(s
            .get(&(resources::SECRETS, "a".into(), "child".into()))
            .is_none());
    }
}
