//! The S3 backend (AWS S3 or any S3-compatible store): a repository is a prefix in a bucket,
//! a key is the rest of the object name.
//!
//! Guarantees, as for the local backend:
//! - Atomic puts: S3 shows an object only once its PUT or multipart upload is complete; a
//!   failed multipart upload is aborted, so nothing partial is ever listed.
//! - [`PutMode::Create`] sends `If-None-Match: *`; the store refuses to replace an object with
//!   `412 Precondition Failed`, which becomes [`StorageError::AlreadyExists`].
//! - Durable on return: a completed PUT is durable, so [`Storage::sync`] has nothing to do.
//! - Bounded memory: objects up to `single_put_max` go in one PUT; larger ones stream as a
//!   multipart upload with at most `parallelism` parts in flight. Parts grow (doubling every
//!   1000 parts) so that the 10,000-part limit is reached only past S3's own 5 TiB limit.
//!
//! Every request goes through the one retry layer ([`crate::retry`]); the SDK's retries are off.
//! Credentials come from the standard AWS sources (or the configuration file) and are never
//! logged: [`Storage::describe`] names the bucket and prefix only.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

use crate::retry::{RetryPolicy, RetryStats};
use crate::storage::{ObjectReader, validate_key};
use crate::{Durability, ObjectMeta, PutMode, Storage, StorageError};

/// S3 refuses parts smaller than this (but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;
const MAX_PARTS: i32 = 10_000;
const MAX_PART_SIZE: usize = 5 << 30;
const DELETE_BATCH: usize = 1000;

/// Access keys from the configuration file. `Debug` never shows them.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticCredentials(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct S3Options {
    pub bucket: String,
    /// Key prefix of the repository inside the bucket ("" for the whole bucket).
    pub prefix: String,
    /// Otherwise the standard sources (AWS_REGION, the profile); `us-east-1` if none says.
    pub region: Option<String>,
    /// For S3-compatible stores; otherwise the standard sources (AWS_ENDPOINT_URL) or AWS.
    pub endpoint: Option<String>,
    /// `http://host/bucket/key` addressing, which S3-compatible servers expect.
    pub path_style: bool,
    /// Otherwise the standard credential chain (environment, profile, instance role).
    pub credentials: Option<StaticCredentials>,
    pub single_put_max: usize,
    pub part_size: usize,
    /// Parts of one multipart upload in flight at once.
    pub parallelism: usize,
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// One attempt of one request, after which it counts as a transient failure.
    pub attempt_timeout: Duration,
    /// The certificate authorities (PEM) to trust instead of the system's, as `AWS_CA_BUNDLE`
    /// means for every AWS tool: for stores with a private CA.
    pub ca_bundle: Option<Vec<u8>>,
    /// Server-side encryption asked for on every put and multipart upload (`s3-sse`).
    pub sse: Option<ServerSideEncryption>,
}

/// S3's own encryption at rest, on top of (never instead of) what lifeline does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSideEncryption {
    /// `AES256`: keys managed by S3.
    Aes256,
    /// `aws:kms`: a KMS key, the account's default one when none is named.
    Kms { key_id: Option<String> },
}

impl ServerSideEncryption {
    /// From `s3-sse` and `s3-sse-kms-key-id`, checked together.
    pub fn from_settings(
        sse: Option<&str>,
        kms_key_id: Option<&str>,
    ) -> Result<Option<ServerSideEncryption>, String> {
        match (sse, kms_key_id) {
            (None, None) => Ok(None),
            (Some("AES256"), None) => Ok(Some(ServerSideEncryption::Aes256)),
            (Some("aws:kms"), key) => Ok(Some(ServerSideEncryption::Kms {
                key_id: key.map(str::to_string),
            })),
            (Some("AES256") | None, Some(_)) => Err(
                "s3-sse-kms-key-id is set but s3-sse is not \"aws:kms\": set s3-sse = \"aws:kms\" or remove the key id".into(),
            ),
            (Some(other), _) => Err(format!(
                "s3-sse = {other:?}: use \"AES256\" or \"aws:kms\""
            )),
        }
    }
}

