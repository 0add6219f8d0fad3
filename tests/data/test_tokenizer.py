"""Tokenizer: special tokens on a user model (Llama-like), the training CLI, round trips."""

import dataclasses
import io
import json

import pytest
import sentencepiece as spm
from pydoc_data import topics as pydoc_topics
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from experiments.demo_cpu import get_config
from mm1_jax.config import ConfigError
from mm1_jax.data import records
from mm1_jax.data.tokenizer import Tokenizer, TokenizerError, main
from mm1_jax.startup import special_ids

TEXTS = [pydoc_topics.topics[k] for k in ("if", "while", "for", "try", "with", "class")]


@pytest.fixture(scope="module")
def llama_like(tmp_path_factory):
    """A BPE model laid out like Llama's: <unk> 0, <s> 1, </s> 2, no pad, no image tokens."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(line for t in TEXTS for line in t.split("\n") if line.strip()),
        model_writer=model, vocab_size=600, model_type="bpe", unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, byte_fallback=True, minloglevel=2)
    path = tmp_path_factory.mktemp("tok") / "llama_like.model"
    path.write_bytes(model.getvalue())
    return str(path)


def test_user_model_gets_the_missing_special_tokens(llama_like):
    tok = Tokenizer(llama_like)
    assert (tok.bos_id, tok.eos_id) == (1, 2)  # the model's own
    assert tok.file_vocab_size == 600
    # appended after the file's pieces, in a fixed order: <pad>, <image>, <img>, </img>
    assert (tok.pad_id, tok.image_id, tok.image_start_id, tok.image_end_id) == (600, 601, 602, 603)
    assert tok.vocab_size == 604
    assert [tok.id_to_piece(i) for i in (600, 601, 602, 603)] == ["<pad>", "<image>", "<img>", "</img>"]
    # control pieces never come out of encode: literal text cannot fake an image slot
    ids = tok.encode("look: <image> <img> </img> <pad>")
    assert not set(ids) & set(dataclasses.astuple(tok.special))
    assert tok.decode([tok.bos_id, tok.image_start_id, tok.image_id] + tok.encode("if x") +
                      [tok.eos_id]) == "if x"


def test_start_up_resolves_special_ids_and_checks_the_vocabulary(llama_like):
    tok = Tokenizer(llama_like)
    cfg = get_config()
    cfg.data.tokenizer = llama_like
    cfg.model.decoder.vocab_size = 600
    with pytest.raises(ConfigError, match=r"model.decoder.vocab_size: 600 .* use >= 604"):
        special_ids(cfg)
    cfg.model.decoder.vocab_size = 604
    ids = special_ids(cfg)
    assert ids.image == tok.image_id == 601 and ids == tok.special
    assert "image_token_id" not in cfg.model  # resolved as a value, never written back


def test_cli_trains_with_fixed_special_ids_and_exact_round_trip(tmp_path, capsys):
    recs = [records.Record("text", str(i), "t", [records.text_segment(t)]) for i, t in enumerate(TEXTS)]
    records.write_records(str(tmp_path / "corpus" / "text" / "a.array_record"), recs)
    (tmp_path / "extra.jsonl").write_text(json.dumps({"text": "ünïcødé and 漢字 😀"}) + "\n{bad\n")
    main([f"--input={tmp_path}/corpus,{tmp_path}/extra.jsonl", "--vocab_size=700",
          f"--output={tmp_path}/new.model"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["vocab_size"] == 700
    tok = Tokenizer(str(tmp_path / "new.model"))
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.image_id, tok.image_start_id,
            tok.image_end_id) == (0, 1, 2, 4, 5, 6)
    assert tok.vocab_size == 700  # nothing appended: the CLI trains them in
    for text in TEXTS + [" leading space", "tabs\tand  double  spaces\n\n", "ünïcødé 漢字 😀",
                         "never seen: ∮ ₿ 𝔘"]:
        assert tok.decode(tok.encode(text)) == text


def test_ordinary_piece_named_like_a_special_token_is_refused(llama_like, tmp_path):
    proto = sp_pb2.ModelProto.FromString(open(llama_like, "rb").read())
    proto.pieces[-1].piece = "<image>"  # an ordinary (NORMAL) piece
    (tmp_path / "bad.model").write_bytes(proto.SerializeToString())
    with pytest.raises(TokenizerError, match=r"bad.model: piece '<image>' is an ordinary piece"):
        Tokenizer(str(tmp_path / "bad.model"))
    with pytest.raises(TokenizerError, match=r"missing.model: cannot read .* data.tokenizer"):
        Tokenizer(str(tmp_path / "missing.model"))
