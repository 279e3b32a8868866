//! The OpenAPI 3 document, generated from the same annotations as the
//! routes: every route with its path and query parameters, request and
//! response schemas from the message descriptors in canonical JSON form,
//! the error shape and the security schemes. Plus a static HTML page
//! listing the routes (no scripts, no CDN).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use crate::rules::{BodyRule, Route, resolve_field};

/// The leading comment of a descriptor element, from the source info.
fn comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    info.location
        .iter()
        .find(|l| l.path == path)
        .and_then(|l| l.leading_comments.clone())
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
}

fn wkt_schema(full_name: &str) -> Option<Value> {
    Some(match full_name {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"})
        }
        "google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Any" => {
            json!({"type": "object", "properties": {"@type": {"type": "string"}}})
        }
        "google.protobuf.StringValue" | "google.protobuf.FieldMask" => json!({"type": "string"}),
        "google.protobuf.BytesValue" => json!({"type": "string", "format": "byte"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({"type": "integer"}),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({"type": "string", "pattern": "^-?[0-9]+$"})
        }
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!({"type": "number"}),
        _ => return None,
    })
}

struct Schemas {
    out: BTreeMap<String, Value>,
}

impl Schemas {
    fn reference(&mut self, msg: &MessageDescriptor) -> Value {
        if let Some(s) = wkt_schema(msg.full_name()) {
            return s;
        }
        let name = msg.full_name().to_owned();
        if !self.out.contains_key(&name) {
            self.out.insert(name.clone(), json!({}));
            let schema = self.message(msg);
            self.out.insert(name.clone(), schema);
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    fn message(&mut self, msg: &MessageDescriptor) -> Value {
        let mut props = serde_json::Map::new();
        for f in msg.fields() {
            let mut s = self.field(&f);
            if let Some(c) = comment(&msg.parent_file(), f.path())
                && let Value::Object(o) = &mut s
                && !o.contains_key("$ref")
            {
                o.insert("description".into(), json!(c));
            }
            props.insert(f.json_name().to_owned(), s);
        }
        let mut s = json!({"type": "object", "properties": props, "additionalProperties": false});
        if let Some(c) = comment(&msg.parent_file(), msg.path()) {
            s["description"] = json!(c);
        }
        s
    }

    fn field(&mut self, f: &FieldDescriptor) -> Value {
        if f.is_map() {
            let Kind::Message(entry) = f.kind() else {
                return json!({"type": "object"});
            };
            let value = self.single(&entry.map_entry_value_field().kind());
            return json!({"type": "object", "additionalProperties": value});
        }
        let one = self.single(&f.kind());
        if f.is_list() {
            json!({"type": "array", "items": one})
        } else {
            one
        }
    }

    fn single(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double | Kind::Float => json!({"type": "number"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX})
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})
            }
            // canonical JSON writes 64-bit integers as strings
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,18}$"})
            }
            Kind::Uint64 | Kind::Fixed64 => {
                json!({"type": "string", "format": "uint64", "pattern": "^[0-9]{1,19}$"})
            }
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "format": "byte"}),
            Kind::Enum(e) => {
                let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
                json!({"type": "string", "enum": names})
            }
            Kind::Message(m) => self.reference(m),
        }
    }

    /// Query parameters: the scalar (and repeated scalar) fields not bound
    /// by the path, nested fields dotted, message recursion cut at depth 3.
    fn query_params(
        &mut self,
        msg: &MessageDescriptor,
        prefix: &str,
        skip: &[String],
        depth: usize,
        out: &mut Vec<Value>,
    ) {
        for f in msg.fields() {
            let name = if prefix.is_empty() {
                f.name().to_owned()
            } else {
                format!("{prefix}.{}", f.name())
            };
            if skip.contains(&name) || f.is_map() {
                continue;
            }
            match f.kind() {
                Kind::Message(m) if wkt_schema(m.full_name()).is_none() => {
                    if depth < 3 && !f.is_list() {
                        self.query_params(&m, &name, skip, depth + 1, out);
                    }
                }
                _ => {
                    let schema = self.field(&f);
                    let mut p =
                        json!({"name": name, "in": "query", "required": false, "schema": schema});
                    if f.is_list() {
                        p["style"] = json!("form");
                        p["explode"] = json!(true);
                    }
                    if let Some(c) = comment(&msg.parent_file(), f.path()) {
                        p["description"] = json!(c);
                    }
                    out.push(p);
                }
            }
        }
    }
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "An error: the gRPC code name, a message, the machine-readable reason (google.rpc.ErrorInfo) and field violations (google.rpc.BadRequest).",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "description": "gRPC status code name, e.g. INVALID_ARGUMENT"},
            "message": {"type": "string"},
            "reason": {"type": "string", "description": "loyalty.common.v1.ErrorReason value name without its ERROR_REASON_ prefix, e.g. INSUFFICIENT_BALANCE"},
            "fieldViolations": {"type": "array", "items": {
                "type": "object",
                "required": ["field", "description"],
                "properties": {"field": {"type": "string"}, "description": {"type": "string"}},
                "additionalProperties": false
            }},
            "requestId": {"type": "string"}
        },
        "additionalProperties": false
    })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

