//! The `if:` expression language: a small, GitHub-Actions-style grammar.
//!
//! Conditions are parsed once, when the workflow set is validated (so a typo
//! fails `taskmaster validate`, not a run at 3 a.m.), and evaluated by the
//! engine each time a step becomes ready, against an [`ExprContext`].
//!
//! ```text
//! expr    := or
//! or      := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | compare
//! compare := primary ( ("==" | "!=" | "<" | "<=" | ">" | ">=") primary )?
//! primary := "(" expr ")" | literal | call | path
//! literal := 'single-quoted' ('' escapes a quote) | number | true | false | null
//! call    := name "(" [ expr ( "," expr )* ] ")"
//! path    := name ( "." name )*          e.g. steps.build.outcome, task.type
//! ```
//!
//! Functions: `success()`, `failure()`, `always()`, `cancelled()` (the run's
//! status, as in GitHub Actions), `contains(haystack, needle)` (substring, or
//! list membership), `startsWith(a, b)`, `endsWith(a, b)`.
//!
//! Semantics follow GitHub Actions where they can: string `==` ignores ASCII
//! case; values of different types are never equal; `<`/`>` compare two
//! numbers or two strings and are false otherwise; a missing path is `null`;
//! truthiness: `null`, `false`, `0`, `''` and `[]` are false. A condition
//! that calls none of the status functions is implicitly `success() && (…)`,
//! so a step after a failure is skipped unless its condition asks otherwise.

