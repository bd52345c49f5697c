//! `_walle_re`: the native half of the task interpreters' `re` module (`re.py` is the other).
//!
//! * `compile(pattern, flags, error)` translates and compiles a str or bytes pattern into a
//!   `Regex`; pattern errors are raised as `error(msg, pattern, pos)` (the `re.error` class the
//!   Python half passes in, so nothing here is shared between interpreters), bad flag
//!   combinations as `ValueError`, huge repeat counts as `OverflowError`.
//! * `Regex` searches: `search(string, pos, endpos, how)` (`how`: 0 search, 1 match,
//!   2 fullmatch), `scanner(string, pos, endpos)` for `finditer`, `findall`, `split`, `sub` and
//!   `template` (a parsed replacement template, for `Match.expand`).
//! * a match is handed to Python as one flat tuple, `(pos, endpos, lastindex, start0, end0,
//!   start1, end1, …)`, in Python indices, `-1` for a group that did not match.
//!
//! The loops over many matches (`findall`, `split`, `sub`, the scanner) call
//! [`crate::native::check`] before every search, so the task's deadline and memory budget stop
//! them like Python code; [`super::engine`] bounds each search itself.

use rustpython_vm::builtins::PyModuleDef;

/// The module's name in the interpreter's module table.
pub(crate) const NAME: &str = "_walle_re";

/// The module's definition, for the sandbox's module table.
pub(crate) fn module_def(ctx: &rustpython_vm::Context) -> &'static PyModuleDef {
    _walle_re::module_def(ctx)
}

#[rustpython_vm::pymodule]
mod _walle_re {
    use std::borrow::Cow;

    use rustpython_vm::builtins::{
        PyBaseExceptionRef, PyBytes, PyListRef, PyStr, PyTupleRef, PyTypeRef,
    };
    use rustpython_vm::common::lock::PyMutex;
    use rustpython_vm::common::wtf8::{Wtf8, Wtf8Buf};
    use rustpython_vm::protocol::PyBuffer;
    use rustpython_vm::{
        AsObject, PyObject, PyObjectRef, PyPayload, PyRef, PyResult, TryFromBorrowedObject,
        VirtualMachine, pyclass,
    };

    use crate::regex::engine::{Anchoring, Compiled, EngineError, SearchError, Spans, Successive};
    use crate::regex::haystack::{Cursor, Haystack, latin1_bytes, latin1_string};
    use crate::regex::template::{self, Piece, TemplateError};
    use crate::regex::translate::{ErrorKind, PatternError, translate};

    /// Translates and compiles a pattern; `error` is the class pattern errors are raised as.
    #[pyfunction]
    fn compile(
        pattern: PyObjectRef,
        flags: u32,
        error: PyTypeRef,
        vm: &VirtualMachine,
    ) -> PyResult<Regex> {
        let (chars, is_bytes): (Vec<char>, bool) =
            if let Some(text) = pattern.downcast_ref::<PyStr>() {
                let chars = text
                    .as_wtf8()
                    .code_points()
                    .map(|c| c.to_char_lossy())
                    .collect();
                (chars, false)
            } else if let Some(bytes) = pattern.downcast_ref::<PyBytes>() {
                (
                    bytes.as_bytes().iter().map(|&b| char::from(b)).collect(),
                    true,
                )
            } else {
                return Err(vm.new_type_error("first argument must be string or compiled pattern"));
            };
        let translation = translate(&chars, is_bytes, flags)
            .map_err(|e| pattern_error(&e, &pattern, &error, vm))?;
        let compiled = Compiled::new(translation)
            .map_err(|e| raise(&error, e.to_string(), pattern.clone(), vm.ctx.none(), vm))?;
        Ok(Regex {
            compiled,
            is_bytes,
            error,
        })
    }

