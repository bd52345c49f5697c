//! What one load or run of a task may use.

use std::time::Duration;

/// Per-task limits, applied to loading the entry script and to every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time one load or run may take.
    pub deadline: Duration,
    /// Bytes the task's interpreter may hold at once (its own ~2 MB included).
    pub memory_bytes: u64,
    /// Largest total JSON size of the records one run may return.
    pub max_output_bytes: u64,
    /// Largest text one run may print; more is cut off with a marker.
    pub max_log_bytes: u64,
}

impl Limits {
    /// Default deadline of a load or run.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
    /// Default memory budget of a task.
    pub const DEFAULT_MEMORY_BYTES: u64 = 64 * 1024 * 1024;
    /// Default cap on one run's output records.
    pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 * 1024;
    /// Default cap on one run's log.
    pub const DEFAULT_MAX_LOG_BYTES: u64 = 16 * 1024;
    /// Smallest memory budget: an interpreter with the whitelisted modules imported needs a few
    /// megabytes, and a budget it cannot even start in would only get its worker abandoned.
    pub const MIN_MEMORY_BYTES: u64 = 8 * 1024 * 1024;

    /// Why these limits cannot be used, if they cannot.
    pub fn problem(&self) -> Option<String> {
        if self.deadline.is_zero() {
            return Some("the deadline is zero".to_owned());
        }
        if self.memory_bytes < Self::MIN_MEMORY_BYTES {
            return Some(format!(
                "the memory budget of {} bytes is below the minimum of {}",
                self.memory_bytes,
                Self::MIN_MEMORY_BYTES
            ));
        }
        None
    }
}

impl Limits {
    /// The defaults, with what a manifest declares in their place: output bytes, deadline in
    /// milliseconds, memory bytes and log bytes.
    pub fn declared(
        max_output_bytes: u64,
        deadline_ms: Option<u64>,
        memory_bytes: Option<u64>,
        max_log_bytes: Option<u64>,
    ) -> Limits {
        let default = Limits::default();
        Limits {
            deadline: deadline_ms.map_or(default.deadline, Duration::from_millis),
            memory_bytes: memory_bytes.unwrap_or(default.memory_bytes),
            max_output_bytes,
            max_log_bytes: max_log_bytes.unwrap_or(default.max_log_bytes),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Self::DEFAULT_DEADLINE,
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            max_output_bytes: Self::DEFAULT_MAX_OUTPUT_BYTES,
            max_log_bytes: Self::DEFAULT_MAX_LOG_BYTES,
        }
    }
}

/// A limit that stops a script while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Deadline,
    Memory,
}
