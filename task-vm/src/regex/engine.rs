//! A compiled pattern and the searches CPython's `re` makes with one, bounded.
//!
//! [`Compiled`] holds a [`Translation`] and builds fancy-regex engines from it as they are
//! needed: one per shape (search or fullmatch), per rendering of `$` (the haystack ends with a
//! newline or not), for "a non-empty match here" (after an empty match, see [`Compiled::search`])
//! and per backtracking budget.
//!
//! # Bounds
//!
//! A pattern without backtracking features runs on fancy-regex's delegate, the `regex` crate's
//! engines: linear in the haystack, nothing to bound. A pattern with them runs on fancy-regex's
//! backtracking VM, which stops after a number of backtracks (`backtrack_limit`). That alone does
//! not bound time: between two backtracks the VM can scan the rest of the haystack (a lookaround
//! or an atomic group handed whole to the `regex` crate, a backreference compared, a suffix run
//! by a delegate), so `(?=.*x)\w` on 100,000 characters takes seconds with few backtracks. So:
//!
//! * each call gets a budget of backtracks that shrinks with the text one backtrack may scan
//!   (the rest of the haystack, or less if the pattern can only read so far: [`backtrack_limit`]);
//! * a search that exhausts its budget is retried one start position at a time, each position
//!   with its own budget and the caller's `check` (the task's deadline) in between, so a search
//!   that is merely slow (quadratic, as it is in CPython) is stopped by the deadline;
//! * a pattern that may rescan the rest of the string many times within one attempt (a
//!   lookahead reading to the end, inside a repeat: [`Translation::rescans`]) costs the square of
//!   the string's length in one call whatever the budget; it is searched only within
//!   [`RESCAN_TEXT`] bytes of the start position, and refused beyond.
//!
//! One call into fancy-regex therefore does at most about one budget of work (`measure` below
//! has the figures); a single start position that needs more than its budget fails with
//! [`EngineError::Backtracks`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fancy_regex::{Regex, RegexBuilder, RegexInput};

use super::haystack::Haystack;
use super::translate::{Dollar, Shape, Translation};

/// The most backtracks one call may make (a short haystack's budget): 20–40 ms of
/// catastrophic backtracking in a debug build (`measure` below).
pub(crate) const MAX_BACKTRACKS: usize = 1 << 20;
/// The fewest backtracks one call may make, however long the haystack.
const MIN_BACKTRACKS: usize = 1 << 2;
/// A backtrack costs about as much as scanning this many bytes (measured in a debug build:
/// 20–35 ns a backtrack, ~1.8 ns a byte scanned by a delegate).
const BACKTRACK_COST: usize = 16;
/// One call's budget, in bytes scanned: about 30 ms in a debug build.
const WORK: usize = 1 << 24;
/// The most bytes past the start position a pattern that rescans the string
/// ([`Translation::rescans`]) is searched in: one attempt may cost the square of it.
pub(crate) const RESCAN_TEXT: usize = 2048;
/// Engines kept per pattern; past that all but the first are dropped (each holds its own
/// automata, 10–200 kB for a typical pattern).
const ENGINES_KEPT: usize = 8;

/// The backtrack limit for one call that may scan `scan` bytes per backtrack: a power of two,
/// so that a few engines cover every length.
pub(crate) fn backtrack_limit(scan: usize) -> usize {
    let budget = WORK / BACKTRACK_COST.saturating_add(scan);
    let budget = budget.clamp(MIN_BACKTRACKS, MAX_BACKTRACKS);
    1 << budget.ilog2()
}

/// The group spans of a match, as byte offsets into the haystack; `None` for a group that did
/// not take part. Index 0 is the whole match.
pub(crate) type Spans = Vec<Option<(usize, usize)>>;

/// Where a search may match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anchoring {
    /// Anywhere from the start position on (`search`, and every iterating call).
    Search,
    /// At the start position (`match`).
    Start,
    /// At the start position, ending at the end (`fullmatch`).
    Full,
}

