//! Server-Sent Events framing, as OpenAI-compatible servers stream completions: bytes in,
//! the `data` of each complete event out.
//!
//! It owns the wire framing only (lines split across network reads, `\n` or `\r\n` line
//! ends, comment lines, multi-line `data`, the blank line that ends an event) and knows
//! nothing of JSON or of the `[DONE]` sentinel; `openai` gives the data meaning. Fields
//! other than `data` (`event`, `id`, `retry`) carry nothing a completion stream needs and
//! are skipped. A lone `\r` as a line end (allowed by the SSE spec, sent by no
//! OpenAI-compatible server) is not recognised.

/// Incremental decoder: feed it the body's bytes as they arrive.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes after the last complete line.
    partial_line: Vec<u8>,
    /// `data` lines of the event being read, joined by `\n`; `None` before its first.
    data: Option<String>,
}

impl SseDecoder {
    /// Consumes `bytes` and returns the data of every event they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        self.partial_line.extend_from_slice(bytes);
        let mut consumed = 0;
        while let Some(end) = self.partial_line[consumed..]
            .iter()
            .position(|&b| b == b'\n')
        {
            let line = &self.partial_line[consumed..consumed + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(event) = take_line(&mut self.data, &String::from_utf8_lossy(line)) {
                events.push(event);
            }
            consumed += end + 1;
        }
        self.partial_line.drain(..consumed);
        events
    }
}

/// Handles one line without its line end, adding `data` lines to the event being read;
/// returns that event's data when a blank line completes it.
fn take_line(event: &mut Option<String>, line: &str) -> Option<String> {
    if line.is_empty() {
        return event.take();
    }
    if line.starts_with(':') {
        return None;
    }
    let (field, value) = line.split_once(':').unwrap_or((line, ""));
    if field == "data" {
        let value = value.strip_prefix(' ').unwrap_or(value);
        match event {
            Some(data) => {
                data.push('\n');
                data.push_str(value);
            }
            None => *event = Some(value.to_owned()),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(stream: &str, piece_len: usize) -> Vec<String> {
        let mut decoder = SseDecoder::default();
        stream
            .as_bytes()
            .chunks(piece_len)
            .flat_map(|piece| decoder.push(piece))
            .collect()
    }

    #[test]
    fn events_split_anywhere_across_reads_decode_the_same() {
        let stream = "data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n";
        let whole = decode_in_pieces(stream, stream.len());
        assert_eq!(whole, ["{\"a\":1}", "{\"b\":2}", "[DONE]"]);
        for piece_len in 1..stream.len() {
            assert_eq!(decode_in_pieces(stream, piece_len), whole, "{piece_len}");
        }
    }

    #[test]
    fn crlf_line_ends_are_accepted() {
        let stream = "data: x\r\n\r\ndata: [DONE]\r\n\r\n";
        for piece_len in 1..=stream.len() {
            assert_eq!(decode_in_pieces(stream, piece_len), ["x", "[DONE]"]);
        }
    }

    #[test]
    fn comments_other_fields_and_extra_blank_lines_are_skipped() {
        let stream = ": ping\n\n\nevent: completion\nid: 7\nretry: 10\ndata: y\n\n: bye\n";
        assert_eq!(decode_in_pieces(stream, 3), ["y"]);
    }

    #[test]
    fn multi_line_data_is_joined_and_an_unfinished_event_is_held_back() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.push(b"data: one\ndata:two\ndata: thr").is_empty());
        assert_eq!(decoder.push(b"ee\n\ndata: [DO"), ["one\ntwo\nthree"]);
        assert_eq!(decoder.push(b"NE]\n\n"), ["[DONE]"]);
    }

    #[test]
    fn utf8_split_across_reads_survives() {
        let stream = "data: héllo ▁world\n\n";
        for piece_len in 1..=stream.len() {
            assert_eq!(decode_in_pieces(stream, piece_len), ["héllo ▁world"]);
        }
    }
}
