//! One listener's connection table: the bound on open connections, and
//! which connection goes when a new one arrives at the bound.
//!
//! A semaphore alone let 600 slow clients (a head trickled a byte at a
//! time) hold all 512 places until their header timeout, while honest
//! clients queued in the kernel's backlog: 498 ms median, 4.6 s worst for
//! `/generate`. Here a new connection at the bound closes the oldest one
//! that has never sent a whole head, or failing that the oldest idle
//! keep-alive one, once it has been so for [`SHED_AFTER`]: a connection
//! made a moment ago whose head is on its way is not slow, and shedding
//! those cut off honest clients in a burst of 2,000 at once. A connection
//! with a request in service is never closed for another: the in-flight
//! limits bound those. Otherwise a new connection waits, as it always did.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// No whole head yet: a connection just made, or a slow client.
const NEW: u8 = 0;
/// A request is in service.
const BUSY: u8 = 1;
/// Between requests, kept alive.
const IDLE: u8 = 2;
/// Closed for a newer connection.
const SHED: u8 = 3;

/// How long a connection must have been without a whole head, or idle,
/// before a newer one may close it. A client that sends its head at once
/// (every honest one, on any network this serves) is never shed.
pub const SHED_AFTER: Duration = Duration::from_secs(1);

/// What a connection is doing, as the table sees it, and since when.
#[derive(Debug)]
pub struct Phase {
    state: AtomicU8,
    /// Milliseconds from `epoch` to when `state` last became NEW or IDLE.
    since_ms: AtomicU64,
    epoch: Instant,
}

impl Phase {
    fn new(epoch: Instant) -> Self {
        let phase = Self {
            state: AtomicU8::new(NEW),
            since_ms: AtomicU64::new(0),
            epoch,
        };
        phase.touch();
        phase
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.since_ms.store(ms, Ordering::Release);
    }

    /// Whether it has been in `state` (NEW or IDLE) for [`SHED_AFTER`].
    fn is_stale(&self, state: u8) -> bool {
        let since = Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        self.state.load(Ordering::Acquire) == state
            && self.epoch.elapsed().saturating_sub(since) >= SHED_AFTER
    }

