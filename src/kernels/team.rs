//! The threads the kernels run on: the thread that calls a kernel and [`threads`]` - 1`
//! helpers, which share out a call's tasks through atomic counters.
//!
//! A forward makes about 150 parallel calls at one token (five per layer and the LM head),
//! each 5 to 40 us, with serial steps of a few microseconds between them. rayon handed each
//! call to its other worker in 1.5 to 2.5 us more than the work itself (a job pushed onto a
//! deque, the idle worker finding it between `sched_yield`s, then the join waiting on the
//! thief the same way); here a call is a few atomic stores that a spinning helper sees within
//! a cache line's transfer, and the end is one counter (BENCHMARKS.md has the figures).
//!
//! Each thread owns a contiguous share of a call's tasks (for a matmul, a run of weight rows
//! that it streams in order) and takes them one at a time from its own counter; a thread
//! that has finished its share takes what is left of the others' the same way. Handing out
//! shrinking runs from one shared counter instead (guided scheduling) was 2 to 5% slower at
//! 2 to 8 tokens: each run restarts a stream, and the counter's line moves on every claim.
//!
//! So that idle helpers do not fight for a core (the issue with spinning pools: a worker that
//! spins while the thread it waits for has lost its core stalls both), an idle thread spins
//! only for `SPIN`, then yields its core between checks, and after `YIELD` sleeps until
//! the next call. A thread that lost its core holds back at most the task it is running: the
//! others take the rest of its share.
//!
//! One call runs at a time. A call made while another runs (from a second thread, or from
//! inside a task) runs its tasks on its own thread, in order: slower, never blocked.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a waiting thread spins before it starts yielding its core: longer than most of the
/// serial steps between a forward's calls (1 to 5 us), short enough that a spinning thread
/// which shares a core with the one it waits for gives the core back soon.
const SPIN: Duration = Duration::from_micros(10);
/// How long an idle thread yields before it sleeps: longer than the gap between two forwards
/// of one generation.
const YIELD: Duration = Duration::from_millis(2);

/// A call word: epoch (24 bits), task count (20 bits), next unclaimed task (20 bits), one
/// atomic so that a claim sees the count of the call it claims from.
const FIELD: u32 = 20;
const FIELD_MASK: u64 = (1 << FIELD) - 1;
/// Calls with more tasks than this run on the calling thread (no kernel comes near it).
const MAX_TASKS: usize = FIELD_MASK as usize / 2;

/// Threads the kernels use, the calling one included: `FIXPOINT_THREADS`, else one per core.
pub fn threads() -> usize {
    team().threads
}

/// Runs `f(i)` for every `i` in `0..tasks`, each exactly once, over the kernel threads, and
/// returns when all have run. If a task panics, so does this call, once the tasks that other
/// threads took have finished.
pub fn for_each(tasks: usize, f: impl Fn(usize) + Sync) {
    team().for_each(tasks, f)
}

/// `f()` on every kernel thread at once (each runs it once, all having started before any
/// returns): a probe of the cores a forward uses. On the calling thread alone if a call is
/// running.
pub fn on_every_thread<R: Send>(f: impl Fn() -> R + Sync) -> Vec<R> {
    team().on_every_thread(f)
}

impl Team {
    fn for_each(&self, tasks: usize, f: impl Fn(usize) + Sync) {
        if tasks <= 1 || self.threads == 1 || ALONE.get() || tasks > MAX_TASKS || !self.enter() {
            (0..tasks).for_each(f);
            return;
        }
        let panicked = self.call(tasks, &f);
        self.leave();
        if let Some(p) = panicked {
            resume_unwind(p);
        }
    }

    fn on_every_thread<R: Send>(&self, f: impl Fn() -> R + Sync) -> Vec<R> {
        if self.threads == 1 || ALONE.get() || !self.enter() {
            return vec![f()];
        }
        let (started, results) = (AtomicUsize::new(0), Mutex::new(Vec::new()));
        let panicked = self.call(self.threads, &|_| {
            // A thread waits here until every thread holds a task, so none takes two.
            started.fetch_add(1, Ordering::AcqRel);
            while started.load(Ordering::Acquire) < self.threads {
                std::thread::yield_now();
            }
            let r = f();
            results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
        });
        self.leave();
        if let Some(p) = panicked {
            resume_unwind(p);
        }
        results.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs `f` with every kernel call in it on the calling thread only: a kernel's own pace,
/// without hand-offs (benchmarks).
pub fn alone<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ALONE.set(self.0);
        }
    }
    let _restore = Restore(ALONE.replace(true));
    f()
}

