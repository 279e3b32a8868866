//! The REST routes, read from the `google.api.http` annotations of every
//! service in the embedded descriptor set: path templates (literals, `*`,
//! `**`, variables bound to possibly nested fields, `{name=pattern}`, a
//! trailing `:verb`), the body rule and the response body field. No route
//! is written by hand: an annotated RPC is a route.

use axum::http::Method;
use loyalty_proto::google::api::{HttpRule, http_rule::Pattern};
use prost_reflect::{DescriptorPool, MethodDescriptor};

/// One segment pattern of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(String),
    /// `*`: exactly one segment.
    Any,
    /// `**`: the rest of the path (last only).
    Rest,
}

/// A variable bound to a span of tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    /// Field path, dot-separated proto names (`member.member_id`).
    pub field: String,
    start: usize,
    len: usize,
}

/// A parsed path template such as `/v1/programs/{program_id}/members/{member_id}:redeem`.
#[derive(Debug, Clone)]
pub struct Template {
    pub raw: String,
    toks: Vec<Tok>,
    pub vars: Vec<Var>,
    pub verb: Option<String>,
}

impl Template {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let path = raw
            .strip_prefix('/')
            .ok_or_else(|| format!("template {raw:?} must start with '/'"))?;
        // the verb follows the last ':' outside braces in the last segment
        let mut depth = 0i32;
        let mut verb_at = None;
        let mut last_slash = 0;
        for (i, c) in path.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                '/' if depth == 0 => last_slash = i,
                ':' if depth == 0 && i >= last_slash => verb_at = Some(i),
                _ => {}
            }
        }
        let (segs, verb) = match verb_at {
            Some(i) => (&path[..i], Some(path[i + 1..].to_owned())),
            None => (path, None),
        };
        let mut toks = Vec::new();
        let mut vars = Vec::new();
        // split on '/' outside braces
        let mut parts = Vec::new();
        let mut cur = String::new();
        let mut depth = 0;
        for c in segs.chars() {
            match c {
                '{' => {
                    depth += 1;
                    cur.push(c);
                }
                '}' => {
                    depth -= 1;
                    cur.push(c);
                }
                '/' if depth == 0 => parts.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        parts.push(cur);
        for part in parts {
            if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let (field, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                let start = toks.len();
                for p in pattern.split('/') {
                    toks.push(seg_tok(p)?);
                }
                vars.push(Var {
                    field: field.to_owned(),
                    start,
                    len: toks.len() - start,
                });
            } else {
                toks.push(seg_tok(&part)?);
            }
        }
        if toks.iter().rev().skip(1).any(|t| *t == Tok::Rest) {
            return Err(format!("template {raw:?}: '**' must be last"));
        }
        Ok(Self {
            raw: raw.to_owned(),
            toks,
            vars,
            verb,
        })
    }

    /// Binds a request path (percent-encoded) to the variables, or `None`.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(v) => path.strip_suffix(v.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let segs: Vec<&str> = path.split('/').collect();
        let mut bound: Vec<Option<(usize, usize)>> = vec![None; self.toks.len()];
        let mut i = 0;
        for (t, tok) in self.toks.iter().enumerate() {
            match tok {
                Tok::Lit(l) => {
                    if segs.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                    bound[t] = Some((i, i + 1));
                    i += 1;
                }
                Tok::Any => {
                    let s = segs.get(i)?;
                    if s.is_empty() {
                        return None;
                    }
                    bound[t] = Some((i, i + 1));
                    i += 1;
                }
                Tok::Rest => {
                    bound[t] = Some((i, segs.len()));
                    i = segs.len();
                }
            }
        }
        if i != segs.len() {
            return None;
        }
        let mut out = Vec::new();
        for v in &self.vars {
            let first = bound[v.start].map(|(a, _)| a)?;
            let last = bound[v.start + v.len - 1].map(|(_, b)| b)?;
            let raw = segs[first..last].join("/");
            let value = percent_decode(&raw, false)?;
            out.push((v.field.clone(), value));
        }
        Some(out)
    }

    /// How specific the template is (literal count), to prefer
    /// `/members/{id}/home` over `/members/{id=**}`.
    pub fn literal_count(&self) -> usize {
        self.toks
            .iter()
            .filter(|t| matches!(t, Tok::Lit(_)))
            .count()
            + usize::from(self.verb.is_some())
    }

    /// The template with variable names erased (`/v1/programs/*/members/*:redeem`):
    /// two templates of one shape match exactly the same paths.
    pub fn shape(&self) -> String {
        let mut out = String::new();
        for t in &self.toks {
            out.push('/');
            match t {
                Tok::Lit(l) => out.push_str(l),
                Tok::Any => out.push('*'),
                Tok::Rest => out.push_str("**"),
            }
        }
        if let Some(v) = &self.verb {
            out.push(':');
            out.push_str(v);
        }
        out
    }

    /// The OpenAPI form: every variable as `{field}`.
    pub fn openapi_path(&self) -> String {
        self.openapi_path_named(|v| v.field.clone())
    }

    /// The OpenAPI form with every variable as `{name(var)}`.
    pub fn openapi_path_named(&self, name: impl Fn(&Var) -> String) -> String {
        let mut out = String::new();
        let mut t = 0;
        while t < self.toks.len() {
            out.push('/');
            if let Some(v) = self.vars.iter().find(|v| v.start == t) {
                out.push('{');
                out.push_str(&name(v));
                out.push('}');
                t += v.len;
                continue;
            }
            match &self.toks[t] {
                Tok::Lit(l) => out.push_str(l),
                Tok::Any => out.push('*'),
                Tok::Rest => out.push_str("**"),
            }
            t += 1;
        }
        if let Some(v) = &self.verb {
            out.push(':');
            out.push_str(v);
        }
        out
    }
}

