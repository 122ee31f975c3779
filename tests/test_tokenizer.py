"""sdcpu.engine.tokenizer.ClipTokenizer vs transformers' CLIPTokenizer on the tiny CLIP vocabulary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sdcpu.engine.errors import UserError
from sdcpu.engine.tokenizer import ClipTokenizer
from sdcpu.export.tiny_tokenizer import BOS_TOKEN, EOS_TOKEN, write_tiny_clip_tokenizer

PAD_TOKENS = {"sd15": EOS_TOKEN, "sdxl2": "!"}
PROMPTS = [
    "",
    " ",
    "a photo of a cat",
    "A Photo Of A CAT",
    "an astronaut riding a horse on the moon, digital art",
    "a red car, a blue house; a green tree!",
    "it's a dog's life, they're here, we've gone, I'm ok, you'll see, he'd go",
    "IT'S LOUD",
    "1girl, 4k, 8K uhd, 1920x1080, 3.14159, 2024-01-01",
    "hello!!! what??? (masterpiece:1.2) [bad] {x} <tag> #hash @user",
    "multiple    spaces\tand\ttabs\nand\n\nnewlines   ",
    "  leading and trailing  ",
    "café naïve résumé Ångström",
    "東京の夜景, ネオン",
    "a cat 🐱 and a dog 🐶 with 👍🏽 and ❤️",
    "zebra quokka axolotl xylophone",
    "supercalifragilisticexpialidocious",
    "snake_case_word and CamelCaseWord",
    "e\u0301 composed vs \u00e9",
    "ﬁne ligature and full-width ＡＢＣ",
    "tab\u00a0nbsp\u2003em space",
    "quote \"double\" and 'single' and `back`",
    "path/to/file.png and https://example.com/a?b=c",
    "<|startoftext|> a <|endoftext|> b",
    "<|STARTOFTEXT|> upper <|ENDOFTEXT|>",
    "a!b !! c!",
    "a photo of " * 30,
    " ".join(f"word{i}" for i in range(100)),
    "x" * 500,
    "the",
]


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    """The generated vocab.json + merges.txt folder for each pad token."""
    root = tmp_path_factory.mktemp("tiny-tokenizers")
    return {name: _written(root / name, pad) for name, pad in PAD_TOKENS.items()}


def _written(folder: Path, pad_token: str) -> Path:
    write_tiny_clip_tokenizer(folder, pad_token=pad_token)
    return folder


def reference_ids(folder: Path, prompts: list[str]) -> np.ndarray:
    """What diffusers' pipelines feed the text encoder."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder)
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="np").input_ids


def _ours_saved(source: Path, out: Path) -> Path:
    ClipTokenizer.from_folder(source).save(out)
    return out


def _transformers_saved(source: Path, out: Path) -> Path:
    from transformers import CLIPTokenizerFast

    CLIPTokenizerFast.from_pretrained(source).save_pretrained(out)
    return out


