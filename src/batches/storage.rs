//! Where a warehouse lives: a folder on this machine or a prefix in an object store
//! (`s3://bucket/prefix`, `gs://`, `az://`). Everything that reads the warehouse (the catalog walk,
//! manifests, the lifecycle log, the Parquet scans) goes through one `object_store`
//! rooted at the warehouse, so a local folder and a bucket are read the same way; only
//! the commit differs (a directory rename on a disk, create-if-absent puts in a store:
//! see [`super::Store`]).
//!
//! Stores are configured from the environment, as their own tools are. S3:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (or `AWS_DEFAULT_REGION`),
//! `AWS_SESSION_TOKEN`, and `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`) for an S3-compatible
//! store; an `http://` endpoint is allowed as given. Google Cloud Storage (`gs://`):
//! `GOOGLE_APPLICATION_CREDENTIALS` or `GOOGLE_SERVICE_ACCOUNT`, and
//! `STORAGE_EMULATOR_HOST` for an emulator. Azure (`az://container/prefix`,
//! `abfss://container@account.dfs.core.windows.net/prefix`): `AZURE_STORAGE_ACCOUNT_NAME`
//! with `AZURE_STORAGE_ACCOUNT_KEY` (or a SAS token, or a service principal's
//! `AZURE_CLIENT_ID`...), and `AZURE_STORAGE_USE_EMULATOR=true` for Azurite.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// Why a warehouse (or an input) URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("`{url}` is not a place billflow can read or write: {why}")]
    Unusable { url: String, why: String },
}

/// A local folder, or a prefix in an object store: a warehouse's root, or the folder a
/// source's files are in.
#[derive(Clone, Debug)]
pub struct StoreLocation {
    /// As the user wrote it (a local path made absolute), for messages.
    text: String,
    /// The store rooted at the location: every key is relative to it.
    store: Arc<dyn ObjectStore>,
    place: Place,
}

#[derive(Clone, Debug)]
enum Place {
    Local(PathBuf),
    Remote {
        /// `s3://bucket`: how DataFusion's scans find the store.
        url: ObjectStoreUrl,
        /// The whole bucket, registered with DataFusion under `url`.
        bucket: Arc<dyn ObjectStore>,
        /// The warehouse's prefix in the bucket.
        prefix: ObjectPath,
    },
}

pub use crate::definition::model::is_url;

/// `path` made absolute with no `.` or `..` left, which an object store path cannot hold
/// (`ObjectPath::from_absolute_path` refuses them): the sandbox's real path.
fn resolved(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    crate::definition::sandbox::real_path(&path)
}

impl StoreLocation {
    /// A local folder (made absolute: scans address files by URL, which a relative path
    /// is not) or `s3://bucket/prefix` (`gs://`, `az://`, `abfss://`).
    pub fn parse(text: &str) -> Result<StoreLocation, StorageError> {
        if is_url(text) {
            Self::remote(text)
        } else {
            Ok(Self::local(Path::new(text)))
        }
    }

    pub fn local(path: &Path) -> StoreLocation {
        let path = resolved(path);
        // The whole file system under the folder's path as a prefix: nothing is created
        // until something is written, and a folder that does not exist lists as empty.
        let prefix = ObjectPath::from_absolute_path(&path).unwrap_or_default();
        let disk = Arc::new(object_store::local::LocalFileSystem::new());
        StoreLocation {
            text: path.display().to_string(),
            store: Arc::new(object_store::prefix::PrefixStore::new(disk, prefix)),
            place: Place::Local(path),
        }
    }

