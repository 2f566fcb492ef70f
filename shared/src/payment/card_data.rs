//! Keeps card data out: detects primary account numbers (PANs) in free text and redacts digit
//! runs from error messages before they reach a log or a response.

/// A PAN is 12 to 19 digits; separators (space, dash) are allowed between them.
const MIN_PAN_DIGITS: usize = 12;

/// Whether `text` contains something shaped like a card number: 12+ digits in a run, possibly
/// split by single spaces or dashes. Deliberately broad: a false positive costs the client a 400,
/// a false negative puts card data into queues and logs.
pub fn looks_like_card_number(text: &str) -> bool {
    let mut digits = 0;
    let mut last_was_separator = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits += 1;
            last_was_separator = false;
            if digits >= MIN_PAN_DIGITS {
                return true;
            }
        } else if (c == ' ' || c == '-') && digits > 0 && !last_was_separator {
            last_was_separator = true;
        } else {
            digits = 0;
            last_was_separator = false;
        }
    }
    false
}

/// `text` with every run of 12 or more digits replaced by `[redacted]`, so that an error message
/// quoting a rejected value ("invalid type: string \"4242...\"") never carries a PAN onwards.
pub fn redact_digit_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= MIN_PAN_DIGITS {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_card_numbers_in_their_usual_spellings() {
        for pan in ["4242424242424242", "4242 4242 4242 4242", "4242-4242-4242-4242", "note 378282246310005 x"] {
            assert!(looks_like_card_number(pan), "{pan}");
        }
        for ok in ["pm_card_visa", "order 12345", "2026-11-27", "+1 555 0100"] {
            assert!(!looks_like_card_number(ok), "{ok}");
        }
    }

    #[test]
    fn redacts_long_digit_runs_only() {
        assert_eq!(redact_digit_runs("invalid \"4242424242424242\" at 12"), "invalid \"[redacted]\" at 12");
    }

    proptest! {
        #[test]
        fn no_long_digit_run_survives_redaction(text in "[0-9a-z \"]{0,60}") {
            let redacted = redact_digit_runs(&text);
            prop_assert!(!redacted.split(|c: char| !c.is_ascii_digit()).any(|run| run.len() >= MIN_PAN_DIGITS));
        }
    }
}
