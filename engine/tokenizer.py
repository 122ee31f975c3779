"""CLIP prompt tokenizer on the Rust `tokenizers` library, id for id with transformers' CLIPTokenizer.

Reads a model's `tokenizer/` folder in either format it may carry (tokenizer.json, or the
vocab.json + merges.txt of OpenAI CLIP's simple_tokenizer) and rebuilds the same pipeline
transformers' CLIPTokenizer builds from either: NFC + whitespace collapse + lowercase, CLIP's
regex split, byte-level BPE with "</w>" word ends, <|startoftext|> ... <|endoftext|>.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from sdcpu.engine.errors import UserError

CLIP_SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
CLIP_DEFAULTS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
}
DEFAULT_MAX_LENGTH = 77
UNSET_MAX_LENGTH = 10**6
END_OF_WORD = "</w>"


@dataclass(frozen=True)
class SpecialToken:
    """An added token and the matching flags transformers' AddedToken carries."""

    content: str
    normalized: bool = False
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False

    @classmethod
    def parse(cls, value: str | dict) -> SpecialToken:
        """A token as tokenizer_config.json / special_tokens_map.json spell it: a string or a dict."""
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict) and isinstance(value.get("content"), str):
            flags = {k: bool(value.get(k, False)) for k in ("normalized", "lstrip", "rstrip", "single_word")}
            return cls(value["content"], **flags)
        raise ValueError(f"bad special token entry {value!r}")

    def added_token(self) -> AddedToken:
        """The `tokenizers` object, always special (never split, skipped when decoding)."""
        return AddedToken(self.content, single_word=self.single_word, lstrip=self.lstrip,
                          rstrip=self.rstrip, normalized=self.normalized, special=True)


def _read_json(path: Path) -> dict:
    """A JSON object from `path`, or UserError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"corrupt tokenizer file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"corrupt tokenizer file {path}: expected a JSON object")
    return data


def _checked_vocab(vocab, path: Path) -> dict[str, int]:
    """The token -> id map, or UserError if it is not one."""
    if not isinstance(vocab, dict) or not vocab:
        raise UserError(f"corrupt tokenizer file {path}: vocabulary is not a token -> id map")
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
        raise UserError(f"corrupt tokenizer file {path}: vocabulary is not a token -> id map")
    return vocab


def _checked_merges(entries, path: Path) -> list[tuple[str, str]]:
    """Merge pairs from "left right" strings or [left, right] lists, or UserError."""
    if not isinstance(entries, list):
        raise UserError(f"corrupt tokenizer file {path}: merges are not a list")
    merges = []
    for entry in entries:
        pair = entry.split(" ") if isinstance(entry, str) else entry
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise UserError(f"corrupt tokenizer file {path}: bad merge entry {entry!r}")
        merges.append((pair[0], pair[1]))
    return merges


def read_vocab_and_merges(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's vocab.json + merges.txt (first line "#version: ..." skipped, as CLIP does)."""
    vocab = _checked_vocab(_read_json(folder / "vocab.json"), folder / "vocab.json")
    try:
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"corrupt tokenizer file {folder / 'merges.txt'}: {exc}") from None
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    return vocab, _checked_merges([line for line in lines if line], folder / "merges.txt")


def read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]], list[SpecialToken]]:
    """Vocab, merges and added tokens of a BPE tokenizer.json (what transformers keeps of it)."""
    data = _read_json(path)
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE":
        raise UserError(f"corrupt tokenizer file {path}: not a BPE tokenizer")
    vocab = _checked_vocab(model.get("vocab"), path)
    merges = _checked_merges(model.get("merges"), path)
    try:
        added = [SpecialToken.parse(entry) for entry in data.get("added_tokens") or []]
    except ValueError as exc:
        raise UserError(f"corrupt tokenizer file {path}: {exc}") from None
    return vocab, merges, added


def resolve_special_tokens(config: dict, special_map: dict, added: list[SpecialToken]) -> dict[str, SpecialToken]:
    """Named special tokens as transformers' from_pretrained resolves them (config, map, added tokens)."""
    values = {**CLIP_DEFAULTS, **{k: config[k] for k in SPECIAL_TOKEN_KEYS if config.get(k)}}
    if "added_tokens_decoder" not in config:
        values.update({k: special_map[k] for k in SPECIAL_TOKEN_KEYS if special_map.get(k)})
    known = {token.content: token for token in added}
    resolved = {}
    for key in SPECIAL_TOKEN_KEYS:
        if key in values:
            token = SpecialToken.parse(values[key])
            resolved[key] = known.get(token.content, token)
    return resolved


