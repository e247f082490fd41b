"""``POST /v1/vector_stores/{vector_store_id}/search``: OpenAI's vector store search, any tenant key.

The body is OpenAI's (``query`` a string or a list, ``max_num_results`` 1-50, ``filters``,
``ranking_options.score_threshold``, ``rewrite_query``) plus tenantgate's ``search_mode`` (``hybrid``,
``vector`` or ``text``; default the ``search_mode`` given to :func:`search_route`). ``ranking_options.ranker``
is accepted and changes nothing: there is no re-ranker. ``rewrite_query`` applies the deterministic rewrite of
``retrieval.search.rewrite_query`` and reports it in ``search_query``. The work is ``retrieval.search``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from gateway.auth.principal import Principal
from gateway.openai.decode import decode_json_body
from gateway.openapi_docs import ANY, BODY, TENANT, route_docs
from gateway.routes.common import AnyRequest, provide_principal, read_json_body, services_of
from retrieval.filters import parse_filter
from retrieval.search import MAX_NUM_RESULTS, SearchMode, SearchOptions, search

__all__ = ["SearchBody", "SearchPage", "search_route"]


class RankingOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ranker: Literal["none", "auto", "default-2024-11-15"] | None = None
    score_threshold: float = 0.0


class SearchBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """https://platform.openai.com/docs/api-reference/vector-stores/search (``search_mode``: tenantgate's)."""

    query: str | list[str]
    filters: dict[str, Any] | None = None
    max_num_results: int = 10
    ranking_options: RankingOptions | None = None
    rewrite_query: bool = False
    search_mode: SearchMode | None = None  # tenantgate extension


class TextContent(msgspec.Struct, frozen=True):
    text: str
    type: Literal["text"] = "text"


class SearchResultItem(msgspec.Struct, frozen=True):
    file_id: str
    filename: str
    score: float
    attributes: dict[str, Any]
    content: list[TextContent]


class SearchPage(msgspec.Struct, frozen=True):
    search_query: list[str]
    data: list[SearchResultItem]
    has_more: bool = False
    next_page: str | None = None
    object: Literal["vector_store.search_results.page"] = "vector_store.search_results.page"


def search_route(options: SearchOptions | None = None) -> Any:
    """The search handler; ``options`` (mode, fusion, index knobs) from the settings."""
    opts = options if options is not None else SearchOptions()

    @post("/v1/vector_stores/{vector_store_id:str}/search", status_code=200, tags=["vector_stores"],
          dependencies={"principal": Provide(provide_principal)},
          **route_docs(ANY, TENANT, BODY, (404, 502), body=SearchBody),
          summary=f"Search a vector store (hybrid, vector or text; 1-{MAX_NUM_RESULTS} results)")
    async def search_vector_store(
        request: AnyRequest, principal: NamedDependency[Principal], vector_store_id: FromPath[str]
    ) -> SearchPage:
        services = services_of(request)
        body = decode_json_body(await read_json_body(request), SearchBody, services.body_limits)
        flt = parse_filter(body.filters) if body.filters is not None else None
        ranking = body.ranking_options or RankingOptions()
        result = await search(
            services.db, services.embedder, principal.tenant_id, [vector_store_id], body.query,
            key_id=principal.key_id, filters=flt, max_num_results=body.max_num_results,
            score_threshold=ranking.score_threshold, rewrite=body.rewrite_query, mode=body.search_mode, options=opts,
        )
        return SearchPage(
            search_query=result.search_query,
            data=[
                SearchResultItem(hit.file_id, hit.filename, hit.score, hit.attributes, [TextContent(hit.text)])
                for hit in result.hits
            ],
        )

    return search_vector_store
