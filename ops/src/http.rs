//! The few HTTP requests operations make (health URLs, API checks, a login flow, webhooks):
//! blocking ureq calls on the blocking pool, errors that never repeat the URL (a webhook URL is
//! a credential, and health URLs may carry tokens).

use std::time::Duration;

/// A response as the checks need it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// `name=value` pairs from Set-Cookie, for the next request of a login flow.
    pub cookies: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: &'static str,
    pub url: String,
    pub body: Option<(String, String)>,
    pub cookies: Vec<String>,
    pub timeout: Duration,
}

impl Request {
    pub fn get(url: &str, timeout: Duration) -> Self {
        Self {
            method: "GET",
            url: url.to_string(),
            body: None,
            cookies: Vec::new(),
            timeout,
        }
    }
}

pub async fn send(request: Request) -> Result<Response, String> {
    tokio::task::spawn_blocking(move || send_blocking(&request))
        .await
        .map_err(|e| format!("the request task failed: {e}"))?
}

fn send_blocking(request: &Request) -> Result<Response, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(request.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let cookie = request.cookies.join("; ");
    let response = match (&request.body, request.method) {
        (Some((content_type, body)), _) => {
            let mut r = agent
                .post(&request.url)
                .header("content-type", content_type);
            if !cookie.is_empty() {
                r = r.header("cookie", &cookie);
            }
            r.send(body.as_bytes())
        }
        (None, _) => {
            let mut r = agent.get(&request.url);
            if !cookie.is_empty() {
                r = r.header("cookie", &cookie);
            }
            r.call()
        }
    }
    .map_err(|e| describe_error(&e))?;
    let status = response.status().as_u16();
    let cookies = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(|v| v.trim().to_string())
        .collect();
    let body = response
        .into_body()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .unwrap_or_default();
    Ok(Response {
        status,
        body,
        cookies,
    })
}

/// What went wrong, without the URL.
pub fn describe_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::StatusCode(code) => format!("HTTP {code}"),
        ureq::Error::Io(io) => format!("connection failed ({})", io.kind()),
        ureq::Error::Timeout(_) => "no answer in time".into(),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection refused".into(),
        ureq::Error::BadUri(_) => "not a valid URL".into(),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => "TLS handshake failed".into(),
        _ => "request failed".into(),
    }
}
