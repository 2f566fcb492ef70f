//! Keeps card data out: one detector for primary account numbers (PANs), used on every string
//! that enters (body fields, metadata keys and values, the idempotency key, the caller's scope,
//! URL path segments, message envelopes), and one redaction for every string that goes out (error
//! details, problem documents, logs, failure records).
//!
//! **Detection.** Text is read as digit groups: any Unicode decimal digit (Arabic-Indic,
//! Devanagari, fullwidth … — every `Nd` block) and the super- and subscript digits count as
//! digits; groups are joined across gaps of up to [`MAX_GAP`] characters that are neither letters
//! nor digits (spaces of any kind, dashes, dots, slashes, underscores, zero-width and bidi
//! format characters, repeated or mixed) — except the list and time delimiters `,` `;` `:`. A card number is any run of consecutive groups with 12
//! to 19 digits in all that passes the Luhn check and touches no letter at either end, so an
//! ordinary 12–19 digit reference fails the check nine times in ten and is accepted, a longer
//! unbroken run of digits (a bank reference) is never taken for one, and neither are the digits
//! inside a UUID or a hex id (found by the demo: about one correlation id in fifty was refused
//! before the letter rule).
//!
//! **Redaction** is broader on purpose: every run of joined groups with 12 or more digits
//! becomes `[redacted]`, Luhn or not.

/// Shortest PAN (ISO/IEC 7812 allows 8, but issued card numbers are 12 to 19 digits).
const MIN_PAN_DIGITS: usize = 12;
/// Longest PAN.
const MAX_PAN_DIGITS: usize = 19;
/// Most separator characters between two digit groups of one number.
pub const MAX_GAP: usize = 8;

/// The zero of every Unicode `Nd` (decimal digit) block: each block is ten consecutive code
/// points, zero to nine. Generated from the Unicode Character Database 14.0 (Python's
/// `unicodedata`: every character of category `Nd` whose digit value is 0); no maintained crate
/// exposes decimal digit values for all scripts (`char::to_digit` is ASCII only, NFKC
/// normalisation leaves non-Latin digits as they are).
const ND_ZEROS: [u32; 66] = [
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6, 0xE50, 0xED0,
    0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620,
    0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0,
    0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60,
    0x16AC0, 0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// The value of a digit in any script, super- and subscripts included.
pub fn digit_value(c: char) -> Option<u8> {
    let cp = c as u32;
    if c.is_ascii_digit() {
        return Some((cp - 0x30) as u8);
    }
    match c {
        '\u{2070}' | '\u{2080}' => return Some(0),
        '\u{00B9}' | '\u{2081}' => return Some(1),
        '\u{00B2}' | '\u{2082}' => return Some(2),
        '\u{00B3}' | '\u{2083}' => return Some(3),
        '\u{2074}'..='\u{2079}' => return Some((cp - 0x2070) as u8),
        '\u{2084}'..='\u{2089}' => return Some((cp - 0x2080) as u8),
        _ => {}
    }
    let zero = ND_ZEROS[ND_ZEROS.partition_point(|z| *z <= cp).checked_sub(1)?];
    (cp - zero < 10).then(|| (cp - zero) as u8)
}

/// One run of digits in a text: where it is (byte offsets), its digits, and whether a letter
/// touches it (a number glued to a word, like the digits inside a UUID, is not a card number).
#[derive(Debug)]
struct Group {
    start: usize,
    end: usize,
    digits: Vec<u8>,
    letter_before: bool,
    letter_after: bool,
}

/// The text's digit groups, chained: groups separated by at most [`MAX_GAP`] characters that are
/// neither letters nor digits belong to one chain.
fn chains(text: &str) -> Vec<Vec<Group>> {
    let mut chains: Vec<Vec<Group>> = Vec::new();
    let mut current: Vec<Group> = Vec::new();
    let mut gap = 0usize;
    let mut after_letter = false;
    for (at, c) in text.char_indices() {
        if let Some(d) = digit_value(c) {
            match current.last_mut() {
                Some(group) if gap == 0 => {
                    group.digits.push(d);
                    group.end = at + c.len_utf8();
                }
                _ => current.push(Group {
                    start: at,
                    end: at + c.len_utf8(),
                    digits: vec![d],
                    letter_before: after_letter && gap == 0,
                    letter_after: false,
                }),
            }
            gap = 0;
        } else if joins_groups(c) && !current.is_empty() && gap < MAX_GAP {
            gap += 1;
        } else if !current.is_empty() {
            if let Some(last) = current.last_mut() {
                last.letter_after = gap == 0 && c.is_alphabetic();
            }
            chains.push(std::mem::take(&mut current));
            gap = 0;
        }
        after_letter = c.is_alphabetic();
    }
    if !current.is_empty() {
        chains.push(current);
    }
    chains
}

/// Whether `c` may stand between two digit groups of one number: anything but letters, digits,
/// and the list and time delimiters `,` `;` `:` (a list of status codes such as `409,409,409,409`
/// or a time such as `05:01:51.724932` is not a card number; nobody writes one that way).
fn joins_groups(c: char) -> bool {
    !c.is_alphanumeric() && !matches!(c, ',' | ';' | ':')
}

/// `text` with every UUID (8-4-4-4-12 hex digits) replaced by as many `x`: a UUID's all-digit
/// groups pass the Luhn check about one time in a hundred, and idempotency keys and correlation ids
/// are UUIDs (found by the end-to-end test: a valid payment's correlation id made it poison).
fn without_uuids(text: &str) -> std::borrow::Cow<'_, str> {
    const SHAPE: &[u8; 36] = b"hhhhhhhh-hhhh-hhhh-hhhh-hhhhhhhhhhhh";
    let bytes = text.as_bytes();
    let is_uuid_at = |at: usize| {
        bytes.len() >= at + 36
            && bytes[at..at + 36]
                .iter()
                .zip(SHAPE)
                .all(|(b, s)| if *s == b'-' { *b == b'-' } else { b.is_ascii_hexdigit() })
    };
    if !(0..bytes.len()).any(is_uuid_at) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = bytes.to_vec();
    let mut at = 0;
    while at < bytes.len() {
        if is_uuid_at(at) {
            out[at..at + 36].fill(b'x');
            at += 36;
        } else {
            at += 1;
        }
    }
    // Only ASCII bytes were replaced, by ASCII: still UTF-8.
    std::borrow::Cow::Owned(String::from_utf8(out).expect("ASCII replaced by ASCII"))
}

