//! Migration lint: flags statements that lock or rewrite busy tables, in the spirit of squawk.
//!
//! Hand-written (a statement splitter, a tokenizer and token-pattern rules) rather than the
//! `squawk-linter` crate. That crate (2.68 when this was written, rust-version 1.94) does offer
//! `Linter::with_rules(..).lint(&parse, text)` over its own rowan syntax tree, but it is versioned
//! with the squawk CLI (2.71 was already out), documented only through that CLI, and brings a full
//! PostgreSQL parser; and our `drop-column-still-read` rule needs what squawk cannot know (the columns the service's own
//! queries read), so we would walk its tree with rules of our own anyway. Every rule here needs only
//! the leading keywords of a statement or of an `ALTER TABLE` action, which a tokenizer that knows
//! PostgreSQL's comments, quoting and dollar quoting gives exactly.

use std::collections::HashSet;
use std::fmt;

/// What a finding is about; the names are what `kybctl migrate lint` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    CreateIndexNotConcurrently,
    AddColumnNotNullWithoutDefault,
    AlterColumnType,
    DropColumnStillRead,
    ConstraintNotValid,
    ConcurrentlyInTransaction,
    NoTransactionMultipleStatements,
    BreaksPreviousRelease,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::CreateIndexNotConcurrently => "create-index-not-concurrently",
            Rule::AddColumnNotNullWithoutDefault => "add-column-not-null-without-default",
            Rule::AlterColumnType => "alter-column-type",
            Rule::DropColumnStillRead => "drop-column-still-read",
            Rule::ConstraintNotValid => "constraint-not-valid",
            Rule::ConcurrentlyInTransaction => "concurrently-in-transaction",
            Rule::NoTransactionMultipleStatements => "no-transaction-multiple-statements",
            Rule::BreaksPreviousRelease => "breaks-previous-release",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// 1-based line of the offending statement or clause.
    pub line: usize,
    pub rule: Rule,
    pub message: String,
}

/// The first line sqlx looks for to run a migration outside a transaction (same test as sqlx's).
pub const NO_TRANSACTION: &str = "-- no-transaction";

/// The header line that marks a migration as a contract step (on one of the file's leading comment
/// lines).
pub const CONTRACT: &str = "-- contract";

/// Which side of an upgrade a script is on, which decides what it may break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// An ordinary up migration: it runs while the previous release still serves (before and during a
    /// rollout), so it may only add.
    Expand,
    /// An up migration marked `-- contract`: it runs once a rollout has fully promoted, when no
    /// instance of the previous release is left, so it may drop and rename what only that release read.
    Contract,
    /// A down script: it reverts its migration together with the code that needed it.
    Down,
}

impl Script {
    pub fn of(sql: &str, down: bool) -> Self {
        if down {
            Script::Down
        } else if is_contract(sql) {
            Script::Contract
        } else {
            Script::Expand
        }
    }
}

/// Whether one of the leading comment lines (before the first statement) is `-- contract`.
pub fn is_contract(sql: &str) -> bool {
    sql.lines()
        .map(str::trim)
        .take_while(|l| l.is_empty() || l.starts_with("--"))
        .any(|l| l == CONTRACT || l.starts_with("-- contract:"))
}

fn breaks(line: usize, what: String) -> Finding {
    Finding {
        line,
        rule: Rule::BreaksPreviousRelease,
        message: format!(
            "{what} breaks the release still serving during the rollout; do it in a later migration marked `{CONTRACT}`, which runs once the rollout has fully promoted"
        ),
    }
}

