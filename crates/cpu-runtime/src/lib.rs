//! Process-wide CPU settings that every libtorch program of the workspace makes first thing in
//! `main` ([`init`]): denormals flushed to zero, and freed tensor memory kept by the allocator
//! instead of returned to the kernel.
//!
//! Both are about speed only; neither changes a result that matters (see each function).

/// Both settings below; call first thing in `main`, before libtorch starts its threads.
pub fn init() {
    flush_denormals();
    keep_freed_memory();
}

/// Sets flush-to-zero and denormals-are-zero for the calling thread. Call first thing in `main`:
/// threads created afterwards (libtorch's intra-op pool) inherit the mode. Returns whether the
/// CPU supports it (x86-64 with SSE: always).
///
/// Why: RMSprop's running mean of squared gradients decays geometrically (x0.9 per step)
/// wherever a gradient is zero, which for ReLU features is most of the first dense layer; within
/// a few hundred steps those values become denormal, and x86 arithmetic on denormals is ~100x
/// slower. Measured on the demo: a head epoch grew from 1.4 s to 12 s by epoch 20. Flushing them
/// to zero (what `torch.set_flush_denormal(True)` does) changes no result that matters: such
/// values sit under `eps = 1e-7` in every update.
pub fn flush_denormals() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        const FTZ: u32 = 1 << 15;
        const DAZ: u32 = 1 << 6;
        // SAFETY: MXCSR only controls floating-point rounding and exception behaviour of this
        // thread; setting FTZ/DAZ cannot violate memory safety.
        #[allow(unsafe_code, deprecated)]
        unsafe {
            use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
            _mm_setcsr(_mm_getcsr() | FTZ | DAZ);
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Makes glibc's `malloc` (which libtorch's CPU allocator calls) serve large blocks from its heap
/// and keep freed ones there, rather than `mmap` each block and `munmap` it on free. Returns
/// whether the allocator took the settings (glibc only; elsewhere a no-op returning false).
///
/// Why: by default every block over 128 KiB (later up to 32 MiB, glibc's dynamic threshold) is a
/// fresh `mmap`, so each batch's activations (at 150x150, batch 20, 115 MB for one VGG16 block-1
/// output) arrive as untouched pages that the kernel faults in and zeroes one 4 KiB page at a
/// time, and are unmapped again when the tensor drops. Measured on the 2-core Xeon: the VGG16
/// conv base, batch 20 at 150x150, spent 17 s of 52 s in the kernel for 1,000 images; with the
/// thresholds raised, 0.5 s, and `extract-features` ran 19.2 -> 24.1 img/s (`time` of one run).
/// The cost: the process keeps its peak heap instead of returning it (peak RSS of extraction
/// measured 876 vs 952 MB at 150x150 and 659 vs 613 MB at 64x64, after vs before).
///
/// All threads share glibc's main arena (`M_ARENA_MAX` 1): a thread's own arena grows in heaps of
/// at most 64 MiB, so a larger block allocated off the main thread (by a stage's worker
/// threads) would still be a fresh `mmap`. These programs allocate from few threads, so
/// the shared lock costs nothing measurable.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocation thresholds; it takes the arena locks
        // itself and is safe to call at any time from any thread.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn denormals_become_zero() {
        std::thread::spawn(|| {
            assert!(super::flush_denormals());
            let tiny = std::hint::black_box(f32::MIN_POSITIVE);
            assert_eq!(
                tiny * std::hint::black_box(0.5f32),
                0.0,
                "a denormal result must flush to zero"
            );
        })
        .join()
        .unwrap();
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        assert!(tiny * std::hint::black_box(0.5f32) > 0.0, "other threads keep IEEE denormals");
    }
}
