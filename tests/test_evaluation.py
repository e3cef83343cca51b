"""Perplexity and its data: the GPTQ protocol against a hand computation, data sources, clear errors."""

from __future__ import annotations

import gzip
import json
import math

import pytest
import torch
from tiny import byte_tokenizer, tiny_model

from superweight.errors import DataError
from superweight.measure.corpus import load_text, tokenize_corpus, wikitext_rows
from superweight.measure.perplexity import kl_divergence, next_token_logprobs, perplexity, perplexity_on_ids
from superweight.model.interventions import WeightRef, scaled


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("LlamaForCausalLM", seed=3), byte_tokenizer()


@pytest.fixture
def fake_data(tmp_path):
    """A data folder with a small wiki.test.raw in the release's format (blank lines are one space)."""
    folder = tmp_path / "data" / "wikitext2"
    folder.mkdir(parents=True)
    raw = " \n = Alpha = \n \n The alpha river flows . It is 3 @,@ 000 km long .\n \n = Beta = \n The end .\n"
    (folder / "wiki.test.raw").write_text(raw * 4, encoding="utf-8")
    return tmp_path / "data", raw * 4


def reference_nll(model, windows: torch.Tensor) -> float:
    """Mean next-token loss, computed by hand in float64 position by position."""
    total, count = 0.0, 0
    with torch.no_grad():
        for window in windows:
            logits = model(window[None]).logits[0].double()
            for t in range(window.numel() - 1):
                row = logits[t]
                total += float(torch.logsumexp(row, 0) - row[window[t + 1]])
                count += 1
    return total / count


def test_perplexity_equals_a_hand_computation(tiny, fake_data):
    model, tok = tiny
    data_dir, _ = fake_data
    result = perplexity(model, tok, data_dir=data_dir, seq_len=32, max_tokens=100)
    windows = tokenize_corpus(tok, load_text("wikitext2", data_dir), seq_len=32, max_tokens=100).ids
    assert windows.shape == (3, 32) and result.windows == 3 and result.tokens == 3 * 31
    expected = reference_nll(model, windows)
    assert result.nll == pytest.approx(expected, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-5)
    d = result.to_dict()
    assert d["source"] == "wikitext2" and d["seq_len"] == 32 and len(d["sha256"]) == 64 and d["seconds"] > 0


def test_wikitext_is_joined_like_gptq_and_cut_into_non_overlapping_windows(tiny, fake_data):
    model, tok = tiny
    data_dir, raw = fake_data
    corpus = load_text("wikitext2", data_dir)
    rows = wikitext_rows(raw)
    assert rows[0] == "" and rows[1] == " = Alpha = \n"  # what the hub data set has per row
    assert corpus.text == "\n\n".join(rows)
    all_ids = torch.tensor(tok(corpus.text)["input_ids"])
    w = tokenize_corpus(tok, corpus, seq_len=40)
    assert w.windows == all_ids.numel() // 40 and w.corpus_tokens == all_ids.numel()
    assert torch.equal(w.ids.flatten(), all_ids[: w.tokens])  # consecutive, no overlap, tail dropped
    # seq_len is capped at the model's context (128 for the tiny model)
    assert tokenize_corpus(tok, corpus, seq_len=4096, model=model).seq_len == 128
    # fewer tokens than one window: a single window of max_tokens
    assert tokenize_corpus(tok, corpus, seq_len=2048, max_tokens=50).ids.shape == (1, 50)


def test_other_sources_text_jsonl_gzip(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("hello world " * 20, encoding="utf-8")
    assert load_text(str(txt)).text == "hello world " * 20
    jl = tmp_path / "b.jsonl.gz"
    jl.write_bytes(gzip.compress(b'{"text": "one"}\n{"text": "two"}\n'))
    corpus = load_text(str(jl))
    assert corpus.text == "one\n\ntwo" and corpus.source == "file"
    c4 = tmp_path / "data" / "c4"
    c4.mkdir(parents=True)
    (c4 / "c4-validation.00000-of-00008.json").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert load_text("c4", tmp_path / "data").text == "a b"  # GPTQ's c4: documents joined by spaces


def test_bad_paths_and_malformed_files_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="does not exist"):
        load_text("wikitext2", tmp_path / "nowhere")
    with pytest.raises(DataError, match="give a data folder") as exc:
        load_text("wikitext2", tmp_path)  # a folder without wikitext2/, offline: no hub either
    assert exc.value.option == "data_dir"
    with pytest.raises(DataError, match="unknown data source"):
        load_text("wikitext3")
    with pytest.raises(DataError, match="split"):
        load_text("wikitext2", tmp_path, split="train")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00not utf8")
    with pytest.raises(DataError, match="not UTF-8"):
        load_text(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="no text"):
        load_text(str(empty))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match=r"broken.jsonl:2 is not valid JSON"):
        load_text(str(broken))
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match='no "text"'):
        load_text(str(wrong))
    gz = tmp_path / "x.txt.gz"
    gz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="gzip"):
        load_text(str(gz))
    with pytest.raises(DataError, match="is a folder"):
        load_text(str(tmp_path))


def test_kl_divergence_is_zero_for_the_same_model_and_positive_after_an_edit(tiny):
    model, _ = tiny
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    ref = next_token_logprobs(model, ids)
    same = kl_divergence(ref, model, ids)
    assert same.mean == 0.0 and same.same_top_p == 1.0 and same.tokens == 48
    from superweight.model.architectures import down_projections

    site = down_projections(model)[0]
    refs = [WeightRef(site, r, c) for r in range(8) for c in range(8)]
    with scaled(refs, 50.0):
        edited = kl_divergence(ref, model, ids)
    assert edited.mean > 0 and edited.max >= edited.p99 >= edited.median >= 0
    with pytest.raises(DataError, match="reference windows"):
        kl_divergence(ref[:1], model, ids)
    assert perplexity_on_ids(model, ids.flatten(), 24).windows == 2


def test_real_wikitext2_perplexity_on_smollm2(smollm2, data_dir):
    result = perplexity(smollm2.model, smollm2.tokenizer, data_dir=data_dir, seq_len=256, max_tokens=512)
    assert result.sha256 == "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"
    assert result.windows == 2 and result.tokens == 2 * 255
    assert 5 < result.perplexity < 200  # a working 135M model on Wikipedia text
