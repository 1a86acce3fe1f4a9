//! The business fields a client sends: the limits `validate` enforces and the JSON Schemas the OpenAPI
//! document states for them, both from the constants here, so the document cannot promise other
//! limits than the service applies. Codes are taken exactly as the schemas list them (an enum
//! cannot say "any case, padded"); free text is limited as sent, before it is trimmed.

use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};

use super::{mcc_table, BusinessInput, ValidationError};

const MAX_NAME: usize = 200;
const MAX_DESCRIPTION: usize = 5000;
const MAX_WEBSITE: usize = 500;

/// ISO 3166-1 alpha-2 codes (249, from Debian's iso-codes), sorted for binary
/// search. A format-only check would accept "XX" or "UK".
const ISO_COUNTRIES: &[&str] = &[
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// The characters `str::trim` removes (Unicode White_Space, which is what `char::is_whitespace`
/// tests), as inclusive ranges. Written out because a schema's `\s` means different sets to
/// ECMAScript, Python and Rust: the name's pattern must mean exactly "trim leaves something".
const WHITESPACE: &[(char, char)] = &[
    ('\u{9}', '\u{d}'),
    (' ', ' '),
    ('\u{85}', '\u{85}'),
    ('\u{a0}', '\u{a0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200a}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{202f}', '\u{202f}'),
    ('\u{205f}', '\u{205f}'),
    ('\u{3000}', '\u{3000}'),
];

fn err(field: &'static str, message: impl Into<String>) -> Result<(), ValidationError> {
    Err(ValidationError {
        field,
        message: message.into(),
    })
}

/// Check an input as received from a client, against exactly what the schemas below state.
pub fn validate(input: &BusinessInput) -> Result<(), ValidationError> {
    let name = &input.name;
    for (field, text) in [
        ("name", Some(name)),
        ("description", input.description.as_ref()),
        ("website", input.website.as_ref()),
    ] {
        if text.is_some_and(|t| t.contains('\0')) {
            return err(
                field,
                "must not contain U+0000, which PostgreSQL cannot store",
            );
        }
    }
    if name.trim().is_empty() {
        return err("name", "must contain a character other than white space");
    }
    if name.chars().count() > MAX_NAME {
        return err("name", format!("must be at most {MAX_NAME} characters"));
    }
    if let Some(d) = &input.description {
        if d.chars().count() > MAX_DESCRIPTION {
            return err(
                "description",
                format!("must be at most {MAX_DESCRIPTION} characters"),
            );
        }
    }
    if let Some(w) = &input.website {
        if w.chars().count() > MAX_WEBSITE {
            return err(
                "website",
                format!("must be at most {MAX_WEBSITE} characters"),
            );
        }
    }
    if let Some(c) = &input.country {
        if ISO_COUNTRIES.binary_search(&c.as_str()).is_err() {
            return err(
                "country",
                format!("{c:?} is not an ISO 3166-1 alpha-2 code in capitals, like \"US\""),
            );
        }
    }
    if let Some(m) = &input.declared_mcc {
        if m.len() != 4 || !m.bytes().all(|b| b.is_ascii_digit()) {
            return err("declared_mcc", "must be exactly 4 digits");
        }
        if !super::is_known_mcc(m) {
            return err(
                "declared_mcc",
                format!("unknown merchant category code {m:?}"),
            );
        }
    }
    Ok(())
}

fn text(nullable: bool) -> ObjectBuilder {
    let kind = if nullable {
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::new(Type::String)
    };
    ObjectBuilder::new().schema_type(kind)
}

/// No U+0000 anywhere (PostgreSQL text cannot hold it).
const NO_NUL: &str = "^[^\\u0000]*$";

/// No U+0000, and some character `str::trim` keeps.
fn not_blank_pattern() -> String {
    let mut class = String::from("[^\\u0000");
    for &(lo, hi) in WHITESPACE {
        class.push_str(&format!("\\u{:04x}", lo as u32));
        if hi != lo {
            class.push_str(&format!("-\\u{:04x}", hi as u32));
        }
    }
    class.push(']');
    format!("^[^\\u0000]*{class}[^\\u0000]*$")
}

fn name_with(nullable: bool) -> Object {
    text(nullable)
        .description(Some(format!(
            "1 to {MAX_NAME} characters, not all white space (which is trimmed), no U+0000"
        )))
        .min_length(Some(1))
        .max_length(Some(MAX_NAME))
        .pattern(Some(not_blank_pattern()))
        .build()
}

pub fn name() -> Object {
    name_with(false)
}

/// In a patch: `null` or absent keeps the name.
pub fn name_or_null() -> Object {
    name_with(true)
}

pub fn description() -> Object {
    text(true)
        .description(Some(format!(
            "What the business does: at most {MAX_DESCRIPTION} characters, no U+0000 (trimmed; empty is none)"
        )))
        .max_length(Some(MAX_DESCRIPTION))
        .pattern(Some(NO_NUL))
        .build()
}

pub fn website() -> Object {
    text(true)
        .description(Some(format!(
            "At most {MAX_WEBSITE} characters, no U+0000 (trimmed; empty is none)"
        )))
        .max_length(Some(MAX_WEBSITE))
        .pattern(Some(NO_NUL))
        .build()
}

/// An enum (with `null`, which JSON Schema needs listed for a nullable enum) of every code taken.
fn codes(description: &str, list: impl IntoIterator<Item = &'static str>) -> Object {
    let values = list
        .into_iter()
        .map(serde_json::Value::from)
        .chain([serde_json::Value::Null]);
    text(true)
        .description(Some(description))
        .enum_values(Some(values))
        .build()
}

pub fn country() -> Object {
    codes(
        "ISO 3166-1 alpha-2 country code, in capitals",
        ISO_COUNTRIES.iter().copied(),
    )
}

pub fn declared_mcc() -> Object {
    codes(
        "The merchant category code (ISO 18245) the business declares",
        mcc_table().into_iter().map(|(code, _)| code),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_table_is_what_trim_removes() {
        let listed = |c: char| WHITESPACE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c));
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            assert_eq!(listed(c), c.is_whitespace(), "U+{:04X}", c as u32);
        }
        assert!(
            not_blank_pattern().starts_with("^[^\\u0000]*[^\\u0000\\u0009-\\u000d\\u0020\\u0085")
        );
    }

    #[test]
    fn nul_is_refused_in_every_text() {
        let mut i = BusinessInput {
            name: "A\0".into(),
            description: None,
            website: None,
            country: None,
            declared_mcc: None,
        };
        assert_eq!(validate(&i).map_err(|e| e.field), Err("name"));
        i.name = "A".into();
        i.website = Some("\0".into());
        assert_eq!(validate(&i).map_err(|e| e.field), Err("website"));
    }

    #[test]
    fn codes_are_sorted_and_listed() {
        assert!(ISO_COUNTRIES.windows(2).all(|w| w[0] < w[1]));
        let mcc = serde_json::to_value(declared_mcc()).unwrap();
        let listed = mcc["enum"].as_array().unwrap();
        assert!(listed.contains(&"5812".into()) && listed.contains(&serde_json::Value::Null));
        assert!(!listed.contains(&"0000".into()));
    }
}
