"""A tiny CLIP-style byte-level BPE tokenizer folder, trained offline on a built-in caption corpus.

Same layout and vocabulary order as OpenAI CLIP's simple_tokenizer (bytes, bytes + "</w>",
merges, then <|startoftext|> and <|endoftext|>), so transformers' CLIPTokenizer loads it as it
loads a real SD1.5 `tokenizer/` folder; it only has ~1000 entries instead of 49408.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MERGE_COUNT = 486
MODEL_MAX_LENGTH = 77
WORD_PATTERN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")

CORPUS = """
a photo of a cat sitting on a red chair in the living room
a photo of a dog running on the beach at sunset
a painting of a mountain landscape with a blue lake and green trees
an oil painting of a castle on a hill under a dramatic cloudy sky
a portrait of a young woman with long brown hair, studio lighting
a portrait of an old man with a white beard, highly detailed
a close up photo of a yellow flower in the garden, soft focus
a watercolor illustration of a small house in the forest
a cute orange kitten playing with a ball of wool
a golden retriever puppy sleeping on a wooden floor
a black and white photograph of a city street at night
a futuristic city skyline with tall buildings and flying cars
a red sports car parked in front of a modern building
a bowl of fresh fruit on a kitchen table, morning light
a cup of coffee and a book on a table near the window
an astronaut riding a horse on the moon, digital art
a fantasy dragon flying over snowy mountains, epic scene
a small boat on a calm river surrounded by autumn trees
a field of purple flowers under a bright summer sky
a green circle, a blue square and a yellow triangle on a white background
a pink heart shape and an orange star drawn with colored pencils
a wooden bridge over a stream in a japanese garden
a lighthouse on a rocky coast during a storm, waves crashing
a bird sitting on a branch in the rain, photorealistic
a family of elephants walking across the savanna at dawn
a horse standing in a meadow with mountains in the background
a group of people sitting around a campfire at night
a snowy village with warm lights in the windows, winter evening
a beautiful sunset over the ocean with pink and purple clouds
a cozy bedroom with a large bed and soft pillows
a vase of red roses on a marble table, still life painting
a robot reading a newspaper in a cafe, cinematic lighting
a tiger walking through the jungle, sharp focus, 4k
a rabbit eating a carrot in a green field
a fox in the snow looking at the camera, wildlife photography
an owl perched on a tree branch under the full moon
a colorful hot air balloon floating above the hills
a train crossing a stone bridge in the mountains
a busy market street with colorful umbrellas and fruit stalls
a quiet library with tall shelves full of old books
a glass of orange juice on a sunny balcony
a silver spoon and a white plate on a black table
a brown bear catching a fish in a river
a dolphin jumping out of the blue water
a sailboat on the sea, clear sky, high resolution
a medieval knight in shining armor holding a sword
a little girl flying a kite in the park
a steaming bowl of noodles with vegetables, food photography
a chocolate cake with strawberries and cream
a desert with sand dunes and a single cactus
a waterfall in a tropical rainforest, lush vegetation
a dark cave lit by glowing crystals
an abstract pattern of red, blue and yellow shapes
a minimalist logo of a mountain, simple flat design
a pencil sketch of a cat's face, black and white
the eiffel tower in paris at night, long exposure
a portrait photo of a smiling child, natural light, bokeh
a cottage by the lake, trending on artstation, detailed
a street in tokyo at night with neon signs and rain reflections
it's a sunny day and the children are playing in the park
a man wearing a hat and a coat walking his dog
a woman holding an umbrella in the rain, film photo
a large gray whale swimming in the deep ocean
an ancient temple in the jungle covered with vines
a spaceship landing on a distant planet with two moons
"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / OpenAI CLIP simple_tokenizer's reversible map from bytes to printable unicode chars."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def corpus_word_counts(corpus: str = CORPUS) -> Counter:
    """Words of the corpus as CLIP splits them, each as byte chars with "</w>" on the last one."""
    byte_chars = bytes_to_unicode()
    counts: Counter = Counter()
    for word in WORD_PATTERN.findall(corpus.lower()):
        symbols = [byte_chars[b] for b in word.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        counts[tuple(symbols)] += 1
    return counts


def _pair_counts(words: dict[tuple[str, ...], int]) -> Counter:
    """How often each adjacent symbol pair occurs, weighted by word frequency."""
    pairs: Counter = Counter()
    for symbols, count in words.items():
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] += count
    return pairs


def _apply_merge(words: dict[tuple[str, ...], int], pair: tuple[str, str]) -> dict:
    """Every word with each occurrence of `pair` fused into one symbol."""
    merged_words = {}
    for symbols, count in words.items():
        out: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                out.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        merged_words[tuple(out)] = merged_words.get(tuple(out), 0) + count
    return merged_words


def learn_merges(word_counts: Counter, merge_count: int, known: set[str]) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly fuse the most frequent pair (ties: smallest pair), new tokens only."""
    words = dict(word_counts)
    merges: list[tuple[str, str]] = []
    known = set(known)
    while len(merges) < merge_count:
        candidates = [(-n, pair) for pair, n in _pair_counts(words).items() if "".join(pair) not in known]
        if not candidates:
            break
        pair = min(candidates)[1]
        merges.append(pair)
        known.add("".join(pair))
        words = _apply_merge(words, pair)
    return merges


def build_vocab(merge_count: int = MERGE_COUNT) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary order: bytes, bytes + "</w>", merged tokens, then BOS and EOS."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + END_OF_WORD for c in byte_chars]
    merges = learn_merges(corpus_word_counts(), merge_count, set(tokens))
    tokens += ["".join(pair) for pair in merges] + [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}, merges


def _special_token(content: str) -> dict:
    """An AddedToken entry as the SD1.5 tokenizer files spell it."""
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def _write_json(path: Path, data: dict) -> None:
    """UTF-8 JSON with stable formatting, so repeated runs write the same bytes."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tiny_clip_tokenizer(folder: Path, pad_token: str = EOS_TOKEN) -> int:
    """Write vocab.json, merges.txt and the config files of a tiny CLIP tokenizer; return vocab size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab()
    _write_json(folder / "vocab.json", vocab)
    merge_lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    (folder / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    special = {
        "bos_token": _special_token(BOS_TOKEN),
        "eos_token": _special_token(EOS_TOKEN),
        "pad_token": pad_token,
        "unk_token": _special_token(EOS_TOKEN),
    }
    _write_json(folder / "special_tokens_map.json", special)
    config = {
        "add_prefix_space": False,
        **special,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "CLIPTokenizer",
    }
    _write_json(folder / "tokenizer_config.json", config)
    return len(vocab)