def _sd15_style(source: Path, out: Path) -> Path:
    """vocab + merges with the "__type": "AddedToken" config and added_tokens_decoder of hub folders."""
    shutil.copytree(source, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    vocab = json.loads((out / "vocab.json").read_text())
    for key in ("bos_token", "eos_token", "unk_token"):
        config[key] = {"__type": "AddedToken", **config[key]}
    config["added_tokens_decoder"] = {
        str(vocab[token]): {"content": token, "lstrip": False, "normalized": True, "rstrip": False,
                            "single_word": False, "special": True}
        for token in (BOS_TOKEN, EOS_TOKEN)
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.mark.parametrize("pad", PAD_TOKENS)
@pytest.mark.parametrize("variant", ["vocab-merges", "ours-json", "transformers-json", "sd15-style"])
def test_ids_match_transformers(tiny_folders, tmp_path, pad, variant):
    source = tiny_folders[pad]
    folder = {
        "vocab-merges": lambda: source,
        "ours-json": lambda: _ours_saved(source, tmp_path / "ours"),
        "transformers-json": lambda: _transformers_saved(source, tmp_path / "hf"),
        "sd15-style": lambda: _sd15_style(source, tmp_path / "sd15"),
    }[variant]()
    ours = ClipTokenizer.from_folder(folder)(PROMPTS)
    expected = reference_ids(folder, PROMPTS)
    assert ours.dtype == np.int64 and ours.shape == (len(PROMPTS), 77)
    for prompt, got, want in zip(PROMPTS, ours, expected):
        assert got.tolist() == want.tolist(), prompt
    # Literal special tokens in prompts depend on each folder's "normalized" flags; the rest may not.
    plain = [i for i, prompt in enumerate(PROMPTS) if "<|" not in prompt]
    np.testing.assert_array_equal(ours[plain], reference_ids(source, PROMPTS)[plain])


@pytest.mark.parametrize("pad", PAD_TOKENS)
def test_layout_bos_eos_and_pad(tiny_folders, pad):
    tokenizer = ClipTokenizer.from_folder(tiny_folders[pad])
    vocab = json.loads((tiny_folders[pad] / "vocab.json").read_text(encoding="utf-8"))
    empty, long = tokenizer(["", "a photo of " * 40])
    assert empty[:2].tolist() == [vocab[BOS_TOKEN], vocab[EOS_TOKEN]]
    assert set(empty[2:].tolist()) == {vocab[PAD_TOKENS[pad]]}
    assert long[0] == vocab[BOS_TOKEN] and long[-1] == vocab[EOS_TOKEN]
    assert tokenizer("a").shape == (1, 77)


def test_tiny_vocab_is_clip_shaped_and_deterministic(tmp_path):
    size = write_tiny_clip_tokenizer(tmp_path / "one")
    write_tiny_clip_tokenizer(tmp_path / "two")
    vocab = json.loads((tmp_path / "one" / "vocab.json").read_text(encoding="utf-8"))
    assert size == len(vocab) <= 1000 and size > 900
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert (vocab[BOS_TOKEN], vocab[EOS_TOKEN]) == (size - 2, size - 1)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_tiny_vocab_knows_caption_words(tiny_folders):
    from transformers import AutoTokenizer, CLIPTokenizerFast

    for loader in (AutoTokenizer, CLIPTokenizerFast):
        tokenizer = loader.from_pretrained(tiny_folders["sd15"])
        assert tokenizer.tokenize("a photo of a cat") == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]
        assert tokenizer.model_max_length == 77


@pytest.mark.parametrize("files", [{}, {"vocab.json": "{}"}, {"merges.txt": "#version: 0.2\n"}])
def test_folder_without_tokenizer_is_user_error(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match="no tokenizer"):
        ClipTokenizer.from_folder(tmp_path)
    with pytest.raises(UserError):
        ClipTokenizer.from_folder(tmp_path / "missing")


@pytest.mark.parametrize("name, text", [
    ("vocab.json", "{not json"),
    ("vocab.json", "[1, 2]"),
    ("merges.txt", "#version: 0.2\nzz qq\n"),
    ("merges.txt", "#version: 0.2\nthree part line\n"),
    ("tokenizer_config.json", "{broken"),
    ("special_tokens_map.json", '{"pad_token": 7}'),
])
def test_corrupt_vocab_merges_is_user_error(tiny_folders, tmp_path, name, text):
    folder = shutil.copytree(tiny_folders["sd15"], tmp_path / "tok")
    (folder / name).write_text(text)
    with pytest.raises(UserError, match="corrupt"):
        ClipTokenizer.from_folder(folder)


@pytest.mark.parametrize("text", ["", "{}", '{"model": {"type": "Unigram"}}', '{"model": {"vocab": {"a": 0}}}'])
def test_corrupt_tokenizer_json_is_user_error(tiny_folders, tmp_path, text):
    folder = _ours_saved(tiny_folders["sd15"], tmp_path / "tok")
    (folder / "tokenizer.json").write_text(text)
    with pytest.raises(UserError, match="corrupt"):
        ClipTokenizer.from_folder(folder)
