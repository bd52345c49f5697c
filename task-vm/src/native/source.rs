//! Task source is measured before RustPython compiles it.
//!
//! RustPython's parser and compiler recurse once per level of an expression's tree, on the
//! worker's native stack, without a limit of their own: `eval('(' * 300000 + ')' * 300000)`
//! overflows a 256 MB stack and aborts the whole process, and a bundle whose script did the same
//! would crash the device at every start. Their memory (about a hundred bytes per byte of
//! source) is allocated in one native call. So every source a task compiles (its entry script,
//! its bundled modules, `compile`/`exec`/`eval` of text) is first scanned here, in one linear
//! pass, and refused with a `SyntaxError` when:
//!
//! * brackets nest more than [`MAX_BRACKETS`] deep (CPython's own limit is 200);
//! * blocks nest more than [`MAX_INDENTS`] deep (CPython's own limit is 100);
//! * an expression may be more than [`MAX_DEPTH`] levels deep: operators, attribute accesses,
//!   calls and subscripts chained without a comma between them each add a level
//!   (`1+1+…+1`, `- - - 1`, `a.b.c…`, `f()()…`), on top of the levels of the brackets they are in.
//!   The estimate only over-counts (a long comparison chain is flat in the tree), so no source
//!   that compiles deeper than this passes;
//!
//! and its size is charged to the task's memory budget ([`COMPILE_BYTES_PER_SOURCE_BYTE`]).

/// Deepest bracket nesting accepted.
pub(crate) const MAX_BRACKETS: usize = 200;
/// Deepest block nesting accepted.
pub(crate) const MAX_INDENTS: usize = 100;
/// Deepest expression accepted, by the estimate above.
pub(crate) const MAX_DEPTH: usize = 1000;
/// About what compiling takes per byte of source (measured: a 400 KB module of short statements
/// took more than 64 MiB in a debug build).
pub(crate) const COMPILE_BYTES_PER_SOURCE_BYTE: u128 = 64;

/// Why a source was refused: a message for a `SyntaxError`, and the 1-based line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooDeep {
    pub(crate) message: String,
    pub(crate) line: usize,
}

/// Checks that compiling `source` stays within the bounds above.
pub(crate) fn check(source: &str) -> Result<(), TooDeep> {
    Scanner::default().scan(source)
}

#[derive(Default)]
struct Scanner {
    line: usize,
    /// Per open bracket (and the logical line's own level at the bottom): the chained
    /// operators counted at that level since its last comma.
    levels: Vec<usize>,
    indents: Vec<usize>,
    at_line_start: bool,
}

impl Scanner {
    fn scan(mut self, source: &str) -> Result<(), TooDeep> {
        let chars: Vec<char> = source.chars().collect();
        self.line = 1;
        self.levels.push(0);
        self.at_line_start = true;
        let mut i = 0;
        while i < chars.len() {
            if self.at_line_start && self.levels.len() == 1 {
                i = self.indentation(&chars, i)?;
                if i >= chars.len() {
                    break;
                }
            }
            let c = chars[i];
            match c {
                '\n' => {
                    self.line += 1;
                    if self.levels.len() == 1 {
                        self.levels[0] = 0;
                        self.at_line_start = true;
                    }
                    i += 1;
                }
                '#' => {
                    while i < chars.len() && chars[i] != '\n' {
                        i += 1;
                    }
                }
                '\\' if chars.get(i + 1) == Some(&'\n') => {
                    self.line += 1;
                    i += 2;
                }
                '\'' | '"' => i = self.string(&chars, i, false)?,
                '(' | '[' | '{' => {
                    self.chain()?;
                    self.open()?;
                    i += 1;
                }
                ')' | ']' | '}' => {
                    if self.levels.len() > 1 {
                        self.levels.pop();
                    }
                    i += 1;
                }
                ',' | ';' => {
                    if let Some(level) = self.levels.last_mut() {
                        *level = 0;
                    }
                    i += 1;
                }
                '+' | '-' | '*' | '/' | '%' | '@' | '&' | '|' | '^' | '~' | '.' => {
                    self.chain()?;
                    i += 1;
                }
                c if c.is_ascii_digit() => i = number(&chars, i),
                c if c == '_' || c.is_alphabetic() => {
                    let start = i;
                    while i < chars.len() && (chars[i] == '_' || chars[i].is_alphanumeric()) {
                        i += 1;
                    }
                    let word: String = chars[start..i].iter().collect();
                    if matches!(chars.get(i), Some('\'' | '"')) && is_string_prefix(&word) {
                        let formatted = word.contains(['f', 'F', 't', 'T']);
                        i = self.string(&chars, i, formatted)?;
                    } else if matches!(
                        word.as_str(),
                        "not" | "and" | "or" | "lambda" | "if" | "await"
                    ) {
                        self.chain()?;
                    }
                }
                _ => i += 1,
            }
        }
        Ok(())
    }

