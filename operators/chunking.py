"""Split one document into token-bounded chunks (pure library: no Ray).

Every splitter here works the same way:

1. cut the text into *pieces* that tile it exactly and each fit the token budget,
   splitting coarse units into finer ones only where a unit is too big
   (prose: paragraph -> sentence -> word/token window;
   code: top-level syntax node -> its children -> ... -> line -> token window);
2. tag each piece with how good a place its start is to begin a chunk
   (a Markdown heading beats a paragraph break, which beats a sentence break;
   a top-level definition beats a nested one, which beats a line break);
3. pack pieces greedily into chunks of at most ``max_tokens`` tokens, ending a
   chunk early at a clearly better boundary as long as it stays at least half full.
   Prose chunks (and code without a grammar) then restart ``overlap`` tokens back,
   snapped to a sentence, word or line start.

Tokens are counted with the embedding model's own tokenizer: the document is
tokenized once and spans are measured by bisecting the token offsets
(`TokenCounter`). A document that splits is then re-measured chunk by chunk in one
batched call, since a chunk tokenized on its own can differ by a token or two at
its edges; `token_count` is that exact number and never exceeds ``max_tokens``
(unless a whitespace run longer than the budget had to ride along at a chunk's end).

Chunks cover the whole text: the first starts at 0, the last ends at
``len(text)``, and each starts at or before the previous one's end.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import accumulate
from typing import Callable, Literal, Sequence

__all__ = [
    "CODE_EXTENSIONS",
    "Chunk",
    "TokenCounter",
    "chunk_document",
    "has_grammar",
    "language_for_path",
]


# ---------------------------------------------------------------------------
# Languages
# ---------------------------------------------------------------------------

# Extensions split with a tree-sitter grammar.
_GRAMMAR_EXTENSIONS = {
    ".py": "python", ".pyi": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
    ".go": "go",
    ".java": "java",
    ".rs": "rust",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
}

# Other source code: split by line windows.
_LINE_WINDOW_EXTENSIONS = {
    ".rb": "ruby", ".php": "php", ".swift": "swift", ".kt": "kotlin", ".kts": "kotlin",
    ".scala": "scala", ".sc": "scala", ".groovy": "groovy", ".cs": "csharp", ".fs": "fsharp",
    ".m": "objective-c", ".mm": "objective-c", ".dart": "dart", ".lua": "lua", ".pl": "perl",
    ".pm": "perl", ".r": "r", ".jl": "julia", ".hs": "haskell", ".ml": "ocaml", ".ex": "elixir",
    ".exs": "elixir", ".erl": "erlang", ".clj": "clojure", ".zig": "zig", ".nim": "nim",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".ps1": "powershell", ".sql": "sql",
    ".vue": "vue", ".svelte": "svelte",
}

CODE_EXTENSIONS: dict[str, str] = {**_GRAMMAR_EXTENSIONS, **_LINE_WINDOW_EXTENSIONS}
"""File extension (lower case, with the dot) -> language name, for all source code."""

# language -> (grammar module, name of its function returning the language pointer)
_GRAMMARS = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "java": ("tree_sitter_java", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
}


def language_for_path(path: str | os.PathLike) -> str | None:
    """The code language of a file from its extension, or None for non-code files."""
    return CODE_EXTENSIONS.get(os.path.splitext(os.fspath(path))[1].lower())


@functools.lru_cache(maxsize=None)
def has_grammar(language: str | None) -> bool:
    """Whether `language` is split along syntax (its grammar wheel is installed)."""
    if language not in _GRAMMARS:
        return False
    try:
        _parser(language)
    except (ImportError, AttributeError, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=None)
def _parser(language: str):
    # Building a Language is not free and the stage calls us once per document, so
    # each process keeps one parser per language. Parsers are not thread-safe: fine
    # for Ray Data, which hands an actor one batch at a time.
    from tree_sitter import Language, Parser

    module_name, function_name = _GRAMMARS[language]
    module = importlib.import_module(module_name)
    return Parser(Language(getattr(module, function_name)()))


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """``doc[start_char:end_char]``; lines are 1-based, inclusive, and describe the
    chunk's content (leading/trailing blank lines are not counted)."""

    start_char: int
    end_char: int
    start_line: int
    end_line: int
    section: str
    token_count: int

    def text(self, doc: str) -> str:
        return doc[self.start_char:self.end_char]


# ---------------------------------------------------------------------------
# Token counting
# ---------------------------------------------------------------------------