fn seg_tok(s: &str) -> Result<Tok, String> {
    match s {
        "*" => Ok(Tok::Any),
        "**" => Ok(Tok::Rest),
        "" => Err("empty path segment".into()),
        l if l.contains(['{', '}']) => Err(format!("bad segment {l:?}")),
        l => Ok(Tok::Lit(l.to_owned())),
    }
}

/// Decodes `%XX` (and `+` as space when `plus` is set); `None` when the
/// result is not UTF-8 or an escape is malformed.
pub fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Where the HTTP body goes in the request message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    None,
    /// `body: "*"`: the whole request message.
    All,
    /// `body: "field"`: one field.
    Field(String),
}

/// One REST route of one RPC.
#[derive(Debug, Clone)]
pub struct Route {
    pub verb: Method,
    pub template: Template,
    pub body: BodyRule,
    pub response_body: Option<String>,
    pub method: MethodDescriptor,
    /// The upstream service (`rewards`).
    pub service: String,
    /// The gRPC path (`/loyalty.rewards.v1.RewardsService/GetBalance`).
    pub rpc_path: String,
    /// Index of the binding (0 the main one), for unique operation ids.
    pub binding: usize,
}

impl Route {
    /// The OpenAPI name of a path variable. A nested field (`rule.program_id`)
    /// is named by its last part (`program_id`) unless that is ambiguous in
    /// the route, then by its path with underscores (`rule_program_id`):
    /// parameter names with dots are not portable across OpenAPI tools.
    pub fn param_name(&self, var: &Var) -> String {
        let Some((_, leaf)) = var.field.rsplit_once('.') else {
            return var.field.clone();
        };
        let leaf_of = |f: &str| f.rsplit('.').next().unwrap_or(f).to_owned();
        let ambiguous = self
            .template
            .vars
            .iter()
            .any(|o| o.field != var.field && leaf_of(&o.field) == leaf)
            || self.method.input().get_field_by_name(leaf).is_some();
        if ambiguous {
            var.field.replace('.', "_")
        } else {
            leaf.to_owned()
        }
    }

