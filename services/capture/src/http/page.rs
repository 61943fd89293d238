//! The small pages a person sees after posting a plain HTML form. Everything shown is escaped:
//! values come back from the person's own post and names from the source's settings.

/// One problem with a post, as the page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field as the form named it (`E-Mail`), else our name (`email`).
    pub field: String,
    /// What was posted, when anything was.
    pub value: Option<String>,
    pub description: String,
}

/// Longest posted value echoed back on an error page.
const MAX_ECHOED_CHARS: usize = 200;

/// Returns `text` safe to place in HTML text and in quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Returns a complete page titled `title` around `body` (already HTML).
fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{title}</title></head>\n\
         <body style=\"font-family: sans-serif; max-width: 40em; margin: 2em auto; padding: 0 1em\">\n\
         <h1>{title}</h1>\n{body}\n</body>\n</html>\n",
        title = escape(title),
    )
}

/// Returns the page listing why a post was not accepted.
pub fn rejected(problems: &[Problem]) -> String {
    let items: String = problems
        .iter()
        .map(|problem| {
            let value = problem
                .value
                .as_deref()
                .map(|value| {
                    let shown: String = value.chars().take(MAX_ECHOED_CHARS).collect();
                    format!(" (you entered “{}”)", escape(&shown))
                })
                .unwrap_or_default();
            format!(
                "<li><strong>{}</strong>{value}: {}</li>\n",
                escape(&problem.field),
                escape(&problem.description),
            )
        })
        .collect();
    page(
        "Please check the form",
        &format!(
            "<p>We could not accept your details:</p>\n<ul>\n{items}</ul>\n\
             <p>Please go back, correct them and send the form again.</p>"
        ),
    )
}

/// Returns a page saying the post was not accepted for `reason`, with nothing to correct.
pub fn failed(title: &str, reason: &str) -> String {
    page(title, &format!("<p>{}</p>", escape(reason)))
}

/// The plain-text answer to an accepted form post when the source names no thank-you page.
pub const THANK_YOU: &str = "Thank you! We received your details.\n";

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x&y")</script> it's"#),
            "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt; it&#39;s"
        );
        assert_eq!(escape("Jürgen Müller"), "Jürgen Müller");
    }

    #[test]
    fn the_rejected_page_lists_each_problem_escaped() {
        let html = rejected(&[
            Problem {
                field: "E-Mail".into(),
                value: Some("<script>alert(1)</script>".into()),
                description: "is not a valid email address".into(),
            },
            Problem {
                field: "<b>phone</b>".into(),
                value: None,
                description: "required: a & b".into(),
            },
        ]);
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("<strong>E-Mail</strong>"), "{html}");
        assert!(html.contains("required: a &amp; b"), "{html}");
    }

    #[test]
    fn long_values_are_not_echoed_in_full() {
        let html = rejected(&[Problem {
            field: "consent_text".into(),
            value: Some("x".repeat(10_000)),
            description: "must be at most 20,000 characters".into(),
        }]);
        assert!(html.contains(&"x".repeat(MAX_ECHOED_CHARS)));
        assert!(!html.contains(&"x".repeat(MAX_ECHOED_CHARS + 1)));
    }

    proptest! {
        #[test]
        fn escaped_text_has_no_markup_left(text in any::<String>()) {
            let escaped = escape(&text);
            prop_assert!(!escaped.contains(['<', '>', '"', '\'']));
            let unescaped = escaped
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&");
            prop_assert_eq!(unescaped, text);
        }
    }
}
