//! Text helpers every layer uses on text it did not write: cutting model output, prompts and failures to a
//! bounded length, and hiding the credentials in a connection URL before it is shown.

/// `text` cut to at most `limit` characters, with an ellipsis when cut.
pub fn shorten(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The first 200 characters of `text`, for error messages about hostile or broken model output.
pub fn excerpt(text: &str) -> String {
    shorten(text, 200)
}

/// `url` with its password replaced by `***` (`postgres://troupe:***@db/troupe`), for logs and error
/// messages. Credentials without a user part (`redis://:secret@host`) keep the empty user; a lone credential
/// with no `:` (`redis://token@host`) may itself be the secret and is hidden whole.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            let shown = match credentials.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{}{shown}{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_cuts_on_characters_not_bytes() {
        assert_eq!(shorten("héllo", 2), "hé…");
        assert_eq!(shorten("hi", 2), "hi");
    }

    #[test]
    fn passwords_are_hidden_and_users_kept() {
        assert_eq!(
            redact_url("postgres://troupe:s3cret@db:5432/troupe"),
            "postgres://troupe:***@db:5432/troupe"
        );
        assert_eq!(
            redact_url("redis://:s3cret@127.0.0.1:6379"),
            "redis://:***@127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://s3cret@127.0.0.1"),
            "redis://***@127.0.0.1"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("sqlite://.troupe/t.sqlite?mode=rwc"),
            "sqlite://.troupe/t.sqlite?mode=rwc"
        );
    }
}
