//! Process-wide allocator setting for programs that generate again and
//! again (servers, the evaluation commands, benchmarks).
//!
//! Every generation allocates and frees the same large buffers: prefill
//! activations of megabytes per layer, the KV caches, the vision tower's
//! hidden states. glibc's `malloc` hands such memory back to the kernel
//! when it is freed (chunks above its mmap threshold at once, the top of
//! the heap beyond its trim threshold), so the next request faults every
//! page in again and the kernel zeroes each one. On the 68.7M-parameter
//! benchmark model on a 2-core AMD EPYC that was about an eighth of a first
//! token's time (`BENCHMARKS.md`). [`retain_freed_memory`] keeps freed
//! memory in the process for reuse instead, at the price of a resident
//! size that stays at its peak.
//!
//! It changes `malloc` for the whole process, so the library never calls
//! it by itself: an application opts in once at start-up. The `generate`,
//! `eval` and `analyze` commands and the generation benchmark do.

/// The largest mmap threshold glibc accepts on 64-bit targets (half its
/// 64 MiB heap size): larger blocks are always mapped and unmapped.
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Keeps freed memory in the process: blocks up to [`MMAP_THRESHOLD`] come
/// from the heap instead of fresh mappings, and the heap is never trimmed.
/// Returns whether the setting took effect (`false` off Linux with glibc,
/// where the allocator is left as it is).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes malloc's tuning parameters; glibc
        // validates the values and may be called from any thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Minor page faults of this thread so far (other tests run in
    /// parallel threads of the same process).
    fn minor_faults() -> i64 {
        // SAFETY: `getrusage` fills the zeroed struct it is given.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
            usage.ru_minflt
        }
    }

    /// Allocates 16 MiB, writes every page, frees it.
    fn touch_16_mib() {
        let mut block = vec![1u8; 16 << 20];
        for i in (0..block.len()).step_by(4096) {
            block[i] = 2;
        }
        std::hint::black_box(&block);
    }

    #[test]
    fn a_freed_block_is_reused_without_faulting_its_pages_in_again() {
        assert!(retain_freed_memory());
        touch_16_mib();
        let before = minor_faults();
        touch_16_mib();
        let faults = minor_faults() - before;
        // 16 MiB is 4096 pages: without the setting each one faults again.
        assert!(faults < 1024, "{faults} page faults reusing a freed block");
    }
}
