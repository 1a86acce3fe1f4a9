//! Escaping text for the reports written as markup: the SLO gate's JUnit XML and the load test's HTML.
//!
//! Hand-written because the crates that escape (quick-xml's `escape`, html-escape) leave the C0
//! control characters in place, and XML 1.0 cannot carry those at all: one stray byte in a request
//! type would make the whole JUnit file unreadable to CI.

/// Escapes text for an XML attribute or element (and so for HTML too). Characters XML 1.0 cannot carry at all (most C0
/// controls) become U+FFFD, so a stray byte in a request type cannot make the whole report unreadable.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Kept literally in an attribute they would be normalised to spaces.
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escaping() {
        assert_eq!(
            xml_escape(r#"a<b & "c" 'd'>"#),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
        assert_eq!(xml_escape("x\ny\u{1}z"), "x&#10;y\u{FFFD}z");
        assert_eq!(xml_escape("µs ✓"), "µs ✓");
    }
}
