//! The fork-join the CPU layers run their tasks on: the calling thread and helper threads take
//! the tasks of one loop off a shared counter, and between loops the helpers spin for a short
//! while before they sleep.
//!
//! Why not rayon's parallel iterators: a forward pass is a few hundred short loops (185
//! convolutions for gelan-s, most of 20-300 µs at 320x320). Through rayon each one cost 20-40 µs
//! more: the calling thread, outside rayon's pool, queued the loop and slept on a latch until
//! woken, and rayon's workers fall asleep a few microseconds after they run out of work and are
//! woken through a futex (in a virtual machine, an interrupt to a halted CPU). At 32x32, where the
//! arithmetic takes 0.5 ms, a pass took 8 ms against ONNX Runtime's 2.6. Here the caller works
//! too, so a loop never waits for a helper to start, only for tasks that a helper has taken.
//!
//! One loop runs at a time: a caller that finds the helpers busy with another thread's loop
//! (two detectors, or tests in parallel) runs its own loop alone.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it sleeps. Longer than the gaps between the layers of a
/// forward pass (upsampling, concatenation, the head's decoding), short enough that the helper
/// is asleep between the frames of a video.
const SPIN: Duration = Duration::from_micros(500);

/// Spin iterations between yields of the core (so that a runnable thread of the pipeline,
/// decoding or encoding, is not kept off it) and checks of the clock.
const SPINS_PER_CHECK: u32 = 256;

/// Runs `run` on every item of `items`, each exactly once, on the calling thread and the
/// helpers; returns when all have returned. A panic in `run` on the calling thread propagates
/// (after the helpers have let go of the loop); on a helper it is printed and that item is
/// left unfinished, which callers detect ([`cpu_gemm::fill`] checks that every row was
/// written).
///
/// [`cpu_gemm::fill`]: super::cpu_gemm::fill
pub(crate) fn for_each<T: Send>(items: Vec<T>, run: impl Fn(T) + Sync) {
    let pool = pool();
    let n = items.len();
    let entry = if n < 2 || pool.helpers == 0 {
        None
    } else {
        match pool.entry.try_lock() {
            Ok(entry) => Some(entry),
            // A loop that panicked on this lock's last holder left nothing behind (see `Retract`).
            Err(TryLockError::Poisoned(entry)) => Some(entry.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    };
    let Some(_entry) = entry else {
        items.into_iter().for_each(run);
        return;
    };
    // Each item is taken by whichever thread claims its index first.
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|item| Mutex::new(Some(item))).collect();
    let next = AtomicUsize::new(0);
    let job = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = slots.get(i) else { break };
            if let Some(item) = lock(slot).take() {
                run(item);
            }
        }
    };
    let job: &(dyn Fn() + Sync) = &job;
    // SAFETY: the job borrows this stack frame, and only lives on in `State::job` until
    // `Retract` (below, also on unwinding) takes it back out under the lock and then waits
    // until `running` is 0. A helper copies the reference only under that lock and counts
    // itself in `running` in the same critical section, and drops the copy before it counts
    // itself out. So no reference is used after this function returns.
    #[allow(unsafe_code)]
    let job: &'static (dyn Fn() + Sync) = unsafe { std::mem::transmute(job) };
    {
        let mut state = lock(&pool.state);
        state.job = Some(job);
        state.epoch = state.epoch.wrapping_add(1);
        pool.epoch.store(state.epoch, Ordering::Release);
        if state.sleeping > 0 {
            pool.wake.notify_all();
        }
    }
    let retract = Retract(pool);
    job();
    drop(retract);
}

/// `run(i, chunk)` for the `i`-th `chunk_len` values of `out` (the last may be shorter), with
/// runs of neighbouring chunks as the items of one [`for_each`] loop.
pub(crate) fn for_each_chunk_mut<T: Send>(out: &mut [T], chunk_len: usize, run: impl Fn(usize, &mut [T]) + Sync) {
    if chunk_len == 0 {
        return;
    }
    // A few items per thread, so that one slow item (a thread preempted) delays little.
    let per_item = out.len().div_ceil(chunk_len).div_ceil(4 * threads()).max(1);
    for_each(out.chunks_mut(per_item * chunk_len).enumerate().collect(), |(item, chunks)| {
        for (j, chunk) in chunks.chunks_mut(chunk_len).enumerate() {
            run(item * per_item + j, chunk);
        }
    });
}

/// The number of threads a loop runs on (the helpers and the caller): Candle's thread count,
/// which `RAYON_NUM_THREADS` sets (as it does rayon's).
pub(crate) fn threads() -> usize {
    pool().helpers + 1
}

struct Pool {
    helpers: usize,
    /// A copy of `State::epoch`, which helpers spin on without the lock.
    epoch: AtomicUsize,
    state: Mutex<State>,
    wake: Condvar,
    /// Helpers inside the current job.
    running: AtomicUsize,
    /// Held by the thread whose loop the helpers serve.
    entry: Mutex<()>,
}

#[derive(Default)]
struct State {
    /// Bumped for every loop.
    epoch: usize,
    job: Option<&'static (dyn Fn() + Sync)>,
    sleeping: usize,
}

