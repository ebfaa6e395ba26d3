"""Front end: audio decoding and the waveform -> log-mel transform (reference, and DALI when installed)."""
from .audio import AudioFileError, crop_or_pad, load_audio, resample
from .constants import AUDIO_EXTENSIONS, FRAME_MS, HOP_LENGTH, MIN_SAMPLES, PATCH_FRAMES, SAMPLE_RATE
from .logmel import LogMel, MelSettings, kaldi_mel_banks, log_mel, model_frames, num_frames

__all__ = ["LogMel", "MelSettings", "SAMPLE_RATE", "kaldi_mel_banks", "log_mel", "model_frames", "num_frames"]
__all__ += ["AUDIO_EXTENSIONS", "FRAME_MS", "HOP_LENGTH", "MIN_SAMPLES", "PATCH_FRAMES", "AudioFileError", "crop_or_pad", "load_audio", "resample"]