impl S3Options {
    /// Options for `location`: `bucket`, `bucket/prefix` or `s3://bucket/prefix`.
    pub fn for_location(location: &str) -> Result<S3Options, StorageError> {
        let rest = location.strip_prefix("s3://").unwrap_or(location);
        let (bucket, prefix) = match rest.split_once('/') {
            Some((bucket, prefix)) => (bucket, prefix.trim_end_matches('/')),
            None => (rest, ""),
        };
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !bucket_ok {
            return Err(StorageError::InvalidKey {
                key: location.to_string(),
                reason: "S3_BACKUP_BUCKET must be BUCKET, BUCKET/PREFIX or s3://BUCKET/PREFIX, \
                         with a bucket name of 3-63 lowercase letters, digits, '.' or '-'"
                    .into(),
            });
        }
        if !prefix.is_empty() {
            validate_key(prefix)?;
        }
        Ok(S3Options {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            region: None,
            endpoint: None,
            path_style: false,
            credentials: None,
            single_put_max: 32 << 20,
            part_size: 8 << 20,
            parallelism: 4,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(300),
            ca_bundle: None,
            sse: None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct S3Storage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    single_put_max: usize,
    part_size: usize,
    parallelism: usize,
    retry: RetryPolicy,
    stats: RetryStats,
    sse: Option<ServerSideEncryption>,
}

impl S3Storage {
    pub async fn open(opts: S3Options) -> Result<S3Storage, StorageError> {
        if opts.part_size < MIN_PART_SIZE || opts.single_put_max < opts.part_size {
            return Err(StorageError::Unavailable {
                path: format!("s3://{}", opts.bucket).into(),
                reason: format!(
                    "the multipart part size must be at least {} MiB and at most the single-PUT limit",
                    MIN_PART_SIZE >> 20
                ),
            });
        }
        if let Some(endpoint) = &opts.endpoint
            && endpoint.contains('@')
        {
            return Err(StorageError::Unavailable {
                path: format!("s3://{}", opts.bucket).into(),
                reason: "the endpoint URL carries credentials; give them as AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY instead"
                    .into(),
            });
        }
        let client = http_client(&opts)?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .http_client(client.clone());
        if let Some(region) = &opts.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(opts.connect_timeout)
            .operation_attempt_timeout(opts.attempt_timeout)
            .build();
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            .force_path_style(opts.path_style);
        if shared.region().is_none() {
            config = config.region(Region::from_static("us-east-1"));
        }
        if let Some(endpoint) = &opts.endpoint {
            config = config.endpoint_url(endpoint);
        }
        if let Some(keys) = &opts.credentials {
            config = config.credentials_provider(Credentials::new(
                &keys.access_key_id,
                &keys.secret_access_key,
                None,
                None,
                "lifeline-config",
            ));
        }
        config = config.http_client(client);
        Ok(S3Storage {
            inner: Arc::new(Inner {
                client: aws_sdk_s3::Client::from_conf(config.build()),
                bucket: opts.bucket,
                prefix: opts.prefix,
                single_put_max: opts.single_put_max,
                part_size: opts.part_size,
                parallelism: opts.parallelism.max(1),
                retry: opts.retry,
                stats: RetryStats::default(),
                sse: opts.sse,
            }),
        })
    }

    /// The server-side encryption the store reports for `key` (tests of `s3-sse`).
    #[cfg(feature = "conformance")]
    pub async fn reported_encryption(&self, key: &str) -> Result<Option<String>, StorageError> {
        let object = self.inner.object_key(key)?;
        let head = self
            .inner
            .client
            .head_object()
            .bucket(&self.inner.bucket)
            .key(&object)
            .send()
            .await
            .map_err(|e| classify("HEAD", key, e))?;
        Ok(head
            .server_side_encryption()
            .map(|s| s.as_str().to_string()))
    }

    /// What the retry layer has done so far.
    pub fn retry_stats(&self) -> &RetryStats {
        &self.inner.stats
    }
}

/// The request's `x-amz-server-side-encryption` and KMS key id.
fn sse_headers(
    sse: &ServerSideEncryption,
) -> (aws_sdk_s3::types::ServerSideEncryption, Option<String>) {
    match sse {
        ServerSideEncryption::Aes256 => (aws_sdk_s3::types::ServerSideEncryption::Aes256, None),
        ServerSideEncryption::Kms { key_id } => (
            aws_sdk_s3::types::ServerSideEncryption::AwsKms,
            key_id.clone(),
        ),
    }
}

impl Inner {
    fn object_key(&self, key: &str) -> Result<String, StorageError> {
        validate_key(key)?;
        Ok(self.join(key))
    }

    fn join(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    async fn put_object(&self, key: &str, body: Bytes, mode: PutMode) -> Result<(), StorageError> {
        let object = self.object_key(key)?;
        self.retry
            .run(&self.stats, "PUT", key, || {
                let mut request = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&object)
                    .body(ByteStream::from(body.clone()));
                if let Some(sse) = &self.sse {
                    let (method, key_id) = sse_headers(sse);
                    request = request
                        .server_side_encryption(method)
                        .set_ssekms_key_id(key_id);
                }
                if mode == PutMode::Create {
                    request = request.if_none_match("*");
                }
                async move {
                    request
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| classify("PUT", key, e))
                }
            })
            .await
    }

    async fn multipart(
        self: &Arc<Self>,
        key: &str,
        first: Bytes,
        rest: ObjectReader,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let object = self.object_key(key)?;
        let created = self
            .retry
            .run(&self.stats, "CREATE-MULTIPART", key, || {
                let mut request = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&object);
                if let Some(sse) = &self.sse {
                    let (method, key_id) = sse_headers(sse);
                    request = request
                        .server_side_encryption(method)
                        .set_ssekms_key_id(key_id);
                }
                async move {
                    request
                        .send()
                        .await
                        .map_err(|e| classify("CREATE-MULTIPART", key, e))
                }
            })
            .await?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(StorageError::Rejected {
                operation: "CREATE-MULTIPART",
                key: key.to_string(),
                reason: "the store returned no upload id".into(),
            });
        };
        let result = self
            .upload_parts(key, &object, &upload_id, first, rest, mode)
            .await;
        if result.is_err() {
            // Nothing partial may stay behind: an incomplete upload is invisible but billed.
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&object)
                .upload_id(&upload_id)
                .send()
                .await;
            if let Err(e) = abort {
                tracing::warn!(
                    "could not abort the multipart upload of {key} ({}); a bucket lifecycle rule \
                     for incomplete uploads will remove it",
                    DisplayErrorContext(&e)
                );
            }
        }
        result
    }

    async fn upload_parts(
        self: &Arc<Self>,
        key: &str,
        object: &str,
        upload_id: &str,
        first: Bytes,
        mut rest: ObjectReader,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let mut pending = BytesMut::from(first);
        let mut eof = false;
        let mut number: i32 = 1;
        let mut in_flight: JoinSet<Result<CompletedPart, StorageError>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut total: u64 = 0;
        loop {
            let size = part_size_for(self.part_size, number);
            if !eof && pending.len() < size {
                let want = size - pending.len();
                let more = read_up_to(&mut rest, want)
                    .await
                    .map_err(|e| StorageError::io(key, e))?;
                eof = more.len() < want;
                pending.extend_from_slice(&more);
            }
            if pending.is_empty() {
                break;
            }
            if number > MAX_PARTS {
                return Err(StorageError::Rejected {
                    operation: "UPLOAD-PART",
                    key: key.to_string(),
                    reason: "the object is larger than S3 accepts (5 TiB)".into(),
                });
            }
            let body = pending.split_to(size.min(pending.len())).freeze();
            total += body.len() as u64;
            while in_flight.len() >= self.parallelism {
                parts.push(joined(in_flight.join_next().await, key)?);
            }
            let this = Arc::clone(self);
            let (key, object, upload_id) =
                (key.to_string(), object.to_string(), upload_id.to_string());
            in_flight.spawn(async move {
                this.upload_part(&key, &object, &upload_id, number, body)
                    .await
            });
            number += 1;
            if eof && pending.is_empty() {
                break;
            }
        }
        while !in_flight.is_empty() {
            parts.push(joined(in_flight.join_next().await, key)?);
        }
        parts.sort_by_key(|p| p.part_number());
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        self.retry
            .run(&self.stats, "COMPLETE-MULTIPART", key, || {
                let mut request = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(object)
                    .upload_id(upload_id)
                    .multipart_upload(completed.clone());
                if mode == PutMode::Create {
                    request = request.if_none_match("*");
                }
                async move {
                    match request.send().await {
                        Ok(_) => Ok(()),
                        // Some S3-compatible servers answer 200 with a body the SDK cannot
                        // parse; the object itself says whether the upload completed.
                        Err(e)
                            if e.code().is_none()
                                && e.raw_response().is_some_and(|r| r.status().as_u16() == 200) =>
                        {
                            self.confirm_size(key, object, total).await
                        }
                        Err(e) => Err(classify("COMPLETE-MULTIPART", key, e)),
                    }
                }
            })
            .await
    }

    async fn confirm_size(&self, key: &str, object: &str, size: u64) -> Result<(), StorageError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
            .map_err(|e| classify("HEAD", key, e))?;
        let stored = head.content_length().and_then(|n| u64::try_from(n).ok());
        if stored == Some(size) {
            return Ok(());
        }
        Err(StorageError::Rejected {
            operation: "COMPLETE-MULTIPART",
            key: key.to_string(),
            reason: format!("the completed object holds {stored:?} bytes, not {size}"),
        })
    }

    async fn upload_part(
        &self,
        key: &str,
        object: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, StorageError> {
        let output = self
            .retry
            .run(&self.stats, "UPLOAD-PART", key, || {
                let request = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(object)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(ByteStream::from(body.clone()));
                async move {
                    request
                        .send()
                        .await
                        .map_err(|e| classify("UPLOAD-PART", key, e))
                }
            })
            .await?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(output.e_tag().map(str::to_string))
            .build())
    }
}