/// The OpenAPI 3.0 document of the routes (and the home endpoint).
pub fn document(routes: &[Route]) -> Value {
    let mut schemas = Schemas {
        out: BTreeMap::new(),
    };
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut tags = std::collections::BTreeSet::new();
    for r in routes {
        let input = r.method.input();
        let svc = r.method.parent_service();
        tags.insert(svc.name().to_owned());
        let mut params = Vec::new();
        let mut bound = Vec::new();
        for v in &r.template.vars {
            let schema = resolve_field(&input, &v.field)
                .and_then(|fs| fs.last().cloned())
                .map_or_else(|| json!({"type": "string"}), |f| schemas.field(&f));
            let mut p =
                json!({"name": r.param_name(v), "in": "path", "required": true, "schema": schema});
            if v.field.contains('.') {
                p["description"] = json!(format!("The request field `{}`", v.field));
            }
            params.push(p);
            bound.push(v.field.clone());
        }
        let mut op = json!({
            "operationId": if r.binding == 0 {
                format!("{}_{}", svc.name(), r.method.name())
            } else {
                format!("{}_{}_{}", svc.name(), r.method.name(), r.binding)
            },
            "tags": [svc.name()],
            "x-grpc-method": r.method.full_name(),
        });
        if let Some(c) = comment(&svc.parent_file(), r.method.path()) {
            op["summary"] = json!(c.lines().next().unwrap_or_default());
            op["description"] = json!(c);
        }
        match &r.body {
            BodyRule::All => {
                op["requestBody"] = json!({
                    "required": true,
                    "content": {"application/json": {"schema": schemas.reference(&input)}}
                });
            }
            BodyRule::Field(f) => {
                let schema = resolve_field(&input, f)
                    .and_then(|fs| fs.last().cloned())
                    .map_or_else(|| json!({}), |fd| schemas.field(&fd));
                op["requestBody"] = json!({
                    "required": true,
                    "content": {"application/json": {"schema": schema}}
                });
                bound.push(f.clone());
                schemas.query_params(&input, "", &bound, 0, &mut params);
            }
            BodyRule::None => schemas.query_params(&input, "", &bound, 0, &mut params),
        }
        op["parameters"] = Value::Array(params);
        let out = r.method.output();
        let ok_schema = match &r.response_body {
            Some(f) => out
                .get_field_by_name(f)
                .map_or_else(|| json!({}), |fd| schemas.field(&fd)),
            None => schemas.reference(&out),
        };
        op["responses"] = json!({
            "200": {"description": "OK", "content": {"application/json": {"schema": ok_schema}}},
            "default": error_response("An error (4xx/5xx) mapped from the gRPC status"),
        });
        paths
            .entry(r.openapi_path())
            .or_default()
            .insert(r.verb.as_str().to_ascii_lowercase(), op);
    }
    let (home_path, home_op) = crate::home::openapi_operation();
    paths
        .entry(home_path.to_owned())
        .or_default()
        .insert("get".into(), home_op);
    let mut components = serde_json::Map::new();
    let mut all = serde_json::Map::new();
    for (k, v) in schemas.out {
        all.insert(k, v);
    }
    all.insert("Error".into(), error_schema());
    all.insert("MemberHome".into(), crate::home::schema());
    components.insert("schemas".into(), Value::Object(all));
    components.insert(
        "securitySchemes".into(),
        json!({
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "A member or staff JWT of the configured identity provider (RS256/ES256)"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                "description": "A backend API key lk_<key_id>_<secret>"}
        }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Loyalty platform API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST/JSON routes derived from the services' google.api.http annotations. Bodies and answers use the canonical protobuf JSON mapping (lowerCamelCase names, 64-bit integers as strings, RFC 3339 timestamps, enum names)."
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}, {"apiKey": []}],
        "tags": tags.into_iter().map(|t| json!({"name": t})).collect::<Vec<_>>(),
        "paths": paths,
        "components": components,
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The human-readable API page: every route with its RPC and summary.
pub fn docs_page(routes: &[Route]) -> String {
    let mut rows = String::new();
    let mut sorted: Vec<&Route> = routes.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.template.raw, a.verb.as_str()).cmp(&(&b.template.raw, b.verb.as_str()))
    });
    for r in sorted {
        let svc = r.method.parent_service();
        let summary = comment(&svc.parent_file(), r.method.path()).unwrap_or_default();
        let body = match &r.body {
            BodyRule::All => "JSON body: the request message".to_owned(),
            BodyRule::Field(f) => format!("JSON body: field {f}"),
            BodyRule::None => "query parameters".to_owned(),
        };
        let _ = writeln!(
            rows,
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td><code>{}</code><br><small>{} → {}</small></td><td>{}<br><small>{}</small></td></tr>",
            r.verb,
            escape(&r.template.raw),
            escape(r.method.full_name()),
            escape(r.method.input().full_name()),
            escape(r.method.output().full_name()),
            escape(&summary),
            escape(&body),
        );
    }
    let (home_path, _) = crate::home::openapi_operation();
    let _ = writeln!(
        rows,
        "<tr><td><code>GET</code></td><td><code>{}</code></td><td>gateway</td><td>The member home: profile, tier progress, balance, points expiring soon, coupons; each section degrades on its own.</td></tr>",
        escape(home_path)
    );
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Loyalty platform API</title>\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}}</style></head>\
<body><h1>Loyalty platform API</h1>\
<p>REST/JSON routes derived from the services' <code>google.api.http</code> annotations; canonical protobuf JSON. \
Authenticate with <code>authorization: Bearer &lt;member or staff JWT&gt;</code> or <code>x-api-key</code>. \
Errors are JSON: <code>code</code>, <code>message</code>, <code>reason</code>, <code>fieldViolations</code>, <code>requestId</code>. \
The machine-readable document is <a href=\"/openapi.json\">/openapi.json</a>.</p>\
<table><tr><th>Method</th><th>Path</th><th>RPC</th><th>Description</th></tr>\n{rows}</table></body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_with_schemas() {
        let routes = crate::rules::routes(loyalty_proto::descriptor_pool()).unwrap();
        let doc = document(&routes);
        for r in &routes {
            let op = &doc["paths"][r.openapi_path()][r.verb.as_str().to_ascii_lowercase()];
            assert!(op.is_object(), "{} undocumented", r.template.raw);
            assert!(op["responses"]["200"].is_object());
        }
        let schemas = &doc["components"]["schemas"];
        assert!(schemas["Error"].is_object());
        let info = &schemas["loyalty.common.v1.ServiceInfo"]["properties"];
        assert_eq!(info["schemaVersion"]["type"], "string");
        assert_eq!(info["storageEngine"]["type"], "string");
        // every $ref resolves
        let text = doc.to_string();
        for part in text.split("#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(schemas[name].is_object(), "dangling $ref {name}");
        }
        assert!(docs_page(&routes).contains("/v1/rewards/info"));
        // one path item per hierarchy: OpenAPI forbids two templated paths
        // that differ only in their parameter names
        let mut shapes = std::collections::BTreeMap::new();
        for path in doc["paths"].as_object().unwrap().keys() {
            let mut shape = String::new();
            let mut depth = 0;
            for c in path.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        shape.push_str("{}");
                    }
                    '}' => depth -= 1,
                    c if depth == 0 => shape.push(c),
                    _ => {}
                }
            }
            if let Some(other) = shapes.insert(shape, path.clone()) {
                panic!("{path} and {other} are one path to OpenAPI");
            }
        }
    }
}
