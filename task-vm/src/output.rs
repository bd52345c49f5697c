//! The log of one load or run: what the script printed, capped.
//!
//! `sys.stdout` and `sys.stderr` of every task interpreter write here (see `sandbox`). One
//! capture is active per worker thread at a time, because one script runs there at a time. Text
//! past the cap is dropped and counted, and the log ends with a marker saying how much: logs are
//! diagnostics, so a chatty script keeps running (its deadline still bounds a print loop).

use std::cell::RefCell;

thread_local! {
    static LOG: RefCell<Option<Log>> = const { RefCell::new(None) };
}

struct Log {
    text: String,
    max: usize,
    dropped: u64,
}

/// Collects what the script prints until [`Capture::finish`].
pub(crate) struct Capture {
    previous: Option<Log>,
    finished: bool,
}

/// Starts collecting this thread's script output, keeping at most `max_bytes`.
pub(crate) fn capture(max_bytes: u64) -> Capture {
    let log = Log {
        text: String::new(),
        max: usize::try_from(max_bytes).unwrap_or(usize::MAX),
        dropped: 0,
    };
    Capture {
        previous: LOG.with(|l| l.replace(Some(log))),
        finished: false,
    }
}

impl Capture {
    /// Stops collecting and returns the log, with a truncation marker if text was dropped.
    pub(crate) fn finish(mut self) -> String {
        self.finished = true;
        let log = LOG.with(|l| l.replace(self.previous.take()));
        let Some(mut log) = log else {
            return String::new();
        };
        if log.dropped > 0 {
            log.text.push_str(&format!(
                "\n[walle: log truncated, {} more bytes dropped]\n",
                log.dropped
            ));
        }
        log.text
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if !self.finished {
            LOG.with(|l| l.replace(self.previous.take()));
        }
    }
}

/// Appends script output to the active log; without one (outside a run) it is discarded.
pub(crate) fn write(text: &str) {
    LOG.with(|l| {
        if let Some(log) = l.borrow_mut().as_mut() {
            let room = log.max.saturating_sub(log.text.len());
            let mut keep = text.len().min(room);
            while !text.is_char_boundary(keep) {
                keep -= 1;
            }
            log.text.push_str(&text[..keep]);
            log.dropped += (text.len() - keep) as u64;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_the_cap_and_marks_the_rest() {
        let log = capture(5);
        write("héllo world");
        write("!");
        let text = log.finish();
        // "héll" is 5 bytes of the 13.
        assert_eq!(text, "héll\n[walle: log truncated, 8 more bytes dropped]\n");
    }

    #[test]
    fn without_a_capture_output_is_discarded() {
        write("nobody listens");
        assert_eq!(capture(10).finish(), "");
    }
}
