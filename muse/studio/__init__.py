"""MUSE Studio: per-profile capture, teacher labeling, data filtering, student
training, export and live swap. Submodules import their heavy dependencies
lazily so `muse studio --help` stays fast."""
