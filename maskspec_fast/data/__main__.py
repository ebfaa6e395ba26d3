"""``python -m maskspec_fast.data prepare SRC_SPEC OUT_DIR``: decode a source once into training shards."""
from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  python -m maskspec_fast.data prepare hdf5:/as/balanced_train.h5,/as/unbalanced_train.h5 /fast/as_shards --workers 16
  python -m maskspec_fast.data prepare folder:/data/my_audio /fast/my_shards
  python -m maskspec_fast.data prepare 'webdataset:/data/flac/shard-{000000..000099}.tar' /fast/pcm_shards
then train with the --data spec it prints, e.g.
  python -m maskspec_fast.train pretrain --data 'webdataset:/fast/as_shards/shard-{000000..002040}.tar'

A killed run is resumed by running the same command again: complete shards are kept, the rest are redone.
Clips that cannot be decoded are left out and listed in OUT_DIR/bad_files.csv (--strict: stop at the first).
One prepare at a time writes to OUT_DIR (a lock file; a second one stops with an error). A full disk stops the run
with one line; the complete shards are kept and the same command resumes.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m maskspec_fast.data", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("prepare", help="decode every clip once into WebDataset shards (+ index, bad-file report)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("src", metavar="SRC_SPEC", help="any --data spec: folder:, manifest:, hdf5:, webdataset:, hf:, ...")
    q.add_argument("out", metavar="OUT_DIR", help="output folder (created; a rerun resumes)")
    q.add_argument("--workers", type=int, default=1, help="parallel processes, one shard each at a time (default 1)")
    q.add_argument("--shard-size", type=int, default=1000, help="clips per shard (default 1000: ~640 MB of 10-s "
                   "PCM16 clips)")
    q.add_argument("--format", choices=("wav", "flac"), default="wav",
                   help="audio members: wav = 16-bit PCM, read without a decoder (default); flac = half the size, "
                        "decoded when read")
    q.add_argument("--sample-rate", type=int, default=32000, help="output rate in Hz (default 32000)")
    q.add_argument("--strict", action="store_true", help="stop at the first bad clip instead of listing it (audioset: / "
                   "vggsound:: refuse missing downloads too)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from ..frontend.audio import AudioFileError
    from .base import DatasetError
    from .official import say_missing_in_one_line
    from .prepare import PrepareError, prepare

    args = build_parser().parse_args(argv)
    say_missing_in_one_line()  # audioset: / vggsound: missing downloads: one line, listed in OUT_DIR/missing.csv
    try:
        prepare(args.src, args.out, shard_size=args.shard_size, workers=args.workers, fmt=args.format,
                sample_rate=args.sample_rate, progress=not args.quiet, strict=args.strict)
    except (DatasetError, AudioFileError, PrepareError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
