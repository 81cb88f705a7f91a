//! Resident memory of this process, for the benchmarks' memory report.

/// The process's resident memory, split the way the kernel counts it:
/// anonymous pages (heap, stacks: what training allocates) and file-backed
/// pages (the memory-mapped dataset, the binary itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidentMemory {
    pub anon: u64,
    pub file: u64,
    /// High-water mark of the whole resident set.
    pub peak: u64,
    /// The part of `anon` in transparent huge pages (see `crate::buf`);
    /// `None` where the kernel does not say.
    pub anon_huge: Option<u64>,
}

impl ResidentMemory {
    /// From `/proc/self/status` and `/proc/self/smaps_rollup` (Linux);
    /// `None` elsewhere.
    pub fn read() -> Option<ResidentMemory> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
        let field_of = |text: &str, name: &str| -> Option<u64> {
            let line = text.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kib * 1024)
        };
        let field = |name: &str| field_of(&status, name);
        Some(ResidentMemory {
            anon: field("RssAnon:")?,
            file: field("RssFile:")?,
            peak: field("VmHWM:")?,
            anon_huge: field_of(&rollup, "AnonHugePages:"),
        })
    }
}
