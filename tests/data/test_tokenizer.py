"""SentencePiece tokenizer: ids, padding, truncation, round trip, CLI and graceful errors."""

from __future__ import annotations

import io
import json
import pickle

import pytest
import sentencepiece as spm
import torch

from data.tokenizer import PAD_ID, UNK_ID, Tokenizer, train_tokenizer
from data.tokenizer import main as tokenizer_main
from tests.conftest import run_python

CAPTIONS = [
    "a red circle moves to the left",
    "the blue square drifts upward slowly",
    "a small green triangle slides right quickly",
    "two objects: a yellow star and a purple ring",
    "an orange diamond falls down at a steady pace",
    "the big cyan cross wanders to the left",
    "a tiny magenta heart rises quickly",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tok") / "captions.model"
    train_tokenizer(CAPTIONS * 3, vocab_size=120, out=out)
    return Tokenizer(out)


def test_special_ids_and_vocab(tok):
    assert tok.sp.pad_id() == PAD_ID == 0 and tok.sp.unk_id() == UNK_ID == 1
    assert tok.sp.bos_id() == -1 and tok.sp.eos_id() == -1
    assert 30 <= tok.vocab_size <= 120  # a soft ceiling on a tiny corpus
    assert tok.sp.id_to_piece(0) == "<pad>"


def test_round_trip(tok):
    for text in CAPTIONS:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("A RED Circle")) == "a red circle"  # lowercased by the normaliser


def test_encode_batch_pads_truncates_and_counts(tok):
    texts = ["a red circle", CAPTIONS[3], ""]
    ids, lengths = tok.encode_batch(texts, max_len=8)
    assert ids.dtype == lengths.dtype == torch.int64 and ids.shape == (3, 8)
    for row, length, text in zip(ids, lengths, texts):
        ref = tok.sp.encode(text)[:8]  # the library itself is the reference
        assert length.item() == len(ref)
        assert row[: len(ref)].tolist() == ref
        assert (row[len(ref) :] == PAD_ID).all()
    assert lengths[1] == 8 and len(tok.sp.encode(texts[1])) > 8  # really truncated
    assert lengths[2] == 0
    assert tok.decode(ids[:1]) == [tok.sp.decode(tok.sp.encode("a red circle")[:8])]


def test_encode_batch_remembers_texts_without_changing_results(tok, monkeypatch):
    texts = [CAPTIONS[0], "", CAPTIONS[1], CAPTIONS[0], "a red circle"]
    first = tok.encode_batch(texts, max_len=6)
    second = tok.encode_batch(list(reversed(texts)), max_len=12)  # served from memory, other cut
    for ids, lengths, order, cut in ((*first, texts, 6), (*second, list(reversed(texts)), 12)):
        for row, length, text in zip(ids, lengths, order):
            ref = tok.sp.encode(text)[:cut]
            assert length.item() == len(ref) and row[: len(ref)].tolist() == ref and not row[len(ref) :].any()
    monkeypatch.setattr(type(tok), "cache_size", 0)  # a full memory encodes every call anew
    fresh = pickle.loads(pickle.dumps(tok))
    fresh._pieces.clear()
    assert torch.equal(fresh.encode_batch(texts, 6)[0], first[0]) and not fresh._pieces


def test_unknown_characters_map_to_unk(tok):
    assert UNK_ID in tok.encode("λ")


def test_pickles_for_dataloader_workers(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(CAPTIONS[0]) == tok.encode(CAPTIONS[0])


def test_vocab_too_small_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"too small.*use at least \d+"):
        train_tokenizer(CAPTIONS, vocab_size=8, out=tmp_path / "x.model")
    assert not (tmp_path / "x.model").exists()


def test_rejects_model_with_other_special_ids(tmp_path):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CAPTIONS), model_writer=model, vocab_size=40, minloglevel=2, hard_vocab_limit=False
    )
    path = tmp_path / "default_ids.model"
    path.write_bytes(model.getvalue())  # sentencepiece defaults: unk 0, bos 1, eos 2, no pad
    with pytest.raises(ValueError, match="pad id 0"):
        Tokenizer(path)


def test_cli_trains_from_manifest(tmp_path):
    manifest = tmp_path / "m.jsonl"
    lines = [
        {"media": f"v{i}.mp4", "captions": [{"text": c, "start": 0.0, "end": 1.0}]} for i, c in enumerate(CAPTIONS)
    ]
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "cli.model"
    cmd = ["-m", "data.tokenizer", "train", "--manifest", str(manifest), "--vocab-size", "60"]
    run = run_python(cmd + ["--out", str(out)])
    assert run.returncode == 0, run.stderr
    tok = Tokenizer(out)
    assert tok.decode(tok.encode(CAPTIONS[1])) == CAPTIONS[1]
    # Errors end the command with one line, not a traceback (in-process: a second interpreter costs seconds).
    with pytest.raises(SystemExit) as bad:
        tokenizer_main(["train", "--manifest", str(manifest), "--vocab-size", "4", "--out", str(tmp_path / "y.model")])
    assert "too small" in str(bad.value.code) and "\n" not in str(bad.value.code)
