"""Per-tenant RAG end to end: real vLLM embeddings (all-MiniLM-L6-v2) and real chat, through the official SDK.

Tenant A's admin uploads the documents of ``tests/data/rag`` (a PDF among them, each carrying one invented
fact) with ``vector_stores.files.upload_and_poll`` and ``vector_stores.file_batches.upload_and_poll``; A's user
searches and asks a grounded question that only the PDF answers. What the engine was given is read back from
vLLM itself: ``return_prompt_text`` (a vLLM request field the gateway passes through) makes the engine answer
with the prompt it rendered (``prompt_text``: in the JSON answer, and on a stream's first chunk), so the test
checks that the PDF's passage reached the engine, not only that the gateway says so in ``sources``. Every bad
file ends ``failed`` with a ``last_error`` and leaves nothing searchable. Tenant B gets a 404 for every one of
A's ids, on every route that takes one.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import psycopg
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.conftest import CHAT_MODEL, GatewayProcess

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parents[1] / "data" / "rag"
GOOD = ("lighthouse.md", "glacier.html", "orchard.txt")  # attached in one batch; the PDF on its own
BAD = {  # file -> last_error.code
    "encrypted.pdf": "invalid_file",
    "truncated.pdf": "invalid_file",
    "scanned.pdf": "invalid_file",
    "blank.txt": "invalid_file",
    "picture.txt": "unsupported_file",
}
PDF_FACT = "boils a full tank of 1.7 litres of water in 94 seconds"
QUESTION = "How many seconds does the Zephyrine K7 kettle need to boil a full tank of water?"
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
SOURCE_FIELDS = {"index", "file_id", "filename", "vector_store_id", "chunk_index", "score", "text"}


def squash(text: str) -> str:
    """Whitespace removed: PDF text extraction breaks lines where it likes."""
    return re.sub(r"\s+", "", text)


def upload(name: str) -> tuple[str, bytes]:
    return name, (DATA / name).read_bytes()


@dataclass(frozen=True)
class RagTenant:
    id: str
    admin: openai.OpenAI  # a tenant admin key: uploads and attaches
    user: openai.OpenAI  # a tenant user key: reads, searches, chats


def new_tenant(gateway: GatewayProcess) -> RagTenant:
    with gateway.admin() as admin:
        created = admin.post("/admin/tenants", json={"name": f"e2e-rag-{secrets.token_hex(4)}"})
        assert created.status_code == 201, created.text
        tenant_id = created.json()["id"]
        keys = {}
        for role in ("admin", "user"):
            made = admin.post(f"/admin/tenants/{tenant_id}/keys", json={"role": role})
            assert made.status_code == 201, made.text
            keys[role] = made.json()["key"]
    return RagTenant(tenant_id, gateway.client(keys["admin"]), gateway.client(keys["user"]))


@dataclass(frozen=True)
class Corpus:
    tenant: RagTenant
    store_id: str
    pdf_id: str
    file_ids: dict[str, str]  # filename -> file id, the PDF included


@pytest.fixture(scope="module")
def tenant_a(gateway: GatewayProcess) -> RagTenant:
    return new_tenant(gateway)


@pytest.fixture(scope="module")
def tenant_b(gateway: GatewayProcess) -> RagTenant:
    return new_tenant(gateway)


@pytest.fixture(scope="module")
def corpus(tenant_a: RagTenant) -> Iterator[Corpus]:
    """A's store with the good documents, ingested by the real embedding engine."""
    client = tenant_a.admin
    store = client.vector_stores.create(name="e2e-rag", metadata={"suite": "e2e"})
    pdf = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=upload("kettle-spec.pdf"), poll_interval_ms=250, max_wait_seconds=300
    )
    assert pdf.status == "completed", pdf.last_error
    batch = client.vector_stores.file_batches.upload_and_poll(
        store.id, files=[upload(name) for name in GOOD], poll_interval_ms=250
    )
    assert batch.status == "completed"
    assert (batch.file_counts.completed, batch.file_counts.failed, batch.file_counts.total) == (3, 0, 3)
    names = {f.id: f.filename for f in client.files.list(purpose="assistants")}
    file_ids = {names[f.id]: f.id for f in client.vector_stores.files.list(vector_store_id=store.id)}
    assert set(file_ids) == {"kettle-spec.pdf", *GOOD}
    yield Corpus(tenant_a, store.id, pdf.id, file_ids)
    client.vector_stores.delete(store.id)