/// The process-wide pool; its helpers are started on first use and live as long as the
/// process (as rayon's do).
fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    static STARTED: OnceLock<()> = OnceLock::new();
    let pool = POOL.get_or_init(|| Pool {
        helpers: candle_core::utils::get_num_threads().saturating_sub(1),
        epoch: AtomicUsize::new(0),
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        running: AtomicUsize::new(0),
        entry: Mutex::new(()),
    });
    STARTED.get_or_init(|| {
        let mut started = 0;
        for i in 0..pool.helpers {
            let spawned = std::thread::Builder::new().name(format!("spotter-cpu-{i}")).spawn(move || helper(pool));
            started += usize::from(spawned.is_ok());
        }
        // A helper that could not be started is simply missing: loops still finish, since
        // the caller takes every task no helper takes.
        if started < pool.helpers {
            tracing::warn!("started {started} of {} CPU helper threads", pool.helpers);
        }
    });
    pool
}

fn helper(pool: &'static Pool) {
    let mut seen = 0;
    loop {
        wait_for_loop(pool, seen);
        let job = {
            let state = lock(&pool.state);
            seen = state.epoch;
            if state.job.is_some() {
                pool.running.fetch_add(1, Ordering::AcqRel);
            }
            state.job
        };
        if let Some(job) = job {
            // The panic is printed by the hook; the caller sees its item unfinished.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
            pool.running.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Returns once the epoch differs from `seen`: spinning for [`SPIN`], then asleep.
fn wait_for_loop(pool: &Pool, seen: usize) {
    let start = Instant::now();
    let mut spins = 0u32;
    while pool.epoch.load(Ordering::Acquire) == seen {
        if spin_step(&mut spins) && start.elapsed() > SPIN {
            let mut state = lock(&pool.state);
            state.sleeping += 1;
            while state.epoch == seen {
                state = pool.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            state.sleeping -= 1;
            return;
        }
    }
}

/// One step of a spin-wait: a pause, and every [`SPINS_PER_CHECK`]th step a yield of the core,
/// after which it returns true.
fn spin_step(spins: &mut u32) -> bool {
    std::hint::spin_loop();
    *spins = spins.wrapping_add(1);
    let check = spins.is_multiple_of(SPINS_PER_CHECK);
    if check {
        std::thread::yield_now();
    }
    check
}

/// Takes the caller's job back from the helpers and waits for those running it.
struct Retract(&'static Pool);

impl Drop for Retract {
    fn drop(&mut self) {
        lock(&self.0.state).job = None;
        let mut spins = 0u32;
        while self.0.running.load(Ordering::Acquire) > 0 {
            spin_step(&mut spins);
        }
    }
}

/// A lock that ignores poisoning: nothing here leaves the data inconsistent when it panics.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_exactly_once() {
        for n in [0, 1, 2, 3, 17, 1000] {
            let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for_each((0..n).collect(), |i: usize| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{n}");
        }
    }

    /// Loops from several threads at once (one gets the helpers, the others run alone), and
    /// loops after the helpers have gone to sleep.
    #[test]
    fn concurrent_and_sleeping_callers_finish() {
        std::thread::scope(|scope| {
            for t in 0..4 {
                scope.spawn(move || {
                    for round in 0..50 {
                        let sum = AtomicUsize::new(0);
                        for_each((0..64).collect(), |i: usize| {
                            sum.fetch_add(i * t, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), 2016 * t);
                        if round % 10 == 0 {
                            std::thread::sleep(SPIN * 3);
                        }
                    }
                });
            }
        });
    }

    /// After a panic in an item (on the caller, where it propagates, or on a helper, where it
    /// is caught), later loops still run on more than one thread.
    #[test]
    fn helpers_take_part_after_a_panic() {
        if threads() < 2 {
            return;
        }
        let panicked = std::panic::catch_unwind(|| {
            for_each((0..64).collect(), |i: usize| assert_ne!(i, 5, "item 5 panics on purpose"));
        });
        let _ = panicked;
        // Other tests' loops may hold the helpers for a while: try until both threads show up.
        let ids = Mutex::new(std::collections::HashSet::new());
        let start = Instant::now();
        while lock(&ids).len() < 2 && start.elapsed() < Duration::from_secs(20) {
            for_each((0..16).collect(), |_: usize| {
                lock(&ids).insert(std::thread::current().id());
                let busy = Instant::now();
                while busy.elapsed() < Duration::from_micros(50) {
                    std::hint::spin_loop();
                }
            });
        }
        assert!(lock(&ids).len() >= 2, "only the calling thread ran items");
    }

    /// Writes through `&mut` items reach the caller's buffer, and chunks are numbered in order.
    #[test]
    fn chunks_of_the_callers_buffer_are_filled_in_place() {
        for (len, chunk) in [(1000, 7), (6, 7), (0, 3), (64, 1), (5, 0)] {
            let mut out = vec![u32::MAX; len];
            for_each_chunk_mut(&mut out, chunk, |i, values| values.fill(i as u32));
            let expected: Vec<u32> = (0..len).map(|j| j.checked_div(chunk).map_or(u32::MAX, |i| i as u32)).collect();
            assert_eq!(out, expected, "{len} in chunks of {chunk}");
        }
    }
}
