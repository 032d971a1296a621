"""Property-based tests of the chunker: for any text, chunks cover it, their offsets and
lines agree with the text, they fit the budget, and the same input gives the same chunks."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_chunking import check_chunks

from operators.chunking import chunk_document

# Pieces real documents are made of, including the awkward ones: long unbroken words,
# several scripts, right-to-left text, emoji, control characters, CRLF, fences, headings.
PIECES = st.one_of(
    st.sampled_from(["The", "river", "carries", "silt.", "Der", "Fluss", "trägt", "Schlamm.", "河流", "携带",
                     "泥沙。", "النهر", "يحمل", "הנהר", "🌊", "🎉🎉", "e\u0301", "\t", "\x07", "\x1b[31m",
                     "\r\n", "\n", "\n\n", "# Heading\n", "## Sub heading\n", "- item\n", "```\ncode()\n```\n",
                     "1. first\n", "> quote\n", "    indented\n"]),
    st.text(min_size=1, max_size=12),
    st.builds(lambda ch, n: ch * n, st.sampled_from("ax漢-"), st.integers(30, 400)),  # very long "words"
)
TEXTS = st.lists(PIECES, min_size=1, max_size=120).map(" ".join)
PYTHON_LINES = st.lists(st.sampled_from([
    "def f(x):", "    return x + 1", "class A:", "    def m(self):", "        pass", "import os", "",
    "x = [1, 2,", "if (", "    '''unclosed", "# comment", "print('héllo 👋')", "\t\tbad_indent = 3",
]), min_size=1, max_size=80).map("\n".join)
BUDGETS = st.sampled_from([(16, 0), (24, 4), (48, 8), (128, 16)])


def assert_chunking_properties(tokenizer, text: str, budget: tuple[int, int], **kind) -> None:
    max_tokens, overlap = budget
    chunks = chunk_document(text, tokenizer=tokenizer, max_tokens=max_tokens, overlap=overlap, **kind)
    if not text.strip():
        assert chunks == []
        return
    check_chunks(text, chunks, tokenizer, max_tokens)
    assert chunk_document(text, tokenizer=tokenizer, max_tokens=max_tokens, overlap=overlap, **kind) == chunks


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, markdown=st.booleans(), budget=BUDGETS)
def test_prose_chunks_cover_text_consistently_and_deterministically(tokenizer, text, markdown, budget):
    assert_chunking_properties(tokenizer, text, budget, kind="prose", is_markdown=markdown)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=PYTHON_LINES, language=st.sampled_from(["python", "javascript", None]), budget=BUDGETS)
def test_code_chunks_cover_source_even_with_syntax_errors(tokenizer, source, language, budget):
    assert_chunking_properties(tokenizer, source, budget, kind="code", language=language)