def sources_of(payload: Any) -> list[dict[str, Any]]:
    extra = payload.model_extra or {}
    sources = extra.get("sources")
    assert isinstance(sources, list), f"no sources in {payload!r}"
    return sources


def check_sources(sources: list[dict[str, Any]], corpus: Corpus) -> dict[str, Any]:
    """Every source well formed, numbered 1..n, of A's store; the PDF's one returned."""
    assert sources
    assert [s["index"] for s in sources] == list(range(1, len(sources) + 1))
    for source in sources:
        assert set(source) >= SOURCE_FIELDS, source
        assert source["vector_store_id"] == corpus.store_id
        assert source["file_id"] in corpus.file_ids.values()
    pdf = [s for s in sources if s["file_id"] == corpus.pdf_id]
    assert pdf, f"the PDF is not among the sources: {[s['filename'] for s in sources]}"
    assert pdf[0]["filename"] == "kettle-spec.pdf"
    assert squash(PDF_FACT) in squash(pdf[0]["text"])
    return pdf[0]


def test_upload_and_poll_report_the_files(corpus: Corpus) -> None:
    client = corpus.tenant.user
    store = client.vector_stores.retrieve(corpus.store_id)
    assert store.status == "completed"
    assert (store.file_counts.completed, store.file_counts.failed, store.file_counts.total) == (4, 0, 4)
    assert store.usage_bytes > 0
    pdf = client.vector_stores.files.retrieve(corpus.pdf_id, vector_store_id=corpus.store_id)
    assert pdf.status == "completed" and pdf.last_error is None
    assert pdf.chunking_strategy is not None and pdf.chunking_strategy.type == "static"
    assert pdf.chunking_strategy.static.max_chunk_size_tokens <= 254  # all-MiniLM-L6-v2: 256 minus [CLS] [SEP]
    parts = client.vector_stores.files.content(corpus.pdf_id, vector_store_id=corpus.store_id)
    text = "".join(part.text or "" for part in parts)
    assert squash(PDF_FACT) in squash(text)


def test_search_finds_the_pdf_fact(corpus: Corpus) -> None:
    page = corpus.tenant.user.vector_stores.search(corpus.store_id, query=QUESTION, max_num_results=3)
    assert page.data, "no results"
    top = page.data[0]
    assert (top.file_id, top.filename) == (corpus.pdf_id, "kettle-spec.pdf")
    assert squash(PDF_FACT) in squash("".join(c.text for c in top.content))
    assert all(r.file_id in corpus.file_ids.values() for r in page.data)
    for name, fact, query in (
        ("lighthouse.md", "once every 7.5 seconds", "How often does the Kestrel Point lamp turn?"),
        ("glacier.html", "412 metres", "How far did the Vantorr glacier retreat?"),
        ("orchard.txt", "23 varieties of quince", "How many kinds of quince grow in the Millbrook orchard?"),
    ):
        hits = corpus.tenant.user.vector_stores.search(corpus.store_id, query=query, max_num_results=1).data
        assert hits and hits[0].filename == name, (query, [h.filename for h in hits])
        assert squash(fact) in squash(hits[0].content[0].text)


def test_html_boilerplate_is_not_searchable(corpus: Corpus) -> None:
    """The text a reader sees: the page's script (and its tracking code) is not indexed."""
    page = corpus.tenant.user.vector_stores.search(corpus.store_id, query="tracking-code-7731", max_num_results=10)
    assert all("tracking-code-7731" not in c.text for r in page.data for c in r.content)


