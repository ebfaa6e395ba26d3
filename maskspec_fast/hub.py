"""Hugging Face Hub: resolve ``"org/name"`` to a local ``save_pretrained`` directory, and upload one.

Needs the optional extra ``pip install "maskspec_fast[hub]"`` (``huggingface_hub``); a local directory never does.
A hub repo holds exactly what ``save_pretrained`` writes (``config.json`` + ``model.safetensors``) plus a model
card. Offline use (``HF_HUB_OFFLINE=1``) reads the hub cache (``HF_HUB_CACHE``, or ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``), laid out as huggingface_hub lays it out:
``models--ORG--NAME/refs/main`` (a commit hash) and ``models--ORG--NAME/snapshots/<hash>/{config.json,...}``.
The environment is read at each call, so it can be set after import.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .serialization import CONFIG_NAME, WEIGHTS_NAME

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
INSTALL_HINT = 'the Hugging Face Hub needs huggingface_hub: pip install "maskspec_fast[hub]"'


def _hf() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants  # noqa: F401  (submodules the lazy package does not expose)
        import huggingface_hub.errors  # noqa: F401
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return huggingface_hub


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None  # huggingface_hub's default


def is_repo_id(name: str | os.PathLike) -> bool:
    """``"org/name"`` (one slash, hub-legal characters) that is not an existing local path."""
    s = os.fspath(name)
    return bool(_REPO_ID.match(s)) and not os.path.exists(s)


def resolve_pretrained(name: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory as it is; a hub repo id -> the snapshot directory (downloaded or from the cache).

    Raises FileNotFoundError for a path that is neither, and for a repo id (or revision) that cannot be
    resolved, with the reason (not found, offline and not cached, no network) instead of the client's traceback."""
    p = Path(os.fspath(name))
    if p.is_dir():
        if revision is not None:
            raise ValueError(f"{p}: revision={revision!r} applies to hub repo ids, not to a local directory")
        return p
    if not is_repo_id(name):
        raise FileNotFoundError(
            f"{p / CONFIG_NAME}: missing ({p} is no save_pretrained directory, and not a Hugging Face Hub repo id "
            "of the form 'org/name')"
        )
    hf = _hf()
    errors = hf.errors
    repo_id = os.fspath(name)
    where = (f"{repo_id!r} is no local directory; as a Hugging Face Hub repo {repo_id!r}"
             + (f" at revision {revision!r}" if revision else ""))
    try:
        snap = hf.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=_cache_dir(),
            local_files_only=_offline(),
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"],
        )
    except errors.RevisionNotFoundError as e:
        raise FileNotFoundError(f"{where}: no such revision") from e
    except errors.RepositoryNotFoundError as e:
        raise FileNotFoundError(f"{where}: no such repository (or it is private: log in with `hf auth login`)") from e
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        mode = "offline (HF_HUB_OFFLINE=1)" if _offline() else "the hub could not be reached"
        raise FileNotFoundError(
            f"{where}: {mode} and not in the hub cache {_cache_dir() or hf.constants.HF_HUB_CACHE}; "
            "download it once online, or pass a local save_pretrained directory"
        ) from e
    except errors.HfHubHTTPError as e:
        raise FileNotFoundError(f"{where}: the hub refused the request ({e})") from e
    snap_dir = Path(snap)
    if not (snap_dir / CONFIG_NAME).is_file() or not (snap_dir / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{where}: resolved to {snap_dir}, which lacks {CONFIG_NAME} and/or {WEIGHTS_NAME} "
            "(not a maskspec_fast repo, or an incomplete cache)"
        )
    return snap_dir


def model_card(model: Any, repo_id: str) -> str:
    """A short README.md: what the model is and how to load it."""
    c = model.config
    kind = type(model).__name__
    extra = f", num_classes={model.num_classes}" if hasattr(model, "num_classes") else ""
    return (
        f"---\nlibrary_name: maskspec_fast\ntags:\n- audio\n- maskspec\n---\n\n# {repo_id}\n\n"
        f"A maskspec_fast `{kind}` (embed_dim={c.embed_dim}, depth={c.depth}, {c.n_mels} mel bins x {c.frames} frames"
        f"{extra}).\n\n```python\nfrom maskspec_fast import {kind}\nmodel = {kind}.from_pretrained({repo_id!r})\n```\n"
    )


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
) -> str:
    """``model.save_pretrained`` into a temporary folder, then create the repo (if needed) and upload the folder.

    Returns the commit URL. ``revision``: the branch to commit to (default ``main``)."""
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hugging Face Hub repo id of the form 'org/name'")
    hf = _hf()
    api = hf.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None:  # a branch that does not exist yet is created from main
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="maskspec_push_") as tmp:
        model.save_pretrained(tmp)
        (Path(tmp) / "README.md").write_text(model_card(model, repo_id))
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload {type(model).__name__} with maskspec_fast",
            create_pr=create_pr,
        )
    return str(getattr(info, "commit_url", info))


__all__ = ["INSTALL_HINT", "is_repo_id", "model_card", "push_to_hub", "resolve_pretrained"]
