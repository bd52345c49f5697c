//! Replacement templates for `sub`, `subn` and `Match.expand`, read as CPython 3.11's
//! `re._parser.parse_template` reads them: `\1`…`\99` and `\g<1>`/`\g<name>` insert a group
//! (an unmatched group inserts nothing), `\0` and three-digit escapes are octal, `\n` and the
//! other single-letter escapes of patterns stand for their character, an unknown escape of an
//! ASCII letter is an error and any other unknown escape is kept as written (backslash
//! included).

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Text copied as is (for a bytes template, its bytes as Latin-1 characters).
    Literal(String),
    /// The text group `n` matched.
    Group(usize),
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TemplateError {
    /// A syntax error (`re.error`), at a code point offset into the template.
    #[error("{message}")]
    Syntax { message: String, pos: usize },
    /// `\g<name>` names no group (CPython raises `IndexError` for this one).
    #[error("unknown group name {0}")]
    UnknownName(String),
}

/// Parses `template` for a pattern with `groups` groups, `group_index` mapping names to numbers.
pub(crate) fn parse(
    template: &[char],
    groups: usize,
    group_index: impl Fn(&str) -> Option<usize>,
) -> Result<Vec<Piece>, TemplateError> {
    let mut reader = Reader {
        src: template,
        pos: 0,
    };
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut add_group = |index: usize, offset: usize, pos: usize, literal: &mut String| {
        if index > groups {
            return Err(TemplateError::Syntax {
                message: format!("invalid group reference {index}"),
                pos: pos - offset,
            });
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(literal)));
        }
        pieces.push(Piece::Group(index));
        Ok(())
    };
    while let Some(c) = reader.next()? {
        let Some(e) = c.escaped else {
            literal.push(c.char);
            continue;
        };
        match e {
            'g' => {
                if reader.peek_plain() != Some('<') {
                    return Err(reader.error("missing <", 0));
                }
                reader.pos += 1;
                let name = reader.until('>')?;
                let offset = name.chars().count() + 1;
                let index = if crate::regex::translate::is_identifier(&name) {
                    group_index(&name).ok_or_else(|| {
                        TemplateError::UnknownName(crate::regex::translate::py_repr(&name))
                    })?
                } else if !name.is_empty() && name.chars().all(|c| c.is_ascii_digit()) {
                    name.parse().unwrap_or(usize::MAX)
                } else {
                    return Err(reader.error(
                        format!(
                            "bad character in group name {}",
                            crate::regex::translate::py_repr(&name)
                        ),
                        offset,
                    ));
                };
                add_group(index, offset, reader.pos, &mut literal)?;
            }
            '0' => {
                let mut value = 0;
                for _ in 0..2 {
                    match reader.peek_plain().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            value = value * 8 + d;
                            reader.pos += 1;
                        }
                        None => break,
                    }
                }
                literal.push(char::from((value & 0xff) as u8));
            }
            '1'..='9' => {
                let mut digits = e.to_string();
                let mut octal = None;
                if let Some(d) = reader.peek_plain().filter(char::is_ascii_digit) {
                    digits.push(d);
                    reader.pos += 1;
                    if let Some(d3) = reader.peek_plain().filter(|d3| d3.is_digit(8))
                        && e.is_digit(8)
                        && d.is_digit(8)
                    {
                        digits.push(d3);
                        reader.pos += 1;
                        let value = u32::from_str_radix(&digits, 8).unwrap_or(u32::MAX);
                        if value > 0o377 {
                            return Err(reader.error(
                                format!("octal escape value \\{digits} outside of range 0-0o377"),
                                digits.len() + 1,
                            ));
                        }
                        octal = char::from_u32(value);
                    }
                }
                match octal {
                    Some(c) => literal.push(c),
                    None => add_group(
                        digits.parse().unwrap_or(usize::MAX),
                        digits.len(),
                        reader.pos,
                        &mut literal,
                    )?,
                }
            }
            'a' => literal.push('\u{7}'),
            'b' => literal.push('\u{8}'),
            'f' => literal.push('\u{c}'),
            'n' => literal.push('\n'),
            'r' => literal.push('\r'),
            't' => literal.push('\t'),
            'v' => literal.push('\u{b}'),
            '\\' => literal.push('\\'),
            e if e.is_ascii_alphabetic() => {
                return Err(reader.error(format!("bad escape \\{e}"), 2));
            }
            e => {
                literal.push('\\');
                literal.push(e);
            }
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

struct Reader<'t> {
    src: &'t [char],
    pos: usize,
}