    /// The path as the OpenAPI document names it (see [`Route::param_name`]).
    pub fn openapi_path(&self) -> String {
        self.template.openapi_path_named(|v| self.param_name(v))
    }

    /// `RewardsService.GetBalance`.
    pub fn short_name(&self) -> String {
        format!(
            "{}.{}",
            self.method.parent_service().name(),
            self.method.name()
        )
    }
}

/// The upstream service of a gRPC service: `loyalty.rewards.v1.X` → `rewards`.
pub fn upstream_of(service_full_name: &str) -> Option<&str> {
    let mut parts = service_full_name.split('.');
    match (parts.next(), parts.next()) {
        (Some("loyalty"), Some(area)) => Some(area),
        _ => None,
    }
}

/// The `google.api.http` rule of a method, if annotated.
pub fn http_rule(pool: &DescriptorPool, method: &MethodDescriptor) -> Option<HttpRule> {
    let ext = pool.get_extension_by_name("google.api.http")?;
    let opts = method.options();
    if !opts.has_extension(&ext) {
        return None;
    }
    match opts.get_extension(&ext).as_ref() {
        prost_reflect::Value::Message(m) => m.transcode_to::<HttpRule>().ok(),
        _ => None,
    }
}

/// Every annotated route of every `loyalty.*` service in the pool.
pub fn routes(pool: &DescriptorPool) -> Result<Vec<Route>, String> {
    let mut out = Vec::new();
    for service in pool.services() {
        let Some(upstream) = upstream_of(service.full_name()) else {
            continue;
        };
        for method in service.methods() {
            if method.is_client_streaming() || method.is_server_streaming() {
                continue;
            }
            let Some(rule) = http_rule(pool, &method) else {
                continue;
            };
            let mut bindings = vec![rule.clone()];
            bindings.extend(rule.additional_bindings.iter().cloned());
            for (i, b) in bindings.into_iter().enumerate() {
                let (verb, path) = match &b.pattern {
                    Some(Pattern::Get(p)) => (Method::GET, p.clone()),
                    Some(Pattern::Post(p)) => (Method::POST, p.clone()),
                    Some(Pattern::Put(p)) => (Method::PUT, p.clone()),
                    Some(Pattern::Delete(p)) => (Method::DELETE, p.clone()),
                    Some(Pattern::Patch(p)) => (Method::PATCH, p.clone()),
                    Some(Pattern::Custom(c)) => (
                        Method::from_bytes(c.kind.as_bytes()).map_err(|e| e.to_string())?,
                        c.path.clone(),
                    ),
                    None => continue,
                };
                let template =
                    Template::parse(&path).map_err(|e| format!("{}: {e}", method.full_name()))?;
                for v in &template.vars {
                    if resolve_field(&method.input(), &v.field).is_none() {
                        return Err(format!(
                            "{}: path variable {:?} is not a field of {}",
                            method.full_name(),
                            v.field,
                            method.input().full_name()
                        ));
                    }
                }
                let body = match b.body.as_str() {
                    "" => BodyRule::None,
                    "*" => BodyRule::All,
                    f => BodyRule::Field(f.to_owned()),
                };
                out.push(Route {
                    verb,
                    template,
                    body,
                    response_body: Some(b.response_body.clone()).filter(|s| !s.is_empty()),
                    rpc_path: format!("/{}/{}", service.full_name(), method.name()),
                    service: upstream.to_owned(),
                    method: method.clone(),
                    binding: i,
                });
            }
        }
    }
    // most specific first
    out.sort_by_key(|r| std::cmp::Reverse(r.template.literal_count()));
    refuse_conflicts(&out)?;
    Ok(out)
}

