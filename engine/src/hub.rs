//! Where `--model` points: a model folder on disk, a Hugging Face hub cache folder
//! (`models--ORG--NAME`), or a hub id (`ORG/NAME`) looked up in the local hub cache as
//! `huggingface_hub` lays it out — `models--ORG--NAME/refs/main` holds a revision whose files sit
//! in `snapshots/REV/` (symlinks into `blobs/`, which the file system follows for us).
//!
//! Glimpse never downloads: a model missing from disk is an error that lists every place looked,
//! so the user can fetch it with `huggingface-cli download` and run again. This module only finds
//! folders; it does not read or check what is inside them ([`crate::model::Model::load`] does).

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// The help of every optional `--model` flag, so each subcommand states the same lookup.
pub const MODEL_FLAG_HELP: &str = "Model: a Hugging Face model folder (config.json, safetensors, \
     tokenizer.json), a hub cache folder `models--ORG--NAME`, or a hub id `ORG/NAME` found in the \
     local hub cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub; revision \
     refs/main). No download: fetch hub models first with `huggingface-cli download ORG/NAME`. \
     Default: the bundled stories260K";

/// The revision a hub id resolves to (`refs/main`, as `huggingface_hub` writes it).
const REVISION: &str = "main";

/// The local Hugging Face hub cache: the folder holding `models--ORG--NAME` folders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    dir: PathBuf,
}

impl HubCache {
    /// A cache at `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache `huggingface_hub` uses: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. `None` when none of
    /// these variables (`HOME` included) is set.
    pub fn from_env() -> Option<Self> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let dir = var("HF_HUB_CACHE")
            .or_else(|| var("HF_HOME").map(|home| home.join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface/hub")))
            .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))?;
        Some(Self::at(dir))
    }

    /// The cache folder of a hub id: `models--ORG--NAME`.
    fn repo_dir(&self, id: &HubId) -> PathBuf {
        self.dir.join(format!("models--{}--{}", id.org, id.name))
    }
}

/// A model folder found on disk and the name it is known by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLocation {
    /// The folder holding `config.json`, the weights and the tokenizer.
    pub dir: PathBuf,
    /// `ORG/NAME` for a hub model, else the folder's own name.
    pub name: String,
}

/// An `ORG/NAME` hub id.
struct HubId<'a> {
    org: &'a str,
    name: &'a str,
}

impl<'a> HubId<'a> {
    /// `ORG/NAME`: two non-empty parts, neither `.` nor `..`; anything else is a path.
    fn parse(spec: &'a str) -> Option<Self> {
        let (org, name) = spec.split_once('/')?;
        let part_ok = |p: &str| !p.is_empty() && p != "." && p != ".." && !p.contains('/');
        (part_ok(org) && part_ok(name)).then_some(Self { org, name })
    }

    /// The id of a cache folder named `models--ORG--NAME`.
    fn of_cache_folder(folder: &'a str) -> Option<Self> {
        let (org, name) = folder.strip_prefix("models--")?.split_once("--")?;
        Some(Self { org, name })
    }

    fn full(&self) -> String {
        format!("{}/{}", self.org, self.name)
    }
}

/// Finds the model `spec` names. An existing folder wins: a `models--ORG--NAME` cache folder
/// resolves to its `refs/main` snapshot, any other folder is the model itself. Otherwise an
/// `ORG/NAME`-shaped `spec` is looked up in `cache`.
///
/// Fails with [`EngineError::ModelNotFound`] naming every place looked; nothing is downloaded.
pub fn resolve_model(spec: &Path, cache: Option<&HubCache>) -> Result<ModelLocation> {
    let text = spec.to_string_lossy();
    if spec.is_dir() {
        let folder = spec.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(id) = folder.as_deref().and_then(HubId::of_cache_folder) {
            return snapshot(spec, &id, vec![spec.display().to_string()]);
        }
        let name = folder.unwrap_or_else(|| "model".into());
        return Ok(ModelLocation {
            dir: spec.to_path_buf(),
            name,
        });
    }
    let mut looked = vec![format!("{} (no such folder)", spec.display())];
    let Some(id) = HubId::parse(&text) else {
        return Err(not_found(&text, "ORG/NAME", looked));
    };
    match cache {
        Some(cache) => snapshot(&cache.repo_dir(&id), &id, looked),
        None => {
            looked.push("no hub cache: HF_HUB_CACHE, HF_HOME and HOME are all unset".into());
            Err(not_found(&text, &text, looked))
        }
    }
}

/// [`resolve_model`] against the cache of [`HubCache::from_env`]: what every `--model` flag calls.
pub fn find_model(spec: &Path) -> Result<ModelLocation> {
    resolve_model(spec, HubCache::from_env().as_ref())
}

