//! A thin client for the OCI distribution API on reqwest: exactly the requests ocisync
//! needs (one HEAD per check, size limits enforced while reading, `Link` pagination,
//! `Retry-After`), Distribution's basic and bearer-token auth, plain HTTP or a custom CA.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};

use super::auth::Credentials;
use super::content::{DOCKER_MANIFEST_LIST_V2, DOCKER_MANIFEST_V2, INDEX_V1, MANIFEST_V1};
use super::error::{OciError, Result};
use super::reference::Repository;
use crate::digest::Digest;

/// How to reach a registry.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// PEM CA bundle trusted in addition to the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Timeout for one whole request (connect + response + body).
    pub timeout: Duration,
    pub credentials: Option<Credentials>,
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: u64,
    /// Tags asked for per page of a tag listing (`n`); the registry may send fewer.
    pub tag_page_size: usize,
    /// Largest tag listing accepted, in bytes over all its pages.
    pub max_tag_list_bytes: u64,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: false,
            ca_pem: None,
            timeout: Duration::from_secs(60),
            credentials: None,
            max_manifest_bytes: 4 * 1024 * 1024,
            tag_page_size: 1000,
            max_tag_list_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A manifest's identity as the registry reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
    pub size: Option<u64>,
}

/// A fetched manifest, verified against its digest.
#[derive(Clone, Debug)]
pub struct RawManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

#[derive(Clone)]
enum AuthState {
    Anonymous,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// A client for one registry host.
pub struct Registry {
    http: reqwest::Client,
    base: String,
    /// Where the registry's own requests go: the only place credentials and tokens are sent.
    origin: Origin,
    registry: String,
    options: RegistryOptions,
    auth: Mutex<AuthState>,
    tokens: Mutex<HashMap<String, String>>,
    /// Why credentials were kept from a token service, for the error message.
    withheld: Mutex<Option<String>>,
}

const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

impl Registry {
    /// Builds a client for `registry` (`host[:port]`).
    pub fn new(registry: &str, options: RegistryOptions) -> Result<Self> {
        crate::tls::install_crypto_provider();
        let extra_roots = match &options.ca_pem {
            Some(pem) => crate::tls::parse_pem_bundle(pem).map_err(OciError::InvalidReference)?,
            None => Vec::new(),
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("ocisync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            .read_timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .tls_backend_preconfigured(crate::tls::client_config(extra_roots))
            .build()
            .map_err(|e| OciError::RegistryUnavailable(format!("HTTP client setup failed: {e}")))?;
        let scheme = if options.insecure { "http" } else { "https" };
        let base = format!("{scheme}://{registry}");
        let origin = Origin::of(&base).ok_or_else(|| {
            OciError::InvalidReference(format!("registry {registry:?} is not a host[:port]"))
        })?;
        let initial = if options.credentials.is_some() {
            // Distribution with htpasswd and most private registries ask for basic auth;
            // sending it up front saves a 401 round trip on every check.
            AuthState::Basic
        } else {
            AuthState::Anonymous
        };
        Ok(Registry {
            http,
            base,
            origin,
            registry: registry.to_string(),
            options,
            auth: Mutex::new(initial),
            tokens: Mutex::new(HashMap::new()),
            withheld: Mutex::new(None),
        })
    }

    pub fn host(&self) -> &str {
        &self.registry
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{path}", self.base)
    }

    /// Sends a request built by `build`, answering an auth challenge once. Credentials and
    /// tokens go only to the registry's own origin: a request elsewhere (an absolute `Link`
    /// or `Location`) is sent without them, and its challenges are not answered.
    async fn send(
        &self,
        repo: &Repository,
        push: bool,
        what: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let scope = format!(
            "repository:{}:{}",
            repo.name,
            if push { "pull,push" } else { "pull" }
        );
        let (response, ours) = self.execute(build(), &scope, what).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        if !ours {
            return Err(OciError::Unauthorized(format!(
                "{what}: a host other than {} asked for credentials; none are sent there",
                self.registry
            )));
        }
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(parse_challenge);
        match challenge {
            Some(Some(AuthState::Bearer { realm, service })) => {
                self.fetch_token(&realm, service.as_deref(), &scope).await?;
                self.set_auth(AuthState::Bearer { realm, service });
            }
            Some(Some(AuthState::Basic)) if self.options.credentials.is_some() => {
                if matches!(self.current_auth(), AuthState::Basic) {
                    return Err(self.unauthorized(what));
                }
                self.set_auth(AuthState::Basic);
            }
            _ => return Err(self.unauthorized(what)),
        }
        let (response, _) = self.execute(build(), &scope, what).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized(what));
        }
        Ok(response)
    }