    fn remote(text: &str) -> Result<StoreLocation, StorageError> {
        let unusable = |why: String| StorageError::Unusable {
            url: text.to_string(),
            why,
        };
        let url = url::Url::parse(text).map_err(|e| unusable(e.to_string()))?;
        let bucket_name = url.host_str().unwrap_or_default().to_string();
        if bucket_name.is_empty() {
            return Err(unusable(format!(
                "no bucket: expected {}://bucket/prefix",
                url.scheme()
            )));
        }
        let built = match url.scheme() {
            "s3" | "s3a" => s3_from_env(&bucket_name).map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            "gs" => gcs_from_env(&bucket_name).map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            "az" | "azure" | "abfs" | "abfss" => object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(text)
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            other => {
                return Err(unusable(format!(
                    "unknown scheme `{other}://`: expected a local path, s3://, gs:// or az://"
                )));
            }
        };
        let bucket = built.map_err(|e| {
            let why = e.to_string();
            if why.contains("Account must be specified") {
                unusable(format!(
                    "{why}: set AZURE_STORAGE_ACCOUNT_NAME (or AZURE_STORAGE_USE_EMULATOR=true for Azurite), \
                     or write abfss://container@account.dfs.core.windows.net/prefix"
                ))
            } else {
                unusable(why)
            }
        })?;
        let prefix = ObjectPath::from_url_path(url.path()).map_err(|e| unusable(e.to_string()))?;
        // `abfss://container@account.…`: the container is part of the store's address.
        let store_url = ObjectStoreUrl::parse(&url[..url::Position::AfterPort]).map_err(|e| unusable(e.to_string()))?;
        Ok(StoreLocation {
            text: text.trim_end_matches('/').to_string(),
            store: Arc::new(object_store::prefix::PrefixStore::new(bucket.clone(), prefix.clone())),
            place: Place::Remote {
                url: store_url,
                bucket,
                prefix,
            },
        })
    }

    /// The store rooted at the warehouse.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The folder, when the warehouse is on this machine.
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.place {
            Place::Local(p) => Some(p),
            Place::Remote { .. } => None,
        }
    }

    /// A key of the warehouse (`tier/org/stream/batch/data/part-0.parquet`) as DataFusion
    /// reads it: an absolute path, or `s3://bucket/prefix/key`.
    pub fn url_of(&self, key: &str) -> String {
        match &self.place {
            Place::Local(p) => p.join(key).to_string_lossy().into_owned(),
            Place::Remote { .. } => format!("{}/{key}", self.text),
        }
    }

    /// A key of the warehouse as a scan addresses it: the store's URL and the object's
    /// path in that store.
    pub fn scan_path(&self, key: &str) -> Result<(ObjectStoreUrl, ObjectPath), StorageError> {
        let bad = |e: object_store::path::Error| StorageError::Unusable {
            url: self.url_of(key),
            why: e.to_string(),
        };
        match &self.place {
            Place::Local(p) => Ok((
                ObjectStoreUrl::local_filesystem(),
                ObjectPath::from_absolute_path(p.join(key)).map_err(bad)?,
            )),
            Place::Remote { url, prefix, .. } => {
                let mut path = prefix.clone();
                for part in ObjectPath::parse(key).map_err(bad)?.parts() {
                    path = path.join(part);
                }
                Ok((url.clone(), path))
            }
        }
    }

    /// Let the scans of sessions built on `runtime` read this warehouse (a local folder
    /// needs nothing: DataFusion reads local files already).
    pub fn register(&self, runtime: &RuntimeEnv) {
        if let Place::Remote { url, bucket, .. } = &self.place {
            runtime.register_object_store(url.as_ref(), bucket.clone());
        }
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<&Path> for StoreLocation {
    fn from(path: &Path) -> Self {
        StoreLocation::local(path)
    }
}

impl From<PathBuf> for StoreLocation {
    fn from(path: PathBuf) -> Self {
        StoreLocation::local(&path)
    }
}

impl From<&PathBuf> for StoreLocation {
    fn from(path: &PathBuf) -> Self {
        StoreLocation::local(path)
    }
}

/// An S3 bucket configured from the environment as the AWS tools are.
fn s3_from_env(bucket: &str) -> object_store::Result<object_store::aws::AmazonS3> {
    use object_store::aws::AmazonS3Builder;
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    // The AWS CLI's and SDKs' names, which object_store does not read itself.
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .or_else(|_| std::env::var("AWS_ENDPOINT"))
        .ok();
    if let Some(endpoint) = endpoint {
        builder = builder
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(endpoint);
    }
    builder.build()
}

/// A Google Cloud Storage bucket configured from the environment: `GOOGLE_*` as
/// object_store reads them (`GOOGLE_APPLICATION_CREDENTIALS`, `GOOGLE_SERVICE_ACCOUNT`,
/// ...), and `STORAGE_EMULATOR_HOST`, which Google's own libraries read, for an emulator
/// (no credentials are signed for it).
fn gcs_from_env(bucket: &str) -> object_store::Result<object_store::gcp::GoogleCloudStorage> {
    use object_store::gcp::GoogleCloudStorageBuilder;
    let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
    let emulator = std::env::var("STORAGE_EMULATOR_HOST").ok().filter(|h| !h.is_empty());
    if let (Some(host), Err(_)) = (emulator, std::env::var("GOOGLE_BASE_URL")) {
        let base = if host.contains("://") {
            host
        } else {
            format!("http://{host}")
        };
        builder = builder.with_base_url(&base).with_skip_signature(true);
    }
    builder.build()
}

/// Why a manifest could not be read from the warehouse.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{url}: {source}")]
    Store { url: String, source: object_store::Error },
    #[error("{url}: not a billflow manifest: {source}")]
    Format { url: String, source: serde_json::Error },
}