class TokenCounter:
    """Token counts for any character span of one text, from a single tokenizer call.

    A span counts every token whose character offsets overlap it, so a token that
    straddles a cut is counted on both sides: counts never undershoot.
    `tokenizer` is a Hugging Face *fast* tokenizer (offsets need the Rust backend).
    """

    def __init__(self, tokenizer, text: str):
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = encoding["offset_mapping"]
        # Running maxima keep both lists sorted for bisection even if a tokenizer
        # reports a slightly out-of-order offset.
        self._starts = list(accumulate((start for start, _ in offsets), max))
        self._ends = list(accumulate((end for _, end in offsets), max))
        self._text_length = len(text)

    def __len__(self) -> int:
        return len(self._starts)

    def count(self, start: int, end: int) -> int:
        """Number of tokens in ``text[start:end]``."""
        if end <= start:
            return 0
        return bisect_left(self._starts, end) - bisect_right(self._ends, start)

    def end_after(self, start: int, n_tokens: int) -> int:
        """The furthest position `end` with ``count(start, end) <= n_tokens``:
        a token start, or the end of the text."""
        first = bisect_right(self._ends, start)  # first token reaching past `start`
        stop = first + n_tokens
        return self._starts[stop] if stop < len(self._starts) else self._text_length

    def start_before(self, end: int, n_tokens: int) -> int:
        """The earliest position `start` with ``count(start, end) <= n_tokens``."""
        stop = bisect_left(self._starts, end)  # tokens [0, stop) begin before `end`
        last_excluded = stop - n_tokens - 1
        return self._ends[last_excluded] if last_excluded >= 0 else 0


# ---------------------------------------------------------------------------
# Pieces and packing
# ---------------------------------------------------------------------------

# How good a place the start of a piece is to begin a new chunk (higher is better).
_GLUE = -1       # right after a definition's header: cut only if nothing else fits
_TOKEN = 0       # mid-word cut (CJK, minified code, a giant "word")
_WORD = 1        # whitespace inside a long sentence, or a line inside a code node
_SENTENCE = 2    # sentence or line break inside a paragraph
_PARAGRAPH = 3   # blank line, or a Markdown block (fence, list, ...)
_CODE_TOP = 6    # top-level syntax node; one less per nesting level, never below _SENTENCE


def _heading_strength(level: int) -> int:
    return 10 - level  # H1 = 9 ... H6 = 4: all above a paragraph break


def _code_strength(depth: int) -> int:
    return max(_SENTENCE, _CODE_TOP - depth)


# A chunk may end at a stronger boundary than the greedy one (and a window at a word
# rather than a token) only if it stays this full.
_MIN_FILL = 0.5


@dataclass(frozen=True, slots=True)
class _Piece:
    start: int
    end: int
    strength: int
    scope: tuple[str, ...] = ()  # code: enclosing symbol path (for chunks starting mid-symbol)


def _pack(pieces: Sequence[_Piece], counter: TokenCounter, max_tokens: int,
          restart: Callable[[int, int, int], int] | None = None,
          separate: Callable[[int, _Piece], bool] | None = None) -> list[tuple[int, int]]:
    """Greedy packing of consecutive pieces into (start, end) spans of <= max_tokens.

    `restart(chunk_start, cut, next_piece_end)` picks where the next span starts
    (at or before `cut`, for overlap); without it spans tile the text.
    `separate(chunk_start, piece)` says a piece must not join the chunk so far.
    """
    spans = []
    start, first = pieces[0].start, 0
    while True:
        stop = first
        while stop < len(pieces) and counter.count(start, pieces[stop].end) <= max_tokens:
            if stop > first and separate is not None and separate(start, pieces[stop]):
                break
            stop += 1
        stop = max(stop, first + 1)  # pieces fit on their own; this only guards progress
        if stop == len(pieces):
            spans.append((start, pieces[-1].end))
            return spans
        cut_index = _best_cut(pieces, first, stop, start, counter, max_tokens)
        cut = pieces[cut_index].start
        spans.append((start, cut))
        start = restart(start, cut, pieces[cut_index].end) if restart else cut
        first = cut_index


def _best_cut(pieces: Sequence[_Piece], first: int, stop: int, start: int,
              counter: TokenCounter, max_tokens: int) -> int:
    """Index of the piece that starts the next chunk, in (first, stop].

    Greedy packing cuts before pieces[stop]; an earlier, strictly stronger
    boundary wins while the chunk stays at least half full (ties: the later one).
    A header is not left dangling at a chunk's end if any other cut is possible.
    """
    best = stop
    if pieces[best].strength == _GLUE:
        best = next((index for index in range(stop - 1, first, -1) if pieces[index].strength > _GLUE), stop)
    for index in range(best - 1, first, -1):
        if counter.count(start, pieces[index].start) < _MIN_FILL * max_tokens:
            break
        if pieces[index].strength > pieces[best].strength:
            best = index
    return best


def _overlap_restart(counter: TokenCounter, max_tokens: int, overlap: int,
                     snap_levels: Sequence[Callable[[int], int | None]],
                     barrier: Callable[[int], int] = lambda cut: 0) -> Callable[[int, int, int], int]:
    """A `restart` for `_pack`: begin about `overlap` tokens before the cut.

    The start is snapped forward to the first boundary of the finest level in
    `snap_levels` (each maps a position to the next boundary at or after it) that
    keeps at least half the overlap, else left at a token boundary. It never goes
    back past `barrier(cut)` (a Markdown heading) and always leaves room for the
    next piece.
    """

    def restart(chunk_start: int, cut: int, next_piece_end: int) -> int:
        earliest = max(counter.start_before(cut, overlap),
                       counter.start_before(next_piece_end, max_tokens),
                       barrier(cut), chunk_start + 1)
        if earliest >= cut:
            return cut
        for next_boundary in snap_levels:
            position = next_boundary(earliest)
            if position is not None and position < cut and 2 * counter.count(position, cut) >= overlap:
                return position
        return earliest

    return restart