enum Body {
    Whole(Bytes),
    Streaming(ByteStream),
}

/// Size of part `number` (1-based): doubling every 1000 parts keeps the part count under S3's
/// limit for any object S3 accepts, while small uploads use small parts.
fn part_size_for(base: usize, number: i32) -> usize {
    let doublings = u32::try_from((number - 1) / 1000).unwrap_or(0);
    base.saturating_mul(1usize << doublings.min(16))
        .min(MAX_PART_SIZE)
}

fn joined<T>(
    joined: Option<Result<Result<T, StorageError>, tokio::task::JoinError>>,
    key: &str,
) -> Result<T, StorageError> {
    match joined {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(StorageError::io(key, std::io::Error::other(e))),
        None => Err(StorageError::io(
            key,
            std::io::Error::other("upload task vanished"),
        )),
    }
}

/// Up to `limit` bytes; fewer only at the end of the stream.
async fn read_up_to(reader: &mut ObjectReader, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(limit);
    (&mut *reader)
        .take(limit as u64)
        .read_to_end(&mut buf)
        .await?;
    Ok(buf)
}

/// Sort an SDK failure into what callers branch on: absent, taken, worth retrying, refused.
fn classify<E>(operation: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let transient = |reason: String| StorageError::Transient {
        operation,
        key: key.to_string(),
        reason,
    };
    match &err {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            transient(DisplayErrorContext(&err).to_string())
        }
        SdkError::DispatchFailure(failure) if !failure.is_user() => {
            let reason = DisplayErrorContext(&err).to_string();
            // The connector reports a refused certificate as I/O; no retry makes it trusted.
            if reason.contains("certificate") {
                return StorageError::Rejected {
                    operation,
                    key: key.to_string(),
                    reason: format!(
                        "{reason}; if the store uses a private certificate authority, point \
                         AWS_CA_BUNDLE (or s3-ca-file) at its PEM certificate"
                    ),
                };
            }
            transient(reason)
        }
        SdkError::ServiceError(_) => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            let message = match err.message() {
                Some(message) => message.to_string(),
                None => DisplayErrorContext(&err).to_string(),
            };
            classify_service(operation, key, status, err.code(), &message)
        }
        _ => StorageError::Rejected {
            operation,
            key: key.to_string(),
            reason: with_hint(DisplayErrorContext(&err).to_string()),
        },
    }
}

