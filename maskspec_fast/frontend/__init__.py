"""Front end: audio decoding and the waveform -> log-mel transform (reference, and DALI when installed)."""
from .audio import AUDIO_EXTENSIONS, MIN_SAMPLES, AudioFileError, crop_or_pad, load_audio, resample
from .logmel import SAMPLE_RATE, LogMel, MelSettings, kaldi_mel_banks, log_mel, num_frames

__all__ = ["LogMel", "MelSettings", "SAMPLE_RATE", "kaldi_mel_banks", "log_mel", "num_frames"]
__all__ += ["AUDIO_EXTENSIONS", "MIN_SAMPLES", "AudioFileError", "crop_or_pad", "load_audio", "resample"]
