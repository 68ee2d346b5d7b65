//! The object destinations: a local directory and S3-compatible object storage. Both are
//! exactly-once: a batch's objects are named from its sequence numbers (see
//! [`crate::naming`]), a directory's files appear whole (written to a temporary name, synced,
//! renamed), and an object store's PUT is atomic.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};
use riptide_client::ShardId;

use crate::config::{Destination, Format};
use crate::format::{self, Failed, Item};
use crate::naming::{self, BatchRange, ERROR_SUFFIX, Found, ResumePoint};
use crate::template::{RenderInput, Template};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("bad object key {key:?}: {message}")]
    Key { key: String, message: String },
    #[error("background write stopped: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Where objects go.
#[derive(Debug, Clone)]
pub enum Store {
    Directory(PathBuf),
    S3(Arc<AmazonS3>),
}

impl Store {
    /// Builds the store of a directory or S3 destination.
    pub fn from_destination(d: &Destination) -> Result<Store, StoreError> {
        match d {
            Destination::Directory { path, .. } => Ok(Store::Directory(path.clone())),
            Destination::S3 {
                bucket,
                endpoint,
                region,
                access_key_id,
                secret_access_key,
                ..
            } => {
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    // The daemon retries with its own backoff and retry duration.
                    .with_retry(RetryConfig {
                        max_retries: 0,
                        retry_timeout: Duration::from_secs(30),
                        ..RetryConfig::default()
                    })
                    .with_client_options(
                        ClientOptions::new()
                            .with_timeout(Duration::from_secs(60))
                            .with_connect_timeout(Duration::from_secs(5)),
                    );
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
                }
                if let (Some(k), Some(s)) = (access_key_id, secret_access_key) {
                    b = b.with_access_key_id(k).with_secret_access_key(s);
                }
                Ok(Store::S3(Arc::new(b.build()?)))
            }
            _ => unreachable!("only directory and s3 destinations are object stores"),
        }
    }

    /// Writes an object whole: readers see all of it or nothing.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Store::Directory(root) => {
                let path = root.join(key);
                tokio::task::spawn_blocking(move || write_file_atomically(&path, &bytes)).await?
            }
            Store::S3(s3) => {
                let path = StorePath::parse(key).map_err(|e| StoreError::Key {
                    key: key.to_string(),
                    message: e.to_string(),
                })?;
                s3.put(&path, PutPayload::from(bytes)).await?;
                Ok(())
            }
        }
    }

    /// The keys that start with `head`.
    pub async fn list(&self, head: &str) -> Result<Vec<String>, StoreError> {
        // Both stores list by folder: list the folder `head` is in and filter.
        let folder = match head.rfind('/') {
            Some(i) => &head[..i],
            None => "",
        };
        let keys = match self {
            Store::Directory(root) => {
                let root = root.clone();
                let folder = folder.to_string();
                tokio::task::spawn_blocking(move || list_files(&root, &folder)).await??
            }
            Store::S3(s3) => {
                let prefix = (!folder.is_empty()).then(|| StorePath::from(folder));
                s3.list(prefix.as_ref())
                    .map_ok(|meta| meta.location.to_string())
                    .try_collect()
                    .await?
            }
        };
        Ok(keys.into_iter().filter(|k| k.starts_with(head)).collect())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, renames it into place and
/// syncs the folder, so that a crash leaves the old state or the whole new file.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// Every file under `root/folder`, as keys relative to `root`; hidden (temporary) files are
/// left out.
fn list_files(root: &Path, folder: &str) -> Result<Vec<String>, StoreError> {
    let mut keys = Vec::new();
    walk(&root.join(folder), &mut |path, name| {
        if !name.starts_with('.')
            && let Ok(rel) = path.strip_prefix(root)
        {
            keys.push(
                rel.to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/"),
            );
        }
    })?;
    Ok(keys)
}

/// Calls `f` with the path and file name of every file under `dir`.
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &str)) -> Result<(), StoreError> {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io_err(&path))?;
            if kind.is_dir() {
                todo.push(path);
            } else {
                f(&path, &entry.file_name().to_string_lossy());
            }
        }
    }
    Ok(())
}

