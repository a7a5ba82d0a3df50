//! How well a name and its description match a search: the ranking the
//! MIB and data-model searches share.

/// A search query, lower-cased once.
pub struct Query {
    lower: String,
    words: Vec<String>,
}

impl Query {
    pub fn new(q: &str) -> Self {
        let lower = q.trim().to_lowercase();
        let words = lower.split_whitespace().map(str::to_owned).collect();
        Self { lower, words }
    }

    /// An exact name 100, a name that starts with the query 80, one that
    /// contains it 60, a description holding every word 20; with what
    /// matched. The description is read only when the name does not match.
    pub fn rank(
        &self,
        name: &str,
        description: impl FnOnce() -> String,
    ) -> Option<(i32, &'static str)> {
        let name = name.to_lowercase();
        if name == self.lower {
            Some((100, "name"))
        } else if name.starts_with(&self.lower) {
            Some((80, "name"))
        } else if name.contains(&self.lower) {
            Some((60, "name"))
        } else if !self.words.is_empty() && {
            let d = description().to_lowercase();
            self.words.iter().all(|w| d.contains(w.as_str()))
        } {
            Some((20, "description"))
        } else {
            None
        }
    }
}

/// A page size as requests give it: `default` when not above 0.
pub fn page_size(requested: i32, default: usize) -> usize {
    usize::try_from(requested)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(default)
}