    fn pattern_error(
        e: &PatternError,
        pattern: &PyObjectRef,
        error: &PyTypeRef,
        vm: &VirtualMachine,
    ) -> PyBaseExceptionRef {
        match e.kind {
            ErrorKind::Syntax => {
                let pos = e
                    .pos
                    .map_or_else(|| vm.ctx.none(), |pos| vm.ctx.new_int(pos).into());
                raise(error, e.message.clone(), pattern.clone(), pos, vm)
            }
            ErrorKind::Value => vm.new_value_error(e.message.clone()),
            ErrorKind::Overflow => vm.new_overflow_error(e.message.clone()),
        }
    }

    /// `error(message, pattern, pos)` as an exception to raise.
    fn raise(
        error: &PyTypeRef,
        message: String,
        pattern: PyObjectRef,
        pos: PyObjectRef,
        vm: &VirtualMachine,
    ) -> PyBaseExceptionRef {
        let made = error
            .as_object()
            .call((vm.ctx.new_str(message), pattern, pos), vm);
        match made.map(|exc| exc.downcast::<rustpython_vm::builtins::PyBaseException>()) {
            Ok(Ok(exc)) => exc,
            Ok(Err(_)) => vm.new_type_error("the re error class did not make an exception"),
            Err(exc) => exc,
        }
    }

    /// A compiled pattern.
    #[pyattr]
    #[pyclass(module = "_walle_re", name = "Regex")]
    #[derive(Debug, PyPayload)]
    struct Regex {
        compiled: Compiled,
        is_bytes: bool,
        /// The class template errors are raised as.
        error: PyTypeRef,
    }

