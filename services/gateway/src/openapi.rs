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
        // a oneof takes at most one of its fields: no two of them together
        let mut pairs = Vec::new();
        for oneof in msg.oneofs().filter(|o| !o.is_synthetic()) {
            let names: Vec<String> = oneof.fields().map(|f| f.json_name().to_owned()).collect();
            for (i, a) in names.iter().enumerate() {
                for b in &names[i + 1..] {
                    pairs.push(json!({"required": [a, b]}));
                }
            }
        }
        if !pairs.is_empty() {
            s["not"] = json!({"anyOf": pairs});
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

/// The first sentence of a comment, its lines joined: a summary.
fn first_sentence(comment: &str) -> String {
    let para = comment.split("\n\n").next().unwrap_or_default();
    let joined = para.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut from = 0;
    while let Some(i) = joined[from..].find(". ").map(|i| from + i) {
        let before = &joined[..i];
        if !(before.ends_with("e.g") || before.ends_with("i.e") || before.ends_with("etc")) {
            return joined[..=i].to_owned();
        }
        from = i + 2;
    }
    joined
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
            let field = resolve_field(&input, &v.field).and_then(|fs| fs.last().cloned());
            let schema = field
                .as_ref()
                .map_or_else(|| json!({"type": "string"}), |f| schemas.field(f));
            let mut p =
                json!({"name": r.param_name(v), "in": "path", "required": true, "schema": schema});
            let said = field
                .as_ref()
                .and_then(|f| comment(&f.parent_message().parent_file(), f.path()));
            match (said, v.field.contains('.')) {
                (Some(c), true) => {
                    p["description"] = json!(format!("{c} (the request field `{}`)", v.field));
                }
                (Some(c), false) => p["description"] = json!(c),
                (None, true) => {
                    p["description"] = json!(format!("The request field `{}`", v.field));
                }
                (None, false) => {}
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
            "x-access": access(r),
        });
        if let Some(c) = comment(&svc.parent_file(), r.method.path()) {
            op["summary"] = json!(first_sentence(&c));
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

/// Who may call a route, as the edge decides (services may narrow it).
fn access(r: &Route) -> &'static str {
    let shape = crate::authz::RpcShape::of(
        &r.method,
        r.verb == axum::http::Method::GET,
        crate::authz::binds_member(&r.template),
    );
    if shape.read {
        "any credential of the program: a member (their own data only), staff of any role, a backend API key"
    } else if shape.member_scoped && shape.member_path {
        "a member (their own data only), staff program_admin or support_agent, a backend API key"
    } else if shape.member_scoped {
        "staff program_admin or support_agent, a backend API key"
    } else {
        "staff program_admin, a backend API key"
    }
}

/// The component name a `$ref` points to.
fn ref_name(schema: &Value) -> Option<&str> {
    schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
}

/// `loyalty.membership.v1.Program` → `Program`.
fn short(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

fn anchor(name: &str) -> String {
    format!(
        "type-{}",
        name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    )
}

/// A schema as a reader names its type, linking to message types.
fn type_html(schema: &Value) -> String {
    if let Some(name) = ref_name(schema) {
        return format!("<a href=\"#{}\">{}</a>", anchor(name), escape(short(name)));
    }
    if let Some(values) = schema["enum"].as_array() {
        let names: Vec<String> = values
            .iter()
            .filter_map(Value::as_str)
            .map(|v| format!("<code>{}</code>", escape(v)))
            .collect();
        return format!("enum: {}", names.join(" "));
    }
    let format = schema["format"].as_str().unwrap_or_default();
    match schema["type"].as_str() {
        Some("string") => match format {
            "int64" => "int64, as a string".into(),
            "uint64" => "uint64, as a string".into(),
            "date-time" => "timestamp (RFC 3339)".into(),
            "byte" => "bytes (base64)".into(),
            _ if schema["pattern"]
                .as_str()
                .is_some_and(|p| p.ends_with("s$")) =>
            {
                "duration, e.g. <code>1.5s</code>".into()
            }
            _ => "string".into(),
        },
        Some("integer") if schema["minimum"] == json!(0) => "uint32".into(),
        Some("integer") => "int32".into(),
        Some("number") => "number".into(),
        Some("boolean") => "boolean".into(),
        Some("array") => format!("list of {}", type_html(&schema["items"])),
        Some("object") if schema["additionalProperties"].is_object() => format!(
            "map of string to {}",
            type_html(&schema["additionalProperties"])
        ),
        Some("object") => "object".into(),
        _ => "any JSON value".into(),
    }
}

/// One paragraph of a comment: lines joined.
fn prose(text: &str) -> String {
    escape(&text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The rows of the fields of the message `name`: name, type, description.
/// A field of a message type is a bare `$ref` in the document (OpenAPI 3.0
/// ignores a reference's siblings), so its comment is read from the
/// descriptor.
fn field_rows(name: &str, schema: &Value) -> String {
    let message = loyalty_proto::descriptor_pool().get_message_by_name(name);
    let mut rows = String::new();
    if let Some(props) = schema["properties"].as_object() {
        for (field, f) in props {
            let said = f["description"].as_str().map(str::to_owned).or_else(|| {
                let m = message.as_ref()?;
                let fd = m.fields().find(|x| x.json_name() == field)?;
                comment(&m.parent_file(), fd.path())
            });
            let _ = writeln!(
                rows,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                escape(field),
                type_html(f),
                prose(said.as_deref().unwrap_or_default())
            );
        }
    }
    rows
}

/// "At most one of a, b." for each oneof of a message schema (its `not`
/// lists the pairs of fields that may not be set together).
fn oneof_note(def: &Value) -> String {
    let mut groups: Vec<Vec<String>> = Vec::new();
    for pair in def["not"]["anyOf"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
    {
        let names: Vec<String> = pair["required"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        match groups
            .iter_mut()
            .find(|g| names.iter().any(|n| g.contains(n)))
        {
            Some(g) => {
                for n in names {
                    if !g.contains(&n) {
                        g.push(n);
                    }
                }
            }
            None => groups.push(names),
        }
    }
    let mut out = String::new();
    for g in &groups {
        let names: Vec<String> = g
            .iter()
            .map(|n| format!("<code>{}</code>", escape(n)))
            .collect();
        let _ = write!(out, "<p>At most one of {}.</p>", names.join(", "));
    }
    out
}

const FIELDS_HEAD: &str = "<tr><th>Field</th><th>Type</th><th>Description</th></tr>";

/// What a body or an answer holds: its type, and its fields when it is a
/// message.
fn payload_html(schema: &Value, schemas: &Value) -> String {
    let Some(name) = ref_name(schema) else {
        return format!("<p>{}</p>", type_html(schema));
    };
    let def = &schemas[name];
    let rows = field_rows(name, def);
    if rows.is_empty() {
        return format!("<p>{} (no fields)</p>", type_html(schema));
    }
    format!(
        "<p>{}</p>{}<table>{FIELDS_HEAD}\n{rows}</table>",
        type_html(schema),
        oneof_note(def)
    )
}

/// The path with each parameter set apart.
fn path_html(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&escape(&rest[..open]));
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
        let _ = write!(out, "<var>{}</var>", escape(&rest[open..close]));
        rest = &rest[close..];
    }
    out.push_str(&escape(rest));
    out
}

/// The human-readable API page, generated from the OpenAPI document: for
/// every operation its method and path, summary and description, who may
/// call it, its path and query parameters, the fields of its request body
/// and of its answer; then every message type with its fields. Static HTML,
/// no scripts, no CDN.
pub fn docs_page(doc: &Value) -> String {
    let schemas = &doc["components"]["schemas"];
    let empty = serde_json::Map::new();
    // tag → [(path, verb, op)], tags in the document's order, Gateway last
    let mut groups: BTreeMap<String, Vec<(&str, &str, &Value)>> = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap_or(&empty) {
        for (verb, op) in item.as_object().unwrap_or(&empty) {
            let tag = op["tags"][0].as_str().unwrap_or("Other").to_owned();
            groups.entry(tag).or_default().push((path, verb, op));
        }
    }
    let mut toc = String::new();
    let mut body = String::new();
    let mut referenced = std::collections::BTreeSet::new();
    for (tag, ops) in &mut groups {
        ops.sort_by_key(|(path, verb, _)| (*path, verb_rank(verb)));
        let _ = write!(
            toc,
            "<li><a href=\"#{tag}\">{tag}</a><ul>",
            tag = escape(tag)
        );
        let _ = writeln!(body, "<h2 id=\"{tag}\">{tag}</h2>", tag = escape(tag));
        for (path, verb, op) in ops.iter() {
            let id = op["operationId"].as_str().unwrap_or_default();
            let method = verb.to_ascii_uppercase();
            let summary = op["summary"].as_str().unwrap_or_default();
            let _ = write!(
                toc,
                "<li><a href=\"#{id}\"><code>{method} {}</code></a> {}</li>",
                escape(path),
                escape(summary),
                id = escape(id),
            );
            let _ = write!(
                body,
                "<section class=\"op\" id=\"{}\"><h3><span class=\"verb {}\">{method}</span> <code>{}</code></h3>",
                escape(id),
                escape(verb),
                path_html(path)
            );
            if let Some(d) = op["description"].as_str() {
                for para in d.split("\n\n") {
                    let _ = write!(body, "<p>{}</p>", prose(para));
                }
            } else if !summary.is_empty() {
                let _ = write!(body, "<p>{}</p>", prose(summary));
            }
            if let Some(a) = op["x-access"].as_str() {
                let _ = write!(body, "<p><b>Who may call:</b> {}</p>", escape(a));
            }
            let params = op["parameters"].as_array().map_or(&[][..], Vec::as_slice);
            if !params.is_empty() {
                body.push_str("<h4>Parameters</h4><table><tr><th>Name</th><th>In</th><th>Type</th><th>Description</th></tr>\n");
                for p in params {
                    let required = if p["required"] == json!(true) {
                        " <small>required</small>"
                    } else {
                        ""
                    };
                    let repeated = if p["schema"]["type"] == "array" {
                        " <small>(repeat the parameter for several values)</small>"
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        body,
                        "<tr><td><code>{}</code>{required}</td><td>{}</td><td>{}{repeated}</td><td>{}</td></tr>",
                        escape(p["name"].as_str().unwrap_or_default()),
                        escape(p["in"].as_str().unwrap_or_default()),
                        type_html(&p["schema"]),
                        prose(p["description"].as_str().unwrap_or_default()),
                    );
                }
                body.push_str("</table>");
            }
            let request = &op["requestBody"]["content"]["application/json"]["schema"];
            if !request.is_null() {
                body.push_str("<h4>Request body (JSON)</h4>");
                body.push_str(&payload_html(request, schemas));
                collect_refs(request, schemas, &mut referenced);
            }
            let answer = &op["responses"]["200"]["content"]["application/json"]["schema"];
            body.push_str("<h4>Answer (200, JSON)</h4>");
            body.push_str(&payload_html(answer, schemas));
            collect_refs(answer, schemas, &mut referenced);
            body.push_str("<p class=\"meta\">Errors: the <a href=\"#errors\">error JSON</a> with the HTTP status of its code.");
            if let Some(rpc) = op["x-grpc-method"].as_str() {
                let _ = write!(body, " gRPC: <code>{}</code>.", escape(rpc));
            }
            body.push_str("</p></section>\n");
        }
        toc.push_str("</ul></li>");
    }
    let mut types = String::new();
    for name in &referenced {
        let def = &schemas[name.as_str()];
        let _ = write!(
            types,
            "<section class=\"type\" id=\"{}\"><h3>{}</h3><p class=\"meta\"><code>{}</code></p>",
            anchor(name),
            escape(short(name)),
            escape(name)
        );
        if let Some(d) = def["description"].as_str() {
            let _ = write!(types, "<p>{}</p>", prose(d));
        }
        types.push_str(&oneof_note(def));
        let rows = field_rows(name, def);
        if rows.is_empty() {
            types.push_str("<p>No fields.</p>");
        } else {
            let _ = write!(types, "<table>{FIELDS_HEAD}\n{rows}</table>");
        }
        types.push_str("</section>\n");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Loyalty platform API</title>\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<style>\
body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;line-height:1.45;color:#222}}\
table{{border-collapse:collapse;margin:.5em 0 1em}}td,th{{border:1px solid #ddd;padding:.3em .5em;vertical-align:top;text-align:left}}\
th{{background:#f6f6f6}}section{{border-top:1px solid #ddd;padding:.5em 0}}h3{{margin:.6em 0 .3em}}h4{{margin:.8em 0 .2em}}\
var{{font-style:normal;color:#a0522d}}.verb{{display:inline-block;min-width:4.5em;font-size:.8em;padding:.15em .4em;border-radius:3px;color:#fff;background:#555;text-align:center}}\
.get{{background:#2f7d32}}.post{{background:#1f5fa8}}.put,.patch{{background:#a86a1f}}.delete{{background:#a82a1f}}\
.meta{{color:#666;font-size:.9em}}nav ul{{margin:.2em 0}}nav li{{margin:.1em 0}}\
</style></head>\
<body><h1>Loyalty platform API</h1>\
<p>REST/JSON routes derived from the services' <code>google.api.http</code> annotations. \
Bodies and answers use the canonical protobuf JSON mapping: lowerCamelCase field names, 64-bit integers as strings, \
RFC 3339 timestamps, enums by name. The machine-readable document is <a href=\"/openapi.json\">/openapi.json</a>.</p>\
<h2 id=\"auth\">Authentication</h2>\
<p>Every call carries one credential: <code>authorization: Bearer &lt;JWT&gt;</code> (a member or staff token of the configured identity provider) \
or <code>x-api-key: lk_&lt;key_id&gt;_&lt;secret&gt;</code> (a backend key of one program). \
Every <code>program_id</code> in a request must be the caller's program and a member may only name themselves; \
a refusal is <code>403 PERMISSION_DENIED</code> whether or not the object exists. \
<b>Who may call</b> below is the gateway's rule; a service may require more of a caller (e.g. a role for one operation). \
Calls are rate-limited per caller: <code>429</code> with <code>Retry-After</code>.</p>\
<h2 id=\"errors\">Errors</h2>\
<p>An error is JSON: <code>code</code> (the gRPC code name, e.g. <code>INVALID_ARGUMENT</code>), <code>message</code>, \
<code>reason</code> (a stable machine-readable reason), <code>fieldViolations</code> (<code>field</code>, <code>description</code>) and <code>requestId</code>. \
HTTP statuses: INVALID_ARGUMENT, FAILED_PRECONDITION and OUT_OF_RANGE 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404, \
ALREADY_EXISTS and ABORTED 409, RESOURCE_EXHAUSTED 429, UNIMPLEMENTED 501, UNAVAILABLE 503, DEADLINE_EXCEEDED 504.</p>\
<h2 id=\"contents\">Operations</h2><nav><ul>{toc}</ul></nav>\n{body}\
<h2 id=\"types\">Types</h2>\n{types}</body></html>\n"
    )
}

fn verb_rank(verb: &str) -> u8 {
    match verb {
        "get" => 0,
        "post" => 1,
        "put" => 2,
        "patch" => 3,
        "delete" => 4,
        _ => 5,
    }
}

/// Every message type reachable from `schema`.
fn collect_refs(schema: &Value, schemas: &Value, out: &mut std::collections::BTreeSet<String>) {
    match schema {
        Value::Object(o) => {
            if let Some(name) = ref_name(schema) {
                if out.insert(name.to_owned()) {
                    collect_refs(&schemas[name], schemas, out);
                }
                return;
            }
            for v in o.values() {
                collect_refs(v, schemas, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                collect_refs(v, schemas, out);
            }
        }
        _ => {}
    }
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
        // a oneof allows at most one of its fields
        let rule = &schemas["loyalty.rewards.v1.EarningRule"];
        assert_eq!(
            rule["not"],
            json!({"anyOf": [{"required": ["purchase", "behaviour"]}]})
        );
        assert!(
            schemas["loyalty.common.v1.ServiceInfo"]
                .get("not")
                .is_none()
        );
        let info = &schemas["loyalty.common.v1.ServiceInfo"]["properties"];
        assert_eq!(info["schemaVersion"]["type"], "string");
        assert_eq!(info["storageEngine"]["type"], "string");
        // every $ref resolves
        let text = doc.to_string();
        for part in text.split("#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(schemas[name].is_object(), "dangling $ref {name}");
        }
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

    /// The page's text as a reader sees it: tags dropped, entities decoded.
    fn text_of(html: &str) -> String {
        let mut out = String::new();
        let mut tag: Option<String> = None;
        for c in html.chars() {
            match (&mut tag, c) {
                (None, '<') => tag = Some(String::new()),
                (Some(t), '>') => {
                    let name = t.trim_start_matches('/').split(' ').next().unwrap_or("");
                    if matches!(
                        name,
                        "td" | "th"
                            | "p"
                            | "h1"
                            | "h2"
                            | "h3"
                            | "h4"
                            | "li"
                            | "tr"
                            | "table"
                            | "section"
                    ) {
                        out.push(' ');
                    }
                    tag = None;
                }
                (Some(t), c) => t.push(c),
                (None, c) => out.push(c),
            }
        }
        out.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_docs_page_reads_like_the_document() {
        let routes = crate::rules::routes(loyalty_proto::descriptor_pool()).unwrap();
        let doc = document(&routes);
        let html = docs_page(&doc);
        let text = text_of(&html);
        let mut ops = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (verb, op) in item.as_object().unwrap() {
                ops += 1;
                let line = format!("{} {path}", verb.to_ascii_uppercase());
                assert!(text.contains(&line), "{line} missing");
                let id = op["operationId"].as_str().unwrap();
                assert!(html.contains(&format!("id=\"{id}\"")), "{id} has no anchor");
                for p in op["parameters"].as_array().unwrap() {
                    let name = p["name"].as_str().unwrap();
                    assert!(text.contains(name), "{line}: parameter {name} missing");
                }
                assert!(op["x-access"].is_string(), "{line}: who may call?");
                let summary = op["summary"].as_str().unwrap_or_default();
                assert!(!summary.is_empty(), "{line}: no summary");
                assert!(text.contains(summary), "{line}: summary missing");
            }
        }
        assert!(ops > 80, "{ops}");
        // paths as OpenAPI names them, never the annotation's raw templates
        assert!(text.contains("PATCH /v1/programs/{program_id}"));
        assert!(!text.contains("{program.program_id}"));
        assert!(!text.contains("{rule.program_id}"));
        // one operation in full: summary as a sentence, access, fields
        let start = html.find("id=\"MembershipService_EnrollMember\"").unwrap();
        let end = start + html[start..].find("</section>").unwrap();
        let op = text_of(&html[start..end]);
        assert!(
            op.contains("POST /v1/programs/{program_id}/members"),
            "{op}"
        );
        assert!(op.contains("Enrols a member (staff, backend)."), "{op}");
        assert!(
            op.contains("Who may call: staff program_admin, a backend API key"),
            "{op}"
        );
        assert!(
            op.contains("program_id required path string Program id."),
            "{op}"
        );
        assert!(op.contains("Request body (JSON)"), "{op}");
        assert!(op.contains("externalId"), "{op}");
        assert!(op.contains("Answer (200, JSON)"), "{op}");
        assert!(op.contains("member Member The member."), "{op}");
        assert!(
            op.contains("gRPC: loyalty.membership.v1.MembershipService.EnrollMember"),
            "{op}"
        );
        // summaries are whole sentences, not the first line of a comment
        let get = &doc["paths"]["/v1/programs"]["post"]["summary"];
        assert_eq!(get, "Creates a program (program_admin of that program).");
        // every type link lands on a type section, and the markup is balanced
        for part in html.split("href=\"#").skip(1) {
            let target = part.split('"').next().unwrap();
            assert!(
                html.contains(&format!("id=\"{target}\"")),
                "link to #{target} goes nowhere"
            );
        }
        for tag in ["section", "table", "tr", "h3", "ul", "li", "code", "var"] {
            assert_eq!(
                html.matches(&format!("<{tag}>")).count()
                    + html.matches(&format!("<{tag} ")).count(),
                html.matches(&format!("</{tag}>")).count(),
                "<{tag}> unbalanced"
            );
        }
        assert!(text.contains("Member home") || text.contains("member home"));
        assert!(!html.contains("<script"));
        let start = html
            .find("id=\"type-loyalty-rewards-v1-EarningRule\"")
            .unwrap();
        let end = start + html[start..].find("</section>").unwrap();
        let rule = text_of(&html[start..end]);
        assert!(
            rule.contains("At most one of purchase, behaviour."),
            "{rule}"
        );
    }
}
