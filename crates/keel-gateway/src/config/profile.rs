//! Spring profile expressions, as used by `spring.config.activate.on-profile` and the older
//! `spring.profiles` document selector: `dev`, `!dev`, `dev & eu`, `dev | test`, `(a | b) & !c`,
//! and comma-separated lists (any of them).

/// Whether `expr` holds for the `active` profiles. A malformed expression is an error.
pub(crate) fn matches(expr: &str, active: &[String]) -> Result<bool, String> {
    // A comma-separated list means "any of".
    let mut any = false;
    for part in split_top_level_commas(expr) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let mut p = Parser {
            chars: part.chars().collect(),
            pos: 0,
            active,
        };
        let v = p.or()?;
        p.skip_ws();
        if p.pos != p.chars.len() {
            return Err(format!(
                "unexpected {:?} in profile expression {expr:?}",
                p.chars[p.pos]
            ));
        }
        any |= v;
    }
    Ok(any)
}

fn split_top_level_commas(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    active: &'a [String],
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.chars.len() && self.chars[self.pos].is_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.chars.get(self.pos).copied()
    }

    fn or(&mut self) -> Result<bool, String> {
        let mut v = self.and()?;
        while self.peek() == Some('|') {
            self.pos += 1;
            let r = self.and()?;
            v = v || r;
        }
        Ok(v)
    }

    fn and(&mut self) -> Result<bool, String> {
        let mut v = self.unary()?;
        while self.peek() == Some('&') {
            self.pos += 1;
            let r = self.unary()?;
            v = v && r;
        }
        Ok(v)
    }

    fn unary(&mut self) -> Result<bool, String> {
        match self.peek() {
            Some('!') => {
                self.pos += 1;
                Ok(!self.unary()?)
            }
            Some('(') => {
                self.pos += 1;
                let v = self.or()?;
                if self.peek() != Some(')') {
                    return Err("unbalanced parentheses in profile expression".to_owned());
                }
                self.pos += 1;
                Ok(v)
            }
            Some(_) => {
                let start = self.pos;
                while self.pos < self.chars.len()
                    && !matches!(self.chars[self.pos], '!' | '&' | '|' | '(' | ')')
                    && !self.chars[self.pos].is_whitespace()
                {
                    self.pos += 1;
                }
                if start == self.pos {
                    return Err("empty profile name".to_owned());
                }
                let name: String = self.chars[start..self.pos].iter().collect();
                Ok(self.active.contains(&name))
            }
            None => Err("incomplete profile expression".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(expr: &str, active: &[&str]) -> bool {
        let a: Vec<String> = active.iter().map(|s| (*s).to_owned()).collect();
        matches(expr, &a).unwrap()
    }

    #[test]
    fn expressions() {
        assert!(on("dev", &["dev"]));
        assert!(!on("dev", &["prod"]));
        assert!(on("!dev", &["prod"]));
        assert!(on("dev | prod", &["prod"]));
        assert!(!on("dev & eu", &["dev"]));
        assert!(on("dev & eu", &["eu", "dev"]));
        assert!(on("(dev | test) & !eu", &["test"]));
        assert!(on("dev, prod", &["prod"]));
        assert!(matches("dev &", &[]).is_err());
        assert!(matches("(dev", &[]).is_err());
    }
}
