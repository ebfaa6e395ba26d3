"""The front end's fixed numbers, defined once (the PaSST/MaskSpec recipe; see ``docs/MASKSPEC.md``, "Front end").

Audio is mono at 32 kHz; one log-mel frame every 320 samples (10 ms); a patch covers 16 frames x 16 mel bins.
"""
SAMPLE_RATE = 32000  # Hz: every clip is resampled to this rate
HOP_LENGTH = 320  # samples between log-mel frames (10 ms)
N_FFT = 1024
WIN_LENGTH = 800  # 25 ms symmetric Hann window, zero-padded to N_FFT and centered
N_MELS = 128
PATCH_FRAMES = 16  # frames (and mel bins) per patch: the model's patch_size
FRAME_MS = 1000.0 * HOP_LENGTH / SAMPLE_RATE  # 10.0 ms per frame
# A clip must cover one 16-frame patch: 16 full hops after the 2-tap pre-emphasis drops a sample.
MIN_SAMPLES = PATCH_FRAMES * HOP_LENGTH + 1  # 5121 at 32 kHz
# Files a folder walk lists. libsndfile reads the first four (and aiff); FFmpeg (PyAV) reads them all. Which decoder
# a file gets is decided by its content (maskspec_fast.frontend.decoders), the extension only when that is unclear.
SNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
FFMPEG_EXTENSIONS = (".m4a", ".mp4", ".m4v", ".mov", ".3gp", ".aac", ".webm", ".mkv", ".mka", ".opus", ".oga",
                     ".aiff", ".aif", ".wma", ".asf", ".ac3", ".avi", ".flv", ".wv", ".caf", ".amr")
AUDIO_EXTENSIONS = SNDFILE_EXTENSIONS + FFMPEG_EXTENSIONS

__all__ = ["AUDIO_EXTENSIONS", "FFMPEG_EXTENSIONS", "SNDFILE_EXTENSIONS", "FRAME_MS", "HOP_LENGTH", "MIN_SAMPLES", "N_FFT", "N_MELS", "PATCH_FRAMES",
           "SAMPLE_RATE", "WIN_LENGTH"]
