//! This process's memory as /proc/self/status reports it, for the loader
//! benchmark's figures (Linux; elsewhere every field reads 0).

/// One reading of /proc/self/status.
pub struct ProcStatus(String);

impl ProcStatus {
    /// Read the file now (empty where it cannot be read).
    pub fn read() -> ProcStatus {
        ProcStatus(std::fs::read_to_string("/proc/self/status").unwrap_or_default())
    }

    /// The field `key` (e.g. "VmHWM", a line "VmHWM:   1234 kB") in kB; 0
    /// where absent.
    pub fn kb(&self, key: &str) -> u64 {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The field `key` in MB (10^6 bytes).
    pub fn mb(&self, key: &str) -> f64 {
        kb_to_mb(self.kb(key))
    }
}

/// The file's kB (1024 bytes, as the kernel counts them) to MB of 10^6
/// bytes, the unit of every other size the program reports.
pub fn kb_to_mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}
