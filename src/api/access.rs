//! Who may use the server: one middleware ([`check`]) that checks, in order, the `Host` header (the
//! DNS-rebinding defence), the `Origin` of state-changing requests and WebSocket upgrades (cross-site
//! requests), and the auth token when one is configured; and the dashboard's login form (`/login`,
//! `/logout`), which sets the token as a cookie.
//!
//! It deliberately sends no CORS headers at all: no other origin's script may read a response. It does not
//! do TLS; behind a TLS proxy the cookie gets `Secure` when the proxy says `X-Forwarded-Proto: https`.

use std::net::IpAddr;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpRequest, HttpResponse, ResponseError};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::{is_loopback, Secret, ServerSettings};

use super::error::ApiError;

/// The cookie the login form sets; it holds the token itself.
pub const COOKIE: &str = "troupe_token";

/// What a path's `next` parameter keeps unescaped in the login redirect.
const NEXT_ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The access rules of one server, from `[server]`.
#[derive(Debug, Clone)]
pub struct Access {
    token: Option<Secret>,
    /// `allowed_hosts` without `"*"`, lowercased.
    allowed_hosts: Vec<String>,
    /// `allowed_hosts` holds `"*"`.
    any_host: bool,
    /// The bind address's IP when it is a specific one (not 0.0.0.0 or ::).
    bind_ip: Option<IpAddr>,
    metrics_public: bool,
}

/// What the middleware does with a request.
#[derive(Debug)]
enum Verdict {
    /// On to the route.
    Pass,
    /// Refused with this error.
    Refuse(ApiError),
    /// A page for a person without the token: to the login form, then back to this location.
    Login(String),
}

impl Access {
    /// The rules of `settings`.
    pub fn new(settings: &ServerSettings) -> Self {
        Access {
            token: settings.auth_token.clone(),
            allowed_hosts: settings
                .allowed_hosts
                .iter()
                .filter(|host| host.as_str() != "*")
                .map(|host| host.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            any_host: settings.allowed_hosts.iter().any(|host| host == "*"),
            bind_ip: settings.bind_ip().filter(|ip| !ip.is_unspecified()),
            metrics_public: settings.metrics_public,
        }
    }

    /// Host, then Origin, then the token.
    fn decide(&self, request: &HttpRequest) -> Verdict {
        let path = request.path();
        let headers = request.headers();
        let host = headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
        if !matches!(path, "/healthz" | "/readyz") {
            let allowed = host
                .as_deref()
                .and_then(split_authority)
                .is_some_and(|(name, _)| self.host_allowed(&name));
            if !allowed {
                let shown = host.as_deref().map_or("(none)".to_owned(), shorten);
                return Verdict::Refuse(ApiError::ForbiddenHost(shown));
            }
        }
        let upgrade = is_websocket_upgrade(headers);
        let safe = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        if upgrade || !safe {
            if let Some(origin) = headers.get(header::ORIGIN) {
                let origin = origin.to_str().unwrap_or("(not text)");
                if !host
                    .as_deref()
                    .is_some_and(|host| same_origin(origin, host))
                {
                    return Verdict::Refuse(ApiError::ForbiddenOrigin {
                        origin: shorten(origin),
                        host: host.as_deref().map_or("(none)".to_owned(), shorten),
                    });
                }
            }
        }
        let Some(token) = &self.token else {
            return Verdict::Pass;
        };
        if self.open_without_token(request.method(), path) || carries_token(request, token) {
            return Verdict::Pass;
        }
        let api = path.starts_with("/api/") || path == "/api" || path == "/metrics";
        if !api && !upgrade && *request.method() == Method::GET && accepts_html(headers) {
            let here = request
                .uri()
                .path_and_query()
                .map_or(path, |whole| whole.as_str());
            return Verdict::Login(format!(
                "/login?next={}",
                utf8_percent_encode(here, NEXT_ESCAPED)
            ));
        }
        Verdict::Refuse(ApiError::Unauthorized)
    }

    /// Whether a `Host` name (port removed, lowercase) is one this server answers to.
    fn host_allowed(&self, name: &str) -> bool {
        if self.any_host || name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            if is_loopback(ip) || Some(ip) == self.bind_ip {
                return true;
            }
        }
        self.allowed_hosts.iter().any(|allowed| allowed == name)
    }

