//! A JSON request body into a [`super::wire`] type, refusals naming the field: a body that is
//! not JSON (or not an object) is malformed; a known field of the wrong type is an invalid
//! parameter named by its path (`max_tokens`, `kv_cache.budget`).

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::RequestError;

/// Parses a whole request body.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RequestError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| RequestError::Malformed {
        message: format!("the request body is not valid JSON: {e}"),
    })?;
    object(value, "")
}

/// Parses a JSON object nested under `prefix` (`""` for the body, `"kv_cache."`).
pub fn object<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, RequestError> {
    let Value::Object(map) = value else {
        let what = if prefix.is_empty() {
            "the request body".to_string()
        } else {
            format!("`{}`", prefix.trim_end_matches('.'))
        };
        return Err(RequestError::Malformed {
            message: format!("{what} must be a JSON object"),
        });
    };
    serde_json::from_value(Value::Object(map.clone()))
        .map_err(|whole| name_the_field::<T>(map, prefix, whole))
}

/// Every field of a wire type is optional, so an object of one field fails alone exactly when
/// that field has the wrong type: the first such field is the one to name.
fn name_the_field<T: DeserializeOwned>(
    map: Map<String, Value>,
    prefix: &str,
    whole: serde_json::Error,
) -> RequestError {
    for (key, value) in map {
        let single = Value::Object(Map::from_iter([(key.clone(), value)]));
        if let Err(error) = serde_json::from_value::<T>(single) {
            return RequestError::invalid(format!("{prefix}{key}"), error.to_string());
        }
    }
    RequestError::Malformed {
        message: whole.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::wire::{CompletionBody, KvCacheBody};

    #[test]
    fn a_known_field_of_the_wrong_type_is_named_and_unknown_fields_are_ignored() {
        let body = br#"{"prompt": "hi", "user": "x", "max_tokens": "ten"}"#;
        let error = parse::<CompletionBody>(body).unwrap_err();
        let RequestError::InvalidParameter { field, message } = error else {
            panic!("{error:?}");
        };
        assert_eq!(field, "max_tokens");
        assert!(message.contains("\"ten\""), "{message}");
        let ok: CompletionBody = parse(br#"{"prompt": "hi", "user": "x", "top_p": 1}"#).unwrap();
        assert_eq!(ok.generation.top_p, Some(1.0));
    }

    #[test]
    fn nested_objects_name_their_path_and_non_json_is_malformed() {
        let value = serde_json::json!({"policy": "snapkv", "budget": -3});
        let error = object::<KvCacheBody>(value, "kv_cache.").unwrap_err();
        assert!(
            matches!(&error, RequestError::InvalidParameter { field, .. } if field == "kv_cache.budget"),
            "{error:?}"
        );
        assert!(matches!(
            parse::<CompletionBody>(b"{nope"),
            Err(RequestError::Malformed { .. })
        ));
    }
}
