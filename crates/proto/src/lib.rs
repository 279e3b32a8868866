//! The platform's gRPC contracts, generated from `proto/` at build time, and
//! the encoded descriptor set of all of them (with imports and source info)
//! for server reflection, the gateway's REST transcoding and canonical
//! protobuf JSON.

#![allow(clippy::pedantic, missing_docs)] // generated code

pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

pub mod loyalty {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("loyalty.common.v1");
        }
    }
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("loyalty.events.v1");
        }
    }
    pub mod membership {
        pub mod v1 {
            tonic::include_proto!("loyalty.membership.v1");
        }
    }
    pub mod rewards {
        pub mod v1 {
            tonic::include_proto!("loyalty.rewards.v1");
        }
    }
    pub mod feedback {
        pub mod v1 {
            tonic::include_proto!("loyalty.feedback.v1");
        }
    }
    pub mod retention {
        pub mod v1 {
            tonic::include_proto!("loyalty.retention.v1");
        }
    }
}

pub use loyalty::common::v1 as common;
pub use loyalty::events::v1 as events;

/// Encoded `FileDescriptorSet` of every contract and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/loyalty_descriptor.bin"));

/// The descriptor pool of all contracts, decoded once.
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("descriptor set embedded at build time decodes")
    })
}

/// Canonical protobuf JSON of an encoded message of the named type
/// (e.g. `loyalty.events.v1.EventEnvelope`), as defined by the protobuf
/// JSON mapping: lowerCamelCase names, RFC 3339 timestamps, int64 as strings.
pub fn to_canonical_json(
    full_name: &str,
    encoded: &[u8],
) -> Result<serde_json::Value, CanonicalJsonError> {
    let desc = descriptor_pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| CanonicalJsonError::UnknownType(full_name.to_owned()))?;
    let msg = prost_reflect::DynamicMessage::decode(desc, encoded)
        .map_err(|e| CanonicalJsonError::Decode(e.to_string()))?;
    serde_json::to_value(&msg).map_err(|e| CanonicalJsonError::Decode(e.to_string()))
}

/// Why a message could not be rendered as canonical JSON.
#[derive(Debug)]
pub enum CanonicalJsonError {
    /// The type is not in the embedded descriptor set.
    UnknownType(String),
    /// The bytes are not a valid message of the type.
    Decode(String),
}

impl std::fmt::Display for CanonicalJsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownType(t) => write!(f, "unknown message type {t}"),
            Self::Decode(e) => write!(f, "cannot decode message: {e}"),
        }
    }
}

impl std::error::Error for CanonicalJsonError {}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn descriptor_set_keeps_http_annotations() {
        let pool = descriptor_pool();
        let svc = pool
            .get_service_by_name("loyalty.rewards.v1.RewardsService")
            .expect("rewards service in descriptor set");
        let method = svc.methods().next().expect("one method");
        let ext = pool
            .get_extension_by_name("google.api.http")
            .expect("google.api.http extension known");
        let opts = method.options();
        assert!(opts.has_extension(&ext), "http rule must survive encoding");
    }

    #[test]
    fn event_renders_as_canonical_json() {
        let env = events::EventEnvelope {
            event_id: "e1".into(),
            event_type: "loyalty.events.v1.PointsEarned".into(),
            program_id: "p1".into(),
            member_id: "m1".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            producer: "rewards".into(),
            trace_context: Default::default(),
            payload: Some(events::event_envelope::Payload::PointsEarned(
                events::PointsEarned {
                    entry_id: "l1".into(),
                    points: 120,
                    ..Default::default()
                },
            )),
        };
        let json = to_canonical_json("loyalty.events.v1.EventEnvelope", &env.encode_to_vec())
            .expect("renders");
        assert_eq!(json["eventId"], "e1");
        assert_eq!(json["occurredAt"], "2023-11-14T22:13:20Z");
        // int64 is a JSON string in the canonical mapping
        assert_eq!(json["pointsEarned"]["points"], "120");
    }
}
