//! Generated types for leadflow's contracts; the only crate that compiles `proto/`.

pub use prost;
pub use prost_types;
pub use tonic;

/// Encoded `FileDescriptorSet` of every leadflow proto, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("leadflow_descriptor");

/// Generated code for `leadflow.events.v1`.
pub mod events {
    pub mod v1 {
        tonic::include_proto!("leadflow.events.v1");
    }
}

/// Generated code for `leadflow.capture.v1`.
pub mod capture {
    pub mod v1 {
        tonic::include_proto!("leadflow.capture.v1");
    }
}

/// Generated code for `leadflow.qualification.v1`.
pub mod qualification {
    pub mod v1 {
        tonic::include_proto!("leadflow.qualification.v1");
    }
}

/// Generated code for `leadflow.messaging.v1`.
pub mod messaging {
    pub mod v1 {
        tonic::include_proto!("leadflow.messaging.v1");
    }
}

/// Generated code for `leadflow.analytics.v1`.
pub mod analytics {
    pub mod v1 {
        tonic::include_proto!("leadflow.analytics.v1");
    }
}
