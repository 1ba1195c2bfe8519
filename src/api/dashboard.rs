//! The web dashboard's pages and assets, compiled into the binary: the overview at `/`, one task at
//! `/tasks/{id}`, debug mode's breakpoints at `/breakpoints`, two runs side by side at `/compare/{a}/{b}` and
//! the static files at `/assets/{name}` (ETag from a hash of the bytes, `If-None-Match` ->
//! 304, gzip through actix-web's `Compress` when the client accepts it).
//!
//! The pages are static shells that paint at once and then read everything they show from `/api/v1`, so
//! nothing here touches the core: a script can fetch whatever a person sees. An unknown or malformed task
//! id still gets the task page, which says "no such task" after asking the API.

use actix_web::http::header;
use actix_web::middleware::Compress;
use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;

/// One file served by the dashboard.
#[derive(Debug)]
pub struct Asset {
    /// Its name under `/assets/` (or the page it is).
    pub name: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

impl Asset {
    /// The strong ETag of the bytes: their FNV-1a hash, quoted.
    pub fn etag(&self) -> String {
        format!("\"{:016x}\"", fnv1a(self.bytes))
    }
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// The overview page's shell.
pub const OVERVIEW: Asset = Asset {
    name: "overview.html",
    content_type: HTML,
    bytes: include_bytes!("dashboard/overview.html"),
};

/// The task page's shell.
pub const TASK: Asset = Asset {
    name: "task.html",
    content_type: HTML,
    bytes: include_bytes!("dashboard/task.html"),
};

/// The breakpoints page's shell.
pub const BREAKPOINTS: Asset = Asset {
    name: "breakpoints.html",
    content_type: HTML,
    bytes: include_bytes!("dashboard/breakpoints.html"),
};

/// The compare page's shell.
pub const COMPARE: Asset = Asset {
    name: "compare.html",
    content_type: HTML,
    bytes: include_bytes!("dashboard/compare.html"),
};

/// The experiments page's shell (the list, or one experiment's report).
pub const EXPERIMENT: Asset = Asset {
    name: "experiment.html",
    content_type: HTML,
    bytes: include_bytes!("dashboard/experiment.html"),
};

/// The pages, each at its route.
pub const PAGES: &[&Asset] = &[&OVERVIEW, &TASK, &BREAKPOINTS, &COMPARE, &EXPERIMENT];

/// Every file under `/assets/`.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        content_type: CSS,
        bytes: include_bytes!("dashboard/app.css"),
    },
    Asset {
        name: "common.js",
        content_type: JS,
        bytes: include_bytes!("dashboard/common.js"),
    },
    Asset {
        name: "charts.js",
        content_type: JS,
        bytes: include_bytes!("dashboard/charts.js"),
    },
    Asset {
        name: "highlight.js",
        content_type: JS,
        bytes: include_bytes!("dashboard/highlight.js"),
    },
    Asset {
        name: "overview.js",
        content_type: JS,
        bytes: include_bytes!("dashboard/overview.js"),
    },
    Asset {
        name: "task.js",
        content_type: JS,
        bytes: include_bytes!("dashboard/task.js"),
    },
    Asset {
        name: "plan_graph.js",
        content_type: JS,
        bytes: include_bytes!("dashboard/plan_graph.js"),
    },
    Asset {
        name: "debug.js",
        content_type: JS,
        bytes: include_bytes!("dashboard/debug.js"),
    },
    Asset {
        name: "alternatives.js",
        content_type: JS,
        bytes: include_bytes!("dashboard/alternatives.js"),
    },
    Asset {
        name: "breakpoints.js",
        content_type: JS,
        bytes: include_bytes!("dashboard/breakpoints.js"),
    },
    Asset {
        name: "experiment.js",
        content_type: JS,
        bytes: include_bytes!("dashboard/experiment.js"),
    },
    Asset {
        name: "compare.js",
        content_type: JS,
        bytes: include_bytes!("dashboard/compare.js"),
    },
    Asset {
        name: "icon.svg",
        content_type: SVG,
        bytes: include_bytes!("dashboard/icon.svg"),
    },
];

/// The asset called `name`, if there is one.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.name == name)
}

/// Adds the dashboard's routes (each gzip-compressed when accepted) to an app.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(
            super::resource("/")
                .wrap(Compress::default())
                .route(web::get().to(overview)),
        )
        .service(
            super::resource("/tasks/{id}")
                .wrap(Compress::default())
                .route(web::get().to(task_page)),
        )
        .service(
            super::resource("/breakpoints")
                .wrap(Compress::default())
                .route(web::get().to(breakpoints_page)),
        )
        .service(
            super::resource("/compare/{a}/{b}")
                .wrap(Compress::default())
                .route(web::get().to(compare_page)),
        )
        .service(
            super::resource("/experiments")
                .wrap(Compress::default())
                .route(web::get().to(experiment_page)),
        )
        .service(
            super::resource("/experiments/{id}")
                .wrap(Compress::default())
                .route(web::get().to(experiment_page)),
        )
        .service(
            super::resource("/assets/{name}")
                .wrap(Compress::default())
                .route(web::get().to(serve_asset)),
        );
}

