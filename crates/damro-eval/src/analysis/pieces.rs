//! Generated tokens to text: the piece of text each token adds, found by
//! decoding the growing prefix of the generation (so a token's piece is
//! exactly what a streaming user would have seen appear), and each piece's
//! byte range in the concatenated text.

use std::ops::Range;

/// The text each of `count` tokens adds, from `decode_prefix(n)` (the text
/// of the first `n` tokens, as the tokenizer decodes them).
///
/// Token `i`'s piece is `decode_prefix(i + 1)` minus the text already
/// emitted. Two tokenizer effects are handled:
/// - a prefix that ends in the middle of a multi-byte character decodes
///   to U+FFFD: the token adds nothing yet, and the character appears with
///   the token that completes it;
/// - a decoder that rewrites earlier text (whitespace clean-up): the piece
///   is the new text after the part both decodings share, so the pieces'
///   concatenation can then differ from the final text.
///
/// The concatenation of the pieces equals `decode_prefix(count)` whenever
/// every prefix decodes to a prefix of the next one, as LLaMA's
/// sentencepiece decoders do.
///
/// # Errors
/// The first error of `decode_prefix`.
pub fn incremental_pieces<E>(
    count: usize,
    mut decode_prefix: impl FnMut(usize) -> Result<String, E>,
) -> Result<Vec<String>, E> {
    let mut pieces = Vec::with_capacity(count);
    let mut emitted = String::new();
    for n in 1..=count {
        let text = decode_prefix(n)?;
        if n < count && text.ends_with('\u{FFFD}') {
            pieces.push(String::new());
            continue;
        }
        let shared = shared_prefix(&emitted, &text);
        pieces.push(text[shared..].to_owned());
        emitted = text;
    }
    Ok(pieces)
}

/// The byte length of the longest common prefix of `a` and `b` that ends
/// on a character boundary.
fn shared_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((at, _), _)| at)
}

/// Each piece's byte range in `pieces.concat()`.
pub fn token_spans(pieces: &[String]) -> Vec<Range<usize>> {
    let mut at = 0;
    pieces
        .iter()
        .map(|piece| {
            let span = at..at + piece.len();
            at = span.end;
            span
        })
        .collect()
}

/// The piece's range without its leading and trailing whitespace, or
/// `None` when it adds no visible text (an end-of-sequence token, a held
/// partial character, a space or a newline).
pub fn visible_span(text: &str, span: &Range<usize>) -> Option<Range<usize>> {
    let piece = text.get(span.clone())?;
    let trimmed_start = piece.len() - piece.trim_start().len();
    let trimmed_end = piece.trim_end().len();
    (trimmed_end > trimmed_start).then(|| span.start + trimmed_start..span.start + trimmed_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces_of(prefixes: &[&str]) -> Vec<String> {
        incremental_pieces(prefixes.len(), |n| {
            Ok::<_, std::convert::Infallible>(prefixes[n - 1].to_owned())
        })
        .unwrap_or_default()
    }

    #[test]
    fn pieces_are_what_each_prefix_adds() {
        // "▁A", "▁dog", "▁runs", "." as a LLaMA decoder shows them (the
        // first token's space stripped).
        let pieces = pieces_of(&["A", "A dog", "A dog runs", "A dog runs."]);
        assert_eq!(pieces, ["A", " dog", " runs", "."]);
        assert_eq!(token_spans(&pieces), [0..1, 1..5, 5..10, 10..11]);
    }

    #[test]
    fn a_split_character_appears_with_its_last_byte() {
        // "café": the é's two bytes are two byte-fallback tokens.
        let pieces = pieces_of(&["caf", "caf\u{FFFD}", "café", "café!"]);
        assert_eq!(pieces, ["caf", "", "é", "!"]);
        // An end-of-sequence token adds nothing.
        assert_eq!(pieces_of(&["Hi", "Hi"]), ["Hi", ""]);
    }

    #[test]
    fn rewritten_text_keeps_only_the_new_part() {
        // The decoder drops a space it showed before ("a ," -> "a,").
        let pieces = pieces_of(&["a ", "a,", "a, b"]);
        assert_eq!(pieces, ["a ", ",", " b"]);
    }

    #[test]
    fn visible_spans_skip_whitespace_and_empty_pieces() {
        let text = "A dog\n runs";
        assert_eq!(visible_span(text, &(1..5)), Some(2..5));
        assert_eq!(visible_span(text, &(5..7)), None);
        assert_eq!(visible_span(text, &(7..7)), None);
        assert_eq!(visible_span(text, &(6..11)), Some(7..11));
    }
}