fn classify_service(
    operation: &'static str,
    key: &str,
    status: Option<u16>,
    code: Option<&str>,
    message: &str,
) -> StorageError {
    let key = key.to_string();
    let reason = format!(
        "HTTP {} {}{}{message}",
        status.map_or_else(|| "?".to_string(), |s| s.to_string()),
        code.unwrap_or("(no error code)"),
        if message.is_empty() { "" } else { ": " },
    );
    match (status, code) {
        (_, Some("NoSuchBucket")) => StorageError::Rejected {
            operation,
            key,
            reason: format!("{reason}; create the bucket or fix S3_BACKUP_BUCKET"),
        },
        (_, Some("NoSuchKey" | "NotFound")) | (Some(404), None) => StorageError::NotFound { key },
        (Some(412), _) | (_, Some("PreconditionFailed")) => StorageError::AlreadyExists { key },
        (
            _,
            Some(
                "SlowDown"
                | "RequestTimeout"
                | "InternalError"
                | "ServiceUnavailable"
                | "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "ConditionalRequestConflict",
            ),
        )
        | (Some(429 | 500..=599), _) => StorageError::Transient {
            operation,
            key,
            reason,
        },
        _ => StorageError::Rejected {
            operation,
            key,
            reason: with_hint(reason),
        },
    }
}

