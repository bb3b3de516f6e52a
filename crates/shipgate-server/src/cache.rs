//! Caches of API answers, so that a CI job or a dashboard polling a rollout or an environment
//! costs no database round trip while nothing changes: [`RolloutCache`] holds rollouts as
//! `GET /api/v1/rollouts/{id}` answers them (the JSON body, with the app and environment it is
//! authorized against), [`StatusCache`] environments as `GET /api/v1/apps/{app}/environments/{env}`
//! answers them.
//!
//! They are correct only while this replica hears every change, so they are used only then:
//! - every committed change to a rollout NOTIFYs its id (on any replica); the live-update
//!   listener ([`crate::AppState::forward_updates`]) drops that rollout's entry and every
//!   environment's (the notification does not say whose environment changed). Every other
//!   change an environment's status shows (its settings, its auto-deploy pause, what a
//!   platform was seen serving) NOTIFYs `environments`, which empties the status cache. While
//!   the listener is not connected (start-up, a lost connection: notifications may have been
//!   missed) both are off and emptied;
//! - every write request this replica serves (POST, PUT, PATCH, DELETE, API or dashboard)
//!   empties both once answered, so whoever changed something reads their own write at once,
//!   before its notification comes back;
//! - a read that began before an invalidation of its key does not store what it read (each
//!   stripe of keys counts its invalidations; a read stores only if its count is unchanged);
//! - entries live at most [`TTL`], a bound on staleness should all of the above fail.
//!
//! Changes made on another replica reach this one's cache as fast as their NOTIFY does
//! (milliseconds); `?wait=` long polls never use the cache.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

/// The longest an entry is served.
pub const TTL: Duration = Duration::from_secs(10);
/// Entries kept at most (a full cache drops what expired, then everything).
pub const CAPACITY: usize = 4096;
const STRIPES: usize = 64;

/// Rollouts by id.
pub type RolloutCache = Cache<Uuid, Cached>;

/// Environment status bodies by app and environment name.
pub type StatusCache = Cache<(String, String), Bytes>;

/// A cached rollout.
#[derive(Clone, Debug)]
pub struct Cached {
    /// The JSON body.
    pub body: Bytes,
    /// Its app, for authorization.
    pub app: String,
    /// Its environment, for authorization.
    pub environment: String,
}

/// Proof that a read began at a given point of its stripe's invalidations.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    stripe: usize,
    epoch: u64,
    /// When the read began: an entry's age counts from here, not from when it was stored.
    at: Instant,
}

struct Inner<K, V> {
    epochs: [u64; STRIPES],
    entries: HashMap<K, (V, Instant)>,
}

/// See the module documentation.
pub struct Cache<K, V> {
    enabled: bool,
    live: AtomicBool,
    hasher: RandomState,
    inner: Mutex<Inner<K, V>>,
}

impl<K: Hash + Eq, V: Clone> Cache<K, V> {
    /// A cache that serves once [`RolloutCache::set_live`] says the listener runs; `enabled:
    /// false` never serves.
    pub fn new(enabled: bool) -> Self {
        Cache {
            enabled,
            live: AtomicBool::new(false),
            hasher: RandomState::new(),
            inner: Mutex::new(Inner {
                epochs: [0; STRIPES],
                entries: HashMap::new(),
            }),
        }
    }

    fn stripe(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) % STRIPES as u64) as usize
    }

    fn serving(&self) -> bool {
        self.enabled && self.live.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The listener is connected (`true`) or lost (`false`); either way what is stored may
    /// have missed changes, so it is emptied.
    pub fn set_live(&self, live: bool) {
        self.clear();
        self.live.store(live, Ordering::Release);
    }

    /// A fresh entry for `key`, if serving.
    pub fn get(&self, key: &K) -> Option<V> {
        if !self.serving() {
            return None;
        }
        let inner = self.lock();
        let (cached, at) = inner.entries.get(key)?;
        (at.elapsed() < TTL).then(|| cached.clone())
    }

    /// Taken before reading `key` from the database; `None` when not serving.
    pub fn ticket(&self, key: &K) -> Option<Ticket> {
        if !self.serving() {
            return None;
        }
        let stripe = self.stripe(key);
        Some(Ticket {
            stripe,
            epoch: self.lock().epochs[stripe],
            at: Instant::now(),
        })
    }

    /// Stores what a read found, unless `key`'s stripe was invalidated since its ticket.
    pub fn put(&self, key: K, ticket: Option<Ticket>, cached: V) {
        let Some(ticket) = ticket else { return };
        if !self.serving() {
            return;
        }
        let mut inner = self.lock();
        if inner.epochs[ticket.stripe] != ticket.epoch {
            return;
        }
        if inner.entries.len() >= CAPACITY {
            inner.entries.retain(|_, (_, at)| at.elapsed() < TTL);
            if inner.entries.len() >= CAPACITY {
                inner.entries.clear();
            }
        }
        inner.entries.insert(key, (cached, ticket.at));
    }

    /// `key` changed.
    pub fn invalidate(&self, key: &K) {
        let stripe = self.stripe(key);
        let mut inner = self.lock();
        inner.epochs[stripe] += 1;
        inner.entries.remove(key);
    }

    /// Anything may have changed.
    pub fn clear(&self) {
        let mut inner = self.lock();
        for epoch in &mut inner.epochs {
            *epoch += 1;
        }
        inner.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(body: &'static str) -> Cached {
        Cached {
            body: Bytes::from_static(body.as_bytes()),
            app: "shop".into(),
            environment: "production".into(),
        }
    }

    #[test]
    fn nothing_is_served_until_the_listener_is_live_or_when_disabled() {
        let id = Uuid::now_v7();
        let cache = RolloutCache::new(true);
        assert!(cache.ticket(&id).is_none());
        cache.put(id, cache.ticket(&id), cached("v1"));
        assert!(cache.get(&id).is_none());
        cache.set_live(true);
        cache.put(id, cache.ticket(&id), cached("v1"));
        assert_eq!(cache.get(&id).unwrap().body, "v1");
        cache.set_live(false);
        assert!(
            cache.get(&id).is_none(),
            "a lost listener empties and stops it"
        );
        let disabled = RolloutCache::new(false);
        disabled.set_live(true);
        disabled.put(id, disabled.ticket(&id), cached("v1"));
        assert!(disabled.get(&id).is_none());
    }

    #[test]
    fn a_read_that_began_before_an_invalidation_is_not_stored() {
        let cache = RolloutCache::new(true);
        cache.set_live(true);
        let id = Uuid::now_v7();
        let before = cache.ticket(&id);
        cache.invalidate(&id);
        cache.put(id, before, cached("stale"));
        assert!(cache.get(&id).is_none(), "invalidated while it read");
        let other = Uuid::from_u128(id.as_u128() + 1);
        let ticket = cache.ticket(&other);
        cache.clear();
        cache.put(other, ticket, cached("stale"));
        assert!(
            cache.get(&other).is_none(),
            "a write request cleared it meanwhile"
        );
        cache.put(id, cache.ticket(&id), cached("fresh"));
        assert_eq!(cache.get(&id).unwrap().body, "fresh");
        cache.invalidate(&id);
        assert!(cache.get(&id).is_none());
    }
}