/// The object name inside a temporary file name `.<name>.<pid>.tmp`.
fn temp_target(file_name: &str) -> Option<&str> {
    let inner = file_name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (name, pid) = inner.rsplit_once('.')?;
    pid.bytes().all(|b| b.is_ascii_digit()).then_some(name)
}

/// Removes the temporary files a crash left under `root/folder` for objects that `ours`
/// accepts (those of one stream's shard: no other writer makes them).
fn remove_stale_temps(
    root: &Path,
    folder: &str,
    ours: &dyn Fn(&str) -> bool,
) -> Result<usize, StoreError> {
    let mut stale = Vec::new();
    walk(&root.join(folder), &mut |path, name| {
        if temp_target(name).is_some_and(ours) {
            stale.push(path.to_path_buf());
        }
    })?;
    for path in &stale {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    Ok(stale.len())
}

/// An object destination's naming: its prefix template, error prefix and format.
#[derive(Debug, Clone)]
pub struct Layout {
    pub stream: String,
    pub prefix: Template,
    pub error_prefix: String,
    pub format: Format,
}

impl Layout {
    /// Finds where `shard` left off from the objects already delivered.
    pub async fn resume_point(
        &self,
        store: &Store,
        shard: ShardId,
    ) -> Result<Option<ResumePoint>, StoreError> {
        let mut found: Vec<Found> = Vec::new();
        for head in [self.prefix.static_head(), self.error_prefix.as_str()] {
            if let Store::Directory(root) = store {
                let (root, stream) = (root.clone(), self.stream.clone());
                let folder = head.rfind('/').map_or("", |i| &head[..i]).to_string();
                let removed = tokio::task::spawn_blocking(move || {
                    remove_stale_temps(&root, &folder, &|name| {
                        naming::parse_key(name, &stream, shard).is_some()
                    })
                })
                .await??;
                if removed > 0 {
                    tracing::info!(shard = %shard, removed, "removed temporary files left by a crash");
                }
            }
            for key in store.list(head).await? {
                if let Some(f) = naming::parse_key(&key, &self.stream, shard) {
                    found.push(f);
                }
            }
        }
        Ok(naming::resume_point(&found))
    }

    /// Splits a batch into its objects by prefix and encodes each; records that cannot be
    /// placed or encoded come back as failures.
    pub fn objects(
        &self,
        shard: ShardId,
        range: BatchRange,
        items: Vec<Item>,
    ) -> Result<(Vec<PlannedObject>, Vec<Failed>), format::FormatError> {
        let shard_name = shard.to_string();
        let mut failed = Vec::new();
        let mut groups: BTreeMap<String, Vec<Item>> = BTreeMap::new();
        let needs_json = self.prefix.uses_fields();
        for item in items {
            let json = needs_json
                .then(|| serde_json::from_slice::<serde_json::Value>(&item.data).ok())
                .flatten();
            let input = RenderInput {
                stream: &self.stream,
                shard: &shard_name,
                arrival_ms: item.arrival_ms,
                json: json.as_ref(),
            };
            match self.prefix.render(&input) {
                Ok(prefix) => groups.entry(prefix).or_default().push(item),
                Err(message) => failed.push(Failed {
                    item,
                    code: "PartitionFailed",
                    message,
                }),
            }
        }
        let ext = format::extension(&self.format);
        let name = naming::object_name(&self.stream, shard, range, &ext);
        let mut planned = Vec::new();
        for (prefix, items) in groups {
            let (bytes, misfits) = format::encode(&self.format, &items)?;
            let bad: HashSet<_> = misfits.iter().map(|f| f.item.seq).collect();
            failed.extend(misfits);
            if let Some(bytes) = bytes {
                planned.push(PlannedObject {
                    key: format!("{prefix}{name}"),
                    bytes,
                    items: items
                        .into_iter()
                        .filter(|i| !bad.contains(&i.seq))
                        .collect(),
                });
            }
        }
        Ok((planned, failed))
    }

    /// The key of a batch's error object.
    pub fn error_key(&self, shard: ShardId, range: BatchRange) -> String {
        format!(
            "{}{}",
            self.error_prefix,
            naming::object_name(&self.stream, shard, range, ERROR_SUFFIX)
        )
    }
}

/// An object to write, and the records in it (for the error output if it cannot be written).
#[derive(Debug, Clone)]
pub struct PlannedObject {
    pub key: String,
    pub bytes: Vec<u8>,
    pub items: Vec<Item>,
}

#[cfg(test)]
mod tests {
    use riptide_client::SequenceNumber;

    use super::*;

    #[tokio::test]
    async fn directory_writes_are_whole_and_listed_without_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::Directory(dir.path().to_path_buf());
        store
            .put("orders/2024/a-1", b"hello".to_vec())
            .await
            .expect("put");
        std::fs::write(dir.path().join("orders/2024/.a-2.tmp"), b"partial").expect("write");
        assert_eq!(temp_target(".a-2.77.tmp"), Some("a-2"));
        assert_eq!(temp_target(".a-2.tmp"), None);
        assert_eq!(temp_target("a-2.77.tmp"), None);
        let keys = store.list("orders/").await.expect("list");
        assert_eq!(keys, vec!["orders/2024/a-1".to_string()]);
        assert_eq!(
            std::fs::read(dir.path().join("orders/2024/a-1")).expect("read"),
            b"hello"
        );
        assert!(store.list("other/").await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn a_batch_split_by_field_is_found_again_on_resume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::Directory(dir.path().to_path_buf());
        let layout = Layout {
            stream: "orders".into(),
            prefix: Template::parse("{stream}/{field:c}/").expect("template"),
            error_prefix: "errors/".into(),
            format: Format::default(),
        };
        let item = |n: u64, data: &str| Item {
            seq: SequenceNumber(n),
            partition_key: "k".into(),
            arrival_ms: 0,
            data: data.as_bytes().to_vec(),
        };
        let range = BatchRange {
            first: SequenceNumber(5),
            last: SequenceNumber(7),
        };
        let (objects, failed) = layout
            .objects(
                ShardId(2),
                range,
                vec![
                    item(5, r#"{"c":"a"}"#),
                    item(6, r#"{"c":"b"}"#),
                    item(7, "x"),
                ],
            )
            .expect("objects");
        assert_eq!(objects.len(), 2);
        assert_eq!(failed.len(), 1);
        assert!(
            objects[0]
                .key
                .starts_with("orders/a/orders-shardId-000000000002-")
        );
        // Only the first object made it before a crash, and the second was half written:
        // the batch is repeated to its end, and the half-written file is removed.
        store
            .put(&objects[0].key, objects[0].bytes.clone())
            .await
            .expect("put");
        let half = objects[1].key.rsplit_once('/').expect("folder");
        let temp = dir
            .path()
            .join(half.0)
            .join(format!(".{}.12345.tmp", half.1));
        std::fs::create_dir_all(temp.parent().expect("parent")).expect("mkdir");
        std::fs::write(&temp, b"half").expect("write");
        let other = dir
            .path()
            .join(half.0)
            .join(".orders-shardId-000000000009-x.1.tmp");
        std::fs::write(&other, b"not ours").expect("write");
        let resume = layout
            .resume_point(&store, ShardId(2))
            .await
            .expect("resume");
        assert_eq!(
            resume,
            Some(ResumePoint {
                from: riptide_client::StartingPosition::AtSequence(SequenceNumber(5)),
                cut_at: Some(SequenceNumber(7)),
            })
        );
        assert_eq!(
            layout.resume_point(&store, ShardId(3)).await.expect("r"),
            None
        );
    }
}
