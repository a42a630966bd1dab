//! Sources and references in an object store (`url: s3://bucket/usage/2026-10/*.csv`).
//! The objects a URL names (a key, or a glob over keys) are copied to this machine once,
//! under a name made of the object's URL, size and ETag (a changed object is copied
//! again), and read from there as local files are: the parallel, line-numbered CSV and
//! NDJSON scan, the Parquet reader and the input's fingerprint are the same ones, and
//! the same bytes give the same batch id wherever they are kept.

use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStoreExt};

use crate::batches::StoreLocation;

/// Where copies of objects are kept: `<temp>/billflow-inputs`.
pub fn cache_root() -> PathBuf {
    std::env::temp_dir().join("billflow-inputs")
}

/// Why an object store input could not be read.
#[derive(Debug, thiserror::Error)]
#[error("`{url}`: {why}")]
pub struct FetchError {
    pub url: String,
    pub why: String,
}

/// The local copies of the objects `url` names, sorted by key, each with its URL.
pub async fn fetch(url: &str) -> Result<Vec<(PathBuf, String)>, FetchError> {
    let failed = |why: String| FetchError {
        url: url.to_string(),
        why,
    };
    let (base, pattern) = split_glob(url);
    let root = StoreLocation::parse(base).map_err(|e| failed(e.to_string()))?;
    let matcher = glob::Pattern::new(pattern).map_err(|e| failed(format!("not a valid glob: {}", e.msg)))?;
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..glob::MatchOptions::new()
    };
    let listed: Vec<ObjectMeta> = root
        .store()
        .list(None)
        .try_collect()
        .await
        .map_err(|e| failed(format!("listing {base}: {e}")))?;
    let mut matched: Vec<ObjectMeta> = listed
        .into_iter()
        .filter(|o| matcher.matches_with(o.location.as_ref(), options))
        .collect();
    matched.sort_by(|a, b| a.location.cmp(&b.location));
    if matched.is_empty() {
        return Err(failed("no object matches it".into()));
    }
    let mut out = Vec::with_capacity(matched.len());
    for object in matched {
        let object_url = root.url_of(object.location.as_ref());
        let local = copy_here(&root, &object, &object_url)
            .await
            .map_err(|why| failed(format!("copying {object_url}: {why}")))?;
        out.push((local, object_url));
    }
    Ok(out)
}

/// `s3://b/usage/2026-*/*.csv` -> (`s3://b/usage`, `2026-*/*.csv`): the folder before the
/// first glob character, and the rest as a pattern over keys below it.
fn split_glob(url: &str) -> (&str, &str) {
    let first_glob = url.find(['*', '?', '[']).unwrap_or(url.len());
    let cut = url[..first_glob].rfind('/').unwrap_or(0);
    (&url[..cut], url.get(cut + 1..).unwrap_or_default())
}

/// The object's local copy, made if it is not there yet: written under a temporary name
/// and renamed, so a copy cut short is never taken for a whole one.
async fn copy_here(root: &StoreLocation, object: &ObjectMeta, object_url: &str) -> Result<PathBuf, String> {
    let version = format!(
        "{object_url}\n{}\n{}",
        object.size,
        object.e_tag.as_deref().unwrap_or(&object.last_modified.to_rfc3339())
    );
    let key = &crate::batches::fingerprint(&[("object", &version)])[..16];
    let (scheme, rest) = object_url.split_once("://").unwrap_or(("s3", object_url));
    let local = cache_root().join(key).join(scheme).join(rest);
    if std::fs::metadata(&local).is_ok_and(|m| m.len() == object.size) {
        return Ok(local);
    }
    let dir = local.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let partial = dir.join(format!(
        ".{}.{}.partial",
        local.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    let written = async {
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::File::create(&partial).await.map_err(|e| e.to_string())?;
        let mut body = root
            .store()
            .get(&ObjectPath::from(object.location.as_ref()))
            .await
            .map_err(|e| e.to_string())?
            .into_stream();
        while let Some(chunk) = body.try_next().await.map_err(|e| e.to_string())? {
            file.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        file.sync_all().await.map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &local).map_err(|e| format!("{}: {e}", local.display()))?;
    Ok(local)
}

/// What a user calls a file read from its local copy: the object's URL (copies are kept
/// as `<cache>/<version>/<scheme>/<bucket>/<key>`); any other path as it is.
pub fn shown_name(path: &Path) -> String {
    let Ok(rest) = path.strip_prefix(cache_root()) else {
        return path.display().to_string();
    };
    let mut parts = rest.iter().skip(1).map(|p| p.to_string_lossy());
    match (parts.next(), parts.collect::<Vec<_>>()) {
        (Some(scheme), key) if !key.is_empty() => format!("{scheme}://{}", key.join("/")),
        _ => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_glob_is_split_at_the_folder_before_its_first_wildcard() {
        assert_eq!(
            split_glob("s3://b/usage/2026-*/*.csv"),
            ("s3://b/usage", "2026-*/*.csv")
        );
        assert_eq!(split_glob("s3://b/usage/october.csv"), ("s3://b/usage", "october.csv"));
        assert_eq!(split_glob("s3://b/u[0-9].csv"), ("s3://b", "u[0-9].csv"));
    }

    #[test]
    fn a_local_copy_is_shown_as_its_objects_url() {
        let copy = cache_root().join("0123456789abcdef/s3/bucket/usage/october.csv");
        assert_eq!(shown_name(&copy), "s3://bucket/usage/october.csv");
        assert_eq!(shown_name(Path::new("/data/usage.csv")), "/data/usage.csv");
    }
}
