//! Lifecycle stages and the moves allowed between them.

use leadflow_proto::events::v1::LeadStage;

/// A lead's lifecycle stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Lead,
    Prospect,
    Mql,
    Sql,
    Opportunity,
    Customer,
    Disqualified,
}

impl Stage {
    /// Every stage in lifecycle order.
    pub const ALL: [Stage; 7] = [
        Stage::Lead,
        Stage::Prospect,
        Stage::Mql,
        Stage::Sql,
        Stage::Opportunity,
        Stage::Customer,
        Stage::Disqualified,
    ];

    /// Returns the name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Lead => "lead",
            Stage::Prospect => "prospect",
            Stage::Mql => "mql",
            Stage::Sql => "sql",
            Stage::Opportunity => "opportunity",
            Stage::Customer => "customer",
            Stage::Disqualified => "disqualified",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.as_str() == name)
    }

    /// Returns the stage a two-way contact (a reply, an answered call) moves this stage to, if
    /// it moves it at all: only a LEAD becomes a PROSPECT; later stages are already past it.
    pub fn on_two_way_contact(self) -> Option<Stage> {
        match self {
            Stage::Lead => Some(Stage::Prospect),
            _ => None,
        }
    }
}

impl From<Stage> for LeadStage {
    fn from(stage: Stage) -> Self {
        match stage {
            Stage::Lead => LeadStage::Lead,
            Stage::Prospect => LeadStage::Prospect,
            Stage::Mql => LeadStage::Mql,
            Stage::Sql => LeadStage::Sql,
            Stage::Opportunity => LeadStage::Opportunity,
            Stage::Customer => LeadStage::Customer,
            Stage::Disqualified => LeadStage::Disqualified,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip() {
        for stage in Stage::ALL {
            assert_eq!(Stage::parse(stage.as_str()), Some(stage));
        }
        assert_eq!(Stage::parse("LEAD"), None);
    }

    #[test]
    fn only_a_lead_becomes_a_prospect_on_two_way_contact() {
        assert_eq!(Stage::Lead.on_two_way_contact(), Some(Stage::Prospect));
        for stage in &Stage::ALL[1..] {
            assert_eq!(stage.on_two_way_contact(), None, "{stage:?}");
        }
    }
}