    /// The routes that need no token: probes, the metrics when public, the login form, the dashboard's
    /// static files (they hold no data).
    fn open_without_token(&self, method: &Method, path: &str) -> bool {
        match path {
            "/healthz" | "/readyz" => true,
            "/metrics" => self.metrics_public,
            "/login" => matches!(*method, Method::GET | Method::HEAD | Method::POST),
            "/logout" => *method == Method::POST,
            _ => path.starts_with("/assets/"),
        }
    }
}

/// The middleware: refuses what [`Access`] refuses, passes the rest on. Fails closed when the server was
/// built without the rules.
pub async fn check<B: MessageBody + 'static>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    let verdict = match request.app_data::<web::Data<Access>>() {
        Some(access) => access.decide(request.request()),
        None => Verdict::Refuse(ApiError::Internal("access rules missing".into())),
    };
    match verdict {
        Verdict::Pass => Ok(next.call(request).await?.map_into_left_body()),
        Verdict::Refuse(error) => Ok(request
            .into_response(error.error_response())
            .map_into_right_body()),
        Verdict::Login(location) => Ok(request
            .into_response(see_other(&location))
            .map_into_right_body()),
    }
}

/// A name and optional port from a `Host` value or an origin's authority (`name`, `name:port`,
/// `[v6]`, `[v6]:port`); the name lowercased without a trailing dot. `None` when malformed.
fn split_authority(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    let (name, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (inside, port)
    } else {
        match text.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(digits) => Some(digits.parse::<u16>().ok()?),
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let plausible = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'));
    plausible.then_some((name, port))
}

/// Whether `origin` (`scheme://authority`) is the origin of a request for `host`: the same name, and the
/// same port, a missing one being the origin scheme's default (so a TLS proxy's `Host: name` matches
/// `https://name`). `null` and anything unparsable are not.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    match (split_authority(authority), split_authority(host)) {
        (Some((origin_name, origin_port)), Some((host_name, host_port))) => {
            origin_name == host_name
                && origin_port.unwrap_or(default_port) == host_port.unwrap_or(default_port)
        }
        _ => false,
    }
}

/// Whether the request asks to become a WebSocket.
fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.to_ascii_lowercase().contains("websocket"))
}

/// Whether a browser asks for a page (`Accept` includes `text/html`).
fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.to_ascii_lowercase().contains("text/html"))
}

/// Whether the request carries the token, as a bearer token or the login cookie.
fn carries_token(request: &HttpRequest, token: &Secret) -> bool {
    let bearer = request
        .headers()
        .get_all(header::AUTHORIZATION)
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| {
            let (scheme, given) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| given.trim())
        })
        .any(|given| token_matches(given, token));
    bearer
        || request
            .cookie(COOKIE)
            .is_some_and(|cookie| token_matches(cookie.value(), token))
}

/// Compares in time independent of where the texts differ (only the length can show).
fn token_matches(given: &str, token: &Secret) -> bool {
    given.as_bytes().ct_eq(token.expose().as_bytes()).into()
}

/// Client input shown back in an error: at most 100 characters.
fn shorten(text: &str) -> String {
    text.chars().take(100).collect()
}

/// A 303 to `location`.
fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// `next` when it is a path on this server (`/...`, not `//...` or `/\...`, printable ASCII), else `/`:
/// the login form never sends anyone to another site.
fn local_path(next: &str) -> &str {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.bytes().all(|b| b.is_ascii_graphic());
    if local {
        next
    } else {
        "/"
    }
}

/// The query of `GET /login`.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    /// Where to go after logging in.
    #[serde(default)]
    next: String,
}

/// The form of `POST /login`.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    /// The token typed in.
    token: String,
    /// Where to go after logging in.
    #[serde(default)]
    next: String,
}

/// `GET /login`: the form (to `/` when no token is configured).
pub async fn login_page(access: web::Data<Access>, query: web::Query<LoginQuery>) -> HttpResponse {
    if access.token.is_none() {
        return see_other("/");
    }
    login_form(
        actix_web::http::StatusCode::OK,
        local_path(&query.next),
        None,
    )
}

/// `POST /login`: the right token sets the cookie and goes on to `next`; a wrong one shows the form again
/// (401).
pub async fn login(
    request: HttpRequest,
    access: web::Data<Access>,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    let next = local_path(&form.next);
    let Some(token) = &access.token else {
        return see_other("/");
    };
    if !token_matches(form.token.trim(), token) {
        return login_form(
            actix_web::http::StatusCode::UNAUTHORIZED,
            next,
            Some("That is not the server's token."),
        );
    }
    let cookie = Cookie::build(COOKIE, token.expose().to_owned())
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .secure(request.connection_info().scheme() == "https")
        .finish();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, next))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .cookie(cookie)
        .finish()
}