/// Why a search failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EngineError {
    #[error(
        "regular expression backtracked more than {limit} steps at one position of this input \
         (a Walle task's limit, lower for longer strings); make the pattern less ambiguous or \
         the input shorter"
    )]
    Backtracks { limit: usize },
    #[error(
        "regular expression needed more than 1000000 saved backtracking positions on this input \
         (a Walle task's limit); make the pattern less ambiguous"
    )]
    Stack,
    #[error(
        "regular expression repeats a lookahead that can read to the end of the string, which \
         costs time growing with the square of the string's length; a Walle task runs such a \
         pattern on at most {limit} bytes past the start position, and this string has {len}"
    )]
    Rescans { limit: usize, len: usize },
    #[error(
        "regular expression is too large for Walle's engine: its automaton would exceed {limit} \
         bytes (Unicode classes such as \\w are large; a repeated one, \\w{{200}}, is many times \
         larger)"
    )]
    TooLarge { limit: usize },
    #[error("regular expression is not supported by Walle's engine: {0}")]
    Unsupported(String),
}

/// A failed search: the engine's error, or the caller's `check` said stop.
#[derive(Debug)]
pub(crate) enum SearchError<E> {
    Engine(EngineError),
    Stopped(E),
}

impl<E> From<EngineError> for SearchError<E> {
    fn from(e: EngineError) -> Self {
        SearchError::Engine(e)
    }
}

/// Which engine a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct EngineKey {
    shape: Shape,
    dollar: Dollar,
    not_empty: bool,
    limit: usize,
}

/// The engine every pattern needs, built when it is compiled.
const FIRST_ENGINE: EngineKey = EngineKey {
    shape: Shape::Search,
    dollar: Dollar::End,
    not_empty: false,
    limit: MAX_BACKTRACKS,
};

/// A translated pattern and the engines built for it so far.
#[derive(Debug)]
pub(crate) struct Compiled {
    translation: Translation,
    engines: Mutex<HashMap<EngineKey, Arc<Regex>>>,
}

impl Compiled {
    /// Builds the engine every pattern needs, so that a pattern fancy-regex cannot take is
    /// refused when it is compiled.
    pub(crate) fn new(translation: Translation) -> Result<Compiled, EngineError> {
        let compiled = Compiled {
            translation,
            engines: Mutex::new(HashMap::new()),
        };
        compiled.engine(FIRST_ENGINE)?;
        Ok(compiled)
    }

    pub(crate) fn translation(&self) -> &Translation {
        &self.translation
    }

    /// The engine for `key`, built on first use. `None` for a "non-empty match" engine of a
    /// pattern that can only match the empty string.
    fn engine(&self, key: EngineKey) -> Result<Option<Arc<Regex>>, EngineError> {
        let key = EngineKey {
            dollar: if self.translation.has_dollar {
                key.dollar
            } else {
                Dollar::End
            },
            // The "non-empty" engine always runs on the VM.
            limit: if self.translation.backtracks || key.not_empty {
                key.limit
            } else {
                MAX_BACKTRACKS
            },
            ..key
        };
        let mut engines = self
            .engines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(engine) = engines.get(&key) {
            return Ok(Some(engine.clone()));
        }
        let pattern = self.translation.render(key.shape, key.dollar);
        let built = RegexBuilder::new(&pattern)
            .backtrack_limit(key.limit)
            .find_not_empty(key.not_empty)
            .build();
        let engine = match built {
            Ok(engine) => Arc::new(engine),
            Err(fancy_regex::Error::CompileError(e))
                if key.not_empty
                    && matches!(*e, fancy_regex::CompileError::PatternCanNeverMatch) =>
            {
                return Ok(None);
            }
            Err(fancy_regex::Error::CompileError(e)) => {
                return Err(match *e {
                    fancy_regex::CompileError::InnerError(inner) => match inner.size_limit() {
                        Some(limit) => EngineError::TooLarge { limit },
                        None => EngineError::Unsupported(inner.to_string()),
                    },
                    other => EngineError::Unsupported(other.to_string()),
                });
            }
            Err(e) => return Err(EngineError::Unsupported(e.to_string())),
        };
        if engine.captures_len() != self.translation.groups + 1 {
            return Err(EngineError::Unsupported(format!(
                "it counts {} groups where Python counts {}",
                engine.captures_len() - 1,
                self.translation.groups
            )));
        }
        if engines.len() >= ENGINES_KEPT {
            engines.retain(|kept, _| *kept == FIRST_ENGINE);
        }
        engines.insert(key, engine.clone());
        Ok(Some(engine))
    }