/// Lints one migration file's SQL. `reads` knows which columns the service's queries use.
pub fn lint(sql: &str, reads: &QueryCorpus, script: Script) -> Vec<Finding> {
    let no_tx = sql.starts_with(NO_TRANSACTION);
    let statements = split(sql);
    let mut findings = Vec::new();
    if no_tx && statements.len() > 1 {
        // Several statements go to the server as one simple query, which PostgreSQL runs as an implicit
        // transaction: CONCURRENTLY then fails, and a failure half way leaves a half-applied migration.
        findings.push(Finding {
            line: statements[1][0].line,
            rule: Rule::NoTransactionMultipleStatements,
            message: format!(
                "a `{NO_TRANSACTION}` migration must hold exactly one statement (this one has {})",
                statements.len()
            ),
        });
    }
    let mut created: HashSet<String> = HashSet::new();
    for stmt in &statements {
        let words = Words(stmt);
        if words.starts_with(&["create", "table"]) {
            let mut i = 2;
            if words.starts_with_at(i, &["if", "not", "exists"]) {
                i += 3;
            }
            if let Some((name, _)) = qualified_name(stmt, i) {
                created.insert(name);
            }
        } else if words.starts_with(&["create", "index"])
            || words.starts_with(&["create", "unique", "index"])
        {
            let at = if words.is(1, "unique") { 3 } else { 2 };
            let concurrently = words.is(at, "concurrently");
            if concurrently && !no_tx {
                findings.push(concurrently_in_tx(stmt[0].line));
            }
            let table = words
                .position("on", at)
                .map(|on| {
                    if words.is(on + 1, "only") {
                        on + 2
                    } else {
                        on + 1
                    }
                })
                .and_then(|i| qualified_name(stmt, i))
                .map(|(name, _)| name);
            if let Some(table) = table {
                if !concurrently && !created.contains(&table) {
                    findings.push(Finding {
                        line: stmt[0].line,
                        rule: Rule::CreateIndexNotConcurrently,
                        message: format!(
                            "CREATE INDEX on existing table {table} blocks its writes for the whole build; use CREATE INDEX CONCURRENTLY in a `{NO_TRANSACTION}` migration"
                        ),
                    });
                }
            }
        } else if words.starts_with(&["drop", "table"]) && script == Script::Expand {
            findings.push(breaks(stmt[0].line, "DROP TABLE".into()));
        } else if (words.starts_with(&["drop", "index", "concurrently"])
            || (words.is(0, "reindex") && words.position("concurrently", 1).is_some()))
            && !no_tx
        {
            findings.push(concurrently_in_tx(stmt[0].line));
        } else if words.starts_with(&["alter", "table"]) {
            let mut i = 2;
            if words.starts_with_at(i, &["if", "exists"]) {
                i += 2;
            }
            if words.is(i, "only") {
                i += 1;
            }
            let Some((table, next)) = qualified_name(stmt, i) else {
                continue;
            };
            // A table this file created is empty and unseen by the service: nothing to lock out.
            if created.contains(&table) {
                continue;
            }
            for action in split_actions(&stmt[next..]) {
                if let Some(f) = alter_action(&table, action, reads, script) {
                    findings.push(f);
                }
            }
        }
    }
    findings
}

fn concurrently_in_tx(line: usize) -> Finding {
    Finding {
        line,
        rule: Rule::ConcurrentlyInTransaction,
        message: format!(
            "CONCURRENTLY cannot run inside a transaction; make `{NO_TRANSACTION}` the file's first line"
        ),
    }
}

