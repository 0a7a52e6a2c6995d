//! Which Docker API calls the proxy acts on; everything else passes through untouched.
//!
//! The Docker CLI prefixes every path with the API version it speaks (`/v1.41/containers/…`);
//! older clients and curl send none. Both name the same call.

use hyper::Method;

/// A call the proxy has a part in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /containers/create`
    Create,
    /// `POST /containers/{id}/start` or `/restart`: networking follows once the engine answers.
    Start(String),
    /// `GET /containers/{id}/json`: the answer shows the Calico address.
    Inspect(String),
    /// `DELETE /containers/{id}`: the addresses go back once the container is gone.
    Remove(String),
    /// Anything else, streamed or hijacked as it comes.
    Other,
}

/// The path without its API version prefix.
pub fn unversioned(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let version = &rest[..end];
    let is_version = !version.is_empty()
        && version.chars().all(|c| c.is_ascii_digit() || c == '.')
        && version.starts_with(|c: char| c.is_ascii_digit());
    if is_version {
        &rest[end..]
    } else {
        path
    }
}

impl Route {
    pub fn of(method: &Method, path: &str) -> Route {
        let parts: Vec<&str> = unversioned(path)
            .trim_start_matches('/')
            .split('/')
            .collect();
        match (method, parts.as_slice()) {
            (&Method::POST, ["containers", "create"]) => Route::Create,
            (&Method::POST, ["containers", id, "start" | "restart"]) => {
                Route::Start(id.to_string())
            }
            (&Method::GET, ["containers", id, "json"]) => Route::Inspect(id.to_string()),
            (&Method::DELETE, ["containers", id]) => Route::Remove(id.to_string()),
            _ => Route::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefixes_are_optional() {
        assert_eq!(
            unversioned("/v1.41/containers/create"),
            "/containers/create"
        );
        assert_eq!(unversioned("/v1/_ping"), "/_ping");
        assert_eq!(unversioned("/_ping"), "/_ping");
        assert_eq!(unversioned("/volumes/x"), "/volumes/x");
        // A path that only starts with v is not a version.
        assert_eq!(unversioned("/version"), "/version");
        assert_eq!(unversioned("/v1.41"), "");
    }

    #[test]
    fn routes_are_the_calls_the_proxy_has_a_part_in() {
        let post = Method::POST;
        assert_eq!(Route::of(&post, "/v1.41/containers/create"), Route::Create);
        assert_eq!(Route::of(&post, "/containers/create"), Route::Create);
        assert_eq!(
            Route::of(&post, "/v1.41/containers/abc/start"),
            Route::Start("abc".into())
        );
        assert_eq!(
            Route::of(&post, "/containers/abc/restart"),
            Route::Start("abc".into())
        );
        assert_eq!(
            Route::of(&Method::GET, "/v1.24/containers/web/json"),
            Route::Inspect("web".into())
        );
        // `docker ps` is /containers/json: a list, not an inspect.
        assert_eq!(Route::of(&Method::GET, "/containers/json"), Route::Other);
        assert_eq!(
            Route::of(&Method::DELETE, "/v1.41/containers/abc"),
            Route::Remove("abc".into())
        );
        assert_eq!(
            Route::of(&post, "/v1.41/containers/abc/attach"),
            Route::Other
        );
        assert_eq!(Route::of(&Method::GET, "/containers/create"), Route::Other);
    }
}
