//! The store side of a run: log in to Vault / OpenBao with vaultrs, keep the
//! token alive, and write the fresh test value to KV v2. Probes with the
//! same store address and credential share one client and one token. Errors are typed and
//! map to a bounded [`Reason`]; the value is never logged.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::{Reason, Stamp};
use crate::config::{StoreAuth, StoreConfig, TokenSource};

/// Default per-request timeout when the config gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Versions kept on the canary path when `store.max_versions` is absent, so
/// each run's version does not pile up.
pub const MAX_VERSIONS: u64 = crate::config::DEFAULT_MAX_VERSIONS;

/// The request that failed, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Logging in (or reading a static token).
    Login,
    /// Looking up our own token's lease.
    LookupToken,
    /// Renewing our own token.
    RenewToken,
    /// The KV v2 write of the test value.
    Write,
    /// Setting `max_versions` on the canary path.
    SetMetadata,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Login => "store login",
            Step::LookupToken => "token lookup",
            Step::RenewToken => "token renewal",
            Step::Write => "KV v2 write",
            Step::SetMetadata => "KV v2 metadata write",
        })
    }
}

/// Why a credential could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The file could not be read.
    #[error(transparent)]
    File(#[from] std::io::Error),
    /// The variable is unset or not Unicode.
    #[error(transparent)]
    Env(#[from] std::env::VarError),
    /// The file or variable is empty (or only white space).
    #[error("empty")]
    Empty,
}

/// Why a store call failed. [`StoreError::reason`] gives the metric label.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The path is outside the configured canary prefix: the prober never
    /// writes there (the validator refuses such configs; this guards the
    /// engine itself).
    #[error("refusing to write {path:?}: outside the canary prefix {prefix:?}")]
    OutsidePrefix {
        /// The configured path.
        path: String,
        /// The configured prefix.
        prefix: String,
    },
    /// The configured address is not an http(s) URL.
    #[error("store address {address:?} is not an http(s) URL")]
    InvalidAddress {
        /// The address as configured.
        address: String,
    },
    /// The client could not be built (unreadable or invalid CA bundle).
    #[error("could not build the store client (CA bundle {ca:?}): {source}")]
    Client {
        /// The configured CA bundle.
        ca: Option<PathBuf>,
        /// The cause.
        #[source]
        source: ClientError,
    },
    /// A credential file or variable could not be read.
    #[error("could not read the store credential from {from}: {source}")]
    Credential {
        /// `file /path` or `env NAME`.
        from: String,
        /// What went wrong.
        #[source]
        source: CredentialError,
    },
    /// The request did not complete within the store timeout.
    #[error("{step} timed out after {after:?}")]
    Timeout {
        /// The failing request.
        step: Step,
        /// The timeout.
        after: Duration,
    },
    /// The store could not be reached (connection refused, TLS, DNS).
    #[error("{step}: store unreachable: {message}")]
    Unreachable {
        /// The failing request.
        step: Step,
        /// The transport error.
        message: String,
    },
    /// The store answered with an HTTP error.
    #[error("{step}: store answered HTTP {code}: {message}")]
    Status {
        /// The failing request.
        step: Step,
        /// HTTP status.
        code: u16,
        /// Vault's `errors` joined, or empty.
        message: String,
    },
    /// The store answered something we could not use.
    #[error("{step}: unexpected answer from the store: {message}")]
    BadResponse {
        /// The failing request.
        step: Step,
        /// What was wrong.
        message: String,
    },
}

impl StoreError {
    /// The bounded failure reason.
    pub fn reason(&self) -> Reason {
        match self {
            StoreError::InvalidAddress { .. }
            | StoreError::OutsidePrefix { .. }
            | StoreError::Client { .. }
            | StoreError::Credential { .. } => Reason::ProberError,
            StoreError::Status {
                step,
                code,
                message,
            } => status_reason(*step, *code, message),
            StoreError::Timeout { .. }
            | StoreError::Unreachable { .. }
            | StoreError::BadResponse { .. } => Reason::StoreError,
        }
    }

    /// True when the answer says our token is bad or lacks permission, so a
    /// fresh login may help.
    fn is_denied(&self) -> bool {
        self.reason() == Reason::AuthError
    }

    pub(crate) fn from_client(step: Step, e: ClientError) -> StoreError {
        match e {
            ClientError::APIError { code, errors } => StoreError::Status {
                step,
                code,
                message: errors.join("; "),
            },
            ClientError::RestClientError { source } => {
                // rustify wraps the transport error; find reqwest's to tell a
                // connection problem from an unusable answer.
                let text = error_chain(&source);
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&source);
                while let Some(c) = cause {
                    if c.is::<reqwest::Error>() {
                        return StoreError::Unreachable {
                            step,
                            message: text,
                        };
                    }
                    cause = c.source();
                }
                StoreError::BadResponse {
                    step,
                    message: text,
                }
            }
            other => StoreError::BadResponse {
                step,
                message: error_chain(&other),
            },
        }
    }
}

