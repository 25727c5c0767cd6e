"""Model code in one place: architectures, converters, the bundled model catalogue
and inference backends. Nodes import from here; nothing here imports nodes."""
