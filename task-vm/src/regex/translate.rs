//! Python `re` pattern syntax → fancy-regex pattern syntax.
//!
//! [`translate`] parses a pattern the way CPython 3.11's `re._parser` does (same grammar, same
//! errors and error positions where practical) into a small syntax tree whose nodes carry the
//! flags in force where they were written, then [`Translation::render`] writes the tree in
//! fancy-regex syntax. Rendering never relies on fancy-regex's own flag state: every node says
//! what it means explicitly, so scoped flags (`(?i:…)`, `(?-s:…)`, `(?a:…)`) need no bookkeeping
//! in the output:
//!
//! * named groups become plain numbered groups (the names stay here, in [`Translation::names`]);
//!   `(?P=name)` and `\N` become numbered backreferences, conditionals name their group by number;
//! * case-insensitive text becomes `(?i:…)` runs (Unicode) or explicit `[aA]` sets (ASCII
//!   semantics, where only ASCII letters fold);
//! * `\d \s \w` and their negations become the exact sets CPython uses: Unicode `\d` is `\p{Nd}`,
//!   `\s` is Unicode white space plus `\x1c`–`\x1f`, `\w` is letters, numbers and `_`; with
//!   ASCII semantics (`re.ASCII`, bytes patterns) they are the ASCII sets;
//! * `.` is `.` or `(?s:.)`, `^` is `\A` or `(?m:^)`, `$` is `(?m:$)` with MULTILINE and
//!   otherwise depends on the haystack ([`Dollar`]), `\Z` is `\z`;
//! * every literal that is not an ASCII letter or digit is written as `\x{…}`, so nothing that
//!   fancy-regex or the `regex` crate treat specially (`[` in a class, `&&`, `--`, `~~`,
//!   whitespace, `#`) keeps a special meaning;
//! * possessive quantifiers become atomic groups; a quantified lookaround or backreference is
//!   wrapped in a group first.
//!
//! Bytes patterns are translated as text whose characters are the pattern's bytes (Latin-1),
//! with ASCII semantics; the module matches them against haystacks decoded the same way.
//!
//! VERBOSE is handled here, as CPython does it: white space and `#` comments between items are
//! dropped, white space inside a character class and escaped white space are kept.
//!
//! Errors: a pattern CPython refuses is refused with CPython's message and position
//! ([`ErrorKind::Syntax`] → `re.error`), its `ValueError`s (flag combinations) and its
//! `OverflowError` (repeat counts of 2³² − 1 and more). Nesting deeper than [`MAX_NESTING`]
//! groups is refused too (fancy-regex's parser stops at 64 levels).

use std::collections::HashMap;
use std::fmt::Write as _;

/// CPython's `re` flag bits (`re.RegexFlag` values).
pub(crate) mod flag {
    /// `re.TEMPLATE` (`t`): accepted and ignored, as in CPython 3.11.
    pub(crate) const TEMPLATE: u32 = 1;
    pub(crate) const IGNORECASE: u32 = 2;
    pub(crate) const LOCALE: u32 = 4;
    pub(crate) const MULTILINE: u32 = 8;
    pub(crate) const DOTALL: u32 = 16;
    pub(crate) const UNICODE: u32 = 32;
    pub(crate) const VERBOSE: u32 = 64;
    pub(crate) const DEBUG: u32 = 128;
    pub(crate) const ASCII: u32 = 256;
    /// Flags that choose the character semantics; a scoped group replaces them as a set.
    pub(crate) const TYPE: u32 = ASCII | LOCALE | UNICODE;
    /// Flags that can only be given for the whole pattern.
    pub(crate) const GLOBAL: u32 = DEBUG | TEMPLATE;
}

/// Repeat counts must stay below this (`_sre.MAXREPEAT`); it also stands for "no upper bound".
const MAXREPEAT: u64 = 4_294_967_295;
/// CPython's `MAXWIDTH`: widths are capped here, and a capped width means "unbounded".
const MAXWIDTH: u128 = 1 << 64;
/// The largest fixed width a look-behind may have (`_sre.MAXCODE`).
const MAXCODE: u128 = (1 << 32) - 1;
/// Deepest nesting of groups and lookarounds accepted.
pub(crate) const MAX_NESTING: usize = 48;

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct PatternError {
    /// Which Python exception it becomes.
    pub(crate) kind: ErrorKind,
    /// CPython's message, without the position.
    pub(crate) message: String,
    /// Code point offset into the pattern, when CPython gives one.
    pub(crate) pos: Option<usize>,
}

/// The Python exception a [`PatternError`] becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// `re.error`.
    Syntax,
    /// `ValueError` (incompatible flags).
    Value,
    /// `OverflowError` (a repeat count too large).
    Overflow,
}

impl PatternError {
    fn syntax(message: impl Into<String>, pos: usize) -> PatternError {
        PatternError {
            kind: ErrorKind::Syntax,
            message: message.into(),
            pos: Some(pos),
        }
    }

    fn unplaced(kind: ErrorKind, message: impl Into<String>) -> PatternError {
        PatternError {
            kind,
            message: message.into(),
            pos: None,
        }
    }
}

type Result<T> = std::result::Result<T, PatternError>;

/// How a non-MULTILINE `$` is rendered. CPython's `$` matches at the end and before a newline
/// that ends the string; `regex` has no such assertion, and a lookahead would send every pattern
/// with `$` to the backtracking engine. But where the haystack does not end with `\n` the two
/// meanings coincide with `\z`, so the module picks the rendering per haystack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dollar {
    /// For haystacks that do not end with `\n`: `\z`.
    End,
    /// For haystacks that end with `\n`: `(?=\n?\z)`.
    BeforeFinalNewline,
}

/// What a pattern is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Shape {
    /// `search`, `match` (anchored by the caller) and the iterating calls.
    Search,
    /// `fullmatch`: the pattern followed by `\z`.
    Full,
}

/// A translated pattern.
#[derive(Debug, Clone)]
pub(crate) struct Translation {
    root: Node,
    /// Number of capturing groups.
    pub(crate) groups: usize,
    /// Group names and their numbers, in the order they were defined.
    pub(crate) names: Vec<(String, usize)>,
    /// The innermost capturing group around each group (0 for none); index 0 is unused.
    pub(crate) parents: Vec<usize>,
    /// The pattern's flags as `Pattern.flags` reports them (inline global flags included,
    /// `UNICODE` added for str patterns without `ASCII`).
    pub(crate) flags: u32,
    /// Whether the pattern contains a non-MULTILINE `$` (so [`Dollar`] matters).
    pub(crate) has_dollar: bool,
    /// Whether matching needs the backtracking engine (backreferences, lookarounds, atomic
    /// groups, possessive repeats, conditionals, ASCII word boundaries).
    pub(crate) backtracks: bool,
    /// Whether one match attempt may rescan the rest of the string many times: a lookahead
    /// that can look to the end, inside a repeat. fancy-regex counts none of that as
    /// backtracking, so the work of one attempt grows with the square of the string's length.
    pub(crate) rescans: bool,
    /// The most characters one match attempt may read from where it starts (lookarounds
    /// included), or `None` if unbounded.
    pub(crate) reach: Option<u64>,
}

