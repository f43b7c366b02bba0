use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// The path of a pixelmesh image URL: `/img/<signature>/<pipeline>/<source>`.
pub fn image_url(key: &str, pipeline: &str, source: &str) -> String {
    let signed = format!("/{pipeline}/{source}");
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("/img/{signature}{signed}")
}

/// An http(s) URL as an image URL's source.
pub fn url_source(url: &str) -> String {
    format!("url/{}", URL_SAFE_NO_PAD.encode(url))
}