/// A contract mistake that would leave an RPC unreachable over REST: two
/// bindings with the same HTTP method and the same template (variable
/// names aside). The gateway refuses to start rather than serve one.
pub fn refuse_conflicts(routes: &[Route]) -> Result<(), String> {
    let mut clashes = Vec::new();
    for (i, a) in routes.iter().enumerate() {
        for b in &routes[i + 1..] {
            if a.verb == b.verb && a.template.shape() == b.template.shape() {
                clashes.push(format!(
                    "{} {} is claimed by both {} ({}) and {} ({})",
                    a.verb,
                    a.template.shape(),
                    a.method.full_name(),
                    a.template.raw,
                    b.method.full_name(),
                    b.template.raw,
                ));
            }
        }
    }
    if clashes.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "conflicting REST routes in the google.api.http annotations: {}",
            clashes.join("; ")
        ))
    }
}

/// The field at a dot-separated path of proto names.
pub fn resolve_field(
    msg: &prost_reflect::MessageDescriptor,
    path: &str,
) -> Option<Vec<prost_reflect::FieldDescriptor>> {
    let mut out = Vec::new();
    let mut cur = msg.clone();
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        let f = cur
            .get_field_by_name(p)
            .or_else(|| cur.get_field_by_json_name(p))?;
        if parts.peek().is_some() {
            match f.kind() {
                prost_reflect::Kind::Message(m) if !f.is_list() && !f.is_map() => cur = m,
                _ => return None,
            }
        }
        out.push(f);
    }
    Some(out)
}

/// A matched route and its bound path variables.
pub type Match<'a> = (&'a Route, Vec<(String, String)>);

