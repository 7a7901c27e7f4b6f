//! Work split over libtorch's own OpenMP threads.
//!
//! libtorch runs its CPU operators on an OpenMP team (libgomp in the torch
//! wheel) whose workers spin for a while after each parallel region. A
//! thread of our own next to them competes for the same cores: splitting
//! the native kernel over scoped threads made a decoding step 1.3-2x slower
//! on a 2-core machine (`BENCHMARKS.md`). Handing the work to the same
//! team instead, through libgomp's `GOMP_parallel` entry point (what a
//! compiled `#pragma omp parallel` calls, as libtorch's `parallel_for`
//! does), runs it on the workers that are already spinning.
//!
//! The entry points are looked up at run time among the loaded libraries
//! (libtorch has loaded its OpenMP runtime by then); where there is none
//! (a libtorch built without OpenMP, or a platform without `dlsym`),
//! [`Team::get`] is `None` and callers use their own threads.

use std::ffi::c_void;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// `GOMP_parallel(fn, data, num_threads, flags)`.
type Parallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, u32, u32);
/// `omp_get_thread_num()` / `omp_get_num_threads()`.
type Query = unsafe extern "C" fn() -> i32;

/// The OpenMP runtime libtorch runs on.
pub(crate) struct Team {
    parallel: Parallel,
    thread_num: Query,
    num_threads: Query,
}

/// What one parallel region runs, shared by its threads.
struct Region<'a> {
    work: &'a (dyn Fn(usize, usize) + Sync),
    team: &'a Team,
    panicked: AtomicBool,
}

/// Every thread of the region enters here with the `Region`.
extern "C" fn enter(data: *mut c_void) {
    // SAFETY: `data` is the `Region` that `Team::run` passed, alive until
    // `GOMP_parallel` returns, after every thread has left this function.
    let region = unsafe { &*(data as *const Region<'_>) };
    // SAFETY: the team's queries take no arguments and are called inside
    // the parallel region, as OpenMP requires.
    let (t, n) = unsafe { ((region.team.thread_num)(), (region.team.num_threads)()) };
    let n = usize::try_from(n).unwrap_or(1).max(1);
    let t = usize::try_from(t).unwrap_or(0).min(n - 1);
    // A panic must not unwind into C; it is reported to the caller.
    let run = std::panic::AssertUnwindSafe(|| (region.work)(t, n));
    if std::panic::catch_unwind(run).is_err() {
        region.panicked.store(true, Ordering::Relaxed);
    }
}

impl Team {
    /// libtorch's OpenMP runtime, if one is loaded.
    pub(crate) fn get() -> Option<&'static Team> {
        static TEAM: OnceLock<Option<Team>> = OnceLock::new();
        TEAM.get_or_init(lookup).as_ref()
    }

    /// Runs `work(thread, threads)` on every thread of a team of (at most)
    /// `threads` threads, the calling thread among them, and returns once
    /// all have finished; `false` when one of them panicked. Inside another
    /// parallel region the team is the calling thread alone.
    pub(crate) fn run(&self, threads: usize, work: &(dyn Fn(usize, usize) + Sync)) -> bool {
        let region = Region {
            work,
            team: self,
            panicked: AtomicBool::new(false),
        };
        let threads = u32::try_from(threads).unwrap_or(u32::MAX).max(1);
        // SAFETY: `parallel` is libgomp's `GOMP_parallel`, which calls
        // `enter(data)` on each thread of the team and returns after all
        // have returned, so `region` outlives every use of the pointer.
        unsafe {
            (self.parallel)(
                enter,
                &region as *const Region<'_> as *mut c_void,
                threads,
                0,
            )
        };
        !region.panicked.load(Ordering::Relaxed)
    }
}

#[cfg(all(unix, not(target_os = "macos")))]
fn lookup() -> Option<Team> {
    let symbol = |name: &std::ffi::CStr| {
        // SAFETY: `dlsym` with `RTLD_DEFAULT` searches the loaded objects
        // for a NUL-terminated name; it has no other effect.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    let parallel = symbol(c"GOMP_parallel")?;
    let thread_num = symbol(c"omp_get_thread_num")?;
    let num_threads = symbol(c"omp_get_num_threads")?;
    // SAFETY: these are the OpenMP runtime's exported functions with the
    // C signatures of libgomp's ABI (`GOMP_parallel` since GCC 4.9, also
    // exported by LLVM's libomp).
    unsafe {
        Some(Team {
            parallel: std::mem::transmute::<*mut c_void, Parallel>(parallel),
            thread_num: std::mem::transmute::<*mut c_void, Query>(thread_num),
            num_threads: std::mem::transmute::<*mut c_void, Query>(num_threads),
        })
    }
}

#[cfg(not(all(unix, not(target_os = "macos"))))]
fn lookup() -> Option<Team> {
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::Team;

    #[test]
    fn libtorchs_team_runs_every_thread_once_and_reports_a_panic() {
        // libtorch (linked into this test) loads its OpenMP runtime.
        let _ = tch::get_num_threads();
        let Some(team) = Team::get() else {
            return; // A libtorch without OpenMP: callers use their own threads.
        };
        let seen = Mutex::new(Vec::new());
        assert!(team.run(2, &|t, n| seen.lock().unwrap().push((t, n))));
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        let n = seen[0].1;
        assert!((1..=2).contains(&n), "{seen:?}");
        assert_eq!(seen, (0..n).map(|t| (t, n)).collect::<Vec<_>>());
        assert!(!team.run(2, &|t, _| assert_ne!(t, 0, "thread 0 fails")));
    }
}