def _next_in(sorted_positions: Sequence[int]) -> Callable[[int], int | None]:
    def next_boundary(position: int) -> int | None:
        index = bisect_left(sorted_positions, position)
        return sorted_positions[index] if index < len(sorted_positions) else None

    return next_boundary


def _split_by_tokens(text: str, counter: TokenCounter, start: int, end: int, max_tokens: int,
                     strength: int, scope: tuple[str, ...] = ()) -> list[_Piece]:
    """Windows of <= max_tokens over [start, end), cut at a word start when that keeps
    the window at least half full, else at a token boundary (nothing is dropped)."""
    pieces = []
    while True:
        cut = max(counter.end_after(start, max_tokens), start + 1)  # progress even on a many-token character
        if cut >= end:
            pieces.append(_Piece(start, end, strength, scope))
            return pieces
        word_start = _last_word_start(text, start, cut)
        if word_start is not None and counter.count(start, word_start) >= _MIN_FILL * max_tokens:
            cut, next_strength = word_start, _WORD
        else:
            next_strength = _TOKEN
        pieces.append(_Piece(start, cut, strength, scope))
        start, strength = cut, next_strength


def _last_word_start(text: str, low: int, high: int) -> int | None:
    """The last position in (low, high] where a non-space follows a space."""
    for position in range(high, low, -1):
        if text[position - 1].isspace() and position < len(text) and not text[position].isspace():
            return position
    return None


def _split_lines(text: str, counter: TokenCounter, lines: _LineIndex, start: int, end: int,
                 max_tokens: int, strength: int, line_strength: Callable[[int], int],
                 scope: tuple[str, ...] = ()) -> list[_Piece]:
    """One piece per line of [start, end) (blank lines ride with the line above),
    long lines split into token windows."""
    pieces = []
    for line_start, line_end in _pairwise_bounds(start, _content_line_starts(text, lines, start, end), end):
        if counter.count(line_start, line_end) <= max_tokens:
            pieces.append(_Piece(line_start, line_end, strength, scope))
        else:
            pieces.extend(_split_by_tokens(text, counter, line_start, line_end, max_tokens, strength, scope))
        strength = line_strength(line_end)
    return pieces


def _content_line_starts(text: str, lines: _LineIndex, start: int, end: int) -> list[int]:
    """Starts of the non-blank lines strictly inside (start, end)."""
    first_line = bisect_right(lines.starts, start)
    last_line = bisect_left(lines.starts, end)
    return [position for position in lines.starts[first_line:last_line] if not _is_blank_line(text, position)]


def _is_blank_line(text: str, position: int) -> bool:
    line_end = text.find("\n", position)
    return text[position:line_end if line_end >= 0 else len(text)].strip() == ""


def _pairwise_bounds(start: int, inner: Sequence[int], end: int) -> list[tuple[int, int]]:
    bounds = [start, *inner, end]
    return list(zip(bounds, bounds[1:]))


# ---------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------


class _LineIndex:
    def __init__(self, text: str):
        self.starts = [0] + [match.end() for match in re.finditer("\n", text)]

    def line_of(self, position: int) -> int:
        """1-based line number of the character at `position`."""
        return bisect_right(self.starts, position)


def _byte_to_char(text: str) -> Callable[[int], int]:
    """Maps UTF-8 byte offsets (tree-sitter) to str indices (everything else)."""
    if text.isascii():
        return lambda byte_offset: byte_offset
    char_byte_offsets = list(accumulate((_utf8_length(char) for char in text), initial=0))
    return lambda byte_offset: bisect_left(char_byte_offsets, byte_offset)


def _utf8_length(char: str) -> int:
    code_point = ord(char)
    return 1 if code_point < 0x80 else 2 if code_point < 0x800 else 3 if code_point < 0x10000 else 4


# ---------------------------------------------------------------------------
# Prose and Markdown
# ---------------------------------------------------------------------------

# A sentence ends after terminal punctuation and whitespace, right after CJK
# terminal punctuation (no space follows in CJK), or at a line break; a match
# ends where the next sentence starts.
_SENTENCE_BREAK = re.compile(
    r"[.!?…।॥؟۔]+[\"'”’»)\]]*\s+"
    r"|[。！？]+[」』”’）)\]]*\s*"
    r"|\n\s*"
)
_TERMINAL_MARKS = frozenset(".!?…।॥؟۔。！？")
_CLOSING_MARKS = frozenset("\"'”’»)]」』）")
_WORD_START = re.compile(r"\s\S")
_NON_SPACE = re.compile(r"\S")
_BLANK_LINE = re.compile(r"\n[ \t]*\n\s*")
_ATX_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})")


def _breaks(pattern: re.Pattern, text: str) -> list[int]:
    """Positions where a match of `pattern` ends and non-space text follows."""
    return [match.end() for match in pattern.finditer(text) if match.end() < len(text)]


@dataclass(frozen=True)
class _Heading:
    start: int
    path: tuple[str, ...]      # titles from the top-level heading down to this one
    ancestry: tuple[int, ...]  # the same headings as indices (titles can repeat)


