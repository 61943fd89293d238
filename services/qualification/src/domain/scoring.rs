//! Explainable scoring: a versioned model of rules with points; every score carries the rules
//! that fired.

use leadflow_proto::events::v1::{EmailDomainKind, LeadCaptured};
use serde::{Deserialize, Serialize};

/// What a fit rule looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The email domain is of this kind.
    EmailDomain(EmailDomainKind),
    /// A valid phone number was given.
    HasPhone,
    /// A company name was given.
    HasCompany,
    /// The capture channel is one of these.
    ChannelIn(Vec<&'static str>),
}

/// A rule: when its condition holds, it adds its points.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: &'static str,
    pub points: i32,
    pub description: &'static str,
    pub condition: Condition,
}

/// A rule that fired, as stored and emitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    pub rule_id: String,
    pub points: i32,
    pub description: String,
}

/// A score and its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Score {
    pub model_version: &'static str,
    pub fit: i32,
    pub engagement: i32,
    pub hits: Vec<Hit>,
}

impl Score {
    /// Returns fit plus engagement.
    pub fn total(&self) -> i32 {
        self.fit + self.engagement
    }
}

/// A versioned set of fit rules.
#[derive(Debug, Clone)]
pub struct Model {
    pub version: &'static str,
    pub rules: Vec<Rule>,
}

impl Model {
    /// Returns the default model every installation starts with.
    pub fn default_v1() -> Self {
        Model {
            version: "default-v1",
            rules: vec![
                Rule {
                    id: "fit.business_email",
                    points: 20,
                    description: "email at a company domain",
                    condition: Condition::EmailDomain(EmailDomainKind::Business),
                },
                Rule {
                    id: "fit.free_email",
                    points: -5,
                    description: "email at a free mailbox provider",
                    condition: Condition::EmailDomain(EmailDomainKind::Free),
                },
                Rule {
                    id: "fit.has_phone",
                    points: 10,
                    description: "valid phone number given",
                    condition: Condition::HasPhone,
                },
                Rule {
                    id: "fit.has_company",
                    points: 10,
                    description: "company named",
                    condition: Condition::HasCompany,
                },
                Rule {
                    id: "fit.warm_channel",
                    points: 15,
                    description: "came through a referral or partner",
                    condition: Condition::ChannelIn(vec!["referral", "partner"]),
                },
            ],
        }
    }

    /// Scores a captured lead's fit.
    pub fn score(&self, lead: &LeadCaptured) -> Score {
        let hits: Vec<Hit> = self
            .rules
            .iter()
            .filter(|rule| holds(&rule.condition, lead))
            .map(|rule| Hit {
                rule_id: rule.id.to_owned(),
                points: rule.points,
                description: rule.description.to_owned(),
            })
            .collect();
        Score {
            model_version: self.version,
            fit: hits.iter().map(|hit| hit.points).sum(),
            engagement: 0,
            hits,
        }
    }
}

fn holds(condition: &Condition, lead: &LeadCaptured) -> bool {
    match condition {
        Condition::EmailDomain(kind) => lead.email_domain_kind() == *kind,
        Condition::HasPhone => lead.has_phone,
        Condition::HasCompany => lead.has_company,
        Condition::ChannelIn(channels) => channels.contains(&lead.channel.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(
        kind: EmailDomainKind,
        has_phone: bool,
        has_company: bool,
        channel: &str,
    ) -> LeadCaptured {
        LeadCaptured {
            email_domain_kind: kind.into(),
            has_phone,
            has_company,
            channel: channel.to_owned(),
            ..LeadCaptured::default()
        }
    }

    #[test]
    fn score_sums_the_rules_that_fired_and_names_them() {
        let score =
            Model::default_v1().score(&captured(EmailDomainKind::Business, true, true, "referral"));
        let fired: Vec<&str> = score.hits.iter().map(|hit| hit.rule_id.as_str()).collect();
        assert_eq!(
            fired,
            [
                "fit.business_email",
                "fit.has_phone",
                "fit.has_company",
                "fit.warm_channel"
            ]
        );
        assert_eq!(score.fit, 55);
        assert_eq!(score.total(), 55);
    }

    #[test]
    fn free_mail_subtracts_and_nothing_else_fires() {
        let score =
            Model::default_v1().score(&captured(EmailDomainKind::Free, false, false, "web"));
        assert_eq!(score.fit, -5);
        assert_eq!(score.hits.len(), 1);
        assert_eq!(score.model_version, "default-v1");
    }
}
