"""Variant deltas: extraction, DARE compression, the on-disk format (DESIGN §3)."""

from merger.delta.apply import apply, decompress, decompress_dict, materialize
from merger.delta.compress import CompressOptions, compress_delta, default_seed
from merger.delta.extract import CheckpointDeltas, DeltaItem, DeltaSource, open_source
from merger.delta.format import DeltaWriter
from merger.delta.manifest import FORMAT_NAME, FORMAT_VERSION, DeltaManifest, TensorEntry
from merger.delta.reader import DeltaReader

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CheckpointDeltas",
    "CompressOptions",
    "DeltaItem",
    "DeltaManifest",
    "DeltaReader",
    "DeltaSource",
    "DeltaWriter",
    "TensorEntry",
    "apply",
    "compress_delta",
    "decompress",
    "decompress_dict",
    "default_seed",
    "materialize",
    "open_source",
]