def _markdown_blocks(text: str) -> tuple[list[tuple[int, int]], list[_Heading]]:
    """(block start, strength) for each Markdown block, and every ATX heading.

    A block is a blank-line separated paragraph, list or fenced code block (a fence
    is one block even with blank lines inside). Heading lines are glued to what
    follows them so a chunk never ends on a bare heading. `#` lines inside fences
    are code, not headings.
    """
    blocks: list[tuple[int, int]] = []
    headings: list[_Heading] = []
    path: list[tuple[int, str, int]] = []  # (level, title, index) of the enclosing headings
    fence: str | None = None          # the opening fence while inside a code block
    after_blank = True
    only_headings = False             # the current block holds only heading lines so far
    position = 0
    for body in text.split("\n"):  # "\n" only, as everywhere else (str.splitlines also splits on \f, ...)
        line_start, position = position, position + len(body) + 1
        body = body.rstrip("\r")
        if fence is not None:
            closing = body.strip()
            if closing.startswith(fence) and closing.strip(fence[0]) == "":
                fence, after_blank = None, True  # text right after a fence starts a new block
            continue
        if not body.strip():
            after_blank = after_blank or not only_headings
            continue
        heading = _ATX_HEADING.match(body)
        fence_open = _FENCE_OPEN.match(body)
        if heading and not only_headings:
            blocks.append((line_start, _heading_strength(len(heading.group(1)))))
        elif not heading and (after_blank or fence_open) and not only_headings:
            blocks.append((line_start, _PARAGRAPH))
        if heading:
            level = len(heading.group(1))
            path = [entry for entry in path if entry[0] < level]
            path.append((level, (heading.group(2) or "").strip(), len(headings)))
            headings.append(_Heading(line_start, tuple(entry[1] for entry in path),
                                     tuple(entry[2] for entry in path)))
        if fence_open:
            fence = fence_open.group(1)
        only_headings, after_blank = bool(heading), False
    if not blocks or blocks[0][0] != 0:  # leading blank lines belong to the first block
        blocks[:1] = [(0, blocks[0][1] if blocks else _PARAGRAPH)]
    return blocks, headings


def _prose_pieces(text: str, counter: TokenCounter, max_tokens: int,
                  blocks: list[tuple[int, int]], sentence_starts: list[int]) -> list[_Piece]:
    """Blocks that fit are pieces; others are split into sentences, and sentences
    that are still too long into word/token windows."""
    pieces = []
    block_ends = [start for start, _ in blocks[1:]] + [len(text)]
    for (start, strength), end in zip(blocks, block_ends):
        if counter.count(start, end) <= max_tokens:
            pieces.append(_Piece(start, end, strength))
            continue
        inner = sentence_starts[bisect_right(sentence_starts, start):bisect_left(sentence_starts, end)]
        for sentence_start, sentence_end in _pairwise_bounds(start, inner, end):
            if counter.count(sentence_start, sentence_end) <= max_tokens:
                pieces.append(_Piece(sentence_start, sentence_end, strength))
            else:
                pieces.extend(_split_by_tokens(text, counter, sentence_start, sentence_end, max_tokens, strength))
            strength = _sentence_strength(text, sentence_end)
    return pieces


def _sentence_strength(text: str, position: int) -> int:
    """A full stop before `position` makes a better cut than a bare line break
    (hard-wrapped text, lines of a code fence)."""
    index = position - 1
    while index >= 0 and (text[index].isspace() or text[index] in _CLOSING_MARKS):
        index -= 1
    return _SENTENCE if index >= 0 and text[index] in _TERMINAL_MARKS else _WORD


def _chunk_prose(text: str, counter: TokenCounter, max_tokens: int, overlap: int,
                 is_markdown: bool) -> tuple[list[tuple[int, int]], Callable[[int, int], str]]:
    sentence_starts = _breaks(_SENTENCE_BREAK, text)
    if is_markdown:
        blocks, headings = _markdown_blocks(text)
    else:
        blocks, headings = [(0, _PARAGRAPH)] + [(start, _PARAGRAPH) for start in _breaks(_BLANK_LINE, text)], []
    pieces = _prose_pieces(text, counter, max_tokens, blocks, sentence_starts)
    heading_starts = [heading.start for heading in headings]

    def barrier(cut: int) -> int:  # overlap never reaches back into the previous section
        index = bisect_right(heading_starts, cut) - 1
        return heading_starts[index] if index >= 0 else 0

    restart = None
    if overlap:
        restart = _overlap_restart(counter, max_tokens, overlap,
                                   [_next_in(sentence_starts), functools.partial(_next_word_start, text)],
                                   barrier)
    sections = _MarkdownSections(text, headings)
    return _pack(pieces, counter, max_tokens, restart, sections.separate if headings else None), sections.section


def _next_word_start(text: str, position: int) -> int | None:
    """The first position >= `position` where a non-space follows a space."""
    match = _WORD_START.search(text, max(position - 1, 0))
    return match.end() - 1 if match else None