/// The Luhn (mod 10) check that every issued card number passes.
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether `text` contains a card number: 12 to 19 digits over consecutive groups of a chain,
/// passing the Luhn check, not glued to a letter at either end (as a regular expression's word
/// boundary would say, except that `_` counts as a boundary: `pm_4242…` is caught).
pub fn contains_card_number(text: &str) -> bool {
    chains(&without_uuids(text)).iter().any(|chain| {
        (0..chain.len()).filter(|first| !chain[*first].letter_before).any(|first| {
            let mut digits: Vec<u8> = Vec::with_capacity(MAX_PAN_DIGITS);
            chain[first..].iter().any(|group| {
                digits.extend_from_slice(&group.digits);
                !group.letter_after && (MIN_PAN_DIGITS..=MAX_PAN_DIGITS).contains(&digits.len()) && luhn(&digits)
            })
        })
    })
}

/// `text` with every chain of 12 or more digits replaced by `[redacted]`: for anything that
/// quotes input on its way out (an error detail, a path, a log field, a stored body).
pub fn redact_card_data(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    // UUIDs are blanked with as many bytes, so offsets in the blanked text are offsets in `text`.
    for chain in chains(&without_uuids(text)) {
        if chain.iter().map(|g| g.digits.len()).sum::<usize>() < MIN_PAN_DIGITS {
            continue;
        }
        let (start, end) = (chain[0].start, chain[chain.len() - 1].end);
        out.push_str(&text[copied..start]);
        out.push_str("[redacted]");
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Characters refused in every text field: controls, bidirectional overrides and isolates, and
/// zero-width characters — they hide or reorder what an operator reads, and split digit runs.
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Known test card numbers (Visa, Amex, Mastercard, Diners 14, Visa 13, Maestro 19).
    const CARDS: [&str; 6] = [
        "4242424242424242",
        "378282246310005",
        "5555555555554444",
        "30569309025904",
        "4222222222222",
        "6759649826438453003",
    ];

    #[test]
    fn finds_card_numbers_in_their_usual_and_unusual_spellings() {
        for pan in [
            "4242424242424242",
            "4242 4242 4242 4242",
            "4242-4242-4242-4242",
            "4242  --  4242 / 4242.4242",
            "note 378282246310005 x",
            "pm_4242424242424242",
            "4242\u{200B}4242\u{200B}4242\u{200B}4242",
            "\u{0664}\u{0662}\u{0664}\u{0662}\u{0664}\u{0662}\u{0664}\u{0662}\u{0664}\u{0662}\u{0664}\u{0662}\u{0664}\u{0662}\u{0664}\u{0662}",
            "４２４２４２４２４２４２４２４２",
            "ref 1234 4242424242424242",
        ] {
            assert!(contains_card_number(pan), "{pan}");
        }
        for ok in [
            "pm_card_visa",
            "order 12345",
            "2026-11-27T12:00:00Z",
            "+1 555 0100",
            "02779918-7987-4957-892c-04ae4547ece8", // UUIDs whose all-digit groups pass Luhn
            "8686e469-ad8d-46e9-a4db-417399994587",
            "4242424242424241",         // fails Luhn
            "123456789012345678901234", // a 24-digit bank reference
        ] {
            assert!(!contains_card_number(ok), "{ok}");
        }
    }

    #[test]
    fn redacts_long_digit_chains_whatever_their_spelling() {
        assert_eq!(redact_card_data("invalid \"4242424242424242\" at 12"), "invalid \"[redacted]\" at 12");
        assert_eq!(redact_card_data("a 4242 4242 4242 4241 b"), "a [redacted] b");
        assert_eq!(redact_card_data("line 1 column 20"), "line 1 column 20");
    }

    #[test]
    fn digits_of_every_script_have_their_value() {
        assert_eq!(digit_value('7'), Some(7));
        assert_eq!(digit_value('\u{0667}'), Some(7)); // Arabic-Indic
        assert_eq!(digit_value('\u{096D}'), Some(7)); // Devanagari
        assert_eq!(digit_value('\u{FF17}'), Some(7)); // fullwidth
        assert_eq!(digit_value('\u{2077}'), Some(7)); // superscript
        assert_eq!(digit_value('a'), None);
        assert_eq!(digit_value('\u{0669}'), Some(9));
        assert_eq!(digit_value('\u{066A}'), None, "Arabic percent sign, right after the digits");
    }

    #[test]
    fn controls_bidi_and_zero_width_characters_are_forbidden() {
        for c in ['\u{0}', '\n', '\u{202E}', '\u{2066}', '\u{200B}', '\u{FEFF}'] {
            assert!(is_forbidden_char(c), "{:?}", c);
        }
        for c in ['a', ' ', 'é', '€', '-'] {
            assert!(!is_forbidden_char(c), "{c:?}");
        }
    }

    fn separator() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                " ", "-", ".", "/", "_", "\u{00A0}", "\u{2009}", "\u{200B}", "\u{2013}", "\u{202E}",
            ]),
            0..3,
        )
        .prop_map(|parts| parts.concat())
    }

    /// A Luhn-valid number of `len` digits.
    fn card(len: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(0u8..10, len - 1).prop_map(|mut digits| {
            let check = (0..10).find(|c| {
                let mut all = digits.clone();
                all.push(*c);
                luhn(&all)
            });
            digits.push(check.expect("one check digit fits"));
            digits
        })
    }

    fn spell(digits: &[u8], zero: u32, separators: &[String]) -> String {
        let mut out = String::new();
        for (i, d) in digits.iter().enumerate() {
            out.push(char::from_u32(zero + u32::from(*d)).unwrap());
            if i + 1 < digits.len() {
                out.push_str(&separators[i % separators.len()]);
            }
        }
        out
    }

    proptest! {
        #[test]
        fn generated_card_numbers_are_caught_in_any_position_and_spelling(
            digits in (12usize..=19).prop_flat_map(card),
            zero in prop::sample::select(vec![0x30u32, 0x660, 0x966, 0xFF10, 0x1D7CE]),
            separators in prop::collection::vec(separator(), 1..4),
            before in "[a-z ]{0,10}",
            after in "[a-z ]{0,10}",
        ) {
            // Words around it end at a space (a number glued to a word is not read as a card).
            let text = format!("{before} {} {after}", spell(&digits, zero, &separators));
            prop_assert!(contains_card_number(&text), "{text:?}");
            prop_assert!(!redact_card_data(&text).chars().any(|c| digit_value(c).is_some()), "{text:?}");
        }

        #[test]
        fn digit_runs_that_fail_luhn_are_not_card_numbers(
            digits in (12usize..=19).prop_flat_map(|len| prop::collection::vec(0u8..10, len)),
            word in "[a-z]{1,8}",
        ) {
            prop_assume!(!luhn(&digits));
            // Alone, and beside letters (which end a chain).
            let text: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
            prop_assert!(!contains_card_number(&text), "{text}");
            let framed = format!("{word}{text}{word}");
            prop_assert!(!contains_card_number(&framed), "{framed}");
        }

        #[test]
        fn every_known_test_card_is_caught(index in 0usize..CARDS.len(), separators in prop::collection::vec(separator(), 1..3)) {
            let digits: Vec<u8> = CARDS[index].bytes().map(|b| b - b'0').collect();
            prop_assert!(contains_card_number(&spell(&digits, 0x30, &separators)));
        }
    }
}