/// An error and its causes on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The reason an HTTP error status stands for.
fn status_reason(step: Step, code: u16, message: &str) -> Reason {
    let m = message.to_ascii_lowercase();
    match code {
        401 | 403 => Reason::AuthError,
        _ if m.contains("permission denied") || m.contains("invalid token") => Reason::AuthError,
        // A login refused for bad input (unknown role, bad secret id, bad JWT).
        400..=499 if step == Step::Login => Reason::AuthError,
        _ => Reason::StoreError,
    }
}

/// What a successful write produced.
#[derive(Debug, Clone)]
pub struct Written {
    /// The new KV v2 version.
    pub version: u64,
    /// The server's `created_time` of the version.
    pub created_time: Option<DateTime<Utc>>,
    /// Taken just before the write request was sent.
    pub started: Stamp,
    /// Taken when the response arrived.
    pub finished: Stamp,
}

impl Written {
    /// When the store committed the version, as well as the prober can
    /// place it: the store's `created_time`, kept within the request's
    /// round trip (`started`..`finished`), so a store clock set apart from
    /// ours moves it at most to an edge of that window; `finished` when the
    /// store gave no time. The value is in the store from then on, which is
    /// when ESO can read it: the response's way back is not the pipeline's.
    pub fn committed(&self) -> Stamp {
        let Some(created) = self.created_time else {
            return self.finished;
        };
        let wall = created.clamp(self.started.wall, self.finished.wall);
        let after = (wall - self.started.wall).to_std().unwrap_or_default();
        Stamp {
            at: (self.started.at + after).min(self.finished.at),
            wall,
        }
    }
}

/// A logged-in token and its lease.
#[derive(Debug, Clone, Copy)]
struct Lease {
    obtained: Instant,
    /// `None`: the token does not expire (or its lease is unknown).
    ttl: Option<Duration>,
    renewable: bool,
}

impl Lease {
    fn remaining(&self, now: Instant) -> Option<Duration> {
        self.ttl
            .map(|t| t.saturating_sub(now.saturating_duration_since(self.obtained)))
    }

    /// Act when less than a third of the lease is left (at least 5 s early),
    /// so a short-lived token never expires mid-run.
    fn needs_refresh(&self, now: Instant) -> bool {
        match (self.ttl, self.remaining(now)) {
            (Some(ttl), Some(left)) => left <= (ttl / 3).max(Duration::from_secs(5)),
            _ => false,
        }
    }
}

/// The logged-in client of a session and its lease.
struct Login {
    /// Replaced whole on each login, so writes use it without a lock.
    client: Option<Arc<VaultClient>>,
    lease: Option<Lease>,
    /// Counts logins, so a write denied on an old token does not log in again
    /// when another probe already did.
    epoch: u64,
}

/// One store client and token for every probe with the same address and
/// credential: one HTTP client (connection pool, TLS config) and one login
/// instead of one per probe. Logins and renewals are serialised; writes run
/// concurrently on the current client.
struct Session {
    /// The address, namespace, CA bundle, timeout and auth of the probes
    /// that share it (their paths differ).
    config: StoreConfig,
    timeout: Duration,
    login: Mutex<Login>,
}

/// Live sessions by (address, namespace, CA bundle, timeout, auth); a
/// session ends with the last probe using it.
static SESSIONS: LazyLock<StdMutex<HashMap<String, Weak<Session>>>> =
    LazyLock::new(|| StdMutex::new(HashMap::new()));

/// Which probes may share a session: the same address, namespace, CA
/// bundle, timeout and credential source (a file's or variable's content is
/// read at each login, so its rotation is seen by every probe).
fn session_key(config: &StoreConfig) -> String {
    serde_json::json!([
        config.address.trim(),
        config.namespace,
        config.ca_bundle,
        config.timeout.map(|t| t.as_nanos().to_string()),
        serde_json::to_value(&config.auth).unwrap_or_default(),
    ])
    .to_string()
}

fn shared_session(config: &StoreConfig) -> Arc<Session> {
    let key = session_key(config);
    let mut sessions = SESSIONS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = sessions.get(&key).and_then(Weak::upgrade) {
        return s;
    }
    sessions.retain(|_, s| s.strong_count() > 0);
    let session = Arc::new(Session {
        config: config.clone(),
        timeout: config.timeout.unwrap_or(DEFAULT_TIMEOUT),
        login: Mutex::new(Login {
            client: None,
            lease: None,
            epoch: 0,
        }),
    });
    sessions.insert(key, Arc::downgrade(&session));
    session
}

