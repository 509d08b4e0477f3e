//! A thin etcd v3 client over tonic, with what fleet mode needs and nothing more: a prefix read
//! with its revision, a watch from a revision that reports compaction, create-if-absent and
//! compare-mod-revision transactions, leases with keep-alive, and member status.
//!
//! Endpoints are tried in turn: a call goes to the endpoint that answered last, and an endpoint
//! that cannot be reached (or has no leader) hands the call to the next one, so a dead member of
//! a 3-node cluster costs one failed connection, not an error. Every unary call is bounded by
//! `dial_timeout`; an etcd that cannot be reached at all is an error with
//! [`EtcdError::is_unavailable`] true, which callers turn into `cluster_unavailable`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::proto::etcdserverpb as pb;
use super::proto::mvccpb;
use crate::config::EtcdConfig;
use pb::auth_client::AuthClient;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use pb::watch_client::WatchClient;

pub use mvccpb::KeyValue;

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd endpoint {endpoint}: {source}")]
    Config {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("etcd: {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("the watch ended")]
    WatchEnded,
    /// No endpoint answered; the last one's failure.
    #[error("etcd at {endpoint}: {error}{hint}")]
    Unreachable {
        endpoint: String,
        error: Box<EtcdError>,
        /// What to check, when the configuration suggests a cause.
        hint: &'static str,
    },
}

impl EtcdError {
    /// etcd cannot be reached (or has no leader) right now: worth trying again later, and what a
    /// management write reports as `cluster_unavailable`.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::WatchEnded | Self::Unreachable { .. } => true,
            Self::Status(s) => matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::Aborted
                    | tonic::Code::Internal
            ),
            Self::Config { .. } | Self::File { .. } => false,
        }
    }
}

/// A client of one etcd cluster. Cloning shares the connections.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    channels: Vec<(String, Channel)>,
    /// The endpoint that answered last.
    current: AtomicUsize,
    timeout: Duration,
    user: Option<(String, String)>,
    /// The auth token of `user`, when etcd auth is on.
    token: tokio::sync::RwLock<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>>,
    /// Added to a connection failure's message (see [`EtcdError::Unreachable`]).
    hint: &'static str,
}

/// The outcome of a conditional write.
#[derive(Debug)]
pub enum Txn {
    /// Committed at this revision.
    Committed(i64),
    /// The condition failed; the key's current value (`None`: it does not exist) and the
    /// store's revision.
    Conflict {
        current: Option<KeyValue>,
        revision: i64,
    },
}

/// What a watch reports.
#[derive(Debug)]
pub enum WatchEvent {
    /// Changes, in revision order; `revision` is the store's revision at this response.
    Changes { revision: i64, events: Vec<Change> },
    /// The start revision was compacted away: read everything again.
    Compacted(i64),
}

/// One change to one key.
#[derive(Debug)]
pub enum Change {
    Put(KeyValue),
    Delete { key: Vec<u8>, mod_revision: i64 },
}

/// Member status (`GET /cluster`, `cluster status`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberStatus {
    pub endpoint: String,
    pub healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// etcd refused the token a call carried, not the call: a new login may succeed
/// (`ErrInvalidAuthToken`, `ErrAuthOldRevision`; etcd's Go client logs in again on both).
fn login_expired(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unauthenticated
        || status.message().contains("revision of auth store is old")
}

