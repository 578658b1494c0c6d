"""A local HTTP server speaking the Hugging Face Hub protocol, to test publishing with the real client offline."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}
# What the real Hub writes in a new repo's first commit (abridged: this server never asks for LFS).
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
REPO = r"/(?P<ns>[^/]+)/(?P<name>[^/]+)"
API_REPO = r"^/api/(?P<kind>models|datasets|spaces)" + REPO


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's content: what the Hub reports as a regular file's `oid` and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Commit:
    """One commit: its id, message and the whole file tree it leaves behind."""

    oid: str
    title: str
    message: str
    date: str
    files: dict[str, bytes]


@dataclass
class Repo:
    """A repository held in memory, with its full commit history (oldest first)."""

    repo_id: str
    repo_type: str
    private: bool = False
    sdk: str | None = None
    variables: dict[str, dict] = field(default_factory=dict)
    secrets: dict[str, dict] = field(default_factory=dict)
    history: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.history[-1]

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]


class HubError(Exception):
    """An error answer: status, Hub error code (drives the client's exception class) and message."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: object) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class LocalHub:
    """The Hub's state plus the HTTP server that serves it; `start()` binds 127.0.0.1 on a free port."""

    def __init__(self, user: str = "me", orgs: tuple[str, ...] = ("my-org",), token: str | None = None) -> None:
        self.user = user
        self.orgs = orgs
        self.token = token or "hf_local" + secrets.token_hex(16)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.request_log: list[dict] = []
        self.url = ""
        self._faults: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> LocalHub:
        """Serve in a background thread until `stop()`."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Shut the server down and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """The stored repository (KeyError if absent)."""
        return self.repos[(repo_type, repo_id)]

    def commits(self, repo_id: str, repo_type: str = "model") -> list[Commit]:
        """Every commit of a repository, oldest first (the creation commit included)."""
        return list(self.repo(repo_id, repo_type).history)

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        """The files at the head of a repository."""
        return dict(self.repo(repo_id, repo_type).head.files)

    def fail_next(self, route: str = "commit", mode: str = "error", times: int = 1) -> None:
        """Make the next `times` requests to `route` fail: `mode="error"` answers 500, `"drop"` closes the socket."""
        if mode not in ("error", "drop"):
            raise ValueError(f"mode must be 'error' or 'drop', not {mode!r}")
        with self._lock:
            self._faults.extend([(route, mode)] * times)

    def seed(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model", private: bool = False) -> Repo:
        """Put a repository in place directly, e.g. a public base model owned by someone else."""
        with self._lock:
            repo = self._create(repo_id, repo_type, private)
            self._commit(repo, "Upload files", "", {**repo.head.files, **files})
            return repo

    def _create(self, repo_id: str, repo_type: str, private: bool, sdk: str | None = None) -> Repo:
        repo = Repo(repo_id, repo_type, private, sdk)
        self._commit(repo, "initial commit", "", {".gitattributes": GITATTRIBUTES})
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def _commit(self, repo: Repo, title: str, message: str, files: dict[str, bytes]) -> Commit:
        self._counter += 1
        tree = "".join(f"{path}\0{git_blob_sha1(data)}\n" for path, data in sorted(files.items()))
        parent = repo.history[-1].oid if repo.history else ""
        oid = hashlib.sha1(f"{parent}\n{title}\n{self._counter}\n{tree}".encode()).hexdigest()
        commit = Commit(oid, title, message, _now(), files)
        repo.history.append(commit)
        return commit

    def _take_fault(self, route: str) -> str | None:
        with self._lock:
            for i, (name, mode) in enumerate(self._faults):
                if name == route:
                    del self._faults[i]
                    return mode
        return None


def hub_env(hub: LocalHub, tmp_path: Path) -> dict[str, str]:
    """Environment for a subprocess whose huggingface_hub/transformers must talk to `hub` (and nothing else)."""
    prefixes = ("HF_", "HUGGING", "TRANSFORMERS_")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(prefixes) and "PROXY" not in k.upper()}
    root = Path(__file__).resolve().parents[1]
    env.update(
        HF_ENDPOINT=hub.url,
        HF_TOKEN=hub.token,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_UPDATE_DOWNLOAD_COUNTS="0",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_EVALUATE_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        # Anything not for the local hub goes to a dead proxy and fails fast instead of reaching the network.
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONPATH=os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p),
    )
    return env


def run_client(code: str, env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 300) -> dict:
    """Run `code` (with `args` in sys.argv[1:]) in a fresh interpreter; it must print a JSON object last, returned.

    Fails when the process fails or when the token in `env` appears anywhere in its output.
    """
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"client failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    token = env.get("HF_TOKEN")
    assert not token or token not in proc.stdout + proc.stderr, "the token leaked into the client's output"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def local_hub() -> Iterator[LocalHub]:
    """A fresh local Hub on 127.0.0.1 for one test."""
    hub = LocalHub().start()
    try:
        yield hub
    finally:
        hub.stop()


def _front_matter(content: str) -> dict:
    """The README's YAML metadata; raises HubError(400) the way the Hub's validator does."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
    if not match:
        return {}
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        raise HubError(400, f"Invalid YAML in metadata: {err}") from None
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise HubError(400, "Metadata must be a YAML mapping")
    errors = _model_index_errors(meta.get("model-index")) + _repo_id_errors(meta)
    if errors:
        raise HubError(400, "; ".join(errors))
    return meta


def _repo_id_errors(meta: dict) -> list[str]:
    """Like the Hub, refuse `base_model`/`datasets` entries that are not repo IDs (a local path, say)."""
    errors = []
    for key in ("base_model", "datasets"):
        values = meta.get(key)
        for value in values if isinstance(values, list) else [values] if values is not None else []:
            if not isinstance(value, str) or not re.fullmatch(r"([\w\-.]+/)?[\w\-.]+", value) or ".." in value:
                errors.append(f'"{key}" must hold Hub repo IDs, not {value!r}')
    return errors


def _model_index_errors(model_index: object) -> list[str]:
    if model_index is None:
        return []
    if not isinstance(model_index, list):
        return ['"model-index" must be a list']
    errors = []
    for i, entry in enumerate(model_index):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            errors.append(f'"model-index[{i}].name" is required')
            continue
        for j, result in enumerate(entry.get("results") or []):
            where = f"model-index[{i}].results[{j}]"
            if not isinstance(result, dict):
                errors.append(f'"{where}" must be a mapping')
                continue
            if not isinstance((result.get("task") or {}).get("type"), str):
                errors.append(f'"{where}.task.type" is required')
            dataset = result.get("dataset") or {}
            if not isinstance(dataset.get("type"), str) or not isinstance(dataset.get("name"), str):
                errors.append(f'"{where}.dataset" needs "type" and "name"')
            metrics = result.get("metrics")
            if not metrics or not all(isinstance(m, dict) and "type" in m and "value" in m for m in metrics):
                errors.append(f'"{where}.metrics" needs items with "type" and "value"')
    return errors


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to the Hub function that answers it; all state lives in the LocalHub."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; every answer carries Content-Length

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request log replaces stderr noise

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @property
    def hub(self) -> LocalHub:
        return self.server.hub  # type: ignore[attr-defined]

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        entry = {
            "method": method,
            "path": self.path,
            "headers": {k: v for k, v in self.headers.items() if k.lower() != "authorization"},
            "status": None,
        }
        with self.hub._lock:
            self.hub.request_log.append(entry)
        body = self._read_body()
        found = _route(method, url.path)
        if found is None:
            return self._send(entry, 404, {"error": f"No route for {method} {url.path}"})
        route, handler, args = found
        fault = self.hub._take_fault(route)
        if fault == "drop":
            entry["status"] = "dropped"
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault == "error":
            return self._send(entry, 500, {"error": "Internal Error - injected by the test"})
        try:
            with self.hub._lock:
                status, payload, headers = handler(self, method, args, parse_qs(url.query), body)
        except HubError as err:
            headers = {"X-Error-Message": err.message, **({"X-Error-Code": err.code} if err.code else {})}
            return self._send(entry, err.status, {"error": err.message, **err.extra}, headers)
        except Exception as err:  # a bug here must reach the client as a 500, not as a dropped connection
            return self._send(entry, 500, {"error": f"local hub bug: {err!r}"})
        return self._send(entry, status, payload, headers)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, entry: dict, status: int, payload: object, headers: dict | None = None) -> None:
        entry["status"] = status
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        headers.setdefault("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # -- auth ---------------------------------------------------------------------------------------------------------

    def _user(self) -> str | None:
        """The caller's user name, None when anonymous; a wrong token is a 401 like on the Hub."""
        auth = self.headers.get("Authorization")
        if auth is None:
            return None
        if auth != f"Bearer {self.hub.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.hub.user

    def _writer(self, namespace: str) -> str:
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to write to the Hub")
        if namespace not in (user, *self.hub.orgs):
            raise HubError(403, f'You don\'t have the rights to write to the namespace "{namespace}"')
        return user

    def _readable(self, args: dict) -> Repo:
        repo = self.hub.repos.get((API_KINDS[args["kind"]], f"{args['ns']}/{args['name']}"))
        user = self._user()
        if repo is None or (repo.private and repo.namespace not in (user, *self.hub.orgs)):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _writable(self, args: dict) -> Repo:
        self._writer(args["ns"])
        return self._readable(args)

    @staticmethod
    def _revision(repo: Repo, rev: str | None) -> Commit:
        if rev in (None, "main"):
            return repo.head
        for commit in repo.history:
            if commit.oid == rev:
                return commit
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    # -- endpoints ----------------------------------------------------------------------------------------------------

    def whoami(self, method: str, args: dict, query: dict, body: bytes) -> tuple:
        user = self._user()
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        orgs = [{"name": org, "type": "org", "roleInOrg": "write"} for org in self.hub.orgs]
        auth = {"type": "access_token", "accessToken": {"displayName": "local-test", "role": "write"}}
        return 200, {"type": "user", "id": "0" * 24, "name": user, "fullname": user, "orgs": orgs, "auth": auth}, {}

    def create_repo(self, method: str, args: dict, query: dict, body: bytes) -> tuple:
        req = json.loads(body)
        repo_type = req.get("type") or "model"
        namespace = req.get("organization") or self._user() or ""
        self._writer(namespace)
        repo_id = f"{namespace}/{req['name']}"
        url = f"{self.hub.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            # The url travels with the 409: create_repo(exist_ok=True) returns it.
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        private = req.get("visibility", "public") == "private" or bool(req.get("private"))
        if repo_type == "space" and not req.get("sdk"):
            raise HubError(400, "A Space needs an sdk")
        repo = self.hub._create(repo_id, repo_type, private, req.get("sdk"))
        for item in req.get("variables") or []:
            repo.variables[item["key"]] = {"value": item["value"], "description": item.get("description")}
        for item in req.get("secrets") or []:
            repo.secrets[item["key"]] = {"value": item["value"], "description": item.get("description")}
        return 200, {"url": url, "name": repo_id, "id": "0" * 24}, {}

    def delete_repo(self, method: str, args: dict, query: dict, body: bytes) -> tuple:
        req = json.loads(body)
        namespace = req.get("organization") or self._user() or ""
        self._writer(namespace)
        key = (req.get("type") or "model", f"{namespace}/{req['name']}")
        if key not in self.hub.repos:
            raise HubError(404, "Repository not found", "RepoNotFound")
        del self.hub.repos[key]
        return 200, {}, {}

    def validate_yaml(self, method: str, args: dict, query: dict, body: bytes) -> tuple:
        try:
            _front_matter(json.loads(body).get("content", ""))
        except HubError as err:
            return 400, {"errors": [{"message": err.message}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def repo_info(self, method: str, args: dict, query: dict, body: bytes) -> tuple:
        repo = self._readable(args)
        commit = self._revision(repo, args.get("rev"))
        card = _front_matter(commit.files["README.md"].decode()) if "README.md" in commit.files else {}
        info = {
            "id": repo.repo_id,
            "author": repo.namespace,
            "sha": commit.oid,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "lastModified": commit.date,
            "createdAt": repo.history[0].date,
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            "tags": list(card.get("tags") or []),
            "cardData": card,
            "downloads": 0,
            "likes": 0,
        }
        if repo.repo_type == "model":
            info.update(
                modelId=repo.repo_id, pipeline_tag=card.get("pipeline_tag"), library_name=card.get("library_name")
            )
        if repo.repo_type == "space":
            info["sdk"] = repo.sdk
        return 200, info, {}

    def preupload(self, method: str, args: dict, query: dict, body: bytes) -> tuple:
        repo = self._writable(args)
        head = self._revision(repo, args["rev"]).files
        files = [
            {
                "path": item["path"],
                "uploadMode": "regular",  # all bytes then travel inside the commit: no LFS, no Xet
                "shouldIgnore": False,
                "oid": git_blob_sha1(head[item["path"]]) if item["path"] in head else None,
            }
            for item in json.loads(body)["files"]
        ]
        return 200, {"files": files, "commitOid": repo.head.oid}, {}

    def commit(self, method: str, args: dict, query: dict, body: bytes) -> tuple:
        repo = self._writable(args)
        if args["rev"] != "main":
            raise HubError(
                404, f"Invalid rev id: {args['rev']} (the local hub commits to main only)", "RevisionNotFound"
            )
        if query.get("create_pr", ["0"])[0] not in ("0", "false", "False"):
            raise HubError(501, "The local hub does not support pull requests")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != repo.head.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.head.files)
        for op in lines[1:]:
            path = op["value"]["path"].strip("/")
            if op["key"] == "file":
                files[path] = base64.b64decode(op["value"]["content"])
            elif op["key"] == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif op["key"] == "deletedFolder":
                files = {p: data for p, data in files.items() if not p.startswith(path + "/")}
            else:
                raise HubError(400, f"The local hub does not support {op['key']!r} operations")
        commit = self.hub._commit(repo, header.get("summary", ""), header.get("description", ""), files)
        url = f"{self.hub.url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        return 200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}, {}

    def tree(self, method: str, args: dict, query: dict, body: bytes) -> tuple:
        repo = self._readable(args)
        commit = self._revision(repo, args["rev"])
        prefix = args.get("path", "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        expand = query.get("expand", ["false"])[0].lower() == "true"
        below = [p for p in commit.files if not prefix or p.startswith(prefix + "/")]
        if prefix and not below:
            raise HubError(404, f"Entry not found: {prefix}", "EntryNotFound")
        paths = set()
        for path in below:
            parts = path[len(prefix) + 1 if prefix else 0 :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, depth + 1):
                paths.add("/".join(filter(None, [prefix, *parts[:i]])))
        return 200, [self._entry(commit, p, expand) for p in sorted(paths)], {}

    def paths_info(self, method: str, args: dict, query: dict, body: bytes) -> tuple:
        repo = self._readable(args)
        commit = self._revision(repo, args["rev"])
        form = parse_qs(body.decode())
        expand = form.get("expand", ["False"])[0].lower() == "true"
        wanted = [p.strip("/") for p in form.get("paths", [])]
        found = [p for p in wanted if p in commit.files or any(f.startswith(p + "/") for f in commit.files)]
        return 200, [self._entry(commit, p, expand) for p in found], {}

    def list_commits(self, method: str, args: dict, query: dict, body: bytes) -> tuple:
        repo = self._readable(args)
        head = self._revision(repo, args["rev"])
        history = repo.history[: repo.history.index(head) + 1]
        items = [
            {"id": c.oid, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": self.hub.user}]}
            for c in reversed(history)
        ]
        return 200, items, {}

    def space_settings(self, method: str, args: dict, query: dict, body: bytes) -> tuple:
        repo = self._writable({**args, "kind": "spaces"})
        store = repo.variables if args["what"] == "variables" else repo.secrets
        if method == "POST":
            req = json.loads(body)
            store[req["key"]] = {"value": req["value"], "description": req.get("description"), "updatedAt": _now()}
        elif method == "DELETE":
            store.pop(json.loads(body)["key"], None)
        if args["what"] == "secrets":  # secret values are write-only
            return (
                200,
                {k: {"description": v.get("description"), "updatedAt": v.get("updatedAt")} for k, v in store.items()},
                {},
            )
        return 200, store, {}

    def resolve(self, method: str, args: dict, query: dict, body: bytes) -> tuple:
        repo = self._readable({**args, "kind": args.get("prefix", "models")})
        commit = self._revision(repo, args["rev"])
        path = args["path"]
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        data = commit.files[path]
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{git_blob_sha1(data)}"',
            "Accept-Ranges": "bytes",
        }
        status, data = self._range(data, headers)
        return status, data, headers

    def _range(self, data: bytes, headers: dict) -> tuple[int, bytes]:
        spec = self.headers.get("Range")
        if not spec:
            return 200, data
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", spec.strip())
        if not match or match.groups() == ("", ""):
            raise HubError(416, f"Unsupported Range: {spec}")
        first, last = match.groups()
        start = int(first) if first else max(len(data) - int(last), 0)
        end = min(int(last), len(data) - 1) if first and last else len(data) - 1
        if start >= len(data) or start > end:
            headers["Content-Range"] = f"bytes */{len(data)}"
            raise HubError(416, "Requested range not satisfiable")
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return 206, data[start : end + 1]

    def _entry(self, commit: Commit, path: str, expand: bool) -> dict:
        last = {"lastCommit": {"id": commit.oid, "title": commit.title, "date": commit.date}} if expand else {}
        if path in commit.files:
            data = commit.files[path]
            return {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data), **last}
        oid = hashlib.sha1(f"{commit.oid}\0{path}".encode()).hexdigest()
        return {"type": "directory", "path": path, "oid": oid, **last}


Handler = Callable[[_Handler, str, dict, dict, bytes], tuple]
ROUTES: list[tuple[tuple[str, ...], str, str, Handler]] = [
    (("GET",), r"^/api/whoami-v2$", "whoami", _Handler.whoami),
    (("POST",), r"^/api/repos/create$", "create", _Handler.create_repo),
    (("DELETE",), r"^/api/repos/delete$", "delete", _Handler.delete_repo),
    (("POST",), r"^/api/validate-yaml$", "validate_yaml", _Handler.validate_yaml),
    (("GET",), API_REPO + r"(?:/revision/(?P<rev>[^/]+))?$", "repo_info", _Handler.repo_info),
    (("POST",), API_REPO + r"/preupload/(?P<rev>[^/]+)$", "preupload", _Handler.preupload),
    (("POST",), API_REPO + r"/commit/(?P<rev>[^/]+)$", "commit", _Handler.commit),
    (("GET",), API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree", _Handler.tree),
    (("POST",), API_REPO + r"/paths-info/(?P<rev>[^/]+)$", "paths_info", _Handler.paths_info),
    (("GET",), API_REPO + r"/commits/(?P<rev>[^/]+)$", "commits", _Handler.list_commits),
    (
        ("GET", "POST", "DELETE"),
        r"^/api/spaces" + REPO + r"/(?P<what>variables|secrets)$",
        "space",
        _Handler.space_settings,
    ),
    (
        ("GET", "HEAD"),
        r"^(?:/(?P<prefix>datasets|spaces))?" + REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$",
        "resolve",
        _Handler.resolve,
    ),
]


def _route(method: str, path: str) -> tuple[str, Handler, dict[str, str]] | None:
    """The route name, handler and unquoted URL arguments for a request, None when nothing matches."""
    for methods, pattern, name, handler in ROUTES:
        match = re.match(pattern, path)
        if match and method in methods:
            return name, handler, {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
    return None
