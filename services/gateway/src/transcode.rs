//! HTTP request → request message, response message → JSON, in the
//! canonical protobuf JSON mapping. The request is assembled as canonical
//! JSON (body, then path variables and query parameters converted by field
//! type) and decoded by prost-reflect, so timestamps, 64-bit integers,
//! enums and well-known types follow the one mapping.

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::rules::{BodyRule, Route, percent_decode, resolve_field};

/// The request message of `route` from the HTTP parts.
pub fn request_message(
    route: &Route,
    vars: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, ApiError> {
    let desc = route.method.input();
    let mut root = match &route.body {
        BodyRule::All => parse_body(body)?,
        BodyRule::Field(f) => {
            let fields =
                resolve_field(&desc, f).ok_or_else(|| ApiError::invalid(f.clone(), "unknown"))?;
            let mut root = Value::Object(Map::new());
            let value = if body.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(body)
                    .map_err(|e| ApiError::invalid("body", format!("not JSON: {e}")))?
            };
            if !value.is_null() {
                place(&mut root, &fields, value);
            }
            root
        }
        BodyRule::None => Value::Object(Map::new()),
    };
    let mut bound: Vec<String> = Vec::new();
    for (field, value) in vars {
        let fields = resolve_field(&desc, field)
            .ok_or_else(|| ApiError::invalid(field.clone(), "unknown field"))?;
        let json = scalar_json(fields.last().expect("non-empty path"), value)
            .map_err(|why| ApiError::invalid(field.clone(), why))?;
        place(&mut root, &fields, json);
        bound.push(field.clone());
    }
    if let (Some(q), false) = (query, route.body == BodyRule::All) {
        apply_query(&desc, &mut root, q, &bound, &route.body)?;
    }
    decode(&desc, root)
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("not JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    Ok(v)
}

/// Decodes canonical JSON into the message; unknown fields are refused.
pub fn decode(desc: &MessageDescriptor, root: Value) -> Result<DynamicMessage, ApiError> {
    let opts = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(desc.clone(), root, &opts).map_err(|e| {
        let msg = e.to_string();
        // serde errors name the offending field in backquotes
        let field = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.contains("field `"))
            .unwrap_or("body")
            .to_owned();
        ApiError::invalid(field, msg)
    })
}

/// Sets `value` at the field path in the JSON tree (by JSON names),
/// creating intermediate objects; path values win over body values.
fn place(root: &mut Value, fields: &[FieldDescriptor], value: Value) {
    let mut cur = root;
    for (i, f) in fields.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(obj) = cur else { return };
        // a body may use the proto name; drop it so the path value wins
        if f.name() != f.json_name() {
            obj.remove(f.name());
        }
        if i + 1 == fields.len() {
            obj.insert(f.json_name().to_owned(), value);
            return;
        }
        cur = obj
            .entry(f.json_name().to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

fn apply_query(
    desc: &MessageDescriptor,
    root: &mut Value,
    query: &str,
    bound: &[String],
    body: &BodyRule,
) -> Result<(), ApiError> {
    let mut lists: Vec<(Vec<FieldDescriptor>, Vec<Value>)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k, true)
            .ok_or_else(|| ApiError::invalid("query", "malformed percent-encoding"))?;
        let value = percent_decode(v, true)
            .ok_or_else(|| ApiError::invalid(key.clone(), "malformed percent-encoding"))?;
        if bound.contains(&key) {
            continue;
        }
        if let BodyRule::Field(f) = body
            && (key == *f || key.starts_with(&format!("{f}.")))
        {
            continue;
        }
        let fields = resolve_field(desc, &key)
            .ok_or_else(|| ApiError::invalid(key.clone(), "unknown query parameter"))?;
        let last = fields.last().expect("non-empty path");
        if last.is_map() {
            return Err(ApiError::invalid(
                key,
                "map fields cannot be set from the query",
            ));
        }
        let json = scalar_json(last, &value).map_err(|why| ApiError::invalid(key.clone(), why))?;
        if last.is_list() {
            match lists.iter_mut().find(|(f, _)| f == &fields) {
                Some((_, vals)) => vals.push(json),
                None => lists.push((fields, vec![json])),
            }
        } else {
            place(root, &fields, json);
        }
    }
    for (fields, vals) in lists {
        place(root, &fields, Value::Array(vals));
    }
    Ok(())
}