/// The snapshot `repo/refs/main` names, inside `repo/snapshots/`.
fn snapshot(repo: &Path, id: &HubId, mut looked: Vec<String>) -> Result<ModelLocation> {
    let refs = repo.join("refs").join(REVISION);
    let revision = match std::fs::read_to_string(&refs) {
        Ok(text) => text.trim().to_string(),
        Err(e) => {
            looked.push(format!("{} ({e})", refs.display()));
            return Err(not_found(&id.full(), &id.full(), looked));
        }
    };
    let dir = repo.join("snapshots").join(&revision);
    if !dir.is_dir() {
        looked.push(format!(
            "{} (named by {}; no such folder)",
            dir.display(),
            refs.display()
        ));
        return Err(not_found(&id.full(), &id.full(), looked));
    }
    tracing::info!(model = %id.full(), revision = %revision, dir = %dir.display(), "model found in the hub cache");
    Ok(ModelLocation {
        dir,
        name: id.full(),
    })
}

fn not_found(model: &str, hub_id: &str, looked: Vec<String>) -> EngineError {
    EngineError::ModelNotFound {
        model: model.to_string(),
        hub_id: hub_id.to_string(),
        looked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REV: &str = "0123abcd";

    /// A hub cache holding `models--ORG--NAME` as `huggingface_hub` writes it: blobs, `refs/main`
    /// and a snapshot of symlinks into the blobs.
    fn fake_cache(root: &Path, org: &str, name: &str) -> HubCache {
        let repo = root.join(format!("models--{org}--{name}"));
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(REV)).unwrap();
        std::fs::write(repo.join("refs/main"), REV).unwrap();
        std::fs::write(repo.join("blobs/c0ffee"), "{}").unwrap();
        std::os::unix::fs::symlink(
            "../../blobs/c0ffee",
            repo.join("snapshots").join(REV).join("config.json"),
        )
        .unwrap();
        HubCache::at(root)
    }

    fn message(err: EngineError) -> String {
        err.to_string()
    }

    #[test]
    fn a_hub_id_resolves_to_the_snapshot_refs_main_names() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = fake_cache(tmp.path(), "Org", "Tiny-1M");
        let found = resolve_model(Path::new("Org/Tiny-1M"), Some(&cache)).unwrap();
        assert_eq!(found.name, "Org/Tiny-1M");
        assert_eq!(
            found.dir,
            tmp.path().join("models--Org--Tiny-1M/snapshots").join(REV)
        );
        let config = std::fs::read_to_string(found.dir.join("config.json")).unwrap();
        assert_eq!(config, "{}", "the snapshot's symlink reaches its blob");
    }

    #[test]
    fn a_cache_folder_given_directly_resolves_to_its_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        fake_cache(tmp.path(), "Org", "Tiny-1M");
        let folder = tmp.path().join("models--Org--Tiny-1M");
        let found = resolve_model(&folder, None).unwrap();
        assert_eq!(found.name, "Org/Tiny-1M");
        assert_eq!(found.dir, folder.join("snapshots").join(REV));
    }

    #[test]
    fn an_existing_local_folder_wins_over_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = fake_cache(&tmp.path().join("cache"), "Org", "Tiny-1M");
        let local = tmp.path().join("Org/Tiny-1M");
        std::fs::create_dir_all(&local).unwrap();
        let found = resolve_model(&local, Some(&cache)).unwrap();
        assert_eq!(found.dir, local);
        assert_eq!(found.name, "Tiny-1M");
    }

    #[test]
    fn a_missing_id_names_every_place_looked_and_says_nothing_is_downloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = HubCache::at(tmp.path());
        let err = message(resolve_model(Path::new("Org/Absent"), Some(&cache)).unwrap_err());
        assert!(err.contains("Org/Absent (no such folder)"), "{err}");
        let refs = tmp.path().join("models--Org--Absent/refs/main");
        assert!(err.contains(&refs.display().to_string()), "{err}");
        assert!(err.contains("never downloads"), "{err}");
        assert!(err.contains("huggingface-cli download Org/Absent"), "{err}");
    }

    #[test]
    fn a_ref_naming_a_missing_snapshot_is_refused_naming_both() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = fake_cache(tmp.path(), "Org", "Tiny-1M");
        let repo = tmp.path().join("models--Org--Tiny-1M");
        std::fs::write(repo.join("refs/main"), "feedface\n").unwrap();
        let err = message(resolve_model(Path::new("Org/Tiny-1M"), Some(&cache)).unwrap_err());
        assert!(err.contains("snapshots/feedface"), "{err}");
        assert!(err.contains("refs/main"), "{err}");
    }

    #[test]
    fn a_missing_path_that_is_no_hub_id_is_not_looked_up_in_the_cache() {
        let err = message(resolve_model(Path::new("./no/such/model"), None).unwrap_err());
        assert!(err.contains("./no/such/model (no such folder)"), "{err}");
        assert!(!err.contains("models--"), "{err}");
    }

    #[test]
    fn only_two_part_names_are_hub_ids() {
        for id in ["Org/Name", "HuggingFaceTB/SmolLM2-135M"] {
            assert!(HubId::parse(id).is_some(), "{id}");
        }
        for path in ["model", "/abs/path", "a/b/c", "../x", "./x", "x/"] {
            assert!(HubId::parse(path).is_none(), "{path}");
        }
    }
}
