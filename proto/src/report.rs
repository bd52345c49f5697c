//! Free text a device reports (a failed install's or run's detail), cut to fit.
//!
//! A failure's most useful line is usually its last: a Python traceback ends with the exception
//! (`RecursionError: maximum recursion depth exceeded`) after hundreds of repeated frames. So a
//! long text loses its middle, never its end.

/// `text` if it has at most `max_chars` characters, else its start and its end around a marker
/// saying how much was cut; never more than `max_chars` characters plus the marker.
pub fn cut_middle(text: &str, max_chars: usize) -> String {
    let total = text.chars().count();
    if total <= max_chars {
        return text.to_owned();
    }
    // A third for the start (where the failure is named), the rest for the end.
    let head = max_chars / 3;
    let tail = max_chars - head;
    let cut = total - head - tail;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(total - tail).collect();
    format!("{start}\n[… {cut} characters cut …]\n{end}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole() {
        assert_eq!(cut_middle("ValueError: x", 100), "ValueError: x");
    }

    #[test]
    fn a_long_traceback_keeps_its_first_frame_and_its_exception_line() {
        let mut text = String::from("Traceback (most recent call last):\n");
        for i in 0..1000 {
            text.push_str(&format!("  File \"main.py\", line {i}, in f\n"));
        }
        text.push_str("RecursionError: maximum recursion depth exceeded");
        let cut = cut_middle(&text, 500);
        assert!(cut.starts_with("Traceback (most recent call last):\n  File"));
        assert!(cut.ends_with("RecursionError: maximum recursion depth exceeded"));
        assert!(cut.contains("characters cut"));
        assert!(cut.chars().count() < 560, "{}", cut.chars().count());
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let text = "é".repeat(50) + &"ü".repeat(50);
        let cut = cut_middle(&text, 30);
        assert!(cut.starts_with(&"é".repeat(10)) && cut.ends_with(&"ü".repeat(20)));
    }
}
