"""The visual node editor (`muse edit`): a DearPyGui front end over an editor
graph model that only uses the graph spec, validator and registry.

Import `muse.editor.model` for the GUI-free model; `muse.editor.app` opens the window.
"""
