//! A persistent team of threads: the threads of a training step.
//!
//! A training step runs a dozen products a few hundred microseconds apart.
//! Handing each one to a general thread pool costs a wake-up every time:
//! between two products the pool's idle thread has gone to sleep, and
//! `rayon::join` then costs 29–34 µs per hand-off on a 2-core VM, against
//! 1–3 µs for this team (`cargo bench --bench team`, BENCHMARKS.md). The
//! team's threads are started once per [`crate::gemm::GemmCtx`] and, when
//! idle, spin for a while, then yield, and only then park. The step's other
//! parallel work (the batch's gather, the unfused updates) runs on the same
//! threads, so a step never has more busy threads than cores:
//!
//! ```text
//! caller                               worker t (1 ≤ t < threads)
//!   job = (f, parts); epoch += 1  ──▶    sees the new epoch (spin · yield · park)
//!   f(0)                                 f(t) if t < parts
//!   waits until every worker is done ◀── done += 1
//! ```
//!
//! Users split their work statically (a product by its shape and the
//! thread count, `gemm/threads.rs`; a batch by rows), so which thread
//! computes a part never changes a bit.

use std::any::Any;
use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long an idle worker spins on the epoch before it starts yielding:
/// longer than the gaps between the products of a step (the loss, the bias
/// gradients), shorter than a batch's gather.
const SPIN: Duration = Duration::from_micros(200);
/// How long it then yields before parking (until the next product wakes
/// it): between epochs, evaluation and checkpoints, the core is given back.
const YIELD: Duration = Duration::from_millis(5);
/// Spins between two clock reads.
const SPINS_PER_CHECK: u32 = 64;

/// The closure of one run, its lifetime erased (see [`Team::run`]).
type Job = *const (dyn Fn(usize) + Sync + 'static);

/// What the caller and the workers share.
struct Shared {
    /// Bumped by the caller to start a run; each worker waits for a change.
    epoch: AtomicU64,
    /// The current run's closure and part count. Written by the caller only
    /// while every worker is idle (before the `epoch` store that publishes
    /// it), read by the workers only after they see that store.
    job: UnsafeCell<(Option<Job>, usize)>,
    /// Workers finished with the current run.
    done: AtomicUsize,
    /// Set by a worker before it parks (cleared after): the caller unparks
    /// it when it starts a run.
    parked: Vec<AtomicBool>,
    /// The payload of a worker's panic in the current run.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Set (with an epoch bump) when the team is dropped.
    quit: AtomicBool,
}

// SAFETY: `job` is the only field that is neither Send nor Sync by itself.
// The closure it points to is Sync (so may be called from any thread); the
// caller writes the field only when no worker is running (all have counted
// themselves done, or none has started) and publishes it with the epoch
// store, which each worker loads (SeqCst/Acquire) before reading it.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// `threads − 1` worker threads; the caller is thread 0.
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Time the caller has waited for the workers, over all runs.
    waited: Duration,
}