class _MarkdownSections:
    """A chunk's section is the heading path where its content begins. It may run on
    into sub-sections and sibling sections (small sections are packed together),
    but never into an unrelated one: a heading that shares no ancestor with the
    chunk's start (a new top-level section, or the first heading after a preamble)
    always starts a new chunk."""

    def __init__(self, text: str, headings: list[_Heading]):
        self.text = text
        self.headings = headings
        self.heading_starts = [heading.start for heading in headings]
        self.heading_at = {heading.start: heading for heading in headings}

    def section(self, start: int, end: int) -> str:
        index = self._heading_index(self._content_start(start))
        return " > ".join(self.headings[index].path) if index >= 0 else ""

    def separate(self, chunk_start: int, piece: _Piece) -> bool:
        heading = self.heading_at.get(piece.start)
        if heading is None:
            return False
        index = self._heading_index(self._content_start(chunk_start))
        return index < 0 or self.headings[index].ancestry[0] != heading.ancestry[0]

    def _heading_index(self, position: int) -> int:
        return bisect_right(self.heading_starts, position) - 1

    def _content_start(self, position: int) -> int:
        match = _NON_SPACE.search(self.text, position)
        return match.start() if match else position


# ---------------------------------------------------------------------------
# Code
# ---------------------------------------------------------------------------

# Comments and attributes belong to the node that follows them.
_LEADING_TRIVIA = frozenset({
    "comment", "line_comment", "block_comment", "attribute_item", "inner_attribute_item", "decorator",
})

# Node types naming a symbol through their `name` field (others: `_SYMBOL_RULES`).
_NAMED_DEFINITIONS = frozenset({
    "class_definition",  # python
    "function_declaration", "generator_function_declaration", "class_declaration",
    "abstract_class_declaration", "method_definition", "interface_declaration", "type_alias_declaration",
    "enum_declaration", "internal_module", "module",  # javascript / typescript
    "constructor_declaration", "record_declaration", "annotation_type_declaration",  # java
    "function_item", "function_signature_item", "struct_item", "enum_item", "union_item", "trait_item",
    "mod_item", "macro_definition",  # rust
    "namespace_definition",  # c++
})

# Nodes wrapping one definition (decorators, `export`, `template<...>`): named after it.
_WRAPPERS = {"decorated_definition": "definition", "export_statement": "declaration",
             "template_declaration": None}

_FUNCTION_VALUES = frozenset({"function_expression", "function", "arrow_function", "generator_function",
                              "class", "class_expression"})
_DECLARATOR_NAMES = frozenset({"identifier", "field_identifier", "qualified_identifier", "operator_name",
                               "destructor_name", "type_identifier"})
_MAX_SYNTAX_DEPTH = 40  # deeper than this, oversized nodes are split by lines


@dataclass(frozen=True, slots=True)
class _Syntax:
    node: object               # tree_sitter.Node
    scope: tuple[str, ...]     # symbol path of the definitions enclosing it


@dataclass(frozen=True, slots=True)
class _Definition:
    start: int
    end: int
    label: str


def _node_text(node) -> str:
    return node.text.decode("utf-8", "replace")


def _symbol(node, language: str) -> tuple[str, str | None] | None:
    """(label, scope name for its children) if `node` defines a named symbol.

    Labels: `Session`, `request`, `Engine.ServeHTTP` (Go method), `impl Serialize
    for Map` (children scoped as `Map`), `app.init` (JS `app.init = function ...`).
    """
    special = _SYMBOL_RULES.get(node.type)
    if special is not None:
        return special(node, language)
    return _named_symbol(node) if node.type in _NAMED_DEFINITIONS else None


def _named_symbol(node) -> tuple[str, str] | None:
    name = node.child_by_field_name("name")
    return (_node_text(name),) * 2 if name is not None else None


def _wrapped_symbol(node, language: str) -> tuple[str, None] | None:
    """Decorators, `export`, `template<...>`: named after the definition they wrap,
    which opens the scope itself."""
    field = _WRAPPERS[node.type]
    inner = node.child_by_field_name(field) if field else (node.named_children or [None])[-1]
    symbol = _symbol(inner, language) if inner is not None else None
    return (symbol[0], None) if symbol else None


def _method_symbol(node, language: str) -> tuple[str, str] | None:
    """Go `func (e *Engine[T]) ServeHTTP(...)` -> `Engine.ServeHTTP`; Java methods by name."""
    if language != "go":
        return _named_symbol(node)
    receiver = node.child_by_field_name("receiver")
    receiver_type = receiver.named_children[-1].child_by_field_name("type") if receiver else None
    receiver_name = re.sub(r"[\s*&]|\[.*", "", _node_text(receiver_type)) if receiver_type else ""
    name = _node_text(node.child_by_field_name("name"))
    label = f"{receiver_name}.{name}" if receiver_name else name
    return label, label


def _impl_symbol(node, language: str) -> tuple[str, str]:
    """Rust `impl<K, V> Serialize for Map<K, V>`: labelled as such, methods as `Map.x`."""
    type_name = _bare_type(node.child_by_field_name("type"))
    trait = node.child_by_field_name("trait")
    return (f"impl {_bare_type(trait)} for {type_name}" if trait else f"impl {type_name}"), type_name


def _type_declaration_symbol(node, language: str) -> tuple[str, str] | None:
    """Go `type Engine struct {...}` (the first name of a `type (...)` group)."""
    spec = next((child for child in node.named_children if child.child_by_field_name("name")), None)
    return _named_symbol(spec) if spec is not None else None