    /// The first match in `haystack` (already cut at `endpos`) at or after byte `from`.
    ///
    /// `must_advance` is CPython's rule after an empty match: the next match may not be empty
    /// at `from` (but may start there if it is not empty). `check` runs between the positions
    /// of a search retried position by position; its error stops the search.
    pub(crate) fn search<E>(
        &self,
        haystack: Haystack<'_>,
        from: usize,
        anchoring: Anchoring,
        must_advance: bool,
        check: &mut dyn FnMut() -> Result<(), E>,
    ) -> Result<Option<Spans>, SearchError<E>> {
        let text = haystack.text();
        if from > text.len() {
            return Ok(None);
        }
        let dollar = if haystack.ends_with_newline() {
            Dollar::BeforeFinalNewline
        } else {
            Dollar::End
        };
        let mut from = from;
        if must_advance {
            // The usual engine first: its match here is the answer unless it is empty (then only
            // the "non-empty" engine, always fancy-regex's VM, can say whether another is).
            let non_empty = match self.attempt(text, from, Shape::Search, dollar, false, true)? {
                Some(spans) if spans.first().copied().flatten().is_some_and(|(s, e)| s < e) => {
                    Some(spans)
                }
                Some(_) => self.attempt(text, from, Shape::Search, dollar, true, true)?,
                None => None,
            };
            if non_empty.is_some() || from == text.len() || anchoring != Anchoring::Search {
                return Ok(non_empty);
            }
            from = haystack.next_boundary(from);
        }
        match anchoring {
            Anchoring::Start => Ok(self.attempt(text, from, Shape::Search, dollar, false, true)?),
            Anchoring::Full => Ok(self.attempt(text, from, Shape::Full, dollar, false, true)?),
            Anchoring::Search => {
                match self.attempt(text, from, Shape::Search, dollar, false, false) {
                    Err(EngineError::Backtracks { .. }) if self.translation.backtracks => {}
                    other => return Ok(other?),
                }
                // Too much work for one call: one start position per call, the caller's check
                // between them.
                let mut at = from;
                loop {
                    check().map_err(SearchError::Stopped)?;
                    if let Some(spans) =
                        self.attempt(text, at, Shape::Search, dollar, false, true)?
                    {
                        return Ok(Some(spans));
                    }
                    if at >= text.len() {
                        return Ok(None);
                    }
                    at = haystack.next_boundary(at);
                }
            }
        }
    }

    /// One call into fancy-regex.
    fn attempt(
        &self,
        text: &str,
        from: usize,
        shape: Shape,
        dollar: Dollar,
        not_empty: bool,
        anchored: bool,
    ) -> Result<Option<Spans>, EngineError> {
        let remaining = text.len() - from;
        let scan = if self.translation.rescans {
            if remaining > RESCAN_TEXT {
                return Err(EngineError::Rescans {
                    limit: RESCAN_TEXT,
                    len: remaining,
                });
            }
            remaining * remaining
        } else {
            // An attempt that reads at most `reach` characters scans at most 4 bytes each.
            let reach = self.translation.reach.map_or(usize::MAX, |reach| {
                usize::try_from(reach)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(4)
            });
            remaining.min(reach)
        };
        let limit = backtrack_limit(scan);
        let key = EngineKey {
            shape,
            dollar,
            not_empty,
            limit,
        };
        let Some(engine) = self.engine(key)? else {
            return Ok(None);
        };
        let input = RegexInput::new(text).from_pos(from).anchored(anchored);
        match engine.captures_input(input) {
            Ok(None) => Ok(None),
            Ok(Some(captures)) => Ok(Some(
                (0..=self.translation.groups)
                    .map(|i| captures.get(i).map(|m| (m.start(), m.end())))
                    .collect(),
            )),
            Err(fancy_regex::Error::RuntimeError(
                fancy_regex::RuntimeError::BacktrackLimitExceeded,
            )) => Err(EngineError::Backtracks { limit }),
            Err(fancy_regex::Error::RuntimeError(fancy_regex::RuntimeError::StackOverflow)) => {
                Err(EngineError::Stack)
            }
            Err(e) => Err(EngineError::Unsupported(e.to_string())),
        }
    }

    /// The group that closed last in a match (CPython's `lastindex`), judged from the spans and
    /// the nesting of groups: the one ending last; of groups ending at the same place, an outer
    /// one closes after the groups inside it, and otherwise the later one closes last.
    pub(crate) fn last_index(&self, spans: &Spans) -> Option<usize> {
        let parents = &self.translation.parents;
        let encloses = |outer: usize, mut inner: usize| {
            while inner != 0 {
                inner = parents.get(inner).copied().unwrap_or(0);
                if inner == outer {
                    return true;
                }
            }
            false
        };
        let mut last: Option<(usize, usize)> = None;
        for (group, span) in spans.iter().enumerate().skip(1) {
            let Some((_, end)) = *span else { continue };
            last = match last {
                Some((best, best_end))
                    if best_end > end || (best_end == end && encloses(best, group)) =>
                {
                    Some((best, best_end))
                }
                _ => Some((group, end)),
            };
        }
        last.map(|(group, _)| group)
    }
}