/// Case and character semantics in force where a literal, class or backreference was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    icase: bool,
    ascii: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Empty,
    Literal(char, Mode),
    Any {
        dotall: bool,
    },
    Class(Class),
    Anchor(Anchor),
    Group {
        index: Option<usize>,
        body: Box<Node>,
    },
    Atomic(Box<Node>),
    Look {
        behind: bool,
        negate: bool,
        body: Box<Node>,
    },
    Backref {
        group: usize,
        icase: bool,
    },
    Conditional {
        group: usize,
        yes: Box<Node>,
        no: Box<Node>,
    },
    Repeat {
        min: u64,
        /// `MAXREPEAT` for no upper bound.
        max: u64,
        greed: Greed,
        body: Box<Node>,
    },
    Concat(Vec<Node>),
    Alternate(Vec<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Greed {
    Greedy,
    Lazy,
    Possessive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anchor {
    /// `^`.
    Start { multiline: bool },
    /// `$`.
    End { multiline: bool },
    /// `\A`.
    StringStart,
    /// `\Z`.
    StringEnd,
    /// `\b` (`negate`: `\B`).
    Boundary { negate: bool, ascii: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Class {
    negated: bool,
    items: Vec<ClassItem>,
    mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClassItem {
    Char(char),
    Range(char, char),
    Category(Category),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Digit,
    NotDigit,
    Space,
    NotSpace,
    Word,
    NotWord,
}

/// Translates `pattern` (code points of a str pattern, or the bytes of a bytes pattern as
/// Latin-1 characters) compiled with `flags`.
pub(crate) fn translate(pattern: &[char], is_bytes: bool, flags: u32) -> Result<Translation> {
    let mut parser = Parser {
        src: pattern,
        pos: 0,
        is_bytes,
        state_flags: flags,
        groups: vec![GroupState {
            width: Some((0, 0)),
            parent: 0,
        }],
        names: HashMap::new(),
        lookbehind_groups: None,
        condition_refs: Vec::new(),
        open: Vec::new(),
        depth: 0,
    };
    let root = parser.parse_sub(flags, flags & flag::VERBOSE != 0, 0)?;
    let flags = fix_flags(parser.state_flags, is_bytes)?;
    if parser.peek()?.is_some() {
        return Err(PatternError::syntax("unbalanced parenthesis", parser.pos));
    }
    for &(group, pos) in &parser.condition_refs {
        if group >= parser.groups.len() {
            return Err(PatternError::syntax(
                format!("invalid group reference {group}"),
                pos,
            ));
        }
    }
    let widths: Vec<(u128, u128)> = parser
        .groups
        .iter()
        .map(|g| g.width.unwrap_or((0, MAXWIDTH)))
        .collect();
    check_lookbehinds(&root, &widths)?;
    let mut names: Vec<(String, usize)> = parser.names.into_iter().collect();
    names.sort_by_key(|(_, index)| *index);
    let reach = reach(&root, &widths);
    let mut facts = Facts {
        widths: &widths,
        dollar: false,
        backtracks: false,
        rescans: false,
    };
    facts.visit(&root, false);
    Ok(Translation {
        groups: parser.groups.len() - 1,
        names,
        parents: parser.groups.iter().map(|g| g.parent).collect(),
        flags,
        has_dollar: facts.dollar,
        backtracks: facts.backtracks,
        rescans: facts.rescans,
        reach: (reach < MAXWIDTH).then(|| u64::try_from(reach).unwrap_or(u64::MAX)),
        root,
    })
}

/// CPython's `fix_flags`: the type flags a pattern ends up with, or the `ValueError` for an
/// impossible combination.
fn fix_flags(flags: u32, is_bytes: bool) -> Result<u32> {
    let refuse = |message: &str| Err(PatternError::unplaced(ErrorKind::Value, message));
    if is_bytes {
        if flags & flag::UNICODE != 0 {
            return refuse("cannot use UNICODE flag with a bytes pattern");
        }
        if flags & flag::LOCALE != 0 && flags & flag::ASCII != 0 {
            return refuse("ASCII and LOCALE flags are incompatible");
        }
        Ok(flags)
    } else {
        if flags & flag::LOCALE != 0 {
            return refuse("cannot use LOCALE flag with a str pattern");
        }
        if flags & flag::ASCII == 0 {
            Ok(flags | flag::UNICODE)
        } else if flags & flag::UNICODE != 0 {
            refuse("ASCII and UNICODE flags are incompatible")
        } else {
            Ok(flags)
        }
    }
}

/// CPython's `_combine_flags`: scoped type flags replace the enclosing ones.
fn combine(flags: u32, add: u32, del: u32) -> u32 {
    let base = if add & flag::TYPE != 0 {
        flags & !flag::TYPE
    } else {
        flags
    };
    (base | add) & !del
}

struct GroupState {
    /// Set when the group is closed.
    width: Option<(u128, u128)>,
    parent: usize,
}

/// One token of the pattern: a character, or a backslash and the character after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Char(char),
    Esc(char),
}

impl Tok {
    fn len(self) -> usize {
        match self {
            Tok::Char(_) => 1,
            Tok::Esc(_) => 2,
        }
    }

    fn text(self) -> String {
        match self {
            Tok::Char(c) => c.to_string(),
            Tok::Esc(c) => format!("\\{c}"),
        }
    }
}

struct Parser<'p> {
    src: &'p [char],
    /// Offset of the next token (CPython's `tell()`).
    pos: usize,
    is_bytes: bool,
    /// The flags given plus inline global flags (CPython's `state.flags`).
    state_flags: u32,
    groups: Vec<GroupState>,
    names: HashMap<String, usize>,
    /// While inside a look-behind: the number of groups opened before it.
    lookbehind_groups: Option<usize>,
    /// Groups named by conditionals, checked once all groups are known.
    condition_refs: Vec<(usize, usize)>,
    /// The capturing groups open around the current position.
    open: Vec<usize>,
    depth: usize,
}

const WHITESPACE: &str = " \t\n\r\u{b}\u{c}";

impl Parser<'_> {
    fn peek(&self) -> Result<Option<Tok>> {
        match self.src.get(self.pos) {
            None => Ok(None),
            Some('\\') => match self.src.get(self.pos + 1) {
                Some(&c) => Ok(Some(Tok::Esc(c))),
                None => Err(PatternError::syntax(
                    "bad escape (end of pattern)",
                    self.src.len() - 1,
                )),
            },
            Some(&c) => Ok(Some(Tok::Char(c))),
        }
    }

    fn get(&mut self) -> Result<Option<Tok>> {
        let tok = self.peek()?;
        if let Some(tok) = tok {
            self.pos += tok.len();
        }
        Ok(tok)
    }

    /// Consumes the next token if it is the plain character `c`.
    fn eat(&mut self, c: char) -> Result<bool> {
        if self.peek()? == Some(Tok::Char(c)) {
            self.pos += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// Up to `n` plain characters from `set` (CPython's `getwhile`).
    fn take_while(&mut self, n: usize, accept: impl Fn(char) -> bool) -> String {
        let mut taken = String::new();
        while taken.chars().count() < n {
            match self.src.get(self.pos) {
                Some(&c) if c != '\\' && accept(c) => {
                    taken.push(c);
                    self.pos += 1;
                }
                _ => break,
            }
        }
        taken
    }

    /// Tokens up to `terminator` (CPython's `getuntil`).
    fn take_until(&mut self, terminator: char, name: &str) -> Result<String> {
        let mut taken = String::new();
        loop {
            let tok = self.get()?;
            match tok {
                None => {
                    return Err(if taken.is_empty() {
                        self.error(format!("missing {name}"), 0)
                    } else {
                        self.error(
                            format!("missing {terminator}, unterminated name"),
                            taken.chars().count(),
                        )
                    });
                }
                Some(Tok::Char(c)) if c == terminator => {
                    if taken.is_empty() {
                        return Err(self.error(format!("missing {name}"), 1));
                    }
                    return Ok(taken);
                }
                Some(tok) => taken.push_str(&tok.text()),
            }
        }
    }

    /// An error `offset` code points before the current position (CPython's `source.error`).
    fn error(&self, message: impl Into<String>, offset: usize) -> PatternError {
        PatternError::syntax(message, self.pos.saturating_sub(offset))
    }

    fn check_group_name(&self, name: &str, offset: usize) -> Result<()> {
        if is_identifier(name) {
            Ok(())
        } else {
            Err(self.error(
                format!("bad character in group name {}", py_repr(name)),
                name.chars().count() + offset,
            ))
        }
    }

    /// Whether group `gid` exists and is closed.
    fn group_closed(&self, gid: usize) -> bool {
        self.groups.get(gid).is_some_and(|g| g.width.is_some())
    }

    fn check_lookbehind_group(&self, gid: usize) -> Result<()> {
        if let Some(before) = self.lookbehind_groups {
            if !self.group_closed(gid) {
                return Err(self.error("cannot refer to an open group", 0));
            }
            if gid >= before {
                return Err(self.error(
                    "cannot refer to group defined in the same lookbehind subpattern",
                    0,
                ));
            }
        }
        Ok(())
    }

    fn nest(&mut self, start: usize) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(PatternError::syntax(
                format!(
                    "groups nested more than {MAX_NESTING} deep are not supported in a Walle task"
                ),
                start,
            ));
        }
        Ok(())
    }

    /// An alternation (CPython's `_parse_sub`).
    fn parse_sub(&mut self, flags: u32, verbose: bool, nested: usize) -> Result<Node> {
        let mut items = Vec::new();
        let mut verbose = verbose;
        loop {
            // Inline global flags at the start of the first branch change the flags of the
            // whole pattern.
            let flags = if nested == 0 { self.state_flags } else { flags };
            let first = nested == 0 && items.is_empty();
            items.push(self.parse_seq(flags, verbose, nested + 1, first)?);
            if !self.eat('|')? {
                break;
            }
            if nested == 0 {
                verbose = self.state_flags & flag::VERBOSE != 0;
            }
        }
        Ok(if items.len() == 1 {
            items.pop().unwrap_or(Node::Empty)
        } else {
            Node::Alternate(items)
        })
    }

    /// A sequence of items (CPython's `_parse`).
    fn parse_seq(&mut self, flags: u32, verbose: bool, nested: usize, first: bool) -> Result<Node> {
        let mut flags = flags;
        let mut verbose = verbose;
        let mut items: Vec<Node> = Vec::new();
        while let Some(tok) = self.peek()? {
            if tok == Tok::Char('|') || tok == Tok::Char(')') {
                break;
            }
            self.pos += tok.len();
            if verbose && let Tok::Char(c) = tok {
                if WHITESPACE.contains(c) {
                    continue;
                }
                if c == '#' {
                    while !matches!(self.get()?, None | Some(Tok::Char('\n'))) {}
                    continue;
                }
            }
            let mode = mode(flags, self.is_bytes);
            match tok {
                Tok::Esc(c) => items.push(self.escape(c, flags)?),
                Tok::Char('[') => items.push(Node::Class(self.class(mode)?)),
                Tok::Char(c @ ('?' | '*' | '+' | '{')) => self.repeat(c, mode, &mut items)?,
                Tok::Char('.') => items.push(Node::Any {
                    dotall: flags & flag::DOTALL != 0,
                }),
                Tok::Char('(') => {
                    let start = self.pos - 1;
                    match self.group(start, flags, verbose, nested, first, &items)? {
                        Parsed::Item(node) => items.push(node),
                        Parsed::Nothing => {}
                        Parsed::GlobalFlags => {
                            flags = self.state_flags;
                            verbose = flags & flag::VERBOSE != 0;
                        }
                    }
                }
                Tok::Char('^') => items.push(Node::Anchor(Anchor::Start {
                    multiline: flags & flag::MULTILINE != 0,
                })),
                Tok::Char('$') => items.push(Node::Anchor(Anchor::End {
                    multiline: flags & flag::MULTILINE != 0,
                })),
                // Not special (`|` and `)` ended the loop above).
                Tok::Char(c) => items.push(Node::Literal(c, mode)),
            }
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().unwrap_or(Node::Empty),
            _ => Node::Concat(items),
        })
    }

    /// A quantifier after the last item; `c` has been consumed.
    fn repeat(&mut self, c: char, mode: Mode, items: &mut Vec<Node>) -> Result<()> {
        let here = self.pos;
        let (min, max) = match c {
            '?' => (0, 1),
            '*' => (0, MAXREPEAT),
            '+' => (1, MAXREPEAT),
            _ => {
                if self.src.get(self.pos) == Some(&'}') {
                    items.push(Node::Literal('{', mode));
                    return Ok(());
                }
                let lo = self.take_while(usize::MAX, |c| c.is_ascii_digit());
                let hi = if self.eat(',')? {
                    self.take_while(usize::MAX, |c| c.is_ascii_digit())
                } else {
                    lo.clone()
                };
                if !self.eat('}')? {
                    // Not a repeat: a literal `{`, and parsing goes on right after it.
                    items.push(Node::Literal('{', mode));
                    self.pos = here;
                    return Ok(());
                }
                let min = if lo.is_empty() { 0 } else { repeat_count(&lo)? };
                let max = if hi.is_empty() {
                    MAXREPEAT
                } else {
                    let max = repeat_count(&hi)?;
                    if max < min {
                        return Err(
                            self.error("min repeat greater than max repeat", self.pos - here)
                        );
                    }
                    max
                };
                (min, max)
            }
        };
        let offset = self.pos - here + 1;
        match items.last() {
            None | Some(Node::Anchor(_)) => return Err(self.error("nothing to repeat", offset)),
            Some(Node::Repeat { .. }) => return Err(self.error("multiple repeat", offset)),
            Some(_) => {}
        }
        let greed = if self.eat('?')? {
            Greed::Lazy
        } else if self.eat('+')? {
            Greed::Possessive
        } else {
            Greed::Greedy
        };
        if let Some(body) = items.pop() {
            items.push(Node::Repeat {
                min,
                max,
                greed,
                body: Box::new(body),
            });
        }
        Ok(())
    }

    /// What follows `(`; `start` is the offset of the `(`.
    fn group(
        &mut self,
        start: usize,
        flags: u32,
        verbose: bool,
        nested: usize,
        first: bool,
        items: &[Node],
    ) -> Result<Parsed> {
        let mut capture = true;
        let mut atomic = false;
        let mut name = None;
        let mut add = 0;
        let mut del = 0;
        if self.eat('?')? {
            let Some(tok) = self.get()? else {
                return Err(self.error("unexpected end of pattern", 0));
            };
            match tok {
                Tok::Char('P') => {
                    if self.eat('<')? {
                        let n = self.take_until('>', "group name")?;
                        self.check_group_name(&n, 1)?;
                        name = Some(n);
                    } else if self.eat('=')? {
                        let n = self.take_until(')', "group name")?;
                        self.check_group_name(&n, 1)?;
                        let offset = n.chars().count() + 1;
                        let Some(&gid) = self.names.get(&n) else {
                            return Err(
                                self.error(format!("unknown group name {}", py_repr(&n)), offset)
                            );
                        };
                        if !self.group_closed(gid) {
                            return Err(self.error("cannot refer to an open group", offset));
                        }
                        self.check_lookbehind_group(gid)?;
                        return Ok(Parsed::Item(Node::Backref {
                            group: gid,
                            icase: flags & flag::IGNORECASE != 0,
                        }));
                    } else {
                        let Some(tok) = self.get()? else {
                            return Err(self.error("unexpected end of pattern", 0));
                        };
                        return Err(self
                            .error(format!("unknown extension ?P{}", tok.text()), tok.len() + 2));
                    }
                }
                Tok::Char(':') => capture = false,
                Tok::Char('#') => loop {
                    match self.get()? {
                        None => {
                            return Err(
                                self.error("missing ), unterminated comment", self.pos - start)
                            );
                        }
                        Some(Tok::Char(')')) => return Ok(Parsed::Nothing),
                        Some(_) => {}
                    }
                },
                Tok::Char(c @ ('=' | '!' | '<')) => {
                    let (behind, negate) = if c == '<' {
                        match self.get()? {
                            None => return Err(self.error("unexpected end of pattern", 0)),
                            Some(Tok::Char('=')) => (true, false),
                            Some(Tok::Char('!')) => (true, true),
                            Some(tok) => {
                                return Err(self.error(
                                    format!("unknown extension ?<{}", tok.text()),
                                    tok.len() + 2,
                                ));
                            }
                        }
                    } else {
                        (false, c == '!')
                    };
                    let outer = self.lookbehind_groups;
                    if behind && outer.is_none() {
                        self.lookbehind_groups = Some(self.groups.len());
                    }
                    self.nest(start)?;
                    let body = self.parse_sub(flags, verbose, nested + 1)?;
                    self.depth -= 1;
                    if behind {
                        self.lookbehind_groups = outer;
                    }
                    if !self.eat(')')? {
                        return Err(
                            self.error("missing ), unterminated subpattern", self.pos - start)
                        );
                    }
                    return Ok(Parsed::Item(Node::Look {
                        behind,
                        negate,
                        body: Box::new(body),
                    }));
                }
                Tok::Char('(') => return self.conditional(start, flags, verbose, nested),
                Tok::Char('>') => {
                    capture = false;
                    atomic = true;
                }
                Tok::Char(c) if c == '-' || flag_bit(c).is_some() => match self.inline_flags(c)? {
                    None => {
                        if !first || !items.is_empty() {
                            return Err(self.error(
                                "global flags not at the start of the expression",
                                self.pos - start,
                            ));
                        }
                        return Ok(Parsed::GlobalFlags);
                    }
                    Some((a, d)) => {
                        add = a;
                        del = d;
                        capture = false;
                    }
                },
                tok => {
                    return Err(
                        self.error(format!("unknown extension ?{}", tok.text()), tok.len() + 1)
                    );
                }
            }
        }
        let index = if capture {
            Some(self.open_group(name)?)
        } else {
            None
        };
        let sub_verbose = (verbose || add & flag::VERBOSE != 0) && del & flag::VERBOSE == 0;
        self.nest(start)?;
        let body = self.parse_sub(combine(flags, add, del), sub_verbose, nested + 1)?;
        self.depth -= 1;
        if !self.eat(')')? {
            return Err(self.error("missing ), unterminated subpattern", self.pos - start));
        }
        if let Some(index) = index {
            let widths = self.widths();
            self.groups[index].width = Some(width(&body, &widths));
            self.open.pop();
        }
        let body = Box::new(body);
        Ok(Parsed::Item(if atomic {
            Node::Atomic(body)
        } else {
            Node::Group { index, body }
        }))
    }

    /// `(?(id)yes|no)`; `(?(` has been consumed.
    fn conditional(
        &mut self,
        start: usize,
        flags: u32,
        verbose: bool,
        nested: usize,
    ) -> Result<Parsed> {
        let name = self.take_until(')', "group name")?;
        let offset = name.chars().count() + 1;
        let group = if is_identifier(&name) {
            match self.names.get(&name) {
                Some(&gid) => gid,
                None => {
                    return Err(
                        self.error(format!("unknown group name {}", py_repr(&name)), offset)
                    );
                }
            }
        } else {
            let bad = || {
                self.error(
                    format!("bad character in group name {}", py_repr(&name)),
                    offset,
                )
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            let Ok(group) = name.parse::<usize>() else {
                return Err(self.error(format!("invalid group reference {name}"), offset));
            };
            if group == 0 {
                return Err(self.error("bad group number", offset));
            }
            if !self.condition_refs.iter().any(|&(g, _)| g == group) {
                self.condition_refs.push((group, self.pos - offset));
            }
            group
        };
        self.check_lookbehind_group(group)?;
        self.nest(start)?;
        let yes = self.parse_seq(flags, verbose, nested + 1, false)?;
        let no = if self.eat('|')? {
            let no = self.parse_seq(flags, verbose, nested + 1, false)?;
            if self.peek()? == Some(Tok::Char('|')) {
                return Err(self.error("conditional backref with more than two branches", 0));
            }
            no
        } else {
            Node::Empty
        };
        self.depth -= 1;
        if !self.eat(')')? {
            return Err(self.error("missing ), unterminated subpattern", self.pos - start));
        }
        Ok(Parsed::Item(Node::Conditional {
            group,
            yes: Box::new(yes),
            no: Box::new(no),
        }))
    }

    fn open_group(&mut self, name: Option<String>) -> Result<usize> {
        let gid = self.groups.len();
        if let Some(name) = &name {
            if let Some(&old) = self.names.get(name) {
                return Err(self.error(
                    format!(
                        "redefinition of group name {} as group {gid}; was group {old}",
                        py_repr(name)
                    ),
                    name.chars().count() + 1,
                ));
            }
            self.names.insert(name.clone(), gid);
        }
        self.groups.push(GroupState {
            width: None,
            parent: self.open.last().copied().unwrap_or(0),
        });
        self.open.push(gid);
        Ok(gid)
    }

    fn widths(&self) -> Vec<(u128, u128)> {
        self.groups
            .iter()
            .map(|g| g.width.unwrap_or((0, MAXWIDTH)))
            .collect()
    }

    /// Inline flags after `(?`; `first` (a flag letter or `-`) has been consumed. `None` for
    /// global flags (`(?i)`), else the flags a scoped group adds and removes (CPython's
    /// `_parse_flags`).
    fn inline_flags(&mut self, first: char) -> Result<Option<(u32, u32)>> {
        let mut add = 0;
        let mut del = 0;
        let mut c = Some(first);
        if first != '-' {
            loop {
                let letter = c.unwrap_or('-');
                let bit = flag_bit(letter).unwrap_or(0);
                if !self.is_bytes && letter == 'L' {
                    return Err(self.error(
                        "bad inline flags: cannot use 'L' flag with a str pattern",
                        0,
                    ));
                }
                if self.is_bytes && letter == 'u' {
                    return Err(self.error(
                        "bad inline flags: cannot use 'u' flag with a bytes pattern",
                        0,
                    ));
                }
                add |= bit;
                if bit & flag::TYPE != 0 && add & flag::TYPE != bit {
                    return Err(self.error(
                        "bad inline flags: flags 'a', 'u' and 'L' are incompatible",
                        0,
                    ));
                }
                c = self.get_char()?;
                match c {
                    None => return Err(self.error("missing -, : or )", 0)),
                    Some(')' | '-' | ':') => break,
                    Some(other) if flag_bit(other).is_none() => {
                        let message = if other.is_alphabetic() {
                            "unknown flag"
                        } else {
                            "missing -, : or )"
                        };
                        return Err(self.error(message, 1));
                    }
                    Some(_) => {}
                }
            }
        }
        if c == Some(')') {
            self.state_flags |= add;
            return Ok(None);
        }
        if add & flag::GLOBAL != 0 {
            return Err(self.error("bad inline flags: cannot turn on global flag", 1));
        }
        if c == Some('-') {
            c = self.get_char()?;
            match c {
                None => return Err(self.error("missing flag", 0)),
                Some(other) if flag_bit(other).is_none() => {
                    let message = if other.is_alphabetic() {
                        "unknown flag"
                    } else {
                        "missing flag"
                    };
                    return Err(self.error(message, 1));
                }
                Some(_) => {}
            }
            loop {
                let bit = c.and_then(flag_bit).unwrap_or(0);
                if bit & flag::TYPE != 0 {
                    return Err(self.error(
                        "bad inline flags: cannot turn off flags 'a', 'u' and 'L'",
                        0,
                    ));
                }
                del |= bit;
                c = self.get_char()?;
                match c {
                    None => return Err(self.error("missing :", 0)),
                    Some(':') => break,
                    Some(other) if flag_bit(other).is_none() => {
                        let message = if other.is_alphabetic() {
                            "unknown flag"
                        } else {
                            "missing :"
                        };
                        return Err(self.error(message, 1));
                    }
                    Some(_) => {}
                }
            }
        }
        if del & flag::GLOBAL != 0 {
            return Err(self.error("bad inline flags: cannot turn off global flag", 1));
        }
        if add & del != 0 {
            return Err(self.error("bad inline flags: flag turned on and off", 1));
        }
        Ok(Some((add, del)))
    }

    /// The next token as a character (an escape is never a flag).
    fn get_char(&mut self) -> Result<Option<char>> {
        Ok(match self.get()? {
            None => None,
            Some(Tok::Char(c)) => Some(c),
            Some(Tok::Esc(_)) => Some('\\'),
        })
    }

    /// An escape outside a class; `\c` has been consumed (CPython's `_escape`).
    fn escape(&mut self, c: char, flags: u32) -> Result<Node> {
        let mode = mode(flags, self.is_bytes);
        let start = self.pos - 2;
        let category = |category| {
            Node::Class(Class {
                negated: false,
                items: vec![ClassItem::Category(category)],
                mode,
            })
        };
        Ok(match c {
            'A' => Node::Anchor(Anchor::StringStart),
            'Z' => Node::Anchor(Anchor::StringEnd),
            'b' | 'B' => Node::Anchor(Anchor::Boundary {
                negate: c == 'B',
                ascii: mode.ascii,
            }),
            'd' => category(Category::Digit),
            'D' => category(Category::NotDigit),
            's' => category(Category::Space),
            'S' => category(Category::NotSpace),
            'w' => category(Category::Word),
            'W' => category(Category::NotWord),
            '0' => {
                let digits = self.take_while(2, |c| c.is_digit(8));
                Node::Literal(char_at(u32::from_str_radix(&digits, 8).unwrap_or(0)), mode)
            }
            '1'..='9' => return self.group_ref_or_octal(c, flags, start),
            _ => Node::Literal(self.escaped_char(c, start)?, mode),
        })
    }

    /// `\1`…`\99` or a three-digit octal escape (CPython's "octal escape *or* decimal group
    /// reference (sigh)").
    fn group_ref_or_octal(&mut self, c: char, flags: u32, start: usize) -> Result<Node> {
        let mut digits = c.to_string();
        if let Some(&d) = self.src.get(self.pos).filter(|d| d.is_ascii_digit()) {
            digits.push(d);
            self.pos += 1;
            let octal = |c: char| c.is_digit(8);
            if let Some(&d3) = self.src.get(self.pos).filter(|&&d3| octal(d3))
                && octal(c)
                && octal(d)
            {
                digits.push(d3);
                self.pos += 1;
                let value = u32::from_str_radix(&digits, 8).unwrap_or(u32::MAX);
                if value > 0o377 {
                    return Err(self.error(
                        format!("octal escape value \\{digits} outside of range 0-0o377"),
                        digits.len() + 1,
                    ));
                }
                return Ok(Node::Literal(char_at(value), mode(flags, self.is_bytes)));
            }
        }
        let group: usize = digits.parse().unwrap_or(usize::MAX);
        if group < self.groups.len() {
            if !self.group_closed(group) {
                return Err(self.error("cannot refer to an open group", digits.len() + 1));
            }
            self.check_lookbehind_group(group)?;
            return Ok(Node::Backref {
                group,
                icase: flags & flag::IGNORECASE != 0,
            });
        }
        Err(PatternError::syntax(
            format!("invalid group reference {group}"),
            start + 1,
        ))
    }

    /// The character an escape that stands for one character means: `\n`, `\x41`, `\u00e9`,
    /// `\N{…}`, `\.`; an unknown ASCII letter is an error. Categories, anchors and octal escapes
    /// are handled by the callers.
    fn escaped_char(&mut self, c: char, start: usize) -> Result<char> {
        let bad = |this: &Self| {
            this.error(
                format!(
                    "bad escape {}",
                    this.src[start..this.pos].iter().collect::<String>()
                ),
                this.pos - start,
            )
        };
        Ok(match c {
            'a' => '\u{7}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{b}',
            '\\' => '\\',
            'x' => self.hex(2, start)?,
            'u' if !self.is_bytes => self.hex(4, start)?,
            'U' if !self.is_bytes => {
                let value = self.hex_value(8, start)?;
                match char::from_u32(value) {
                    Some(ch) => ch,
                    None if value <= 0x10ffff => char::REPLACEMENT_CHARACTER,
                    None => return Err(bad(self)),
                }
            }
            'N' if !self.is_bytes => {
                if !self.eat('{')? {
                    return Err(self.error("missing {", 0));
                }
                let name = self.take_until('}', "character name")?;
                match unicode_names2::character(&name) {
                    Some(ch) => ch,
                    None => {
                        return Err(self.error(
                            format!("undefined character name {}", py_repr(&name)),
                            name.chars().count() + 4,
                        ));
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c.is_ascii_digit() => return Err(bad(self)),
            c => c,
        })
    }

    fn hex(&mut self, digits: usize, start: usize) -> Result<char> {
        let value = self.hex_value(digits, start)?;
        // A lone surrogate (`\ud800`) can only match a lone surrogate, which the engine sees
        // as U+FFFD (see the module doc).
        Ok(char::from_u32(value).unwrap_or(char::REPLACEMENT_CHARACTER))
    }

    fn hex_value(&mut self, digits: usize, start: usize) -> Result<u32> {
        let hex = self.take_while(digits, |c| c.is_ascii_hexdigit());
        if hex.len() != digits {
            let escape: String = self.src[start..self.pos].iter().collect();
            return Err(self.error(format!("incomplete escape {escape}"), self.pos - start));
        }
        Ok(u32::from_str_radix(&hex, 16).unwrap_or(u32::MAX))
    }

    /// A character class; `[` has been consumed.
    fn class(&mut self, mode: Mode) -> Result<Class> {
        let here = self.pos - 1;
        let negated = self.eat('^')?;
        let mut items = Vec::new();
        let unterminated = |this: &Self| this.error("unterminated character set", this.pos - here);
        loop {
            let Some(this) = self.get()? else {
                return Err(unterminated(self));
            };
            if this == Tok::Char(']') && !items.is_empty() {
                break;
            }
            let this_start = self.pos - this.len();
            let first = self.class_item(this)?;
            if self.eat('-')? {
                let Some(that) = self.get()? else {
                    return Err(unterminated(self));
                };
                if that == Tok::Char(']') {
                    items.push(first);
                    items.push(ClassItem::Char('-'));
                    break;
                }
                let second = self.class_item(that)?;
                let range_text = || format!("bad character range {}-{}", this.text(), that.text());
                let (ClassItem::Char(lo), ClassItem::Char(hi)) = (first, second) else {
                    return Err(PatternError::syntax(range_text(), this_start));
                };
                if hi < lo {
                    return Err(PatternError::syntax(range_text(), this_start));
                }
                items.push(ClassItem::Range(lo, hi));
            } else {
                items.push(first);
            }
        }
        Ok(Class {
            negated,
            items,
            mode,
        })
    }

    /// One member of a class (CPython's `_class_escape` for escapes).
    fn class_item(&mut self, tok: Tok) -> Result<ClassItem> {
        let c = match tok {
            Tok::Char(c) => return Ok(ClassItem::Char(c)),
            Tok::Esc(c) => c,
        };
        let start = self.pos - 2;
        Ok(match c {
            'b' => ClassItem::Char('\u{8}'),
            'd' => ClassItem::Category(Category::Digit),
            'D' => ClassItem::Category(Category::NotDigit),
            's' => ClassItem::Category(Category::Space),
            'S' => ClassItem::Category(Category::NotSpace),
            'w' => ClassItem::Category(Category::Word),
            'W' => ClassItem::Category(Category::NotWord),
            '0'..='7' => {
                let digits = format!("{c}{}", self.take_while(2, |c| c.is_digit(8)));
                let value = u32::from_str_radix(&digits, 8).unwrap_or(u32::MAX);
                if value > 0o377 {
                    return Err(self.error(
                        format!("octal escape value \\{digits} outside of range 0-0o377"),
                        digits.len() + 1,
                    ));
                }
                ClassItem::Char(char_at(value))
            }
            _ => ClassItem::Char(self.escaped_char(c, start)?),
        })
    }
}

/// What `(` started.
enum Parsed {
    Item(Node),
    /// A comment.
    Nothing,
    /// Inline global flags (`(?i)`), now in the parser's state.
    GlobalFlags,
}

fn mode(flags: u32, is_bytes: bool) -> Mode {
    Mode {
        icase: flags & flag::IGNORECASE != 0,
        ascii: is_bytes || flags & (flag::ASCII | flag::LOCALE) != 0,
    }
}

fn flag_bit(c: char) -> Option<u32> {
    Some(match c {
        'i' => flag::IGNORECASE,
        'L' => flag::LOCALE,
        'm' => flag::MULTILINE,
        's' => flag::DOTALL,
        'x' => flag::VERBOSE,
        'a' => flag::ASCII,
        't' => flag::TEMPLATE,
        'u' => flag::UNICODE,
        _ => return None,
    })
}

fn repeat_count(digits: &str) -> Result<u64> {
    match digits.parse::<u64>() {
        Ok(n) if n < MAXREPEAT => Ok(n),
        _ => Err(PatternError::unplaced(
            ErrorKind::Overflow,
            "the repetition number is too large",
        )),
    }
}

/// The character for a code point below 0x100 (octal escapes) or a checked hex value.
fn char_at(value: u32) -> char {
    char::from_u32(value).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// Python's `str.isidentifier`, close enough for group names.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// Python's `repr` of a str, as CPython's messages quote names.
pub(crate) fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// CPython's `getwidth`: the fewest and most characters `node` can match.
fn width(node: &Node, groups: &[(u128, u128)]) -> (u128, u128) {
    let (lo, hi) = match node {
        Node::Empty | Node::Anchor(_) | Node::Look { .. } => (0, 0),
        Node::Literal(..) | Node::Any { .. } | Node::Class(_) => (1, 1),
        Node::Group { body, .. } | Node::Atomic(body) => width(body, groups),
        Node::Backref { group, .. } => groups.get(*group).copied().unwrap_or((0, MAXWIDTH)),
        Node::Conditional { yes, no, .. } => {
            let (i, j) = width(yes, groups);
            if matches!(**no, Node::Empty) {
                (0, j)
            } else {
                let (l, h) = width(no, groups);
                (i.min(l), j.max(h))
            }
        }
        Node::Repeat { min, max, body, .. } => {
            let (i, j) = width(body, groups);
            let hi = if *max == MAXREPEAT && j > 0 {
                MAXWIDTH
            } else {
                j.saturating_mul(u128::from(*max))
            };
            (i.saturating_mul(u128::from(*min)), hi)
        }
        Node::Concat(items) => items.iter().fold((0u128, 0u128), |(lo, hi), item| {
            let (i, j) = width(item, groups);
            (lo.saturating_add(i), hi.saturating_add(j))
        }),
        Node::Alternate(items) => items.iter().fold((MAXWIDTH, 0), |(lo, hi), item| {
            let (i, j) = width(item, groups);
            (lo.min(i), hi.max(j))
        }),
    };
    (lo.min(MAXWIDTH), hi.min(MAXWIDTH))
}

/// The most characters one match attempt may read from where it starts: its width with what
/// the lookarounds look at counted as if it were matched (an overestimate, which is all the
/// engine's budgets need).
fn reach(node: &Node, groups: &[(u128, u128)]) -> u128 {
    let most = match node {
        Node::Empty | Node::Anchor(_) => 0,
        Node::Literal(..) | Node::Any { .. } | Node::Class(_) => 1,
        Node::Look { body, .. } | Node::Group { body, .. } | Node::Atomic(body) => {
            reach(body, groups)
        }
        Node::Backref { group, .. } => groups.get(*group).map_or(MAXWIDTH, |&(_, hi)| hi),
        Node::Conditional { yes, no, .. } => reach(yes, groups).max(reach(no, groups)),
        Node::Repeat { max, body, .. } => {
            let each = reach(body, groups);
            if *max == MAXREPEAT && each > 0 {
                MAXWIDTH
            } else {
                each.saturating_mul(u128::from(*max))
            }
        }
        Node::Concat(items) => items
            .iter()
            .fold(0u128, |sum, item| sum.saturating_add(reach(item, groups))),
        Node::Alternate(items) => items
            .iter()
            .map(|item| reach(item, groups))
            .max()
            .unwrap_or(0),
    };
    most.min(MAXWIDTH)
}

/// CPython's compile-time check: a look-behind must have one fixed width.
fn check_lookbehinds(node: &Node, groups: &[(u128, u128)]) -> Result<()> {
    match node {
        Node::Look {
            behind: true, body, ..
        } => {
            let (lo, hi) = width(body, groups);
            if lo != hi {
                return Err(PatternError::unplaced(
                    ErrorKind::Syntax,
                    "look-behind requires fixed-width pattern",
                ));
            }
            if lo > MAXCODE {
                return Err(PatternError::unplaced(
                    ErrorKind::Syntax,
                    "looks too much behind",
                ));
            }
            check_lookbehinds(body, groups)
        }
        Node::Look { body, .. }
        | Node::Group { body, .. }
        | Node::Atomic(body)
        | Node::Repeat { body, .. } => check_lookbehinds(body, groups),
        Node::Conditional { yes, no, .. } => {
            check_lookbehinds(yes, groups)?;
            check_lookbehinds(no, groups)
        }
        Node::Concat(items) | Node::Alternate(items) => items
            .iter()
            .try_for_each(|item| check_lookbehinds(item, groups)),
        Node::Empty
        | Node::Literal(..)
        | Node::Any { .. }
        | Node::Class(_)
        | Node::Anchor(_)
        | Node::Backref { .. } => Ok(()),
    }
}

/// What the module needs to know about a pattern beyond its rendering.
struct Facts<'w> {
    widths: &'w [(u128, u128)],
    dollar: bool,
    backtracks: bool,
    rescans: bool,
}

impl Facts<'_> {
    /// `repeated`: whether `node` may be matched more than once in one attempt.
    fn visit(&mut self, node: &Node, repeated: bool) {
        match node {
            Node::Anchor(Anchor::End { multiline: false }) => self.dollar = true,
            Node::Anchor(Anchor::Boundary { ascii: true, .. }) => self.backtracks = true,
            Node::Backref { .. } => self.backtracks = true,
            Node::Look { behind, body, .. } => {
                self.backtracks = true;
                self.rescans |= repeated && !behind && reach(body, self.widths) >= MAXWIDTH;
                self.visit(body, repeated);
            }
            Node::Atomic(body) => {
                self.backtracks = true;
                self.visit(body, repeated);
            }
            Node::Repeat {
                max, greed, body, ..
            } => {
                self.backtracks |= *greed == Greed::Possessive;
                self.visit(body, repeated || *max > 1);
            }
            Node::Conditional { yes, no, .. } => {
                self.backtracks = true;
                self.visit(yes, repeated);
                self.visit(no, repeated);
            }
            Node::Group { body, .. } => self.visit(body, repeated),
            Node::Concat(items) | Node::Alternate(items) => {
                items.iter().for_each(|item| self.visit(item, repeated));
            }
            Node::Empty
            | Node::Literal(..)
            | Node::Any { .. }
            | Node::Class(_)
            | Node::Anchor(_) => {}
        }
    }
}

impl Translation {
    /// The pattern in fancy-regex syntax, for `shape`, with non-MULTILINE `$` as `dollar`.
    pub(crate) fn render(&self, shape: Shape, dollar: Dollar) -> String {
        let mut out = Renderer {
            out: String::new(),
            dollar,
        };
        match shape {
            Shape::Search => out.node(&self.root),
            Shape::Full => {
                out.out.push_str("(?:");
                out.node(&self.root);
                out.out.push_str(")\\z");
            }
        }
        out.out
    }
}

struct Renderer {
    out: String,
    dollar: Dollar,
}

/// The ASCII word characters, for `\w` and `\b` with ASCII semantics.
const ASCII_WORD: &str = "0-9A-Za-z_";
/// CPython's Unicode `\w`: `str.isalnum()` or `_`.
const UNICODE_WORD: &str = "\\p{L}\\p{N}_";
/// The ASCII white space `\s` matches with ASCII semantics.
const ASCII_SPACE: &str = "\\x{9}-\\x{D}\\x{20}";
/// CPython's Unicode `\s`: `str.isspace()`, which adds the information separators.
const UNICODE_SPACE: &str = "\\s\\x{1C}-\\x{1F}";

impl Renderer {
    fn node(&mut self, node: &Node) {
        match node {
            Node::Empty => {}
            Node::Literal(c, mode) => self.literal(*c, *mode),
            Node::Any { dotall: true } => self.out.push_str("(?s:.)"),
            Node::Any { dotall: false } => self.out.push('.'),
            Node::Class(class) => self.class(class),
            Node::Anchor(anchor) => self.anchor(*anchor),
            Node::Group { index, body } => {
                self.out.push_str(if index.is_some() { "(" } else { "(?:" });
                self.node(body);
                self.out.push(')');
            }
            Node::Atomic(body) => {
                self.out.push_str("(?>");
                self.node(body);
                self.out.push(')');
            }
            Node::Look {
                behind,
                negate,
                body,
            } => {
                self.out.push_str(match (behind, negate) {
                    (false, false) => "(?=",
                    (false, true) => "(?!",
                    (true, false) => "(?<=",
                    (true, true) => "(?<!",
                });
                self.node(body);
                self.out.push(')');
            }
            Node::Backref { group, icase } => {
                let flags = if *icase { "(?i:" } else { "(?:" };
                let _ = write!(self.out, "{flags}\\{group})");
            }
            Node::Conditional { group, yes, no } => {
                let _ = write!(self.out, "(?({group})");
                self.node(yes);
                self.out.push('|');
                self.node(no);
                self.out.push(')');
            }
            Node::Repeat {
                min,
                max,
                greed,
                body,
            } => self.repeat(*min, *max, *greed, body),
            Node::Concat(items) => self.concat(items),
            Node::Alternate(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push('|');
                    }
                    self.node(item);
                }
            }
        }
    }

    /// A sequence; runs of case-insensitive Unicode literals share one `(?i:…)`.
    fn concat(&mut self, items: &[Node]) {
        let folded =
            |node: &Node| matches!(node, Node::Literal(c, mode) if folds_unicode(*c, *mode));
        let mut i = 0;
        while i < items.len() {
            if folded(&items[i]) {
                self.out.push_str("(?i:");
                while let Some(Node::Literal(c, _)) = items.get(i).filter(|n| folded(n)) {
                    push_char(&mut self.out, *c);
                    i += 1;
                }
                self.out.push(')');
            } else {
                self.node(&items[i]);
                i += 1;
            }
        }
    }

    fn literal(&mut self, c: char, mode: Mode) {
        if folds_unicode(c, mode) {
            self.out.push_str("(?i:");
            push_char(&mut self.out, c);
            self.out.push(')');
        } else if mode.icase && mode.ascii && c.is_ascii_alphabetic() {
            self.out.push('[');
            self.out.push(c.to_ascii_lowercase());
            self.out.push(c.to_ascii_uppercase());
            self.out.push(']');
        } else {
            push_char(&mut self.out, c);
        }
    }

    fn class(&mut self, class: &Class) {
        let Mode { icase, ascii } = class.mode;
        if let [ClassItem::Category(category)] = class.items[..]
            && !class.negated
        {
            // `\d` and friends on their own; case never matters to them.
            self.out.push_str(category_set(category, ascii));
            return;
        }
        let fold = icase
            && !ascii
            && class
                .items
                .iter()
                .any(|item| !matches!(item, ClassItem::Category(_)));
        if fold {
            self.out.push_str("(?i:");
        }
        self.out.push('[');
        if class.negated {
            self.out.push('^');
        }
        for item in &class.items {
            match *item {
                ClassItem::Char(c) => {
                    self.range(c, c);
                    if icase && ascii {
                        self.ascii_case_variants(c, c);
                    }
                }
                ClassItem::Range(lo, hi) => {
                    self.range(lo, hi);
                    if icase && ascii {
                        self.ascii_case_variants(lo, hi);
                    }
                }
                ClassItem::Category(category) => {
                    self.out.push_str(category_member(category, ascii))
                }
            }
        }
        self.out.push(']');
        if fold {
            self.out.push(')');
        }
    }

    fn range(&mut self, lo: char, hi: char) {
        push_char(&mut self.out, lo);
        if hi != lo {
            self.out.push('-');
            push_char(&mut self.out, hi);
        }
    }

    /// With ASCII semantics only ASCII letters fold: adds the other case of the ASCII letters
    /// in `lo..=hi`.
    fn ascii_case_variants(&mut self, lo: char, hi: char) {
        for (from, to, shift) in [('a', 'z', -32i32), ('A', 'Z', 32)] {
            let (a, b) = (lo.max(from), hi.min(to));
            if a <= b {
                let moved = |c: char| char::from_u32((c as i32 + shift) as u32).unwrap_or(c);
                self.range(moved(a), moved(b));
            }
        }
    }

    fn anchor(&mut self, anchor: Anchor) {
        let text = match anchor {
            Anchor::Start { multiline: true } => "(?m:^)",
            Anchor::Start { multiline: false } | Anchor::StringStart => "\\A",
            Anchor::End { multiline: true } => "(?m:$)",
            Anchor::End { multiline: false } => match self.dollar {
                Dollar::End => "\\z",
                Dollar::BeforeFinalNewline => "(?=\\n?\\z)",
            },
            Anchor::StringEnd => "\\z",
            Anchor::Boundary {
                negate: false,
                ascii: false,
            } => "\\b",
            Anchor::Boundary {
                negate: true,
                ascii: false,
            } => "\\B",
            Anchor::Boundary {
                negate: false,
                ascii: true,
            } => "(?:(?<=[0-9A-Za-z_])(?![0-9A-Za-z_])|(?<![0-9A-Za-z_])(?=[0-9A-Za-z_]))",
            Anchor::Boundary {
                negate: true,
                ascii: true,
            } => "(?:(?<=[0-9A-Za-z_])(?=[0-9A-Za-z_])|(?<![0-9A-Za-z_])(?![0-9A-Za-z_]))",
        };
        self.out.push_str(text);
    }

    fn repeat(&mut self, min: u64, max: u64, greed: Greed, body: &Node) {
        if is_empty(body) {
            // Repeating nothing matches nothing; fancy-regex refuses `(?:)*`.
            return;
        }
        if zero_width(body) {
            // fancy-regex refuses to repeat what matches no characters; repeating it more than
            // once changes nothing, so it is optional (min 0) or required once.
            self.out.push_str(if greed == Greed::Possessive {
                "(?>"
            } else {
                "(?:"
            });
            match (min, greed) {
                (0, Greed::Lazy) => {
                    self.out.push('|');
                    self.node(body);
                }
                (0, _) => {
                    self.node(body);
                    self.out.push('|');
                }
                _ => self.node(body),
            }
            self.out.push(')');
            return;
        }
        if greed == Greed::Possessive {
            self.out.push_str("(?>");
        }
        let atom = matches!(
            body,
            Node::Literal(..)
                | Node::Any { .. }
                | Node::Class(_)
                | Node::Group { .. }
                | Node::Atomic(_)
                | Node::Backref { .. }
        );
        if !atom {
            self.out.push_str("(?:");
        }
        self.node(body);
        if !atom {
            self.out.push(')');
        }
        let _ = match (min, max) {
            (0, MAXREPEAT) => write!(self.out, "*"),
            (1, MAXREPEAT) => write!(self.out, "+"),
            (0, 1) => write!(self.out, "?"),
            (min, MAXREPEAT) => write!(self.out, "{{{min},}}"),
            (min, max) if min == max => write!(self.out, "{{{min}}}"),
            (min, max) => write!(self.out, "{{{min},{max}}}"),
        };
        match greed {
            Greed::Greedy => {}
            Greed::Lazy => self.out.push('?'),
            Greed::Possessive => self.out.push(')'),
        }
    }
}

/// Whether a node matches only the empty string without any assertion (a repeat of it is
/// dropped).
fn is_empty(node: &Node) -> bool {
    match node {
        Node::Empty => true,
        Node::Group { index: None, body } => is_empty(body),
        Node::Concat(items) => items.iter().all(is_empty),
        _ => false,
    }
}

/// Whether a node never consumes a character (an assertion, or groups of assertions).
fn zero_width(node: &Node) -> bool {
    match node {
        Node::Empty | Node::Anchor(_) | Node::Look { .. } => true,
        Node::Group { body, .. } | Node::Atomic(body) | Node::Repeat { body, .. } => {
            zero_width(body)
        }
        Node::Conditional { yes, no, .. } => zero_width(yes) && zero_width(no),
        Node::Concat(items) | Node::Alternate(items) => items.iter().all(zero_width),
        Node::Literal(..) | Node::Any { .. } | Node::Class(_) | Node::Backref { .. } => false,
    }
}

/// Whether a literal needs `(?i:…)`: case-insensitive with Unicode semantics and a character
/// that may have other cases.
fn folds_unicode(c: char, mode: Mode) -> bool {
    mode.icase && !mode.ascii && (c.is_ascii_alphabetic() || !c.is_ascii())
}

/// A category on its own.
fn category_set(category: Category, ascii: bool) -> &'static str {
    match (category, ascii) {
        (Category::Digit, false) => "\\d",
        (Category::NotDigit, false) => "\\D",
        (Category::Space, false) => "[\\s\\x{1C}-\\x{1F}]",
        (Category::NotSpace, false) => "[^\\s\\x{1C}-\\x{1F}]",
        (Category::Word, false) => "[\\p{L}\\p{N}_]",
        (Category::NotWord, false) => "[^\\p{L}\\p{N}_]",
        (Category::Digit, true) => "[0-9]",
        (Category::NotDigit, true) => "[^0-9]",
        (Category::Space, true) => "[\\x{9}-\\x{D}\\x{20}]",
        (Category::NotSpace, true) => "[^\\x{9}-\\x{D}\\x{20}]",
        (Category::Word, true) => "[0-9A-Za-z_]",
        (Category::NotWord, true) => "[^0-9A-Za-z_]",
    }
}

/// A category inside a class: the set's members, or a nested negated class.
fn category_member(category: Category, ascii: bool) -> &'static str {
    match (category, ascii) {
        (Category::Digit, false) => "\\d",
        (Category::NotDigit, false) => "\\D",
        (Category::Space, false) => UNICODE_SPACE,
        (Category::NotSpace, false) => "[^\\s\\x{1C}-\\x{1F}]",
        (Category::Word, false) => UNICODE_WORD,
        (Category::NotWord, false) => "[^\\p{L}\\p{N}_]",
        (Category::Digit, true) => "0-9",
        (Category::NotDigit, true) => "[^0-9]",
        (Category::Space, true) => ASCII_SPACE,
        (Category::NotSpace, true) => "[^\\x{9}-\\x{D}\\x{20}]",
        (Category::Word, true) => ASCII_WORD,
        (Category::NotWord, true) => "[^0-9A-Za-z_]",
    }
}