/// One `ALTER TABLE` action (`ADD COLUMN ...`, `ALTER COLUMN ...`, `DROP ...`).
fn alter_action(
    table: &str,
    action: &[Token],
    reads: &QueryCorpus,
    script: Script,
) -> Option<Finding> {
    let w = Words(action);
    let line = action.first()?.line;
    if w.is(0, "rename") && script == Script::Expand {
        return Some(breaks(line, format!("renaming in {table}")));
    }
    if w.is(0, "add") {
        let mut i = 1;
        if w.is(i, "constraint") {
            i += 2;
        }
        if w.is(i, "foreign") || w.is(i, "check") {
            if w.contains_seq(&["not", "valid"]) {
                return None;
            }
            return Some(Finding {
                line,
                rule: Rule::ConstraintNotValid,
                message: format!(
                    "adding a {} constraint to {table} scans the whole table under lock; add it NOT VALID, then VALIDATE CONSTRAINT in a later migration",
                    if w.is(i, "check") { "CHECK" } else { "FOREIGN KEY" }
                ),
            });
        }
        if ["constraint", "unique", "primary", "exclude"]
            .iter()
            .any(|k| w.is(i, k))
        {
            return None;
        }
        if w.is(i, "column") {
            i += 1;
        }
        if w.starts_with_at(i, &["if", "not", "exists"]) {
            i += 3;
        }
        let column = ident(action.get(i)?)?;
        let filled = w.position("default", i).is_some() || w.position("generated", i).is_some();
        if w.contains_seq(&["not", "null"]) && !filled {
            return Some(Finding {
                line,
                rule: Rule::AddColumnNotNullWithoutDefault,
                message: format!(
                    "ADD COLUMN {column} NOT NULL without a DEFAULT fails on a non-empty {table}; add it with a DEFAULT (or nullable, backfill, then SET NOT NULL)"
                ),
            });
        }
    } else if w.is(0, "alter") {
        let mut i = 1;
        if w.is(i, "column") {
            i += 1;
        }
        let column = ident(action.get(i)?)?;
        if w.starts_with_at(i + 1, &["set", "not", "null"]) && script == Script::Expand {
            return Some(breaks(line, format!("SET NOT NULL on {table}.{column}")));
        }
        if w.is(i + 1, "type") || w.starts_with_at(i + 1, &["set", "data", "type"]) {
            return Some(Finding {
                line,
                rule: Rule::AlterColumnType,
                message: format!(
                    "ALTER COLUMN {column} TYPE rewrites {table} under an ACCESS EXCLUSIVE lock; add a new column, backfill and switch instead"
                ),
            });
        }
    } else if w.is(0, "drop") && !w.is(1, "constraint") {
        let mut i = 1;
        if w.is(i, "column") {
            i += 1;
        }
        if w.starts_with_at(i, &["if", "exists"]) {
            i += 2;
        }
        let column = ident(action.get(i)?)?;
        if script == Script::Down {
            return None;
        }
        if reads.reads(table, &column) {
            return Some(Finding {
                line,
                rule: Rule::DropColumnStillRead,
                message: format!(
                    "DROP COLUMN {table}.{column}: the service's queries still read it; deploy code that stops reading it first"
                ),
            });
        }
        if script == Script::Expand {
            return Some(breaks(line, format!("DROP COLUMN {table}.{column}")));
        }
    }
    None
}

/// The SQL string literals of the service's query code, to know which columns it still reads.
pub struct QueryCorpus {
    /// The words (lowercased identifiers) of each literal that is a query.
    queries: Vec<HashSet<String>>,
}

impl QueryCorpus {
    /// The queries compiled into this binary: every source file that talks SQL (a unit test walks
    /// `src/` to keep this list complete).
    pub fn service() -> Self {
        Self::from_sources(SERVICE_SOURCES.iter().map(|(_, text)| *text))
    }

    pub fn from_sources<'a>(sources: impl IntoIterator<Item = &'a str>) -> Self {
        let queries = sources
            .into_iter()
            .flat_map(string_literals)
            .map(|lit| words_of(&lit))
            .filter(|w| {
                ["select", "insert", "update", "delete"]
                    .iter()
                    .any(|k| w.contains(*k))
            })
            .collect();
        Self { queries }
    }

    /// True when one query mentions both the table and the column. Column names are not qualified by
    /// table in every query, so a column of the same name on another table joined in the same query
    /// also counts: the rule errs on the side of flagging.
    pub fn reads(&self, table: &str, column: &str) -> bool {
        self.queries
            .iter()
            .any(|w| w.contains(table) && w.contains(column))
    }
}