use std::fmt;

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A missing path or `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// Every number is an `f64`.
    Number(f64),
    /// A string.
    String(String),
    /// A list (e.g. `pr.labels`).
    List(Vec<Value>),
}

impl Value {
    /// Truthiness as described in the module docs.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => *n != 0.0 && !n.is_nan(),
            Value::String(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
        }
    }

    /// Converts JSON (objects become `null`: conditions compare scalars and lists).
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null | serde_json::Value::Object(_) => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
        }
    }

    fn loosely_equals(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::String(a), Value::String(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        }
    }
}

/// What a condition can see. The engine implements it over a run's state.
pub trait ExprContext {
    /// Resolves a dotted path such as `["steps", "build", "outcome"]` or
    /// `["task", "type"]`; [`Value::Null`] when absent.
    fn lookup(&self, path: &[String]) -> Value;
    /// True when a step this one depends on (directly or not) failed.
    fn dependency_failed(&self) -> bool;
    /// True when the run has been cancelled.
    fn cancelled(&self) -> bool;
}

/// A ready-made [`ExprContext`]: variables as one JSON object, plus run status.
///
/// `vars` holds `{"steps": {"build": {"outcome": "success"}}, "task": {...}, "event": {...}}`.
#[derive(Debug, Clone, Default)]
pub struct JsonContext {
    /// The variables, looked up by path.
    pub vars: serde_json::Value,
    /// See [`ExprContext::dependency_failed`].
    pub dependency_failed: bool,
    /// See [`ExprContext::cancelled`].
    pub cancelled: bool,
}

impl ExprContext for JsonContext {
    fn lookup(&self, path: &[String]) -> Value {
        let mut cur = &self.vars;
        for part in path {
            match cur.get(part) {
                Some(next) => cur = next,
                None => return Value::Null,
            }
        }
        Value::from_json(cur)
    }
    fn dependency_failed(&self) -> bool {
        self.dependency_failed
    }
    fn cancelled(&self) -> bool {
        self.cancelled
    }
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// The built-in functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `success()`: no dependency failed and the run is not cancelled.
    Success,
    /// `failure()`: some dependency failed.
    Failure,
    /// `always()`: true.
    Always,
    /// `cancelled()`: the run was cancelled.
    Cancelled,
    /// `contains(haystack, needle)`.
    Contains,
    /// `startsWith(text, prefix)`.
    StartsWith,
    /// `endsWith(text, suffix)`.
    EndsWith,
}

impl Function {
    fn lookup(name: &str) -> Option<(Function, usize)> {
        Some(match name {
            "success" => (Function::Success, 0),
            "failure" => (Function::Failure, 0),
            "always" => (Function::Always, 0),
            "cancelled" => (Function::Cancelled, 0),
            "contains" => (Function::Contains, 2),
            "startsWith" => (Function::StartsWith, 2),
            "endsWith" => (Function::EndsWith, 2),
            _ => return None,
        })
    }

    fn is_status(self) -> bool {
        matches!(
            self,
            Function::Success | Function::Failure | Function::Always | Function::Cancelled
        )
    }
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal.
    Literal(Value),
    /// A dotted path; `offset` is its byte offset in the source text.
    Path {
        /// The parts, e.g. `["steps", "build", "outcome"]`.
        parts: Vec<String>,
        /// Byte offset of the path in the condition text.
        offset: usize,
    },
    /// `!e`
    Not(Box<Expr>),
    /// `a && b`
    And(Box<Expr>, Box<Expr>),
    /// `a || b`
    Or(Box<Expr>, Box<Expr>),
    /// `a op b`
    Compare(CompareOp, Box<Expr>, Box<Expr>),
    /// `f(args…)`
    Call(Function, Vec<Expr>),
}

/// A syntax error in a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the condition text where the problem is.
    pub offset: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

/// A parsed `if:` condition, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    source: String,
    expr: Expr,
    implicit_success: bool,
}

impl Condition {
    /// Parses a condition. A leading `${{` and trailing `}}` (GitHub Actions
    /// habit) are accepted and ignored.
    ///
    /// # Errors
    /// [`ParseError`] with the byte offset of the problem and what was expected.
    pub fn parse(text: &str) -> Result<Condition, ParseError> {
        let (body, base) = strip_wrapper(text);
        let mut p = Parser {
            src: body,
            pos: 0,
            base,
        };
        let expr = p.parse_or()?;
        p.skip_ws();
        if p.pos < body.len() {
            return Err(p.error(format!(
                "unexpected `{}` after a complete expression; expected `&&`, `||` or the end",
                p.rest_token()
            )));
        }
        let implicit_success = !uses_status(&expr);
        Ok(Condition {
            source: text.to_owned(),
            expr,
            implicit_success,
        })
    }

    /// The text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The parsed expression tree.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Every path the condition reads, with its byte offset in [`Condition::source`].
    pub fn paths(&self) -> Vec<(&[String], usize)> {
        let mut out = Vec::new();
        collect_paths(&self.expr, &mut out);
        out
    }

    /// Evaluates the condition. Never fails: type mismatches compare unequal
    /// and missing paths are `null` (see the module docs).
    pub fn evaluate(&self, ctx: &dyn ExprContext) -> bool {
        let value = eval(&self.expr, ctx).truthy();
        if self.implicit_success {
            success(ctx) && value
        } else {
            value
        }
    }
}

/// The condition of a step without `if:`: `success()`.
impl Default for Condition {
    fn default() -> Self {
        Condition::parse("success()").expect("valid")
    }
}

fn strip_wrapper(text: &str) -> (&str, usize) {
    let trimmed = text.trim_end();
    let lead = text.len() - text.trim_start().len();
    let inner = &trimmed[lead..];
    if let Some(rest) = inner.strip_prefix("${{")
        && let Some(body) = rest.strip_suffix("}}")
    {
        return (body, lead + 3);
    }
    (text, 0)
}

fn uses_status(e: &Expr) -> bool {
    match e {
        Expr::Literal(_) | Expr::Path { .. } => false,
        Expr::Not(a) => uses_status(a),
        Expr::And(a, b) | Expr::Or(a, b) | Expr::Compare(_, a, b) => {
            uses_status(a) || uses_status(b)
        }
        Expr::Call(f, args) => f.is_status() || args.iter().any(uses_status),
    }
}

fn collect_paths<'e>(e: &'e Expr, out: &mut Vec<(&'e [String], usize)>) {
    match e {
        Expr::Literal(_) => {}
        Expr::Path { parts, offset } => out.push((parts, *offset)),
        Expr::Not(a) => collect_paths(a, out),
        Expr::And(a, b) | Expr::Or(a, b) | Expr::Compare(_, a, b) => {
            collect_paths(a, out);
            collect_paths(b, out);
        }
        Expr::Call(_, args) => args.iter().for_each(|a| collect_paths(a, out)),
    }
}

fn success(ctx: &dyn ExprContext) -> bool {
    !ctx.dependency_failed() && !ctx.cancelled()
}

fn eval(e: &Expr, ctx: &dyn ExprContext) -> Value {
    match e {
        Expr::Literal(v) => v.clone(),
        Expr::Path { parts, .. } => ctx.lookup(parts),
        Expr::Not(a) => Value::Bool(!eval(a, ctx).truthy()),
        Expr::And(a, b) => Value::Bool(eval(a, ctx).truthy() && eval(b, ctx).truthy()),
        Expr::Or(a, b) => Value::Bool(eval(a, ctx).truthy() || eval(b, ctx).truthy()),
        Expr::Compare(op, a, b) => {
            let (a, b) = (eval(a, ctx), eval(b, ctx));
            let ordering = match (&a, &b) {
                (Value::Number(x), Value::Number(y)) => x.partial_cmp(y),
                (Value::String(x), Value::String(y)) => {
                    Some(x.to_ascii_lowercase().cmp(&y.to_ascii_lowercase()))
                }
                _ => None,
            };
            Value::Bool(match op {
                CompareOp::Eq => a.loosely_equals(&b),
                CompareOp::Ne => !a.loosely_equals(&b),
                CompareOp::Lt => ordering.is_some_and(|o| o.is_lt()),
                CompareOp::Le => ordering.is_some_and(|o| o.is_le()),
                CompareOp::Gt => ordering.is_some_and(|o| o.is_gt()),
                CompareOp::Ge => ordering.is_some_and(|o| o.is_ge()),
            })
        }
        Expr::Call(f, args) => match f {
            Function::Success => Value::Bool(success(ctx)),
            Function::Failure => Value::Bool(ctx.dependency_failed()),
            Function::Always => Value::Bool(true),
            Function::Cancelled => Value::Bool(ctx.cancelled()),
            Function::Contains | Function::StartsWith | Function::EndsWith => {
                let (a, b) = (eval(&args[0], ctx), eval(&args[1], ctx));
                let text = |v: &Value| match v {
                    Value::String(s) => s.to_lowercase(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => String::new(),
                };
                Value::Bool(match (f, &a) {
                    (Function::Contains, Value::List(items)) => {
                        items.iter().any(|i| i.loosely_equals(&b))
                    }
                    (Function::Contains, _) => text(&a).contains(&text(&b)),
                    (Function::StartsWith, _) => text(&a).starts_with(&text(&b)),
                    _ => text(&a).ends_with(&text(&b)),
                })
            }
        },
    }
}

struct Parser<'s> {
    src: &'s str,
    pos: usize,
    /// Offset of `src` inside the text as written (after a stripped `${{`).
    base: usize,
}

impl<'s> Parser<'s> {
    fn error(&self, message: String) -> ParseError {
        ParseError {
            offset: self.base + self.pos,
            message,
        }
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.src[self.pos..].chars().next() {
            if c.is_whitespace() {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
    }

    fn rest_token(&self) -> String {
        self.src[self.pos..]
            .split_whitespace()
            .next()
            .unwrap_or("")
            .chars()
            .take(20)
            .collect()
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.src[self.pos..].starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn parse_or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.parse_and()?;
        while self.eat("||") {
            let right = self.parse_and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.parse_unary()?;
        while self.eat("&&") {
            let right = self.parse_unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_unary(&mut self) -> Result<Expr, ParseError> {
        self.skip_ws();
        if self.src[self.pos..].starts_with('!') && !self.src[self.pos..].starts_with("!=") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.parse_unary()?)));
        }
        self.parse_compare()
    }

    fn parse_compare(&mut self) -> Result<Expr, ParseError> {
        let left = self.parse_primary()?;
        self.skip_ws();
        let rest = &self.src[self.pos..];
        let op = [
            ("==", CompareOp::Eq),
            ("!=", CompareOp::Ne),
            ("<=", CompareOp::Le),
            (">=", CompareOp::Ge),
            ("<", CompareOp::Lt),
            (">", CompareOp::Gt),
        ]
        .into_iter()
        .find(|(t, _)| rest.starts_with(t));
        let Some((token, op)) = op else {
            if rest.starts_with('=') {
                return Err(self.error("`=` is not an operator; use `==` to compare".into()));
            }
            if rest.starts_with('&') && !rest.starts_with("&&") {
                return Err(self.error("`&` is not an operator; use `&&`".into()));
            }
            if rest.starts_with('|') && !rest.starts_with("||") {
                return Err(self.error("`|` is not an operator; use `||`".into()));
            }
            return Ok(left);
        };
        self.pos += token.len();
        let right = self.parse_primary()?;
        self.skip_ws();
        if ["==", "!=", "<", ">"]
            .iter()
            .any(|t| self.src[self.pos..].starts_with(t))
        {
            return Err(self.error(
                "comparisons do not chain; wrap one side in parentheses or join with `&&`".into(),
            ));
        }
        Ok(Expr::Compare(op, Box::new(left), Box::new(right)))
    }

    fn parse_primary(&mut self) -> Result<Expr, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let Some(c) = self.src[self.pos..].chars().next() else {
            return Err(self.error(
                "the condition ends too early; expected a value, a path such as \
`steps.build.outcome`, or a function such as `success()`"
                    .into(),
            ));
        };
        match c {
            '(' => {
                self.pos += 1;
                let inner = self.parse_or()?;
                if !self.eat(")") {
                    self.skip_ws();
                    return Err(self.error(format!(
                        "expected `)` to close the `(` at offset {}",
                        self.base + start
                    )));
                }
                Ok(inner)
            }
            '\'' => self.parse_string(),
            '"' => {
                Err(self.error("strings use single quotes, as in GitHub Actions: 'success'".into()))
            }
            c if c.is_ascii_digit() || c == '-' => {
                let len = self.src[self.pos..]
                    .char_indices()
                    .skip(1)
                    .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
                    .map_or(self.src.len() - self.pos, |(i, _)| i);
                let text = &self.src[self.pos..self.pos + len];
                let n: f64 = text
                    .parse()
                    .map_err(|_| self.error(format!("`{text}` is not a number")))?;
                self.pos += len;
                Ok(Expr::Literal(Value::Number(n)))
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let name = self.name();
                match name {
                    "true" => return Ok(Expr::Literal(Value::Bool(true))),
                    "false" => return Ok(Expr::Literal(Value::Bool(false))),
                    "null" => return Ok(Expr::Literal(Value::Null)),
                    _ => {}
                }
                self.skip_ws();
                if self.src[self.pos..].starts_with('(') {
                    let Some((f, arity)) = Function::lookup(name) else {
                        self.pos = start;
                        return Err(self.error(format!(
                            "unknown function `{name}()`; expected one of success(), failure(), \
always(), cancelled(), contains(), startsWith(), endsWith()"
                        )));
                    };
                    self.pos += 1;
                    let mut args = Vec::new();
                    if !self.eat(")") {
                        loop {
                            args.push(self.parse_or()?);
                            if self.eat(")") {
                                break;
                            }
                            if !self.eat(",") {
                                self.skip_ws();
                                return Err(self.error(format!(
                                    "expected `,` or `)` in the arguments of `{name}()`"
                                )));
                            }
                        }
                    }
                    if args.len() != arity {
                        self.pos = start;
                        return Err(self.error(format!(
                            "`{name}()` takes {arity} argument{}, got {}",
                            if arity == 1 { "" } else { "s" },
                            args.len()
                        )));
                    }
                    return Ok(Expr::Call(f, args));
                }
                let mut parts = vec![name.to_owned()];
                while self.src[self.pos..].starts_with('.') {
                    self.pos += 1;
                    let next = self.src[self.pos..].chars().next();
                    if !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(
                            self.error(format!("expected a name after `{}.`", parts.join(".")))
                        );
                    }
                    parts.push(self.name().to_owned());
                }
                Ok(Expr::Path {
                    parts,
                    offset: self.base + start,
                })
            }
            _ => Err(self.error(format!(
                "unexpected `{}`; expected a value, a path or a function call",
                self.rest_token()
            ))),
        }
    }

    fn name(&mut self) -> &'s str {
        let src = self.src;
        let start = self.pos;
        let len = src[start..]
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
            .map_or(src.len() - start, |(i, _)| i);
        self.pos += len;
        &src[start..start + len]
    }

    fn parse_string(&mut self) -> Result<Expr, ParseError> {
        let start = self.pos;
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let Some(c) = self.src[self.pos..].chars().next() else {
                self.pos = start;
                return Err(self.error("unterminated string: add the closing `'`".into()));
            };
            self.pos += c.len_utf8();
            if c == '\'' {
                if self.src[self.pos..].starts_with('\'') {
                    self.pos += 1;
                    out.push('\'');
                } else {
                    return Ok(Expr::Literal(Value::String(out)));
                }
            } else {
                out.push(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(vars: serde_json::Value, failed: bool, cancelled: bool) -> JsonContext {
        JsonContext {
            vars,
            dependency_failed: failed,
            cancelled,
        }
    }

    fn eval_str(text: &str, c: &JsonContext) -> bool {
        Condition::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .evaluate(c)
    }

    #[test]
    fn status_functions() {
        let ok = ctx(json!({}), false, false);
        let failed = ctx(json!({}), true, false);
        let cancelled = ctx(json!({}), false, true);
        assert!(eval_str("success()", &ok));
        assert!(!eval_str("success()", &failed));
        assert!(!eval_str("success()", &cancelled));
        assert!(eval_str("failure()", &failed));
        assert!(!eval_str("failure()", &ok));
        assert!(eval_str("always()", &failed));
        assert!(eval_str("always()", &cancelled));
        assert!(eval_str("cancelled()", &cancelled));
        assert!(!eval_str("cancelled()", &ok));
    }

    #[test]
    fn implicit_success_unless_a_status_function_is_used() {
        let failed = ctx(json!({"task": {"type": "hotfix"}}), true, false);
        assert!(!eval_str("task.type == 'hotfix'", &failed));
        assert!(eval_str("always() && task.type == 'hotfix'", &failed));
        assert!(eval_str("failure() || task.type == 'x'", &failed));
    }

    #[test]
    fn comparisons_paths_and_precedence() {
        let c = ctx(
            json!({
                "steps": {"build": {"outcome": "failure"}, "lint": {"outcome": "success"}},
                "task": {"type": "bugfix", "priority": "high", "complexity": 3},
                "pr": {"labels": ["bug", "ui"], "draft": false},
            }),
            false,
            false,
        );
        assert!(eval_str("steps.build.outcome == 'failure'", &c));
        assert!(
            eval_str("steps.build.outcome == 'FAILURE'", &c),
            "== ignores case"
        );
        assert!(eval_str("steps.lint.outcome != 'failure'", &c));
        assert!(eval_str("task.complexity >= 3 && task.complexity < 4", &c));
        assert!(
            !eval_str("task.complexity > '2'", &c),
            "mixed types never order"
        );
        assert!(eval_str(
            "task.type == 'hotfix' || task.priority == 'high'",
            &c
        ));
        assert!(eval_str(
            "!(task.type == 'hotfix') && (task.priority == 'low' || true)",
            &c
        ));
        // && binds tighter than ||
        assert!(eval_str("true || false && false", &c));
        assert!(!eval_str("(true || false) && false", &c));
        assert!(eval_str("contains(pr.labels, 'BUG')", &c));
        assert!(!eval_str("contains(pr.labels, 'docs')", &c));
        assert!(eval_str("startsWith(task.type, 'bug')", &c));
        assert!(eval_str("endsWith(task.type, 'fix')", &c));
        assert!(eval_str("contains('it''s fine', '''')", &c));
        assert!(eval_str("!pr.draft", &c));
        assert!(eval_str("steps.missing.outcome == null", &c));
        assert!(!eval_str("steps.missing.outcome", &c));
        assert!(eval_str("${{ task.type == 'bugfix' }}", &c));
        assert!(eval_str("-1 < 0.5", &c));
    }

    #[test]
    fn paths_are_reported_with_offsets() {
        let c = Condition::parse("success() && steps.build.outcome == 'x'").unwrap();
        let paths = c.paths();
        assert_eq!(paths.len(), 1);
        assert_eq!(paths[0].0.join("."), "steps.build.outcome");
        assert_eq!(paths[0].1, 13);
    }

    #[test]
    fn syntax_errors_say_where_and_what() {
        let cases = [
            ("", 0, "the condition ends too early"),
            ("success(", 8, "the condition ends too early"),
            ("task.type = 'x'", 10, "use `==`"),
            ("a & b", 2, "use `&&`"),
            ("a | b", 2, "use `||`"),
            ("task.type == \"x\"", 13, "single quotes"),
            ("'open", 0, "unterminated string"),
            ("succes()", 0, "unknown function `succes()`"),
            ("contains('a')", 0, "takes 2 arguments, got 1"),
            ("success() success()", 10, "unexpected `success()`"),
            ("(a == 'b'", 9, "expected `)`"),
            ("a == b == c", 7, "do not chain"),
            ("steps.", 6, "expected a name after `steps.`"),
            ("1.2.3 > 0", 0, "`1.2.3` is not a number"),
            ("a ? b", 2, "unexpected `?`"),
            ("${{ success( }}", 13, "ends too early"),
        ];
        for (text, offset, message) in cases {
            let err = Condition::parse(text).unwrap_err();
            assert!(
                err.message.contains(message),
                "{text:?}: got {:?}, want {message:?}",
                err.message
            );
            assert_eq!(err.offset, offset, "{text:?}: {}", err.message);
        }
    }
}
