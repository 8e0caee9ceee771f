//! The few OCI distribution calls verification needs, over `reqwest`,
//! with every body read bounded and every host checked.
//!
//! Why not `oci-client` (sigstore's OCI client): it reads manifest bodies
//! whole (a hostile registry streamed gigabytes into the operator within
//! the timeout), and it follows a registry's token realm to any host with
//! the pull secret's credentials. Here a manifest is read up to
//! [`MAX_MANIFEST`] bytes, a blob up to its caller's bound and checked
//! against its digest, and credentials, tokens and redirects only go to
//! the registries the operator may call.

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode, header};
use sha2::{Digest as _, Sha256};

use super::Auth;

/// Largest manifest read (cosign's signature manifests are a few KiB;
/// image indexes of many platforms stay far below).
pub const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// Largest token-endpoint answer read.
const MAX_TOKEN: usize = 64 * 1024;

/// Media types a manifest may have.
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Why a call failed, in the terms a refusal needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The registry answered: no such manifest, blob or repository.
    NotFound(String),
    /// The credentials were refused, or the registry asked for a host the
    /// operator may not call: a person must act.
    Denied(String),
    /// The registry answered something that is not what was asked for (a
    /// body over its bound, a digest that does not match).
    Invalid(String),
    /// The registry could not be reached or failed: it may come back.
    Unavailable(String),
}

/// Which hosts the operator may call, and which over plain HTTP.
#[derive(Clone, Debug, Default)]
pub struct Hosts {
    pub allowed: Vec<String>,
    pub insecure: Vec<String>,
}

impl Hosts {
    /// Whether `host` (`name[:port]`) is one the operator may call.
    pub fn allows(&self, host: &str) -> bool {
        self.allowed.iter().chain(&self.insecure).any(|h| h == host)
    }

    /// Whether `url` may be called (its scheme as the lists say).
    pub fn permit(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
        .to_ascii_lowercase();
        match url.scheme() {
            "https" => self.allows(&host),
            "http" => self.insecure.contains(&host),
            _ => false,
        }
    }

    fn scheme(&self, registry: &str) -> &'static str {
        if self.insecure.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        }
    }
}

/// A client of one registry, for one verification.
pub struct Registry {
    http: reqwest::Client,
    hosts: Hosts,
    base: String,
    auth: Auth,
    /// `Authorization` once the registry asked for one.
    authorization: Option<String>,
}

/// An HTTP client that follows redirects only to hosts the operator may
/// call, with timeouts and the extra CA certificates.
pub fn http_client(
    hosts: &Hosts,
    ca_bundle: Option<&[u8]>,
    timeout: Duration,
) -> reqwest::Result<reqwest::Client> {
    let redirects = hosts.clone();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() < 5 && redirects.permit(attempt.url()) {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }));
    if let Some(pem) = ca_bundle {
        for certificate in reqwest::Certificate::from_pem_bundle(pem)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build()
}

impl Registry {
    pub fn new(http: reqwest::Client, hosts: Hosts, registry: &str, auth: Auth) -> Self {
        let base = format!("{}://{registry}/v2", hosts.scheme(registry));
        Self {
            http,
            hosts,
            base,
            auth,
            authorization: None,
        }
    }

    /// The digest `reference` (a tag or a digest) names: the registry's
    /// `Docker-Content-Digest` header, or the digest of the body.
    pub async fn manifest_digest(
        &mut self,
        repository: &str,
        reference: &str,
    ) -> Result<String, Failure> {
        let url = format!("{}/{repository}/manifests/{reference}", self.base);
        let response = self
            .send(Method::HEAD, &url, Some(MANIFEST_TYPES), repository)
            .await?;
        let header = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let digest = match header {
            Some(digest) => digest,
            None => {
                let body = self
                    .get(&url, MANIFEST_TYPES, repository, MAX_MANIFEST)
                    .await?;
                format!("sha256:{}", hex::encode(Sha256::digest(&body)))
            }
        };
        if reference.starts_with("sha256:") && digest != reference {
            return Err(Failure::Invalid(format!(
                "the registry answered {digest} for {reference}"
            )));
        }
        Ok(digest)
    }

