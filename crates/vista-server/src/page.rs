//! The web page: plain HTML, JS and CSS compiled into the binary (no build step, no CDN).

use axum::http::header;
use axum::response::IntoResponse;

/// `GET /`.
pub fn html() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("page/index.html"))
}

/// `GET /app.js`.
pub fn js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("page/app.js"))
}

/// `GET /style.css`.
pub fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("page/style.css"))
}