def test_grounded_chat_cites_the_pdf_and_the_engine_got_it(corpus: Corpus) -> None:
    client = corpus.tenant.user
    plain = client.chat.completions.create(
        model=CHAT_MODEL, messages=ASK, temperature=0, max_tokens=40, extra_body={"return_prompt_text": True}
    )
    grounded = client.chat.completions.create(
        model=CHAT_MODEL, messages=ASK, temperature=0, max_tokens=40,
        extra_body={"retrieval": {"vector_store_ids": [corpus.store_id], "max_num_results": 3},
                    "return_prompt_text": True},
    )  # fmt: skip
    assert "sources" not in (plain.model_extra or {})
    pdf = check_sources(sources_of(grounded), corpus)
    prompt = str((grounded.model_extra or {}).get("prompt_text") or "")
    assert squash(PDF_FACT) in squash(prompt), prompt  # the engine's own rendering of the prompt carries it
    assert squash(PDF_FACT) not in squash(str((plain.model_extra or {}).get("prompt_text") or ""))
    assert plain.usage is not None and grounded.usage is not None
    assert grounded.usage.prompt_tokens - plain.usage.prompt_tokens >= len(pdf["text"].split())
    assert grounded.choices[0].message.content  # the model answered (its words are not checked: 135M params)


def test_grounded_stream_carries_sources_in_its_last_chunk(corpus: Corpus) -> None:
    stream = corpus.tenant.user.chat.completions.create(
        model=CHAT_MODEL, messages=ASK, temperature=0, max_tokens=30, stream=True,
        extra_body={"retrieval": {"vector_store_ids": [corpus.store_id], "max_num_results": 3},
                    "return_prompt_text": True},
    )  # fmt: skip
    chunks = list(stream)
    with_sources = [i for i, c in enumerate(chunks) if "sources" in (c.model_extra or {})]
    assert with_sources == [len(chunks) - 1], with_sources  # once, in the last chunk before [DONE]
    check_sources(sources_of(chunks[-1]), corpus)
    prompts = [str(text) for c in chunks if (text := (c.model_extra or {}).get("prompt_text"))]
    assert prompts and squash(PDF_FACT) in squash(prompts[0])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_empty_file_is_refused_at_upload(tenant_a: RagTenant) -> None:
    """Zero bytes never reach a store: the Files API answers 400 in OpenAI's error shape."""
    with pytest.raises(openai.BadRequestError) as caught:
        tenant_a.admin.files.create(file=upload("empty.txt"), purpose="assistants")
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict) and body.get("message") and body.get("type") == "invalid_request_error", body


def test_bad_files_end_failed_and_leave_nothing_searchable(tenant_a: RagTenant) -> None:
    client = tenant_a.admin
    store = client.vector_stores.create(name="e2e-rag-bad")
    try:
        batch = client.vector_stores.file_batches.upload_and_poll(
            store.id, files=[upload(name) for name in BAD], poll_interval_ms=250
        )
        assert batch.status == "failed"  # every file of it failed (one good file among them: completed)
        counts = batch.file_counts
        assert (counts.failed, counts.completed, counts.total) == (len(BAD), 0, len(BAD))
        names = {f.id: f.filename for f in client.files.list(purpose="assistants")}
        failed = list(client.vector_stores.files.list(vector_store_id=store.id, filter="failed"))
        assert {names[f.id] for f in failed} == set(BAD)
        for item in failed:
            assert item.last_error is not None, names[item.id]
            assert item.last_error.code == BAD[names[item.id]], (names[item.id], item.last_error)
            assert item.last_error.message
            assert list(client.vector_stores.files.content(item.id, vector_store_id=store.id)) == []
        # The encrypted PDF is the kettle spec: had anything of it been indexed, this would find it.
        assert client.vector_stores.search(store.id, query=QUESTION, max_num_results=10).data == []
        assert client.vector_stores.retrieve(store.id).file_counts.failed == len(BAD)
    finally:
        client.vector_stores.delete(store.id)