    /// The manifest `reference` names, up to [`MAX_MANIFEST`] bytes.
    pub async fn manifest(
        &mut self,
        repository: &str,
        reference: &str,
    ) -> Result<Vec<u8>, Failure> {
        let url = format!("{}/{repository}/manifests/{reference}", self.base);
        self.get(&url, MANIFEST_TYPES, repository, MAX_MANIFEST)
            .await
    }

    /// The blob `digest`, up to `max` bytes, checked against its digest.
    pub async fn blob(
        &mut self,
        repository: &str,
        digest: &str,
        max: usize,
    ) -> Result<Vec<u8>, Failure> {
        let url = format!("{}/{repository}/blobs/{digest}", self.base);
        let body = self.get(&url, "*/*", repository, max).await?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if actual != digest {
            return Err(Failure::Invalid(format!(
                "blob {digest} has digest {actual}"
            )));
        }
        Ok(body)
    }

    async fn get(
        &mut self,
        url: &str,
        accept: &str,
        repository: &str,
        max: usize,
    ) -> Result<Vec<u8>, Failure> {
        let response = self
            .send(Method::GET, url, Some(accept), repository)
            .await?;
        read_bounded(response, max).await
    }

    /// Sends a request; on 401, answers the registry's challenge once
    /// (Basic, or a Bearer token from a realm the operator may call).
    async fn send(
        &mut self,
        method: Method,
        url: &str,
        accept: Option<&str>,
        repository: &str,
    ) -> Result<reqwest::Response, Failure> {
        for attempt in 0..2 {
            let mut request = self.http.request(method.clone(), url);
            if let Some(accept) = accept {
                request = request.header(header::ACCEPT, accept);
            }
            if let Some(authorization) = &self.authorization {
                request = request.header(header::AUTHORIZATION, authorization);
            }
            let response = request.send().await.map_err(|e| unreachable(url, &e))?;
            match response.status() {
                status if status.is_success() => return Ok(response),
                StatusCode::UNAUTHORIZED if attempt == 0 => {
                    let challenge = response
                        .headers()
                        .get(header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    self.authorization = Some(self.answer(&challenge, repository).await?);
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(Failure::Denied(format!(
                        "{url}: {} (check the image's pullSecrets)",
                        response.status()
                    )));
                }
                StatusCode::NOT_FOUND => {
                    return Err(Failure::NotFound(format!("{url}: 404 Not Found")));
                }
                status if status.is_redirection() => {
                    return Err(Failure::Denied(format!(
                        "{url}: redirected to a host the operator may not call"
                    )));
                }
                status => {
                    return Err(Failure::Unavailable(format!("{url}: {status}")));
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// The `Authorization` header answering `challenge`.
    async fn answer(&self, challenge: &str, repository: &str) -> Result<String, Failure> {
        let basic = match &self.auth {
            Auth::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Auth::Anonymous => None,
        };
        let (scheme, params) = parse_challenge(challenge);
        match scheme.as_str() {
            "basic" => basic.ok_or_else(|| {
                Failure::Denied("the registry wants credentials: give the image pullSecrets".into())
            }),
            "bearer" => {
                let realm = params
                    .iter()
                    .find(|(k, _)| k == "realm")
                    .map(|(_, v)| v.as_str());
                let Some(Ok(mut realm)) = realm.map(reqwest::Url::parse) else {
                    return Err(Failure::Denied(format!(
                        "the registry's token challenge has no usable realm: {challenge:?}"
                    )));
                };
                if !self.hosts.permit(&realm) {
                    return Err(Failure::Denied(format!(
                        "the registry sends for tokens to {realm}, a host the operator may not call (add it to --allowed-registries)"
                    )));
                }
                {
                    let mut query = realm.query_pairs_mut();
                    if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
                        query.append_pair("service", service);
                    }
                    let scope = params
                        .iter()
                        .find(|(k, _)| k == "scope")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_else(|| format!("repository:{repository}:pull"));
                    query.append_pair("scope", &scope);
                }
                let mut request = self.http.get(realm.clone());
                if let Some(basic) = &basic {
                    request = request.header(header::AUTHORIZATION, basic);
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| unreachable(realm.as_str(), &e))?;
                match response.status() {
                    status if status.is_success() => {}
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        return Err(Failure::Denied(format!(
                            "the token service refused the credentials ({}): check the image's pullSecrets",
                            response.status()
                        )));
                    }
                    status => {
                        return Err(Failure::Unavailable(format!(
                            "the token service answered {status}"
                        )));
                    }
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body = read_bounded(response, MAX_TOKEN).await?;
                let token: Token = serde_json::from_slice(&body).map_err(|_| {
                    Failure::Invalid("the token service's answer is not JSON".into())
                })?;
                token
                    .token
                    .or(token.access_token)
                    .map(|t| format!("Bearer {t}"))
                    .ok_or_else(|| {
                        Failure::Invalid("the token service's answer has no token".into())
                    })
            }
            _ => Err(Failure::Denied(format!(
                "the registry wants an authentication this client does not speak: {challenge:?}"
            ))),
        }
    }
}

/// Reads a body up to `max` bytes; more is an error, whatever the
/// registry declared.
async fn read_bounded(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, Failure> {
    let url = response.url().to_string();
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(Failure::Invalid(format!("{url}: a body over {max} bytes")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(&url, &e))? {
        if body.len() + chunk.len() > max {
            return Err(Failure::Invalid(format!("{url}: a body over {max} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn unreachable(url: &str, error: &reqwest::Error) -> Failure {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    Failure::Unavailable(format!("{url}: {text}"))
}

/// `Bearer realm="…",service="…"` → (`bearer`, [(realm, …), (service, …)]).
pub fn parse_challenge(challenge: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = challenge
        .trim()
        .split_once(' ')
        .unwrap_or((challenge.trim(), ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((value, next)) => (value.to_owned(), next),
                None => (quoted.to_owned(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((value, next)) => (value.trim().to_owned(), next),
                None => (after.trim().to_owned(), ""),
            }
        };
        params.push((key, value));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_ascii_lowercase(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_into_scheme_and_parameters() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(
            params,
            [
                ("realm".to_owned(), "https://auth.example/token".to_owned()),
                ("service".to_owned(), "registry.example".to_owned()),
                ("scope".to_owned(), "repository:a/b:pull,push".to_owned()),
            ]
        );
        assert_eq!(parse_challenge("Basic realm=x").0, "basic");
        assert_eq!(parse_challenge("").0, "");
    }

    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A registry on loopback that answers every request with `answer`
    /// (given the request's first line), forever if it says so.
    async fn hostile(answer: fn(&str) -> Answer) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    loop {
                        let mut request = Vec::new();
                        let mut byte = [0u8; 1];
                        while !request.ends_with(b"\r\n\r\n") {
                            if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                                return;
                            }
                            request.push(byte[0]);
                        }
                        counted.fetch_add(1, Ordering::SeqCst);
                        let line = String::from_utf8_lossy(&request)
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        match answer(&line) {
                            Answer::Text(text) => {
                                if socket.write_all(text.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                            Answer::Endless => {
                                let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                                let _ = socket.write_all(head.as_bytes()).await;
                                let chunk = format!("{:x}\r\n{}\r\n", 65536, "a".repeat(65536));
                                while socket.write_all(chunk.as_bytes()).await.is_ok() {}
                                return;
                            }
                        }
                    }
                });
            }
        });
        (address, requests)
    }

    enum Answer {
        Text(String),
        Endless,
    }

    fn registry(address: &str, auth: Auth) -> Registry {
        let hosts = Hosts {
            allowed: vec![],
            insecure: vec![address.to_owned()],
        };
        let http = http_client(&hosts, None, Duration::from_secs(5)).unwrap();
        Registry::new(http, hosts, address, auth)
    }

    #[tokio::test]
    async fn an_endless_manifest_is_refused_at_its_bound() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (address, _) = hostile(|line| {
            if line.starts_with("HEAD") {
                // No digest header: the client must read the body.
                Answer::Text("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into())
            } else {
                Answer::Endless
            }
        })
        .await;
        let mut registry = registry(&address, Auth::Anonymous);
        let failure = registry.manifest_digest("a/b", "1").await.unwrap_err();
        assert!(
            matches!(&failure, Failure::Invalid(why) if why.contains("over")),
            "{failure:?}"
        );
        let failure = registry.manifest("a/b", "sha256-x.sig").await.unwrap_err();
        assert!(matches!(failure, Failure::Invalid(_)), "{failure:?}");
        // A declared length over the bound is refused before reading.
        let (address, _) = hostile(|_| {
            Answer::Text(format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                MAX_MANIFEST + 1
            ))
        })
        .await;
        let failure = self::registry(&address, Auth::Anonymous)
            .manifest("a/b", "1")
            .await
            .unwrap_err();
        assert!(matches!(failure, Failure::Invalid(_)), "{failure:?}");
    }

    #[tokio::test]
    async fn credentials_never_go_to_a_token_realm_the_operator_may_not_call() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The realm's listener counts what reaches it: nothing may.
        let realm = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let realm_address = realm.local_addr().unwrap().to_string();
        let reached = Arc::new(AtomicUsize::new(0));
        let counted = reached.clone();
        tokio::spawn(async move {
            while realm.accept().await.is_ok() {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        static REALM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        REALM.set(realm_address).unwrap();
        let (address, _) = hostile(|_| {
            Answer::Text(format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{}/token\",service=\"x\"\r\nContent-Length: 0\r\n\r\n",
                REALM.get().unwrap()
            ))
        })
        .await;
        let auth = Auth::Basic {
            username: "alice".into(),
            password: "S3cret".into(),
        };
        let failure = registry(&address, auth)
            .manifest_digest("a/b", "1")
            .await
            .unwrap_err();
        assert!(
            matches!(&failure, Failure::Denied(why) if why.contains("may not call")),
            "{failure:?}"
        );
        assert!(!format!("{failure:?}").contains("S3cret"));
        assert_eq!(reached.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_redirect_to_another_host_is_not_followed() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (address, _) = hostile(|_| {
            Answer::Text("HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.3:9/x\r\nContent-Length: 0\r\n\r\n".into())
        })
        .await;
        let failure = registry(&address, Auth::Anonymous)
            .manifest("a/b", "1")
            .await
            .unwrap_err();
        assert!(matches!(failure, Failure::Denied(_)), "{failure:?}");
    }

    #[tokio::test]
    async fn a_blob_must_match_its_digest() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (address, _) =
            hostile(|_| Answer::Text("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc".into()))
                .await;
        let digest = format!("sha256:{}", "0".repeat(64));
        let failure = registry(&address, Auth::Anonymous)
            .blob("a/b", &digest, 100)
            .await
            .unwrap_err();
        assert!(matches!(failure, Failure::Invalid(_)), "{failure:?}");
        let right = format!("sha256:{}", hex::encode(Sha256::digest(b"abc")));
        assert_eq!(
            registry(&address, Auth::Anonymous)
                .blob("a/b", &right, 100)
                .await
                .unwrap(),
            b"abc"
        );
        // Over its bound: refused.
        assert!(
            registry(&address, Auth::Anonymous)
                .blob("a/b", &right, 2)
                .await
                .is_err()
        );
    }

    #[test]
    fn only_listed_hosts_are_called_and_plain_http_only_where_listed() {
        let hosts = Hosts {
            allowed: vec!["registry.intra".into(), "auth.intra:8443".into()],
            insecure: vec!["127.0.0.1:5000".into()],
        };
        let permit = |url: &str| hosts.permit(&reqwest::Url::parse(url).unwrap());
        assert!(permit("https://registry.intra/v2/"));
        assert!(permit("https://auth.intra:8443/token"));
        assert!(permit("http://127.0.0.1:5000/v2/"));
        assert!(permit("https://127.0.0.1:5000/v2/"));
        assert!(!permit("http://registry.intra/v2/"));
        assert!(!permit("https://auth.intra/token"));
        assert!(!permit("https://127.0.0.2:5000/token"));
        assert!(!permit("ftp://registry.intra/"));
    }
}