const SERVICE_SOURCES: &[(&str, &str)] = &[
    ("src/jobs/queue.rs", include_str!("../jobs/queue.rs")),
    ("src/jobs/handlers.rs", include_str!("../jobs/handlers.rs")),
    (
        "src/service/db/freshness.rs",
        include_str!("../service/db/freshness.rs"),
    ),
    (
        "src/service/db/merchants.rs",
        include_str!("../service/db/merchants.rs"),
    ),
    (
        "src/service/db/pools.rs",
        include_str!("../service/db/pools.rs"),
    ),
    (
        "src/service/db/risk_assessments.rs",
        include_str!("../service/db/risk_assessments.rs"),
    ),
    (
        "src/service/cache/l3.rs",
        include_str!("../service/cache/l3.rs"),
    ),
    (
        "src/service/cache/mod.rs",
        include_str!("../service/cache/mod.rs"),
    ),
    ("src/schema/indexes.rs", include_str!("indexes.rs")),
    ("src/schema/migrate.rs", include_str!("migrate.rs")),
    ("src/schema/reference.rs", include_str!("reference.rs")),
];

fn words_of(text: &str) -> HashSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The contents of the string literals (`"..."`, `r"..."`, `r#"..."#`) of Rust source text, skipping
/// comments and character literals (so `'"'` does not open a string).
fn string_literals(src: &str) -> Vec<String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'\'' => {
                i += match (b.get(i + 1), b.get(i + 2)) {
                    (Some(b'\\'), _) => b[i + 2..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map_or(b.len(), |p| p + 3),
                    (Some(_), Some(b'\'')) => 3,
                    _ => 1,
                };
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                let open = i + 1 + hashes;
                if b.get(open) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let start = open + 1;
                let end = b[start..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(b.len(), |p| start + p);
                out.push(src[start..end].to_owned());
                i = end + close.len();
            }
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                let end = j.min(b.len());
                out.push(src[start..end].to_owned());
                i = end + 1;
            }
            _ => i += 1,
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An unquoted word, lowercased.
    Word,
    /// A `"quoted"` identifier, case kept.
    Quoted,
    /// A string literal or dollar-quoted body (contents irrelevant to the rules).
    Literal,
    Punct,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    text: String,
    line: usize,
}

/// Splits SQL into statements of tokens; comments and whitespace are dropped.
fn split(sql: &str) -> Vec<Vec<Token>> {
    let mut statements = vec![Vec::new()];
    for t in tokenize(sql) {
        if t.kind == Kind::Punct && t.text == ";" {
            statements.push(Vec::new());
        } else {
            statements.last_mut().expect("never empty").push(t);
        }
    }
    statements.retain(|s| !s.is_empty());
    statements
}

