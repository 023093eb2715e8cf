//! The process's own resources: what it has used so far, peak resident memory (from `/proc`)
//! and CPU time (from `getrusage(2)`), printed by the benchmark programs; and how it asks the C
//! allocator to keep its memory (`tune_allocator`). The measurements must not be used to make
//! decisions in a run.

/// Asks glibc's allocator to serve every block of 512 KiB or more with its own mapping, given
/// back to the system when freed. By default glibc raises that threshold each time such a block
/// is freed, and later pages of an API answer (a megabyte or two each) then come from the heap
/// and stay in the resident set after they are freed: a full read of every destination peaked
/// 20 MB higher without this. Those pages now go to buffers the Google client keeps for the
/// next page, so the threshold only has to stay above hyper's read buffers (up to 400 KiB per
/// connection): at 128 KiB each of them was a fresh mapping, faulted in page by page, which
/// cost a rerun (W2) a fifth of its CPU time. It also keeps one arena for all threads:
/// destinations run on both worker threads and their state writes on the blocking pool, and an
/// arena per thread, each keeping what was freed in it, put W3 at 5,000 × 100 at 53–57 MB
/// instead of 48 MB, with no difference in CPU time that the benchmark could tell from its
/// noise. Called once at start-up by `main` (and by the benchmarks, which run the library
/// without `main`). Does nothing with another C library.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Peak resident set size of this process so far, in KiB: `VmHWM` of `/proc/self/status`.
/// (`ru_maxrss` is not used: Linux keeps it across `execve`, so a program started by a big
/// parent would report the parent's peak.)
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User plus system CPU time this process has used so far, in seconds.
pub fn cpu_seconds() -> f64 {
    usage()
        .map(|u| {
            let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
            t(u.ru_utime) + t(u.ru_stime)
        })
        .unwrap_or(0.0)
}

fn usage() -> Option<libc::rusage> {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given and nothing else;
    // the struct is zero-initialised, so it is valid even if the call fails.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) };
    // SAFETY: see above; zeroed is a valid rusage.
    (rc == 0).then(|| unsafe { u.assume_init() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn readings_grow_with_use() {
        let before = super::cpu_seconds();
        let v: Vec<u8> = vec![1; 32 << 20];
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x
                .wrapping_mul(31)
                .wrapping_add(i ^ u64::from(v[(i as usize) % v.len()]));
        }
        assert!(x != 1);
        assert!(super::peak_rss_kb() >= 32 << 10, "{}", super::peak_rss_kb());
        assert!(super::cpu_seconds() > before);
    }
}