/// The manifest of the batch directory `batch_key` (`tier/org/stream/batch_id`).
pub async fn read_manifest(root: &StoreLocation, batch_key: &str) -> Result<super::Manifest, ReadError> {
    let key = format!("{batch_key}/{}", super::MANIFEST);
    let url = root.url_of(&key);
    let store = root.store();
    let bytes = match store.get(&ObjectPath::from(key.as_str())).await {
        Ok(got) => got.bytes().await,
        Err(e) => Err(e),
    }
    .map_err(|source| ReadError::Store {
        url: url.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| ReadError::Format { url, source })
}

/// Commit a batch written in `staging` to an object store at `batch_key`: its files are
/// uploaded under `batch_key/<attempt>/`, then the manifest, naming them, is put with
/// create-if-absent. A reader sees a batch only once its manifest exists, and a killed
/// run's uploads are files no manifest names. Of two runs committing the same batch, one
/// puts the manifest; the other finds it there and removes its own uploads.
pub async fn commit(
    root: &StoreLocation,
    batch_key: &str,
    staging: &super::Staging,
    manifest: &super::Manifest,
) -> std::io::Result<super::Committed> {
    use super::Committed;
    use object_store::{PutMode, PutOptions};
    let store = root.store();
    let url = root.url_of(batch_key);
    let manifest_key = ObjectPath::from(format!("{batch_key}/{}", super::MANIFEST));
    let failed = |what: &str, e: object_store::Error| std::io::Error::other(format!("{what} {url}: {e}"));
    match store.head(&manifest_key).await {
        Ok(_) => return Ok(Committed::AlreadyThere(url)),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(failed("reading", e)),
    }
    let manifest = super::Manifest {
        files_in: Some(staging.attempt().to_string()),
        ..manifest.clone()
    };
    let uploads: Vec<ObjectPath> = manifest
        .files
        .iter()
        .chain(&manifest.rejects)
        .map(|f| ObjectPath::from(format!("{batch_key}/{}", manifest.file_path(f))))
        .collect();
    let local: Vec<PathBuf> = manifest
        .files
        .iter()
        .chain(&manifest.rejects)
        .map(|f| staging.dir.join(&f.path))
        .collect();
    {
        use futures::{StreamExt, TryStreamExt};
        futures::stream::iter(local.into_iter().zip(uploads.clone()))
            .map(|(from, to)| upload(store.clone(), from, to))
            .buffer_unordered(UPLOAD_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map_err(|e| std::io::Error::other(format!("uploading to {url}: {e}")))?;
    }
    let mut body = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
    body.push(b'\n');
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store.put_opts(&manifest_key, body.into(), create).await {
        Ok(_) => Ok(Committed::New(url)),
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
            for key in &uploads {
                let _ = store.delete(key).await;
            }
            Ok(Committed::AlreadyThere(url))
        }
        Err(e) => Err(failed("writing the manifest of", e)),
    }
}

/// Files uploaded at once by a commit.
const UPLOAD_CONCURRENCY: usize = 8;

/// One local file to `to`, in parts when it is large (object_store's buffered writer
/// puts a small file whole and a large one as a multipart upload).
async fn upload(store: Arc<dyn ObjectStore>, from: PathBuf, to: ObjectPath) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::open(&from)
        .await
        .map_err(|e| format!("{}: {e}", from.display()))?;
    let mut writer = object_store::buffered::BufWriter::new(store, to.clone());
    let copied = tokio::io::copy(&mut file, &mut writer).await;
    match copied {
        Ok(_) => writer.shutdown().await.map_err(|e| format!("{to}: {e}")),
        Err(e) => {
            let _ = writer.abort().await;
            Err(format!("{to}: {e}"))
        }
    }
}