/// The store client of one probe: its path, on a [`Session`] shared with
/// every probe that has the same address and credential.
pub struct Store {
    config: StoreConfig,
    timeout: Duration,
    session: Arc<Session>,
    metadata_done: AtomicBool,
}

impl Store {
    /// A client for this store; nothing is contacted until the first write.
    pub fn new(config: StoreConfig) -> Store {
        let timeout = config.timeout.unwrap_or(DEFAULT_TIMEOUT);
        Store {
            session: shared_session(&config),
            config,
            timeout,
            metadata_done: AtomicBool::new(false),
        }
    }

    /// Log in or renew if needed, and cap the path's versions once. Done
    /// before the write so login time is not part of `store_write`.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        let (client, _) = self.session.ensure().await?;
        if !self.metadata_done.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.set_max_versions(&client).await {
                tracing::info!(path = %self.config.path, error = %e, "could not set max_versions on the canary path; versions will accumulate");
            }
        }
        Ok(())
    }

    /// Write `{key: value}` to the canary path. A denied write is retried
    /// once after a fresh login (the token may have been revoked).
    pub async fn write(&self, value: &str) -> Result<Written, StoreError> {
        if !self.config.path_in_prefix() {
            return Err(StoreError::OutsidePrefix {
                path: self.config.path.clone(),
                prefix: self.config.path_prefix.clone(),
            });
        }
        let (client, epoch) = self.session.ensure().await?;
        match self.write_once(&client, value).await {
            Err(e) if e.is_denied() => {
                tracing::info!(error = %e, "store write denied; logging in again and retrying once");
                let client = self.session.relogin(epoch).await?;
                self.write_once(&client, value).await
            }
            other => other,
        }
    }

    async fn write_once(&self, client: &VaultClient, value: &str) -> Result<Written, StoreError> {
        let mut data = BTreeMap::new();
        data.insert(self.config.key.as_str(), value);
        let started = Stamp::now();
        let meta = call(
            self.timeout,
            Step::Write,
            vaultrs::kv2::set(client, &self.config.mount, &self.config.path, &data),
        )
        .await?;
        let finished = Stamp::now();
        let created_time = created_time(&meta.created_time);
        Ok(Written {
            version: meta.version,
            created_time,
            started,
            finished,
        })
    }

    async fn set_max_versions(&self, client: &VaultClient) -> Result<(), StoreError> {
        let mut opts = vaultrs::api::kv2::requests::SetSecretMetadataRequest::builder();
        opts.max_versions(self.config.max_versions());
        call(
            self.timeout,
            Step::SetMetadata,
            vaultrs::kv2::set_metadata(
                client,
                &self.config.mount,
                &self.config.path,
                Some(&mut opts),
            ),
        )
        .await
    }
}

/// Run one request under the store timeout.
async fn call<T>(
    timeout: Duration,
    step: Step,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StoreError::from_client(step, e)),
        Err(_) => Err(StoreError::Timeout {
            step,
            after: timeout,
        }),
    }
}

impl Session {
    /// The current client, logged in (or renewed) first if needed, and its
    /// login epoch.
    async fn ensure(&self) -> Result<(Arc<VaultClient>, u64), StoreError> {
        let mut login = self.login.lock().await;
        let now = Instant::now();
        match (&login.client, login.lease) {
            (Some(_), Some(lease)) if lease.needs_refresh(now) => {
                if lease.renewable {
                    match self.renew(&mut login).await {
                        Ok(()) => return current(&login),
                        Err(e) => {
                            tracing::info!(error = %e, "token renewal failed; logging in again")
                        }
                    }
                }
                self.login(&mut login).await?;
            }
            (Some(_), Some(_)) => {}
            _ => self.login(&mut login).await?,
        }
        current(&login)
    }

    /// Log in again unless another probe did since `epoch`; the client to
    /// use now.
    async fn relogin(&self, epoch: u64) -> Result<Arc<VaultClient>, StoreError> {
        let mut login = self.login.lock().await;
        if login.epoch == epoch || login.client.is_none() {
            login.lease = None;
            self.login(&mut login).await?;
        }
        current(&login).map(|(c, _)| c)
    }

    async fn renew(&self, login: &mut Login) -> Result<(), StoreError> {
        let client = current(login)?.0;
        let obtained = Instant::now();
        let auth = call(self.timeout, Step::RenewToken, client.renew(None)).await?;
        let lease = Lease {
            obtained,
            ttl: ttl(auth.lease_duration),
            renewable: auth.renewable,
        };
        // A renewal capped by the token's max TTL: log in again next time.
        let capped = matches!(lease.ttl, Some(t) if t < Duration::from_secs(15));
        login.lease = Some(Lease {
            renewable: lease.renewable && !capped,
            ..lease
        });
        Ok(())
    }

