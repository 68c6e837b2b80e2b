"""Samba-ASR speech recognition: audio files -> text (Mamba encoder + Mamba decoder, CTC, streaming)."""
