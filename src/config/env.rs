//! `${VAR}` and `${VAR:-default}` expansion in configuration strings.

/// Why a string could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// `${NAME}` with NAME unset and no default.
    #[error("environment variable {0} is not set (use ${{{0}:-default}} for a default)")]
    Unset(String),
    /// `${` without `}`, or a name that is not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("malformed ${{...}} reference")]
    Malformed,
}

/// Expands `${VAR}` and `${VAR:-default}` in `s`, reading variables with `lookup`
/// (normally `std::env::var`). `$$` stands for a literal `$`. An empty variable counts
/// as set for `${VAR}` and as unset for `${VAR:-default}`, as in POSIX shells.
pub fn expand_with(
    s: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let Some(inner_start) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = inner_start.find('}').ok_or(ExpandError::Malformed)?;
        let inner = &inner_start[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ExpandError::Malformed);
        }
        match (lookup(name), default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(ExpandError::Unset(name.to_string())),
        }
        rest = &inner_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// [`expand_with`] over the process environment.
pub fn expand(s: &str) -> Result<String, ExpandError> {
    expand_with(s, |n| std::env::var(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: &str) -> Option<String> {
        match n {
            "HOST" => Some("db.example".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands() {
        assert_eq!(
            expand_with("mysql://${HOST}/koha", env).unwrap(),
            "mysql://db.example/koha"
        );
        assert_eq!(
            expand_with("${NOPE:-sqlite://demo/library.db}", env).unwrap(),
            "sqlite://demo/library.db"
        );
        assert_eq!(expand_with("${EMPTY:-x}", env).unwrap(), "x");
        assert_eq!(expand_with("a$$b$c", env).unwrap(), "a$b$c");
        assert_eq!(
            expand_with("${NOPE}", env),
            Err(ExpandError::Unset("NOPE".into()))
        );
        assert_eq!(expand_with("${HOST", env), Err(ExpandError::Malformed));
        assert_eq!(expand_with("${1X}", env), Err(ExpandError::Malformed));
    }
}