def status_of(call: Callable[[], object]) -> int:
    """The HTTP status ``call`` ended with (200 when it did not raise)."""
    try:
        call()
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def calls_on_a(client: openai.OpenAI, store: str, pdf: str, *, writes: bool) -> dict[str, Callable[[], object]]:
    """Every route that takes one of A's ids, called by another tenant's ``client``; the writing ones only with
    ``writes`` (a tenant admin's key: a user key may be refused them for its role, whoever owns the id)."""
    reads: dict[str, Callable[[], object]] = {
        "retrieve store": lambda: client.vector_stores.retrieve(store),
        "list its files": lambda: client.vector_stores.files.list(vector_store_id=store),
        "retrieve its file": lambda: client.vector_stores.files.retrieve(pdf, vector_store_id=store),
        "its file's content": lambda: list(client.vector_stores.files.content(pdf, vector_store_id=store)),
        "retrieve the file": lambda: client.files.retrieve(pdf),
        "the file's bytes": lambda: client.files.content(pdf),
        "search": lambda: client.vector_stores.search(store, query=QUESTION),
        "grounded chat": lambda: client.chat.completions.create(
            model=CHAT_MODEL, messages=ASK, max_tokens=5, extra_body={"retrieval": {"vector_store_ids": [store]}}
        ),
    }
    if not writes:
        return reads
    return reads | {
        "update its file": lambda: client.vector_stores.files.update(pdf, vector_store_id=store, attributes={"a": 1}),
        "detach its file": lambda: client.vector_stores.files.delete(pdf, vector_store_id=store),
        "modify store": lambda: client.vector_stores.update(store, name="taken"),
        "delete store": lambda: client.vector_stores.delete(store),
        "attach to its store": lambda: client.vector_stores.files.create(vector_store_id=store, file_id=pdf),
        "delete the file": lambda: client.files.delete(pdf),
    }


def test_other_tenant_gets_404_for_everything_of_a(corpus: Corpus, tenant_b: RagTenant) -> None:
    store, pdf = corpus.store_id, corpus.pdf_id
    for client, writes in ((tenant_b.admin, True), (tenant_b.user, False)):
        for what, call in calls_on_a(client, store, pdf, writes=writes).items():
            assert status_of(call) == 404, what
        assert store not in {s.id for s in client.vector_stores.list()}
        assert pdf not in {f.id for f in client.files.list()}
    b = tenant_b.admin
    own = b.vector_stores.create(name="b")
    try:
        with pytest.raises(openai.NotFoundError):
            b.vector_stores.files.create(vector_store_id=own.id, file_id=pdf)  # A's file into B's own store
        hits = b.vector_stores.search(own.id, query=QUESTION).data  # B's empty store: nothing of A's leaks in
        assert hits == []
    finally:
        b.vector_stores.delete(own.id)
    assert corpus.tenant.user.vector_stores.retrieve(store).file_counts.completed == 4  # A's store untouched


def test_ingestion_embeddings_are_metered_to_the_tenant(corpus: Corpus, gateway: GatewayProcess) -> None:
    deadline = time.monotonic() + 10
    with psycopg.connect(gateway.database_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*), coalesce(sum(prompt_tokens), 0), count(DISTINCT tenant_id::text),"
                " min(tenant_id::text) FROM usage_events WHERE endpoint = 'embeddings' AND request_id LIKE %s",
                (f"ingest-{corpus.store_id}-%",),
            ).fetchone()
            assert row is not None
            if row[0] >= len(corpus.file_ids) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    count, tokens, tenants, tenant = row
    assert count >= len(corpus.file_ids), "an ingestion usage row per file at least"
    assert tokens > 0 and tenants == 1 and tenant == corpus.tenant.id