fn tokenize(sql: &str) -> Vec<Token> {
    let c: Vec<char> = sql.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let lines_in = |s: &[char]| s.iter().filter(|&&ch| ch == '\n').count();
    while i < c.len() {
        let ch = c[i];
        let start_line = line;
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '-' && c.get(i + 1) == Some(&'-') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            // Block comments nest in PostgreSQL.
            let mut depth = 0;
            let start = i;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            line += lines_in(&c[start..i.min(c.len())]);
        } else if ch == '\'' {
            // E'...' strings allow backslash escapes; the E was lexed as a word just before.
            let escapes = matches!(tokens.last(), Some(Token { kind: Kind::Word, text, .. }) if text == "e")
                && i > 0
                && c[i - 1].eq_ignore_ascii_case(&'e');
            if escapes {
                tokens.pop();
            }
            let start = i;
            i += 1;
            while i < c.len() {
                if escapes && c[i] == '\\' {
                    i += 2;
                } else if c[i] == '\'' {
                    if c.get(i + 1) == Some(&'\'') {
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            line += lines_in(&c[start..i.min(c.len())]);
            tokens.push(tok(Kind::Literal, String::new(), start_line));
        } else if ch == '"' {
            let start = i;
            let mut text = String::new();
            i += 1;
            while i < c.len() {
                if c[i] == '"' {
                    if c.get(i + 1) == Some(&'"') {
                        text.push('"');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                text.push(c[i]);
                i += 1;
            }
            line += lines_in(&c[start..i.min(c.len())]);
            tokens.push(tok(Kind::Quoted, text, start_line));
        } else if ch == '$' {
            if let Some(tag_len) = dollar_tag(&c[i..]) {
                let tag = &c[i..i + tag_len];
                let start = i;
                i += tag_len;
                while i < c.len() && !c[i..].starts_with(tag) {
                    i += 1;
                }
                i = (i + tag_len).min(c.len());
                line += lines_in(&c[start..i]);
                tokens.push(tok(Kind::Literal, String::new(), start_line));
            } else {
                i += 1;
                while i < c.len() && c[i].is_ascii_digit() {
                    i += 1;
                }
                tokens.push(tok(Kind::Literal, String::new(), start_line));
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '$') {
                i += 1;
            }
            let text: String = c[start..i].iter().collect();
            tokens.push(tok(Kind::Word, text.to_lowercase(), start_line));
        } else {
            tokens.push(tok(Kind::Punct, ch.to_string(), start_line));
            i += 1;
        }
    }
    tokens
}

fn tok(kind: Kind, text: String, line: usize) -> Token {
    Token { kind, text, line }
}

/// Length of a `$tag$` opener at the start of `c` (tag empty or an identifier), if it is one.
fn dollar_tag(c: &[char]) -> Option<usize> {
    let body = c[1..]
        .iter()
        .take_while(|ch| ch.is_alphanumeric() || **ch == '_')
        .count();
    if body > 0 && c[1].is_ascii_digit() {
        return None; // $1: a parameter
    }
    (c.get(1 + body) == Some(&'$')).then_some(body + 2)
}

/// Keyword tests over a statement's tokens (quoted identifiers never match a keyword).
struct Words<'a>(&'a [Token]);

impl Words<'_> {
    fn is(&self, i: usize, kw: &str) -> bool {
        self.0
            .get(i)
            .is_some_and(|t| t.kind == Kind::Word && t.text == kw)
    }
    fn starts_with_at(&self, at: usize, kws: &[&str]) -> bool {
        kws.iter().enumerate().all(|(k, kw)| self.is(at + k, kw))
    }
    fn starts_with(&self, kws: &[&str]) -> bool {
        self.starts_with_at(0, kws)
    }
    fn position(&self, kw: &str, from: usize) -> Option<usize> {
        (from..self.0.len()).find(|&i| self.is(i, kw))
    }
    fn contains_seq(&self, kws: &[&str]) -> bool {
        (0..self.0.len()).any(|i| self.starts_with_at(i, kws))
    }
}

fn ident(t: &Token) -> Option<String> {
    matches!(t.kind, Kind::Word | Kind::Quoted).then(|| t.text.clone())
}

/// A possibly schema-qualified name starting at `i`: its last part and the index after it.
fn qualified_name(tokens: &[Token], mut i: usize) -> Option<(String, usize)> {
    let mut name = ident(tokens.get(i)?)?;
    i += 1;
    while tokens
        .get(i)
        .is_some_and(|t| t.kind == Kind::Punct && t.text == ".")
    {
        name = ident(tokens.get(i + 1)?)?;
        i += 2;
    }
    Some((name, i))
}

/// The comma-separated actions of an `ALTER TABLE`, ignoring commas inside parentheses.
fn split_actions(tokens: &[Token]) -> Vec<&[Token]> {
    let mut actions = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        if t.kind != Kind::Punct {
            continue;
        }
        match t.text.as_str() {
            "(" => depth += 1,
            ")" => depth -= 1,
            "," if depth == 0 => {
                actions.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    actions.push(&tokens[start..]);
    actions.retain(|a| !a.is_empty());
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> QueryCorpus {
        QueryCorpus::from_sources([
            r#"sqlx::query("SELECT id, name, website FROM merchants WHERE id = $1")"#,
            r#"let msg = "cannot read legacy_flag"; // not a query"#,
        ])
    }

    fn rules(sql: &str) -> Vec<(usize, Rule)> {
        rules_as(sql, Script::Contract)
    }

    fn rules_as(sql: &str, script: Script) -> Vec<(usize, Rule)> {
        lint(sql, &corpus(), script)
            .into_iter()
            .map(|f| (f.line, f.rule))
            .collect()
    }

    #[test]
    fn create_index_needs_concurrently_unless_the_table_is_new() {
        assert_eq!(
            rules("\n\nCREATE INDEX idx ON public.merchants (name);"),
            vec![(3, Rule::CreateIndexNotConcurrently)]
        );
        assert_eq!(
            rules("CREATE TABLE IF NOT EXISTS t (a int);\nCREATE UNIQUE INDEX i ON t (a);"),
            vec![]
        );
        assert_eq!(
            rules(
                "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON merchants (name)"
            ),
            vec![]
        );
    }

    #[test]
    fn concurrently_needs_no_transaction_and_one_statement() {
        assert_eq!(
            rules("CREATE INDEX CONCURRENTLY i ON merchants (name);"),
            vec![(1, Rule::ConcurrentlyInTransaction)]
        );
        assert_eq!(
            rules("DROP INDEX CONCURRENTLY i;"),
            vec![(1, Rule::ConcurrentlyInTransaction)]
        );
        assert_eq!(
            rules("-- no-transaction\nCREATE INDEX CONCURRENTLY a ON merchants (name);\nCREATE INDEX CONCURRENTLY b ON merchants (website);"),
            vec![(3, Rule::NoTransactionMultipleStatements)]
        );
    }

    #[test]
    fn alter_table_actions() {
        assert_eq!(
            rules("ALTER TABLE merchants ADD COLUMN tier text NOT NULL;"),
            vec![(1, Rule::AddColumnNotNullWithoutDefault)]
        );
        assert_eq!(
            rules("ALTER TABLE merchants ADD COLUMN tier text NOT NULL DEFAULT 'a', ADD COLUMN x int;"),
            vec![]
        );
        assert_eq!(
            rules("ALTER TABLE merchants\n  ADD COLUMN x int,\n  ALTER COLUMN name SET DATA TYPE varchar(300);"),
            vec![(3, Rule::AlterColumnType)]
        );
        assert_eq!(
            rules("ALTER TABLE merchants ALTER name TYPE varchar(300)"),
            vec![(1, Rule::AlterColumnType)]
        );
        assert_eq!(
            rules("ALTER TABLE merchants ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES t (id);"),
            vec![(1, Rule::ConstraintNotValid)]
        );
        assert_eq!(
            rules("ALTER TABLE merchants ADD CHECK (length(name) > 0) NOT VALID;"),
            vec![]
        );
        assert_eq!(
            rules("ALTER TABLE merchants ADD CONSTRAINT c CHECK (x > 0);"),
            vec![(1, Rule::ConstraintNotValid)]
        );
    }

    #[test]
    fn drop_column_only_when_still_read() {
        assert_eq!(
            rules("ALTER TABLE merchants DROP COLUMN website;"),
            vec![(1, Rule::DropColumnStillRead)]
        );
        assert_eq!(
            rules("ALTER TABLE merchants DROP COLUMN IF EXISTS legacy_flag;"),
            vec![]
        );
        assert_eq!(
            rules("ALTER TABLE merchants DROP CONSTRAINT website;"),
            vec![]
        );
    }

    #[test]
    fn comments_strings_and_dollar_quotes_are_not_statements() {
        let sql = "-- CREATE INDEX i ON merchants (a);\n/* ALTER TABLE merchants /* nested */ DROP COLUMN website; */\nSELECT 'CREATE INDEX x ON merchants (a); '' ;';\nDO $body$ BEGIN EXECUTE 'ALTER TABLE merchants ALTER name TYPE text'; END $body$;\nSELECT E'\\' ; ALTER TABLE merchants ADD COLUMN z int NOT NULL';\nCREATE INDEX late ON merchants (a);";
        assert_eq!(rules(sql), vec![(6, Rule::CreateIndexNotConcurrently)]);
    }

    #[test]
    fn an_expand_step_may_not_break_the_previous_release() {
        let destructive = "ALTER TABLE merchants DROP COLUMN legacy_flag;\nDROP TABLE old_things;\nALTER TABLE merchants RENAME COLUMN name TO legal_name;\nALTER TABLE merchants RENAME TO businesses;\nALTER TABLE merchants ALTER COLUMN country SET NOT NULL;";
        assert_eq!(
            rules_as(destructive, Script::Expand),
            vec![
                (1, Rule::BreaksPreviousRelease),
                (2, Rule::BreaksPreviousRelease),
                (3, Rule::BreaksPreviousRelease),
                (4, Rule::BreaksPreviousRelease),
                (5, Rule::BreaksPreviousRelease),
            ]
        );
        assert_eq!(rules_as(destructive, Script::Contract), vec![]);
        // Adding stays allowed, and a contract step still may not drop what this release reads.
        assert_eq!(
            rules_as(
                "ALTER TABLE merchants ADD COLUMN note text;",
                Script::Expand
            ),
            vec![]
        );
        assert_eq!(
            rules_as(
                "ALTER TABLE merchants DROP COLUMN website;",
                Script::Contract
            ),
            vec![(1, Rule::DropColumnStillRead)]
        );
        // A down script reverts its code too: dropping what its up added is its job.
        assert_eq!(
            rules_as("ALTER TABLE merchants DROP COLUMN website;", Script::Down),
            vec![]
        );
    }

    #[test]
    fn the_contract_marker_is_a_leading_comment_line() {
        assert!(is_contract("-- contract\nALTER TABLE t DROP COLUMN c;"));
        assert!(is_contract(
            "-- no-transaction\n-- contract: legacy_flag is unread since 0.4\nDROP INDEX CONCURRENTLY i;"
        ));
        assert!(!is_contract("ALTER TABLE t DROP COLUMN c;\n-- contract"));
        assert!(!is_contract("-- contracts are elsewhere\nSELECT 1;"));
        assert_eq!(Script::of("-- contract\nSELECT 1", true), Script::Down);
        assert_eq!(Script::of("-- contract\nSELECT 1", false), Script::Contract);
        assert_eq!(Script::of("SELECT 1", false), Script::Expand);
    }

    #[test]
    fn project_migrations_are_clean() {
        for m in super::super::migrate::MIGRATOR.iter() {
            let sql = m.sql.as_str();
            let script = Script::of(sql, m.migration_type.is_down_migration());
            let findings = lint(sql, &QueryCorpus::service(), script);
            assert!(findings.is_empty(), "{}: {findings:?}", m.version);
        }
    }

    #[test]
    fn service_corpus_covers_every_query_file() {
        fn walk(dir: &std::path::Path, root: &std::path::Path) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, root);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let queries = text.contains("sqlx::query") || text.contains("QueryBuilder");
                if queries && rel != "src/schema/lint.rs" {
                    assert!(
                        SERVICE_SOURCES.iter().any(|(p, _)| *p == rel),
                        "{rel} runs queries but is not in SERVICE_SOURCES"
                    );
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        walk(&root.join("src"), root);
        let service = QueryCorpus::service();
        assert!(service.reads("merchants", "industry_id"));
        assert!(service.reads("business_risk_assessments", "risk_score"));
        assert!(!service.reads("merchants", "no_such_column"));
    }

    #[test]
    fn rust_string_literals() {
        let src = "let a = '\"'; let b = \"x \\\" y\"; // \"comment\"\nlet c = r#\"raw \"q\" \"#; let d = 'static;";
        assert_eq!(
            string_literals(src),
            vec!["x \\\" y".to_owned(), "raw \"q\" ".to_owned()]
        );
    }
}