struct Token {
    char: char,
    /// For `\c`: `c`.
    escaped: Option<char>,
}

impl Reader<'_> {
    fn next(&mut self) -> Result<Option<Token>, TemplateError> {
        match self.src.get(self.pos) {
            None => Ok(None),
            Some('\\') => match self.src.get(self.pos + 1) {
                None => Err(TemplateError::Syntax {
                    message: "bad escape (end of pattern)".into(),
                    pos: self.src.len() - 1,
                }),
                Some(&c) => {
                    self.pos += 2;
                    Ok(Some(Token {
                        char: '\\',
                        escaped: Some(c),
                    }))
                }
            },
            Some(&c) => {
                self.pos += 1;
                Ok(Some(Token {
                    char: c,
                    escaped: None,
                }))
            }
        }
    }

    /// The next character if it is not a backslash.
    fn peek_plain(&self) -> Option<char> {
        self.src.get(self.pos).copied().filter(|&c| c != '\\')
    }

    /// Characters up to `terminator` (consumed), for `\g<…>`.
    fn until(&mut self, terminator: char) -> Result<String, TemplateError> {
        let mut taken = String::new();
        loop {
            let Some(token) = self.next()? else {
                return Err(if taken.is_empty() {
                    self.error("missing group name", 0)
                } else {
                    self.error(
                        format!("missing {terminator}, unterminated name"),
                        taken.chars().count(),
                    )
                });
            };
            match token.escaped {
                None if token.char == terminator => {
                    if taken.is_empty() {
                        return Err(self.error("missing group name", 1));
                    }
                    return Ok(taken);
                }
                None => taken.push(token.char),
                Some(c) => {
                    taken.push('\\');
                    taken.push(c);
                }
            }
        }
    }

    fn error(&self, message: impl Into<String>, offset: usize) -> TemplateError {
        TemplateError::Syntax {
            message: message.into(),
            pos: self.pos.saturating_sub(offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(template: &str, groups: usize) -> Result<Vec<Piece>, TemplateError> {
        let chars: Vec<char> = template.chars().collect();
        parse(&chars, groups, |name| (name == "word").then_some(1))
    }

    fn lit(s: &str) -> Piece {
        Piece::Literal(s.into())
    }

    #[test]
    fn groups_and_escapes() {
        assert_eq!(
            parse_str(r"<\1|\g<word>|\g<0>>\n\t\\", 1).unwrap(),
            vec![
                lit("<"),
                Piece::Group(1),
                lit("|"),
                Piece::Group(1),
                lit("|"),
                Piece::Group(0),
                lit(">\n\t\\"),
            ]
        );
        // Unknown escapes of non-letters keep their backslash; octal escapes.
        assert_eq!(
            parse_str(r"\.\0\101\08", 0).unwrap(),
            vec![lit("\\.\0A\08")]
        );
        assert_eq!(parse_str("plain", 0).unwrap(), vec![lit("plain")]);
    }

    #[test]
    fn two_digits_then_a_group() {
        assert_eq!(parse_str(r"\10", 10).unwrap(), vec![Piece::Group(10)]);
        assert_eq!(
            parse_str(r"\18", 1).unwrap_err(),
            TemplateError::Syntax {
                message: "invalid group reference 18".into(),
                pos: 1
            }
        );
    }

    #[test]
    fn errors_match_cpython() {
        let syntax = |t: &str, groups| match parse_str(t, groups) {
            Err(TemplateError::Syntax { message, pos }) => (message, pos),
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(syntax(r"\2", 1), ("invalid group reference 2".into(), 1));
        assert_eq!(syntax(r"\g<2>", 1), ("invalid group reference 2".into(), 3));
        assert_eq!(syntax(r"\g", 1), ("missing <".into(), 2));
        assert_eq!(syntax(r"\g<", 1), ("missing group name".into(), 3));
        assert_eq!(
            syntax(r"\g<1", 1),
            ("missing >, unterminated name".into(), 3)
        );
        assert_eq!(
            syntax(r"\g<a-b>", 1),
            ("bad character in group name 'a-b'".into(), 3)
        );
        assert_eq!(syntax(r"\q", 1), ("bad escape \\q".into(), 0));
        assert_eq!(syntax("a\\", 1), ("bad escape (end of pattern)".into(), 1));
        assert_eq!(
            syntax(r"\777", 1),
            (
                "octal escape value \\777 outside of range 0-0o377".into(),
                0
            )
        );
        assert_eq!(
            parse_str(r"\g<nope>", 1),
            Err(TemplateError::UnknownName("'nope'".into()))
        );
    }
}
