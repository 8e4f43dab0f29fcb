//! The syntax of names the gateway hands to other programs: ssh destinations, Docker image
//! references, network and container names.
//!
//! These names come from the command line, from kernelspecs and from API requests, and they
//! end up as arguments of `ssh` or in Docker Engine API calls. Each rule keeps a name from
//! being read as an option (a leading `-`) or from carrying characters a shell or the engine
//! would interpret. The rules are checked where the name enters: here for options, in the
//! provisioners for kernelspecs and requests.

/// Why `host` cannot be an ssh destination, if it cannot.
pub fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() || host.len() > 255 {
        return Err(format!("{host:?} is not a host name"));
    }
    if host.starts_with('-') {
        return Err(format!(
            "{host:?} starts with '-' (it would be read as an option)"
        ));
    }
    if let Some(c) = host.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{host:?} contains the character {c:?}"));
    }
    Ok(())
}

/// Splits a host list: commas (and the brackets and quotes of EG's traitlets list syntax,
/// `['a','b']`, are dropped), empty entries skipped, each checked.
pub fn parse_hosts(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let h = part
            .trim()
            .trim_matches(|c| matches!(c, '[' | ']' | '\'' | '"'));
        let h = h.trim();
        if h.is_empty() {
            continue;
        }
        check_host(h)?;
        out.push(h.to_owned());
    }
    Ok(out)
}

/// Whether `image` has the shape of an image reference (EG's `launch_docker.py` checks a
/// similar shape).
pub fn valid_image(image: &str) -> bool {
    image.len() <= 512
        && image
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
}

/// Whether `name` can be a Docker network name or the start of a container name.
pub fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked() {
        assert_eq!(
            parse_hosts("a, b ,,user@c").unwrap(),
            vec!["a", "b", "user@c"]
        );
        assert_eq!(parse_hosts("['a','b']").unwrap(), vec!["a", "b"]);
        assert!(parse_hosts("-oProxyCommand=x").is_err());
        assert!(parse_hosts("a b").is_err());
        assert!(parse_hosts("a\nb").is_err());
        assert!(parse_hosts("").unwrap().is_empty());
        assert!(check_host(&"h".repeat(256)).is_err());
    }

    #[test]
    fn images_and_names() {
        assert!(valid_image("gateway-lite/python-kernel:abc"));
        assert!(valid_image("reg.example:5000/a/b@sha256:00ff"));
        for bad in ["", "-v", "--privileged", "a b", "a;b", "a$b"] {
            assert!(!valid_image(bad), "{bad:?}");
        }
        assert!(valid_name("bridge") && valid_name("k-1.net_2"));
        for bad in ["", "-x", "a b", "a/b", &"n".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