/// The key just past every key starting with `prefix` (etcd's `range_end` for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Client {
    /// A client of `config`'s endpoints. Connects lazily: building it never fails because etcd
    /// is down (a bad certificate file or URL does).
    pub fn new(config: &EtcdConfig) -> Result<Self, EtcdError> {
        let tls = if config.tls() {
            let mut tls = ClientTlsConfig::new();
            tls = match &config.ca {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &config.identity {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            Some(tls)
        } else {
            None
        };
        let mut channels = Vec::with_capacity(config.endpoints.len());
        for uri in &config.endpoints {
            let text = uri.to_string();
            let config_err = |source| EtcdError::Config {
                endpoint: text.clone(),
                source,
            };
            let mut endpoint = Endpoint::from(uri.clone())
                .connect_timeout(config.dial_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(config.dial_timeout.max(Duration::from_secs(1)))
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                endpoint = endpoint.tls_config(tls.clone()).map_err(config_err)?;
            }
            channels.push((text, endpoint.connect_lazy()));
        }
        let user = match &config.user {
            Some((name, path)) => {
                let password = String::from_utf8(read(path)?).map_err(|e| EtcdError::File {
                    path: path.display().to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                })?;
                Some((
                    name.clone(),
                    password.trim_end_matches(['\r', '\n']).to_owned(),
                ))
            }
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                channels,
                current: AtomicUsize::new(0),
                timeout: config.dial_timeout,
                user,
                token: tokio::sync::RwLock::new(None),
                hint: if config.tls() && config.identity.is_none() {
                    // An etcd run with --client-cert-auth closes such connections unexplained.
                    " (no client certificate is configured: if etcd requires one, set [cluster] cert and key)"
                } else {
                    ""
                },
            }),
        })
    }

    /// A request carrying the auth token, if any.
    async fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = self.inner.token.read().await.as_ref() {
            request.metadata_mut().insert("token", token.clone());
        }
        request
    }

    /// Runs `call` against the endpoints in turn, starting with the one that answered last,
    /// each bounded by the dial timeout. When etcd no longer accepts the auth token (it expired
    /// after `--auth-token-ttl` without use, auth was re-enabled, the user's password changed),
    /// logs in again once and repeats the call, as etcd's own Go client does.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        match self.call_once(&call).await {
            Err(EtcdError::Status(status))
                if self.inner.user.is_some() && login_expired(&status) =>
            {
                tracing::debug!(error = %status.message(), "etcd refused the auth token; logging in again");
                self.authenticate().await?;
                self.call_once(&call).await
            }
            other => other,
        }
    }

    async fn call_once<T, F, Fut>(&self, call: &F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.inner.channels.len();
        let start = self.inner.current.load(Ordering::Relaxed);
        let mut last = EtcdError::Timeout(self.inner.timeout);
        for attempt in 0..n {
            let i = (start + attempt) % n;
            let channel = self.inner.channels[i].1.clone();
            match tokio::time::timeout(self.inner.timeout, call(channel)).await {
                Ok(Ok(v)) => {
                    self.inner.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(status)) => {
                    let e = EtcdError::from(status);
                    if !e.is_unavailable() {
                        return Err(e);
                    }
                    last = self.unreachable(i, e, self.inner.hint);
                }
                Err(_) => last = self.unreachable(i, EtcdError::Timeout(self.inner.timeout), ""),
            }
        }
        Err(last)
    }

    /// `error` from the endpoint at `i`, named.
    fn unreachable(&self, i: usize, error: EtcdError, hint: &'static str) -> EtcdError {
        EtcdError::Unreachable {
            endpoint: self.inner.channels[i].0.clone(),
            error: Box::new(error),
            hint,
        }
    }

    /// Logs in with `[cluster] username` / `password_file` (no-op without them). The token is
    /// sent with every later call; the sync loop logs in again whenever it reconnects.
    pub async fn authenticate(&self) -> Result<(), EtcdError> {
        let Some((name, password)) = self.inner.user.clone() else {
            return Ok(());
        };
        let mut last = EtcdError::Timeout(self.inner.timeout);
        let mut answer = None;
        for (i, (_, ch)) in self.inner.channels.iter().enumerate() {
            let request = pb::AuthenticateRequest {
                name: name.clone(),
                password: password.clone(),
            };
            let mut client = AuthClient::new(ch.clone());
            let call = client.authenticate(request);
            match tokio::time::timeout(self.inner.timeout, call).await {
                Ok(Ok(r)) => {
                    answer = Some(r);
                    break;
                }
                Ok(Err(status)) => {
                    let e = EtcdError::from(status);
                    last = if e.is_unavailable() {
                        self.unreachable(i, e, self.inner.hint)
                    } else {
                        e
                    };
                }
                Err(_) => last = self.unreachable(i, EtcdError::Timeout(self.inner.timeout), ""),
            }
        }
        let response = answer.ok_or(last)?;
        let token = response
            .into_inner()
            .token
            .parse()
            .map_err(|_| tonic::Status::unauthenticated("etcd returned an unusable token"))?;
        *self.inner.token.write().await = Some(token);
        Ok(())
    }

    /// Every key under `prefix`, and the store's revision they were read at.
    pub async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let range = pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        };
        let r = self.range(range).await?;
        Ok((r.kvs, r.header.map_or(0, |h| h.revision)))
    }

    /// The last `limit` keys under `prefix` in key order, newest (greatest key) first.
    pub async fn get_prefix_last(
        &self,
        prefix: &str,
        limit: i64,
    ) -> Result<Vec<KeyValue>, EtcdError> {
        let range = pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            limit,
            sort_order: pb::range_request::SortOrder::Descend.into(),
            sort_target: pb::range_request::SortTarget::Key.into(),
            ..Default::default()
        };
        Ok(self.range(range).await?.kvs)
    }

    /// One key (`None`: absent), and the store's revision.
    pub async fn get(&self, key: &str) -> Result<(Option<KeyValue>, i64), EtcdError> {
        let range = pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let r = self.range(range).await?;
        Ok((r.kvs.into_iter().next(), r.header.map_or(0, |h| h.revision)))
    }

    async fn range(&self, range: pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        let response = self
            .call(|ch| {
                let range = range.clone();
                async move {
                    let req = self.request(range).await;
                    KvClient::new(ch).range(req).await
                }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Writes `value` under `key` only if `key` does not exist yet.
    pub async fn create(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<Txn, EtcdError> {
        self.put_if(
            key,
            value,
            lease,
            pb::compare::TargetUnion::CreateRevision(0),
        )
        .await
    }

    /// Writes every `(key, value)` in one transaction, only if none of the keys exists yet
    /// (all or nothing). `Ok(None)` when one existed.
    pub async fn create_all(
        &self,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<Option<i64>, EtcdError> {
        let txn = pb::TxnRequest {
            compare: entries
                .iter()
                .map(|(key, _)| pb::Compare {
                    result: pb::compare::CompareResult::Equal.into(),
                    target: pb::compare::CompareTarget::Create.into(),
                    key: key.as_bytes().to_vec(),
                    target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
                    ..Default::default()
                })
                .collect(),
            success: entries
                .into_iter()
                .map(|(key, value)| pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: key.into_bytes(),
                        value,
                        ..Default::default()
                    })),
                })
                .collect(),
            failure: Vec::new(),
        };
        let response = self
            .call(|ch| {
                let txn = txn.clone();
                async move {
                    let req = self.request(txn).await;
                    KvClient::new(ch).txn(req).await
                }
            })
            .await?
            .into_inner();
        Ok(response
            .succeeded
            .then(|| response.header.map_or(0, |h| h.revision)))
    }

    /// Writes `value` under `key` only if the key was last modified at `mod_revision` (0: the
    /// key does not exist).
    pub async fn compare_and_put(
        &self,
        key: &str,
        mod_revision: i64,
        value: Vec<u8>,
    ) -> Result<Txn, EtcdError> {
        self.put_if(
            key,
            value,
            0,
            pb::compare::TargetUnion::ModRevision(mod_revision),
        )
        .await
    }

    /// Deletes `key` only if it was last modified at `mod_revision`.
    pub async fn compare_and_delete(&self, key: &str, mod_revision: i64) -> Result<Txn, EtcdError> {
        let op = pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        });
        self.txn(key, pb::compare::TargetUnion::ModRevision(mod_revision), op)
            .await
    }

    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        target: pb::compare::TargetUnion,
    ) -> Result<Txn, EtcdError> {
        let op = pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease,
            ..Default::default()
        });
        self.txn(key, target, op).await
    }

    async fn txn(
        &self,
        key: &str,
        target: pb::compare::TargetUnion,
        op: pb::request_op::Request,
    ) -> Result<Txn, EtcdError> {
        let compare_target = match target {
            pb::compare::TargetUnion::CreateRevision(_) => pb::compare::CompareTarget::Create,
            _ => pb::compare::CompareTarget::Mod,
        };
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal.into(),
                target: compare_target.into(),
                key: key.as_bytes().to_vec(),
                target_union: Some(target),
                ..Default::default()
            }],
            success: vec![pb::RequestOp { request: Some(op) }],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..Default::default()
                })),
            }],
        };
        let response = self
            .call(|ch| {
                let txn = txn.clone();
                async move {
                    let req = self.request(txn).await;
                    KvClient::new(ch).txn(req).await
                }
            })
            .await?
            .into_inner();
        let revision = response.header.map_or(0, |h| h.revision);
        if response.succeeded {
            return Ok(Txn::Committed(revision));
        }
        let current = response
            .responses
            .into_iter()
            .find_map(|r| match r.response {
                Some(pb::response_op::Response::ResponseRange(range)) => {
                    range.kvs.into_iter().next()
                }
                _ => None,
            });
        Ok(Txn::Conflict { current, revision })
    }

    /// An unconditional put (registrations bound to a lease, activity entries).
    pub async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<i64, EtcdError> {
        let put = pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease,
            ..Default::default()
        };
        let response = self
            .call(|ch| {
                let put = put.clone();
                async move {
                    let req = self.request(put).await;
                    KvClient::new(ch).put(req).await
                }
            })
            .await?;
        Ok(response.into_inner().header.map_or(0, |h| h.revision))
    }

    /// Compacts the store's history up to `revision` (operators and tests; scoregate itself
    /// never compacts).
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        self.call(|ch| async move {
            let req = self
                .request(pb::CompactionRequest {
                    revision,
                    physical: true,
                })
                .await;
            KvClient::new(ch).compact(req).await
        })
        .await?;
        Ok(())
    }

    /// A lease of `ttl` seconds; returns its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let response = self
            .call(|ch| async move {
                let req = self.request(pb::LeaseGrantRequest { ttl, id: 0 }).await;
                LeaseClient::new(ch).lease_grant(req).await
            })
            .await?;
        Ok(response.into_inner().id)
    }

    /// Revokes a lease (its keys go at once).
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call(|ch| async move {
            let req = self.request(pb::LeaseRevokeRequest { id }).await;
            LeaseClient::new(ch).lease_revoke(req).await
        })
        .await?;
        Ok(())
    }

    /// Refreshes lease `id` once; `false` when it has expired.
    pub async fn keep_alive_once(&self, id: i64) -> Result<bool, EtcdError> {
        let response = self
            .call(|ch| async move {
                let req = self
                    .request(tokio_stream::once(pb::LeaseKeepAliveRequest { id }))
                    .await;
                let mut stream = LeaseClient::new(ch)
                    .lease_keep_alive(req)
                    .await?
                    .into_inner();
                stream.message().await
            })
            .await?;
        Ok(response.is_some_and(|r| r.ttl > 0))
    }

    /// The status of every endpoint (each asked directly, bounded by the dial timeout).
    pub async fn status(&self) -> Vec<MemberStatus> {
        let mut out = Vec::with_capacity(self.inner.channels.len());
        for (endpoint, channel) in &self.inner.channels {
            let call = async {
                let req = self.request(pb::StatusRequest {}).await;
                MaintenanceClient::new(channel.clone()).status(req).await
            };
            let status = match tokio::time::timeout(self.inner.timeout, call).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    let member = r.header.map_or(0, |h| h.member_id);
                    MemberStatus {
                        endpoint: endpoint.clone(),
                        healthy: r.errors.is_empty() && r.leader != 0,
                        version: Some(r.version),
                        leader: Some(r.leader == member),
                        error: r.errors.first().cloned(),
                    }
                }
                Ok(Err(e)) => MemberStatus {
                    endpoint: endpoint.clone(),
                    healthy: false,
                    version: None,
                    leader: None,
                    error: Some(EtcdError::from(e).to_string()),
                },
                Err(_) => MemberStatus {
                    endpoint: endpoint.clone(),
                    healthy: false,
                    version: None,
                    leader: None,
                    error: Some(EtcdError::Timeout(self.inner.timeout).to_string()),
                },
            };
            out.push(status);
        }
        out
    }

    /// Watches every key under `prefix` from `start_revision` on.
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, EtcdError> {
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: prefix_end(prefix.as_bytes()),
                    start_revision,
                    progress_notify: true,
                    ..Default::default()
                },
            )),
        };
        let (stream, tx) = self
            .call(|ch| {
                let create = create.clone();
                async move {
                    // A new request stream per attempt: a stream is consumed by the endpoint
                    // it was sent to.
                    let (tx, rx) = mpsc::channel(1);
                    tx.try_send(create)
                        .map_err(|_| tonic::Status::internal("watch request not queued"))?;
                    let req = self
                        .request(tokio_stream::wrappers::ReceiverStream::new(rx))
                        .await;
                    let stream = WatchClient::new(ch).watch(req).await?.into_inner();
                    Ok((stream, tx))
                }
            })
            .await?;
        Ok(Watch {
            stream,
            _requests: tx,
        })
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::File {
        path: path.display().to_string(),
        source,
    })
}