/// Objects under `batch_key` that no manifest names: the uploads of runs killed before
/// their commit, or of a run that lost the commit to another. Removed once older than
/// `grace`, so a run still uploading is never disturbed.
pub async fn collect_abandoned(root: &StoreLocation, batch_key: &str, grace: std::time::Duration) {
    use futures::TryStreamExt;
    if root.local_dir().is_some() {
        return; // a local batch is committed whole by a rename: nothing is left beside it
    }
    let store = root.store();
    let named: Option<String> = read_manifest(root, batch_key).await.ok().and_then(|m| m.files_in);
    let prefix = ObjectPath::from(batch_key);
    let Ok(objects) = store.list(Some(&prefix)).try_collect::<Vec<_>>().await else {
        return;
    };
    let now = chrono::Utc::now();
    for o in objects {
        let Some(rest) = o.location.as_ref().strip_prefix(&format!("{batch_key}/")) else {
            continue;
        };
        let Some((attempt, _)) = rest.split_once('/') else {
            continue; // batch.json
        };
        let old = (now - o.last_modified).to_std().is_ok_and(|age| age > grace);
        if named.as_deref() != Some(attempt) && old {
            let _ = store.delete(&o.location).await;
        }
    }
}

/// How many small objects (manifests, events) are read at once from an object store.
pub const READ_CONCURRENCY: usize = 32;

