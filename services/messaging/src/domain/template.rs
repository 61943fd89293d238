//! Message templates (minijinja), checked when loaded: a template using a variable the lead
//! context does not offer fails at load time, never at send time.

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

/// Variables a template may use.
pub const VARIABLES: [&str; 3] = ["first_name", "last_name", "company"];

/// What templates see of a lead.
#[derive(Debug, Clone, Serialize)]
pub struct LeadContext {
    pub first_name: String,
    pub last_name: String,
    pub company: String,
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub body: String,
}

/// Compiled templates.
pub struct Templates {
    env: Environment<'static>,
}

/// The welcome email every captured lead with an email address gets.
pub const WELCOME: &str = "welcome";

const BUILT_IN: [(&str, &str, &str); 1] = [(
    WELCOME,
    include_str!("../../templates/welcome.subject.txt"),
    include_str!("../../templates/welcome.body.txt"),
)];

impl Templates {
    /// Compiles the built-in templates, rejecting any that uses an unknown variable.
    pub fn built_in() -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, subject, body) in BUILT_IN {
            for (part, source) in [("subject", subject), ("body", body)] {
                let full_name = format!("{name}.{part}");
                env.add_template_owned(full_name.clone(), source.trim_end().to_owned())?;
                let template = env.get_template(&full_name)?;
                let unknown: Vec<String> = template
                    .undeclared_variables(false)
                    .into_iter()
                    .filter(|variable| !VARIABLES.contains(&variable.as_str()))
                    .collect();
                if !unknown.is_empty() {
                    anyhow::bail!(
                        "template {full_name} uses unknown variables: {}",
                        unknown.join(", ")
                    );
                }
            }
        }
        Ok(Self { env })
    }

    /// Renders template `name` for `lead`.
    pub fn render(&self, name: &str, lead: &LeadContext) -> anyhow::Result<Rendered> {
        let subject = self
            .env
            .get_template(&format!("{name}.subject"))?
            .render(lead)?;
        let body = self
            .env
            .get_template(&format!("{name}.body"))?
            .render(lead)?;
        Ok(Rendered { subject, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welcome_uses_the_first_name_and_company_when_given() {
        let templates = Templates::built_in().expect("built-in templates compile");
        let rendered = templates
            .render(
                WELCOME,
                &LeadContext {
                    first_name: "Ada".into(),
                    last_name: "Lovelace".into(),
                    company: "Analytical Engines".into(),
                },
            )
            .expect("render");
        assert_eq!(rendered.subject, "Welcome, Ada");
        assert!(rendered.body.starts_with("Hello Ada,"), "{}", rendered.body);
        assert!(rendered.body.contains("on behalf of Analytical Engines"));
    }

    #[test]
    fn welcome_reads_well_without_names() {
        let templates = Templates::built_in().expect("built-in templates compile");
        let rendered = templates
            .render(
                WELCOME,
                &LeadContext {
                    first_name: String::new(),
                    last_name: String::new(),
                    company: String::new(),
                },
            )
            .expect("render");
        assert_eq!(rendered.subject, "Welcome");
        assert!(rendered.body.starts_with("Hello there,"));
        assert!(!rendered.body.contains("on behalf of"));
    }
}
