//! An app's bucket through `aws-sdk-s3`: the few calls recording makes, and what went wrong in
//! plain words (DNS, TLS, unreachable, credentials, bucket, permission).

use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;

/// Connecting to the endpoint gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt of one call (an 8 MiB part at 3 Mb/s fits) gives up after this.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The bucket an app's recordings go to, opened (credentials in the clear, in memory only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub prefix: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

/// What went wrong with a call, in the words an operator acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3Failure {
    #[error("DNS: {0}")]
    Dns(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("credentials refused: {0}")]
    Auth(String),
    #[error("bucket: {0}")]
    Bucket(String),
    #[error("permission denied: {0}")]
    Permission(String),
    /// The multipart upload is no more (completed or aborted by another origin).
    #[error("the multipart upload is gone: {0}")]
    UploadGone(String),
    #[error("{0}")]
    Other(String),
}

impl S3Failure {
    /// A failure that retrying will not mend (until someone changes the storage settings).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Auth(_) | Self::Bucket(_) | Self::Permission(_) | Self::UploadGone(_)
        )
    }

    /// The kind, as the storage test names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Dns(_) => "dns",
            Self::Tls(_) => "tls",
            Self::Unreachable(_) => "unreachable",
            Self::Auth(_) => "auth",
            Self::Bucket(_) => "bucket",
            Self::Permission(_) => "permission",
            Self::UploadGone(_) => "upload",
            Self::Other(_) => "other",
        }
    }
}

/// Every message in an error's chain, joined.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn classify<E, R>(bucket: &str, e: SdkError<E, R>) -> S3Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    if let SdkError::ServiceError(ctx) = &e {
        let err = ctx.err();
        let code = err.code().unwrap_or_default().to_string();
        let message = err.message().unwrap_or_default().to_string();
        let said = if message.is_empty() {
            code.clone()
        } else {
            format!("{code}: {message}")
        };
        return match code.as_str() {
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidToken"
            | "ExpiredToken"
            | "InvalidSecurity" => S3Failure::Auth(format!(
                "{said} (check accessKeyId, secretAccessKey and sessionToken)"
            )),
            "NoSuchBucket" => S3Failure::Bucket(format!("bucket {bucket:?} does not exist")),
            "NoSuchUpload" => S3Failure::UploadGone(said),
            "AccessDenied" | "AllAccessDisabled" => S3Failure::Permission(format!(
                "{said} (the key may not write to bucket {bucket:?})"
            )),
            "" => S3Failure::Other(format!("{e:?}")),
            _ => S3Failure::Other(said),
        };
    }
    let text = chain(&e);
    let lower = text.to_lowercase();
    if lower.contains("dns error") || lower.contains("failed to lookup address") {
        S3Failure::Dns(text)
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        S3Failure::Tls(text)
    } else if matches!(e, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_))
        || lower.contains("connection refused")
        || lower.contains("timed out")
        || lower.contains("connection reset")
    {
        S3Failure::Unreachable(text)
    } else {
        S3Failure::Other(text)
    }
}

/// A client of one bucket.
#[derive(Clone, Debug)]
pub struct Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl Store {
    pub fn new(b: &Bucket) -> Self {
        use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let credentials = Credentials::new(
            &b.access_key_id,
            &b.secret_access_key,
            b.session_token.clone(),
            None,
            "streamhub-app-storage",
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(b.region.clone()))
            .endpoint_url(&b.endpoint)
            .force_path_style(b.path_style)
            .credentials_provider(credentials)
            .http_client(http)
            // Self-hosted servers (and older S3 clones) do not all take the newer checksums.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            // Our own retries (with the spool behind them) decide; one quick retry here.
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .build();
        Self {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: b.bucket.clone(),
            prefix: b.prefix.trim_matches('/').to_string(),
        }
    }

    /// The object key of `name` under the storage's prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    fn fail<E, R>(&self, e: SdkError<E, R>) -> S3Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        classify(&self.bucket, e)
    }

    pub async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), S3Failure> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, S3Failure> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.fail(e))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| S3Failure::Unreachable(chain(&e)))?;
        Ok(body.into_bytes())
    }

    pub async fn delete(&self, key: &str) -> Result<(), S3Failure> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Fails with [`S3Failure::Bucket`] if the bucket does not exist (some servers create a
    /// bucket on the first write, or answer a write to a missing one with a vague error).
    /// Other refusals are left to the calls that follow, whose answers say more.
    pub async fn bucket_exists(&self) -> Result<(), S3Failure> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(ctx)) if ctx.raw().status().as_u16() == 404 => Err(
                S3Failure::Bucket(format!("bucket {:?} does not exist", self.bucket)),
            ),
            Err(SdkError::ServiceError(_)) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Starts a multipart upload of `key`; its upload id.
    pub async fn create_upload(&self, key: &str) -> Result<String, S3Failure> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("video/mp4")
            .send()
            .await
            .map_err(|e| self.fail(e))?;
        out.upload_id
            .ok_or_else(|| S3Failure::Other("the server gave no upload id".into()))
    }

    /// Uploads part `number` of an upload; its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<String, S3Failure> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.fail(e))?;
        out.e_tag
            .ok_or_else(|| S3Failure::Other("the server gave no ETag".into()))
    }

    /// Completes an upload with its parts `(number, etag)`, in order.
    pub async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<(), S3Failure> {
        let done = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|(n, etag)| {
                        CompletedPart::builder()
                            .part_number(*n as i32)
                            .e_tag(etag)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(done)
            .send()
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), S3Failure> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// A GET URL of `key` valid for `ttl`.
    pub async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, S3Failure> {
        let config = PresigningConfig::expires_in(ttl)
            .map_err(|e| S3Failure::Other(format!("presigning: {e}")))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(req.uri().to_string())
    }

    /// Writes, reads back and deletes a small object: the storage test. The step that failed
    /// and why.
    pub async fn check(&self) -> Result<(), (&'static str, S3Failure)> {
        let key = self.key(&format!(
            ".streamhub-storage-test-{}",
            crate::credentials::random_hex(8)
        ));
        self.bucket_exists().await.map_err(|e| ("write", e))?;
        let body = Bytes::from_static(b"streamhub storage test\n");
        self.put(&key, body.clone(), "text/plain")
            .await
            .map_err(|e| ("write", e))?;
        let back = self.get(&key).await.map_err(|e| ("read", e))?;
        if back != body {
            return Err((
                "read",
                S3Failure::Other("the object read back differs from what was written".into()),
            ));
        }
        self.delete(&key).await.map_err(|e| ("delete", e))?;
        Ok(())
    }
}
