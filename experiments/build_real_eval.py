"""Build a labeled evaluation set of REAL recordings (ESC-50 layout, 5 folds split by source) plus an unlabeled
pre-training set of 10-s mixtures, from audio that Debian packages ship.

Sources (every one is a recording of a real instrument or voice; nothing is synthesized here):

* drum one-shots: the Hydrogen drum kits of ``hydrogen-drumkits`` (``/usr/share/hydrogen/data/drumkits``), read
  through each kit's ``drumkit.xml``. Source = drum kit (the three Millo kits count as one source: same author).
  Electronic kits (HardElectro1, ElectricEmpireKit), hand percussion and kits lacking a class are not used.
* sampled instruments: General-MIDI soundfonts (``fluid-soundfont-gm``, ``timgm6mb-soundfont``,
  ``musescore-general-soundfont-small``, ``csound-soundfont``) rendered with ``fluidsynth`` from short random
  phrases written as MIDI files. Source = (soundfont, GM program): each class has two programs (e.g. violin and
  viola), so 8 sources per class. Caveat: one soundfont's two programs may share samples, and they can land in
  different folds.
* speech: the recorded prompts of ``asterisk-core-sounds-{en,es,fr,it,ru}-wav``. Source = prompt set (language);
  the en_US and es_MX sets are the same speaker (Allison) in two languages, the only speaker shared by two folds.

Classes (15): kick, snare, hihat, tom, cymbal | piano, guitar, organ, violin, cello, flute, brass, reed, mallet |
speech. Each class has 40 clips of 5 s (8 per fold); a fold's clips come only from the sources assigned to it, so
no source (kit, soundfont program, prompt set) spans two folds. Clips: 1-4 hits of one kit piece at random onsets
and gains; a phrase of 1-6 random notes; 1-4 prompts with short gaps. Peak level random in [-18, -3] dBFS.

Unlabeled: ``--unlabeled`` mixtures of 10 s, each the sum of 2-4 fresh events (not the labeled clips) from any
class and source at random offsets and gains (instrument phrases are rendered anew; drum one-shots and speech
prompts are drawn again from the same finite files, so a sample can occur in both sets).

    python experiments/build_real_eval.py --out /tmp/real_eval            # 5 min on a busy 2-core machine
    python experiments/build_real_eval.py --out /tmp/real_eval --install  # apt-get install the packages first

Writes ``OUT/labeled/{audio/*.wav, meta/esc50.csv}`` (columns filename, fold, target, category, source, kind) and
``OUT/unlabeled/*.wav`` (32 kHz mono float WAV), plus ``OUT/manifest.json`` (sources per fold, seed, packages).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing
from maskspec_fast.frontend.audio import load_audio, resample  # noqa: E402

SR = 32000
CLIP_S = 5.0
PACKAGES = ("fluidsynth", "fluid-soundfont-gm", "timgm6mb-soundfont", "musescore-general-soundfont-small",
            "csound-soundfont", "hydrogen-drumkits", "asterisk-core-sounds-en-wav", "asterisk-core-sounds-es-wav",
            "asterisk-core-sounds-fr-wav", "asterisk-core-sounds-it-wav", "asterisk-core-sounds-ru-wav")
DRUMKITS = Path("/usr/share/hydrogen/data/drumkits")
SOUNDFONTS = {  # name -> path (package)
    "FluidR3_GM": Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    "TimGM6mb": Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
    "MuseScore_General_Lite": Path("/usr/share/sounds/sf3/MuseScore_General_Lite.sf3"),
    "csound_GMbank": Path("/usr/share/sounds/sf2/sf_GMbank.sf2"),
}
SPEECH = Path("/usr/share/asterisk/sounds")
SPEECH_SETS = ("en_US_f_Allison", "es_MX_f_Allison", "fr_CA_f_June", "it_IT_m_Carlo", "ru_RU_f_IvrvoiceRU")

# drum class -> regex on the Hydrogen instrument name (and exclusions)
DRUM_CLASSES = {
    "kick": (r"kick|bass ?drum", r"$^"),
    "snare": (r"snare", r"roll|rim|stick"),
    "hihat": (r"hi-?hat|\bhh\b|\bhat\b", r"$^"),
    "tom": (r"\btom", r"$^"),
    "cymbal": (r"crash|ride|cymbal|splash", r"bell|cup|choke"),
}
DRUM_KITS = {  # source name -> kit folders (acoustic kits that have all five classes)
    "Audiophob": ["Audiophob"], "BJA_Pacific": ["BJA_Pacific"], "Colombo": ["ColomboAcousticDrumkit"],
    "Forzee": ["ForzeeStereo"], "Millo": ["Millo-Drums_v.1", "Millo_MultiLayered2", "Millo_MultiLayered3"],
    "BlackPearl": ["The Black Pearl 1.0"], "rumpf": ["rumpf_kit_z01_h2"],
}
# instrument class -> (GM programs (0-based), MIDI pitch range)
INSTRUMENTS = {
    "piano": ((0, 1), (40, 84)), "guitar": ((24, 25), (45, 76)), "organ": ((16, 19), (40, 79)),
    "violin": ((40, 41), (55, 88)), "cello": ((42, 43), (33, 60)), "flute": ((73, 72), (64, 93)),
    "brass": ((56, 57), (48, 74)), "reed": ((71, 68), (55, 82)), "mallet": ((12, 11), (53, 89)),
}
CLASSES = [*DRUM_CLASSES, *INSTRUMENTS, "speech"]
SLOT_S = 7.0  # one rendered phrase per 7-s slot: 5 s of notes + room for the release tail


@dataclass
class Source:
    """One recording source: a drum kit, a (soundfont, program) pair or a speech prompt set."""

    name: str
    kind: str
    fold: int = 0
    pieces: dict[str, list[Path]] = field(default_factory=dict)  # drums: class -> sample files
    files: list[Path] = field(default_factory=list)  # speech: prompt files


def check_packages() -> None:
    """Fail with the apt-get line when a needed package is missing."""
    missing = []
    if shutil.which("fluidsynth") is None:
        missing.append("fluidsynth")
    if not DRUMKITS.is_dir():
        missing.append("hydrogen-drumkits")
    pkg_of = {"FluidR3_GM": "fluid-soundfont-gm", "TimGM6mb": "timgm6mb-soundfont",
              "MuseScore_General_Lite": "musescore-general-soundfont-small", "csound_GMbank": "csound-soundfont"}
    missing += [pkg_of[n] for n, p in SOUNDFONTS.items() if not p.is_file()]
    missing += [f"asterisk-core-sounds-{s[:2]}-wav" for s in SPEECH_SETS if not (SPEECH / s).is_dir()]
    if missing:
        raise SystemExit("build_real_eval: missing Debian package(s): " + " ".join(sorted(set(missing))) +
                         "\n  install with: apt-get install -y --no-install-recommends " + " ".join(PACKAGES) +
                         "\n  (or rerun with --install)")


def drum_sources() -> list[Source]:
    """Hydrogen kits -> one Source per kit group with the sample files of each drum class."""
    out = []
    for name, kits in DRUM_KITS.items():
        src = Source(name, "drums")
        for kit in kits:
            root = ET.parse(DRUMKITS / kit / "drumkit.xml").getroot()
            for inst in root.iter():
                if not inst.tag.endswith("instrument"):
                    continue
                iname = next((c.text or "" for c in inst if c.tag.endswith("name")), "").lower()
                files = [DRUMKITS / kit / (e.text or "").strip() for e in inst.iter() if e.tag.endswith("filename")]
                files = [f for f in files if f.is_file()]
                for cls, (pat, excl) in DRUM_CLASSES.items():
                    if files and re.search(pat, iname) and not re.search(excl, iname):
                        src.pieces.setdefault(cls, []).extend(files)
                        break
        lacking = [c for c in DRUM_CLASSES if not src.pieces.get(c)]
        if lacking:
            raise SystemExit(f"build_real_eval: drum kit {name} lacks {lacking}; hydrogen-drumkits changed?")
        out.append(src)
    return out


def assign_folds(sources: list[Source], rng: np.random.Generator, folds: int = 5) -> None:
    """Random source -> fold assignment, every fold getting at least one source (round-robin on a shuffle)."""
    order = rng.permutation(len(sources))
    for i, j in enumerate(order):
        sources[j].fold = i % folds + 1


# ------------------------------------------------------------------------------------------------ MIDI + fluidsynth
def _varlen(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def write_midi(path: Path, program: int, notes: list[tuple[float, float, int, int]]) -> None:
    """Type-0 standard MIDI file, channel 0: ``notes = [(start_s, duration_s, pitch, velocity)]``.

    960 ticks per quarter at 60 bpm (tempo 1,000,000 us per quarter) -> 1 tick = 1/960 s.
    """
    ticks = 960
    events = []  # (tick, order, bytes): note-offs before note-ons at the same tick
    for start, dur, pitch, vel in notes:
        events.append((int(round(start * ticks)), 1, bytes([0x90, pitch, vel])))
        events.append((int(round((start + dur) * ticks)), 0, bytes([0x80, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1]))
    track = bytearray(b"\x00\xff\x51\x03" + (1_000_000).to_bytes(3, "big") + b"\x00" + bytes([0xC0, program]))
    last = 0
    for tick, _, msg in events:
        track += _varlen(tick - last) + msg
        last = tick
    track += _varlen(ticks * 3) + b"\xff\x2f\x00"  # 3 s of tail before the end of track
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, ticks) + b"MTrk" + struct.pack(">I", len(track)) + track)


def render(sf: Path, program: int, phrases: list[list[tuple[float, float, int, int]]], tmp: Path) -> list[np.ndarray]:
    """Render each phrase (notes relative to its own start) in its own 7-s slot of one MIDI file; return the
    5-s cut of every slot, 32 kHz mono float."""
    notes = [(k * SLOT_S + s, d, p, v) for k, ph in enumerate(phrases) for s, d, p, v in ph]
    mid, wav = tmp / f"p{program}.mid", tmp / f"p{program}.wav"
    write_midi(mid, program, notes)
    cmd = ["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r", str(SR), "-F", str(wav), str(sf),
           str(mid)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not wav.is_file():
        raise SystemExit(f"build_real_eval: fluidsynth failed ({' '.join(cmd)}): {res.stderr[-500:]}")
    audio = load_audio(wav).numpy()
    n = int(CLIP_S * SR)
    cuts = []
    for k in range(len(phrases)):
        a = audio[int(k * SLOT_S * SR): int(k * SLOT_S * SR) + n]
        cuts.append(np.pad(a, (0, n - a.shape[0])))
    return cuts


def random_phrase(rng: np.random.Generator, pitch_range: tuple[int, int]) -> list[tuple[float, float, int, int]]:
    """1-6 notes, onsets in [0, 4] s, durations 0.2-1.5 s, pitches uniform in the range, velocity 50-120."""
    n = int(rng.integers(1, 7))
    starts = np.sort(rng.uniform(0, 4.0, n))
    starts[0] = rng.uniform(0, 1.0)
    return [(float(s), float(rng.uniform(0.2, 1.5)), int(rng.integers(pitch_range[0], pitch_range[1] + 1)),
             int(rng.integers(50, 121))) for s in starts]


# ------------------------------------------------------------------------------------------------ clip makers
def _place(buf: np.ndarray, x: np.ndarray, at: int, gain: float) -> None:
    end = min(buf.shape[0], at + x.shape[0])
    if end > at:
        buf[at:end] += gain * x[: end - at]


class SampleCache:
    """Decoded one-shots / prompts, resampled to 32 kHz once."""

    def __init__(self) -> None:
        self._d: dict[Path, np.ndarray] = {}

    def __call__(self, p: Path) -> np.ndarray:
        if p not in self._d:
            import soundfile as sf

            data, sr = sf.read(str(p), dtype="float32", always_2d=True)  # wav / flac / aiff (libsndfile)
            mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
            self._d[p] = (resample(mono, int(sr), SR) if sr != SR else mono).numpy().astype(np.float32)
        return self._d[p]


def drum_clip(rng, src: Source, cls: str, cache: SampleCache) -> np.ndarray:
    """1-4 hits of the kit's ``cls`` pieces (a random layer each) at random onsets and gains."""
    buf = np.zeros(int(CLIP_S * SR), np.float32)
    for _ in range(int(rng.integers(1, 5))):
        x = cache(src.pieces[cls][int(rng.integers(len(src.pieces[cls])))])
        _place(buf, x, int(rng.uniform(0, CLIP_S - 0.5) * SR), float(rng.uniform(0.4, 1.0)))
    return buf