/// The canonical JSON form of a path or query value for `field`'s type.
fn scalar_json(field: &FieldDescriptor, v: &str) -> Result<Value, String> {
    let kind = field.kind();
    let kname = kind_name(&kind);
    let bad = || format!("{v:?} is not a valid {kname}");
    Ok(match kind {
        // strings, bytes (base64) and well-known types with a string JSON
        // form (Timestamp, Duration, FieldMask…); prost-reflect checks them
        Kind::String | Kind::Bytes | Kind::Message(_) => Value::String(v.to_owned()),
        Kind::Bool => match v {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(bad()),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::from(v.parse::<i32>().map_err(|_| bad())?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::from(v.parse::<u32>().map_err(|_| bad())?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            v.parse::<i64>().map_err(|_| bad())?;
            Value::String(v.to_owned())
        }
        Kind::Uint64 | Kind::Fixed64 => {
            v.parse::<u64>().map_err(|_| bad())?;
            Value::String(v.to_owned())
        }
        Kind::Float | Kind::Double => {
            let f = v.parse::<f64>().map_err(|_| bad())?;
            serde_json::Number::from_f64(f).map_or_else(|| Value::String(v.to_owned()), Value::from)
        }
        Kind::Enum(e) => {
            if e.get_value_by_name(v).is_some() {
                Value::String(v.to_owned())
            } else if let Ok(n) = v.parse::<i32>() {
                Value::from(n)
            } else {
                return Err(bad());
            }
        }
    })
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        k => format!("{k:?}").to_ascii_lowercase(),
    }
}

/// The response JSON (the whole message, or its `response_body` field).
pub fn response_json(route: &Route, msg: &DynamicMessage) -> Result<Value, ApiError> {
    let json = serde_json::to_value(msg)
        .map_err(|e| ApiError::new(tonic::Code::Internal, format!("response encoding: {e}")))?;
    let Some(field) = &route.response_body else {
        return Ok(json);
    };
    let name = msg
        .descriptor()
        .get_field_by_name(field)
        .map_or_else(|| field.clone(), |f| f.json_name().to_owned());
    Ok(json.get(&name).cloned().unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::routes;

    fn info_route() -> Route {
        routes(loyalty_proto::descriptor_pool())
            .unwrap()
            .into_iter()
            .find(|r| r.rpc_path.ends_with("RewardsService/GetServiceInfo"))
            .unwrap()
    }

    #[test]
    fn unknown_query_parameters_and_body_fields_are_refused() {
        let mut r = info_route();
        let err = request_message(&r, &[], Some("nope=1"), b"").unwrap_err();
        assert_eq!(err.violations[0].0, "nope");
        r.body = BodyRule::All;
        let err = request_message(&r, &[], None, br#"{"x": 1}"#).unwrap_err();
        assert_eq!(err.code, tonic::Code::InvalidArgument);
        let err = request_message(&r, &[], None, b"[1]").unwrap_err();
        assert_eq!(err.violations[0].0, "body");
        assert!(request_message(&r, &[], None, b" ").is_ok());
    }

    #[test]
    fn values_convert_by_field_type() {
        let pool = loyalty_proto::descriptor_pool();
        let page = pool
            .get_message_by_name("loyalty.common.v1.PageRequest")
            .unwrap();
        let size = page.get_field_by_name("page_size").unwrap();
        assert_eq!(scalar_json(&size, "20").unwrap(), Value::from(20));
        assert!(scalar_json(&size, "twenty").is_err());
        assert!(scalar_json(&size, "99999999999").is_err());
        let money = pool.get_message_by_name("loyalty.common.v1.Money").unwrap();
        let minor = money.get_field_by_name("minor_units").unwrap();
        assert_eq!(scalar_json(&minor, "-5").unwrap(), Value::from("-5"));
        let mut root = Value::Object(Map::new());
        place(&mut root, &[size], Value::from(3));
        assert_eq!(root["pageSize"], 3);
        let msg = decode(&page, root).unwrap();
        assert_eq!(
            serde_json::to_value(&msg).unwrap(),
            serde_json::json!({"pageSize": 3})
        );
    }
}
