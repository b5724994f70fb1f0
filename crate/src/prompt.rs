//! AUTOMATIC1111's prompt-attention syntax, as its `parse_prompt_attention`
//! (modules/prompt_parser.py) reads it: `(text)` weighs ×1.1, `[text]` ÷1.1, `(text:1.5)`
//! sets the factor, nesting multiplies, `\(` `\)` `\[` `\]` `\\` are literal, brackets left
//! open run to the end, an unmatched `)` or `]` is text, and `BREAK` starts a new chunk.
//!
//! Prompts written for A1111 are the lingua franca of SD prompts, so the weights are A1111's
//! to the last bit: each bracket multiplies its fragments in the order A1111 closes them.
//! No regex: a hand-written scanner over the same alternatives cannot backtrack.

/// Longer prompts are refused by the caller: it bounds the parse's worst case (see
/// `parse_prompt_attention`).
pub const MAX_PROMPT_CHARS: usize = 20_000;

const ROUND: f64 = 1.1;
const SQUARE: f64 = 1.0 / 1.1;

/// One piece of a parsed prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Fragment {
    /// Text whose token embeddings are scaled by `weight`.
    Text { text: String, weight: f64 },
    /// A1111's `BREAK`: the text after it starts a new 75-token chunk.
    Break,
}

/// A1111's working list `res` (a BREAK being `("BREAK", -1)`), its weights kept apart so
/// that scaling them is one tight loop, plus where each still-open bracket started.
#[derive(Default)]
struct Parse {
    texts: Vec<String>,
    weights: Vec<f64>,
    round: Vec<usize>,
    square: Vec<usize>,
}

impl Parse {
    fn push(&mut self, text: &str, weight: f64) {
        self.texts.push(text.to_owned());
        self.weights.push(weight);
    }

    /// Plain text, split at each `BREAK` word as A1111's `re.split(re_break, text)` does:
    /// `"a BREAK"` leaves an empty fragment after the marker, and A1111 keeps it.
    fn text(&mut self, mut chunk: &str) {
        while let Some((before, after)) = split_break(chunk) {
            self.push(before, 1.0);
            self.push("BREAK", -1.0);
            chunk = after;
        }
        self.push(chunk, 1.0);
    }

    /// A1111's `multiply_range`: everything since the bracket opened, one factor at a time.
    fn multiply(&mut self, start: usize, factor: f64) {
        self.weights[start..].iter_mut().for_each(|w| *w *= factor);
    }
}

/// Python's `\s` (`str.isspace`), which also counts the separators U+001C–U+001F.
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Python's `\w`, which decides `\b`.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The first match of A1111's `\s*\bBREAK\b\s*` in `text`: the text before and after it.
fn split_break(text: &str) -> Option<(&str, &str)> {
    text.match_indices("BREAK").find_map(|(at, _)| {
        let (before, after) = (&text[..at], &text[at + 5..]);
        let bounded = |c: Option<char>| !c.is_some_and(is_word);
        (bounded(before.chars().next_back()) && bounded(after.chars().next())).then(|| {
            (
                before.trim_end_matches(is_space),
                after.trim_start_matches(is_space),
            )
        })
    })
}

/// A1111's `:\s*([+-]?[.\d]+)\s*\)` at the `:` at byte `colon`: the number and the byte after
/// the `)`. Each piece is a run of one class, so there is nothing to backtrack into. Digits
/// are ASCII: Python's `\d` and `float` also take other scripts' (`１`, `٣`), prompts do not.
fn weight_token(prompt: &str, colon: usize) -> Option<(&str, usize)> {
    let body = prompt[colon + 1..].trim_start_matches(is_space);
    let sign = usize::from(body.starts_with(['+', '-']));
    let digits = body[sign..]
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let tail = body[sign + digits..].trim_start_matches(is_space);
    (digits > 0 && tail.starts_with(')'))
        .then(|| (&body[..sign + digits], prompt.len() - tail.len() + 1))
}

