//! The few YAML forms the patch is written with: every value that comes from the user is
//! a double-quoted scalar with JSON escapes (valid YAML), multi-line text is a literal block.

use std::fmt::Write as _;

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
pub(super) fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// `text` as the body of a literal block scalar, every line indented by `indent` spaces.
pub(super) fn block(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for line in text.lines() {
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

pub(super) fn list(out: &mut String, indent: usize, items: &[String]) {
    let pad = " ".repeat(indent);
    for i in items {
        let _ = writeln!(out, "{pad}- {}", q(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_yaml_specials() {
        assert_eq!(q("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(q("!100.64.0.0/10"), "\"!100.64.0.0/10\"");
        assert_eq!(block("a\n\n  b\n", 2), "  a\n\n    b\n");
    }
}