def _function_definition_symbol(node, language: str) -> tuple[str, str] | None:
    """Python names the function; C/C++ hide the name in a declarator."""
    if node.child_by_field_name("name") is not None:
        return _named_symbol(node)
    name = _declarator_name(node.child_by_field_name("declarator"))
    return (name, name) if name else None


def _specifier_symbol(node, language: str) -> tuple[str, str] | None:
    """C/C++ `struct X {...}`, `class X {...}` (not a mere `struct X *p` reference)."""
    return _named_symbol(node) if node.child_by_field_name("body") is not None else None


def _c_declaration_symbol(node, language: str) -> tuple[str, str] | None:
    """C `struct X {...};` and `typedef struct {...} X;` (named after the typedef)."""
    specifier = node.child_by_field_name("type")
    symbol = _symbol(specifier, language) if specifier is not None else None
    if node.type == "type_definition" and specifier is not None and specifier.child_by_field_name("body"):
        name = _declarator_name(node.child_by_field_name("declarator"))
        return (name, name) if name else symbol
    return symbol


def _js_variable_symbol(node, language: str) -> tuple[str, str] | None:
    """JS/TS `const render = (user) => ...`, `var Router = class {...}`."""
    for declarator in node.named_children:
        value = declarator.child_by_field_name("value")
        if value is not None and value.type in _FUNCTION_VALUES:
            return _named_symbol(declarator)
    return None


def _js_assignment_symbol(node, language: str) -> tuple[str, str] | None:
    """JS `app.init = function init() {...}` and `res.type = res.contentType = function ...`."""
    assignment = node.named_children[0] if node.named_children else None
    if assignment is None or assignment.type != "assignment_expression":
        return None
    left, right = assignment.child_by_field_name("left"), assignment.child_by_field_name("right")
    while right is not None and right.type == "assignment_expression":
        right = right.child_by_field_name("right")
    if right is None or right.type not in _FUNCTION_VALUES or "\n" in _node_text(left):
        return None
    return (_node_text(left),) * 2


_SYMBOL_RULES: dict[str, Callable] = {
    **{kind: _wrapped_symbol for kind in _WRAPPERS},
    "method_declaration": _method_symbol,
    "impl_item": _impl_symbol,
    "type_declaration": _type_declaration_symbol,
    "function_definition": _function_definition_symbol,
    **{kind: _specifier_symbol for kind in ("class_specifier", "struct_specifier", "union_specifier",
                                            "enum_specifier")},
    **{kind: _c_declaration_symbol for kind in ("type_definition", "declaration", "field_declaration")},
    "lexical_declaration": _js_variable_symbol,
    "variable_declaration": _js_variable_symbol,
    "expression_statement": _js_assignment_symbol,
}


def _bare_type(node) -> str:
    """`Map<K, V>` -> `Map`, `de::Deserialize<'de>` -> `de::Deserialize`."""
    return _node_text(node).split("<", 1)[0].strip() if node is not None else "?"


def _declarator_name(declarator) -> str | None:
    """The name inside a C/C++ declarator (`*foo(int)` -> `foo`, `Foo::bar(...)` -> `Foo::bar`)."""
    while declarator is not None and declarator.type not in _DECLARATOR_NAMES:
        declarator = declarator.child_by_field_name("declarator") or (declarator.named_children or [None])[-1]
    return _node_text(declarator) if declarator is not None else None


