"""SentencePiece tokenizer with the special tokens MM1 needs, and a CLI that trains a vocabulary.

Any `.model` loads (a Llama tokenizer, one trained here): BOS/EOS/pad come from the model when it
defines them; the image placeholder `<image>` and the delimiters `<img>` / `</img>` (and `<pad>`,
`<s>`, `</s>` where missing) are appended as CONTROL pieces. Control pieces are never produced by
`encode`, so a document that literally contains "<image>" cannot fake an image slot; the pipeline
inserts them by id. Appending grows `vocab_size` past the file's own size: the decoder's
`model.decoder.vocab_size` must cover it (start-up checks: mm1_jax.startup.special_ids).

    python -m mm1_jax.data.tokenizer --input=corpus_dir_or_files --vocab_size=32000 --output=tok.model
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
from collections.abc import Iterable, Iterator

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from mm1_jax.errors import DataError, cli

IMAGE, IMAGE_START, IMAGE_END = "<image>", "<img>", "</img>"
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
_Piece = sp_pb2.ModelProto.SentencePiece


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The special token ids the model, the pipeline and evaluation need, resolved once at
    start-up from the tokenizer and passed along as a value."""

    pad: int
    bos: int
    eos: int
    image: int  # the image placeholder <image>, one per image token
    image_start: int  # <img>
    image_end: int  # </img>


class TokenizerError(DataError):
    """A tokenizer file that cannot serve the model; the message names the file and the fix."""


class Tokenizer:
    """A sentencepiece model plus the special ids the model and the pipeline use."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                proto = sp_pb2.ModelProto.FromString(f.read())
        except (OSError, Exception) as e:
            raise TokenizerError(f"{path}: cannot read a sentencepiece model ({e}); set "
                                 "config data.tokenizer to a .model file, or train one with "
                                 "`python -m mm1_jax.data.tokenizer`") from e
        self.file_vocab_size = len(proto.pieces)
        spec = proto.trainer_spec
        ids = {p.piece: i for i, p in enumerate(proto.pieces)}

        def special(name: str, spec_id: int) -> int:
            if 0 <= spec_id < len(proto.pieces):
                return spec_id
            if name in ids:
                if proto.pieces[ids[name]].type == _Piece.NORMAL:
                    raise TokenizerError(
                        f"{path}: piece {name!r} is an ordinary piece, so text containing "
                        f"{name!r} would turn into a special token; train the vocabulary with "
                        f"{name!r} as a control symbol (this module's CLI does)")
                return ids[name]
            proto.pieces.add(piece=name, score=0.0, type=_Piece.CONTROL)
            ids[name] = len(proto.pieces) - 1
            return ids[name]

        self.bos_id = special(BOS, spec.bos_id)
        self.eos_id = special(EOS, spec.eos_id)
        self.pad_id = special(PAD, spec.pad_id)
        self.image_id = special(IMAGE, -1)
        self.image_start_id = special(IMAGE_START, -1)
        self.image_end_id = special(IMAGE_END, -1)
        self._sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.vocab_size = self._sp.get_piece_size()

    @property
    def special(self) -> SpecialIds:
        return SpecialIds(pad=self.pad_id, bos=self.bos_id, eos=self.eos_id, image=self.image_id,
                          image_start=self.image_start_id, image_end=self.image_end_id)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens are dropped (control pieces decode to nothing)."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def image_block(self, tokens_per_image: int) -> list[int]:
        """The ids one image occupies: <img>, tokens_per_image x <image>, </img>."""
        return [self.image_start_id] + [self.image_id] * tokens_per_image + [self.image_end_id]


# ---------------------------------------------------------------------------------- training


def train_tokenizer(texts: Iterable[str], vocab_size: int, output: str,
                    model_type: str = "unigram", max_sentences: int = 2_000_000) -> Tokenizer:
    """Trains a vocabulary on `texts`, with the special tokens at fixed low ids.

    Ids: 0 <pad>, 1 <s>, 2 </s>, 3 <unk>, 4 <image>, 5 <img>, 6 </img>. Identity normalisation,
    kept whitespace and byte fallback make `decode(encode(text)) == text` for any text, which
    the pipeline's round-trip tests rely on.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(texts, max_sentences), model_writer=model,
        vocab_size=vocab_size, model_type=model_type, character_coverage=0.9995,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        pad_piece=PAD, bos_piece=BOS, eos_piece=EOS,
        control_symbols=[IMAGE, IMAGE_START, IMAGE_END],
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, allow_whitespace_only_pieces=True, hard_vocab_limit=True,
        num_threads=1,  # one thread: the same corpus always gives the same vocabulary
        minloglevel=2,
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "wb") as f:
        f.write(model.getvalue())
    return Tokenizer(output)


def _lines(texts: Iterable[str], limit: int) -> Iterator[str]:
    n = 0
    for text in texts:
        for line in text.split("\n"):
            # sentencepiece drops lines longer than max_sentence_length (4192 bytes) anyway
            if line.strip() and len(line.encode()) < 4192:
                yield line
                n += 1
                if n >= limit:
                    return


def corpus_texts(paths: list[str], text_field: str = "text") -> Iterator[str]:
    """Text from converted corpora (directories or .array_record shards), .jsonl, or plain files."""
    from mm1_jax.data import records

    for path in paths:
        if os.path.isdir(path):
            shards = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(path) for f in fs
                            if f.endswith(".array_record"))
            for r in records.read_records(shards):
                yield from r.texts
        elif path.endswith(".array_record"):
            for r in records.read_records(path):
                yield from r.texts
        elif path.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        value = json.loads(line).get(text_field)
                    except (json.JSONDecodeError, AttributeError):
                        continue
                    if isinstance(value, str):
                        yield value
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                yield f.read()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", required=True, help="comma-separated corpus dirs, shards, .jsonl or text files")
    p.add_argument("--output", required=True, help="path of the .model file to write")
    p.add_argument("--vocab_size", type=int, default=32_000)
    p.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--text_field", default="text", help="JSONL field holding the text")
    p.add_argument("--max_sentences", type=int, default=2_000_000)
    a = p.parse_args(argv)
    tok = train_tokenizer(corpus_texts(a.input.split(","), a.text_field), a.vocab_size, a.output,
                          a.model_type, a.max_sentences)
    print(json.dumps({"output": a.output, "vocab_size": tok.vocab_size, "pad_id": tok.pad_id,
                      "bos_id": tok.bos_id, "eos_id": tok.eos_id, "image_id": tok.image_id,
                      "image_start_id": tok.image_start_id, "image_end_id": tok.image_end_id}))


if __name__ == "__main__":
    cli(main)()
