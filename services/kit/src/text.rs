//! Text a person reads: names and labels must show what they hold, so
//! control characters, bidirectional overrides (which reorder what follows:
//! "Trojan Source") and zero-width characters (which make two different
//! names look the same) are refused in them.

/// Whether `c` is invisible, or changes how the text around it is shown.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}'                  // Arabic letter mark
            | '\u{200B}'..='\u{200F}'   // zero-width space/joiners, LRM, RLM
            | '\u{202A}'..='\u{202E}'   // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}'   // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}'   // bidi isolates
            | '\u{FEFF}'                // zero-width no-break space
            | '\u{FFF9}'..='\u{FFFB}'   // interlinear annotations
        )
}

/// Whether `s` shows every character it holds.
pub fn is_plain(s: &str) -> bool {
    !s.chars().any(is_hidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_characters_are_found() {
        for s in [
            "admin\u{202E}nimda",
            "a\u{200B}b",
            "x\u{2066}y",
            "tab\there",
            "\u{FEFF}bom",
        ] {
            assert!(!is_plain(s), "{s:?}");
        }
        for s in ["Amsterdam, rack 1", "Zürich", "東京", "émoji 🚀", ""] {
            assert!(is_plain(s), "{s:?}");
        }
    }
}
