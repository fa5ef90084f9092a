//! How errors read in logs, status and CLI output: one line, with their causes.

/// An error and each cause not already in its text, joined with `: `, on one line.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

/// A Kubernetes API error in one line, without request bodies.
pub fn api_error_summary(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer\nline")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_are_joined_once_on_one_line() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(super::one_line(&e), "outer line: inner");
        let same = std::io::Error::other("inner");
        assert_eq!(super::one_line(&same), "inner");
    }
}
