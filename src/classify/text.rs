//! Text handling shared by the index builder and the query side.
//!
//! Both sides must go through exactly the same `terms` pipeline: a term only
//! matches if the stemmer maps the query word and the reference word to the
//! same string, so any asymmetry here silently loses matches.

use std::sync::LazyLock;

/// Words that carry no industry signal. Three groups: English function words,
/// legal-form / corporate boilerplate that appears in business names, and the
/// fixed phrasing of the Census descriptions ("This U.S. industry comprises
/// establishments primarily engaged in ..."), which would otherwise make every
/// code look alike.
///
/// Deliberately *not* listed: "services", "store", "shop", "firm", "business",
/// "products": they are weak but sometimes decisive, and IDF already discounts
/// them where they are common.
const STOPWORDS: &[&str] = &[
    "a",
    "about",
    "after",
    "ag",
    "al",
    "all",
    "also",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "been",
    "both",
    "but",
    "by",
    "can",
    "co",
    "com",
    "combination",
    "comprises",
    "corp",
    "corporation",
    "de",
    "do",
    "each",
    "eg",
    "engaged",
    "establishment",
    "establishments",
    "etc",
    "except",
    "for",
    "from",
    "gmbh",
    "group",
    "has",
    "have",
    "holding",
    "holdings",
    "http",
    "https",
    "ie",
    "in",
    "inc",
    "incorporated",
    "industries",
    "industry",
    "info",
    "into",
    "io",
    "is",
    "it",
    "its",
    "known",
    "limited",
    "llc",
    "llp",
    "ltd",
    "may",
    "miscellaneous",
    "more",
    "most",
    "net",
    "no",
    "not",
    "of",
    "on",
    "one",
    "or",
    "org",
    "other",
    "our",
    "out",
    "plc",
    "primarily",
    "pty",
    "sa",
    "sarl",
    "such",
    "than",
    "that",
    "the",
    "their",
    "them",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "usa",
    "use",
    "various",
    "we",
    "which",
    "while",
    "who",
    "will",
    "with",
    "within",
    "without",
    "www",
    "you",
    "your",
];

/// Stopwords in stemmed form, sorted, because matching happens on stems.
static STOP_STEMS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut v: Vec<String> = STOPWORDS.iter().map(|w| stem(w)).collect();
    v.sort_unstable();
    v.dedup();
    v
});

/// Trim and collapse every run of Unicode whitespace to one ASCII space.
pub fn collapse_ws(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Light suffix stripping. It is not a linguistic stemmer; it only needs to be
/// consistent so that "bakeries"/"bakery", "restaurants"/"restaurant",
/// "trucking"/"truck", "lodging"/"lodge" collapse together. The trailing-"e"
/// rule exists for the last pair: without it "-ing" stripping would leave
/// "lodg" on one side and "lodge" on the other.
pub fn stem(word: &str) -> String {
    // Suffix tests are on ASCII bytes; non-ASCII words are left alone so we
    // never slice inside a multi-byte character.
    if !word.is_ascii() {
        return word.to_string();
    }
    let n = word.len();
    let base = &word[..n.saturating_sub(2)];
    // "-es" is only a plural ending after sibilants ("boxes", "classes",
    // "churches"); elsewhere the "e" belongs to the word ("stores").
    let sibilant_es = word.ends_with("es")
        && ["x", "z", "ch", "sh", "ss"]
            .iter()
            .any(|e| base.ends_with(e));
    let mut out = if n > 4 && word.ends_with("ies") {
        format!("{}y", &word[..n - 3])
    } else if n > 4 && sibilant_es {
        base.to_string()
    } else if n > 3 && word.ends_with('s') && !["ss", "us", "is"].iter().any(|e| word.ends_with(e))
    {
        word[..n - 1].to_string()
    } else {
        word.to_string()
    };
    if out.len() > 6 && out.ends_with("ing") {
        out.truncate(out.len() - 3);
    }
    // Derivational endings, so that the adjective, agent or practitioner form
    // of a word meets its noun or verb: dental/dentist/dentistry,
    // rental/rent, electrical/electric, retailer/retailing,
    // publisher/publishing. NAICS 2022 renamed most "... Stores" to
    // "... Retailers", so the agent form matters. The stem must keep at
    // least four letters; shorter words ("legal", "metal", "artist", "paper")
    // are left alone because their truncations collide with unrelated words.
    for suffix in ["istry", "ist", "er", "al"] {
        if out.len() >= suffix.len() + 4 && out.ends_with(suffix) {
            out.truncate(out.len() - suffix.len());
            break;
        }
    }
    if out.len() > 4 && out.ends_with('e') {
        out.pop();
    }
    out
}

pub fn is_stopword(stemmed: &str) -> bool {
    STOP_STEMS
        .binary_search_by(|s| s.as_str().cmp(stemmed))
        .is_ok()
}

/// One content word of a text: the lowercase surface form (reported back to
/// callers in `matched_terms`) and its stem (used for matching).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub word: String,
    pub stem: String,
}

/// Split on anything that is not alphanumeric, lowercase, drop apostrophes
/// inside words (so "joe's" is one token), drop numbers, one-letter tokens and
/// stopwords. Order is preserved because title bigrams depend on adjacency.
pub fn terms(text: &str) -> Vec<Term> {
    let mut out = Vec::new();
    let cleaned: String = text
        .chars()
        .filter(|c| *c != '\'' && *c != '\u{2019}')
        .flat_map(char::to_lowercase)
        .collect();
    for raw in cleaned.split(|c: char| !c.is_alphanumeric()) {
        if raw.chars().count() < 2 || raw.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let st = stem(raw);
        if is_stopword(&st) {
            continue;
        }
        out.push(Term {
            word: raw.to_string(),
            stem: st,
        });
    }
    out
}

/// Remove "(except ...)" parentheticals: NAICS titles and descriptions use them
/// to name what is *not* in the class, so indexing those words would attract
/// exactly the wrong businesses ("Hotels (except Casino Hotels) and Motels").
pub fn strip_exceptions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("(except") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        // Parentheses nest in a few descriptions; track depth so we resume
        // after the matching close paren.
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push(' ');
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stemming_collapses_variants() {
        assert_eq!(stem("bakeries"), stem("bakery"));
        assert_eq!(stem("restaurants"), stem("restaurant"));
        assert_eq!(stem("trucking"), "truck");
        assert_eq!(stem("lodging"), stem("lodge"));
        assert_eq!(stem("boxes"), "box");
        assert_eq!(stem("business"), stem("businesses"));
        assert_eq!(stem("gas"), "gas");
        assert_eq!(stem("dental"), stem("dentists"));
        assert_eq!(stem("dentistry"), stem("dentist"));
        assert_eq!(stem("rentals"), "rent");
        assert_eq!(stem("legal"), "legal");
        assert_eq!(stem("retailers"), stem("retailing"));
        assert_eq!(stem("publisher"), stem("publishing"));
    }

    #[test]
    fn tokenising() {
        let t = terms("Joe's Pizza, Inc. — the BEST pizza in 2024!");
        let words: Vec<_> = t.iter().map(|t| t.word.as_str()).collect();
        assert_eq!(words, ["joes", "pizza", "best", "pizza"]);
    }

    #[test]
    fn except_clauses_removed() {
        assert_eq!(
            collapse_ws(&strip_exceptions(
                "Hotels (except Casino Hotels) and Motels"
            )),
            "Hotels and Motels"
        );
        assert_eq!(
            collapse_ws(&strip_exceptions("A (except B (C) D) E")),
            "A E"
        );
    }
}