    fn build_client(&self) -> Result<VaultClient, StoreError> {
        let address = self.config.address.trim();
        // vaultrs' address setter panics on a malformed URL: check first.
        match reqwest::Url::parse(address) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => {
                return Err(StoreError::InvalidAddress {
                    address: address.to_string(),
                })
            }
        }
        let mut b = VaultClientSettingsBuilder::default();
        // Every field set explicitly: the defaults read VAULT_* variables,
        // which would make the probe depend on the prober's environment.
        b.address(address)
            .token("")
            .verify(true)
            .identity(None)
            .timeout(Some(self.timeout))
            .ca_certs(
                self.config
                    .ca_bundle
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect(),
            );
        if let Some(ns) = &self.config.namespace {
            b.set_namespace(ns.clone());
        }
        let settings = b.build().map_err(|e| StoreError::InvalidAddress {
            address: format!("{address} ({e})"),
        })?;
        VaultClient::new(settings).map_err(|source| StoreError::Client {
            ca: self.config.ca_bundle.clone(),
            source,
        })
    }

    /// Log in on a new client (the old one stays usable by writes in
    /// flight) and make it the current one.
    async fn login(&self, login: &mut Login) -> Result<(), StoreError> {
        let mut client = self.build_client()?;
        let obtained = Instant::now();
        let (token, lease) = match &self.config.auth {
            StoreAuth::Token(source) => {
                let token = read_credential(source)?;
                (token, None)
            }
            StoreAuth::Kubernetes {
                role,
                mount,
                token_file,
            } => {
                let jwt = read_credential(&TokenSource::File(token_file.clone()))?;
                let auth = call(
                    self.timeout,
                    Step::Login,
                    vaultrs::auth::kubernetes::login(&client, mount, role, &jwt),
                )
                .await?;
                let lease = Lease {
                    obtained,
                    ttl: ttl(auth.lease_duration),
                    renewable: auth.renewable,
                };
                (auth.client_token, Some(lease))
            }
            StoreAuth::Approle {
                mount,
                role_id,
                secret_id,
            } => {
                let secret_id = read_credential(secret_id)?;
                let auth = call(
                    self.timeout,
                    Step::Login,
                    vaultrs::auth::approle::login(&client, mount, role_id, &secret_id),
                )
                .await?;
                let lease = Lease {
                    obtained,
                    ttl: ttl(auth.lease_duration),
                    renewable: auth.renewable,
                };
                (auth.client_token, Some(lease))
            }
        };
        client.set_token(&token);
        let lease = match lease {
            Some(l) => l,
            None => {
                // A static token: learn its lease so it is renewed (or the
                // file re-read) before it expires. A token that may not look
                // itself up is still tried; the write will tell.
                match call(self.timeout, Step::LookupToken, client.lookup()).await {
                    Ok(info) => Lease {
                        obtained,
                        ttl: ttl(info.ttl),
                        renewable: info.renewable.unwrap_or(false),
                    },
                    Err(e)
                        if e.reason() == Reason::AuthError
                            && e.to_string().contains("invalid token") =>
                    {
                        return Err(e)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "could not look up the store token's lease");
                        Lease {
                            obtained,
                            ttl: None,
                            renewable: false,
                        }
                    }
                }
            }
        };
        login.client = Some(Arc::new(client));
        login.lease = Some(lease);
        login.epoch += 1;
        Ok(())
    }
}

fn current(login: &Login) -> Result<(Arc<VaultClient>, u64), StoreError> {
    login
        .client
        .clone()
        .map(|c| (c, login.epoch))
        .ok_or_else(|| StoreError::BadResponse {
            step: Step::Write,
            message: "store client not built".into(),
        })
}

/// A KV v2 `created_time` (RFC 3339 with nanoseconds); `None` when the
/// store sent something else (the version still counts as written).
pub(crate) fn created_time(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Vault reports a lease of 0 for tokens that never expire.
pub(crate) fn ttl(seconds: u64) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// Read a credential now (files are re-read on each login so rotation works).
pub fn read_credential(source: &TokenSource) -> Result<String, StoreError> {
    let (from, raw) = match source {
        TokenSource::File(path) => (
            format!("file {}", path.display()),
            std::fs::read_to_string(path).map_err(CredentialError::from),
        ),
        TokenSource::Env(name) => (
            format!("env {name}"),
            std::env::var(name).map_err(CredentialError::from),
        ),
    };
    let raw = raw.map_err(|source| StoreError::Credential {
        from: from.clone(),
        source,
    })?;
    let value = raw.trim();
    if value.is_empty() {
        return Err(StoreError::Credential {
            from,
            source: CredentialError::Empty,
        });
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests;
