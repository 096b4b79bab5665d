//! How `serve` routes a request, as API Gateway does: the path is normalised
//! (`normalise_path`), then matched against the API's resource templates (`Resources`), from the
//! plans' route overrides and an OpenAPI file's `paths`.

use tollgate::policy_file::PolicyFile;

/// The API's resources, as API Gateway knows them: path templates (`/pets/{id}`, greedy
/// `/files/{proxy+}`), each with the methods it accepts.
///
/// Templates come from the plans' route overrides and, with `serve --openapi FILE`, from the
/// OpenAPI file's `paths`. Only the OpenAPI file declares the API's full surface: with it, a path
/// or method matching no resource is `404`; without it, an unmatched path passes with its
/// normalised path as the resource (and draws from the plan's bucket).
#[derive(Debug, Clone, Default)]
pub struct Resources {
    templates: Vec<Template>,
    declared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    path: String,
    segments: Vec<Segment>,
    /// `None`: any method.
    methods: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    Greedy,
}

/// Where a request goes: the resource template it matched (what the gate charges) and the
/// normalised path (what the upstream receives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Resource {
        resource: String,
        path: String,
    },
    /// A declared API has no such resource or method.
    NotFound,
}

impl Resources {
    /// The templates of every plan's route overrides (validated by `Plan::new`).
    pub fn from_policy(file: &PolicyFile) -> Resources {
        let mut r = Resources::default();
        for plan in file.plans.values() {
            for route in &plan.spec().routes {
                if let Some((path, _)) = tollgate::engine::policy::split_route(&route.route) {
                    r.add(path, None);
                }
            }
        }
        r
    }

    /// Adds the `paths` of an OpenAPI (or Swagger) document, JSON or YAML, and declares the API:
    /// from then on unmatched requests are `404`. Errors name the path that is not a resource.
    pub fn add_openapi(&mut self, src: &str) -> Result<(), OpenApiError> {
        let doc: serde_json::Value = if src.trim_start().starts_with('{') {
            serde_json::from_str(src).map_err(OpenApiError::Json)?
        } else {
            serde_norway::from_str(src).map_err(OpenApiError::Yaml)?
        };
        let paths = doc
            .get("paths")
            .and_then(|p| p.as_object())
            .ok_or(OpenApiError::NoPaths)?;
        for (path, item) in paths {
            tollgate::engine::policy::check_resource_path(path).map_err(|why| OpenApiError::NotAResource {
                path: path.clone(),
                why,
            })?;
            let item = item
                .as_object()
                .ok_or_else(|| OpenApiError::NotAnObject { path: path.clone() })?;
            self.add(path, declared_methods(item));
        }
        self.declared = true;
        Ok(())
    }

    fn add(&mut self, path: &str, methods: Option<Vec<String>>) {
        let segments = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(p) if p.ends_with('+') => Segment::Greedy,
                Some(_) => Segment::Param,
                None => Segment::Literal(s.to_owned()),
            })
            .collect();
        match self.templates.iter_mut().find(|t| t.path == path) {
            // The same path from the policy and the OpenAPI file: the OpenAPI file's methods.
            Some(t) if methods.is_some() => t.methods = methods,
            Some(_) => {}
            None => self.templates.push(Template {
                path: path.to_owned(),
                segments,
                methods,
            }),
        }
    }

    /// Routes a raw request path (no query): normalised, then matched as API Gateway does (the
    /// most specific template wins: at the first segment where they differ, a literal beats
    /// `{param}`, which beats `{proxy+}`). `Err` for a path that cannot be normalised.
    pub fn route(&self, raw_path: &str, method: &str) -> Result<Route, BadPath> {
        let path = normalise_path(raw_path)?;
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let best = self
            .templates
            .iter()
            .filter(|t| t.matches(&segments))
            .min_by_key(|t| t.segments.iter().map(Segment::rank).collect::<Vec<_>>());
        Ok(match best {
            Some(t) if t.methods.as_ref().is_none_or(|m| m.iter().any(|m| m == method)) => Route::Resource {
                resource: t.path.clone(),
                path,
            },
            Some(_) if self.declared => Route::NotFound,
            None if self.declared => Route::NotFound,
            _ => Route::Resource {
                resource: path.clone(),
                path,
            },
        })
    }
}

/// The methods an OpenAPI path item declares; `None` for API Gateway's any-method extension.
fn declared_methods(item: &serde_json::Map<String, serde_json::Value>) -> Option<Vec<String>> {
    if item.contains_key("x-amazon-apigateway-any-method") {
        return None;
    }
    let methods = item
        .keys()
        .map(|m| m.to_ascii_uppercase())
        .filter(|m| {
            matches!(
                m.as_str(),
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
            )
        })
        .collect();
    Some(methods)
}

impl Template {
    fn matches(&self, path: &[&str]) -> bool {
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::Greedy => return i < path.len(),
                Segment::Param if i < path.len() => {}
                Segment::Literal(l) if path.get(i) == Some(&l.as_str()) => {}
                _ => return false,
            }
            i += 1;
        }
        i == path.len()
    }
}