fn with_hint(reason: String) -> String {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("credential") || lower.contains("accessdenied") || lower.contains("signature")
    {
        return format!(
            "{reason}; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the AWS profile) and \
             the bucket policy"
        );
    }
    reason
}

#[async_trait]
impl Storage for S3Storage {
    async fn put_stream(
        &self,
        key: &str,
        mut payload: ObjectReader,
        mode: PutMode,
        _durability: Durability,
    ) -> Result<(), StorageError> {
        let limit = self.inner.single_put_max;
        let first = read_up_to(&mut payload, limit + 1)
            .await
            .map_err(|e| StorageError::io(key, e))?;
        if first.len() <= limit {
            return self.inner.put_object(key, Bytes::from(first), mode).await;
        }
        self.inner
            .multipart(key, Bytes::from(first), payload, mode)
            .await
    }

    async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: PutMode,
        _durability: Durability,
    ) -> Result<(), StorageError> {
        if bytes.len() <= self.inner.single_put_max {
            return self.inner.put_object(key, Bytes::from(bytes), mode).await;
        }
        let empty: ObjectReader = Box::new(tokio::io::empty());
        self.inner
            .multipart(key, Bytes::from(bytes), empty, mode)
            .await
    }

    async fn get_stream(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let inner = &self.inner;
        let object = inner.object_key(key)?;
        let limit = inner.single_put_max as i64;
        // Objects that fit in one PUT (WAL, packs, manifests) are read whole inside the retried
        // attempt, so a connection cut mid-body is retried rather than failing a recovery;
        // larger ones stream.
        let body = inner
            .retry
            .run(&inner.stats, "GET", key, || {
                let request = inner.client.get_object().bucket(&inner.bucket).key(&object);
                async move {
                    let output = request.send().await.map_err(|e| classify("GET", key, e))?;
                    if output.content_length().is_some_and(|n| n > limit) {
                        return Ok(Body::Streaming(output.body));
                    }
                    let bytes =
                        output
                            .body
                            .collect()
                            .await
                            .map_err(|e| StorageError::Transient {
                                operation: "GET",
                                key: key.to_string(),
                                reason: format!("reading the body: {e}"),
                            })?;
                    Ok(Body::Whole(bytes.into_bytes()))
                }
            })
            .await?;
        Ok(match body {
            Body::Whole(bytes) => Box::new(std::io::Cursor::new(bytes)),
            Body::Streaming(stream) => Box::new(Box::pin(stream.into_async_read())),
        })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StorageError> {
        if range.end <= range.start {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let object = inner.object_key(key)?;
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        // The body is read inside the retried attempt: a connection cut mid-body is retried too.
        inner
            .retry
            .run(&inner.stats, "GET", key, || {
                let request = inner
                    .client
                    .get_object()
                    .bucket(&inner.bucket)
                    .key(&object)
                    .range(&header);
                async move {
                    match request.send().await {
                        Ok(output) => output
                            .body
                            .collect()
                            .await
                            .map(|b| b.into_bytes().to_vec())
                            .map_err(|e| StorageError::Transient {
                                operation: "GET",
                                key: key.to_string(),
                                reason: format!("reading the body: {e}"),
                            }),
                        Err(e) if e.code() == Some("InvalidRange") => Ok(Vec::new()),
                        Err(e) => Err(classify("GET", key, e)),
                    }
                }
            })
            .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        let inner = &self.inner;
        let object = inner.object_key(key)?;
        let output = inner
            .retry
            .run(&inner.stats, "HEAD", key, || {
                let request = inner
                    .client
                    .head_object()
                    .bucket(&inner.bucket)
                    .key(&object);
                async move { request.send().await.map_err(|e| classify("HEAD", key, e)) }
            })
            .await?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: output
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            last_modified: output
                .last_modified()
                .and_then(|t| SystemTime::try_from(*t).ok())
                .unwrap_or(SystemTime::UNIX_EPOCH),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let inner = &self.inner;
        let full_prefix = inner.join(prefix);
        let strip = if inner.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", inner.prefix)
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = inner
                .retry
                .run(&inner.stats, "LIST", prefix, || {
                    let request = inner
                        .client
                        .list_objects_v2()
                        .bucket(&inner.bucket)
                        .prefix(&full_prefix)
                        .set_continuation_token(token.clone());
                    async move {
                        request
                            .send()
                            .await
                            .map_err(|e| classify("LIST", prefix, e))
                    }
                })
                .await?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&strip)) else {
                    continue;
                };
                if validate_key(key).is_err() {
                    continue;
                }
                out.push(ObjectMeta {
                    key: key.to_string(),
                    size: object
                        .size()
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(0),
                    last_modified: object
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let inner = &self.inner;
        let object = inner.object_key(key)?;
        inner
            .retry
            .run(&inner.stats, "DELETE", key, || {
                let request = inner
                    .client
                    .delete_object()
                    .bucket(&inner.bucket)
                    .key(&object);
                async move {
                    match request.send().await {
                        Ok(_) => Ok(()),
                        Err(e) => match classify("DELETE", key, e) {
                            StorageError::NotFound { .. } => Ok(()),
                            other => Err(other),
                        },
                    }
                }
            })
            .await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        let inner = &self.inner;
        for batch in keys.chunks(DELETE_BATCH) {
            let mut objects = Vec::with_capacity(batch.len());
            for key in batch {
                let object = inner.object_key(key)?;
                objects.push(
                    ObjectIdentifier::builder()
                        .key(object)
                        .build()
                        .map_err(|e| StorageError::InvalidKey {
                            key: key.clone(),
                            reason: e.to_string(),
                        })?,
                );
            }
            let first = batch.first().map_or("", String::as_str);
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::InvalidKey {
                    key: first.to_string(),
                    reason: e.to_string(),
                })?;
            let output = inner
                .retry
                .run(&inner.stats, "DELETE-BATCH", first, || {
                    let request = inner
                        .client
                        .delete_objects()
                        .bucket(&inner.bucket)
                        .delete(delete.clone());
                    async move {
                        request
                            .send()
                            .await
                            .map_err(|e| classify("DELETE-BATCH", first, e))
                    }
                })
                .await?;
            if let Some(failed) = output.errors().first() {
                return Err(StorageError::Rejected {
                    operation: "DELETE-BATCH",
                    key: failed.key().unwrap_or(first).to_string(),
                    reason: format!(
                        "{} of {} objects were not deleted: {} {}",
                        output.errors().len(),
                        batch.len(),
                        failed.code().unwrap_or(""),
                        failed.message().unwrap_or("")
                    ),
                });
            }
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// A completed PUT is durable: there is nothing to flush.
    async fn sync_object(&self, _key: &str) -> Result<(), StorageError> {
        Ok(())
    }

    fn describe(&self) -> String {
        if self.inner.prefix.is_empty() {
            format!("s3://{}", self.inner.bucket)
        } else {
            format!("s3://{}/{}", self.inner.bucket, self.inner.prefix)
        }
    }
}

/// The HTTPS client: rustls on ring, trusting the system's roots or the configured bundle.
fn http_client(opts: &S3Options) -> Result<SharedHttpClient, StorageError> {
    use aws_smithy_http_client::tls;
    let mut builder = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(
        tls::rustls_provider::CryptoMode::Ring,
    ));
    if let Some(pem) = &opts.ca_bundle {
        let context = tls::TlsContext::builder()
            .with_trust_store(
                tls::TrustStore::empty()
                    .with_native_roots(false)
                    .with_pem_certificate(pem.clone()),
            )
            .build()
            .map_err(|e| StorageError::Unavailable {
                path: format!("s3://{}", opts.bucket).into(),
                reason: format!(
                    "the CA bundle is not usable ({e}); point AWS_CA_BUNDLE at PEM certificates"
                ),
            })?;
        builder = builder.tls_context(context);
    }
    Ok(builder.build_https())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_name_a_bucket_and_a_prefix() {
        let o = S3Options::for_location("s3://backups/prod/pg").expect("valid");
        assert_eq!(
            (o.bucket.as_str(), o.prefix.as_str()),
            ("backups", "prod/pg")
        );
        let o = S3Options::for_location("backups").expect("valid");
        assert_eq!((o.bucket.as_str(), o.prefix.as_str()), ("backups", ""));
        let o = S3Options::for_location("backups/x/").expect("valid");
        assert_eq!(o.prefix, "x");
        for bad in [
            "",
            "s3://",
            "Backups",
            "a",
            "bucket//x",
            "bucket/../x",
            "bucket/a b",
        ] {
            assert!(S3Options::for_location(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn service_errors_are_sorted_for_the_retry_layer() {
        let sort = |status, code| classify_service("PUT", "k", Some(status), code, "m");
        assert!(sort(503, Some("SlowDown")).is_retryable());
        assert!(sort(500, Some("InternalError")).is_retryable());
        assert!(sort(502, None).is_retryable());
        assert!(sort(429, None).is_retryable());
        assert!(sort(409, Some("ConditionalRequestConflict")).is_retryable());
        assert!(sort(400, Some("RequestTimeout")).is_retryable());
        assert!(sort(404, Some("NoSuchKey")).is_not_found());
        assert!(sort(404, None).is_not_found());
        assert!(matches!(
            sort(412, Some("PreconditionFailed")),
            StorageError::AlreadyExists { .. }
        ));
        for (status, code) in [
            (403, Some("AccessDenied")),
            (404, Some("NoSuchBucket")),
            (400, Some("InvalidArgument")),
            (301, Some("PermanentRedirect")),
        ] {
            let e = sort(status, code);
            assert!(
                matches!(e, StorageError::Rejected { .. }),
                "{status} {code:?}: {e}"
            );
        }
        assert!(
            sort(403, Some("AccessDenied"))
                .to_string()
                .contains("AWS_ACCESS_KEY_ID")
        );
    }

    #[test]
    fn parts_grow_so_the_part_limit_covers_five_tebibytes() {
        let part = |n| part_size_for(8 << 20, n);
        let total: u128 = (1..=MAX_PARTS).map(|n| part(n) as u128).sum();
        assert!(total >= 5u128 << 40, "{total}");
        assert_eq!(part(1), 8 << 20);
        assert_eq!(part(1000), 8 << 20);
        assert_eq!(part(1001), 16 << 20);
    }
}
