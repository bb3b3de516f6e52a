//! Glob patterns on names (`*` matches any run of characters), used for branch rules and the
//! simulated provider's failure injection on release versions.

/// Whether `text` matches the glob `pattern`, where `*` stands for any run of characters
/// (including none) and every other character stands for itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // Iterative matcher with backtracking to the last star: linear in practice, no recursion.
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] != '*' && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn stars_match_any_run_and_other_characters_match_themselves() {
        assert!(glob_matches("*-bad", "1.4.0-bad"));
        assert!(glob_matches("release/*", "release/2026-11"));
        assert!(glob_matches("main", "main"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("main", "main2"));
        assert!(!glob_matches("*-bad", "1.4.0-good"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
    }
}