/// The bytes of many small objects under `root` (manifests, events), in the order of
/// `keys`; `None` for one that is not there. On a local disk the files are read by a few
/// blocking tasks (one per core) rather than a task each: thousands of tiny reads cost
/// more in thread hand-offs than in reading. In an object store, many requests at once.
pub async fn read_many(
    store: &Arc<dyn ObjectStore>,
    local: Option<&Path>,
    keys: Vec<String>,
) -> object_store::Result<Vec<Option<bytes::Bytes>>> {
    use futures::{StreamExt, TryStreamExt};
    let Some(dir) = local else {
        return futures::stream::iter(keys)
            .map(|key| {
                let store = store.clone();
                async move {
                    match store.get(&ObjectPath::from(key)).await {
                        Ok(got) => got.bytes().await.map(Some),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await;
    };
    let tasks = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_task = keys.len().div_ceil(tasks).max(1);
    let mut reads = Vec::new();
    for chunk in keys.chunks(per_task) {
        let (dir, chunk) = (dir.to_path_buf(), chunk.to_vec());
        reads.push(tokio::task::spawn_blocking(move || {
            chunk
                .iter()
                .map(|key| match std::fs::read(dir.join(key)) {
                    Ok(bytes) => Ok(Some(bytes::Bytes::from(bytes))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(object_store::Error::Generic {
                        store: "local",
                        source: format!("{}: {e}", dir.join(key).display()).into(),
                    }),
                })
                .collect::<object_store::Result<Vec<_>>>()
        }));
    }
    let mut out = Vec::with_capacity(keys.len());
    for read in reads {
        let read = read.await.map_err(|e| object_store::Error::Generic {
            store: "local",
            source: Box::new(e),
        })?;
        out.extend(read?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found running the README's first command: the sample pipeline's warehouse is
    /// `../../warehouse`, whose `..` an object store path cannot hold. The prefix fell back
    /// to the root of the disk, so a run wrote its batches (through the file system) and
    /// then could not read them back. `..` is resolved first, the same folder either way.
    #[tokio::test]
    async fn a_warehouse_written_with_dot_dot_reads_back_what_was_written() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("samples/cloud")).unwrap();
        std::fs::create_dir_all(tmp.path().join("warehouse/t")).unwrap();
        std::fs::write(tmp.path().join("warehouse/t/batch.json"), "{}").unwrap();
        for written in [
            "samples/cloud/../../warehouse",
            "./samples/../warehouse/t/..",
            "warehouse",
        ] {
            let at = StoreLocation::local(&tmp.path().join(written));
            let read = at.store.get(&ObjectPath::from("t/batch.json")).await;
            let bytes = read.unwrap_or_else(|e| panic!("{written}: {e}")).bytes().await.unwrap();
            assert_eq!(&bytes[..], b"{}", "{written}");
            assert_eq!(
                at.local_dir(),
                Some(std::fs::canonicalize(tmp.path().join("warehouse")).unwrap().as_path())
            );
        }
        // Not there yet: resolved the same way, without the system.
        let at = StoreLocation::local(&tmp.path().join("samples/cloud/../new/./wh"));
        let expected = std::fs::canonicalize(tmp.path()).unwrap().join("samples/new/wh");
        assert_eq!(at.local_dir(), Some(expected.as_path()));
    }

    /// Each store's URL addresses keys below its prefix, and scans find the store under
    /// the URL it is registered with (the container and account of an `abfss://` URL
    /// included). No request is made: the clients connect on first use.
    #[test]
    fn gs_az_and_abfss_warehouses_address_their_keys_below_the_prefix() {
        for (text, store_url, path) in [
            ("gs://bills/wh", "gs://bills/", "wh/t/o/s/b/batch.json"),
            (
                "abfss://bills@acct.dfs.core.windows.net/wh",
                "abfss://bills@acct.dfs.core.windows.net/",
                "wh/t/o/s/b/batch.json",
            ),
        ] {
            let at = StoreLocation::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(at.local_dir(), None);
            assert_eq!(
                at.url_of("t/o/s/b/batch.json"),
                format!("{}/t/o/s/b/batch.json", text.trim_end_matches('/'))
            );
            let (url, key) = at.scan_path("t/o/s/b/batch.json").unwrap();
            assert_eq!((url.as_str(), key.as_ref()), (store_url, path), "{text}");
        }
    }

    #[test]
    fn a_store_url_without_a_bucket_or_with_an_unknown_scheme_says_what_it_expected() {
        let no_bucket = StoreLocation::parse("gs:///wh").unwrap_err().to_string();
        assert!(
            no_bucket.contains("no bucket: expected gs://bucket/prefix"),
            "{no_bucket}"
        );
        // (Unless the environment names the account, as a user's would.)
        if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_none() {
            let no_account = StoreLocation::parse("az://bills/wh").unwrap_err().to_string();
            assert!(no_account.contains("set AZURE_STORAGE_ACCOUNT_NAME"), "{no_account}");
        }
        let unknown = StoreLocation::parse("ftp://host/wh").unwrap_err().to_string();
        assert!(unknown.contains("unknown scheme `ftp://`"), "{unknown}");
    }
}
