//! `WHERE` clauses built from optional filters, with every value bound (never spliced into SQL).
//!
//! Column names and operators come from the code; values come from the caller and are bound as
//! `$1`, `$2`, … in the order the conditions were added.

use sqlx::any::AnyArguments;
use sqlx::query::Query;

/// A bound value.
#[derive(Debug, Clone)]
enum Value {
    Text(String),
    Int(i64),
}

/// Conditions joined with `AND`.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    clauses: Vec<String>,
    values: Vec<Value>,
}

impl Conditions {
    /// `column <op> value` for a text value (op is `=`, `<`, `>`, …, from the code).
    pub fn text(&mut self, column: &str, op: &str, value: impl Into<String>) -> &mut Self {
        self.values.push(Value::Text(value.into()));
        self.clauses
            .push(format!("{column} {op} ${}", self.values.len()));
        self
    }

    /// `column <op> value` for an integer value.
    pub fn int(&mut self, column: &str, op: &str, value: i64) -> &mut Self {
        self.values.push(Value::Int(value));
        self.clauses
            .push(format!("{column} {op} ${}", self.values.len()));
        self
    }

    /// `column` starts with `prefix` (LIKE with the prefix's wildcards escaped).
    pub fn starts_with(&mut self, column: &str, prefix: &str) -> &mut Self {
        self.values
            .push(Value::Text(format!("{}%", escape_like(prefix))));
        self.clauses
            .push(format!("{column} LIKE ${} ESCAPE '\\'", self.values.len()));
        self
    }

    /// `column` contains `text` (LIKE with the text's wildcards escaped).
    pub fn contains(&mut self, column: &str, text: &str) -> &mut Self {
        self.values
            .push(Value::Text(format!("%{}%", escape_like(text))));
        self.clauses
            .push(format!("{column} LIKE ${} ESCAPE '\\'", self.values.len()));
        self
    }

    /// Binds `value` at the end of the last raw clause, then closes it with `tail` (for a
    /// subquery: `raw("EXISTS (… = ")` then `text_tail(value, ")")`).
    pub fn text_tail(&mut self, value: impl Into<String>, tail: &str) -> &mut Self {
        self.values.push(Value::Text(value.into()));
        let placeholder = format!("${}{tail}", self.values.len());
        match self.clauses.last_mut() {
            Some(last) => last.push_str(&placeholder),
            None => self.clauses.push(placeholder),
        }
        self
    }

    /// A condition with no value, written by the code (e.g. `state IN ('active', 'paused')`).
    pub fn raw(&mut self, clause: &str) -> &mut Self {
        self.clauses.push(clause.to_owned());
        self
    }

    /// ` WHERE …` (or nothing), to splice after `FROM table`.
    pub fn where_clause(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// The placeholder the next bound value gets (for a `LIMIT` after the conditions).
    pub fn next_placeholder(&self) -> String {
        self.placeholder_after(0)
    }

    /// The placeholder `n` values after the next one (`LIMIT $k OFFSET $k+1`).
    pub fn placeholder_after(&self, n: usize) -> String {
        format!("${}", self.values.len() + 1 + n)
    }

    /// Binds the conditions' values to a query built from [`Conditions::where_clause`].
    pub fn bind<'q>(
        &self,
        mut query: Query<'q, sqlx::Any, AnyArguments>,
    ) -> Query<'q, sqlx::Any, AnyArguments> {
        for value in &self.values {
            query = match value {
                Value::Text(text) => query.bind(text.clone()),
                Value::Int(int) => query.bind(*int),
            };
        }
        query
    }
}

/// `text` with LIKE's wildcards and escape character escaped by `\\`.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_placeholders_in_order_and_escapes_wildcards() {
        let mut c = Conditions::default();
        c.text("task", "=", "t")
            .int("seq", "<", 5)
            .starts_with("id", "a%_");
        assert_eq!(
            c.where_clause(),
            " WHERE task = $1 AND seq < $2 AND id LIKE $3 ESCAPE '\\'"
        );
        assert_eq!(c.next_placeholder(), "$4");
        assert!(matches!(&c.values[2], Value::Text(t) if t == "a\\%\\_%"));
        assert_eq!(Conditions::default().where_clause(), "");
    }
}
