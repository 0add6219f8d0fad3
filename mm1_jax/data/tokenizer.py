"""The tokenizer behind every part of mm1_jax: a sentencepiece `.model` or a Hugging Face
`tokenizer.json`, with the special tokens MM1 needs, and a CLI that trains a vocabulary.

`load_tokenizer(path)` opens either kind behind one interface (`Tokenizer`):
- a sentencepiece `.model` (a Llama-2 tokenizer, one trained here), or a directory holding
  `tokenizer.model`: BOS/EOS/pad come from the model when it defines them; the image placeholder
  `<image>` and the delimiters `<img>` / `</img>` (and `<pad>`, `<s>`, `</s>` where missing) are
  appended as CONTROL pieces;
- a Hugging Face `tokenizer.json` (Qwen2, Llama-3 and most current LLMs: byte-level BPE), or a
  directory holding one, read with the `tokenizers` library: BOS/EOS/pad are the
  `tokenizer_config.json` tokens where present (a tokenizer without a BOS, as Qwen2, starts
  documents with its EOS, the token Qwen2 separates documents with; without a pad, EOS pads);
  `<image>`, `<img>`, `</img>` (and `</s>` if there is no EOS) are added as special tokens.
Neither kind ever produces a special token from text: a document that literally contains
"<image>" or "<|im_start|>" cannot fake an image slot or a turn; the pipeline inserts them by id.
Appending grows `vocab_size` past the file's own size: the decoder's `model.decoder.vocab_size`
must cover it (start-up checks: mm1_jax.startup.special_ids; `python -m mm1_jax.convert decoder`
grows a checkpoint's vocabulary to it).

`tokenizer_config.json`'s chat template and its bos/eos/pad token names are kept as read
(`Tokenizer.config`), for chat fine-tuning; `Tokenizer.save_hf` writes files `transformers`
loads with the same ids (`python -m mm1_jax.convert export-hf`).

    python -m mm1_jax.data.tokenizer --input=corpus_dir_or_files --vocab_size=32000 --output=tok.model
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import io
import json
import os
from collections.abc import Iterable, Iterator

import sentencepiece as spm
import tokenizers
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from mm1_jax.errors import DataError, cli

IMAGE, IMAGE_START, IMAGE_END = "<image>", "<img>", "</img>"
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
HF_FILE, SP_FILE, HF_CONFIG = "tokenizer.json", "tokenizer.model", "tokenizer_config.json"
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


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """What `tokenizer_config.json` beside the tokenizer file says, as read (None where absent):
    the chat template (Jinja, as transformers renders it) and the names of its special tokens."""

    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    fields: dict = dataclasses.field(default_factory=dict)  # the whole file

    @classmethod
    def read(cls, directory: str) -> "TokenizerConfig":
        path = os.path.join(directory, HF_CONFIG)
        if not os.path.exists(path):
            return cls()
        try:
            with open(path, encoding="utf-8") as f:
                fields = json.load(f)
        except (OSError, ValueError) as e:
            raise TokenizerError(f"{path}: not readable JSON ({e})") from e
        template = fields.get("chat_template")
        if isinstance(template, list):  # [{"name": ..., "template": ...}]: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        jinja = os.path.join(directory, "chat_template.jinja")  # transformers >= 4.43 saves it apart
        if template is None and os.path.exists(jinja):
            with open(jinja, encoding="utf-8") as f:
                template = f.read()

        def name(key: str) -> str | None:
            value = fields.get(key)
            return value.get("content") if isinstance(value, dict) else value

        return cls(chat_template=template, bos_token=name("bos_token"),
                   eos_token=name("eos_token"), pad_token=name("pad_token"), fields=fields)


class TokenizerError(DataError):
    """A tokenizer file that cannot serve the model; the message names the file and the fix."""


class Tokenizer(abc.ABC):
    """Token ids of text, and the special ids the model and the pipeline use.

    `Tokenizer(path)` opens the kind `path` holds (as `pathlib.Path(...)` picks its flavour): a
    sentencepiece `.model` (SentencePieceTokenizer), a Hugging Face `tokenizer.json`
    (HFTokenizer), or a directory holding one (tokenizer.json first).
    path: the tokenizer file; file_vocab_size: the ids the file defines; vocab_size: with the
    special tokens appended (ids are 0..vocab_size-1); config: its tokenizer_config.json."""

    path: str
    file_vocab_size: int
    vocab_size: int
    config: TokenizerConfig
    bos_id: int
    eos_id: int
    pad_id: int
    image_id: int
    image_start_id: int
    image_end_id: int

    def __new__(cls, path: str):
        return super().__new__(_resolve(path)[0] if cls is Tokenizer else cls)

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of `text`; never a special token, whatever the text says."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens are dropped."""

    @abc.abstractmethod
    def id_to_piece(self, i: int) -> str:
        ...

    @abc.abstractmethod
    def save_hf(self, directory: str) -> list[str]:
        """Writes the tokenizer, its appended special tokens included, as files
        `transformers.AutoTokenizer` loads with the same ids; returns the file names."""

    @property
    def special(self) -> SpecialIds:
        return SpecialIds(pad=self.pad_id, bos=self.bos_id, eos=self.eos_id, image=self.image_id,
                          image_start=self.image_start_id, image_end=self.image_end_id)

    def image_block(self, tokens_per_image: int) -> list[int]:
        """The ids one image occupies: <img>, tokens_per_image x <image>, </img>."""
        return [self.image_start_id] + [self.image_id] * tokens_per_image + [self.image_end_id]

    def _hf_config(self, tokenizer_class: str) -> dict:
        """tokenizer_config.json for `save_hf`: the file's own fields, with the special tokens
        this tokenizer uses."""
        template = {"chat_template": self.config.chat_template} if self.config.chat_template else {}
        return {"tokenizer_class": tokenizer_class, **self.config.fields, **template,
                "bos_token": self.id_to_piece(self.bos_id),
                "eos_token": self.id_to_piece(self.eos_id),
                "pad_token": self.id_to_piece(self.pad_id)}


