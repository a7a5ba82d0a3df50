//! What every HTTP-based protocol service does to a request and a reply:
//! sign in as an endpoint's `HttpAuth` says, and read a reply body no
//! larger than a limit.
use rdm_proto::rdm::api::v1::HttpAuth;

/// `req` signed in as `auth` says: basic, bearer, an API-key header
/// (X-API-Key when none is named), or nothing.
pub fn authorize(req: reqwest::RequestBuilder, auth: Option<&HttpAuth>) -> reqwest::RequestBuilder {
    let Some(a) = auth else {
        return req;
    };
    match a.r#type() {
        "basic" => req.basic_auth(a.username(), Some(a.password())),
        "bearer" => req.bearer_auth(a.token()),
        "api_key" => {
            let header = Some(a.header()).filter(|h| !h.is_empty());
            req.header(header.unwrap_or("X-API-Key"), a.key())
        }
        _ => req,
    }
}

/// A reply's body, or None when it is larger than `max` bytes (read no
/// further than that).
pub async fn body_limited(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > max {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}