impl Segment {
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 0,
            Segment::Param => 1,
            Segment::Greedy => 2,
        }
    }
}

/// A request path that cannot be normalised (a `%` not followed by two hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed percent-encoding in the request path")]
pub struct BadPath;

/// The path API Gateway routes on (RFC 3986 section 6.2.2): percent-encoded unreserved characters
/// decoded (`%73earch` is `search`, so `%2E%2E` is a dot segment), other escapes upper-cased,
/// empty segments (doubled and trailing slashes) dropped, then dot segments resolved (never above
/// the root).
pub fn normalise_path(raw: &str) -> Result<String, BadPath> {
    let mut out: Vec<String> = Vec::new();
    for seg in raw.split('/') {
        let seg = decode_unreserved(seg)?;
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    Ok(format!("/{}", out.join("/")))
}

fn decode_unreserved(seg: &str) -> Result<String, BadPath> {
    if !seg.contains('%') {
        return Ok(seg.to_owned());
    }
    let bytes = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Only ASCII bytes are compared; a multi-byte character passes through whole.
            let end = seg[i..].find('%').map_or(seg.len(), |n| i + n);
            out.push_str(&seg[i..end]);
            i = end;
            continue;
        }
        let hex = seg.get(i + 1..i + 3).ok_or(BadPath)?;
        let byte = u8::from_str_radix(hex, 16).map_err(|_| BadPath)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadPath);
        }
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push_str(&hex.to_ascii_uppercase());
        }
        i += 3;
    }
    Ok(out)
}

/// An OpenAPI document `serve --openapi` cannot take; the message names the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    #[error("not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("not valid YAML: {0}")]
    Yaml(serde_norway::Error),
    #[error("has no `paths` object")]
    NoPaths,
    #[error("paths: {path:?} {why}")]
    NotAResource { path: String, why: &'static str },
    #[error("paths: {path:?} is not an object")]
    NotAnObject { path: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_as_api_gateway_routes_them() {
        let cases = [
            ("/search", "/search"),
            ("/x/../search", "/search"),
            ("/./search/.", "/search"),
            ("//search//", "/search"),
            ("/search/", "/search"),
            ("/%73earch", "/search"),
            ("/x/%2e%2E/search", "/search"),
            ("/../../search", "/search"),
            ("/a%2fb", "/a%2Fb"),
            ("/caf\u{e9}/%7E", "/caf\u{e9}/~"),
            ("/", "/"),
            ("", "/"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise_path(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in ["/%", "/%4", "/%zz", "/a%+1"] {
            assert_eq!(normalise_path(bad), Err(BadPath), "{bad}");
        }
    }

    fn resources(templates: &[&str]) -> Resources {
        let mut r = Resources::default();
        for t in templates {
            r.add(t, None);
        }
        r
    }

    fn resource(r: &Resources, path: &str) -> Option<String> {
        match r.route(path, "GET") {
            Ok(Route::Resource { resource, .. }) => Some(resource),
            _ => None,
        }
    }

    #[test]
    fn the_most_specific_template_wins() {
        let r = resources(&[
            "/pets/{id}",
            "/pets/mine",
            "/{proxy+}",
            "/pets/{id}/toys",
            "/files/{path+}",
        ]);
        assert_eq!(resource(&r, "/pets/7").as_deref(), Some("/pets/{id}"));
        assert_eq!(resource(&r, "/pets/mine").as_deref(), Some("/pets/mine"));
        assert_eq!(resource(&r, "/pets/7/toys/").as_deref(), Some("/pets/{id}/toys"));
        assert_eq!(resource(&r, "/files/a/b/c").as_deref(), Some("/files/{path+}"));
        assert_eq!(resource(&r, "/files").as_deref(), Some("/{proxy+}"));
        assert_eq!(resource(&r, "/other/x").as_deref(), Some("/{proxy+}"));
        // Undeclared API: an unmatched path is its own resource, normalised.
        assert_eq!(resource(&r, "/").as_deref(), Some("/"));
    }

    #[test]
    fn a_declared_api_answers_unknown_paths_and_methods_with_not_found() {
        let mut r = Resources::default();
        let doc =
            "openapi: 3.0.1\npaths:\n  /pets/{id}:\n    get: {}\n  /search:\n    x-amazon-apigateway-any-method: {}\n";
        r.add_openapi(doc).expect("valid");
        assert_eq!(resource(&r, "/pets/1").as_deref(), Some("/pets/{id}"));
        assert_eq!(r.route("/pets/1", "DELETE"), Ok(Route::NotFound));
        assert_eq!(r.route("/search", "POST").map(|_| ()), Ok(()));
        assert_eq!(r.route("/nowhere", "GET"), Ok(Route::NotFound));
        let e = Resources::default()
            .add_openapi(r#"{"paths": {"/a/{p+}/b": {}}}"#)
            .expect_err("greedy not last");
        assert!(e.to_string().contains("must be the last segment"), "{e}");
    }
}
