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
//!   with them run on fancy-regex's backtracking VM under a budget of backtracks per native
//!   call (at most 2¹⁹), scaled down with the text one backtrack may scan. A search that
//!   exhausts it is retried one start position at a time with the task's deadline checked in
//!   between; a single position that needs more than its budget fails with a `RuntimeError`
//!   naming the limit ("regular expression backtracked more than N steps at one position of
//!   this input (a Walle task's limit, lower for longer strings); make the pattern less
//!   ambiguous or the input shorter"). A lookahead that can read to the
//!   end of the string, repeated, rescans the string within one attempt: such a pattern is
//!   searched only within 2048 bytes of the start position (`RuntimeError` beyond). Loops over
//!   matches (`findall`, `finditer`, `sub`, `subn`, `split`) check the deadline and the memory
//!   budget before each search. So a regex call returns within about one budget's time of the
//!   task's deadline, and the worker is never abandoned for it.
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
//! * `re.DEBUG` prints nothing; `re.TEMPLATE`, `re.template()` and `re.Scanner` are absent;
//!   patterns cannot be pickled or copied with `copy` (which tasks cannot import).
//! * Positions are converted by walking the string: `pattern.search(s, pos)` costs O(pos) on
//!   a non-ASCII str (RustPython's own str indexing is O(n) there too). Bytes haystacks are
//!   copied for each call.
//! * The backtracking VM keeps at most 1,000,000 saved positions (fancy-regex's stack, up to
//!   ~50 MB); past that a search fails with a `RuntimeError`, and that memory is charged to
//!   the task's budget like any other allocation.
//! * Compiled patterns are bigger: Unicode classes become UTF-8 automata, 10–200 kB for a
//!   typical pattern (measured), megabytes for a repeated class (`\w{50}`: ~4 MB), all charged
//!   to the task's memory budget. The module cache keeps the 64 most recent patterns (CPython:
//!   512), a pattern keeps at most 8 engines (shapes and budgets, see [`engine`]).
//! * Patterns nested more than [`translate::MAX_NESTING`] groups deep, and patterns the
//!   `regex` crate finds too large to compile (`(?:a{1000}){1000}`, `\w{500}`), raise
//!   `re.error`.
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
