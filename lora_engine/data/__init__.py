"""Training data: read, detect, validate, render with chat templates, mask, tokenize, batch.

Modules, one concept each: :mod:`.sniff` (encodings, binary files), :mod:`.json_stream` (streamed JSON
arrays), :mod:`.readers` (records with line numbers), :mod:`.formats` (detection and normalisation to
turns), :mod:`.source` (file to examples), :mod:`.render` (chat templates, answer masks, plain fallback),
:mod:`.tokenize`, :mod:`.batching` (padding, batches, packing, eval split), :mod:`.prepare`,
:mod:`.validate` and :mod:`.preview`.

Importing this package does not import torch (the web app validates uploads with it); only building
batches does.
"""

from .batching import batches, collate, pack_examples, split_eval, steps_per_epoch
from .formats import FORMATS, PREFERENCE_MESSAGE, Example, RecordError, Turn, normalise
from .prepare import PreparedData, prepare_data
from .preview import preview_rows
from .readers import iter_items, iter_records
from .render import PLAIN_ROLE_NAMES, Rendered, render_example
from .source import detect_format, iter_examples, resolve_format
from .tokenize import IGNORE_INDEX, TokenizedExample, tokenize_example
from .validate import TokenStats, ValidationReport, validate_file

__all__ = [
    "FORMATS", "IGNORE_INDEX", "PLAIN_ROLE_NAMES", "PREFERENCE_MESSAGE", "Example", "PreparedData", "RecordError",
    "Rendered", "TokenStats", "TokenizedExample", "Turn", "ValidationReport", "batches", "collate", "detect_format",
    "iter_examples", "iter_items", "iter_records", "normalise", "pack_examples", "prepare_data", "preview_rows",
    "render_example", "resolve_format", "split_eval", "steps_per_epoch", "tokenize_example", "validate_file",
]
