//! Randomness for ids and jitter.

/// Random bytes from the OS; falls back to time-derived bytes if the OS has none to give, which
/// is acceptable for ids and jitter (never used for secrets on the device).
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if getrandom::fill(&mut out).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            .to_le_bytes();
        for (i, b) in out.iter_mut().enumerate() {
            *b = nanos[i % nanos.len()];
        }
    }
    out
}

/// A uniformly random duration in `[0, max_ms)` milliseconds.
pub fn jitter(max_ms: u64) -> std::time::Duration {
    if max_ms == 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::from_millis(u64::from_le_bytes(bytes::<8>()) % max_ms)
}