    /// The string being searched, as Python gave it and as the engine sees it.
    struct Subject<'a> {
        /// The text the engine searches (see `haystack`).
        text: Cow<'a, str>,
        ascii: bool,
        /// For a str, the original (slices keep its lone surrogates); `None` for bytes.
        original: Option<&'a Wtf8>,
        /// Python's `len()` of the string.
        len: usize,
    }

    impl Subject<'_> {
        fn haystack(&self) -> Haystack<'_> {
            Haystack::new(&self.text, self.ascii)
        }

        /// The string's slice between two byte offsets of the text, as a Python object.
        fn slice(&self, start: usize, end: usize, vm: &VirtualMachine) -> PyObjectRef {
            match self.original {
                Some(original) => {
                    let part = original.get(start..end).unwrap_or_default();
                    vm.ctx.new_str(part).into()
                }
                None => {
                    let part = self.text.get(start..end).unwrap_or_default();
                    vm.ctx.new_bytes(latin1_bytes(part)).into()
                }
            }
        }

        /// The slice a group of `spans` matched, or `default` if it did not match.
        fn group(
            &self,
            spans: &Spans,
            group: usize,
            default: &PyObjectRef,
            vm: &VirtualMachine,
        ) -> PyObjectRef {
            match spans.get(group).copied().flatten() {
                Some((start, end)) => self.slice(start, end, vm),
                None => default.clone(),
            }
        }

        fn empty(&self, vm: &VirtualMachine) -> PyObjectRef {
            self.slice(0, 0, vm)
        }
    }

    /// Where a search runs: the clamped `pos`/`endpos` (Python indices) and the haystack cut at
    /// `endpos`, with the byte offset to start from.
    struct Bounds {
        pos: usize,
        endpos: usize,
        from: usize,
        end: usize,
    }

    impl Regex {
        fn subject<'a>(&self, string: &'a PyObject, vm: &VirtualMachine) -> PyResult<Subject<'a>> {
            if let Some(text) = string.downcast_ref::<PyStr>() {
                if self.is_bytes {
                    return Err(
                        vm.new_type_error("cannot use a bytes pattern on a string-like object")
                    );
                }
                let wtf8 = text.as_wtf8();
                let lossy = wtf8.to_string_lossy();
                if lossy.len() != wtf8.len() {
                    return Err(vm.new_runtime_error("a string's text changed length when decoded"));
                }
                return Ok(Subject {
                    text: lossy,
                    ascii: text.isascii(),
                    original: Some(wtf8),
                    len: text.char_len(),
                });
            }
            let Ok(buffer) = PyBuffer::try_from_borrowed_object(vm, string) else {
                return Err(vm.new_type_error(format!(
                    "expected string or bytes-like object, got '{}'",
                    string.class().name()
                )));
            };
            if !self.is_bytes {
                return Err(vm.new_type_error("cannot use a string pattern on a bytes-like object"));
            }
            let bytes = buffer.contiguous_or_collect(<[u8]>::to_vec);
            let len = bytes.len();
            let (text, ascii) = latin1_string(bytes);
            Ok(Subject {
                text: Cow::Owned(text),
                ascii,
                original: None,
                len,
            })
        }

        /// CPython's clamping of `pos` and `endpos`, and their byte offsets.
        fn bounds(subject: &Subject<'_>, pos: isize, endpos: isize, cursor: &mut Cursor) -> Bounds {
            let clamp = |i: isize| usize::try_from(i).unwrap_or(0).min(subject.len);
            let (pos, endpos) = (clamp(pos), clamp(endpos));
            let hay = subject.haystack();
            let from = hay.byte_at(cursor, pos);
            // The cursor stays at `pos`, where the matches start; the end of the string (the
            // usual `endpos`) needs no walk.
            let end = if endpos == subject.len {
                subject.text.len()
            } else {
                hay.byte_at(&mut cursor.clone(), endpos)
            };
            Bounds {
                pos,
                endpos,
                from,
                end,
            }
        }

        /// A match as the flat tuple the Python half reads.
        fn found(
            &self,
            spans: &Spans,
            hay: Haystack<'_>,
            cursor: &mut Cursor,
            bounds: &Bounds,
            vm: &VirtualMachine,
        ) -> PyTupleRef {
            let mut items: Vec<PyObjectRef> = Vec::with_capacity(3 + 2 * spans.len());
            items.push(vm.ctx.new_int(bounds.pos).into());
            items.push(vm.ctx.new_int(bounds.endpos).into());
            items.push(match self.compiled.last_index(spans) {
                Some(index) => vm.ctx.new_int(index).into(),
                None => vm.ctx.none(),
            });
            for span in spans {
                let (start, end) = match *span {
                    Some((start, end)) => {
                        let start = hay.index_at(cursor, start);
                        (start as isize, hay.index_at(cursor, end) as isize)
                    }
                    None => (-1, -1),
                };
                items.push(vm.ctx.new_int(start).into());
                items.push(vm.ctx.new_int(end).into());
            }
            vm.ctx.new_tuple(items)
        }

        fn engine_error(
            &self,
            e: SearchError<PyBaseExceptionRef>,
            vm: &VirtualMachine,
        ) -> PyBaseExceptionRef {
            match e {
                SearchError::Stopped(exc) => exc,
                SearchError::Engine(
                    e @ (EngineError::Unsupported(_) | EngineError::TooLarge { .. }),
                ) => raise(&self.error, e.to_string(), vm.ctx.none(), vm.ctx.none(), vm),
                SearchError::Engine(e) => vm.new_runtime_error(e.to_string()),
            }
        }

        /// Calls `each` for every match from `bounds` on (CPython's successive searches), with the
        /// task's limits checked before each search; `each` returns whether to go on.
        fn each_match(
            &self,
            hay: Haystack<'_>,
            from: usize,
            vm: &VirtualMachine,
            mut each: impl FnMut(&Spans) -> PyResult<bool>,
        ) -> PyResult<()> {
            let mut successive = Successive::new(from);
            let mut check = || crate::native::check(vm);
            loop {
                check()?;
                let found = successive
                    .next(&self.compiled, hay, &mut check)
                    .map_err(|e| self.engine_error(e, vm))?;
                match found {
                    Some(spans) => {
                        if !each(&spans)? {
                            return Ok(());
                        }
                    }
                    None => return Ok(()),
                }
            }
        }
    }

    #[pyclass(flags(IMMUTABLETYPE, DISALLOW_INSTANTIATION))]
    impl Regex {
        /// Number of capturing groups.
        #[pygetset]
        fn groups(&self) -> usize {
            self.compiled.translation().groups
        }

        /// The pattern's flags, as `Pattern.flags` reports them.
        #[pygetset]
        fn flags(&self) -> u32 {
            self.compiled.translation().flags
        }

        /// `[(name, number), …]` in the order the groups were defined.
        #[pygetset]
        fn names(&self, vm: &VirtualMachine) -> PyListRef {
            let names = self
                .compiled
                .translation()
                .names
                .iter()
                .map(|(name, index)| vm.new_tuple((vm.ctx.new_str(name.as_str()), *index)).into())
                .collect();
            vm.ctx.new_list(names)
        }

        /// One search: `how` 0 is `search`, 1 `match`, 2 `fullmatch`.
        #[pymethod]
        fn search(
            &self,
            string: PyObjectRef,
            pos: isize,
            endpos: isize,
            how: u8,
            vm: &VirtualMachine,
        ) -> PyResult<Option<PyTupleRef>> {
            let anchoring = match how {
                0 => Anchoring::Search,
                1 => Anchoring::Start,
                _ => Anchoring::Full,
            };
            let subject = self.subject(&string, vm)?;
            let mut cursor = Cursor::default();
            let bounds = Self::bounds(&subject, pos, endpos, &mut cursor);
            if bounds.pos > bounds.endpos {
                return Ok(None);
            }
            let hay = subject.haystack().truncated(bounds.end);
            let mut check = || crate::native::check(vm);
            let found = self
                .compiled
                .search(hay, bounds.from, anchoring, false, &mut check)
                .map_err(|e| self.engine_error(e, vm))?;
            Ok(found.map(|spans| self.found(&spans, hay, &mut cursor, &bounds, vm)))
        }

        /// The matches `finditer` yields, one per `next()`.
        #[pymethod]
        fn scanner(
            zelf: PyRef<Self>,
            string: PyObjectRef,
            pos: isize,
            endpos: isize,
            vm: &VirtualMachine,
        ) -> PyResult<Scanner> {
            let subject = zelf.subject(&string, vm)?;
            let mut cursor = Cursor::default();
            let bounds = Self::bounds(&subject, pos, endpos, &mut cursor);
            // A str's text is borrowed again at each step; other texts are kept.
            let owned = match (&subject.text, subject.original) {
                (Cow::Borrowed(_), Some(_)) => None,
                (text, _) => Some(text.to_string()),
            };
            let ascii = subject.ascii;
            let done = bounds.pos > bounds.endpos;
            Ok(Scanner {
                regex: zelf,
                string,
                owned,
                ascii,
                state: PyMutex::new(ScanState {
                    successive: Successive::new(bounds.from),
                    cursor,
                    done,
                }),
                bounds,
            })
        }

        /// CPython's `findall`: the whole match, the one group, or a tuple of all groups (an
        /// unmatched group as an empty string), for each match.
        #[pymethod]
        fn findall(
            &self,
            string: PyObjectRef,
            pos: isize,
            endpos: isize,
            vm: &VirtualMachine,
        ) -> PyResult<PyListRef> {
            let subject = self.subject(&string, vm)?;
            let mut cursor = Cursor::default();
            let bounds = Self::bounds(&subject, pos, endpos, &mut cursor);
            let mut items = Vec::new();
            if bounds.pos <= bounds.endpos {
                let hay = subject.haystack().truncated(bounds.end);
                let empty = subject.empty(vm);
                let groups = self.compiled.translation().groups;
                self.each_match(hay, bounds.from, vm, |spans| {
                    items.push(match groups {
                        0 => subject.group(spans, 0, &empty, vm),
                        1 => subject.group(spans, 1, &empty, vm),
                        _ => vm
                            .ctx
                            .new_tuple(
                                (1..=groups)
                                    .map(|g| subject.group(spans, g, &empty, vm))
                                    .collect(),
                            )
                            .into(),
                    });
                    Ok(true)
                })?;
            }
            Ok(vm.ctx.new_list(items))
        }

        /// CPython's `split`: the pieces between matches, each match's groups after its piece
        /// (`None` for a group that did not match); at most `maxsplit` splits unless it is 0.
        #[pymethod]
        fn split(
            &self,
            string: PyObjectRef,
            maxsplit: isize,
            vm: &VirtualMachine,
        ) -> PyResult<PyListRef> {
            let subject = self.subject(&string, vm)?;
            let hay = subject.haystack();
            let none = vm.ctx.none();
            let groups = self.compiled.translation().groups;
            let mut items = Vec::new();
            let mut last = 0;
            let mut splits = 0isize;
            if maxsplit >= 0 {
                self.each_match(hay, 0, vm, |spans| {
                    let Some((start, end)) = spans.first().copied().flatten() else {
                        return Ok(false);
                    };
                    items.push(subject.slice(last, start, vm));
                    items.extend((1..=groups).map(|g| subject.group(spans, g, &none, vm)));
                    last = end;
                    splits += 1;
                    Ok(maxsplit == 0 || splits < maxsplit)
                })?;
            }
            items.push(subject.slice(last, subject.text.len(), vm));
            Ok(vm.ctx.new_list(items))
        }

        /// CPython's `sub`/`subn`: `repl` is a template or a callable, which gets
        /// `make_match(found)`; at most `count` replacements unless it is 0.
        #[pymethod]
        fn sub(
            &self,
            repl: PyObjectRef,
            string: PyObjectRef,
            count: isize,
            make_match: PyObjectRef,
            subn: bool,
            vm: &VirtualMachine,
        ) -> PyResult {
            let subject = self.subject(&string, vm)?;
            let replacement = self.replacement(&repl, vm)?;
            let hay = subject.haystack();
            let mut out = Output::new(&subject);
            let mut last = 0;
            let mut done = 0isize;
            let mut cursor = Cursor::default();
            let whole = Bounds {
                pos: 0,
                endpos: subject.len,
                from: 0,
                end: subject.text.len(),
            };
            // CPython builds a list of pieces and joins it at the end: a replacement of the wrong
            // type fails there, naming its index in the list, after every callable has run.
            let mut pieces = 0usize;
            let mut wrong: Option<String> = None;
            let mut refuse = |found: &str, pieces: usize| {
                if wrong.is_none() {
                    wrong = Some(format!(
                        "sequence item {pieces}: expected {}, {found} found",
                        if self.is_bytes {
                            "a bytes-like object"
                        } else {
                            "str instance"
                        }
                    ));
                }
            };
            if count >= 0 {
                self.each_match(hay, 0, vm, |spans| {
                    let Some((start, end)) = spans.first().copied().flatten() else {
                        return Ok(false);
                    };
                    if start > last {
                        out.push_slice(&subject, last, start);
                        pieces += 1;
                    }
                    match &replacement {
                        Replacement::Literal(text) => {
                            if let Err(found) = out.push_object(text, vm) {
                                refuse(&found, pieces);
                            }
                            pieces += 1;
                        }
                        Replacement::Template(template) => {
                            for piece in template {
                                match piece {
                                    Piece::Literal(text) => out.push_template_text(text),
                                    Piece::Group(g) => {
                                        if let Some((s, e)) = spans.get(*g).copied().flatten() {
                                            out.push_slice(&subject, s, e);
                                        }
                                    }
                                }
                            }
                            pieces += 1;
                        }
                        Replacement::WrongType(found) => {
                            refuse(found, pieces);
                            pieces += 1;
                        }
                        Replacement::Call(function) => {
                            let found = self.found(spans, hay, &mut cursor, &whole, vm);
                            let matched = make_match.call((found,), vm)?;
                            let text = function.call((matched,), vm)?;
                            if !vm.is_none(&text) {
                                if let Err(found) = out.push_object(&text, vm) {
                                    refuse(&found, pieces);
                                }
                                pieces += 1;
                            }
                        }
                    }
                    last = end;
                    done += 1;
                    Ok(count == 0 || done < count)
                })?;
            }
            if let Some(message) = wrong {
                return Err(vm.new_type_error(message));
            }
            out.push_slice(&subject, last, subject.text.len());
            let result = out.finish(vm);
            Ok(if subn {
                vm.new_tuple((result, done)).into()
            } else {
                result
            })
        }

        /// A replacement template parsed: a list of literal strings (bytes for a bytes
        /// template) and group numbers.
        #[pymethod]
        fn template(&self, repl: PyObjectRef, vm: &VirtualMachine) -> PyResult<PyListRef> {
            let text = template_text(&repl, vm)?;
            let pieces = self.parse_template(&text, &repl, vm)?;
            let items = pieces
                .into_iter()
                .map(|piece| match piece {
                    Piece::Group(g) => vm.ctx.new_int(g).into(),
                    Piece::Literal(literal) if text.is_bytes => {
                        vm.ctx.new_bytes(latin1_bytes(&literal)).into()
                    }
                    Piece::Literal(literal) => vm.ctx.new_str(literal).into(),
                })
                .collect();
            Ok(vm.ctx.new_list(items))
        }
    }

    /// What replaces each match in `sub`.
    enum Replacement {
        /// A template without backslashes, used as it is.
        Literal(PyObjectRef),
        Template(Vec<Piece>),
        Call(PyObjectRef),
        /// A template of the other string type (its type's name): fails once something matches.
        WrongType(String),
    }

    /// A template's characters (a bytes-like template's bytes as Latin-1).
    struct TemplateText {
        chars: Vec<char>,
        is_bytes: bool,
    }

    /// Reads a template, of either string type.
    fn template_text(repl: &PyObjectRef, vm: &VirtualMachine) -> PyResult<TemplateText> {
        if let Some(text) = repl.downcast_ref::<PyStr>() {
            let chars = text
                .as_wtf8()
                .code_points()
                .map(|c| c.to_char_lossy())
                .collect();
            return Ok(TemplateText {
                chars,
                is_bytes: false,
            });
        }
        match PyBuffer::try_from_borrowed_object(vm, repl) {
            Ok(buffer) => Ok(TemplateText {
                chars: buffer.contiguous_or_collect(|b| b.iter().map(|&b| char::from(b)).collect()),
                is_bytes: true,
            }),
            Err(_) => Err(vm.new_type_error(format!(
                "decoding to str: need a bytes-like object, {} found",
                repl.class().name()
            ))),
        }
    }

    impl Regex {
        fn replacement(&self, repl: &PyObjectRef, vm: &VirtualMachine) -> PyResult<Replacement> {
            if repl.is_callable() {
                return Ok(Replacement::Call(repl.clone()));
            }
            let text = template_text(repl, vm)?;
            let pieces = self.parse_template(&text, repl, vm)?;
            Ok(if text.is_bytes != self.is_bytes {
                Replacement::WrongType(repl.class().name().to_string())
            } else if text.chars.contains(&'\\') {
                Replacement::Template(pieces)
            } else {
                Replacement::Literal(repl.clone())
            })
        }

        fn parse_template(
            &self,
            text: &TemplateText,
            repl: &PyObjectRef,
            vm: &VirtualMachine,
        ) -> PyResult<Vec<Piece>> {
            let translation = self.compiled.translation();
            let lookup = |name: &str| {
                translation
                    .names
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, index)| *index)
            };
            template::parse(&text.chars, translation.groups, lookup).map_err(|e| match e {
                TemplateError::Syntax { message, pos } => raise(
                    &self.error,
                    message,
                    repl.clone(),
                    vm.ctx.new_int(pos).into(),
                    vm,
                ),
                TemplateError::UnknownName(_) => vm.new_index_error(e.to_string()),
            })
        }
    }

    /// The string `sub` builds.
    enum Output {
        Str(Wtf8Buf),
        Bytes(Vec<u8>),
    }

    impl Output {
        fn new(subject: &Subject<'_>) -> Output {
            match subject.original {
                Some(_) => Output::Str(Wtf8Buf::with_capacity(subject.text.len())),
                None => Output::Bytes(Vec::with_capacity(subject.text.len())),
            }
        }

        fn push_slice(&mut self, subject: &Subject<'_>, start: usize, end: usize) {
            match self {
                Output::Str(out) => {
                    if let Some(part) = subject.original.and_then(|o| o.get(start..end)) {
                        out.push_wtf8(part);
                    }
                }
                Output::Bytes(out) => {
                    if let Some(part) = subject.text.get(start..end) {
                        out.extend(latin1_bytes(part));
                    }
                }
            }
        }

        fn push_template_text(&mut self, text: &str) {
            match self {
                Output::Str(out) => out.push_str(text),
                Output::Bytes(out) => out.extend(latin1_bytes(text)),
            }
        }

        /// A replacement given as an object: a str for a str, a bytes-like object for bytes;
        /// otherwise the name of the type found.
        fn push_object(&mut self, obj: &PyObjectRef, vm: &VirtualMachine) -> Result<(), String> {
            let wrong = || obj.class().name().to_string();
            match self {
                Output::Str(out) => match obj.downcast_ref::<PyStr>() {
                    Some(text) => {
                        out.push_wtf8(text.as_wtf8());
                        Ok(())
                    }
                    None => Err(wrong()),
                },
                Output::Bytes(out) => {
                    if obj.downcast_ref::<PyStr>().is_some() {
                        return Err(wrong());
                    }
                    let Ok(buffer) = PyBuffer::try_from_borrowed_object(vm, obj) else {
                        return Err(wrong());
                    };
                    buffer.contiguous_or_collect(|b| out.extend_from_slice(b));
                    Ok(())
                }
            }
        }

        fn finish(self, vm: &VirtualMachine) -> PyObjectRef {
            match self {
                Output::Str(out) => vm.ctx.new_str(out).into(),
                Output::Bytes(out) => vm.ctx.new_bytes(out).into(),
            }
        }
    }

    /// The matches of one `finditer` call, searched one per `next()`.
    #[pyattr]
    #[pyclass(module = "_walle_re", name = "Scanner")]
    #[derive(Debug, PyPayload)]
    struct Scanner {
        regex: PyRef<Regex>,
        string: PyObjectRef,
        /// The text searched, unless it is the str's own (valid UTF-8) text.
        owned: Option<String>,
        ascii: bool,
        bounds: Bounds,
        state: PyMutex<ScanState>,
    }

    #[derive(Debug)]
    struct ScanState {
        successive: Successive,
        cursor: Cursor,
        done: bool,
    }

    impl std::fmt::Debug for Bounds {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}..{}", self.pos, self.endpos)
        }
    }

    #[pyclass(flags(IMMUTABLETYPE, DISALLOW_INSTANTIATION))]
    impl Scanner {
        /// The next match as a flat tuple, or `None` when there are no more.
        #[pymethod]
        fn next(&self, vm: &VirtualMachine) -> PyResult<Option<PyTupleRef>> {
            let text: &str = match &self.owned {
                Some(text) => text,
                None => match self.string.downcast_ref::<PyStr>().and_then(|s| s.to_str()) {
                    Some(text) => text,
                    None => return Err(vm.new_runtime_error("the scanned string is gone")),
                },
            };
            let hay = Haystack::new(text, self.ascii).truncated(self.bounds.end);
            let mut state = self.state.lock();
            if state.done {
                return Ok(None);
            }
            crate::native::check(vm)?;
            let mut check = || crate::native::check(vm);
            let found = state
                .successive
                .next(&self.regex.compiled, hay, &mut check)
                .map_err(|e| self.regex.engine_error(e, vm))?;
            match found {
                Some(spans) => Ok(Some(self.regex.found(
                    &spans,
                    hay,
                    &mut state.cursor,
                    &self.bounds,
                    vm,
                ))),
                None => {
                    state.done = true;
                    Ok(None)
                }
            }
        }
    }
}