    /// Marks a request in service until the guard drops; `None` if the
    /// connection was shed just before (the request must not start).
    pub fn busy(self: &Arc<Self>) -> Option<Busy> {
        let mut now = self.state.load(Ordering::Acquire);
        loop {
            if now == SHED {
                return None;
            }
            match self
                .state
                .compare_exchange(now, BUSY, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Busy(self.clone())),
                Err(actual) => now = actual,
            }
        }
    }

    /// Sheds the connection if it has been in `from` for [`SHED_AFTER`];
    /// whether it was.
    fn shed_if_stale(&self, from: u8) -> bool {
        self.is_stale(from)
            && self
                .state
                .compare_exchange(from, SHED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// A request in service; the connection is idle again when it drops.
pub struct Busy(Arc<Phase>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        let _ = self
            .0
            .state
            .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }
}

struct Entry {
    phase: Arc<Phase>,
    shed: CancellationToken,
}

struct Inner {
    max: usize,
    /// The clock the phases' times are read against.
    epoch: Instant,
    /// Counts each connection shed.
    shed: prometheus::IntCounter,
    /// Open connections by age: the smallest key is the oldest.
    open: Mutex<(u64, BTreeMap<u64, Entry>)>,
    /// Woken when a connection closes, so that a full table looks again.
    freed: Notify,
}

/// The table of one listener.
#[derive(Clone)]
pub struct Slots(Arc<Inner>);

impl Slots {
    /// A table of at most `max` connections, counting those it sheds.
    pub fn new(max: usize, shed: prometheus::IntCounter) -> Self {
        Self(Arc::new(Inner {
            max: max.max(1),
            epoch: Instant::now(),
            shed,
            open: Mutex::new((0, BTreeMap::new())),
            freed: Notify::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Entry>)> {
        self.0.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a new connection can be taken now: below the bound, or some
    /// connection could be shed for it.
    fn has_room(&self) -> bool {
        let open = self.lock();
        open.1.len() < self.0.max
            || open
                .1
                .values()
                .any(|e| e.phase.is_stale(NEW) || e.phase.is_stale(IDLE))
    }

    /// Waits until a new connection can be taken. A connection that goes
    /// idle, or stale, wakes nobody, so a full table is looked at again
    /// every few milliseconds as well as on every close.
    pub async fn room(&self) {
        loop {
            let freed = self.0.freed.notified();
            if self.has_room() {
                return;
            }
            let _ = tokio::time::timeout(RECHECK, freed).await;
        }
    }

    /// Takes a place for a new connection, shedding another if the table
    /// is full; waits while every connection is in service.
    pub async fn take(&self) -> Slot {
        loop {
            {
                let mut open = self.lock();
                if open.1.len() >= self.0.max && shed_one(&mut open.1) {
                    self.0.shed.inc();
                }
                if open.1.len() < self.0.max {
                    open.0 += 1;
                    let id = open.0;
                    let phase = Arc::new(Phase::new(self.0.epoch));
                    let shed = CancellationToken::new();
                    let entry = Entry {
                        phase: phase.clone(),
                        shed: shed.clone(),
                    };
                    open.1.insert(id, entry);
                    return Slot {
                        id,
                        phase,
                        shed,
                        slots: self.clone(),
                    };
                }
            }
            self.room().await;
        }
    }
}

/// How often a table full of busy connections is looked at again.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(20);

/// Sheds the oldest connection that has been without a whole head for
/// [`SHED_AFTER`], else the oldest idle that long; removes it from the
/// table. Whether there was one.
fn shed_one(open: &mut BTreeMap<u64, Entry>) -> bool {
    for phase in [NEW, IDLE] {
        let victim = open
            .iter()
            .find(|(_, e)| e.phase.shed_if_stale(phase))
            .map(|(id, _)| *id);
        if let Some(id) = victim
            && let Some(entry) = open.remove(&id)
        {
            entry.shed.cancel();
            return true;
        }
    }
    false
}

/// One connection's place in the table, given back on drop.
pub struct Slot {
    id: u64,
    phase: Arc<Phase>,
    shed: CancellationToken,
    slots: Slots,
}

impl Slot {
    /// What the connection's service marks as busy and idle.
    pub fn phase(&self) -> Arc<Phase> {
        self.phase.clone()
    }

    /// Resolves when the connection was shed for a newer one.
    pub async fn evicted(&self) {
        self.shed.cancelled().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().1.remove(&self.id);
        self.slots.0.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> prometheus::IntCounter {
        prometheus::IntCounter::new("shed", "shed").unwrap()
    }

    /// Dates every open connection's phase back to the table's start, past
    /// [`SHED_AFTER`], as time would.
    fn age(slots: &Slots) {
        let open = slots.lock();
        for entry in open.1.values() {
            entry.phase.since_ms.store(0, Ordering::Release);
        }
    }

    #[tokio::test]
    async fn a_full_table_sheds_the_oldest_headless_then_the_oldest_idle() {
        // A clock started before SHED_AFTER, so that an age of 0 is stale.
        let slots = Slots(Arc::new(Inner {
            max: 3,
            epoch: Instant::now() - 2 * SHED_AFTER,
            shed: counter(),
            open: Mutex::new((0, BTreeMap::new())),
            freed: Notify::new(),
        }));
        let a = slots.take().await;
        let b = slots.take().await;
        let c = slots.take().await;
        // a is in service, b idle after a request, c has sent nothing.
        let _a_busy = a.phase().busy().unwrap();
        drop(b.phase().busy().unwrap());
        // Young: nobody is shed yet; the new one would wait.
        assert!(!slots.has_room());
        age(&slots);
        let d = slots.take().await;
        assert!(c.shed.is_cancelled(), "the headless one goes first");
        assert!(!b.shed.is_cancelled() && !a.shed.is_cancelled());
        // Headless before idle, even a younger one, once it is stale.
        age(&slots);
        let _e = slots.take().await;
        assert!(d.shed.is_cancelled());
        assert!(!b.shed.is_cancelled());
        // A shed connection's request does not start.
        assert!(c.phase().busy().is_none());
        assert_eq!(slots.0.shed.get(), 2);
    }

    #[tokio::test]
    async fn a_table_of_busy_connections_waits_for_one_to_close() {
        let slots = Slots::new(1, counter());
        let a = slots.take().await;
        let busy = a.phase().busy().unwrap();
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take().await.id }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(busy);
        drop(a);
        assert_eq!(waiting.await.unwrap(), 2);
    }
}