def speech_clip(rng, src: Source, cache: SampleCache) -> np.ndarray:
    """1-4 prompts with 0.1-0.6 s gaps from a random start in [0, 1] s, cut to 5 s."""
    buf = np.zeros(int(CLIP_S * SR), np.float32)
    at = int(rng.uniform(0, 1.0) * SR)
    for _ in range(int(rng.integers(1, 5))):
        if at >= buf.shape[0]:
            break
        x = cache(src.files[int(rng.integers(len(src.files)))])
        _place(buf, x, at, 1.0)
        at += x.shape[0] + int(rng.uniform(0.1, 0.6) * SR)
    return buf


def normalize(rng, x: np.ndarray) -> np.ndarray:
    """Peak to a random level in [-18, -3] dBFS (a silent clip stays silent)."""
    peak = float(np.abs(x).max())
    if peak < 1e-6:
        return x
    return (x * (10 ** (rng.uniform(-18, -3) / 20) / peak)).astype(np.float32)


def write_wav(path: Path, x: np.ndarray) -> None:
    import soundfile as sf

    sf.write(str(path), x.astype(np.float32), SR, subtype="FLOAT")


# ------------------------------------------------------------------------------------------------ build
def build(out: Path, seed: int = 0, per_fold: int = 8, unlabeled: int = 300, folds: int = 5) -> dict:
    """Write the labeled set (``len(CLASSES) * folds * per_fold`` clips) and ``unlabeled`` 10-s mixtures."""
    check_packages()
    ss = np.random.SeedSequence(seed)
    rng_folds, rng_lab, rng_unl, rng_ph = (np.random.default_rng(s) for s in ss.spawn(4))
    cache = SampleCache()
    drums = drum_sources()
    assign_folds(drums, rng_folds, folds)
    speech = [Source(s, "speech", files=sorted((SPEECH / s).rglob("*.wav"))) for s in SPEECH_SETS]
    assign_folds(speech, rng_folds, folds)
    inst: dict[str, list[Source]] = {}
    for cls, (programs, _) in INSTRUMENTS.items():
        inst[cls] = [Source(f"{sf}:{p}", "instrument") for sf in SOUNDFONTS for p in programs]
        assign_folds(inst[cls], rng_folds, folds)

    n_unl_events = {cls: 0 for cls in CLASSES}  # how many fresh events of each class the mixtures draw
    mix_plan = []
    for _ in range(unlabeled):
        events = [(str(rng_unl.choice(CLASSES)), float(rng_unl.uniform(0, 5.0)), float(rng_unl.uniform(0.3, 1.0)))
                  for _ in range(int(rng_unl.integers(2, 5)))]
        for cls, _, _ in events:
            n_unl_events[cls] += 1
        mix_plan.append(events)

    # instrument phrases: the labeled clips of each source plus its share of the unlabeled events, one render each
    rendered: dict[str, list[np.ndarray]] = {}
    labeled_phr: dict[tuple[str, int], list[str]] = defaultdict(list)  # (cls, fold) -> source names, one per clip
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        for cls, (_programs, prange) in INSTRUMENTS.items():
            need: dict[str, int] = defaultdict(int)
            for f in range(1, folds + 1):
                srcs = [s for s in inst[cls] if s.fold == f]
                for i in range(per_fold):
                    labeled_phr[(cls, f)].append(srcs[i % len(srcs)].name)
                    need[srcs[i % len(srcs)].name] += 1
            extra = -(-n_unl_events[cls] // len(inst[cls]))
            for src in inst[cls]:
                sf, p = src.name.rsplit(":", 1)
                phrases = [random_phrase(rng_ph, prange) for _ in range(need[src.name] + extra)]
                rendered[src.name] = render(SOUNDFONTS[sf], int(p), phrases, tmp)
            print(f"  rendered {cls}: {len(inst[cls])} sources", flush=True)

    lab = out / "labeled"
    (lab / "audio").mkdir(parents=True, exist_ok=True)
    (lab / "meta").mkdir(parents=True, exist_ok=True)
    rows = []
    used: dict[str, int] = defaultdict(int)
    for target, cls in enumerate(CLASSES):
        for f in range(1, folds + 1):
            for i in range(per_fold):
                if cls in DRUM_CLASSES:
                    srcs = [s for s in drums if s.fold == f]
                    src = srcs[i % len(srcs)]
                    x, sname, kind = drum_clip(rng_lab, src, cls, cache), src.name, "drums"
                elif cls == "speech":
                    src = next(s for s in speech if s.fold == f)
                    x, sname, kind = speech_clip(rng_lab, src, cache), src.name, "speech"
                else:
                    sname, kind = labeled_phr[(cls, f)][i], "instrument"
                    x = rendered[sname][used[sname]]
                    used[sname] += 1
                name = f"{f}-{cls}-{i:02d}.wav"
                write_wav(lab / "audio" / name, normalize(rng_lab, x))
                rows.append({"filename": name, "fold": f, "target": target, "category": cls, "source": sname,
                             "kind": kind})
    with open(lab / "meta" / "esc50.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    unl = out / "unlabeled"
    unl.mkdir(parents=True, exist_ok=True)
    for k, events in enumerate(mix_plan):
        buf = np.zeros(int(2 * CLIP_S * SR), np.float32)
        for cls, offset, gain in events:
            if cls in DRUM_CLASSES:
                x = drum_clip(rng_unl, drums[int(rng_unl.integers(len(drums)))], cls, cache)
            elif cls == "speech":
                x = speech_clip(rng_unl, speech[int(rng_unl.integers(len(speech)))], cache)
            else:
                src = inst[cls][int(rng_unl.integers(len(inst[cls])))]
                pool = rendered[src.name]
                x = pool[used[src.name] % len(pool)]  # fresh phrases first (wraps only if a source ran out)
                used[src.name] += 1
            _place(buf, normalize(rng_unl, x), int(offset * SR), gain)
        write_wav(unl / f"mix_{k:04d}.wav", normalize(rng_unl, buf))

    manifest = {
        "seed": seed, "classes": CLASSES, "per_fold": per_fold, "folds": folds, "clip_seconds": CLIP_S,
        "unlabeled": unlabeled, "packages": list(PACKAGES),
        "sources_per_fold": {str(f): sorted({r["source"] for r in rows if r["fold"] == f}) for f in range(1, folds + 1)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (labeled/ and unlabeled/ are written inside)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-fold", type=int, default=8, help="clips per class per fold")
    p.add_argument("--unlabeled", type=int, default=300, help="number of 10-s unlabeled mixtures")
    p.add_argument("--install", action="store_true", help="apt-get install the Debian packages first (root)")
    args = p.parse_args(argv)
    if args.install:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], check=True)
    m = build(Path(args.out), args.seed, args.per_fold, args.unlabeled)
    n = len(m["classes"]) * m["per_fold"] * m["folds"]
    print(f"wrote {n} labeled clips ({len(m['classes'])} classes, {m['folds']} folds) and {m['unlabeled']} "
          f"unlabeled mixtures to {args.out}")


if __name__ == "__main__":
    main()