def _resolve(path: str) -> tuple[type, str]:
    """(tokenizer class, file) of `path`: a sentencepiece `.model`, a Hugging Face
    `tokenizer.json`, or a directory holding one of them (tokenizer.json first)."""
    if os.path.isdir(path):
        for name, kind in ((HF_FILE, HFTokenizer), (SP_FILE, SentencePieceTokenizer)):
            if os.path.exists(os.path.join(path, name)):
                return kind, os.path.join(path, name)
        raise TokenizerError(f"{path}: a directory without {HF_FILE} or {SP_FILE}; set config "
                             "data.tokenizer to a tokenizer file, or train one with "
                             "`python -m mm1_jax.data.tokenizer`")
    return (HFTokenizer if path.endswith(".json") else SentencePieceTokenizer), path


def _unreadable(path: str, what: str, e: Exception) -> TokenizerError:
    return TokenizerError(f"{path}: cannot read a {what} ({e}); set config data.tokenizer to a "
                          "sentencepiece .model, a Hugging Face tokenizer.json or a directory "
                          "holding one, or train one with `python -m mm1_jax.data.tokenizer`")


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model plus the special pieces it lacks, appended as CONTROL pieces."""

    def __init__(self, path: str):
        self.path = path = _resolve(path)[1]
        try:
            with open(path, "rb") as f:
                proto = sp_pb2.ModelProto.FromString(f.read())
        except (OSError, Exception) as e:
            raise _unreadable(path, "sentencepiece model", e) from e
        self.config = TokenizerConfig.read(os.path.dirname(os.path.abspath(path)))
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
        self._proto = proto
        self._sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.vocab_size = self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])  # control pieces decode to nothing

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def save_hf(self, directory: str) -> list[str]:
        """`tokenizer.model` (the appended pieces included) and a tokenizer_config.json naming
        transformers' Llama tokenizer, which converts sentencepiece models."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, SP_FILE), "wb") as f:
            f.write(self._proto.SerializeToString())
        config = {**self._hf_config("LlamaTokenizer"), "legacy": False}
        with open(os.path.join(directory, HF_CONFIG), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
        return [SP_FILE, HF_CONFIG]


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` (through the `tokenizers` library) plus the special
    tokens it lacks, added as special tokens after its own ids."""

    def __init__(self, path: str):
        self.path = path = _resolve(path)[1]
        try:
            with open(path, encoding="utf-8") as f:
                tk = tokenizers.Tokenizer.from_str(f.read())
        except (OSError, Exception) as e:
            raise _unreadable(path, "Hugging Face tokenizer.json", e) from e
        self.config = c = TokenizerConfig.read(os.path.dirname(os.path.abspath(path)))
        self.file_vocab_size = _size(tk)
        added = {t.content for t in tk.get_added_tokens_decoder().values() if t.special}

        def special(name: str, *, ours: bool) -> int:
            i = tk.token_to_id(name)
            if i is not None and ours and name not in added:
                raise TokenizerError(
                    f"{path}: {name!r} is an ordinary token of the vocabulary, so text containing "
                    f"{name!r} would turn into a special token; make it a special added token "
                    "(tokenizers' add_special_tokens) or use a tokenizer without it")
            if i is None:
                tk.add_special_tokens([tokenizers.AddedToken(name, special=True, normalized=False)])
                added.add(name)
                i = tk.token_to_id(name)
            return i

        for key, name in (("bos_token", c.bos_token), ("eos_token", c.eos_token),
                          ("pad_token", c.pad_token)):
            if name is not None and tk.token_to_id(name) is None:
                raise TokenizerError(f"{HF_CONFIG} beside {path}: {key} {name!r} is not a token "
                                     "of tokenizer.json; fix the file")
        self.eos_id = special(c.eos_token or EOS, ours=c.eos_token is None)
        self.bos_id = special(c.bos_token, ours=False) if c.bos_token else self.eos_id
        self.pad_id = special(c.pad_token, ours=False) if c.pad_token else self.eos_id
        self.image_id = special(IMAGE, ours=True)
        self.image_start_id = special(IMAGE_START, ours=True)
        self.image_end_id = special(IMAGE_END, ours=True)
        tk.encode_special_tokens = True  # text never turns into a special token
        self._tk = tk
        self.vocab_size = _size(tk)

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tk.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        return self._tk.id_to_token(int(i))

    def save_hf(self, directory: str) -> list[str]:
        """`tokenizer.json` with the added tokens and tokenizer_config.json (the file's own
        fields and tokenizer class, else transformers' generic fast tokenizer)."""
        os.makedirs(directory, exist_ok=True)
        self._tk.save(os.path.join(directory, HF_FILE))
        with open(os.path.join(directory, HF_CONFIG), "w", encoding="utf-8") as f:
            json.dump(self._hf_config("PreTrainedTokenizerFast"), f, indent=2, ensure_ascii=False)
        return [HF_FILE, HF_CONFIG]


def _size(tk: tokenizers.Tokenizer) -> int:
    """Ids 0..n-1 a tokenizer defines (its largest id + 1: a vocabulary may leave gaps)."""
    return max(tk.get_vocab(with_added_tokens=True).values()) + 1


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
    return SentencePieceTokenizer(output)


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
