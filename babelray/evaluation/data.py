"""Readers for the evaluation data folder (layout in ../shared/data/README.md).

Each reader names the files it used, so the report can record what was measured."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

XQUAD_LANGS = ("en", "es", "de", "zh", "ru", "ar", "tr", "vi")
FASTAPI_LANGS = ("de", "pt", "zh", "ko")

# Tatoeba names languages by ISO 639-3; routing and language ID speak ISO 639-1.
# Languages without a 639-1 code map to None (always routed away from direct embedding).
TATOEBA_ISO1 = {
    "afr": "af", "ang": None, "arq": None, "ast": None, "aze": "az", "ben": "bn", "bos": "bs", "bul": "bg",
    "cbk": None, "ces": "cs", "cmn": "zh", "csb": None, "dan": "da", "dsb": None, "ell": "el", "est": "et",
    "fao": "fo", "fra": "fr", "gla": "gd", "glg": "gl", "heb": "he", "hrv": "hr", "ido": "io", "ina": "ia",
    "isl": "is", "jav": "jv", "kab": None, "kaz": "kk", "kor": "ko", "kzj": None, "lfn": None, "lvs": "lv",
    "mar": "mr", "mhr": None, "mon": "mn", "nld": "nl", "nob": "nb", "oci": "oc", "pam": None, "pms": None,
    "por": "pt", "rus": "ru", "slv": "sl", "sqi": "sq", "swe": "sv", "swh": "sw", "tat": "tt", "tgl": "tl",
    "tuk": "tk", "tzl": None, "ukr": "uk", "uzb": "uz", "war": None, "xho": "xh", "yue": None,
    # Not in the shipped v1 set, but in other Tatoeba releases:
    "ara": "ar", "deu": "de", "fin": "fi", "hin": "hi", "ind": "id", "ita": "it", "jpn": "ja", "pol": "pl",
    "spa": "es", "tur": "tr", "vie": "vi",
}


class DataError(ValueError):
    """The data folder lacks a file or a file is malformed; the message names it."""


@dataclass(frozen=True)
class Query:
    qid: str
    text: str
    gold: str  # doc_id of the relevant document


@dataclass(frozen=True)
class Bitext:
    lang: str  # ISO 639-3
    source: list[str]  # sentence i translates english[i]
    english: list[str]


def _require(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"missing evaluation file {path} (is --data the folder described in its README?)")
    return path


def _jsonl(path: Path) -> list[dict]:
    rows = []
    with _require(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: not JSON ({err})") from None
    return rows


# ---------------------------------------------------------------- XQuAD


def xquad_passages_path(data: Path) -> Path:
    return _require(data / "xquad" / "passages.en.jsonl")


def xquad_queries(data: Path, lang: str) -> list[Query]:
    return [Query(row["qid"], row["question"], row["pid"])
            for row in _jsonl(data / "xquad" / f"queries.{lang}.jsonl")]


def xquad_langs(data: Path) -> list[str]:
    found = {path.name.split(".")[1] for path in (data / "xquad").glob("queries.*.jsonl")}
    return [lang for lang in XQUAD_LANGS if lang in found] + sorted(found - set(XQUAD_LANGS))


# ---------------------------------------------------------------- Tatoeba


def tatoeba_langs(data: Path) -> list[str]:
    return sorted(path.name.split(".")[1].split("-")[0] for path in (data / "tatoeba").glob("tatoeba.*-eng.eng"))


def tatoeba_bitext(data: Path, lang: str, max_pairs: int | None) -> Bitext:
    folder = data / "tatoeba"
    source = _require(folder / f"tatoeba.{lang}-eng.{lang}").read_text(encoding="utf-8").splitlines()
    english = _require(folder / f"tatoeba.{lang}-eng.eng").read_text(encoding="utf-8").splitlines()
    if len(source) != len(english):
        raise DataError(f"tatoeba {lang}: {len(source)} sentences vs {len(english)} English lines")
    # Pairs with an empty side cannot be mined; the first N keep the file's own order (deterministic).
    pairs = [(s.strip(), e.strip()) for s, e in zip(source, english) if s.strip() and e.strip()]
    pairs = pairs[:max_pairs] if max_pairs else pairs
    return Bitext(lang, [s for s, _ in pairs], [e for _, e in pairs])


# ---------------------------------------------------------------- language ID


def lid_samples(data: Path, max_lines: int | None) -> dict[str, list[str]]:
    folder = _require(data / "lid" / "sentences")
    samples = {}
    for path in sorted(folder.glob("*.txt")):
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        samples[path.stem] = lines[:max_lines] if max_lines else lines
    return samples


def first_words(text: str, n: int = 3) -> str:
    """The first n words. Text written without spaces (zh, ja, th: one "word" of dozens of
    characters) keeps 2n characters instead, so the short test stays short there too."""
    words = text.split()
    if len(words) < n and max(map(len, words), default=0) > 4 * n:
        return text[: 2 * n]
    return " ".join(words[:n])


# ---------------------------------------------------------------- FastAPI docs

_FENCE = re.compile(r"^\s*(```|~~~)")
_ADMONITION = re.compile(r"^\s*///")  # MkDocs blocks: "/// note" ... "///"
_NOT_PROSE = re.compile(r"^\s*(#|\{\*|<|\||!\[|-{3,}|\*{3,}|>\s*$)")


def first_paragraph(markdown: str) -> str:
    """The page's first prose paragraph: headings, fenced code, admonition blocks (on translated
    pages often a translation notice), included snippets (`{* ... *}`), HTML and tables skipped.
    The title when the page has no prose."""
    paragraph: list[str] = []
    skipping = {"fence": False, "admonition": False}
    title = ""
    for line in markdown.splitlines():
        for kind, pattern in (("fence", _FENCE), ("admonition", _ADMONITION)):
            if pattern.match(line):
                # "/// note" opens an admonition, a bare "///" closes it; fences toggle.
                opens = kind == "fence" or line.strip() != "///"
                skipping[kind] = not skipping[kind] if kind == "fence" else opens
                break
        else:
            if any(skipping.values()):
                continue
            if not title and line.startswith("# "):
                title = line[2:].strip()
            if line.strip() and not _NOT_PROSE.match(line):
                paragraph.append(line.strip())
                continue
        if paragraph:
            break
    return " ".join(paragraph) or title


def fastapi_queries(data: Path, lang: str, doc_prefix: str = "en/") -> list[Query]:
    """One query per translated page: its first paragraph; gold = the English page's doc_id."""
    folder = data / "docs_fastapi"
    queries = []
    with _require(folder / "pairs.tsv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["lang"] != lang:
                continue
            text = first_paragraph(_require(folder / row["translated_file"]).read_text(encoding="utf-8"))
            if text:
                queries.append(Query(row["translated_file"], text, doc_prefix + row["rel_path"]))
    return queries


def fingerprint(paths: list[Path]) -> str:
    """sha256 over the files' bytes, in order: names the exact data a report measured."""
    digest = hashlib.sha256()
    for path in paths:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                digest.update(file.name.encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