/// Splits a prompt into weighted text and `BREAK`s, as A1111's `parse_prompt_attention`;
/// an empty prompt is one empty fragment. Where A1111 would raise on a number Python cannot
/// read (`(x:1.2.3)`), the `:1.2.3` is read as text, as if the weight pattern had not matched.
///
/// Quirks kept for fidelity: a lone `\` vanishes, and a `BREAK` inside brackets is scaled
/// with them, so it is no longer A1111's `("BREAK", -1)` marker but the word "BREAK" with a
/// negative weight (A1111 then encodes it as such).
///
/// Scanning is linear; each bracket then scales the fragments inside it one by one, as A1111
/// does (so the floats agree), which costs the sum of their nesting depths: linear for sane
/// nesting, at worst ~10⁸ multiplications (tens of milliseconds) within `MAX_PROMPT_CHARS`.
pub fn parse_prompt_attention(prompt: &str) -> Vec<Fragment> {
    let mut p = Parse::default();
    let mut i = 0;
    while let Some(&byte) = prompt.as_bytes().get(i) {
        i += 1;
        match byte {
            b'\\' => match prompt.as_bytes().get(i) {
                Some(b'(' | b')' | b'[' | b']' | b'\\') => {
                    p.push(&prompt[i..i + 1], 1.0);
                    i += 1;
                }
                _ => p.push("", 1.0),
            },
            b'(' => p.round.push(p.texts.len()),
            b'[' => p.square.push(p.texts.len()),
            b':' => match (weight_token(prompt, i - 1), p.round.is_empty()) {
                (Some((number, end)), false) => {
                    let start = p.round.pop().expect("open bracket");
                    if let Ok(factor) = number.parse::<f64>() {
                        p.multiply(start, factor);
                    } else {
                        p.text(&prompt[i - 1..end - 1]);
                        p.multiply(start, ROUND);
                    }
                    i = end;
                }
                (Some((_, end)), true) => {
                    p.text(&prompt[i - 1..end]);
                    i = end;
                }
                (None, _) => p.text(":"),
            },
            b')' => match p.round.pop() {
                Some(start) => p.multiply(start, ROUND),
                None => p.text(")"),
            },
            b']' => match p.square.pop() {
                Some(start) => p.multiply(start, SQUARE),
                None => p.text("]"),
            },
            _ => {
                let run = prompt[i - 1..].find(['\\', '(', ')', '[', ']', ':']);
                let end = run.map_or(prompt.len(), |n| i - 1 + n);
                p.text(&prompt[i - 1..end]);
                i = end;
            }
        }
    }
    // Brackets never closed run to the end: all round ones outermost first, then square.
    for start in std::mem::take(&mut p.round) {
        p.multiply(start, ROUND);
    }
    for start in std::mem::take(&mut p.square) {
        p.multiply(start, SQUARE);
    }
    if p.texts.is_empty() {
        p.push("", 1.0);
    }
    let mut merged: Vec<(String, f64)> = Vec::with_capacity(p.texts.len());
    for (text, weight) in p.texts.into_iter().zip(p.weights) {
        match merged.last_mut() {
            Some((last, w)) if *w == weight => last.push_str(&text),
            _ => merged.push((text, weight)),
        }
    }
    // A1111's encoder starts a chunk only for a fragment that is exactly ("BREAK", -1).
    merged
        .into_iter()
        .map(|(text, weight)| match (text.as_str(), weight) {
            ("BREAK", -1.0) => Fragment::Break,
            _ => Fragment::Text { text, weight },
        })
        .collect()
}

/// The prompt as plain text, for encoders that take no weights: the text fragments joined,
/// each `BREAK` a single space between words (none at either end).
pub fn plain_text(fragments: &[Fragment]) -> String {
    let (mut out, mut gap) = (String::new(), false);
    for fragment in fragments {
        match fragment {
            Fragment::Break => gap = true,
            Fragment::Text { text, .. } if !text.is_empty() => {
                if gap && !out.is_empty() {
                    out.push(' ');
                }
                gap = false;
                out.push_str(text);
            }
            Fragment::Text { .. } => {}
        }
    }
    out
}

