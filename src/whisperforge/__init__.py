"""whisperforge: make OpenAI's Whisper small and fast."""

__version__ = "0.1.0"
