"""Hub ids: loaded offline from a hub cache laid out as huggingface_hub lays it out; push_to_hub with a mock API."""
import hashlib
import os
import sys
from pathlib import Path

import pytest
import torch

from maskspec_fast import Classifier, Model, ModelConfig

pytest.importorskip("huggingface_hub")


def tiny(**kw):
    return ModelConfig.from_preset("tiny", depth=2, decoder_depth=1, frames=256, **kw)


def put_in_cache(cache: Path, repo_id: str, files_dir: Path, commit: str, ref: str | None = "main") -> Path:
    """``models--ORG--NAME/{blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>, refs/<ref>}``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for f in sorted(files_dir.iterdir()):
        data = f.read_bytes()
        digest = hashlib.sha256(data).hexdigest()  # LFS blobs are named by sha256
        (repo / "blobs" / digest).write_bytes(data)
        os.symlink(os.path.join("..", "..", "blobs", digest), snap / f.name)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _same(m1, m2):
    x, noise = torch.randn(2, 128, 256), torch.rand(2, 128)
    return torch.equal(m1(x, noise=noise)[0], m2(x, noise=noise)[0])


def test_repo_id_loads_offline_from_cache_with_revisions(tmp_path, offline_cache):
    v1, v2 = Model(tiny()), Model(tiny())
    v1.save_pretrained(tmp_path / "v1")
    v2.save_pretrained(tmp_path / "v2")
    c1, c2 = "a" * 40, "b" * 40
    put_in_cache(offline_cache, "maskspec/tiny-as2m", tmp_path / "v1", c1, "main")
    put_in_cache(offline_cache, "maskspec/tiny-as2m", tmp_path / "v2", c2, "v2")
    assert _same(Model.from_pretrained("maskspec/tiny-as2m"), v1)
    assert _same(Model.from_pretrained("maskspec/tiny-as2m", revision="v2"), v2)
    assert _same(Model.from_pretrained("maskspec/tiny-as2m", revision=c2), v2)
    clf = Classifier.from_pretrained("maskspec/tiny-as2m", num_classes=3)
    assert clf.head.out_features == 3 and torch.equal(clf.blocks[0].attn.qkv.weight, v1.blocks[0].attn.qkv.weight)


def test_classifier_repo_and_local_dir_still_work(tmp_path, offline_cache):
    clf = Classifier(tiny(), num_classes=4).eval()
    clf.save_pretrained(tmp_path / "clf")
    put_in_cache(offline_cache, "org/clf", tmp_path / "clf", "c" * 40)
    x = torch.randn(2, 128, 256)
    assert torch.equal(Classifier.from_pretrained("org/clf").eval()(x), clf(x))
    assert torch.equal(Classifier.from_pretrained(tmp_path / "clf").eval()(x), clf(x))


def test_hf_home_locates_the_cache(tmp_path, monkeypatch):
    m = Model(tiny())
    m.save_pretrained(tmp_path / "m")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    put_in_cache(tmp_path / "home" / "hub", "org/m", tmp_path / "m", "f" * 40)
    assert _same(Model.from_pretrained("org/m"), m)


def test_unresolvable_ids_are_clear_errors(tmp_path, offline_cache):
    Model(tiny()).save_pretrained(tmp_path / "m")
    put_in_cache(offline_cache, "org/m", tmp_path / "m", "d" * 40)
    with pytest.raises(FileNotFoundError, match=r"'org/missing'.*offline.*not in the hub cache"):
        Model.from_pretrained("org/missing")
    with pytest.raises(FileNotFoundError, match=r"repo 'org/m' at revision 'nope'"):
        Model.from_pretrained("org/m", revision="nope")
    with pytest.raises(FileNotFoundError, match="config.json: missing.*not a Hugging Face Hub repo id"):
        Model.from_pretrained(tmp_path / "not" / "here")
    with pytest.raises(ValueError, match="revision"):
        Model.from_pretrained(tmp_path / "m", revision="v2")


def test_cache_with_foreign_files_is_refused(tmp_path, offline_cache):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.md").write_text("not ours")
    put_in_cache(offline_cache, "org/other", tmp_path / "other", "e" * 40)
    with pytest.raises(FileNotFoundError, match="lacks config.json"):
        Model.from_pretrained("org/other")


def test_push_to_hub_uploads_what_from_pretrained_reads(tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kw):
            calls["create"] = (repo_id, kw)

        def create_branch(self, repo_id, *, branch, **kw):
            calls["branch"] = (repo_id, branch, kw.get("exist_ok"))

        def upload_folder(self, *, repo_id, folder_path, **kw):
            calls["upload"] = (repo_id, kw)
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            Model.from_pretrained(folder_path)  # what was uploaded loads
            calls["card"] = (Path(folder_path) / "README.md").read_text()
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/123"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = Model(tiny()).push_to_hub("me/maskspec-tiny", private=True, revision="dev", token="hf_x")
    assert url.endswith("/me/maskspec-tiny/commit/123")
    assert calls["files"] == ["README.md", "config.json", "model.safetensors"]
    assert calls["create"] == ("me/maskspec-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["upload"][1]["revision"] == "dev" and calls["token"] == "hf_x"
    assert calls["branch"] == ("me/maskspec-tiny", "dev", True)
    assert "Model.from_pretrained('me/maskspec-tiny')" in calls["card"]
    with pytest.raises(ValueError, match="repo id"):
        Model(tiny()).push_to_hub("no-slash")


def test_missing_huggingface_hub_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"maskspec_fast\[hub\]"):
        Model.from_pretrained("org/whatever")