class _CodeSplitter:
    """Turns a syntax tree into pieces that fit the budget, recording the symbols seen."""

    def __init__(self, text: str, language: str, counter: TokenCounter, lines: _LineIndex, max_tokens: int):
        self.text, self.language, self.counter, self.lines = text, language, counter, lines
        self.max_tokens = max_tokens
        self.to_char = _byte_to_char(text)
        self.definitions: list[_Definition] = []

    def split(self, root) -> list[_Piece]:
        children = [_Syntax(child, ()) for child in root.children]
        if not children:
            return self._split_lines(0, len(self.text), (), _code_strength(0))
        return self._split_region(0, len(self.text), children, depth=0, first_strength=_code_strength(0))

    def _split_region(self, start: int, end: int, nodes: list[_Syntax], depth: int,
                      first_strength: int, lead: int | None = None) -> list[_Piece]:
        """Pieces tiling [start, end), which holds `nodes` (siblings, in order).
        `lead`: where the header(s) that this region's first part should join begin."""
        groups = self._group(nodes)
        bounds = [start] + [self.lines.starts[group[0].node.start_point.row] for group in groups[1:]] + [end]
        # A split node keeps its header (`class Router extends Base {`, `def f():`) with
        # what follows: the cut after it is a last resort, and a group that does not
        # fit beside the header is opened up too, down its first children, so that
        # the header shares a chunk with the start of its body instead of standing alone.
        has_header = depth > 0 and len(groups) > 1 and self._is_header(groups[0])
        pieces = []
        for index, group in enumerate(groups):
            if index == 0:
                strength, header_start = first_strength, lead
            elif index == 1 and has_header:
                strength, header_start = _GLUE, bounds[0] if lead is None else lead
            else:
                strength, header_start = _code_strength(depth), None
            if header_start is not None and not self._crowded(header_start, bounds[index], bounds[index + 1]):
                header_start = None  # fits beside its header (or the header leaves no room): keep it whole
            pieces.extend(self._split_group(bounds[index], bounds[index + 1], group, depth, strength, header_start))
        return pieces

    def _crowded(self, lead: int, start: int, end: int) -> bool:
        """Whether [start, end) does not fit after the header at [lead, start), which leaves room."""
        return self.counter.count(lead, end) > self.max_tokens and self.counter.count(lead, start) < self.max_tokens

    def _group(self, nodes: list[_Syntax]) -> list[list[_Syntax]]:
        """Units that are never split apart: nodes sharing a line, leading comments or
        attributes with the node they precede, a closing `}`/`)` with what it closes,
        and an opening `{` on a line of its own with what it opens."""
        groups: list[list[_Syntax]] = []
        for item in nodes:
            if groups and (self._same_line(groups[-1][-1].node, item.node)
                           or all(member.node.type in _LEADING_TRIVIA for member in groups[-1])
                           or not item.node.is_named
                           or (len(groups) == 1 and not any(member.node.is_named for member in groups[0]))):
                groups[-1].append(item)
            else:
                groups.append([item])
        return groups

    @staticmethod
    def _is_header(group: list[_Syntax]) -> bool:
        """Whether the group opens the node being split (`class Router extends Base {`,
        `def f():`, `if x:`), rather than being the first statement of a body."""
        main = next((item for item in group if item.node.type not in _LEADING_TRIVIA), group[0])
        container = main.node.parent
        parent = container.parent if container is not None else None
        return parent is not None and not any(
            parent.child_by_field_name(field) == container for field in ("body", "consequence", "alternative"))

    @staticmethod
    def _same_line(previous, node) -> bool:
        end_row, end_column = previous.end_point
        if end_column == 0 and previous.end_byte > previous.start_byte:
            end_row -= 1  # e.g. a Rust `//` comment or C `#include` owns its newline
        return node.start_point.row <= end_row

    def _split_group(self, start: int, end: int, group: list[_Syntax], depth: int, strength: int,
                     lead: int | None = None) -> list[_Piece]:
        """One piece if the group fits (and no header at `lead` needs it opened), else
        pieces of its children, else line windows."""
        main = next((item for item in group if item.node.type not in _LEADING_TRIVIA), group[0])
        for item in group:
            self._record_definition(item)
        fits = self.counter.count(start, end) <= self.max_tokens
        children = self._children(group) if lead is not None or not fits else None
        if children is None or depth >= _MAX_SYNTAX_DEPTH:
            if fits:
                return [_Piece(start, end, strength, main.scope)]
            return self._split_lines(start, end, self._inner_scope(main), strength)
        return self._split_region(start, end, children, depth + 1, strength, lead)

    def _children(self, group: list[_Syntax]) -> list[_Syntax] | None:
        """The group one level down (comments kept whole), or None if nothing has children."""
        expanded, any_children = [], False
        for item in group:
            if item.node.child_count and item.node.type not in _LEADING_TRIVIA:
                scope = self._inner_scope(item)
                expanded.extend(_Syntax(child, scope) for child in item.node.children)
                any_children = True
            else:
                expanded.append(item)
        return expanded if any_children else None

    def _inner_scope(self, item: _Syntax) -> tuple[str, ...]:
        symbol = _symbol(item.node, self.language)
        return item.scope + (symbol[1],) if symbol and symbol[1] else item.scope

    def _record_definition(self, item: _Syntax) -> None:
        symbol = _symbol(item.node, self.language)
        if symbol:
            label = ".".join(item.scope + (symbol[0],))
            self.definitions.append(_Definition(self.to_char(item.node.start_byte),
                                                self.to_char(item.node.end_byte), label))

    def _split_lines(self, start: int, end: int, scope: tuple[str, ...], strength: int) -> list[_Piece]:
        return _split_lines(self.text, self.counter, self.lines, start, end, self.max_tokens, strength,
                            lambda _: _WORD, scope)


def _chunk_code(text: str, language: str, counter: TokenCounter, lines: _LineIndex,
                max_tokens: int) -> tuple[list[tuple[int, int]], Callable[[int, int], str]]:
    tree = _parser(language).parse(text.encode("utf-8", "surrogatepass"))
    splitter = _CodeSplitter(text, language, counter, lines, max_tokens)
    pieces = splitter.split(tree.root_node)
    sections = _CodeSections(splitter.definitions, pieces)
    return _pack(pieces, counter, max_tokens), sections.section


class _CodeSections:
    """Names a chunk of code after the outermost symbols that start inside it
    (`Session.get, Session.post`), or, when none does, the symbol it lies in."""

    def __init__(self, definitions: list[_Definition], pieces: list[_Piece]):
        self.definitions = sorted(definitions, key=lambda definition: (definition.start, -definition.end))
        self.definition_starts = [definition.start for definition in self.definitions]
        self.pieces = pieces
        self.piece_starts = [piece.start for piece in pieces]

    def section(self, start: int, end: int) -> str:
        labels = []
        first_piece = self.pieces[max(bisect_right(self.piece_starts, start) - 1, 0)]
        if first_piece.scope and not self._defines_symbol(start, first_piece.end):
            labels.append(".".join(first_piece.scope))  # the chunk starts inside this symbol
        outer_end = -1
        for definition in self.definitions[self._first_definition(start):self._first_definition(end)]:
            if definition.end <= outer_end:
                continue  # nested in a symbol already listed
            outer_end = definition.end
            if definition.label not in labels:
                labels.append(definition.label)
        return ", ".join(labels[:4]) + (", ..." if len(labels) > 4 else "")

    def _first_definition(self, position: int) -> int:
        return bisect_left(self.definition_starts, position)

    def _defines_symbol(self, start: int, end: int) -> bool:
        return self._first_definition(start) < self._first_definition(end)