    /// Sends one request, with the current credentials or token only when it goes to the
    /// registry's origin; also says whether it did. (reqwest drops `Authorization` itself
    /// when a redirect leaves the origin, so a blob redirected to a CDN gets none.)
    async fn execute(
        &self,
        builder: RequestBuilder,
        scope: &str,
        what: &str,
    ) -> Result<(Response, bool)> {
        let (client, request) = builder.build_split();
        let mut request = request.map_err(|e| OciError::transport(what, &e))?;
        let ours = Origin::of(request.url().as_str()).as_ref() == Some(&self.origin);
        if ours && let Some(value) = self.authorization(scope) {
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        let response = client
            .execute(request)
            .await
            .map_err(|e| OciError::transport(what, &e))?;
        Ok((response, ours))
    }

    fn unauthorized(&self, what: &str) -> OciError {
        let withheld = self.withheld.lock().ok().and_then(|w| w.clone());
        let who = match (&self.options.credentials, withheld) {
            (Some(_), Some(why)) => format!("access was refused; {why}"),
            (Some(_), None) => "credentials were rejected".to_string(),
            (None, _) => "anonymous access was refused".to_string(),
        };
        OciError::Unauthorized(format!("{what} on {}: {who}", self.registry))
    }

    fn current_auth(&self) -> AuthState {
        self.auth
            .lock()
            .map(|a| a.clone())
            .unwrap_or(AuthState::Anonymous)
    }

    fn set_auth(&self, state: AuthState) {
        if let Ok(mut a) = self.auth.lock() {
            *a = state;
        }
    }

    /// The `Authorization` value for the registry's own requests, if any.
    fn authorization(&self, scope: &str) -> Option<HeaderValue> {
        let value = match self.current_auth() {
            AuthState::Anonymous => return None,
            AuthState::Basic => basic_authorization(self.options.credentials.as_ref()?),
            AuthState::Bearer { .. } => {
                let token = self.tokens.lock().ok()?.get(scope).cloned()?;
                format!("Bearer {token}")
            }
        };
        let mut value = HeaderValue::from_str(&value).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<()> {
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        if let Some(why) = token_realm_refusal(realm, &self.origin) {
            let host = Origin::of(realm).map(|o| o.host).unwrap_or_default();
            return Err(OciError::Unauthorized(format!(
                "{} names the token service {host:?}, which ocisync does not ask: {why}",
                self.registry
            )));
        }
        let mut request = self.http.get(realm).query(&query);
        if let Some(c) = &self.options.credentials {
            match realm_refusal(realm, &self.origin) {
                None => request = request.basic_auth(&c.username, Some(&c.password)),
                Some(why) => {
                    let note = format!(
                        "credentials were not sent to the token service at {}: {why}",
                        Origin::of(realm).map(|o| o.host).unwrap_or_default()
                    );
                    tracing::warn!(registry = %self.registry, "{note}");
                    if let Ok(mut w) = self.withheld.lock() {
                        *w = Some(note);
                    }
                }
            }
        }
        let response = request
            .send()
            .await
            .map_err(|e| OciError::transport("token request", &e))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.unauthorized("token request"));
        }
        let response = check_status(response, "token request").await?;
        let body = read_limited(response, 64 * 1024, "token response").await?;
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let parsed: Token = serde_json::from_slice(&body)
            .map_err(|_| OciError::Unauthorized("token response is not JSON".into()))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .ok_or_else(|| OciError::Unauthorized("token response holds no token".into()))?;
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(scope.to_string(), token);
        }
        Ok(())
    }

