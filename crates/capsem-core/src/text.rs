//! Text that came from the guest, made safe to show and to store.
//!
//! Everything the guest can name (process names, paths, model names, its
//! console, its own reports) is shown to the user by capsem, so it must not
//! drive the user's terminal: [`visible`] writes control characters and
//! the Unicode controls that reorder text as escapes. JSON output keeps the
//! raw value (JSON escapes it). [`clip`] bounds a stored field.

use std::borrow::Cow;

/// `text` with every character that a terminal would act on, rather than
/// show, written as an escape: C0 and C1 controls and DEL as `\xNN`
/// (`\t`, `\n`, `\r` by name), bidirectional overrides and isolates as
/// `\u{NNNN}`, and a backslash as `\\` so that the escapes cannot be faked.
pub fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| needs_escape(c, false)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    text.chars().for_each(|c| push_visible(&mut out, c, false));
    Cow::Owned(out)
}

/// Appends `c` to `out`, as an escape if it needs one. With `lines`, a
/// newline and a tab stay as they are (a report of several lines).
fn push_visible(out: &mut String, c: char, lines: bool) {
    if !needs_escape(c, lines) {
        return out.push(c);
    }
    match c {
        '\\' => out.push_str("\\\\"),
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
        c => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
    }
}

fn needs_escape(c: char, lines: bool) -> bool {
    match c {
        '\n' | '\t' => !lines,
        // In a report, a backslash is only text: no field is being quoted.
        '\\' => !lines,
        c => c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'),
    }
}

/// [`visible`] for a stream of lines (a report the guest writes, such as
/// `capsem doctor`'s): newlines and tabs pass, and a character split
/// between two chunks is kept until it is whole. Invalid UTF-8 becomes
/// `\xNN` escapes.
#[derive(Debug, Default)]
pub struct VisibleLines {
    partial: Vec<u8>,
}

impl VisibleLines {
    /// The visible form of `chunk`, after what an earlier chunk left.
    pub fn push(&mut self, chunk: &[u8]) -> String {
        self.partial.extend_from_slice(chunk);
        let mut out = String::with_capacity(self.partial.len());
        let mut rest = std::mem::take(&mut self.partial);
        let mut from = 0;
        loop {
            match std::str::from_utf8(&rest[from..]) {
                Ok(text) => {
                    text.chars().for_each(|c| push_visible(&mut out, c, true));
                    break;
                }
                Err(e) => {
                    let valid = &rest[from..from + e.valid_up_to()];
                    let text = std::str::from_utf8(valid).unwrap_or_default();
                    text.chars().for_each(|c| push_visible(&mut out, c, true));
                    from += e.valid_up_to();
                    match e.error_len() {
                        Some(bad) => {
                            for byte in &rest[from..from + bad] {
                                out.push_str(&format!("\\x{byte:02x}"));
                            }
                            from += bad;
                        }
                        None => {
                            self.partial = rest.split_off(from);
                            break;
                        }
                    }
                }
            }
        }
        out
    }
}

/// Cuts `text` to at most `max` bytes (at a character boundary) and says
/// so at the cut: `… (N bytes cut)`.
pub fn clip(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("… ({cut} bytes cut)"));
}

/// [`clip`] for an optional field.
pub fn clip_opt(text: &mut Option<String>, max: usize) {
    if let Some(text) = text {
        clip(text, max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_become_visible_escapes() {
        assert!(matches!(
            visible("curl -sS https://a.test/"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            visible("\x1b[2J\x1b]0;title\x07 x"),
            "\\x1b[2J\\x1b]0;title\\x07 x"
        );
        assert_eq!(visible("a\tb\nc\rd\u{7f}\u{9b}"), "a\\tb\\nc\\rd\\x7f\\x9b");
        assert_eq!(visible("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(
            visible("fake \\x1b"),
            "fake \\\\x1b",
            "escapes cannot be forged"
        );
        assert_eq!(visible("naïve ✓"), "naïve ✓");
    }

    #[test]
    fn a_stream_of_lines_keeps_its_layout_and_split_characters() {
        let mut stream = VisibleLines::default();
        assert_eq!(stream.push(b"ok\tpassed\n\x1b[2J"), "ok\tpassed\n\\x1b[2J");
        let check = "✓".as_bytes();
        assert_eq!(stream.push(&check[..1]), "");
        assert_eq!(stream.push(&check[1..]), "✓");
        assert_eq!(stream.push(b"\xff\\"), "\\xff\\");
        assert_eq!(stream.push("\u{9b}31m".as_bytes()), "\\x9b31m");
    }

    #[test]
    fn clipping_keeps_characters_whole_and_says_how_much_went() {
        let mut s = "é".repeat(10);
        clip(&mut s, 5);
        assert_eq!(s, "éé… (16 bytes cut)");
        let mut short = "short".to_owned();
        clip(&mut short, 5);
        assert_eq!(short, "short");
    }
}
