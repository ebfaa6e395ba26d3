"""The one decoder registry: which decoder reads a file, chosen by its content (its first bytes), by its extension
only when the content says nothing; used by files (``load_audio``) and by bytes in memory (HDF5 entries, tar
members, parquet cells: ``decode_bytes``) alike.

    content                                   decoder      why
    RIFF/WAVE, RF64, FLAC, Ogg Vorbis/FLAC,   libsndfile   faster than FFmpeg on these (benchmarks/RESULTS.md,
    MP3 (ID3 or an MPEG audio sync), AIFF                  "Decoders"), and it seeks to the sample
    Ogg Opus, MP4/M4A/MOV (ftyp), Matroska/   FFmpeg       libsndfile cannot read them (Opus: it can from
    WebM (EBML), ADTS AAC, ASF/WMA, AVI, ...               1.0.29, but is slower than FFmpeg here)

A file whose content was recognised as one of libsndfile's formats but that libsndfile cannot open is given to
FFmpeg before it is called bad (libsndfile refuses some valid files FFmpeg reads, e.g. WAV holding a codec it
lacks); unrecognised content is not (FFmpeg would probe random bytes until some format matched).
"""
from __future__ import annotations

import io
import os
from typing import BinaryIO

SNDFILE, FFMPEG = "sndfile", "ffmpeg"
HEAD_BYTES = 64  # enough for every signature below (Ogg's first page holds its codec's magic within 40 bytes)


def sniff(head: bytes) -> str | None:
    """The decoder for a file starting with ``head`` (its first :data:`HEAD_BYTES` bytes), or None when the
    content matches no known signature."""
    if len(head) < 4:
        return None
    four = head[:4]
    if four in (b"RIFF", b"RIFX", b"RF64"):
        return SNDFILE if head[8:12] == b"WAVE" else FFMPEG  # RIFF AVI is a video
    if four == b"fLaC" or (four == b"FORM" and head[8:12] in (b"AIFF", b"AIFC")):
        return SNDFILE
    if four == b"OggS":
        return FFMPEG if b"OpusHead" in head else SNDFILE
    if head[:3] == b"ID3":
        return SNDFILE
    if head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        return FFMPEG if (head[1] & 0x06) == 0 else SNDFILE  # layer bits 00: ADTS AAC; else MPEG audio (mp3)
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free") or four == b"\x1a\x45\xdf\xa3":
        return FFMPEG  # ISO BMFF / QuickTime (mp4, m4a, mov, 3gp; old .mov files start with moov or mdat), EBML
    if four == b"\x30\x26\xb2\x75" or head[:5] == b"#!AMR" or four in (b"wvpk", b"caff", b"FLV\x01"):
        return FFMPEG
    return None


def by_extension(name: str) -> str:
    """The decoder when the content is unclear: libsndfile for its extensions, else FFmpeg."""
    from .constants import SNDFILE_EXTENSIONS

    ext = os.path.splitext(str(name))[1].lower()
    return SNDFILE if ext in SNDFILE_EXTENSIONS else FFMPEG


def choose(head: bytes, name: str) -> str:
    """The decoder of a source: :func:`sniff`, else :func:`by_extension` of ``name``."""
    return sniff(head) or by_extension(name)


def read_head(source: str | os.PathLike | BinaryIO) -> bytes:
    """The first :data:`HEAD_BYTES` bytes of a path or a seekable binary file object (left at position 0)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return f.read(HEAD_BYTES)
    source.seek(0)
    head = source.read(HEAD_BYTES)
    source.seek(0)
    return head


def as_file(data) -> BinaryIO:
    """A binary file object over in-memory bytes (no copy for ``bytes``)."""
    return io.BytesIO(data if isinstance(data, bytes) else bytes(data))


__all__ = ["FFMPEG", "HEAD_BYTES", "SNDFILE", "as_file", "by_extension", "choose", "read_head", "sniff"]
