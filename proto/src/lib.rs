//! Glimpse's public gRPC API: the `glimpse.v1` messages and the `Generation` service,
//! generated from `glimpse/v1/generation.proto` by prost and tonic.
//!
//! This crate owns only the wire contract. Validation, defaults and the mapping to engine
//! types live in the server, so the generated types stay plain data that any client
//! (the `glimpse bench` harness, tests, other languages) shares.

/// Version 1 of the API (`package glimpse.v1`).
pub mod v1 {
    tonic::include_proto!("glimpse.v1");

    /// Encoded `FileDescriptorSet` of `glimpse.v1` (with source comments), for
    /// `tonic_reflection::server::Builder::register_encoded_file_descriptor_set`, so
    /// tools such as `grpcurl` can list and call the service without the .proto file.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("glimpse_v1_descriptor");
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::v1;

    #[test]
    fn descriptor_set_describes_the_generation_service_with_its_comments() {
        let fds = prost_types::FileDescriptorSet::decode(v1::FILE_DESCRIPTOR_SET)
            .expect("the build script wrote an encoded FileDescriptorSet");
        let file = fds
            .file
            .iter()
            .find(|f| f.package() == "glimpse.v1")
            .expect("glimpse.v1 is in the set");
        let service = &file.service[0];
        assert_eq!(service.name(), "Generation");
        let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        assert_eq!(
            methods,
            ["Generate", "Tokenize", "Detokenize", "GetModelInfo"]
        );
        assert!(service.method[0].server_streaming());
        let comments = file
            .source_code_info
            .as_ref()
            .expect("source info is kept for reflection clients");
        assert!(
            comments
                .location
                .iter()
                .any(|l| l.leading_comments.is_some())
        );
    }

    #[test]
    fn a_generate_request_round_trips_through_the_wire_format() {
        let request = v1::GenerateRequest {
            request_id: Some("r1".into()),
            input: Some(v1::generate_request::Input::TokenIds(v1::TokenIds {
                ids: vec![1, 2, 3],
            })),
            max_tokens: Some(8),
            kv_cache: Some(v1::KvCachePolicy {
                policy: v1::KvPolicy::Lookahead.into(),
                budget: Some(64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let decoded = v1::GenerateRequest::decode(request.encode_to_vec().as_slice())
            .expect("a freshly encoded message decodes");
        assert_eq!(decoded, request);
    }

    #[test]
    fn unset_optional_fields_stay_distinguishable_from_zero() {
        let params = v1::SamplingParameters {
            temperature: Some(0.0),
            ..Default::default()
        };
        let decoded = v1::SamplingParameters::decode(params.encode_to_vec().as_slice())
            .expect("a freshly encoded message decodes");
        assert_eq!(decoded.temperature, Some(0.0));
        assert_eq!(decoded.top_p, None);
    }
}