def _added_tokens_from_config(config: dict) -> list[SpecialToken]:
    """tokenizer_config.json's "added_tokens_decoder" ({id: token}) in id order."""
    decoder = config["added_tokens_decoder"]
    if not isinstance(decoder, dict):
        raise ValueError("added_tokens_decoder is not a map")
    return [SpecialToken.parse(decoder[key]) for key in sorted(decoder, key=int)]


def build_clip_backend(vocab: dict[str, int], merges: list[tuple[str, str]], unk: str) -> Tokenizer:
    """transformers' CLIPTokenizer pipeline (convert_slow_tokenizer.CLIPConverter) around a BPE model."""
    try:
        model = BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                    end_of_word_suffix=END_OF_WORD, fuse_unk=False, unk_token=unk if unk in vocab else None)
    except Exception as exc:
        raise UserError(f"corrupt tokenizer: BPE vocabulary and merges do not fit ({exc})") from None
    backend = Tokenizer(model)
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    backend.decoder = decoders.ByteLevel()
    return backend


def _max_length(config: dict) -> int:
    """model_max_length, 77 when absent or left at transformers' "unset" huge value."""
    value = config.get("model_max_length", DEFAULT_MAX_LENGTH)
    if not isinstance(value, (int, float)) or value < 2 or value >= UNSET_MAX_LENGTH:
        return DEFAULT_MAX_LENGTH
    return int(value)


class ClipTokenizer:
    """Prompts -> (B, 77) int64 ids, as diffusers gets from transformers' CLIPTokenizer."""

    def __init__(self, backend: Tokenizer, special: dict[str, SpecialToken], max_length: int):
        self.backend = backend
        self.special = special
        self.max_length = max_length
        self.bos_id, self.eos_id, self.pad_id = (self._id_of(k) for k in ("bos_token", "eos_token", "pad_token"))
        backend.post_processor = processors.RobertaProcessing(
            (special["eos_token"].content, self.eos_id), (special["bos_token"].content, self.bos_id),
            trim_offsets=False, add_prefix_space=False,
        )

    def _id_of(self, key: str) -> int:
        """Id of a named special token, or UserError if the vocabulary lacks it."""
        token_id = self.backend.token_to_id(self.special[key].content)
        if token_id is None:
            raise UserError(f"corrupt tokenizer: {key} {self.special[key].content!r} has no id")
        return token_id

    @classmethod
    def from_folder(cls, folder: Path) -> ClipTokenizer:
        """Load tokenizer.json, or else vocab.json + merges.txt, plus the special-token configs."""
        folder = Path(folder)
        config = cls._optional_json(folder / "tokenizer_config.json")
        special_map = cls._optional_json(folder / "special_tokens_map.json")
        if (folder / "tokenizer.json").is_file():
            vocab, merges, added = read_tokenizer_json(folder / "tokenizer.json")
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab, merges = read_vocab_and_merges(folder)
            added = []
        else:
            raise UserError(f"no tokenizer in {folder}: expected tokenizer.json or vocab.json + merges.txt")
        try:
            if "added_tokens_decoder" in config:
                added = _added_tokens_from_config(config)
            special = resolve_special_tokens(config, special_map, added)
        except (ValueError, TypeError) as exc:
            raise UserError(f"corrupt tokenizer config in {folder}: {exc}") from None
        backend = build_clip_backend(vocab, merges, special["unk_token"].content)
        backend.add_special_tokens([token.added_token() for token in added + list(special.values())])
        return cls(backend, special, _max_length(config))

    @staticmethod
    def _optional_json(path: Path) -> dict:
        """A config file's object, {} when the folder does not have it."""
        return _read_json(path) if path.is_file() else {}

    def __call__(self, prompts: list[str] | str) -> np.ndarray:
        """bos + ids truncated to max_length - 2 + eos, padded with pad id: (B, max_length) int64."""
        if isinstance(prompts, str):
            prompts = [prompts]
        encodings = self.backend.encode_batch(list(prompts), add_special_tokens=False)
        ids = np.full((len(encodings), self.max_length), self.pad_id, dtype=np.int64)
        for row, encoding in zip(ids, encodings):
            tokens = [self.bos_id, *encoding.ids[: self.max_length - 2], self.eos_id]
            row[: len(tokens)] = tokens
        return ids

    def count(self, prompt: str) -> int:
        """How many tokens PROMPT has, without BOS/EOS and before truncation."""
        return len(self.backend.encode(prompt, add_special_tokens=False).ids)

    def save(self, folder: Path) -> None:
        """Write tokenizer.json and a tokenizer_config.json that from_folder and transformers both read."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / "tokenizer.json"))
        config = {
            "tokenizer_class": "CLIPTokenizer",
            **{key: token.content for key, token in self.special.items()},
            "model_max_length": self.max_length,
            "do_lower_case": True,
            "add_prefix_space": False,
            "errors": "replace",
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                      encoding="utf-8")
