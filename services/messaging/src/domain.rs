//! messaging's pure domain logic: templates and message ids; no I/O.

pub mod template;

use uuid::Uuid;

/// Namespace of deterministic message ids.
const MESSAGE_NAMESPACE: Uuid = Uuid::from_u128(0x6c65_6164_666c_6f77_6d73_6700_0000_0001);

/// Returns the id of the message `template` caused by event `cause`: the same cause always
/// gives the same id, so a redelivery cannot send a second message.
pub fn message_id(cause: Uuid, template: &str) -> Uuid {
    let name = format!("{cause}/{template}");
    Uuid::new_v5(&MESSAGE_NAMESPACE, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_deterministic_per_cause_and_template() {
        let cause = Uuid::now_v7();
        assert_eq!(message_id(cause, "welcome"), message_id(cause, "welcome"));
        assert_ne!(message_id(cause, "welcome"), message_id(cause, "reminder"));
        assert_ne!(
            message_id(cause, "welcome"),
            message_id(Uuid::now_v7(), "welcome")
        );
    }
}