/// A slice cut into chunks of `size` values (the last may be shorter) that tasks take by
/// index: [`for_each`] over `0..len()` gives each chunk to one task.
pub struct Chunks<'a, T> {
    ptr: *mut T,
    len: usize,
    size: usize,
    _slice: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: chunks are disjoint, and each goes to one thread at a time (see `get`).
unsafe impl<T: Send> Send for Chunks<'_, T> {}
unsafe impl<T: Send> Sync for Chunks<'_, T> {}

impl<'a, T> Chunks<'a, T> {
    pub fn new(slice: &'a mut [T], size: usize) -> Self {
        assert!(size > 0, "chunks of no values");
        Self {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            size,
            _slice: std::marker::PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len.div_ceil(self.size)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Chunk `i`.
    ///
    /// # Safety
    /// No other reference to chunk `i` may be alive: take each index once, as the task for
    /// that index of a [`for_each`] call does.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get(&self, i: usize) -> &'a mut [T] {
        let start = i * self.size;
        assert!(start < self.len, "chunk {i} of {}", self.len());
        // SAFETY: in bounds, and not aliased (the caller's promise).
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add(start), self.size.min(self.len - start))
        }
    }
}

thread_local! {
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

/// A call's tasks as the helpers see them: a pointer to the caller's `&dyn Fn`, valid while
/// the call has unfinished tasks.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// A value on its own cache line, so that a counter one thread writes does not move its
/// neighbours' lines between cores.
#[repr(align(128))]
struct Line<T>(T);

struct Team {
    threads: usize,
    /// The current call's epoch and task count (see [`FIELD`]): what idle helpers watch.
    word: Line<AtomicU64>,
    /// Per thread, the current call's word with the next task of that thread's share.
    shares: Box<[Line<AtomicU64>]>,
    /// Tasks of the current call finished (those that panicked included).
    done: Line<AtomicUsize>,
    job: AtomicPtr<Job<'static>>,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    busy: AtomicBool,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

fn team() -> &'static Team {
    static TEAM: OnceLock<&'static Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let threads = std::env::var("FIXPOINT_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Team::start(threads)
    })
}

fn epoch(word: u64) -> u64 {
    word >> (2 * FIELD)
}

fn tasks_of(word: u64) -> usize {
    ((word >> FIELD) & FIELD_MASK) as usize
}

/// Thread `c`'s share of `tasks` tasks: contiguous, so that each thread streams its own run
/// of weight rows.
fn share(c: usize, threads: usize, tasks: usize) -> std::ops::Range<usize> {
    c * tasks / threads..(c + 1) * tasks / threads
}

