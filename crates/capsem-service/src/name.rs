//! Sandbox names: what is allowed, and generated ones.

use rand::seq::IndexedRandom;

/// Longest name.
pub const MAX_LEN: usize = 63;

/// A name is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not a sandbox name: use 1 to 63 lowercase letters, digits and '-', starting with a letter or digit"
)]
pub struct BadName(pub String);

/// Checks `name` against `[a-z0-9][a-z0-9-]{0,62}`. Names become file
/// names on the host, so nothing else may pass.
pub fn check(name: &str) -> Result<(), BadName> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes[0] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BadName(name.to_owned()))
    }
}

const ADJECTIVES: &[&str] = &[
    "amber", "brave", "calm", "deft", "eager", "fair", "gentle", "hardy", "keen", "lively",
    "mellow", "nimble", "proud", "quiet", "rapid", "steady", "tidy", "vivid", "warm", "witty",
];
const NOUNS: &[&str] = &[
    "badger", "cedar", "comet", "delta", "ember", "falcon", "garnet", "harbor", "heron", "maple",
    "meadow", "otter", "pebble", "quartz", "raven", "river", "spruce", "summit", "willow", "wren",
];

/// An adjective-noun name (`calm-otter`) that `taken` does not hold; a
/// number is added when every pair tried is taken.
pub fn generate(taken: impl Fn(&str) -> bool) -> String {
    let mut rng = rand::rng();
    for attempt in 0u32.. {
        let adjective = ADJECTIVES.choose(&mut rng).copied().unwrap_or("calm");
        let noun = NOUNS.choose(&mut rng).copied().unwrap_or("otter");
        let name = if attempt < 32 {
            format!("{adjective}-{noun}")
        } else {
            format!("{adjective}-{noun}-{attempt}")
        };
        if !taken(&name) {
            return name;
        }
    }
    unreachable!("u32 attempts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_or_confuse_are_refused() {
        for bad in [
            "", "-x", "X", "a_b", "a.b", "..", "a/b", "a b", "é", "a\0", "web\n",
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert!(check(&"a".repeat(64)).is_err());
        for good in ["a", "0", "web", "my-box-2", &"a".repeat(63)] {
            assert_eq!(check(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn generated_names_are_valid_and_avoid_taken_ones() {
        let name = generate(|n| n.split('-').count() == 2);
        assert_eq!(check(&name), Ok(()));
        assert_eq!(name.split('-').count(), 3);
    }
}