impl Team {
    /// Starts `threads − 1` workers (none for one thread).
    pub fn new(threads: usize) -> Team {
        let n = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new((None, 0)),
            done: AtomicUsize::new(0),
            parked: (0..n).map(|_| AtomicBool::new(false)).collect(),
            panic: Mutex::new(None),
            quit: AtomicBool::new(false),
        });
        let workers = (1..=n)
            .map(|t| {
                let shared = shared.clone();
                thread::Builder::new()
                    .name(format!("fastnn-team-{t}"))
                    .spawn(move || work(&shared, t))
                    .expect("cannot start a thread")
            })
            .collect();
        let mut team = Team {
            shared,
            workers,
            waited: Duration::ZERO,
        };
        // A thread allocates as it starts (std copies its name): wait until
        // every worker has, so that it never happens inside a later run.
        team.run(team.threads(), &|_| {});
        team
    }

    /// Threads in the team, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Time the calling thread has spent, over every run so far, waiting
    /// for the other threads to finish after its own part: load imbalance
    /// plus the hand-off.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Runs `f(t)` for every `t < parts` at once, `f(0)` on the calling
    /// thread, and returns when all have returned. A panic in any part is
    /// raised here, after every part has finished.
    pub fn run(&mut self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        assert!(
            parts <= self.threads(),
            "{parts} parts for a team of {} threads",
            self.threads()
        );
        if parts <= 1 || self.workers.is_empty() {
            (0..parts).for_each(f);
            return;
        }
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for the duration of this call:
        // the workers use the pointer after the epoch store below and count
        // themselves done before this function returns (it waits for that,
        // even when f(0) panics), so `f` outlives every use.
        let job: Job = unsafe { std::mem::transmute(f as *const (dyn Fn(usize) + Sync + '_)) };
        // SAFETY: every worker is idle: the last run waited for all of them
        // (`&mut self` rules out a concurrent run).
        unsafe { *s.job.get() = (Some(job), parts) };
        s.done.store(0, Ordering::Relaxed);
        self.start();
        let mine = panic::catch_unwind(AssertUnwindSafe(|| f(0)));
        let waiting = Instant::now();
        self.wait();
        self.waited += waiting.elapsed();
        // SAFETY: every worker is done with the job.
        unsafe { *s.job.get() = (None, 0) };
        if let Err(payload) = mine {
            panic::resume_unwind(payload);
        }
        let theirs = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(payload) = theirs {
            panic::resume_unwind(payload);
        }
    }

    /// Publishes a new epoch and wakes the parked workers.
    fn start(&self) {
        let s = &*self.shared;
        // SeqCst pairs with the worker's SeqCst store of `parked` and load
        // of `epoch` before it parks: either it sees this epoch, or this
        // sees it parked and unparks it (an unpark before the park makes the
        // park return at once).
        s.epoch.fetch_add(1, Ordering::SeqCst);
        for (flag, w) in s.parked.iter().zip(&self.workers) {
            if flag.load(Ordering::SeqCst) {
                w.thread().unpark();
            }
        }
    }

    /// Waits until every worker has counted itself done.
    fn wait(&self) {
        let s = &*self.shared;
        let mut idle = Idle::new();
        while s.done.load(Ordering::Acquire) < self.workers.len() {
            // A worker descheduled by another process must not be starved
            // by this spin: yield after a while (never park; it will finish).
            idle.pause(false);
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        self.start();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A barrier for the parts of one [`Team::run`], which all run at once on
/// distinct threads: each `wait` returns when all `parties` have called it.
/// Reusable (each round has its own generation); waiters spin, then yield.
/// A part that panics before a barrier leaves the others waiting: only
/// code that cannot panic between barriers may use one.
pub struct Barrier {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl Barrier {
    pub fn new(parties: usize) -> Barrier {
        Barrier {
            parties,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Waits for every party. Whatever a party wrote before its `wait` is
    /// visible to every party after theirs.
    pub fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        // AcqRel: the last to arrive acquires every earlier arrival's
        // writes (the RMWs on `arrived` form one release sequence), then
        // publishes them all with the generation's Release.
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            // Nobody can arrive for the next round before the generation
            // moves, so this reset cannot lose an arrival.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
        } else {
            let mut idle = Idle::new();
            while self.generation.load(Ordering::Acquire) == generation {
                idle.pause(false);
            }
        }
    }
}

/// A mutable slice that the parts of one [`Team::run`] write in disjoint
/// pieces (each part borrows only its own range).
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: moving or sharing the view only hands out `&mut` pieces through
// `piece`, whose contract makes them disjoint, so this is as safe as
// sending `&mut [T]` pieces, which needs T: Send.
unsafe impl<T: Send> Send for SharedMut<'_, T> {}
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        SharedMut {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _borrow: PhantomData,
        }
    }

    /// True when the slice has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of element `i` (not dereferenced: for prefetches).
    pub fn addr(&self, i: usize) -> *const T {
        self.ptr.wrapping_add(i)
    }

    /// The address of element 0, for a writer that keeps to the contract
    /// of [`SharedMut::piece`]: only its own elements, none of another
    /// part's.
    pub fn as_mut_ptr(&self) -> *mut T {
        self.ptr
    }

    /// The elements in `range` (panics if it is out of bounds).
    ///
    /// # Safety
    /// No two pieces in use at the same time overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn piece(&self, range: Range<usize>) -> &'a mut [T] {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "piece {range:?} of {}",
            self.len
        );
        std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len())
    }
}

/// Spin, then yield, then (if allowed) park: the escalation of an idle
/// thread.
struct Idle {
    since: Instant,
    spins: u32,
}

impl Idle {
    fn new() -> Idle {
        Idle {
            since: Instant::now(),
            spins: 0,
        }
    }

    /// One round of waiting; returns true when the caller should park.
    fn pause(&mut self, may_park: bool) -> bool {
        self.spins = self.spins.wrapping_add(1);
        if !self.spins.is_multiple_of(SPINS_PER_CHECK) {
            std::hint::spin_loop();
            return false;
        }
        let idle = self.since.elapsed();
        if idle < SPIN {
            std::hint::spin_loop();
            false
        } else if idle < YIELD || !may_park {
            thread::yield_now();
            false
        } else {
            true
        }
    }
}

/// Worker `t`'s loop: wait for an epoch, run its part, count itself done.
fn work(s: &Shared, t: usize) {
    let mut seen = 0;
    loop {
        seen = wait_for_epoch(s, t, seen);
        if s.quit.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: published by the Acquire load of the new epoch; the caller
        // does not touch it until this worker is done.
        let (job, parts) = unsafe { *s.job.get() };
        if let Some(job) = job.filter(|_| t < parts) {
            // SAFETY: `run` keeps the closure alive until every worker is
            // done (see there).
            let f = unsafe { &*job };
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(t))) {
                let mut slot = s.panic.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(payload);
            }
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

/// Waits until the epoch differs from `seen` and returns it.
fn wait_for_epoch(s: &Shared, t: usize, seen: u64) -> u64 {
    let mut idle = Idle::new();
    loop {
        let epoch = s.epoch.load(Ordering::Acquire);
        if epoch != seen {
            return epoch;
        }
        if idle.pause(true) {
            let flag = &s.parked[t - 1];
            flag.store(true, Ordering::SeqCst);
            if s.epoch.load(Ordering::SeqCst) == seen {
                thread::park();
            }
            flag.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_part_runs_once_per_run() {
        for threads in 1..=4 {
            let mut team = Team::new(threads);
            for parts in 0..=threads {
                let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..50 {
                    team.run(parts, &|t| {
                        hits[t].fetch_add(1, Ordering::Relaxed);
                    });
                }
                let got: Vec<usize> = hits.iter().map(|h| h.load(Ordering::Relaxed)).collect();
                let want: Vec<usize> = (0..threads)
                    .map(|t| if t < parts { 50 } else { 0 })
                    .collect();
                assert_eq!(got, want, "{threads} threads, {parts} parts");
            }
        }
    }

    #[test]
    fn parts_run_on_distinct_threads_at_once() {
        // Both parts must be running at the same time: each waits for the
        // other (a pool that ran them one after the other would hang here,
        // so the wait is bounded and then fails).
        let mut team = Team::new(2);
        let arrived = AtomicUsize::new(0);
        let ids = Mutex::new(Vec::new());
        team.run(2, &|_| {
            arrived.fetch_add(1, Ordering::SeqCst);
            let start = Instant::now();
            while arrived.load(Ordering::SeqCst) < 2 {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "parts ran one at a time"
                );
                std::hint::spin_loop();
            }
            ids.lock().unwrap().push(thread::current().id());
        });
        let ids = ids.into_inner().unwrap();
        assert!(ids.len() == 2 && ids[0] != ids[1], "{ids:?}");
    }

    #[test]
    fn a_parked_worker_wakes_for_the_next_run() {
        let mut team = Team::new(2);
        let ran = AtomicUsize::new(0);
        for _ in 0..3 {
            // An idle worker spins, yields and then parks.
            let start = Instant::now();
            while !team.shared.parked[0].load(Ordering::SeqCst) {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the idle worker never parked"
                );
                thread::sleep(Duration::from_millis(1));
            }
            team.run(2, &|t| {
                if t == 1 {
                    ran.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        assert_eq!(ran.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_panic_in_a_worker_reaches_the_caller_and_the_team_survives() {
        let mut team = Team::new(2);
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            team.run(2, &|t| assert!(t != 1, "part one fails"));
        }));
        let msg = r.expect_err("the worker's panic is raised in the caller");
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"part one fails"));
        let ran = AtomicUsize::new(0);
        team.run(2, &|_| {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_barrier_separates_rounds() {
        // Round r: every part writes its slot, waits, then reads every
        // other part's slot of round r; a barrier that let a part through
        // early would show a stale value.
        for threads in 2..=4 {
            let mut team = Team::new(threads);
            let barrier = Barrier::new(threads);
            let slots: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            let stale = AtomicUsize::new(0);
            team.run(threads, &|t| {
                for round in 1..=200 {
                    slots[t].store(round, Ordering::Relaxed);
                    barrier.wait();
                    for s in &slots {
                        if s.load(Ordering::Relaxed) != round {
                            stale.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    barrier.wait();
                }
            });
            assert_eq!(stale.load(Ordering::Relaxed), 0, "{threads} threads");
        }
    }

    #[test]
    #[should_panic(expected = "3 parts for a team of 2 threads")]
    fn more_parts_than_threads_is_refused() {
        Team::new(2).run(3, &|_| {});
    }
}