/// Searches one after another as CPython's `findall`, `finditer`, `sub` and `split` do: each
/// starts where the previous match ended, and an empty match forbids another empty match at
/// the same place (CPython 3.7+).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Successive {
    at: usize,
    must_advance: bool,
    done: bool,
}

impl Successive {
    /// Matches from byte `from` on.
    pub(crate) fn new(from: usize) -> Successive {
        Successive {
            at: from,
            must_advance: false,
            done: false,
        }
    }

    /// The next match, if any.
    pub(crate) fn next<E>(
        &mut self,
        compiled: &Compiled,
        haystack: Haystack<'_>,
        check: &mut dyn FnMut() -> Result<(), E>,
    ) -> Result<Option<Spans>, SearchError<E>> {
        if self.done {
            return Ok(None);
        }
        let found = compiled.search(
            haystack,
            self.at,
            Anchoring::Search,
            self.must_advance,
            check,
        )?;
        match found
            .as_ref()
            .and_then(|spans| spans.first().copied().flatten())
        {
            Some((start, end)) => {
                self.must_advance = start == end;
                self.at = end;
            }
            None => self.done = true,
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regex::translate::translate;

    fn compile(pattern: &str) -> Compiled {
        let chars: Vec<char> = pattern.chars().collect();
        Compiled::new(translate(&chars, false, 0).unwrap()).unwrap()
    }

    fn no_check() -> Result<(), ()> {
        Ok(())
    }

    fn all(pattern: &str, text: &str) -> Vec<(usize, usize)> {
        let compiled = compile(pattern);
        let mut successive = Successive::new(0);
        let mut found = Vec::new();
        while let Some(spans) = successive
            .next(&compiled, Haystack::of(text), &mut no_check)
            .unwrap()
        {
            found.push(spans[0].unwrap());
        }
        found
    }

    #[test]
    fn limits_shrink_with_the_text_scanned() {
        assert_eq!(backtrack_limit(0), MAX_BACKTRACKS);
        assert!(backtrack_limit(1_000) < MAX_BACKTRACKS / 32);
        assert_eq!(backtrack_limit(usize::MAX), MIN_BACKTRACKS);
        for scan in [0, 10, 1_000, 100_000, 10_000_000] {
            let limit = backtrack_limit(scan);
            assert!(limit.is_power_of_two());
            assert!(limit * (BACKTRACK_COST + scan) <= WORK || limit == MIN_BACKTRACKS);
        }
    }

    #[test]
    fn empty_matches_follow_cpython() {
        // re.sub('x*', '-', 'abxd') == '-a-b--d-'
        assert_eq!(
            all("x*", "abxd"),
            vec![(0, 0), (1, 1), (2, 3), (3, 3), (4, 4)]
        );
        // re.findall('|a', 'a') == ['', 'a', '']
        assert_eq!(all("|a", "a"), vec![(0, 0), (0, 1), (1, 1)]);
        assert_eq!(all(r"\b", "ab cd"), vec![(0, 0), (2, 2), (3, 3), (5, 5)]);
    }

    #[test]
    fn dollar_before_a_final_newline() {
        assert_eq!(all("a$", "a\n"), vec![(0, 1)]);
        assert_eq!(all("a$", "a\n\n"), vec![]);
        assert_eq!(all("$", "a\n"), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn anchoring() {
        let compiled = compile("a|ab");
        let hay = Haystack::of("xab");
        let run = |from, anchoring| {
            compiled
                .search(hay, from, anchoring, false, &mut no_check)
                .unwrap()
                .map(|spans| spans[0].unwrap())
        };
        assert_eq!(run(0, Anchoring::Search), Some((1, 2)));
        assert_eq!(run(0, Anchoring::Start), None);
        assert_eq!(run(1, Anchoring::Start), Some((1, 2)));
        // fullmatch backtracks into the second alternative.
        assert_eq!(run(1, Anchoring::Full), Some((1, 3)));
    }

    #[test]
    fn last_index_follows_closing_order() {
        let compiled = compile("((a)b)(c)?");
        let spans: Spans = vec![Some((0, 2)), Some((0, 2)), Some((0, 1)), None];
        assert_eq!(compiled.last_index(&spans), Some(1));
        let compiled = compile("(a)(b*)");
        let spans: Spans = vec![Some((0, 1)), Some((0, 1)), Some((1, 1))];
        assert_eq!(compiled.last_index(&spans), Some(2));
        assert_eq!(compiled.last_index(&vec![Some((0, 0)), None, None]), None);
    }

    #[test]
    fn a_catastrophic_pattern_fails_quickly() {
        let compiled = compile(r"(a|a)*\1c");
        let text = "a".repeat(40) + "b";
        let started = std::time::Instant::now();
        let err = compiled
            .search(
                Haystack::of(&text),
                0,
                Anchoring::Search,
                false,
                &mut no_check,
            )
            .unwrap_err();
        assert!(
            matches!(err, SearchError::Engine(EngineError::Backtracks { .. })),
            "{err:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn a_long_scan_is_retried_position_by_position() {
        // Each position scans the rest of the text, so one call over all positions would blow
        // its budget; position by position it finds the match at the end.
        let compiled = compile(r"(?=[^!]*!)\w!");
        let text = "x".repeat(10_000) + "!";
        let mut checks = 0;
        let found = compiled
            .search(
                Haystack::of(&text),
                0,
                Anchoring::Search,
                false,
                &mut || -> Result<(), ()> {
                    checks += 1;
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(found.unwrap()[0], Some((9_999, 10_001)));
        assert!(checks > 0);
    }
}

/// Timings behind the budgets (`mod.rs` quotes them): run with
/// `cargo test -p walle-vm --lib regex::engine::measure -- --ignored --nocapture`.
#[cfg(test)]
mod measure {
    use std::time::Instant;

    use super::*;
    use crate::regex::translate::translate;

    fn compile(pattern: &str) -> Compiled {
        let chars: Vec<char> = pattern.chars().collect();
        Compiled::new(translate(&chars, false, 0).unwrap()).unwrap()
    }

    /// One search from the start; prints its outcome and time.
    fn time(label: &str, pattern: &str, text: &str, anchoring: Anchoring) {
        let compiled = compile(pattern);
        // Build the engines first: compiling is not what is measured.
        let _ = compiled.search(Haystack::of("x"), 0, anchoring, false, &mut || {
            Ok::<_, ()>(())
        });
        let mut positions = 0usize;
        let started = Instant::now();
        let outcome = compiled.search(Haystack::of(text), 0, anchoring, false, &mut || {
            positions += 1;
            Ok::<_, ()>(())
        });
        let outcome = match outcome {
            Ok(Some(spans)) => format!("match {:?}", spans[0]),
            Ok(None) => "no match".to_owned(),
            Err(SearchError::Engine(e)) => format!("{e}").chars().take(60).collect(),
            Err(SearchError::Stopped(())) => "stopped".to_owned(),
        };
        println!(
            "{label:<44} {:>9.1} ms  {positions:>7} retried positions  {outcome}",
            started.elapsed().as_secs_f64() * 1e3
        );
    }

    #[test]
    #[ignore = "prints timings; run by hand"]
    fn budgets() {
        let a = |n: usize| "a".repeat(n);
        let x = |n: usize| "x".repeat(n);
        time(
            "catastrophic, 21 chars",
            r"(a|a)*\1c",
            &(a(20) + "b"),
            Anchoring::Start,
        );
        time(
            "catastrophic, 41 chars",
            r"(a|a)*\1c",
            &(a(40) + "b"),
            Anchoring::Search,
        );
        for n in [1_000, 2_048, 2_049] {
            time(
                &format!("one position, quadratic, {n} chars"),
                r"(?:(?=.*a)a)+b",
                &a(n),
                Anchoring::Start,
            );
        }
        for n in [1_000, 10_000, 30_000] {
            time(
                &format!("every position scans the rest, {n} chars"),
                r"(?=.*!)\w",
                &x(n),
                Anchoring::Search,
            );
        }
        let words = "lorem ipsum dolor sit amet consectetur ".repeat(2_500) + "the the";
        time(
            "(\\w+)\\s+\\1 over 100 kB of words",
            r"(\w+)\s+\1",
            &words,
            Anchoring::Search,
        );
        let digits = "1".repeat(100_000);
        time(
            "(?<=\\d)(?=(\\d{3})+$) over 100k digits",
            r"(?<=\d)(?=(\d{3})+$)",
            &digits,
            Anchoring::Search,
        );
    }
}
