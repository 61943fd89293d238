//! The one table of what every RPC requires (reliability §1.6): a path missing from it is
//! denied, always.

use super::scope::Scope;

/// What calling an RPC requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone may call it, without a key.
    Open,
    /// A valid key holding this scope (or `admin`, which implies every scope).
    Scope(Scope),
}

/// `grpc.health.v1.Health/Check`.
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// `grpc.health.v1.Health/Watch`.
pub const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
/// Server reflection, v1.
pub const REFLECTION_V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
/// Server reflection, v1alpha.
pub const REFLECTION_V1ALPHA: &str =
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// Returns whether `path` is one of the server reflection RPCs, which the authenticator's
/// `reflection_open` setting can close to all but `admin` keys.
pub fn is_reflection(path: &str) -> bool {
    path == REFLECTION_V1 || path == REFLECTION_V1ALPHA
}

const LEADS_WRITE: Access = Access::Scope(Scope::LeadsWrite);
const LEADS_READ: Access = Access::Scope(Scope::LeadsRead);
const ADMIN: Access = Access::Scope(Scope::Admin);

/// What each RPC requires, keyed by its full gRPC path `/package.Service/Method`.
///
/// Every method of every served service must be here: a test fails, naming the RPC, when one
/// in the descriptor set is missing. Entries may precede their protos.
pub const RPC_ACCESS: &[(&str, Access)] = &[
    (HEALTH_CHECK, Access::Open),
    (HEALTH_WATCH, Access::Open),
    (REFLECTION_V1, Access::Open),
    (REFLECTION_V1ALPHA, Access::Open),
    // capture
    (
        "/leadflow.capture.v1.CaptureService/CaptureLead",
        LEADS_WRITE,
    ),
    (
        "/leadflow.capture.v1.CaptureService/ImportLeads",
        LEADS_WRITE,
    ),
    (
        "/leadflow.capture.v1.CaptureService/ReturnLead",
        LEADS_WRITE,
    ),
    (
        "/leadflow.capture.v1.CaptureService/RecordActivity",
        LEADS_WRITE,
    ),
    ("/leadflow.capture.v1.CaptureService/GetLead", LEADS_READ),
    ("/leadflow.capture.v1.CaptureService/ListLeads", LEADS_READ),
    (
        "/leadflow.capture.v1.CaptureService/ListActivities",
        LEADS_READ,
    ),
    ("/leadflow.capture.v1.CaptureService/EraseLead", ADMIN),
    ("/leadflow.capture.v1.CaptureService/UnmergeLead", ADMIN),
    (
        "/leadflow.capture.v1.CaptureService/ListMergeReviews",
        ADMIN,
    ),
    (
        "/leadflow.capture.v1.CaptureService/ResolveMergeReview",
        ADMIN,
    ),
    ("/leadflow.capture.v1.CaptureService/CreateSource", ADMIN),
    ("/leadflow.capture.v1.CaptureService/UpdateSource", ADMIN),
    ("/leadflow.capture.v1.CaptureService/ListSources", ADMIN),
    ("/leadflow.capture.v1.CaptureService/CreateApiKey", ADMIN),
    ("/leadflow.capture.v1.CaptureService/RevokeApiKey", ADMIN),
    ("/leadflow.capture.v1.CaptureService/ListApiKeys", ADMIN),
    // qualification
    (
        "/leadflow.qualification.v1.QualificationService/GetLead",
        LEADS_READ,
    ),
    // messaging
    (
        "/leadflow.messaging.v1.MessagingService/RecordInbound",
        LEADS_WRITE,
    ),
    (
        "/leadflow.messaging.v1.MessagingService/ListMessages",
        LEADS_READ,
    ),
    // analytics
    (
        "/leadflow.analytics.v1.AnalyticsService/GetFunnel",
        LEADS_READ,
    ),
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use prost::Message;
    use prost_types::FileDescriptorSet;

    use super::*;

    /// Every RPC path of the services in an encoded descriptor set.
    fn rpc_paths(encoded: &[u8]) -> Vec<String> {
        let set = FileDescriptorSet::decode(encoded).expect("decode file descriptor set");
        let mut paths = Vec::new();
        for file in set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    let qualified = if package.is_empty() {
                        service.name().to_owned()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    paths.push(format!("/{qualified}/{}", method.name()));
                }
            }
        }
        paths
    }

    #[test]
    fn every_served_rpc_has_an_entry() {
        let table: HashSet<&str> = RPC_ACCESS.iter().map(|(path, _)| *path).collect();
        let served = [
            leadflow_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut missing = Vec::new();
        let mut seen = 0;
        for encoded in served {
            for path in rpc_paths(encoded) {
                seen += 1;
                if !table.contains(path.as_str()) {
                    missing.push(path);
                }
            }
        }
        assert!(seen > 4, "the descriptor sets name only {seen} rpcs");
        assert!(
            missing.is_empty(),
            "rpcs without an entry in RPC_ACCESS (they would be denied): {missing:#?}"
        );
    }

    #[test]
    fn every_leadflow_service_in_the_descriptor_set_is_covered() {
        let paths = rpc_paths(leadflow_proto::FILE_DESCRIPTOR_SET);
        for service in [
            "leadflow.capture.v1.CaptureService",
            "leadflow.qualification.v1.QualificationService",
            "leadflow.messaging.v1.MessagingService",
            "leadflow.analytics.v1.AnalyticsService",
        ] {
            assert!(
                paths
                    .iter()
                    .any(|path| path.starts_with(&format!("/{service}/"))),
                "{service} is not in leadflow_proto::FILE_DESCRIPTOR_SET"
            );
        }
    }

    #[test]
    fn paths_are_unique_and_fully_qualified() {
        let mut seen = HashSet::new();
        for (path, _) in RPC_ACCESS {
            assert!(seen.insert(*path), "{path} appears twice");
            let (service, method) = path
                .strip_prefix('/')
                .and_then(|rest| rest.split_once('/'))
                .unwrap_or_else(|| panic!("{path} is not /package.Service/Method"));
            assert!(service.contains('.'), "{path} has no package");
            assert!(
                !method.is_empty() && !method.contains('/'),
                "{path} has no single method"
            );
        }
    }

    #[test]
    fn health_and_reflection_are_open() {
        for path in [
            HEALTH_CHECK,
            HEALTH_WATCH,
            REFLECTION_V1,
            REFLECTION_V1ALPHA,
        ] {
            let access = RPC_ACCESS
                .iter()
                .find(|(entry, _)| *entry == path)
                .map(|(_, access)| *access);
            assert_eq!(access, Some(Access::Open), "{path}");
        }
        assert!(is_reflection(REFLECTION_V1) && is_reflection(REFLECTION_V1ALPHA));
        assert!(!is_reflection(HEALTH_CHECK));
    }

    #[test]
    fn only_health_and_reflection_are_open() {
        for (path, access) in RPC_ACCESS {
            if *access == Access::Open {
                assert!(
                    path.starts_with("/grpc.health.v1.") || is_reflection(path),
                    "{path} is open"
                );
            }
        }
    }
}
