"""SentencePiece tokenizer trained on the training transcripts; its model bytes travel in the
checkpoint. Model ids: 0 = CTC blank, 1..V = pieces, V + 1 = <sos/eos> (ESPnet's layout)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, List, Sequence

from core.engine import UserError


class Tokenizer:
    """Wraps a SentencePiece model. ``encode(text) -> [ids in 1..V]``, ``decode(ids) -> text``."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.proto)
        except Exception as e:
            raise UserError("tokenizer", f"not a SentencePiece model ({e})") from None
        self.n_pieces = self.sp.GetPieceSize()

    @property
    def vocab_size(self) -> int:
        """Model output size: blank + pieces + sos/eos."""
        return self.n_pieces + 2

    @property
    def blank(self) -> int:
        return 0

    @property
    def sos_eos(self) -> int:
        return self.n_pieces + 1

    def encode(self, text: str) -> List[int]:
        return [i + 1 for i in self.sp.EncodeAsIds(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.DecodeIds([int(i) - 1 for i in ids if 0 < int(i) <= self.n_pieces])

    def piece(self, i: int) -> str:
        """The piece of model id ``i`` ("▁" marks a word start)."""
        return self.sp.IdToPiece(int(i) - 1)

    def save(self, path: str | Path) -> None:
        from core.engine import atomic_path

        with atomic_path(path, overwrite=True) as tmp:
            Path(tmp).write_bytes(self.proto)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        p = Path(path)
        if not p.is_file():
            raise UserError(p, "tokenizer model not found")
        return cls(p.read_bytes())


def train_tokenizer(texts: Iterable[str], vocab_size: int = 256, model_type: str = "unigram",
                    character_coverage: float = 1.0, seed: int = 0) -> Tokenizer:
    """Train SentencePiece (``unigram`` or ``bpe``) on normalised transcripts; in memory.

    With few distinct words SentencePiece cannot reach ``vocab_size``; the size is lowered to the
    largest it accepts (its own error message names the limit)."""
    import re

    import sentencepiece as spm

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UserError("tokenizer", "no transcripts to train on")
    if model_type not in ("unigram", "bpe", "char"):
        raise UserError("tokenizer", f"model type must be unigram, bpe or char, got {model_type!r}")
    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(int(seed))
    size = int(vocab_size)
    for _ in range(3):
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.Train(
                sentence_iterator=iter(texts), model_writer=buf, vocab_size=size, model_type=model_type,
                character_coverage=character_coverage, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
                hard_vocab_limit=model_type != "char", num_threads=1,
                minloglevel=2, input_sentence_size=2_000_000, shuffle_input_sentence=True)
            return Tokenizer(buf.getvalue())
        except RuntimeError as e:
            m = re.search(r"<= (\d+)", str(e))
            if not m or int(m.group(1)) >= size:
                raise UserError("tokenizer", f"SentencePiece failed: {str(e).splitlines()[0]}") from None
            size = int(m.group(1))
    raise UserError("tokenizer", "SentencePiece could not find a workable vocabulary size")
