//! Checking a Python source's syntax without running it: what `walle task pack`, `publish` and
//! `validate` do to every script of a bundle, and what the VM reports when a script it loads does
//! not compile. The error says where, as editors do: `main.py:3:12: message`, then the line and a
//! caret under the column.

use rustpython_vm::compiler::{self, CompileError, CompileOpts, Mode};

/// A script that does not compile, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}:{column}: {message}\n{excerpt}")]
pub struct SyntaxError {
    pub path: String,
    /// 1-based line (0 when the compiler gave no position).
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    pub message: String,
    /// The offending line and a caret under the column.
    pub excerpt: String,
}

/// Compiles `source` (a module at `path` inside the bundle) and reports the first syntax error.
pub fn check_python(source: &str, path: &str) -> Result<(), SyntaxError> {
    compiler::compile(source, Mode::Exec, path, CompileOpts::default())
        .map(drop)
        .map_err(|e| located(&e, source, path))
}

/// A compiler error with its position and the source line it points at.
pub(crate) fn located(error: &CompileError, source: &str, path: &str) -> SyntaxError {
    let (line, column) = error.python_location();
    let text = line
        .checked_sub(1)
        .and_then(|at| source.lines().nth(at))
        .unwrap_or("");
    let excerpt = if text.is_empty() {
        String::new()
    } else {
        format!("    {text}\n    {}^", " ".repeat(column.saturating_sub(1)))
    };
    SyntaxError {
        path: path.to_owned(),
        line,
        column,
        message: error.to_string(),
        excerpt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_says_file_line_column_and_shows_the_line() {
        assert_eq!(
            check_python("def run(ctx):\n    return 1\n", "main.py"),
            Ok(())
        );
        let error =
            check_python("import walle\n\ndef run(ctx)\n    return 1\n", "main.py").unwrap_err();
        assert_eq!((error.path.as_str(), error.line), ("main.py", 3));
        assert!(error.column >= 12, "{error:?}");
        let text = error.to_string();
        assert!(text.starts_with("main.py:3:"), "{text}");
        assert!(text.contains("\n    def run(ctx)\n"), "{text}");
        assert!(text.trim_end().ends_with('^'), "{text}");
        let unclosed = check_python("x = [1,\n", "lib/util.py").unwrap_err();
        assert!(
            unclosed.to_string().starts_with("lib/util.py:1:"),
            "{unclosed}"
        );
    }
}
