//! Media types as HTTP headers carry them.

/// The media type of a `Content-Type` value without its parameters, lowercase:
/// `Image/PNG; q=1` → `image/png`.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_case_go() {
        assert_eq!(essence("Image/PNG; q=1"), "image/png");
        assert_eq!(essence(" application/json "), "application/json");
        assert_eq!(essence(""), "");
    }
}