/// `GET /experiments` and `GET /experiments/{id}`: the experiments, or one experiment's report.
pub async fn experiment_page(request: HttpRequest) -> HttpResponse {
    respond(&request, &EXPERIMENT)
}

/// `GET /`: the overview.
pub async fn overview(request: HttpRequest) -> HttpResponse {
    respond(&request, &OVERVIEW)
}

/// `GET /tasks/{id}`: the task page, whatever the id (the page asks the API and says when there is no such
/// task).
pub async fn task_page(request: HttpRequest) -> HttpResponse {
    respond(&request, &TASK)
}

/// `GET /breakpoints`: the breakpoints in force, a form to add one and a button to remove each.
pub async fn breakpoints_page(request: HttpRequest) -> HttpResponse {
    respond(&request, &BREAKPOINTS)
}

/// `GET /compare/{a}/{b}`: two runs side by side, whatever the ids (the page says when one is unknown).
pub async fn compare_page(request: HttpRequest) -> HttpResponse {
    respond(&request, &COMPARE)
}

/// `GET /assets/{name}`: one compiled-in file, or 404.
pub async fn serve_asset(
    request: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let asset = asset(&name).ok_or(ApiError::NotFound)?;
    Ok(respond(&request, asset))
}

/// The asset, or 304 when the client's `If-None-Match` already names its ETag. Every response is
/// revalidated (`no-cache`): the names carry no hash, and a revalidation on loopback costs little.
fn respond(request: &HttpRequest, asset: &Asset) -> HttpResponse {
    let etag = asset.etag();
    let fresh = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(',')
                .any(|tag| tag.trim().trim_start_matches("W/") == etag || tag.trim() == "*")
        });
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if asset.content_type == HTML {
        response
            .insert_header((
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                 img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
            ))
            .insert_header((header::REFERRER_POLICY, "no-referrer"));
    }
    if fresh {
        response.finish()
    } else {
        response.content_type(asset.content_type).body(asset.bytes)
    }
}

/// FNV-1a, 64 bits: a stable hash of an asset's bytes for its ETag (not for security).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut index = 0;
    while index < bytes.len() {
        hash ^= bytes[index] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        index += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as web_test;
    use actix_web::App;

    #[test]
    fn every_asset_has_a_distinct_name_and_etag() {
        let mut etags: Vec<String> = ASSETS.iter().map(Asset::etag).collect();
        etags.sort();
        etags.dedup();
        assert_eq!(etags.len(), ASSETS.len());
        assert!(asset("app.css").is_some());
        assert!(asset("../Cargo.toml").is_none());
    }

    #[actix_web::test]
    async fn the_debug_pages_are_served_at_their_routes() {
        let app = web_test::init_service(App::new().configure(routes)).await;
        for (uri, page) in [("/breakpoints", &BREAKPOINTS), ("/compare/a/b", &COMPARE)] {
            let response =
                web_test::call_service(&app, web_test::TestRequest::get().uri(uri).to_request())
                    .await;
            assert_eq!(response.status(), 200, "{uri}");
            let body = web_test::read_body(response).await;
            assert_eq!(body.as_ref(), page.bytes, "{uri}");
        }
    }

    #[test]
    fn every_module_the_pages_import_is_served() {
        // Each `./name.js` a script or page names must be an asset, or the page breaks in the browser.
        let texts = ASSETS
            .iter()
            .chain(PAGES.iter().copied())
            .filter_map(|asset| std::str::from_utf8(asset.bytes).ok());
        for text in texts {
            for part in text.split(['"', '\'']) {
                let Some(name) = part
                    .strip_prefix("./")
                    .or_else(|| part.strip_prefix("/assets/"))
                else {
                    continue;
                };
                if name.ends_with(".js") || name.ends_with(".css") || name.ends_with(".svg") {
                    assert!(asset(name).is_some(), "{name} is named but not served");
                }
            }
        }
    }

    #[actix_web::test]
    async fn assets_revalidate_with_their_etag() {
        let app = web_test::init_service(App::new().configure(routes)).await;
        let response = web_test::call_service(
            &app,
            web_test::TestRequest::get()
                .uri("/assets/app.css")
                .to_request(),
        )
        .await;
        assert_eq!(response.status(), 200);
        let etag = response.headers().get(header::ETAG).cloned().unwrap();
        let again = web_test::call_service(
            &app,
            web_test::TestRequest::get()
                .uri("/assets/app.css")
                .insert_header((header::IF_NONE_MATCH, etag))
                .to_request(),
        )
        .await;
        assert_eq!(again.status(), 304);
        let missing = web_test::call_service(
            &app,
            web_test::TestRequest::get()
                .uri("/assets/nope.js")
                .to_request(),
        )
        .await;
        assert_eq!(missing.status(), 404);
    }

    #[actix_web::test]
    async fn pages_are_gzipped_when_accepted() {
        let app = web_test::init_service(App::new().configure(routes)).await;
        let response = web_test::call_service(
            &app,
            web_test::TestRequest::get()
                .uri("/tasks/not-a-task")
                .insert_header((header::ACCEPT_ENCODING, "gzip"))
                .to_request(),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers().get(header::CONTENT_ENCODING).unwrap(),
            "gzip"
        );
    }
}
