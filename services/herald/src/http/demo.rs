//! The browser demo (`examples/browser`): a live mailbox view built on the TypeScript
//! client, served at `/demo` while the demo credentials are active (the page logs in
//! as the demo alias, so it is useless, and misleading, on any other deployment).
//!
//! Both files are compiled in so the Rust build never needs npm: `herald-client.js` is
//! the committed output of `npm run build` in `clients/typescript`, whose test fails
//! when the copy is stale.

use actix_web::HttpResponse;

/// The page.
const INDEX_HTML: &str = include_str!("../../../../examples/browser/index.html");
/// The compiled client the page imports.
const CLIENT_JS: &str = include_str!("../../../../examples/browser/herald-client.js");

/// `GET /demo`: the live mailbox page.
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(INDEX_HTML)
}

/// `GET /demo/herald-client.js`: the client module the page imports.
pub async fn client() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(CLIENT_JS)
}