impl Team {
    /// A team of `threads` (the caller and its helpers), for the life of the process.
    fn start(threads: usize) -> &'static Team {
        let team: &'static Team = Box::leak(Box::new(Team {
            threads,
            word: Line(AtomicU64::new(0)),
            shares: (0..threads).map(|_| Line(AtomicU64::new(0))).collect(),
            done: Line(AtomicUsize::new(0)),
            job: AtomicPtr::new(std::ptr::null_mut()),
            panic: Mutex::new(None),
            busy: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for i in 1..threads {
            std::thread::Builder::new()
                .name(format!("fixpoint-kernel-{i}"))
                .spawn(move || team.help(i))
                .expect("starting a kernel thread");
        }
        team
    }

    fn enter(&self) -> bool {
        !self.busy.swap(true, Ordering::Acquire)
    }

    fn leave(&self) {
        self.busy.store(false, Ordering::Release);
    }

    /// Publishes a call, takes part in it, and waits for all its tasks. The caller holds
    /// `busy`. Returns the first panic of any task.
    fn call(&self, tasks: usize, f: Job) -> Option<Box<dyn std::any::Any + Send>> {
        let job: *const Job = &f;
        self.job.store(job as *mut Job<'static>, Ordering::Relaxed);
        self.done.0.store(0, Ordering::Relaxed);
        let next_epoch = (epoch(self.word.0.load(Ordering::Relaxed)) % ((1 << 24) - 1)) + 1;
        let word = next_epoch << (2 * FIELD) | (tasks as u64) << FIELD;
        for (c, counter) in self.shares.iter().enumerate() {
            let start = share(c, self.threads, tasks).start as u64;
            counter.0.store(word | start, Ordering::Release);
        }
        // SeqCst against `sleepers`: either a helper about to sleep sees this call, or this
        // sees the helper and wakes it (see `idle`).
        self.word.0.store(word, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        self.work(0);
        let mut wait = Backoff::new();
        while self.done.0.load(Ordering::Acquire) < tasks {
            wait.snooze();
        }
        self.panic.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Runs tasks of the current call until none is left: first those of thread `me`'s own
    /// share, in order, then what is left of the others'.
    fn work(&self, me: usize) {
        let mut ran = 0;
        for c in (me..self.threads).chain(0..me) {
            let counter = &self.shares[c].0;
            let left =
                |word: u64| (word & FIELD_MASK) < share(c, self.threads, tasks_of(word)).end as u64;
            loop {
                // Another thread's share is read before it is claimed from, so that finding
                // it empty does not take its cache line away from its owner.
                if c != me && !left(counter.load(Ordering::Relaxed)) {
                    break;
                }
                let word = counter.fetch_add(1, Ordering::AcqRel);
                if !left(word) {
                    break;
                }
                let task = (word & FIELD_MASK) as usize;
                // SAFETY: the task is unfinished, so the caller is still in `call`, where the
                // job it points to lives.
                let f = unsafe { &**self.job.load(Ordering::Relaxed) };
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(task))) {
                    self.panic
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(p);
                }
                ran += 1;
            }
        }
        if ran > 0 {
            self.done.0.fetch_add(ran, Ordering::Release);
        }
    }

    /// A helper's life: wait for a call, take part, repeat.
    fn help(&self, me: usize) {
        // Epochs start at 1, so a helper that starts after its first call was published
        // still joins it (a broadcast needs every thread).
        let mut seen = 0;
        loop {
            seen = self.idle(seen);
            self.work(me);
        }
    }

    /// Waits until a call newer than epoch `seen` is published; returns its epoch.
    fn idle(&self, seen: u64) -> u64 {
        let mut wait = Backoff::new();
        loop {
            let now = epoch(self.word.0.load(Ordering::Acquire));
            if now != seen {
                return now;
            }
            if !wait.yielding() || wait.start.elapsed() < YIELD {
                wait.snooze();
                continue;
            }
            let mut guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            while epoch(self.word.0.load(Ordering::SeqCst)) == seen {
                guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            return epoch(self.word.0.load(Ordering::Acquire));
        }
    }
}

/// Waiting on another thread: spin-loop hints for the first [`SPIN`], then yields of the core.
struct Backoff {
    start: Instant,
    spins: u32,
}

impl Backoff {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            spins: 0,
        }
    }

    fn yielding(&self) -> bool {
        self.spins == u32::MAX
    }

    fn snooze(&mut self) {
        if self.yielding() {
            std::thread::yield_now();
            return;
        }
        self.spins += 1;
        // The clock is read every 64 spins.
        if self.spins.is_multiple_of(64) && self.start.elapsed() >= SPIN {
            self.spins = u32::MAX;
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for tasks in [0, 1, 2, 3, 7, 64, 1000, 5000] {
            let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for_each(tasks, |i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn calls_from_many_threads_and_from_tasks_all_finish() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        for_each(8, |_| {
                            // A call from inside a task runs on the task's thread.
                            for_each(3, |_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 8 * 3);
    }

    #[test]
    fn a_panicking_task_panics_the_call_after_the_others_finish() {
        let ran = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            for_each(100, |i| {
                ran.fetch_add(1, Ordering::Relaxed);
                assert_ne!(i, 37, "task 37");
            })
        }));
        assert!(result.is_err());
        // Every task ran, or on one thread (no helper) those up to it.
        assert!(ran.load(Ordering::Relaxed) >= 38);
        // The team still works.
        let after = AtomicUsize::new(0);
        for_each(10, |_| {
            after.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(after.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn every_thread_runs_a_broadcast_once() {
        let names = on_every_thread(|| std::thread::current().id());
        assert!(!names.is_empty() && names.len() <= threads());
        let mut unique = names.clone();
        unique.sort_by_key(|id| format!("{id:?}"));
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn a_broadcast_as_a_new_team_s_first_call_reaches_every_thread() {
        // Its helpers may start after the call is published: they must still join it (a
        // thread that missed it left the broadcast waiting forever).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..20 {
                tx.send(Team::start(3).on_every_thread(|| ()).len())
                    .unwrap();
            }
        });
        for _ in 0..20 {
            let threads = rx.recv_timeout(std::time::Duration::from_secs(30));
            assert_eq!(threads, Ok(3), "a broadcast on a new team did not finish");
        }
    }

    #[test]
    fn alone_keeps_calls_on_the_calling_thread() {
        let me = std::thread::current().id();
        alone(|| {
            for_each(64, |_| assert_eq!(std::thread::current().id(), me));
        });
    }
}
