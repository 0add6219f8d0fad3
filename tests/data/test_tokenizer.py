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


# ------------------------------------------------ the same ids as transformers on the same files

# Texts no tokenizer may change: unicode, runs of spaces, tabs and newlines, and the special
# tokens' names written as text (they must stay text). None starts with whitespace: there
# transformers' Llama tokenizer and sentencepiece part ways (test_sentencepiece_matches_...).
CORPUS = TEXTS + [
    "ünïcødé, 漢字 and 😀 in one line", "never seen: ∮ ₿ 𝔘 \u200b zero width",
    "tabs\tand  double  spaces,   triple   and\n\nblank lines\n\n\n  indented",
    "literal specials: <image> <img> </img> <s> </s> <pad> <|endoftext|> <|im_start|> <|eot_id|>",
    "digits 1234567890 and 3.14159", "trailing spaces   ", "x\r\nwindows\r\nline ends",
]
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}")
# name -> (split regex, special tokens of the file, tokenizer_config.json)
STYLES = {
    "qwen2": (QWEN2_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>", "chat_template": CHAT}),
    "llama3": (LLAMA3_SPLIT, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
               {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                "eos_token": "<|end_of_text|>"}),
}


def byte_level_bpe(directory, style: str) -> str:
    """A byte-level BPE laid out as Qwen2's / Llama-3's tokenizer.json (their pre-tokenizer
    regex, byte-level alphabet and decoder, special tokens after the merges; Llama-3's
    post-processor adds its BOS), trained on TEXTS with `tokenizers`."""
    from tokenizers import (AddedToken, Regex, decoders, models, pre_tokenizers, processors,
                            trainers)
    from tokenizers import Tokenizer as HF

    split, specials, config = STYLES[style]
    tk = HF(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if config["bos_token"]:
        bos = config["bos_token"]
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tk.token_to_id(bos))])
    directory.mkdir(parents=True, exist_ok=True)
    tk.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return str(directory)


def assert_same_as_transformers(tok, hf_dir: str) -> None:
    """`tok` and transformers.AutoTokenizer on the files of `hf_dir` give the same ids and the
    same text, on CORPUS and on a document with image blocks between its texts."""
    transformers = pytest.importorskip("transformers")
    # split_special_tokens: text never becomes a special token, as in our tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(hf_dir, split_special_tokens=True)
    for text in CORPUS:
        ids = tok.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert tok.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text
    doc = [tok.bos_id, *tok.image_block(3), *tok.encode(CORPUS[-4]), *tok.image_block(2),
           *tok.encode("end"), tok.eos_id]
    assert tok.decode(doc) == theirs.decode(doc, skip_special_tokens=True)
    specials = ("<image>", "<img>", "</img>")
    if all(s in theirs.get_vocab() for s in specials):  # files written by save_hf
        assert theirs.convert_tokens_to_ids(list(specials)) == [
            tok.image_id, tok.image_start_id, tok.image_end_id]
        assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (
            tok.bos_id, tok.eos_id, tok.pad_id)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_byte_level_bpe_matches_transformers(tmp_path, style):
    d = byte_level_bpe(tmp_path / style, style)
    tok = Tokenizer(d)  # the directory; Tokenizer(f"{d}/tokenizer.json") is the same
    _, specials, config = STYLES[style]
    n = 700 + len(specials)
    assert tok.file_vocab_size == n
    # the image tokens are added after the file's ids, as special tokens
    assert (tok.image_id, tok.image_start_id, tok.image_end_id) == (n, n + 1, n + 2)
    assert tok.vocab_size == n + 3
    names = [tok.id_to_piece(i) for i in (tok.bos_id, tok.eos_id, tok.pad_id)]
    if style == "qwen2":  # no BOS: documents start with the EOS Qwen2 separates them with
        assert names == ["<|endoftext|>"] * 3
    else:  # no pad: EOS pads (padding is never learned)
        assert names == ["<|begin_of_text|>", "<|end_of_text|>", "<|end_of_text|>"]
    assert tok.config.chat_template == config.get("chat_template")
    assert (tok.config.bos_token, tok.config.eos_token) == (config["bos_token"], config["eos_token"])
    for text in CORPUS:  # byte-level BPE: any text comes back exactly, specials stay text
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert not set(ids) & set(dataclasses.astuple(tok.special))
    assert_same_as_transformers(tok, d)

    # Written back (what export-hf ships): transformers loads our image tokens at our ids, and
    # reading the written files again changes no id.
    tok.save_hf(str(tmp_path / "saved"))
    assert_same_as_transformers(tok, str(tmp_path / "saved"))
    again = Tokenizer(str(tmp_path / "saved"))
    assert again.special == tok.special and again.vocab_size == tok.vocab_size
    assert again.config.chat_template == config.get("chat_template")


@pytest.fixture(scope="module")
def llama2_like(tmp_path_factory):
    """A sentencepiece BPE with Llama-2's settings (identity normalisation, whitespace kept,
    byte fallback, split digits, dummy prefix; <unk> 0, <s> 1, </s> 2, no pad) beside the
    tokenizer_config.json Llama-2 ships."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(line for t in TEXTS for line in t.split("\n") if line.strip()),
        model_writer=model, vocab_size=600, model_type="bpe", unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, minloglevel=2)
    d = tmp_path_factory.mktemp("llama2")
    (d / "tokenizer.model").write_bytes(model.getvalue())
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": None, "legacy": False}))
    return str(d)


def test_sentencepiece_matches_transformers(llama2_like, tmp_path):
    tok = Tokenizer(llama2_like)
    assert tok.path.endswith("tokenizer.model") and (tok.bos_id, tok.eos_id) == (1, 2)
    assert (tok.pad_id, tok.image_id) == (600, 601)
    assert_same_as_transformers(tok, llama2_like)
    tok.save_hf(str(tmp_path / "saved"))  # our appended control pieces travel in the .model
    assert_same_as_transformers(tok, str(tmp_path / "saved"))
    assert Tokenizer(str(tmp_path / "saved")).special == tok.special


def test_sentencepiece_and_transformers_part_ways_on_leading_whitespace(llama2_like):
    """Why CORPUS has no text starting with whitespace: sentencepiece (which trained Llama-2,
    and which our tokenizer is) always prepends its dummy-prefix '▁'; transformers' Llama
    tokenizer prepends none to a text that already starts with a space, and decoding strips
    one space. Our ids are sentencepiece's own."""
    transformers = pytest.importorskip("transformers")
    tok, theirs = Tokenizer(llama2_like), transformers.AutoTokenizer.from_pretrained(llama2_like)
    ours = tok.encode(" leading")
    assert [tok.id_to_piece(i) for i in ours][:2] == ["▁", "▁"]
    assert ours == spm.SentencePieceProcessor(model_file=tok.path).encode(" leading")
    assert theirs.encode(" leading", add_special_tokens=False) == ours[1:]
    assert (tok.decode(ours), theirs.decode(ours)) == (" leading", "  leading"[1:])


def test_a_token_named_like_ours_must_be_special(tmp_path):
    d = byte_level_bpe(tmp_path / "q", "qwen2")
    data = json.loads((tmp_path / "q" / "tokenizer.json").read_text())
    data["model"]["vocab"]["<image>"] = 703  # an ordinary token, after the specials
    (tmp_path / "q" / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match=r"tokenizer.json: '<image>' is an ordinary token"):
        Tokenizer(d)
    with pytest.raises(TokenizerError, match=r"a directory without tokenizer.json or tokenizer.model"):
        Tokenizer(str(tmp_path))
