"""Bad input of every kind answers a clear OpenAI-shaped error with the right status, never a 500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.integration.conftest import CHAT_MODEL, Gateway, TenantKeys

CHAT = "/v1/chat/completions"
GOOD = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(resp: httpx.Response, status: int, param: str | None = None) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] is None or isinstance(error["code"], str)
    if param is not None:
        assert error["param"] == param
    assert resp.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[]", None),
        (b'"just a string"', None),
        (b'{"model": "x", "messages": [{"role": "user", "content": "\xff\xfe"}]}', None),
        (b'{"model": 1, "messages": []}', "model"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "x"}', "messages"),
        (b'{"model": "x", "messages": [{"content": "x"}]}', "messages[0].role"),
        (b'{"model": "x", "messages": "hello"}', "messages"),
        (b'{"model": "x", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"model": "x", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
        (b'{"model": "x", "messages": [{"role": "user"}], "max_tokens": 0}', "max_tokens"),
        (b'{"model": "x", "messages": [{"role": "user"}], "stream_options": 3}', "stream_options"),
        (b'{"model": "", "messages": [{"role": "user"}]}', "model"),
        (b'{"model": "x", "messages": [{"role": "user"}], "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),
        (b'{"model": "x", "messages": ' + b"[" * 50_000, None),
    ],
)
async def test_malformed_chat_bodies_are_400(
    gateway: Gateway, tenant: TenantKeys, body: bytes, param: str | None
) -> None:
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post(CHAT, content=body, headers={"content-type": "application/json"})
    error = assert_openai_error(resp, 400, param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": "x"}, "prompt"),
        ("/v1/completions", {"model": "x", "prompt": [1.5]}, "prompt"),
        ("/v1/completions", {"model": "x", "prompt": ["a", 1]}, "prompt"),
        ("/v1/embeddings", {"model": "x"}, "input"),
        ("/v1/embeddings", {"model": "x", "input": []}, "input"),
        ("/v1/embeddings", {"model": "x", "input": [{"a": 1}]}, "input"),
        ("/v1/embeddings", {"model": "x", "input": "a", "dimensions": 0}, "dimensions"),
    ],
)
async def test_malformed_completion_and_embedding_bodies(
    gateway: Gateway, tenant: TenantKeys, path: str, body: object, param: str
) -> None:
    async with gateway.http(tenant.user_key) as http:
        assert_openai_error(await http.post(path, json=body), 400, param)


async def test_body_over_the_limit_is_413_and_nothing_reaches_the_engine(
    gateway: Gateway, tenant: TenantKeys
) -> None:
    big = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x" * 100_000}]}
    gateway.chat.reset()
    async with gateway.http(tenant.user_key) as http:
        assert_openai_error(await http.post(CHAT, json=big), 413)

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: the limit holds on the bytes actually streamed
            for _ in range(100):
                yield b"x" * 1024

        assert_openai_error(await http.post(CHAT, content=chunks()), 413)
    assert gateway.chat.request_count == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_unsupported_content_type_is_415(gateway: Gateway, tenant: TenantKeys, content_type: str) -> None:
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post(CHAT, content=b'{"model": "x"}', headers={"content-type": content_type})
    assert_openai_error(resp, 415)


async def test_unknown_path_and_wrong_method(gateway: Gateway, tenant: TenantKeys) -> None:
    async with gateway.http(tenant.user_key) as http:
        err = assert_openai_error(await http.get("/v1/nothing-here"), 404)
        assert err["message"] == "Invalid URL (GET /v1/nothing-here)"
        assert_openai_error(await http.get(CHAT), 405)
        assert_openai_error(await http.put("/v1/models"), 405)
        assert_openai_error(await http.post("/admin/../../etc/passwd"), 404)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic abc", "Bearer sk-tg-short", "Bearer sk-tg-AAAAAAAAAAAA-" + "b" * 40,
     "Bearer ' OR '1'='1", "Bearer " + "x" * 5000],
)
async def test_missing_and_malformed_keys_are_401(gateway: Gateway, authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    async with gateway.http() as http:
        resp = await http.post(CHAT, json=GOOD, headers=headers)
    err = assert_openai_error(resp, 401)
    assert err["type"] == "authentication_error"
    if authorization:
        assert authorization.removeprefix("Bearer ").strip() not in str(err["message"]) or len(authorization) < 8


async def test_slow_client_body_times_out_with_408(gateway: Gateway, tenant: TenantKeys) -> None:
    timeout = gateway.services.settings.body_read_timeout

    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"model": "fake-chat", '
        await asyncio.sleep(timeout + 0.5)
        yield b'"messages": []}'

    async with gateway.http(tenant.user_key) as http:
        resp = await http.post(CHAT, content=trickle(), headers={"content-type": "application/json"})
    assert_openai_error(resp, 408)


async def test_client_request_id_is_reused_when_valid(gateway: Gateway, tenant: TenantKeys) -> None:
    async with gateway.http(tenant.user_key) as http:
        ok = await http.get("/v1/models", headers={"x-request-id": "trace-123.abc"})
        assert ok.headers["x-request-id"] == "trace-123.abc"
        hostile = await http.get("/v1/models", headers={"x-request-id": "bad id\twith spaces"})
        assert hostile.headers["x-request-id"].startswith("req_")


async def test_bad_usage_query_parameters(gateway: Gateway, tenant: TenantKeys) -> None:
    async with gateway.http(tenant.admin_key) as http:
        assert_openai_error(await http.get("/v1/usage", params={"start": "yesterday"}), 400, "start")
        reversed_range = {"start": "2026-02-01", "end": "2026-01-01"}
        assert_openai_error(await http.get("/v1/usage", params=reversed_range), 400, "end")
        assert_openai_error(await http.get("/v1/usage", params={"start": "2020-01-01", "end": "2026-01-01"}), 400)


@pytest.mark.parametrize(("path", "end"), [("/v1/usage", "0001-01-10"), ("/admin/usage", "0001-01-01")])
async def test_usage_range_before_the_calendar_begins_is_400(
    gateway: Gateway, tenant: TenantKeys, path: str, end: str
) -> None:
    http = gateway.http(tenant.admin_key) if path.startswith("/v1") else gateway.admin()
    async with http:
        assert_openai_error(await http.get(path, params={"end": end}), 400, "end")
        ok = await http.get(path, params={"start": "0001-01-01", "end": end})
        assert ok.status_code == 200, ok.text


TWO_KEYS = [("authorization", "Bearer sk-tg-AAAAAAAAAAAA-" + "a" * 40), ("authorization", "Bearer x")]


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", CHAT), ("POST", "/v1/embeddings"), ("GET", "/v1/models"), ("GET", "/v1/keys"),
     ("GET", "/admin/tenants"), ("GET", "/v1/usage")],
)
async def test_two_authorization_headers_are_400_everywhere(
    gateway: Gateway, tenant: TenantKeys, method: str, path: str
) -> None:
    for keys in ([tenant.admin_key, tenant.user_key], [tenant.user_key, tenant.admin_key]):
        headers = [("authorization", f"Bearer {key}") for key in keys]
        async with gateway.http() as http:
            resp = await http.request(method, path, json=GOOD if method == "POST" else None, headers=headers)
        error = assert_openai_error(resp, 400, "authorization")
        assert error["code"] == "duplicate_header"
        assert tenant.user_key not in resp.text and tenant.admin_key not in resp.text


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/models", "/docs/openapi.json"])
async def test_head_works_wherever_get_does(gateway: Gateway, tenant: TenantKeys, path: str) -> None:
    async with gateway.http(tenant.user_key) as http:
        got = await http.get(path)
        head = await http.head(path)
    assert head.status_code == got.status_code
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["x-request-id"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", CHAT, {"POST"}), ("PUT", "/v1/models", {"GET"}), ("DELETE", "/healthz", {"GET"}),
     ("HEAD", "/v1/embeddings", {"POST"})],
)
async def test_every_405_names_the_allowed_methods(
    gateway: Gateway, tenant: TenantKeys, method: str, path: str, allowed: set[str]
) -> None:
    async with gateway.http(tenant.user_key) as http:
        resp = await http.request(method, path)
    assert resp.status_code == 405
    if method != "HEAD":
        assert_openai_error(resp, 405)
    allow = {m.strip() for m in resp.headers["allow"].split(",")}
    assert allowed <= allow, allow
    assert "DELETE" not in allow or method != "DELETE"


async def test_an_oversized_body_sent_by_urllib_reads_the_413(gateway: Gateway, tenant: TenantKeys) -> None:
    import urllib.error
    import urllib.request

    # Past the limit (64 KiB here) and past what the sockets buffer, so urllib is still sending when the
    # gateway answers: before the fix it saw a broken pipe or a connection reset instead of the answer.
    body = b'{"model": "x", "prompt": "' + b"x" * (4 * 1024 * 1024) + b'"}'

    def post(path: str, key: str | None) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        request = urllib.request.Request(gateway.url + path, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    for path, key, status in [("/v1/completions", tenant.user_key, 413), ("/v1/completions", None, 401),
                              ("/admin/tenants", None, 401)]:
        for _ in range(5):
            got, answer = await asyncio.to_thread(post, path, key)
            assert got == status, answer
            assert b'"error"' in answer


async def test_docs_page_renders_offline_with_a_content_security_policy(gateway: Gateway) -> None:
    import re

    async with gateway.http() as http:
        page = await http.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp.split(
            "script-src")[1].split(";")[0]
        html = page.text
        assert "http://" not in html and "https://" not in html, "the page must not load anything from elsewhere"
        assert "<script>" not in html, "no inline script: the policy allows none"
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert len(assets) >= 4
        for asset in assets:
            resp = await http.get(asset)
            assert resp.status_code == 200, asset
            assert len(resp.content) > 100, asset
        start = await http.get("/docs/start.js")
        assert "/docs/openapi.json" in start.text
        assert (await http.get("/docs/openapi.json")).json()["info"]["title"] == "tenantgate"
