//! Tag expressions as Cucumber defines them: `not` binds tightest, then
//! `and`, then `or`, both left-associative, with parentheses. The gherkin
//! crate under cucumber 0.21 parses `not @a and @b` as `not (@a and @b)`
//! (cucumber-rs/gherkin#51), which would run scenarios the operator
//! excluded; hubtrust parses the expression itself and hands cucumber the
//! tree.

use cucumber::gherkin::tagexpr::TagOperation;

pub fn parse(expr: &str) -> Result<TagOperation, String> {
    let tokens = tokens(expr);
    let mut parser = Parser { tokens, at: 0 };
    let op = parser.or()?;
    match parser.peek() {
        None => Ok(op),
        Some(token) => Err(format!("unexpected `{token}`")),
    }
}

fn tokens(expr: &str) -> Vec<String> {
    expr.replace('(', " ( ")
        .replace(')', " ) ")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

struct Parser {
    tokens: Vec<String>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn next(&mut self) -> Option<String> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn or(&mut self) -> Result<TagOperation, String> {
        let mut left = self.and()?;
        while self.peek() == Some("or") {
            self.at += 1;
            left = TagOperation::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<TagOperation, String> {
        let mut left = self.not()?;
        while self.peek() == Some("and") {
            self.at += 1;
            left = TagOperation::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<TagOperation, String> {
        if self.peek() == Some("not") {
            self.at += 1;
            return Ok(TagOperation::Not(Box::new(self.not()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<TagOperation, String> {
        match self.next().as_deref() {
            Some("(") => {
                let inner = self.or()?;
                match self.next().as_deref() {
                    Some(")") => Ok(inner),
                    Some(other) => Err(format!("expected `)`, found `{other}`")),
                    None => Err("a `(` is never closed".into()),
                }
            }
            Some(tag) if tag.len() > 1 && tag.starts_with('@') => {
                Ok(TagOperation::Tag(tag[1..].to_string()))
            }
            Some(other) => Err(format!("expected a tag like `@core`, found `{other}`")),
            None => Err("it ends where a tag was expected".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use cucumber::tag::Ext as _;

    use super::*;

    fn selects(expr: &str, tags: &[&str]) -> bool {
        parse(expr).unwrap().eval(tags.iter())
    }

    #[test]
    fn not_binds_tighter_than_and_which_binds_tighter_than_or() {
        // Each of these the gherkin crate's own parser gets wrong.
        assert!(!selects("not @tls and @core", &["core", "tls"]));
        assert!(selects("not @tls and @core", &["core"]));
        assert!(!selects(
            "@core and not @reachability and not @tls",
            &["core", "tls"]
        ));
        assert!(!selects(
            "@core and not @reachability and not @tls",
            &["core", "reachability"]
        ));
        assert!(selects(
            "@core and not @reachability and not @tls",
            &["core"]
        ));
        assert!(selects("@a or @b and @c", &["a"]));
        assert!(!selects("(@a or @b) and @c", &["a"]));
        assert!(selects("not (@a and @b)", &["a"]));
        assert!(selects("not not @a", &["a"]));
    }

    #[test]
    fn a_malformed_expression_says_where() {
        assert!(parse("@core and").unwrap_err().contains("ends where a tag"));
        assert!(parse("(@core").unwrap_err().contains("never closed"));
        assert!(parse("@core @wire")
            .unwrap_err()
            .contains("unexpected `@wire`"));
        assert!(parse("core").unwrap_err().contains("found `core`"));
        assert!(parse("").is_err());
    }
}
