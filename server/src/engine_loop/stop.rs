//! Stop-string matching over streamed text. A stop string may span token boundaries, so the
//! matcher holds back the last `longest - 1` bytes of text until more arrives; when a stop string
//! appears, the text before it is released and the rest is cut.

/// Holds back text that could still be the start of a stop string.
#[derive(Debug, Clone, Default)]
pub struct StopStringMatcher {
    stops: Vec<String>,
    /// Longest stop string minus one, in bytes: how much text may be an unfinished match.
    hold_bytes: usize,
    pending: String,
}

/// What a chunk of text did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matched {
    /// No stop string yet; this text is final.
    Release(String),
    /// A stop string matched: the text before it and the stop string.
    Stop { text: String, stop: String },
}

impl StopStringMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.to_vec(),
            hold_bytes: stops
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(1)
                .saturating_sub(1),
            pending: String::new(),
        }
    }

    /// Adds a text delta; returns what is final or where a stop string ended the text.
    pub fn push(&mut self, delta: &str) -> Matched {
        self.pending.push_str(delta);
        if self.stops.is_empty() {
            return Matched::Release(std::mem::take(&mut self.pending));
        }
        let earliest = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = earliest {
            let stop = stop.clone();
            let text = self.pending[..at].to_string();
            self.pending.clear();
            return Matched::Stop { text, stop };
        }
        let mut keep_from = self.pending.len().saturating_sub(self.hold_bytes);
        while !self.pending.is_char_boundary(keep_from) {
            keep_from -= 1;
        }
        let released = self.pending[..keep_from].to_string();
        self.pending.drain(..keep_from);
        Matched::Release(released)
    }

    /// Releases everything held back (the stream ended without a match).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(stops: &[&str], deltas: &[&str]) -> (String, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopStringMatcher::new(&stops);
        let mut out = String::new();
        for d in deltas {
            match m.push(d) {
                Matched::Release(t) => out.push_str(&t),
                Matched::Stop { text, stop } => {
                    out.push_str(&text);
                    return (out, Some(stop));
                }
            }
        }
        out.push_str(&m.flush());
        (out, None)
    }

    #[test]
    fn a_stop_string_split_across_tokens_is_found_and_cut() {
        assert_eq!(
            stream(&["The end"], &["Once", " upon. The", " e", "nd of", " it"]),
            ("Once upon. ".to_string(), Some("The end".to_string()))
        );
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        assert_eq!(
            stream(&["b", "abc"], &["xxabcd"]),
            ("xx".to_string(), Some("abc".to_string()))
        );
    }

    #[test]
    fn without_a_match_all_text_comes_out() {
        assert_eq!(
            stream(&["zzz"], &["a", "zz", "b"]),
            ("azzb".to_string(), None)
        );
        assert_eq!(stream(&[], &["a", "b"]), ("ab".to_string(), None));
    }

    #[test]
    fn held_text_never_splits_a_character() {
        assert_eq!(stream(&["€€"], &["a€", "b"]), ("a€b".to_string(), None));
    }
}
