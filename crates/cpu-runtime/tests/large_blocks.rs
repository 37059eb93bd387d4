//! `keep_freed_memory` in a process of its own (no test harness, so no thread has allocated before
//! the setting, as in the stage binaries): a large block allocated on a thread started afterwards
//! comes from the heap, not from a fresh `mmap`, and a freed one is not returned to the kernel.

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        assert!(cpu_runtime::keep_freed_memory(), "glibc must accept the settings");
        std::thread::spawn(|| {
            let block = vec![1u8; 96 << 20];
            let mmapped = counters().hblkhd;
            assert!(
                mmapped < block.len(),
                "a 96 MiB block was mmapped ({mmapped} bytes in mmapped blocks)"
            );
            drop(block);
            let kept = counters().fordblks;
            assert!(
                kept >= 96 << 20,
                "the freed 96 MiB block went back to the kernel ({kept} free bytes kept)"
            );
        })
        .join()
        .expect("the allocating thread");
        println!("large_blocks: ok (heap, not mmap; freed block kept)");
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    println!("large_blocks: skipped, the allocator is not glibc's");
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn counters() -> libc::mallinfo2 {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallinfo2()
    }
}
