//! Checks for the free-form strings that reach room keys, event ids and log fields.

/// Maximum length of a user id, tenant id or room name, in characters.
pub const MAX_IDENTIFIER_CHARS: usize = 255;
/// Maximum length of a publisher-chosen event name, in characters.
pub const MAX_EVENT_NAME_CHARS: usize = 64;

/// Checks a user id, tenant id or room name: 1 to 255 characters, no control characters
/// (which would break SSE framing and log lines).
pub fn identifier(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.chars().count() > MAX_IDENTIFIER_CHARS {
        return Err("must be at most 255 characters");
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(())
}

/// Checks an event name chosen by a publisher: 1 to 64 of `A-Z a-z 0-9 : . _ -`, and not one
/// of the names clients give a fixed meaning.
pub fn event_name(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.len() > MAX_EVENT_NAME_CHARS {
        return Err("must be at most 64 characters");
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b":._-".contains(&b)) {
        return Err("may only contain A-Z, a-z, 0-9, `:`, `.`, `_` and `-`");
    }
    if crate::events::names::RESERVED.contains(&value) {
        return Err("is reserved for events the server sends itself");
    }
    Ok(())
}

/// Checks a required text field: not empty after trimming, at most `max` characters, and
/// no NUL, which PostgreSQL cannot store in text.
pub fn text(value: &str, max: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if value.contains('\0') {
        return Err("must not contain NUL characters".into());
    }
    if value.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_rejects_control_characters() {
        assert!(identifier("alice").is_ok());
        assert!(identifier("ñandú 42").is_ok());
        assert!(identifier("").is_err());
        assert!(identifier("a\nb").is_err());
        assert!(identifier("a\rb").is_err());
        assert!(identifier("a\u{0}b").is_err());
        assert!(identifier(&"x".repeat(256)).is_err());
    }

    #[test]
    fn event_name_rejects_reserved_and_odd() {
        assert!(event_name("data:updated").is_ok());
        assert!(event_name("invoice.paid").is_ok());
        assert!(event_name("notification:new").is_err());
        assert!(event_name("has space").is_err());
        assert!(event_name("").is_err());
    }
}