/// Writes `c` so that it can only mean itself: ASCII letters and digits and non-ASCII
/// characters as they are, everything else as `\x{…}`.
fn push_char(out: &mut String, c: char) {
    if c.is_ascii_alphanumeric() || !c.is_ascii() {
        out.push(c);
    } else {
        let _ = write!(out, "\\x{{{:X}}}", c as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(pattern: &str, flags: u32) -> Translation {
        let chars: Vec<char> = pattern.chars().collect();
        translate(&chars, false, flags).unwrap_or_else(|e| panic!("{pattern}: {e:?}"))
    }

    fn render(pattern: &str, flags: u32) -> String {
        tr(pattern, flags).render(Shape::Search, Dollar::End)
    }

    fn render_bytes(pattern: &[u8], flags: u32) -> String {
        let chars: Vec<char> = pattern.iter().map(|&b| char::from(b)).collect();
        translate(&chars, true, flags)
            .unwrap()
            .render(Shape::Search, Dollar::End)
    }

    fn error(pattern: &str, flags: u32) -> PatternError {
        let chars: Vec<char> = pattern.chars().collect();
        match translate(&chars, false, flags) {
            Ok(t) => panic!(
                "{pattern} translated to {}",
                t.render(Shape::Search, Dollar::End)
            ),
            Err(e) => e,
        }
    }

    #[test]
    fn groups_become_numbered() {
        let t = tr(r"(?P<year>\d+)-(?P<m>\d+)(?P=year)\2(?:x)", 0);
        assert_eq!(t.groups, 2);
        assert_eq!(t.names, vec![("year".into(), 1), ("m".into(), 2)]);
        assert_eq!(
            t.render(Shape::Search, Dollar::End),
            r"(\d+)\x{2D}(\d+)(?:\1)(?:\2)(?:x)"
        );
        assert_eq!(render(r"(a)\1(?i:\1)", 0), r"(a)(?:\1)(?:(?i:\1))");
        assert_eq!(render("(?(1)a|b)(x)", 0), "(?(1)a|b)(x)");
        assert_eq!(render("(?P<n>a)(?(n)b)", 0), "(a)(?(1)b|)");
        assert_eq!(
            render("(?>a|ab)(?=c)(?!d)(?<=e)(?<!f)", 0),
            "(?>a|ab)(?=c)(?!d)(?<=e)(?<!f)"
        );
    }

    #[test]
    fn anchors_say_what_python_means() {
        assert_eq!(render(r"^a$\A\Z", 0), r"\Aa\z\A\z");
        assert_eq!(
            tr("a$", 0).render(Shape::Search, Dollar::BeforeFinalNewline),
            r"a(?=\n?\z)"
        );
        assert_eq!(render("^a$", flag::MULTILINE), "(?m:^)a(?m:$)");
        assert_eq!(render("(?m)^a", 0), "(?m:^)a");
        assert_eq!(tr("a|b", 0).render(Shape::Full, Dollar::End), r"(?:a|b)\z");
        assert!(tr("a$", 0).has_dollar);
        assert!(!tr("a$", flag::MULTILINE).has_dollar);
        assert_eq!(render(r"\b\B", 0), r"\b\B");
        assert!(render(r"\b", flag::ASCII).contains("(?<=[0-9A-Za-z_])"));
    }

    #[test]
    fn dot_and_case() {
        assert_eq!(render(".", 0), ".");
        assert_eq!(render(".", flag::DOTALL), "(?s:.)");
        assert_eq!(render("(?s:.).", 0), "(?:(?s:.)).");
        assert_eq!(render("ab1c", flag::IGNORECASE), "(?i:ab)1(?i:c)");
        assert_eq!(render("é(?-i:x)", flag::IGNORECASE), "(?i:é)(?:x)");
        // ASCII semantics fold ASCII letters only.
        assert_eq!(render("aé", flag::IGNORECASE | flag::ASCII), "[aA]é");
        assert_eq!(
            render("[b-dé]", flag::IGNORECASE | flag::ASCII),
            "[b-dB-Dé]"
        );
        assert_eq!(render("[^a]", flag::IGNORECASE), "(?i:[^a])");
        assert_eq!(render(r"[\d]", flag::IGNORECASE), r"\d");
    }

    #[test]
    fn categories_are_cpythons() {
        assert_eq!(render(r"\d\w\s", 0), r"\d[\p{L}\p{N}_][\s\x{1C}-\x{1F}]");
        assert_eq!(render(r"\D\W\S", 0), r"\D[^\p{L}\p{N}_][^\s\x{1C}-\x{1F}]");
        assert_eq!(
            render(r"\d\w\s", flag::ASCII),
            r"[0-9][0-9A-Za-z_][\x{9}-\x{D}\x{20}]"
        );
        assert_eq!(render(r"[\w-]", 0), r"[\p{L}\p{N}_\x{2D}]");
        assert_eq!(render(r"[^\W\d]", 0), r"[^[^\p{L}\p{N}_]\d]");
        assert_eq!(render(r"(?a:\w)\w", 0), r"(?:[0-9A-Za-z_])[\p{L}\p{N}_]");
    }

    #[test]
    fn nothing_special_to_regex_leaks_through() {
        // `[` in a class, `&&`, `--`, `~~`, whitespace and `#` are all literal in Python.
        assert_eq!(
            render("[[&&~~ #]", 0),
            r"[\x{5B}\x{26}\x{26}\x{7E}\x{7E}\x{20}\x{23}]"
        );
        // As in CPython, `&--` is the range from `&` to `-`.
        assert_eq!(render("[&--]", 0), r"[\x{26}-\x{2D}]");
        assert_eq!(render(r"[]a]", 0), r"[\x{5D}a]");
        assert_eq!(render(r"[\]\\\b]", 0), r"[\x{5D}\x{5C}\x{8}]");
        assert_eq!(
            render("a{,2}x{1,}y{2}z{}{", 0),
            r"a{0,2}x+y{2}z\x{7B}\x{7D}\x{7B}"
        );
        assert_eq!(render("a{1,2", 0), r"a\x{7B}1\x{2C}2");
        assert_eq!(
            render(r"\x41\u00e9\U0001F600\N{EM DASH}\0\101\n", 0),
            "Aé😀—\\x{0}A\\x{A}"
        );
    }

    #[test]
    fn verbose_is_handled_here() {
        assert_eq!(render("a b # c\n d", flag::VERBOSE), "abd");
        assert_eq!(
            render("[ a] \\  \\#", flag::VERBOSE),
            r"[\x{20}a]\x{20}\x{23}"
        );
        assert_eq!(render("(?x) a (?-x: b )", 0), r"a(?:\x{20}b\x{20})");
        assert_eq!(render("a +", flag::VERBOSE), "a+");
    }

    #[test]
    fn repeats() {
        assert_eq!(render("a*?b+?c??d{2,3}?", 0), "a*?b+?c??d{2,3}?");
        assert_eq!(render("a*+b++", 0), "(?>a*)(?>b+)");
        assert_eq!(render("(?:ab)*", 0), "(?:ab)*");
        assert_eq!(render(r"(a)\1*", 0), r"(a)(?:\1)*");
        // fancy-regex refuses to repeat what is zero-width.
        assert_eq!(render("(?=a)*", 0), "(?:(?=a)|)");
        assert_eq!(render("(?=a)+", 0), "(?:(?=a))");
        assert_eq!(render("(?:)*a", 0), "a");
    }

    #[test]
    fn bytes_patterns_use_ascii_semantics() {
        assert_eq!(render_bytes(b"[\x80-\xff]", 0), "[\u{80}-\u{ff}]");
        assert_eq!(render_bytes(br"\w", 0), "[0-9A-Za-z_]");
        assert_eq!(render_bytes(b"(?i)a\xe9", 0), "[aA]\u{e9}");
        let chars: Vec<char> = r"\u0041".chars().collect();
        let e = translate(&chars, true, 0).unwrap_err();
        assert_eq!((e.message.as_str(), e.pos), ("bad escape \\u", Some(0)));
    }

    #[test]
    fn flags_as_cpython_reports_them() {
        assert_eq!(tr("a", 0).flags, flag::UNICODE);
        assert_eq!(tr("(?i)a", 0).flags, flag::UNICODE | flag::IGNORECASE);
        assert_eq!(tr("(?a)a", 0).flags, flag::ASCII);
        let chars = ['a'];
        assert_eq!(translate(&chars, true, 0).unwrap().flags, 0);
        assert_eq!(error("a", flag::LOCALE).kind, ErrorKind::Value);
        assert_eq!(error("(?a)a", flag::UNICODE).kind, ErrorKind::Value);
        assert_eq!(error("a{4294967295}", 0).kind, ErrorKind::Overflow);
    }

    #[test]
    fn errors_match_cpython() {
        // (pattern, message, position) as CPython 3.11 reports them.
        let cases: &[(&str, &str, Option<usize>)] = &[
            ("[]", "unterminated character set", Some(0)),
            (r"[\d-z]", r"bad character range \d-z", Some(1)),
            ("[z-a]", "bad character range z-a", Some(1)),
            ("a{2,1}", "min repeat greater than max repeat", Some(2)),
            ("*a", "nothing to repeat", Some(0)),
            ("a**", "multiple repeat", Some(2)),
            ("^*", "nothing to repeat", Some(1)),
            ("(?i", "missing -, : or )", Some(3)),
            ("(?<a>b)", "unknown extension ?<a", Some(1)),
            ("(?P<1>a)", "bad character in group name '1'", Some(4)),
            (
                "(?P<a>x)(?P<a>y)",
                "redefinition of group name 'a' as group 2; was group 1",
                Some(12),
            ),
            ("(a)(?P=x)", "unknown group name 'x'", Some(7)),
            (r"\1(a)", "invalid group reference 1", Some(1)),
            (r"(a\1)", "cannot refer to an open group", Some(2)),
            ("(?(2)a)", "invalid group reference 2", Some(3)),
            (
                "(a)(?(1)b|c|d)",
                "conditional backref with more than two branches",
                Some(11),
            ),
            ("a)", "unbalanced parenthesis", Some(1)),
            ("(a", "missing ), unterminated subpattern", Some(0)),
            (r"\q", r"bad escape \q", Some(0)),
            (r"\x1", r"incomplete escape \x1", Some(0)),
            (r"\N{foo}", "undefined character name 'foo'", Some(0)),
            (
                "a(?i)b",
                "global flags not at the start of the expression",
                Some(1),
            ),
            (
                "(?<=a|bc)",
                "look-behind requires fixed-width pattern",
                None,
            ),
            (
                "(?i-i:a)",
                "bad inline flags: flag turned on and off",
                Some(5),
            ),
            (
                "(?-a:x)",
                "bad inline flags: cannot turn off flags 'a', 'u' and 'L'",
                Some(4),
            ),
            (
                "(?au)x",
                "bad inline flags: flags 'a', 'u' and 'L' are incompatible",
                Some(4),
            ),
            ("(?x)a#b\n(", "missing ), unterminated subpattern", Some(8)),
            (
                r"\400",
                r"octal escape value \400 outside of range 0-0o377",
                Some(0),
            ),
            (r"[\8]", r"bad escape \8", Some(1)),
            ("a\\", "bad escape (end of pattern)", Some(1)),
            (
                r"(?<=(a)\1)",
                "cannot refer to group defined in the same lookbehind subpattern",
                Some(9),
            ),
        ];
        for &(pattern, message, pos) in cases {
            let e = error(pattern, 0);
            assert_eq!(
                (e.kind, e.message.as_str(), e.pos),
                (ErrorKind::Syntax, message, pos),
                "{pattern}"
            );
        }
        let deep = "(".repeat(MAX_NESTING + 1) + &")".repeat(MAX_NESTING + 1);
        assert!(error(&deep, 0).message.contains("nested"));
    }

    #[test]
    fn what_the_engine_needs_to_know() {
        let t = tr(r"\w+", 0);
        assert!(!t.backtracks && t.reach.is_none());
        let t = tr(r"(\w)\1", 0);
        assert!(t.backtracks);
        assert_eq!(t.reach, Some(2));
        assert_eq!(tr(r"(?<=ab)c(?=de)", 0).reach, Some(5));
        assert_eq!(tr(r"(?=[^!]*!)\w", 0).reach, None);
        assert!(tr("(?=a)", 0).backtracks);
        assert!(tr("a++", 0).backtracks);
        assert!(!tr("a+", 0).backtracks);
        assert_eq!(tr("ab|c{2,5}", 0).reach, Some(5));
        let t = tr("((a)b)(c)", 0);
        assert_eq!(t.parents, vec![0, 0, 1, 0]);
        assert!(tr("(?:(?=.*a)a)+", 0).rescans);
        assert!(tr("(?:x(?!.*a))*", 0).rescans);
        assert!(!tr("(?=.*a)a+", 0).rescans);
        assert!(!tr("(?:(?!abc).)*", 0).rescans);
        assert!(!tr("(?:(?<=a)b)*", 0).rescans);
    }
}