def _chunk_lines(text: str, counter: TokenCounter, lines: _LineIndex, max_tokens: int,
                 overlap: int) -> tuple[list[tuple[int, int]], Callable[[int, int], str]]:
    """Code without a grammar: windows of whole lines, preferring to cut after a blank line."""

    def line_strength(line_start: int) -> int:
        previous_line = text.rfind("\n", 0, max(line_start - 1, 0)) + 1
        return _SENTENCE if text[previous_line:line_start].strip() == "" else _WORD

    pieces = _split_lines(text, counter, lines, 0, len(text), max_tokens, _PARAGRAPH, line_strength)
    restart = None
    if overlap:
        restart = _overlap_restart(counter, max_tokens, overlap,
                                   [_next_in(_content_line_starts(text, lines, 0, len(text)))])
    return _pack(pieces, counter, max_tokens, restart), lambda start, end: ""


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def chunk_document(text: str, *, kind: Literal["prose", "code"], language: str | None = None,
                   is_markdown: bool = False, tokenizer, max_tokens: int, overlap: int = 0) -> list[Chunk]:
    """Split `text` into chunks of at most `max_tokens` tokens of `tokenizer`.

    kind="code" splits along syntax when `language` has a grammar (see
    `has_grammar`), else by line windows; kind="prose" packs paragraphs and
    sentences (Markdown: headings and fences too). `overlap` tokens are repeated
    between consecutive prose/line windows; syntax-split code does not overlap.
    Empty or whitespace-only text gives [].
    """
    if max_tokens < 1 or not 0 <= overlap < max_tokens:
        raise ValueError(f"need max_tokens >= 1 and 0 <= overlap < max_tokens, got {max_tokens}, {overlap}")
    if kind not in ("prose", "code"):
        raise ValueError(f"kind must be 'prose' or 'code', got {kind!r}")
    if not text.strip():
        return []
    counter = TokenCounter(tokenizer, text)
    lines = _LineIndex(text)
    budget = max_tokens
    for _ in range(_BUDGET_ATTEMPTS):
        spans, section_of = _split(text, kind, language, is_markdown, counter, lines, budget,
                                   min(overlap, budget - 1))
        # Counts inside the whole document can miss by a token or two what the model
        # sees when it tokenizes a chunk on its own (merges across a cut), so the
        # chunks are measured for real and the budget tightened if one overshoots.
        token_counts = _standalone_token_counts(tokenizer, text, spans, counter)
        overshoot = max(token_counts) - max_tokens
        if overshoot <= 0 or budget <= overshoot:
            break
        budget -= overshoot
    return [_make_chunk(text, lines, start, end, section_of(start, end), token_count)
            for (start, end), token_count in zip(spans, token_counts)]


_BUDGET_ATTEMPTS = 3


def _split(text: str, kind: str, language: str | None, is_markdown: bool, counter: TokenCounter,
           lines: _LineIndex, max_tokens: int, overlap: int) -> tuple[list[tuple[int, int]], Callable]:
    """(spans, section_of(start, end)) for the document."""
    if kind == "code" and has_grammar(language):
        spans, section_of = _chunk_code(text, language, counter, lines, max_tokens)
    elif kind == "code":
        spans, section_of = _chunk_lines(text, counter, lines, max_tokens, overlap)
    else:
        spans, section_of = _chunk_prose(text, counter, max_tokens, overlap, is_markdown)
    return _absorb_blank_spans(text, spans), section_of


def _standalone_token_counts(tokenizer, text: str, spans: list[tuple[int, int]],
                             counter: TokenCounter) -> list[int]:
    if len(spans) == 1:  # the whole document: counted exactly already
        return [len(counter)]
    encodings = tokenizer([text[start:end] for start, end in spans], add_special_tokens=False,
                          verbose=False)["input_ids"]
    return [len(ids) for ids in encodings]


def _absorb_blank_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Whitespace-only spans are merged into a neighbour (only a whitespace run longer
    than the budget can produce one, so the merged chunk's excess is whitespace)."""
    merged: list[tuple[int, int]] = []
    pending_start = None
    for start, end in spans:
        if pending_start is not None:
            start, pending_start = pending_start, None
        if not text[start:end].strip():
            if merged:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                pending_start = start
            continue
        merged.append((start, end))
    return merged


def _make_chunk(text: str, lines: _LineIndex, start: int, end: int, section: str, token_count: int) -> Chunk:
    body = text[start:end]
    content_start = start + len(body) - len(body.lstrip())
    content_end = start + len(body.rstrip())
    return Chunk(start_char=start, end_char=end, start_line=lines.line_of(content_start),
                 end_line=lines.line_of(content_end - 1), section=section, token_count=token_count)