/// The route of a request, if any; `Err(allowed)` when the path exists
/// under other methods.
pub fn find<'a>(
    routes: &'a [Route],
    method: &Method,
    path: &str,
) -> Result<Option<Match<'a>>, Vec<Method>> {
    let mut allowed = Vec::new();
    for r in routes {
        if let Some(vars) = r.template.matches(path) {
            if r.verb == *method {
                return Ok(Some((r, vars)));
            }
            allowed.push(r.verb.clone());
        }
    }
    if allowed.is_empty() {
        Ok(None)
    } else {
        Err(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_bind_variables_and_verbs() {
        let t = Template::parse("/v1/programs/{program_id}/members/{member_id}:redeem").unwrap();
        let vars = t.matches("/v1/programs/p%201/members/m1:redeem").unwrap();
        assert_eq!(
            vars,
            vec![
                ("program_id".to_owned(), "p 1".to_owned()),
                ("member_id".to_owned(), "m1".to_owned())
            ]
        );
        assert!(t.matches("/v1/programs/p1/members/m1").is_none());
        assert!(t.matches("/v1/programs/p1/members/m1:other").is_none());
        assert!(t.matches("/v1/programs//members/m1:redeem").is_none());
        assert_eq!(
            t.openapi_path(),
            "/v1/programs/{program_id}/members/{member_id}:redeem"
        );

        let t = Template::parse("/v1/{member.name=programs/*/members/*}/coupons").unwrap();
        let vars = t.matches("/v1/programs/p1/members/m2/coupons").unwrap();
        assert_eq!(
            vars,
            vec![(
                "member.name".to_owned(),
                "programs/p1/members/m2".to_owned()
            )]
        );
        assert!(t.matches("/v1/programs/p1/other/m2/coupons").is_none());

        let t = Template::parse("/v1/files/{path=**}").unwrap();
        assert_eq!(t.matches("/v1/files/a/b/c").unwrap()[0].1, "a/b/c");
        assert!(Template::parse("/v1/{x=**}/tail").is_err());
        assert!(Template::parse("v1/no/slash").is_err());
    }

    #[test]
    fn every_contract_route_is_read_from_the_descriptor_set() {
        let routes = routes(loyalty_proto::descriptor_pool()).unwrap();
        let info = routes
            .iter()
            .find(|r| r.rpc_path == "/loyalty.rewards.v1.RewardsService/GetServiceInfo")
            .expect("rewards info is annotated");
        assert_eq!(info.verb, Method::GET);
        assert_eq!(info.service, "rewards");
        assert_eq!(info.template.raw, "/v1/rewards/info");
        for svc in ["membership", "rewards", "feedback", "retention"] {
            assert!(routes.iter().any(|r| r.service == svc), "{svc}");
        }
        // nested path fields get plain OpenAPI names
        let update = routes
            .iter()
            .find(|r| r.rpc_path.ends_with("RewardsService/UpdateEarningRule"))
            .unwrap();
        assert_eq!(
            update.template.raw,
            "/v1/programs/{rule.program_id}/earning-rules/{rule.rule_id}"
        );
        assert_eq!(
            update.openapi_path(),
            "/v1/programs/{program_id}/earning-rules/{rule_id}"
        );
        for r in &routes {
            assert!(!r.openapi_path().contains('.'), "{}", r.openapi_path());
        }
    }

    /// The contract with `CatalogService.RedeemReward` annotated `post: path`.
    fn pool_with_redeem_reward_at(path: &str) -> DescriptorPool {
        use prost::Message as _;
        use prost_reflect::{DynamicMessage, Value};
        let pool = loyalty_proto::descriptor_pool();
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        let set = pool
            .get_message_by_name("google.protobuf.FileDescriptorSet")
            .unwrap();
        let mut set = DynamicMessage::decode(set, loyalty_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut changed = false;
        let Some(Value::List(files)) = set.get_field_by_name_mut("file") else {
            panic!("a descriptor set has files")
        };
        for file in files.iter_mut().filter_map(Value::as_message_mut) {
            let Some(Value::List(services)) = file.get_field_by_name_mut("service") else {
                continue;
            };
            for svc in services.iter_mut().filter_map(Value::as_message_mut) {
                let catalog = svc.get_field_by_name("name").as_deref()
                    == Some(&Value::String("CatalogService".into()));
                let Some(Value::List(methods)) = svc.get_field_by_name_mut("method") else {
                    continue;
                };
                for m in methods.iter_mut().filter_map(Value::as_message_mut) {
                    let redeem = m.get_field_by_name("name").as_deref()
                        == Some(&Value::String("RedeemReward".into()));
                    if !(catalog && redeem) {
                        continue;
                    }
                    let Some(Value::Message(opts)) = m.get_field_by_name_mut("options") else {
                        panic!("RedeemReward is annotated")
                    };
                    let Value::Message(rule) = opts.get_extension_mut(&http) else {
                        panic!("an HttpRule")
                    };
                    rule.set_field_by_name("post", Value::String(path.into()));
                    changed = true;
                }
            }
        }
        assert!(changed, "CatalogService.RedeemReward found");
        DescriptorPool::decode(set.encode_to_vec().as_slice()).unwrap()
    }

    #[test]
    fn two_rpcs_claiming_one_route_stop_the_gateway() {
        // the same template under other variable names is the same route
        let pool =
            pool_with_redeem_reward_at("/v1/programs/{program_id}/members/{member_id=*}:redeem");
        let err = routes(&pool).unwrap_err();
        assert!(
            err.contains("loyalty.rewards.v1.RewardsService.Redeem"),
            "{err}"
        );
        assert!(
            err.contains("loyalty.rewards.v1.CatalogService.RedeemReward"),
            "{err}"
        );
        assert!(
            err.contains("POST /v1/programs/*/members/*:redeem"),
            "{err}"
        );
        // its own route is fine
        let pool =
            pool_with_redeem_reward_at("/v1/programs/{program_id}/members/{member_id}/redemptions");
        assert!(routes(&pool).is_ok());
        // the shipped contract has no clash
        assert!(routes(loyalty_proto::descriptor_pool()).is_ok());
    }

    #[test]
    fn percent_decoding_refuses_bad_escapes() {
        assert_eq!(percent_decode("a%2Fb", false).unwrap(), "a/b");
        assert_eq!(percent_decode("a+b", true).unwrap(), "a b");
        assert!(percent_decode("%zz", false).is_none());
        assert!(percent_decode("%ff", false).is_none());
        assert!(percent_decode("%", false).is_none());
    }
}
