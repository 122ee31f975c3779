"""PNGs a user can hand to `info` and `generate --from`: crafted, huge, broken or odd ones never give a traceback."""

from __future__ import annotations

import random
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from sdcpu.engine import pngmeta
from sdcpu.engine.cli.app import app
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import params_from_text

runner = CliRunner()
LIMIT = 2**20  # the most parameters text sdcpu reads: 1 MiB
A1111_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
PROMPT = "a red circle on a blue background"
FIELDS = {"Steps": "2", "Sampler": "Euler", "CFG scale": "7", "Seed": "3", "Size": "64x64"}
TIMED_INFO = """
import sys, time
from typer.testing import CliRunner
from sdcpu.engine.cli.app import app
start = time.perf_counter()
output = CliRunner().invoke(app, ["info", sys.argv[1]]).output
print(f"{time.perf_counter() - start:.3f}")
print(output[-2000:])
"""


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output


def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def infotext(prompt: str = PROMPT, **changes: str | None) -> str:
    """An A1111-style infotext: FIELDS with CHANGES (None drops a field)."""
    fields = {**FIELDS, **changes}
    return prompt + "\n" + ", ".join(f"{key}: {value}" for key, value in fields.items() if value is not None)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(path: Path, text: str | None, width: int = 8, height: int = 8, after_idat: bool = False,
                 kind: bytes = b"tEXt") -> Path:
    """A PNG written chunk by chunk: IHDR of any size, an IDAT (tiny, undecodable, for a huge one), a parameters chunk."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    body = text.encode("latin-1") if text is not None else b""
    if kind == b"zTXt":
        body = b"\0" + zlib.compress(body, 9)
    parameters = chunk(kind, b"parameters\0" + body) if text is not None else b""
    rows = (b"\0" + bytes(3 * width)) * height if width * height <= 4096 else b"\0" * 16  # huge: not decodable
    pixels = chunk(b"IDAT", zlib.compress(rows))
    middle = pixels + parameters if after_idat else parameters + pixels
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + middle + chunk(b"IEND", b""))
    return path


def timed_info(png: Path) -> tuple[float, str]:
    """(seconds, output) of `sdcpu info PNG`, timed inside a child process that a hang cannot stall."""
    done = subprocess.run([sys.executable, "-c", TIMED_INFO, str(png)], capture_output=True, text=True, timeout=30)
    seconds, _, output = done.stdout.partition("\n")
    assert seconds, done.stderr
    return float(seconds), output


# 1. crafted parameters text: linear parsing and a size limit

@pytest.mark.parametrize("size", [100_000, 10_000_000])
def test_one_long_line_without_colon_is_answered_within_a_second(tmp_path, size):
    seconds, output = timed_info(handmade_png(tmp_path / "long.png", "a" * size))
    assert seconds < 1.0, output
    assert len([line for line in output.splitlines() if line.startswith("error:")]) == 1, output


@pytest.mark.parametrize("unit", ["a", " ", "(a", "- ", 'k: "', "x, ", 'ab: "x"y, ', "\t"])
def test_adversarial_lines_at_the_size_limit_parse_within_a_second(tmp_path, unit):
    text = "p\nSteps: 1, Seed: 2, " + unit * ((LIMIT - 40) // len(unit))
    seconds, output = timed_info(handmade_png(tmp_path / "adversarial.png", text))
    assert seconds < 1.0, output
    assert "Traceback" not in output, output


def test_text_over_the_limit_is_refused_in_one_line(tmp_path):
    png = handmade_png(tmp_path / "big.png", infotext(prompt="x" * LIMIT))
    error = one_error_line(run("info", png)[1])
    assert "1 MiB" in error and f"{LIMIT + len(infotext(prompt='')) + 11:,} bytes" in error
    assert "1 MiB" in one_error_line(run("generate", "--from", png)[1])


def test_compressed_text_bomb_is_refused_without_unpacking(tmp_path):
    png = tmp_path / "bomb.png"
    handmade_png(png, "a" * 20_000_000, kind=b"zTXt")
    start = time.perf_counter()
    error = one_error_line(run("info", png)[1])
    assert "decompresses to over" in error and time.perf_counter() - start < 1.0


def test_long_prompt_under_the_limit_still_round_trips(tmp_path):
    prompt = "masterpiece, a cat: on a chair, " * 20_000
    params = params_from_text(read_parameters(handmade_png(tmp_path / "long.png", infotext(prompt=prompt))))
    assert params.prompt == prompt and params.steps == 2


def test_parser_finds_the_same_pairs_as_a1111s_regex():
    pieces = list('ab :,"\\-/(\t\u00e9\u3000_1') + [", ", ": ", "Steps: 2", '"x, y"', '\\"', "\r"]
    rng = random.Random(7)
    for _ in range(20_000):
        line = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 24)))
        assert pngmeta.PARAM_PATTERN.findall(line) == A1111_PATTERN.findall(line), line


# 2. huge, broken and odd PNGs: the pixels are never decoded; one error line each

@pytest.mark.parametrize("after_idat", [False, True])
def test_huge_png_parameters_are_read_without_decoding(tmp_path, monkeypatch, after_idat):
    png = handmade_png(tmp_path / "huge.png", infotext(), width=30000, height=30000, after_idat=after_idat)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("read_parameters decoded the image"))
    start = time.perf_counter()
    assert read_parameters(png) == infotext()
    result, text = run("info", png)
    assert result.exit_code == 0 and "Size:" in text and "64x64" in text, text
    assert time.perf_counter() - start < 1.0


def test_generate_from_a_huge_png(tmp_path):
    png = handmade_png(tmp_path / "huge.png", infotext(), width=30000, height=30000)
    result, text = run("generate", "--from", png, "-o", tmp_path / "again.png")
    assert result.exit_code == 0, text
    assert params_from_text(read_parameters(tmp_path / "again.png")).seed == 3


def truncated(path: Path, keep: int) -> Path:
    """A PIL-written PNG with parameters, cut after KEEP bytes (negative: that many from the end)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext())
    Image.new("RGB", (16, 16), (1, 2, 3)).save(path, pnginfo=info)
    path.write_bytes(path.read_bytes()[:keep])
    return path