/// An open watch.
#[derive(Debug)]
pub struct Watch {
    stream: tonic::Streaming<pb::WatchResponse>,
    /// Keeps the request stream open (closing it ends the watch).
    _requests: mpsc::Sender<pb::WatchRequest>,
}

impl Watch {
    /// The next batch of changes; `Err` when the stream failed or ended.
    pub async fn next(&mut self) -> Result<WatchEvent, EtcdError> {
        loop {
            let Some(r) = self.stream.message().await? else {
                return Err(EtcdError::WatchEnded);
            };
            if r.compact_revision > 0 {
                return Ok(WatchEvent::Compacted(r.compact_revision));
            }
            if r.canceled {
                return Err(EtcdError::Status(tonic::Status::aborted(r.cancel_reason)));
            }
            if r.created && r.events.is_empty() {
                continue;
            }
            let revision = r.header.map_or(0, |h| h.revision);
            let events = r
                .events
                .into_iter()
                .filter_map(|e| {
                    let kv = e.kv?;
                    Some(match mvccpb::event::EventType::try_from(e.r#type) {
                        Ok(mvccpb::event::EventType::Delete) => Change::Delete {
                            key: kv.key,
                            mod_revision: kv.mod_revision,
                        },
                        _ => Change::Put(kv),
                    })
                })
                .collect();
            return Ok(WatchEvent::Changes { revision, events });
        }
    }
}