    /// Resolves a tag or digest to the manifest's digest with one HEAD request; falls back
    /// to a GET only when the HEAD gives no usable answer.
    pub async fn resolve(&self, repo: &Repository, reference: &str) -> Result<ManifestHead> {
        let url = self.url(&format!("{}/manifests/{reference}", repo.name));
        let what = format!("resolve {repo}:{reference}");
        let response = self
            .send(repo, false, &what, || {
                self.http
                    .request(Method::HEAD, &url)
                    .header(header::ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        if response.status().is_success() {
            let headers = response.headers();
            let digest =
                header_str(headers, "docker-content-digest").and_then(|d| Digest::parse(&d).ok());
            let media_type = header_str(headers, header::CONTENT_TYPE.as_str());
            let size =
                header_str(headers, header::CONTENT_LENGTH.as_str()).and_then(|s| s.parse().ok());
            if let (Some(digest), Some(media_type)) = (digest, media_type) {
                check_manifest_digest(reference, None, None, &digest)
                    .map_err(|e| mismatch(&what, e))?;
                return Ok(ManifestHead {
                    digest,
                    media_type,
                    size,
                });
            }
        } else if response.status() != StatusCode::METHOD_NOT_ALLOWED {
            check_status(response, &what).await?;
        }
        let manifest = self.fetch_manifest(repo, reference, None).await?;
        Ok(ManifestHead {
            size: Some(manifest.bytes.len() as u64),
            digest: manifest.digest,
            media_type: manifest.media_type,
        })
    }

    /// GETs a manifest, enforcing the size limit and checking its digest: against
    /// `expected` when given, against the reference when it is a digest, else against the
    /// registry's `Docker-Content-Digest` when it sends a sha256 one.
    pub async fn fetch_manifest(
        &self,
        repo: &Repository,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<RawManifest> {
        let limit = self.options.max_manifest_bytes;
        self.fetch_manifest_limited(repo, reference, expected, limit)
            .await
    }

    /// [`Registry::fetch_manifest`] with a smaller size limit (a referrers index, a
    /// signature manifest).
    pub async fn fetch_manifest_limited(
        &self,
        repo: &Repository,
        reference: &str,
        expected: Option<&Digest>,
        limit: u64,
    ) -> Result<RawManifest> {
        let url = self.url(&format!("{}/manifests/{reference}", repo.name));
        let what = format!("manifest {repo}:{reference}");
        let response = self
            .send(repo, false, &what, || {
                self.http.get(&url).header(header::ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        let response = check_status(response, &what).await?;
        let media_type =
            header_str(response.headers(), header::CONTENT_TYPE.as_str()).unwrap_or_default();
        let announced = header_str(response.headers(), "docker-content-digest")
            .filter(|d| d.starts_with("sha256:"));
        let bytes =
            read_limited(response, limit.min(self.options.max_manifest_bytes), &what).await?;
        let digest = Digest::of(&bytes);
        check_manifest_digest(reference, expected, announced.as_deref(), &digest)
            .map_err(|e| mismatch(&what, e))?;
        let media_type = effective_media_type(&media_type, &bytes);
        Ok(RawManifest {
            digest,
            media_type,
            bytes,
        })
    }

    /// The OCI 1.1 referrers of a manifest, as an image index (bounded by `limit`). `None`
    /// when the registry lacks the referrers API (it answers 404, as Distribution 2.8 does,
    /// or 400 or 405):
    /// the caller then reads the referrers tag `sha256-<hex>`.
    pub async fn referrers(
        &self,
        repo: &Repository,
        digest: &Digest,
        limit: u64,
    ) -> Result<Option<Bytes>> {
        let url = self.url(&format!("{}/referrers/{digest}", repo.name));
        let what = format!("referrers of {repo}@{digest}");
        let response = self
            .send(repo, false, &what, || {
                self.http.get(&url).header(header::ACCEPT, INDEX_MEDIA_TYPE)
            })
            .await?;
        // the spec's answer is 404; some registries without the API say 400 or 405
        let unsupported = [
            StatusCode::NOT_FOUND,
            StatusCode::BAD_REQUEST,
            StatusCode::METHOD_NOT_ALLOWED,
        ];
        if unsupported.contains(&response.status()) {
            return Ok(None);
        }
        let response = check_status(response, &what).await?;
        read_limited(response, limit, &what).await.map(Some)
    }

    /// Lists every tag, following `Link` pagination, up to `max_tags` tags and
    /// `max_tag_list_bytes` bytes over all pages.
    pub async fn list_tags(&self, repo: &Repository, max_tags: usize) -> Result<Vec<String>> {
        let mut tags = Vec::new();
        let mut next = Some(self.url(&format!(
            "{}/tags/list?n={}",
            repo.name,
            self.options.tag_page_size.max(1)
        )));
        let what = format!("tags of {repo}");
        let limit = self.options.max_tag_list_bytes;
        let mut read = 0u64;
        while let Some(url) = next.take() {
            let response = self
                .send(repo, false, &what, || self.http.get(&url))
                .await?;
            let response = check_status(response, &what).await?;
            next = next_link(response.headers(), &self.base);
            let left = limit.saturating_sub(read);
            let body = read_limited(response, left, &what)
                .await
                .map_err(|e| match e {
                    OciError::TooLarge(_) => OciError::TooLarge(format!(
                        "{what}: the listing is over the limit of {limit} bytes"
                    )),
                    other => other,
                })?;
            read = read.saturating_add(body.len() as u64);
            #[derive(serde::Deserialize)]
            struct TagList {
                tags: Option<Vec<String>>,
            }
            let page: TagList = serde_json::from_slice(&body)
                .map_err(|_| OciError::InvalidManifest(format!("{what}: tag list is not JSON")))?;
            let page = page.tags.unwrap_or_default();
            if page.is_empty() {
                break;
            }
            tags.extend(page);
            if tags.len() > max_tags {
                return Err(OciError::TooLarge(format!(
                    "{what}: more than {max_tags} tags"
                )));
            }
        }
        Ok(tags)
    }

    /// Starts a blob download; the caller streams and verifies the body.
    pub async fn blob_stream(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<impl futures_util::Stream<Item = Result<Bytes>> + use<>> {
        let url = self.url(&format!("{}/blobs/{digest}", repo.name));
        let what = format!("blob {digest}");
        let response = self
            .send(repo, false, &what, || self.http.get(&url))
            .await?;
        let response = check_status(response, &what).await?;
        Ok(response
            .bytes_stream()
            .map(move |r| r.map_err(|e| OciError::transport("blob download", &e))))
    }

    /// Reads a small blob (a config) whole, with a size limit and digest check.
    pub async fn fetch_small_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        limit: u64,
    ) -> Result<Bytes> {
        let url = self.url(&format!("{}/blobs/{digest}", repo.name));
        let what = format!("blob {digest}");
        let response = self
            .send(repo, false, &what, || self.http.get(&url))
            .await?;
        let response = check_status(response, &what).await?;
        let bytes = read_limited(response, limit, &what).await?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(OciError::DigestMismatch {
                what,
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Whether the registry already has a blob.
    pub async fn blob_exists(&self, repo: &Repository, digest: &str) -> Result<bool> {
        let url = self.url(&format!("{}/blobs/{digest}", repo.name));
        let what = format!("check blob {digest}");
        let response = self
            .send(repo, true, &what, || self.http.head(&url))
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => check_status(response, &what).await.map(|_| false),
        }
    }

    /// Uploads a blob in one request (POST then PUT), unless the registry has it.
    pub async fn push_blob(&self, repo: &Repository, digest: &str, body: Bytes) -> Result<()> {
        if self.blob_exists(repo, digest).await? {
            return Ok(());
        }
        let what = format!("upload blob {digest}");
        let start = self.url(&format!("{}/blobs/uploads/", repo.name));
        let response = self
            .send(repo, true, &what, || self.http.post(&start))
            .await?;
        let response = check_status(response, &what).await?;
        let location = header_str(response.headers(), header::LOCATION.as_str())
            .ok_or_else(|| OciError::RegistryUnavailable(format!("{what}: no upload location")))?;
        let location = absolute_url(&location, &self.base);
        let separator = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{separator}digest={digest}");
        let response = self
            .send(repo, true, &what, || {
                self.http
                    .put(&put_url)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(body.clone())
            })
            .await?;
        check_status(response, &what).await.map(|_| ())
    }

    /// Uploads a manifest under a tag or digest.
    pub async fn push_manifest(
        &self,
        repo: &Repository,
        reference: &str,
        media_type: &str,
        body: Bytes,
    ) -> Result<()> {
        let url = self.url(&format!("{}/manifests/{reference}", repo.name));
        let what = format!("upload manifest {repo}:{reference}");
        let response = self
            .send(repo, true, &what, || {
                self.http
                    .put(&url)
                    .header(header::CONTENT_TYPE, media_type)
                    .body(body.clone())
            })
            .await?;
        check_status(response, &what).await.map(|_| ())
    }
}

/// Parses `WWW-Authenticate`: `Basic realm=...` or `Bearer realm="...",service="..."`.
fn parse_challenge(value: &str) -> Option<AuthState> {
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(AuthState::Basic),
        "bearer" => {
            let mut realm = None;
            let mut service = None;
            for part in split_params(params) {
                if let Some((k, v)) = part.split_once('=') {
                    let v = v.trim().trim_matches('"').to_string();
                    match k.trim().to_ascii_lowercase().as_str() {
                        "realm" => realm = Some(v),
                        "service" => service = Some(v),
                        _ => {}
                    }
                }
            }
            realm.map(|realm| AuthState::Bearer { realm, service })
        }
        _ => None,
    }
}

/// Splits `a="x,y",b=z` on commas outside quotes.
fn split_params(params: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, c) in params.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                out.push(&params[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&params[start..]);
    out
}

/// The `rel="next"` target of a `Link` header, made absolute.
fn next_link(headers: &HeaderMap, base: &str) -> Option<String> {
    let link = headers.get(header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            absolute_url(
                target.trim().trim_start_matches('<').trim_end_matches('>'),
                base,
            )
        })
    })
}

fn absolute_url(location: &str, base: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        format!("{base}{location}")
    }
}

/// Scheme, host and port of a URL: where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn of(url: &str) -> Option<Origin> {
        let url = reqwest::Url::parse(url).ok()?;
        Some(Origin {
            scheme: url.scheme().to_string(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }
}

/// Token services known to belong to a registry on another host: (registry host, realm
/// host). Docker Hub's registry hands out tokens from `auth.docker.io`, GitLab.com's from
/// `gitlab.com`.
const TRUSTED_REALMS: &[(&str, &str)] = &[
    ("docker.io", "auth.docker.io"),
    ("index.docker.io", "auth.docker.io"),
    ("registry-1.docker.io", "auth.docker.io"),
    ("registry.gitlab.com", "gitlab.com"),
];

/// Why no token may be asked of `realm` at all, or `None` when it may: a registry could
/// otherwise name any internal address as its token service and have ocisync fetch it and
/// forward what it answers. Allowed: the registry's own host (any port) over https or the
/// registry's own scheme, and the token services listed in [`TRUSTED_REALMS`] over https.
fn token_realm_refusal(realm: &str, registry: &Origin) -> Option<&'static str> {
    let Some(realm) = Origin::of(realm) else {
        return Some("its address is not an absolute URL");
    };
    let scheme_ok = realm.scheme == "https" || realm.scheme == registry.scheme;
    let same_host = realm.host == registry.host && scheme_ok;
    if same_host || trusted_realm(&realm, registry) {
        None
    } else {
        Some("it is not on the registry's host")
    }
}

/// Whether `realm` is a token service listed for the registry in [`TRUSTED_REALMS`].
fn trusted_realm(realm: &Origin, registry: &Origin) -> bool {
    realm.scheme == "https"
        && realm.port == 443
        && TRUSTED_REALMS
            .iter()
            .any(|(r, t)| *r == registry.host && *t == realm.host)
}

/// Why the registry's Basic credentials must not go to the token `realm`, or `None` when
/// they may: only over https, and only to the registry's own host and port or a token
/// service listed in [`TRUSTED_REALMS`].
fn realm_refusal(realm: &str, registry: &Origin) -> Option<&'static str> {
    let Some(realm) = Origin::of(realm) else {
        return Some("its address is not a URL");
    };
    if realm.scheme != "https" {
        return Some("it is not reached over https");
    }
    let same_host = realm.host == registry.host && realm.port == registry.port;
    if same_host || trusted_realm(&realm, registry) {
        None
    } else {
        Some("it is not on the registry's host")
    }
}

/// The `Basic` value of an `Authorization` header.
fn basic_authorization(c: &Credentials) -> String {
    use base64::Engine;
    let pair = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A digest a manifest should have and the one it has.
#[derive(Debug, PartialEq, Eq)]
struct Mismatch {
    expected: String,
    actual: String,
}

fn mismatch(what: &str, m: Mismatch) -> OciError {
    OciError::DigestMismatch {
        what: what.to_string(),
        expected: m.expected,
        actual: m.actual,
    }
}

/// Checks the digest `actual` of a manifest (computed over the bytes received, or the
/// registry's answer to a HEAD) against every claim: the digest the caller `expected`, the
/// `reference` when it is a digest (a pin is a promise), and the registry's
/// `Docker-Content-Digest` (`announced`, sha256 only).
fn check_manifest_digest(
    reference: &str,
    expected: Option<&Digest>,
    announced: Option<&str>,
    actual: &Digest,
) -> Result<(), Mismatch> {
    let pinned = reference.starts_with("sha256:").then_some(reference);
    let expected = expected.map(Digest::as_str);
    for want in [expected, pinned, announced].into_iter().flatten() {
        if want != actual.as_str() {
            return Err(Mismatch {
                expected: want.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    Ok(())
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// `sha256:<hex>` of a byte slice, as text: [`Digest::of`] for the integration tests and
/// tools that build manifests by hand.
pub fn sha256_digest(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

/// The manifest's media type: the header's when it names a manifest type, else the
/// `mediaType` field of the body. Public for the fuzz targets in `fuzz/`.
#[doc(hidden)]
pub fn effective_media_type(header: &str, body: &[u8]) -> String {
    let known = [
        MANIFEST_V1,
        INDEX_V1,
        DOCKER_MANIFEST_V2,
        DOCKER_MANIFEST_LIST_V2,
    ];
    let header = header.split(';').next().unwrap_or("").trim();
    if known.contains(&header) {
        return header.to_string();
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(body) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) => m,
        Ok(Probe {
            manifests: Some(_), ..
        }) => INDEX_V1.to_string(),
        _ => MANIFEST_V1.to_string(),
    }
}

/// Maps an HTTP status to a typed error; success passes the response through.
async fn check_status(response: Response, what: &str) -> Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = header_str(response.headers(), header::RETRY_AFTER.as_str())
        .and_then(|v| parse_retry_after(&v, jiff::Timestamp::now()));
    let code = registry_error_code(response).await;
    let detail = match code {
        Some(c) => format!("{what}: HTTP {} ({c})", status.as_u16()),
        None => format!("{what}: HTTP {}", status.as_u16()),
    };
    Err(match status {
        StatusCode::NOT_FOUND => OciError::NotFound(detail),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => OciError::Unauthorized(detail),
        StatusCode::TOO_MANY_REQUESTS => OciError::RateLimited { retry_after },
        StatusCode::PAYLOAD_TOO_LARGE => OciError::TooLarge(detail),
        // a 503 (or any 5xx) may say when to come back, as a 429 does (RFC 9110, 10.2.3)
        s if s.is_server_error() => match retry_after {
            Some(retry_after) => OciError::UnavailableFor {
                detail,
                retry_after: retry_after.min(UNAVAILABLE_RETRY_AFTER_MAX),
            },
            None => OciError::RegistryUnavailable(detail),
        },
        _ => OciError::RegistryUnavailable(detail),
    })
}

/// The longest wait a registry's `Retry-After` gets: a longer one (or a date further
/// ahead) counts as this much, so that a broken or hostile registry cannot park a source
/// for years.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// The longest wait a `Retry-After` on a 5xx gets: the transient backoff's own cap. A 5xx
/// may come from a proxy or CDN in front of the registry, not the registry's own rate
/// policy, and should not hold a source back longer than an outage without the header does.
pub const UNAVAILABLE_RETRY_AFTER_MAX: Duration = crate::backoff::TRANSIENT.max;

/// A `Retry-After` value, delay-seconds or an HTTP-date (RFC 9110, 10.2.3), as a wait from
/// `now`, capped at [`RETRY_AFTER_MAX`]; a date already past is no wait.
fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let parser = jiff::fmt::rfc2822::DateTimeParser::new();
            let at = parser.parse_timestamp(value).ok()?;
            Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(RETRY_AFTER_MAX))
}

/// The first `errors[].code` of a distribution error body, if any (bounded read).
async fn registry_error_code(response: Response) -> Option<String> {
    let body = read_limited(response, 16 * 1024, "error body").await.ok()?;
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        code: String,
    }
    let parsed: Errors = serde_json::from_slice(&body).ok()?;
    parsed.errors.into_iter().next().map(|e| {
        e.code
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect()
    })
}

/// Reads a whole response body, failing as soon as it passes `limit` bytes.
async fn read_limited(response: Response, limit: u64, what: &str) -> Result<Bytes> {
    if let Some(len) = response.content_length()
        && len > limit
    {
        return Err(OciError::TooLarge(format!(
            "{what}: {len} bytes, limit {limit}"
        )));
    }
    let mut stream = response.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| OciError::transport(what, &e))?;
        let total = (buf.len() as u64).checked_add(chunk.len() as u64);
        if total.is_none_or(|t| t > limit) {
            return Err(OciError::TooLarge(format!(
                "{what}: over the limit of {limit} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date_and_never_years() {
        let now: jiff::Timestamp = "2026-12-02T21:00:00Z".parse().unwrap();
        let at = |v| parse_retry_after(v, now);
        assert_eq!(at("8"), Some(Duration::from_secs(8)));
        assert_eq!(at(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            at("Wed, 02 Dec 2026 21:00:30 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(at("Wed, 02 Dec 2026 20:00:00 GMT"), Some(Duration::ZERO));
        for far in [
            "18446744073709551615",
            "99999999",
            "Tue, 01 Jan 2999 00:00:00 GMT",
        ] {
            assert_eq!(at(far), Some(RETRY_AFTER_MAX), "{far}");
        }
        for junk in ["", "-5", "soon", "1.5"] {
            assert_eq!(at(junk), None, "{junk:?}");
        }
    }

    #[tokio::test]
    async fn a_retry_after_on_a_5xx_waits_no_longer_than_the_transient_backoff() {
        let answer = |status: u16| {
            let r = http::Response::builder()
                .status(status)
                .header("retry-after", "99999")
                .body(Vec::<u8>::new())
                .expect("response");
            reqwest::Response::from(r)
        };
        let e = check_status(answer(503), "manifest")
            .await
            .expect_err("an error");
        assert_eq!(e.retry_after(), Some(crate::backoff::TRANSIENT.max), "{e}");
        assert_eq!(
            e.reason(),
            crate::api::reason::SourceReason::RegistryUnavailable
        );
        let e = check_status(answer(429), "manifest")
            .await
            .expect_err("an error");
        assert_eq!(
            e.retry_after(),
            Some(RETRY_AFTER_MAX),
            "a 429 is the registry's own policy"
        );
    }

    #[test]
    fn parses_challenges() {
        match parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull,push""#,
        ) {
            Some(AuthState::Bearer { realm, service }) => {
                assert_eq!(realm, "https://auth.example/token");
                assert_eq!(service.as_deref(), Some("registry.example"));
            }
            _ => panic!("expected bearer"),
        }
        assert!(matches!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(AuthState::Basic)
        ));
        assert!(parse_challenge("Negotiate").is_none());
        assert!(parse_challenge("Bearer service=x").is_none());
    }

    #[test]
    fn follows_link_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static(r#"</v2/a/tags/list?last=b&n=2>; rel="next""#),
        );
        assert_eq!(
            next_link(&h, "http://r:5000").as_deref(),
            Some("http://r:5000/v2/a/tags/list?last=b&n=2")
        );
        assert_eq!(next_link(&HeaderMap::new(), "http://r"), None);
    }

    #[test]
    fn media_type_from_header_or_body() {
        assert_eq!(effective_media_type(MANIFEST_V1, b"{}"), MANIFEST_V1);
        assert_eq!(
            effective_media_type("application/json", br#"{"manifests":[]}"#),
            INDEX_V1
        );
        assert_eq!(effective_media_type("", br#"{"mediaType":"x"}"#), "x");
    }

    fn origin(url: &str) -> Origin {
        Origin::of(url).expect("origin")
    }

    #[test]
    fn credentials_go_to_a_token_realm_only_over_https_on_the_registry_host() {
        let registry = origin("https://registry.example");
        assert_eq!(
            realm_refusal("https://registry.example/token", &registry),
            None
        );
        assert_eq!(
            realm_refusal("https://REGISTRY.example:443/v2/auth", &registry),
            None,
            "host names compare without case, the default port is the port"
        );
        assert_eq!(
            realm_refusal("http://registry.example/token", &registry),
            Some("it is not reached over https")
        );
        for other in [
            "https://auth.evil.example/token",
            "https://registry.example:8443/token",
            "https://registry.example.evil.example/token",
            "https://evil.example/registry.example/token",
        ] {
            assert_eq!(
                realm_refusal(other, &registry),
                Some("it is not on the registry's host"),
                "{other}"
            );
        }
        assert_eq!(
            realm_refusal("/token", &registry),
            Some("its address is not a URL")
        );
        // a plain-HTTP registry's realm is never trusted with credentials
        let plain = origin("http://127.0.0.1:5000");
        assert!(realm_refusal("http://127.0.0.1:5000/token", &plain).is_some());
        // Docker Hub's documented token service
        let hub = origin("https://registry-1.docker.io");
        assert_eq!(realm_refusal("https://auth.docker.io/token", &hub), None);
        assert!(realm_refusal("http://auth.docker.io/token", &hub).is_some());
        assert!(
            realm_refusal("https://auth.docker.io/token", &registry).is_some(),
            "trusted for Docker Hub only"
        );
        let gitlab = origin("https://registry.gitlab.com");
        assert_eq!(realm_refusal("https://gitlab.com/jwt/auth", &gitlab), None);
        assert!(realm_refusal("https://gitlab.com:8443/jwt/auth", &gitlab).is_some());
    }

    #[test]
    fn a_token_is_asked_only_of_the_registry_host_or_a_listed_token_service() {
        let registry = origin("https://registry.example");
        for allowed in [
            "https://registry.example/token",
            "https://registry.example:5001/auth", // a token server on another port
        ] {
            assert_eq!(token_realm_refusal(allowed, &registry), None, "{allowed}");
        }
        for refused in [
            "http://registry.example/token", // no downgrade from https
            "https://169.254.169.254/latest/meta-data",
            "http://10.0.0.1:8080/internal-token",
            "https://kubernetes.default.svc/api",
            "https://registry.example.evil.example/token",
            "/token",
        ] {
            assert!(
                token_realm_refusal(refused, &registry).is_some(),
                "{refused}"
            );
        }
        // a plain-HTTP registry may keep its token service on plain HTTP, on its own host
        let plain = origin("http://127.0.0.1:5000");
        assert_eq!(token_realm_refusal("http://127.0.0.1:5001/t", &plain), None);
        assert!(token_realm_refusal("http://127.0.0.2:5000/t", &plain).is_some());
        assert!(token_realm_refusal("http://localhost:5000/t", &plain).is_some());
        let hub = origin("https://registry-1.docker.io");
        assert_eq!(
            token_realm_refusal("https://auth.docker.io/token", &hub),
            None
        );
        assert!(token_realm_refusal("http://auth.docker.io/token", &hub).is_some());
        let gitlab = origin("https://registry.gitlab.com");
        assert_eq!(
            token_realm_refusal("https://gitlab.com/jwt/auth", &gitlab),
            None
        );
        assert!(token_realm_refusal("https://gitlab.com/jwt/auth", &registry).is_some());
    }

    #[test]
    fn links_and_locations_elsewhere_are_not_the_registry_origin() {
        let registry = origin("https://r.example:5000");
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static(r#"<https://cdn.example/v2/a/tags/list?last=b>; rel="next""#),
        );
        let next = next_link(&h, "https://r.example:5000").expect("link");
        assert_ne!(Origin::of(&next).as_ref(), Some(&registry));
        let relative = absolute_url("/v2/a/blobs/uploads/1", "https://r.example:5000");
        assert_eq!(Origin::of(&relative).as_ref(), Some(&registry));
        for elsewhere in [
            "http://r.example:5000/v2/",
            "https://r.example/v2/",
            "https://r.example:5000.evil/v2/",
            "https://user@evil.example/v2/",
        ] {
            assert_ne!(
                Origin::of(elsewhere).as_ref(),
                Some(&registry),
                "{elsewhere}"
            );
        }
    }

    #[test]
    fn a_manifest_digest_must_match_every_claim() {
        let (da, db) = (Digest::of(b"a"), Digest::of(b"b"));
        let (a, b) = (da.to_string(), db.to_string());
        // the bytes hash to the pin: fine, with or without a (matching) header
        assert_eq!(check_manifest_digest(&a, None, None, &da), Ok(()));
        assert_eq!(check_manifest_digest(&a, Some(&da), Some(&a), &da), Ok(()));
        assert_eq!(check_manifest_digest("1.0", None, None, &db), Ok(()));
        // a pin answered with another manifest, even one whose header matches its body
        let e = check_manifest_digest(&a, None, Some(&b), &db).expect_err("pin");
        assert_eq!(
            (e.expected.as_str(), e.actual.as_str()),
            (a.as_str(), b.as_str())
        );
        // the caller's expectation
        assert!(check_manifest_digest("1.0", Some(&da), None, &db).is_err());
        // a header that disagrees with the body
        assert!(check_manifest_digest("1.0", None, Some(&a), &db).is_err());
        assert!(check_manifest_digest(&b, Some(&db), Some(&a), &db).is_err());
    }

    #[test]
    fn basic_authorization_encodes_the_pair() {
        let c = Credentials {
            username: "u".into(),
            password: "p:w".into(),
        };
        assert_eq!(basic_authorization(&c), "Basic dTpwOnc=");
    }
}
