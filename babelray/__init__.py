"""babelray: multilingual documents and source code -> cross-lingual vector index on Ray Data + LanceDB."""

__version__ = "0.1.0"
