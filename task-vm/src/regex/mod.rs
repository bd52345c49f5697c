//! Regular expressions for task interpreters: Walle's own `re` module, on fancy-regex.
//!
//! RustPython's `re` is a port of CPython's `_sre`, a backtracking engine that runs each search
//! to the end inside one native call; `re.match(r'(a+)+b', 'a' * 40)` keeps a core for ever and
//! the task's deadline cannot stop it. Task interpreters get this module instead: the same
//! Python interface, an engine whose every call is bounded.
//!
//! # What it promises
//!
//! * **The interface of CPython 3.11's `re`**: `compile`, `search`, `match`, `fullmatch`,
//!   `split`, `findall`, `finditer`, `sub`, `subn`, `escape`, `purge`, `error` (with `msg`,
//!   `pattern`, `pos`, `lineno`, `colno`), `RegexFlag` and its members, `Pattern` and `Match`
//!   with their methods and attributes, str and bytes patterns. `re.py` is the Python half
//!   (frozen into the binary as `re`), [`module`] the native half (`_walle_re`).
//! * **CPython's syntax and errors** ([`translate`]): a pattern CPython accepts is accepted with
//!   the same meaning, a pattern it refuses is refused with its message and position.
//! * **CPython's results**: the same matches, groups, `lastindex`, empty-match rules (3.7+:
//!   an empty match may follow a non-empty one; no two matches at one position), replacement
//!   templates ([`template`]), `split` with groups and `maxsplit`, `pos`/`endpos` (the string is
//!   searched "as if it were `endpos` characters long", look-behinds see before `pos`).
//!   Positions are code point indices ([`haystack`] converts them, in one pass per loop).
//! * **No search runs away** ([`engine`]): patterns without backtracking features (no
//!   backreference, lookaround, atomic group, possessive repeat or conditional) run in time
//!   linear in the string on the `regex` crate's automata, so `(a+)+b` is simply fast. Patterns
//!   with them run on fancy-regex's backtracking VM, and each native call gets a budget of
//!   backtracks scaled down with the text one backtrack may scan (2²⁰ at most; about
//!   2²⁴ / (16 + bytes scanned) in general: 2¹⁸ for a 40-character string, 128 for 100 kB). A
//!   search that exhausts it is retried one start position at a time, the task's deadline
//!   checked in between. Loops over matches (`findall`, `finditer`, `sub`, `subn`, `split`)
//!   check the deadline and the memory budget before each search. So a regex call returns
//!   within one budget's time (tens of milliseconds in a debug build) of the task's deadline
//!   and the worker is never abandoned for it.
//!
//! # Failure cases
//!
//! * A pattern CPython refuses: `re.error` (or its `ValueError`/`OverflowError`), with its
//!   message, `pattern` and `pos`. A pattern too large for the `regex` crate's automata
//!   (`(?:a{1000}){1000}`, `\w{500}`) or nested deeper than [`translate::MAX_NESTING`] groups:
//!   `re.error` saying so, `pos` None.
//! * One start position that needs more than its budget: `RuntimeError: regular expression
//!   backtracked more than N steps at one position of this input (a Walle task's limit, lower
//!   for longer strings); make the pattern less ambiguous or the input shorter`. Catastrophic
//!   patterns hit it at once. On long strings the budget of one position is small (128
//!   backtracks at 100 kB), so a pattern that backtracks a lot at each position, such as
//!   `(.*),\1` on a 100 kB line, fails where CPython would merely be slow.
//! * A lookahead that can read to the end of the string, inside a repeat (`(?:(?=.*x)a)+`),
//!   rescans the rest of the string within one attempt, which no budget of backtracks bounds:
//!   such a pattern is searched only within 2048 bytes of the start position, and raises a
//!   `RuntimeError` saying so beyond.
//! * More than 1,000,000 saved backtracking positions (fancy-regex's stack): `RuntimeError`.
//!   That stack, and every compiled automaton, is charged to the task's memory budget: past it
//!   the task fails with its memory limit, as for any allocation.
//! * The deadline or the memory budget during a loop over matches: the run fails with that
//!   limit's error, as everywhere else.
//!
//! # Measured
//!
//! Debug build (dependencies at opt-level 1), this 2-core host while another engineer's builds
//! ran; `cargo test -p walle-vm --lib regex::engine::measure -- --ignored --nocapture`:
//!
//! * `(a|a)*\1c` failing at 2¹⁸ backtracks: 5–10 ms a call (20–35 ns a backtrack);
//! * `(?:(?=.*a)a)+b` on 1,000 and 2,048 characters (rescanning): 1.5 and 5 ms, then refused at
//!   2,049;
//! * `(?=.*!)\w` over 10,000 / 30,000 characters (every position scans the rest; quadratic in
//!   CPython too): 0.1 / 0.9 s in total, 10,000 / 30,000 calls of one position each;
//! * `(\w+)\s+\1` over 100 kB of words, found at the end: 70–105 ms.
//!
//! In tasks (`tests/regex_hostile.rs`), catastrophic searches fail in 5–25 ms and slow loops over
//! 500,000 characters stop at the 2 s deadline with no worker abandoned.
//!
//! # Differences from CPython that remain
//!
//! * Unicode `\b`/`\B` use the `regex` crate's word characters (letters, marks, decimal digits,
//!   connector punctuation), while `\w` is CPython's (letters, all numerics, `_`): they differ
//!   on combining marks, `²`-like numerics and connector punctuation other than `_`. `\B` also
//!   matches in an empty string (CPython's never does).
//! * Case-insensitive matching uses Unicode simple case folding; CPython lowercases, which
//!   differs for a few characters (`İ` matches `i` in CPython only). With ASCII semantics
//!   (`re.ASCII`, bytes) a case-insensitive backreference still folds non-ASCII letters.
//! * A group repeated until it matches the empty string reports its last non-empty iteration
//!   (`(a|)*` on `aa`: group 1 is `a`; CPython reports the empty last iteration).
//! * Unicode tables are the `regex` crate's (a newer Unicode version than CPython 3.11's).
//! * `re.LOCALE` means ASCII semantics (the C locale).
//! * A lone surrogate in a str is seen by the engine as U+FFFD: a pattern with `\ufffd` (or a
//!   lone surrogate, which is translated to U+FFFD) matches either. Slices of the string keep
//!   the surrogates; parsed replacement templates do not.
//! * `match()` with `pos > endpos` never matches (CPython can match an empty pattern there).
//! * `lastindex` is worked out from the spans and the nesting of groups; it can differ from
//!   CPython's when a group in a lookahead or a repeat closed out of text order.
//! * `re.DEBUG` prints nothing; `re.template()`, `re.Scanner` and `Pattern.scanner()` are
//!   absent; patterns cannot be pickled (tasks cannot import `pickle` or `copy` anyway).
//! * Positions are converted by walking the string: `pattern.search(s, pos)` costs O(pos) on
//!   a non-ASCII str (RustPython's own str indexing is O(n) there too). Bytes haystacks are
//!   copied for each call.
//! * Compiled patterns are bigger: Unicode classes become UTF-8 automata, 10–200 kB for a
//!   typical pattern (measured), megabytes for a repeated class (`\w{50}`: ~4 MB), all charged
//!   to the task's memory budget. The module cache keeps the 64 most recent patterns (CPython:
//!   512), a pattern keeps at most 8 engines (shapes and budgets, see [`engine`]).
//! * Patterns CPython compiles but the `regex` crate finds too large, or nested very deep
//!   (see the failure cases).
//!
//! # Layout
//!
//! [`translate`] (Python syntax → tree → fancy-regex syntax) and [`template`] are pure;
//! [`engine`] compiles and searches with the bounds above; [`haystack`] prepares the string
//! and converts positions; [`module`] is the only part that knows Python objects.

mod engine;
mod haystack;
mod module;
mod template;
mod translate;

pub(crate) use module::{NAME, module_def};
