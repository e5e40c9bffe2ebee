"""Reading and writing model folders: lazy safetensors in, streamed shards out."""

from merger.io.checkpoint import Checkpoint, TensorInfo, fingerprint, resolve_model_dir
from merger.io.writer import ShardedWriter, TensorSpec, parse_size

__all__ = [
    "Checkpoint",
    "ShardedWriter",
    "TensorInfo",
    "TensorSpec",
    "fingerprint",
    "parse_size",
    "resolve_model_dir",
]