    fn refuse(&self, message: String) -> TooDeep {
        TooDeep {
            message,
            line: self.line,
        }
    }

    /// One more chained level at the innermost bracket.
    fn chain(&mut self) -> Result<(), TooDeep> {
        if let Some(level) = self.levels.last_mut() {
            *level += 1;
        }
        let depth = self.levels.iter().sum::<usize>() + self.levels.len();
        if depth > MAX_DEPTH {
            return Err(self.refuse(format!(
                "expression too deeply nested to compile in a Walle task (more than {MAX_DEPTH} levels)"
            )));
        }
        Ok(())
    }

    fn open(&mut self) -> Result<(), TooDeep> {
        self.levels.push(0);
        if self.levels.len() - 1 > MAX_BRACKETS {
            return Err(self.refuse(format!(
                "too many nested parentheses (more than {MAX_BRACKETS})"
            )));
        }
        Ok(())
    }

    /// Reads a logical line's indentation at `i`; returns where its code starts.
    fn indentation(&mut self, chars: &[char], mut i: usize) -> Result<usize, TooDeep> {
        let mut width = 0;
        while i < chars.len() && matches!(chars[i], ' ' | '\t' | '\x0c') {
            width = if chars[i] == '\t' {
                (width / 8 + 1) * 8
            } else {
                width + 1
            };
            i += 1;
        }
        if i < chars.len() && !matches!(chars[i], '\n' | '#' | '\r') {
            self.at_line_start = false;
            while self.indents.last().is_some_and(|&top| top > width) {
                self.indents.pop();
            }
            if width > self.indents.last().copied().unwrap_or(0) {
                self.indents.push(width);
                if self.indents.len() > MAX_INDENTS {
                    return Err(self.refuse(format!(
                        "too many levels of indentation (more than {MAX_INDENTS})"
                    )));
                }
            }
        }
        Ok(i)
    }