def corrupt_crc(path: Path) -> Path:
    data = bytearray(handmade_png(path, infotext()).read_bytes())
    data[60] ^= 0x01  # inside the parameters text, so its CRC no longer matches
    path.write_bytes(bytes(data))
    return path


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make,expected", [
    (lambda d: written(d / "x.png", b"hello, not an image"), "not an image"),
    (lambda d: written(d / "x.png", b""), "not an image"),
    (lambda d: written(d / "x.png", b"\xff\xd8\xff\xe0" + bytes(64)), "JPEG image, not a PNG"),
    (lambda d: truncated(d / "x.png", 20), "truncated"),
    (lambda d: truncated(d / "x.png", 60), "truncated"),
    (lambda d: written(d / "x.png", handmade_png(d / "x.png", infotext(), after_idat=True).read_bytes()[:70]),
     "truncated"),
    (lambda d: corrupt_crc(d / "x.png"), "CRC"),
    (lambda d: handmade_png(d / "x.png", None), "no generation"),
    (lambda d: handmade_png(d / "x.png", "just a prompt"), "no generation"),
])
def test_broken_pngs_give_one_error_line(tmp_path, make, expected):
    png = make(tmp_path)
    assert expected in one_error_line(run("info", png)[1])
    assert expected in one_error_line(run("generate", "--from", png, "-o", tmp_path / "out.png")[1])


def test_png_cut_after_its_parameters_still_gives_them(tmp_path):
    png = truncated(tmp_path / "x.png", -30)
    result, text = run("info", png)
    assert result.exit_code == 0 and "64x64" in text, text


@pytest.mark.parametrize("zip_text,lang", [(False, ""), (True, ""), (True, "en"), (False, "en")])
def test_reads_every_kind_of_text_chunk_pil_writes(tmp_path, zip_text, lang):
    text = infotext(prompt="ünïcödé ☃, a cat") if not zip_text else infotext()
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "not ours", zip=True)
    if lang:
        info.add_itxt("parameters", text, lang=lang, tkey="Parameter", zip=zip_text)
    else:
        info.add_text("parameters", text, zip=zip_text)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png", pnginfo=info)
    assert read_parameters(tmp_path / "x.png") == text


# 3. given options win over PNG fields that cannot be used

def generate_from(tmp_path: Path, text: str, *options) -> tuple:
    png = handmade_png(tmp_path / "source.png", text)
    out = tmp_path / "out.png"
    result, output = run("generate", "--from", png, *options, "-o", out)
    return result, output, out


@pytest.mark.parametrize("changes,options", [
    ({"Sampler": "DPM++ SDE", "Schedule type": "Karras"}, ("--scheduler", "euler")),
    ({"sdcpu sampler": "heun"}, ("--scheduler", "ddim")),
    ({"Size": "big"}, ("--width", "64", "--height", "64")),
    ({"Size": None}, ("--width", "64", "--height", "64")),
    ({"Steps": "many"}, ("--steps", "2")),
    ({"Steps": None}, ("--steps", "2")),
    ({"CFG scale": "high"}, ("--guidance", "7")),
    ({"Seed": "9" * 5000}, ("--seed", "3")),
])
def test_given_options_override_unusable_png_fields(tmp_path, changes, options):
    result, output, out = generate_from(tmp_path, infotext(**changes), *options)
    assert result.exit_code == 0, output
    made = params_from_text(read_parameters(out))
    assert (made.steps, made.seed, made.width, made.height, made.prompt) == (2, 3, 64, 64, PROMPT)


@pytest.mark.parametrize("changes,flag", [
    ({"Sampler": "DPM++ SDE", "Schedule type": "Karras"}, "--scheduler"),
    ({"Size": "big"}, "--width"),
    ({"Steps": "many"}, "--steps"),
    ({"Steps": None}, "--steps"),
    ({"DeepCache": "often"}, "--deepcache"),
    ({"Seed": "9" * 5000}, "--seed"),
])
def test_unusable_png_field_left_to_the_png_names_its_option(tmp_path, changes, flag):
    result, output, out = generate_from(tmp_path, infotext(**changes))
    error = one_error_line(output)
    assert f"pass {flag} " in error and len(error) < 300 and not out.exists()


def test_bad_size_is_still_read_when_only_the_width_is_given(tmp_path):
    error = one_error_line(generate_from(tmp_path, infotext(Size="big"), "--width", "64")[1])
    assert "'big' is not WIDTHxHEIGHT" in error and "--height" in error