/// Whether the prompt uses any of the syntax (brackets, escapes, BREAK). When it does not,
/// parsing gives back the prompt whole at weight 1, so it must encode exactly as before.
pub fn has_syntax(prompt: &str) -> bool {
    prompt.contains(['(', ')', '[', ']', '\\']) || split_break(prompt).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compares as A1111 prints it, a `Break` being `("BREAK", -1)`, weights to 1e-12.
    fn check(prompt: &str, expected: &[(&str, f64)]) {
        let got: Vec<(String, f64)> = parse_prompt_attention(prompt)
            .into_iter()
            .map(|f| match f {
                Fragment::Text { text, weight } => (text, weight),
                Fragment::Break => ("BREAK".into(), -1.0),
            })
            .collect();
        let close = got.len() == expected.len()
            && (got.iter().zip(expected)).all(|(g, e)| g.0 == e.0 && (g.1 - e.1).abs() < 1e-12);
        assert!(close, "{prompt:?}: got {got:?}, expected {expected:?}");
    }

    const BREAK: (&str, f64) = ("BREAK", -1.0);

    #[test]
    fn a1111_docstring() {
        check("normal text", &[("normal text", 1.0)]);
        let important = [("an ", 1.0), ("important", 1.1), (" word", 1.0)];
        check("an (important) word", &important);
        check("(unbalanced", &[("unbalanced", 1.1)]);
        check(r"\(literal\]", &[("(literal]", 1.0)]);
        check("(unnecessary)(parens)", &[("unnecessaryparens", 1.1)]);
        let prompt = "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).";
        let (house, sky) = (1.5730000000000004, 1.4641000000000006);
        let start = [("a ", 1.0), ("house", house), (" ", 1.1)];
        let middle = [("on", 1.0), (" a ", 1.1), ("hill", 0.55)];
        let end = [(", sun, ", 1.1), ("sky", sky), (".", 1.1)];
        check(prompt, &[start, middle, end].concat());
        // Python's own floats, bit for bit.
        let got = parse_prompt_attention(prompt);
        assert!(matches!(got[1], Fragment::Text { weight, .. } if weight == house));
        assert!(matches!(got[7], Fragment::Text { weight, .. } if weight == sky));
    }

    #[test]
    fn nesting_weights_and_escapes() {
        check("((a:1.5))", &[("a", 1.65)]);
        check("[[x]]", &[("x", 1.0 / 1.21)]);
        check("x (word: 1.2 )", &[("x ", 1.0), ("word", 1.2)]);
        check("(x:-1)", &[("x", -1.0)]);
        check("(x:.5)(y:+2.)", &[("x", 0.5), ("y", 2.0)]);
        check("(word:abc)", &[("word:abc", 1.1)]);
        check("(x:1.2.3)", &[("x:1.2.3", 1.1)]);
        check(r"a\\b \(c\) \[d\]", &[(r"a\b (c) [d]", 1.0)]);
        check(r"a\b", &[("ab", 1.0)]);
    }

    #[test]
    fn unmatched_closers_and_colons_are_text() {
        check("a) b] c", &[("a) b] c", 1.0)]);
        check("ratio 16:9, x:1.5)", &[("ratio 16:9, x:1.5)", 1.0)]);
        check("[a) b]", &[("a) b", 1.0 / 1.1)]);
    }

    #[test]
    fn break_splits_only_as_a_word() {
        check("a BREAK b", &[("a", 1.0), BREAK, ("b", 1.0)]);
        check("a \t BREAK\n b", &[("a", 1.0), BREAK, ("b", 1.0)]);
        check("BREAK a", &[("", 1.0), BREAK, ("a", 1.0)]);
        check("a BREAK", &[("a", 1.0), BREAK, ("", 1.0)]);
        check("a,BREAK,(b)", &[("a,", 1.0), BREAK, (",", 1.0), ("b", 1.1)]);
        check(
            "BREAKfast _BREAK BREAKs",
            &[("BREAKfast _BREAK BREAKs", 1.0)],
        );
        // Inside brackets A1111 scales the marker too: the word "BREAK" at weight -1.1.
        check("(a BREAK b)", &[("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]);
        let fragments = parse_prompt_attention("(a BREAK b)");
        assert!(matches!(&fragments[1], Fragment::Text { text, .. } if text == "BREAK"));
        assert_eq!(
            plain_text(&parse_prompt_attention(" BREAK a BREAK b BREAK ")),
            "a b"
        );
    }

    #[test]
    fn empty_and_merged() {
        check("", &[("", 1.0)]);
        check("(a)(b) c", &[("ab", 1.1), (" c", 1.0)]);
        check("(a:1)b:c", &[("ab:c", 1.0)]);
        // 1.1 × (1 / 1.1) is exactly 1, so A1111 merges `a` with `b`.
        check("[(a)]b", &[("ab", 1.0)]);
    }

    #[test]
    fn syntax_free_prompts_are_untouched() {
        for prompt in [
            "",
            "a photo of a cat, 4k: high detail",
            "déjà vu BREAKs",
            "x:1.5",
        ] {
            assert!(!has_syntax(prompt), "{prompt:?}");
            check(prompt, &[(prompt, 1.0)]);
            assert_eq!(plain_text(&parse_prompt_attention(prompt)), prompt);
        }
        for prompt in ["(a)", "a]", r"a\b", "a BREAK b", "[b"] {
            assert!(has_syntax(prompt), "{prompt:?}");
        }
        let fragments = parse_prompt_attention(r"a (cat:1.3) on [a \(red\) mat] BREAK sky");
        assert_eq!(plain_text(&fragments), "a cat on a (red) mat sky");
    }

    #[test]
    fn huge_prompts_parse_quickly() {
        let deep = format!("{}x{}", "(".repeat(100_000), ")".repeat(100_000));
        let fragments = parse_prompt_attention(&deep);
        assert!(matches!(&fragments[..], [Fragment::Text { text, .. }] if text == "x"));
        assert_eq!(
            parse_prompt_attention(&"(a) [b] ".repeat(25_000)).len(),
            100_000
        );
        // The worst case within the limit: every fragment one bracket deeper than the last.
        let chain = "(a[a".repeat(MAX_PROMPT_CHARS / 4);
        let plain = plain_text(&parse_prompt_attention(&chain));
        assert_eq!(plain, "a".repeat(MAX_PROMPT_CHARS / 2));
    }
}
