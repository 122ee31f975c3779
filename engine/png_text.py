"""The parameters text of a PNG, read by walking its chunks: pixels never decoded, size bounded, every fault one line."""

from __future__ import annotations

import os
import struct
import zlib

PARAMETERS_KEY = "parameters"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
PARAMETERS_KEYWORD = PARAMETERS_KEY.encode() + b"\0"
KEYWORD_PEEK = 80  # a PNG text keyword is 1-79 bytes, then a NUL
MAX_CHUNK_LENGTH = 2**31 - 1  # the PNG specification's limit
# A1111's infotexts are a few kB, long prompts and extension fields included; 1 MiB is about 250k
# tokens of prompt (CLIP reads 77 at a time), and PIL itself, which A1111 reads PNGs with, refuses
# compressed text chunks above 1 MiB (PngImagePlugin.MAX_TEXT_CHUNK). Parsing 1 MiB takes < 0.1 s.
MAX_PARAMETERS_BYTES = 2**20


def read_parameters(path) -> str | None:
    """The ``parameters`` text of a PNG (ours or Automatic1111's), or None if it has none.

    Reads the chunks by hand and never decodes the pixels, so the image's size does not matter;
    the text may follow the image data. A one-line ValueError for a file that is not a PNG, is
    cut short or corrupt, or whose parameters text exceeds MAX_PARAMETERS_BYTES.
    """
    with open(path, "rb") as file:
        return parameters_in_file(file)


def parameters_in_file(file) -> str | None:
    """read_parameters of an open binary file (a PNG on disk, or one uploaded, in a BytesIO)."""
    check_signature(file.read(16))
    file.seek(len(PNG_SIGNATURE))
    while True:
        kind, length = read_chunk_header(file)
        if kind == b"IEND":
            return None
        text = parameters_in_chunk(file, kind, length)
        if text is not None:
            return text


def check_signature(head: bytes) -> None:
    """Refuse a file that does not start like a PNG, naming A1111's other output formats."""
    if head.startswith(PNG_SIGNATURE):
        return
    if head.startswith(b"\xff\xd8\xff") or (head.startswith(b"RIFF") and head[8:12] == b"WEBP"):
        kind = "a JPEG" if head.startswith(b"\xff") else "a WebP"
        raise ValueError(f"it is {kind} image, not a PNG; sdcpu reads parameters from PNG files only")
    raise ValueError("not an image file (it does not start with the PNG signature)")


def read_exactly(file, size: int) -> bytes:
    """SIZE bytes, or a ValueError if the file ends first."""
    data = file.read(size)
    if len(data) < size:
        raise ValueError("the PNG is truncated (the file ends before its IEND chunk)")
    return data


def read_chunk_header(file) -> tuple[bytes, int]:
    """(type, data length) of the next chunk."""
    length, kind = struct.unpack(">I4s", read_exactly(file, 8))
    if not kind.isalpha() or length > MAX_CHUNK_LENGTH:
        raise ValueError(f"the PNG is corrupt (a chunk header at byte {file.tell() - 8} makes no sense)")
    return kind, length


def parameters_in_chunk(file, kind: bytes, length: int) -> str | None:
    """The text if this chunk is the ``parameters`` one, else None; other chunks are skipped unread."""
    head = file.read(min(length, KEYWORD_PEEK)) if kind in TEXT_CHUNKS else b""
    if not head.startswith(PARAMETERS_KEYWORD):
        file.seek(length - len(head) + 4, os.SEEK_CUR)
        return None
    if length > MAX_PARAMETERS_BYTES:
        raise too_long(f"is {length:,} bytes")
    data = head + read_exactly(file, length - len(head))
    if zlib.crc32(kind + data) != int.from_bytes(read_exactly(file, 4), "big"):
        raise ValueError("the PNG is corrupt (its parameters chunk fails its CRC check)")
    return decode_text(kind, data[len(PARAMETERS_KEYWORD):])


def decode_text(kind: bytes, body: bytes) -> str:
    """The text of a tEXt, zTXt or iTXt chunk body (what follows the keyword's NUL)."""
    if kind == b"tEXt":
        return body.decode("latin-1")
    if kind == b"zTXt":
        return inflate(body[1:]).decode("latin-1")
    compressed, rest = body[:1] == b"\x01", body[2:]
    _language, _, rest = rest.partition(b"\0")
    _translated_key, found, text = rest.partition(b"\0")
    if not found:
        raise ValueError("the PNG is corrupt (its iTXt parameters chunk is malformed)")
    try:
        return (inflate(text) if compressed else text).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the PNG is corrupt (its parameters text is not UTF-8)") from None


def inflate(data: bytes) -> bytes:
    """A compressed text, decompressed to at most MAX_PARAMETERS_BYTES (a zlib bomb is refused, not unpacked)."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, MAX_PARAMETERS_BYTES + 1)
    except zlib.error:
        raise ValueError("the PNG is corrupt (its compressed parameters text does not decompress)") from None
    if len(text) > MAX_PARAMETERS_BYTES:
        raise too_long(f"decompresses to over {MAX_PARAMETERS_BYTES:,} bytes")
    if not inflater.eof:
        raise ValueError("the PNG is corrupt (its compressed parameters text is cut short)")
    return text


def too_long(size: str) -> ValueError:
    """The refusal of a parameters text over MAX_PARAMETERS_BYTES; SIZE says how big it is."""
    return ValueError(f"its parameters text {size}; sdcpu reads at most {MAX_PARAMETERS_BYTES // 2**20} MiB "
                      "(real infotexts are a few kB)")