/// `POST /logout`: clears the cookie, back to the form.
pub async fn logout() -> HttpResponse {
    let mut cookie = Cookie::build(COOKIE, "")
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .finish();
    cookie.make_removal();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/login"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .cookie(cookie)
        .finish()
}

/// The login page: one field, no script, no external asset.
fn login_form(
    status: actix_web::http::StatusCode,
    next: &str,
    error: Option<&str>,
) -> HttpResponse {
    let error = error.map_or(String::new(), |message| {
        format!(
            "<p class=\"error\" role=\"alert\">{}</p>",
            escape_html(message)
        )
    });
    let page = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Troupe: log in</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #f5f5f4; color: #1c1917; margin: 0; }}
main {{ max-width: 22rem; margin: 12vh auto; background: #fff; padding: 2rem; border-radius: .5rem;
  box-shadow: 0 1px 3px rgba(0,0,0,.15); }}
h1 {{ font-size: 1.25rem; margin: 0 0 1rem; }}
label {{ display: block; margin-bottom: .25rem; }}
input[type=password] {{ width: 100%; box-sizing: border-box; padding: .5rem; font: inherit; }}
button {{ margin-top: 1rem; padding: .5rem 1rem; font: inherit; }}
.error {{ color: #b91c1c; }}
.hint {{ color: #57534e; font-size: .875rem; }}
</style>
</head>
<body>
<main>
<h1>Troupe</h1>
{error}<form method="post" action="/login">
<label for="token">Access token</label>
<input type="password" id="token" name="token" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{next}">
<button type="submit">Log in</button>
</form>
<p class="hint">The token is the server's <code>TROUPE__SERVER__AUTH_TOKEN</code>.</p>
</main>
</body>
</html>
"#,
        next = escape_html(next),
    );
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(page)
}

/// Text made safe inside HTML elements and quoted attributes.
fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_split_into_name_and_port() {
        for (text, expected) in [
            ("localhost:8080", Some(("localhost", Some(8080)))),
            ("LocalHost", Some(("localhost", None))),
            ("127.0.0.1:1", Some(("127.0.0.1", Some(1)))),
            ("[::1]:8080", Some(("::1", Some(8080)))),
            ("[::1]", Some(("::1", None))),
            ("troupe.lan.", Some(("troupe.lan", None))),
            ("evil.example:x", None),
            ("[::1", None),
            ("[::1]x", None),
            ("", None),
            ("a b", None),
        ] {
            let got = split_authority(text);
            let got = got.as_ref().map(|(name, port)| (name.as_str(), *port));
            assert_eq!(got, expected, "{text}");
        }
    }

    #[test]
    fn origins_match_their_own_host_only() {
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_origin("http://localhost", "localhost:80"));
        assert!(same_origin("https://troupe.example", "troupe.example"));
        assert!(same_origin("http://[::1]:9", "[::1]:9"));
        assert!(!same_origin("http://evil.example", "127.0.0.1:8080"));
        assert!(!same_origin("http://127.0.0.1:8081", "127.0.0.1:8080"));
        assert!(!same_origin("null", "127.0.0.1:8080"));
        assert!(!same_origin("file://", "127.0.0.1:8080"));
    }

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(local_path("/tasks/1?panel=tree"), "/tasks/1?panel=tree");
        for outside in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "",
            "x",
            "/a b",
        ] {
            assert_eq!(local_path(outside), "/", "{outside}");
        }
    }

    #[test]
    fn loopback_names_and_configured_hosts_are_allowed() {
        let mut server = crate::config::Settings::load_from(std::path::Path::new("config"), None)
            .unwrap()
            .server;
        server.bind = "192.168.1.20:8080".into();
        server.allowed_hosts = vec!["Troupe.LAN".into()];
        let access = Access::new(&server);
        for allowed in [
            "localhost",
            "app.localhost",
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "192.168.1.20",
            "troupe.lan",
        ] {
            assert!(access.host_allowed(allowed), "{allowed}");
        }
        for refused in [
            "evil.example",
            "localhost.evil.example",
            "192.168.1.21",
            "0.0.0.0",
        ] {
            assert!(!access.host_allowed(refused), "{refused}");
        }
        server.bind = "0.0.0.0:8080".into();
        assert!(!Access::new(&server).host_allowed("0.0.0.0"));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html("\"><script>'&"),
            "&quot;&gt;&lt;script&gt;&#39;&amp;"
        );
    }
}