    /// Skips a string literal starting at its quote `i`. In a formatted string the replacement
    /// fields are expressions: their brackets and operators count like any others.
    fn string(&mut self, chars: &[char], mut i: usize, formatted: bool) -> Result<usize, TooDeep> {
        let quote = chars[i];
        let triple = chars.get(i + 1) == Some(&quote) && chars.get(i + 2) == Some(&quote);
        i += if triple { 3 } else { 1 };
        let mut fields = 0usize;
        while i < chars.len() {
            let c = chars[i];
            if c == '\\' {
                if chars.get(i + 1) == Some(&'\n') {
                    self.line += 1;
                }
                i += 2;
                continue;
            }
            if c == '\n' {
                self.line += 1;
                if !triple && fields == 0 {
                    return Ok(i);
                }
            }
            if c == quote && fields == 0 {
                if !triple {
                    return Ok(i + 1);
                }
                if chars.get(i + 1) == Some(&quote) && chars.get(i + 2) == Some(&quote) {
                    return Ok(i + 3);
                }
            }
            if formatted {
                match c {
                    '{' if fields == 0 && chars.get(i + 1) == Some(&'{') => i += 1,
                    '{' | '(' | '[' if fields > 0 || c == '{' => {
                        fields += usize::from(c == '{');
                        self.chain()?;
                        self.open()?;
                    }
                    '}' | ')' | ']' if fields > 0 => {
                        fields -= usize::from(c == '}');
                        if self.levels.len() > 1 {
                            self.levels.pop();
                        }
                    }
                    '+' | '-' | '*' | '/' | '%' | '@' | '&' | '|' | '^' | '~' | '.'
                        if fields > 0 =>
                    {
                        self.chain()?;
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

/// Skips a number literal (so the `.` and `-` of `1.5e-3` are not operators).
fn number(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() {
        let c = chars[i];
        let exponent_sign = matches!(c, '+' | '-') && matches!(chars[i - 1], 'e' | 'E');
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' || exponent_sign {
            i += 1;
        } else {
            break;
        }
    }
    i
}

fn is_string_prefix(word: &str) -> bool {
    word.len() <= 2
        && word
            .chars()
            .all(|c| matches!(c.to_ascii_lowercase(), 'r' | 'b' | 'u' | 'f' | 't'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(source: &str) -> String {
        check(source).expect_err("accepted").message
    }

    #[test]
    fn ordinary_code_and_big_flat_literals_pass() {
        let mut table = String::from("TABLE = [");
        for i in 0..20_000 {
            table.push_str(&format!("-{i}.5e-3, "));
        }
        table.push_str("]\n");
        check(&table).unwrap();
        let code = "def run(ctx):\n    x = ctx['a'].b.c(1, 2)[0] + 3 * (4 - 5)\n    if not x and ctx or y:\n        return f\"{x + 1:>{width}} {'-' * 80}\"\n    return lambda a: a.b\n";
        check(code).unwrap();
        check("s = '((((((((((((' + \"[[[[[[\" + '''\n((((\n'''\n# ((((((((\n").unwrap();
    }

    #[test]
    fn deep_brackets_are_refused_at_cpythons_limit() {
        check(&format!("x = {}1{}", "(".repeat(200), ")".repeat(200))).unwrap();
        let deep = format!("x = {}1{}", "(".repeat(201), ")".repeat(201));
        assert!(refused(&deep).contains("too many nested parentheses"));
        assert!(refused(&"[".repeat(300_000)).contains("too many nested parentheses"));
    }

    #[test]
    fn long_chains_are_refused() {
        assert!(refused(&format!("x = {}1", "1+".repeat(2000))).contains("too deeply nested"));
        assert!(refused(&format!("x = {}1", "- ".repeat(2000))).contains("too deeply nested"));
        assert!(refused(&format!("x = a{}", ".b".repeat(2000))).contains("too deeply nested"));
        assert!(refused(&format!("x = f{}", "()".repeat(2000))).contains("too deeply nested"));
        assert!(refused(&format!("x = {}1", "not ".repeat(2000))).contains("too deeply nested"));
        check(&format!("x = {}1", "1+".repeat(500))).unwrap();
    }

    #[test]
    fn formatted_strings_count_their_fields() {
        let deep = format!("x = f'{{{}1{}}}'", "(".repeat(250), ")".repeat(250));
        assert!(refused(&deep).contains("too many nested parentheses"));
        check("x = f'{{literal braces}} and {value!r:>10}'").unwrap();
    }

    #[test]
    fn deep_blocks_are_refused_with_their_line() {
        let mut source = String::new();
        for depth in 0..102 {
            source.push_str(&" ".repeat(depth));
            source.push_str("if x:\n");
        }
        let error = check(&source).unwrap_err();
        assert!(error.message.contains("indentation"), "{error:?}");
        assert_eq!(error.line, 102);
    }
}
