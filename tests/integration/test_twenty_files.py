"""Twenty file upload over real HTTP: GraphQL multipart uploadFile, GET /files, attachment records."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from airflow_ascora_provider.hooks.twenty import UPLOAD_FILE_MUTATION, TwentyApiError, TwentyHook
from airflow_ascora_provider.sandbox.emulator import ServedApp
from airflow_ascora_provider.sandbox.twenty import DEFAULT_API_KEY, DEFAULT_MAX_FILE_BYTES, create_app

pytestmark = pytest.mark.timeout(30)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" + b"\xe2\xe3\xcf\xd3" * 300 + b"\n%%EOF\n"


@pytest.fixture(scope="module")
def served():
    with ServedApp(create_app(rate_limit=None, max_file_bytes=4096)) as server:
        yield server


@pytest.fixture
def hook(served):
    h = TwentyHook(base_url=served.url, api_key=DEFAULT_API_KEY, requests_per_minute=0)
    yield h
    h.close()


def _multipart(query: str, variables: dict, *, file_map: dict | None = None,
               files: dict | None = None) -> dict:
    data = {"operations": json.dumps({"query": query, "variables": variables}),
            "map": json.dumps({"0": ["variables.file"]} if file_map is None else file_map)}
    return {"data": data, "files": files if files is not None else {"0": ("a.txt", b"abc", "text/plain")}}


def test_upload_download_attach_and_destroy(hook, served):
    state = served.app.state.twenty
    png_path = hook.upload_file("job photo 1.png", PNG, content_type="image/png")
    pdf_path = hook.upload_file("signed-form.pdf", PDF, content_type="application/pdf")
    assert png_path.startswith("attachment/") and png_path.endswith("-job_photo_1.png")
    assert pdf_path.startswith("attachment/") and pdf_path.endswith("-signed-form.pdf")
    assert hook.download_file(png_path) == PNG
    assert hook.download_file(pdf_path) == PDF

    files = state.snapshot()["files"]
    assert files[png_path] == {"sha256": hashlib.sha256(PNG).hexdigest(), "size": len(PNG)}
    assert files[pdf_path]["size"] == len(PDF)

    person = hook.create_one("people", {"name": {"firstName": "Sam", "lastName": "Sparky"},
                                        "emails": {"primaryEmail": "sam.files@example.com"}})
    photo = hook.create_one("attachments", {"name": "job photo 1.png", "fullPath": png_path,
                                            "fileCategory": "IMAGE", "personId": person["id"]})
    form = hook.create_one("attachments", {"name": "signed-form.pdf", "fullPath": pdf_path,
                                           "fileCategory": "TEXT_DOCUMENT", "personId": person["id"]})
    linked = list(hook.find_many("attachments", filter={"personId": person["id"]}))
    assert {a["fullPath"] for a in linked} == {png_path, pdf_path}

    # Soft delete keeps the file (a restore must find it); destroy removes it.
    hook.delete("attachments", photo["id"], soft=True)
    assert hook.download_file(png_path) == PNG
    hook.delete("attachments", photo["id"])
    with pytest.raises(TwentyApiError) as info:
        hook.download_file(png_path)
    assert info.value.status == 404
    assert png_path not in state.snapshot()["files"]
    assert hook.download_file(pdf_path) == PDF  # the other attachment's file is untouched

    # Destroying the person only unlinks its attachment (SET NULL): the file stays.
    hook.delete("people", person["id"])
    assert hook.get("attachments", form["id"])["personId"] is None
    assert hook.download_file(pdf_path) == PDF
    hook.delete("attachments", form["id"])
    assert pdf_path not in state.snapshot()["files"]


def test_shared_path_survives_until_last_attachment(hook):
    path = hook.upload_file("shared.pdf", PDF, content_type="application/pdf")
    first = hook.create_one("attachments", {"name": "a", "fullPath": path})
    second = hook.create_one("attachments", {"name": "b", "fullPath": path})
    hook.delete("attachments", first["id"])
    assert hook.download_file(path) == PDF
    hook.delete("attachments", second["id"])
    with pytest.raises(TwentyApiError):
        hook.download_file(path)


def test_oversize_file_names_the_limit(hook, served):
    before = served.app.state.twenty.snapshot()["files"]
    assert hook.upload_file("exact.bin", b"x" * 4096)  # the limit itself is allowed
    with pytest.raises(TwentyApiError) as info:
        hook.upload_file("big.bin", b"x" * 4097)
    assert "4096 byte" in str(info.value) and "4 KB" in str(info.value)
    assert any("4096 byte size limit" in m for m in info.value.messages)
    after = served.app.state.twenty.snapshot()["files"]
    assert len(after) == len(before) + 1
    assert DEFAULT_MAX_FILE_BYTES == 100 * 1024 * 1024


def test_missing_or_wrong_auth_is_401(served):
    with httpx.Client(base_url=served.url) as api:
        upload = _multipart(UPLOAD_FILE_MUTATION, {"file": None, "fileFolder": "Attachment"})
        r = api.post("/graphql", **upload)
        assert r.status_code == 401
        assert r.json()["messages"] == ["Token invalid."]
        assert api.get("/files/attachment/anything.png").status_code == 401
    bad = TwentyHook(base_url=served.url, api_key="wrong", requests_per_minute=0)
    with pytest.raises(TwentyApiError) as info:
        bad.upload_file("a.png", PNG)
    assert info.value.status == 401
    with pytest.raises(TwentyApiError) as info:
        bad.download_file("attachment/x.png")
    assert info.value.status == 401
    bad.close()


def test_other_graphql_is_refused(served, hook):
    only = {"errors": [{"message": "Only uploadFile is emulated", "extensions": {"code": "BAD_USER_INPUT"}}]}
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    with httpx.Client(base_url=served.url, headers=headers) as api:
        r = api.post("/graphql", json={"query": "query { currentWorkspace { id } }"})
        assert r.status_code == 200 and r.json() == only
        r = api.post("/graphql", **_multipart("mutation { createPerson(data: {}) { id } }", {}))
        assert r.status_code == 200 and r.json() == only
        r = api.post("/graphql", **_multipart(
            "mutation u($file: Upload!) { uploadFile(file: $file, fileFolder: Attachment) } "
            "mutation other { deleteUser { id } }", {"file": None}))
        assert r.json() == only

        # Well-formed upload variants and their mistakes.
        r = api.post("/graphql", **_multipart(
            "mutation u($file: Upload!) { uploadFile(file: $file, fileFolder: Attachment) }", {"file": None}))
        assert r.json()["data"]["uploadFile"].startswith("attachment/")
        r = api.post("/graphql", **_multipart(
            "mutation u($file: Upload!, $f: FileFolder) { uploadFile(file: $file, fileFolder: $f) { path } }",
            {"file": None, "f": "Attachment"}))
        assert "must not have a selection" in r.json()["errors"][0]["message"]
        r = api.post("/graphql", **_multipart(UPLOAD_FILE_MUTATION, {"file": None, "fileFolder": "Nope"}))
        assert "FileFolder" in r.json()["errors"][0]["message"]
        variables = {"file": None, "fileFolder": "Attachment"}
        r = api.post("/graphql", **_multipart(UPLOAD_FILE_MUTATION, variables, file_map={}))
        assert 'non-null type "Upload!"' in r.json()["errors"][0]["message"]
        r = api.post("/graphql", **_multipart(UPLOAD_FILE_MUTATION, variables,
                                              files={"1": ("a.txt", b"abc", "text/plain")}))
        assert "does not contain" in r.json()["errors"][0]["message"]
        r = api.post("/graphql", data={"map": "{}"}, files={"0": ("a.txt", b"abc", "text/plain")})
        assert "operations" in r.json()["errors"][0]["message"]

    with pytest.raises(TwentyApiError, match="FileFolder"):
        hook.upload_file("a.png", PNG, folder="Nowhere")
