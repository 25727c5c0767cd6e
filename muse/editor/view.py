"""The DearPyGui windows of `muse edit`: palette, node editor with typed
coloured pins, inspector with schema-built param widgets, validation errors on
nodes, run/stop/apply with live preview and per-node timings, Studio tab.
Every edit goes through EditorModel; this module only draws and forwards."""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any, Callable

import dearpygui.dearpygui as dpg
import numpy as np

from muse.editor.catalog import GENERIC, UNKNOWN, type_colour
from muse.editor.live import LiveSession, stats_details, stats_line
from muse.editor.model import NODE_WIDTH, Check, EditError, EditorModel, Link
from muse.editor.params import ParamWidget, widget_for, widgets_for
from muse.editor.preview import PREVIEWABLE, to_texture
from muse.graph.spec import Settings

PREVIEW_W, PREVIEW_H = 480, 270
STATS_HEIGHT = 36.0
_ERROR_RED = (255, 105, 97)
_MUTED = (150, 156, 168)
_OK_GREEN = (120, 220, 140)
_WARN_AMBER = (240, 200, 90)
_CATEGORY_COLOURS = [(62, 98, 160), (120, 80, 160), (46, 130, 110), (160, 96, 52), (150, 60, 96),
                     (70, 120, 60), (40, 110, 150), (140, 120, 40), (96, 96, 140)]
_PAYLOAD = "muse_node_type"


def category_colour(category: str) -> tuple[int, int, int]:
    if category == "unknown":
        return (90, 90, 90)
    return _CATEGORY_COLOURS[zlib.crc32(category.encode()) % len(_CATEGORY_COLOURS)]


class EditorView:
    def __init__(self, model: EditorModel, live: LiveSession, *, width: int = 1600, height: int = 900,
                 studio_root: str | Path | None = None) -> None:
        self.model = model
        self.studio_root = studio_root
        self.status: int | None = None
        self._built = False
        self.live = live
        self.width, self.height = width, height
        self.node_ids: dict[str, int] = {}
        self.node_by_id: dict[int, str] = {}
        self.attrs: dict[int, tuple[str, str, str]] = {}  # attribute id -> (node, port, "in"|"out")
        self.link_ids: dict[int, Link] = {}
        self.stats_text: dict[str, int] = {}
        self.stats_details: dict[str, int] = {}
        self.error_text: dict[str, int] = {}
        self.check: Check | None = None
        self.selected: str | None = None
        self._inspected: tuple[str | None, int] | None = None
        self._validate_due = 0.0
        self._stats_due = 0.0
        self._pin_themes: dict[str, int] = {}
        self._link_themes: dict[str, int] = {}
        self._node_themes: dict[str, int] = {}
        self._file_target: Callable[[str], None] | None = None
        self.status_message = ""
        self.preview_frames = 0
        self._structure_rev = 0
        self._relayout_due = bool(model.auto_placed)  # a file without positions: lay out again once drawn
        self.last_preview: np.ndarray | None = None  # (h, w, 3) uint8, the picture in the preview
        self.studio: Any = None
        model.listeners.append(self._on_model_change)

    # -- building ----------------------------------------------------------
    def build(self) -> None:
        """Create every window; call once after dpg.create_context()."""
        self._build_themes()
        with dpg.texture_registry():
            self._texture_data = to_texture(np.zeros((1, 1, 3), np.uint8), PREVIEW_W, PREVIEW_H)
            self.preview_texture = dpg.add_raw_texture(PREVIEW_W, PREVIEW_H, self._texture_data, format=dpg.mvFormat_Float_rgba)
        with dpg.file_dialog(show=False, callback=self._on_file_chosen, width=700, height=420, modal=True) as self.file_dialog:
            dpg.add_file_extension(".*")
            dpg.add_file_extension(".yaml", color=(120, 220, 140, 255))
        with dpg.file_dialog(show=False, callback=self._on_file_chosen, width=700, height=420, modal=True,
                             directory_selector=True) as self.folder_dialog:
            pass
        with dpg.window(no_title_bar=True, no_move=True, no_collapse=True, menubar=True) as self.main:
            self._build_menu()
            with dpg.group(horizontal=True):
                self.run_button = dpg.add_button(label="Run (F5)", callback=lambda: self.run_or_stop())
                self.apply_button = dpg.add_button(label="Apply topology", callback=lambda: self.apply(), enabled=False)
                dpg.add_button(label="Save", callback=lambda: self.save())
                dpg.add_button(label="Undo", callback=lambda: self.undo())
                dpg.add_button(label="Redo", callback=lambda: self.redo())
                dpg.add_button(label="Auto layout", callback=lambda: self.auto_layout())
                self.run_state = dpg.add_text("stopped", color=_MUTED)
                self.title_text = dpg.add_text("", color=_MUTED)
            with dpg.group(horizontal=True):
                with dpg.child_window(width=210, height=-26):
                    self._build_palette()
                with dpg.group():
                    with dpg.child_window(width=-360, height=-150, drop_callback=self._on_drop, payload_type=_PAYLOAD,
                                          no_scrollbar=True) as self.editor_area:
                        self.editor = dpg.add_node_editor(callback=self._on_link, delink_callback=self._on_delink,
                                                          minimap=True, minimap_location=dpg.mvNodeMiniMap_Location_BottomRight,
                                                          width=-1, height=-1)
                    with dpg.child_window(width=-360, height=-26) as self.errors_panel:
                        dpg.add_text("Problems", color=_MUTED)
                        self.errors_group = dpg.add_group()
                with dpg.child_window(width=-1, height=-26) as self.right_panel:
                    self._build_preview()
                    with dpg.tab_bar():
                        with dpg.tab(label="Node"):
                            self.inspector = dpg.add_group()
                        with dpg.tab(label="Graph"):
                            self.settings_group = dpg.add_group()
                        with dpg.tab(label="Studio") as self.studio_tab:
                            pass
            self.status = dpg.add_text("", color=_MUTED)
        with dpg.window(label="Unsaved changes", modal=True, show=False, no_resize=True, width=420, height=120) as self.exit_dialog:
            dpg.add_text("The graph has unsaved changes.")
            with dpg.group(horizontal=True):
                dpg.add_button(label="Save and quit", callback=lambda: self._exit(save=True))
                dpg.add_button(label="Quit without saving", callback=lambda: self._exit(save=False))
                dpg.add_button(label="Cancel", callback=lambda: dpg.configure_item(self.exit_dialog, show=False))
        with dpg.window(label="Confirm", modal=True, show=False, no_resize=True, width=460, height=110) as self.confirm_dialog:
            self.confirm_text = dpg.add_text("", wrap=440)
            with dpg.group(horizontal=True):
                dpg.add_button(label="Replace", callback=lambda: self._answer(True))
                dpg.add_button(label="Cancel", callback=lambda: self._answer(False))
        self._on_confirm: Callable[[], Any] | None = None
        self._build_studio()
        dpg.set_primary_window(self.main, True)
        self._built = True
        self.rebuild_graph()
        self._build_settings()

    def _build_menu(self) -> None:
        with dpg.menu_bar():
            with dpg.menu(label="File"):
                dpg.add_menu_item(label="New", callback=lambda: self.new_graph())
                dpg.add_menu_item(label="Open...", callback=lambda: self._ask_file(self.open_graph))
                dpg.add_menu_item(label="Save", shortcut="Ctrl+S", callback=lambda: self.save())
                dpg.add_menu_item(label="Save as...", callback=lambda: self._ask_file(lambda p: self.save(p)))
            with dpg.menu(label="Edit"):
                dpg.add_menu_item(label="Undo", shortcut="Ctrl+Z", callback=lambda: self.undo())
                dpg.add_menu_item(label="Redo", shortcut="Ctrl+Y", callback=lambda: self.redo())
                dpg.add_menu_item(label="Duplicate", shortcut="Ctrl+D", callback=lambda: self.duplicate_selected())
                dpg.add_menu_item(label="Delete", shortcut="Delete", callback=lambda: self.delete_selected())
                dpg.add_menu_item(label="Auto layout", callback=lambda: self.auto_layout())
            with dpg.menu(label="Run"):
                dpg.add_menu_item(label="Run / stop", shortcut="F5", callback=lambda: self.run_or_stop())
                dpg.add_menu_item(label="Apply topology", callback=lambda: self.apply())

    def _build_themes(self) -> None:
        with dpg.theme() as self.global_theme:
            with dpg.theme_component(dpg.mvAll):
                for target, colour in (
                    (dpg.mvThemeCol_WindowBg, (24, 26, 31)), (dpg.mvThemeCol_ChildBg, (28, 30, 36)),
                    (dpg.mvThemeCol_FrameBg, (44, 48, 58)), (dpg.mvThemeCol_Button, (52, 60, 78)),
                    (dpg.mvThemeCol_ButtonHovered, (70, 84, 112)), (dpg.mvThemeCol_Header, (52, 60, 78)),
                    (dpg.mvThemeCol_SliderGrab, (110, 150, 230)), (dpg.mvThemeCol_CheckMark, (120, 170, 255)),
                    (dpg.mvThemeCol_Text, (226, 230, 238)), (dpg.mvThemeCol_MenuBarBg, (32, 35, 42)),
                ):
                    dpg.add_theme_color(target, colour)
                dpg.add_theme_style(dpg.mvStyleVar_FrameRounding, 3)
                dpg.add_theme_style(dpg.mvStyleVar_ItemSpacing, 6, 4)
            with dpg.theme_component(dpg.mvNodeEditor):
                dpg.add_theme_color(dpg.mvNodeCol_GridBackground, (20, 22, 27), category=dpg.mvThemeCat_Nodes)
                dpg.add_theme_color(dpg.mvNodeCol_GridLine, (38, 42, 50), category=dpg.mvThemeCat_Nodes)
                dpg.add_theme_color(dpg.mvNodeCol_NodeBackground, (40, 43, 52), category=dpg.mvThemeCat_Nodes)
                dpg.add_theme_color(dpg.mvNodeCol_NodeBackgroundHovered, (46, 50, 60), category=dpg.mvThemeCat_Nodes)
                dpg.add_theme_color(dpg.mvNodeCol_NodeOutline, (80, 86, 100), category=dpg.mvThemeCat_Nodes)
        dpg.bind_theme(self.global_theme)
        self._text_themes: dict[str, int] = {}
        for key, colour in (("error", _ERROR_RED), ("warning", _WARN_AMBER)):
            with dpg.theme() as th:
                with dpg.theme_component(dpg.mvAll):
                    dpg.add_theme_color(dpg.mvThemeCol_Text, colour)
            self._text_themes[key] = th
        type_names = ["Frame", "Mask", "Keypoints", "FaceLandmarks", "Displacement", "Control", GENERIC, UNKNOWN]
        for t in type_names:
            c = type_colour(t)
            with dpg.theme() as pin:
                with dpg.theme_component(dpg.mvNodeAttribute):
                    dpg.add_theme_color(dpg.mvNodeCol_Pin, c, category=dpg.mvThemeCat_Nodes)
                    dpg.add_theme_color(dpg.mvNodeCol_PinHovered, tuple(min(255, v + 40) for v in c), category=dpg.mvThemeCat_Nodes)
            self._pin_themes[t] = pin
            with dpg.theme() as link:
                with dpg.theme_component(dpg.mvNodeLink):
                    dpg.add_theme_color(dpg.mvNodeCol_Link, (*c, 200), category=dpg.mvThemeCat_Nodes)
                    dpg.add_theme_color(dpg.mvNodeCol_LinkHovered, (255, 255, 255), category=dpg.mvThemeCat_Nodes)
                    dpg.add_theme_color(dpg.mvNodeCol_LinkSelected, (255, 255, 255), category=dpg.mvThemeCat_Nodes)
                    dpg.add_theme_style(dpg.mvNodeStyleVar_LinkThickness, 3, category=dpg.mvThemeCat_Nodes)
            self._link_themes[t] = link

    def _node_theme(self, key: str, colour: tuple[int, int, int]) -> int:
        if key not in self._node_themes:
            with dpg.theme() as th:
                with dpg.theme_component(dpg.mvNode):
                    dpg.add_theme_color(dpg.mvNodeCol_TitleBar, colour, category=dpg.mvThemeCat_Nodes)
                    dpg.add_theme_color(dpg.mvNodeCol_TitleBarHovered, tuple(min(255, v + 25) for v in colour), category=dpg.mvThemeCat_Nodes)
                    dpg.add_theme_color(dpg.mvNodeCol_TitleBarSelected, tuple(min(255, v + 45) for v in colour), category=dpg.mvThemeCat_Nodes)
            self._node_themes[key] = th
        return self._node_themes[key]

    # -- palette -----------------------------------------------------------
    def _build_palette(self) -> None:
        dpg.add_text("Nodes")
        self.palette_search = dpg.add_input_text(hint="search nodes", width=-1, callback=lambda s, a: self.fill_palette(a))
        self.palette_group = dpg.add_group()
        self.fill_palette("")

    def fill_palette(self, query: str) -> list[str]:
        """Show node types matching `query` under their categories; returns the ids shown."""
        dpg.delete_item(self.palette_group, children_only=True)
        shown: list[str] = []
        groups = self.model.catalog.search(query)
        for category, types in groups.items():
            with dpg.collapsing_header(label=f"{category} ({len(types)})", default_open=True,
                                       parent=self.palette_group):
                for t in types:
                    item = dpg.add_selectable(label=t.display_name, user_data=t.id, callback=self._on_palette_click)
                    with dpg.drag_payload(parent=item, drag_data=t.id, payload_type=_PAYLOAD):
                        dpg.add_text(f"add {t.display_name}")
                    with dpg.tooltip(item):
                        dpg.add_text(t.id, color=_MUTED)
                        if t.description:
                            dpg.add_text(t.description, wrap=320)
                    shown.append(t.id)
        if not shown:
            dpg.add_text("no node matches", color=_MUTED, parent=self.palette_group)
        for failure in self.model.catalog.failures:
            dpg.add_text(f"failed to load: {failure}", color=_ERROR_RED, wrap=210, parent=self.palette_group)
        return shown

    def _on_palette_click(self, sender: int, app_data: Any, type_id: str) -> None:
        dpg.set_value(sender, False)  # a selectable stays highlighted otherwise
        self.add_node(type_id)

    def _on_drop(self, sender: int, type_id: str) -> None:
        mx, my = dpg.get_mouse_pos(local=False)
        ax, ay = dpg.get_item_rect_min(self.editor_area)
        self.add_node(type_id, pos=(max(0.0, mx - ax - 40), max(0.0, my - ay - 20)))

    # -- node editor -------------------------------------------------------
    def rebuild_graph(self) -> None:
        """Redraw every node and link from the model (after load, undo, structural edits)."""
        dpg.delete_item(self.editor, children_only=True)
        self.node_ids.clear()
        self.node_by_id.clear()
        self.attrs.clear()
        self.link_ids.clear()
        self.stats_text.clear()
        self.stats_details.clear()
        self.error_text.clear()
        port_attr: dict[tuple[str, str, str], int] = {}
        for name, node in self.model.all_nodes().items():  # the includes' nodes too, read-only
            info = self.model.node_info(name)
            with dpg.node(label=name, parent=self.editor, pos=list(node.pos or (40, 40))) as nid:
                self.node_ids[name] = nid
                self.node_by_id[nid] = name
                with dpg.node_attribute(attribute_type=dpg.mvNode_Attr_Static):
                    t = dpg.add_text(node.type, color=_MUTED)
                    with dpg.tooltip(t):
                        dpg.add_text(info.description or node.type, wrap=320)
                        if info.source:
                            dpg.add_text(info.source, color=_MUTED, wrap=320)
                    self._draw_role(name, node)
                open_required = set(self.model.open_required_inputs(name))
                for port, spec in info.inputs.items():
                    typ = self.model.input_type(name, port)
                    with dpg.node_attribute(attribute_type=dpg.mvNode_Attr_Input, shape=dpg.mvNode_PinShape_CircleFilled) as aid:
                        label = f"{port}: {typ}" + ("  (required)" if port in open_required else "") + (" [many]" if spec.multiple else "")
                        txt = dpg.add_text(label, color=_ERROR_RED if port in open_required else (226, 230, 238))
                        if spec.description:
                            with dpg.tooltip(txt):
                                dpg.add_text(spec.description, wrap=300)
                    dpg.bind_item_theme(aid, self._pin_themes.get(typ, self._pin_themes[UNKNOWN]))
                    self.attrs[aid] = (name, port, "in")
                    port_attr[(name, port, "in")] = aid
                for port, spec in info.outputs.items():
                    typ = self.model.output_type(name, port)
                    with dpg.node_attribute(attribute_type=dpg.mvNode_Attr_Output, shape=dpg.mvNode_PinShape_CircleFilled) as aid:
                        with dpg.group(horizontal=True):
                            if typ in PREVIEWABLE:
                                b = dpg.add_button(label="view", small=True, user_data=(name, port),
                                                   callback=lambda s, a, u: self.set_preview(*u))
                                with dpg.tooltip(b):
                                    dpg.add_text(f"show {name}.{port} in the preview")
                            dpg.add_text(f"{port}: {typ}", indent=0)
                    dpg.bind_item_theme(aid, self._pin_themes.get(typ, self._pin_themes[UNKNOWN]))
                    self.attrs[aid] = (name, port, "out")
                    port_attr[(name, port, "out")] = aid
                with dpg.node_attribute(attribute_type=dpg.mvNode_Attr_Static):
                    self.stats_text[name] = dpg.add_text("", color=_OK_GREEN, show=False)
                    with dpg.tooltip(self.stats_text[name]):
                        self.stats_details[name] = dpg.add_text("")
                    self.error_text[name] = dpg.add_text("", color=_ERROR_RED, wrap=int(NODE_WIDTH), show=False)
                    ext = self.model.external_inputs(name)
                    if ext:
                        dpg.add_text("from outside: " + ", ".join(f"{p} <- {', '.join(s)}" for p, s in ext.items()),
                                     color=_MUTED, wrap=int(NODE_WIDTH))
            dpg.bind_item_theme(nid, self._theme_of(name))
        for link in self.model.all_links():
            a = port_attr.get((link.src, link.src_port, "out"))
            b = port_attr.get((link.dst, link.dst_port, "in"))
            if a is None or b is None:
                continue
            lid = dpg.add_node_link(a, b, parent=self.editor)
            if link.dst in self.model.nodes:  # links into included nodes are drawn, not edited here
                self.link_ids[lid] = link
            dpg.bind_item_theme(lid, self._link_themes.get(self.model.output_type(link.src, link.src_port), self._link_themes[UNKNOWN]))
        if self.check is not None:
            self.show_check(self.check)
        self._inspected = None
        self._stats_due = 0.0  # timings back on the redrawn nodes at once

    def _draw_role(self, name: str, node: Any) -> None:
        """What the node is in the graph's wiring: included (read-only), a stand-in, a switch's branches."""
        if name in self.model.included:
            dpg.add_text(f"from {self.model.included_from.get(name, 'an include')} (read-only)", color=_MUTED,
                         wrap=int(NODE_WIDTH))
        if node.standby_for:
            dpg.add_text(f"stands in for {node.standby_for}", color=_WARN_AMBER, wrap=int(NODE_WIDTH))
        for i, (label, src) in enumerate(self.model.branches(name)):
            dpg.add_text(f"{i + 1}. {label} <- {src}", color=_WARN_AMBER if i == 0 else _MUTED, wrap=int(NODE_WIDTH))

    def _theme_of(self, name: str) -> int:
        category = self.model.node_info(name).category
        colour = category_colour(category)
        if name in self.model.included:  # the includes' nodes: their category's colour, dimmed
            return self._node_theme(f"{category}/included", tuple(int(v * 0.55) for v in colour))
        return self._node_theme(category, colour)

    def sync_positions(self) -> None:
        """Copy node positions from the screen into the model (before save, layout, rebuild)."""
        for name, nid in self.node_ids.items():
            if name in self.model.all_nodes() and dpg.does_item_exist(nid):
                x, y = dpg.get_item_pos(nid)
                self.model.move_node(name, (x, y))

    def _attr_pair(self, a: int, b: int) -> tuple[tuple[str, str], tuple[str, str]] | None:
        ea, eb = self.attrs.get(a), self.attrs.get(b)
        if ea is None or eb is None:
            return None
        if ea[2] == "in" and eb[2] == "out":
            ea, eb = eb, ea
        if ea[2] != "out" or eb[2] != "in":
            self.set_status("connect an output (right side) to an input (left side)", error=True)
            return None
        return (ea[0], ea[1]), (eb[0], eb[1])

    def _on_link(self, sender: int, app_data: tuple[int, int]) -> None:
        pair = self._attr_pair(*app_data)
        if pair is not None:
            self.connect(pair[0][0], pair[0][1], pair[1][0], pair[1][1])

    def _on_delink(self, sender: int, link_id: int) -> None:
        link = self.link_ids.get(link_id)
        if link is not None:
            self.disconnect(link)

    def selected_nodes(self) -> list[str]:
        return [self.node_by_id[i] for i in dpg.get_selected_nodes(self.editor) if i in self.node_by_id]

    # -- actions (menu, buttons, shortcuts and tests all come through here) ----
    def _guard(self, action: Callable[[], Any], done: str | None = None) -> Any:
        try:
            result = action()
        except EditError as exc:
            self.set_status(str(exc), error=True)
            return None
        if done:
            self.set_status(done)
        return result

    def add_node(self, type_id: str, pos: tuple[float, float] | None = None, name: str | None = None,
                 params: dict[str, Any] | None = None) -> str | None:
        self.sync_positions()
        selected_pos = self.model.nodes[self.selected].pos if self.selected in self.model.nodes else None
        if pos is None and selected_pos:
            sx, sy = selected_pos
            pos = (sx + NODE_WIDTH + 60, sy)
        new = self._guard(lambda: self.model.add_node(type_id, name=name, pos=pos, params=params))
        if new:
            self.select(new)
            self.set_status(f"added {new} ({type_id})")
        return new

    def connect(self, src: str, src_port: str, dst: str, dst_port: str) -> bool:
        self.sync_positions()
        return self._guard(lambda: self.model.link(src, src_port, dst, dst_port), f"connected {src}.{src_port} -> {dst}.{dst_port}") is not None

    def disconnect(self, link: Link) -> None:
        self.sync_positions()
        self._guard(lambda: self.model.unlink(link.dst, link.dst_port, link.src, link.src_port), f"disconnected {link}")

    def delete_selected(self) -> None:
        self.sync_positions()
        names = self.selected_nodes()
        links = [self.link_ids[i] for i in dpg.get_selected_links(self.editor) if i in self.link_ids]
        for link in links:
            if link.dst not in names:
                self.disconnect(link)
        if names:
            self.model.remove_nodes(names)
            self.set_status(f"deleted {', '.join(names)}")
            self.selected = None

    def duplicate_selected(self) -> list[str]:
        self.sync_positions()
        names = self.selected_nodes() or ([self.selected] if self.selected in self.model.nodes else [])
        new = self.model.duplicate_nodes(names)
        if new:
            self.select(new[0])
            self.set_status(f"duplicated as {', '.join(new)}")
        return new

    def set_param(self, node: str, key: str, value: Any) -> bool:
        """Edit a param; a running graph gets it at the next frame."""
        stored = self._guard(lambda: (self.model.set_param(node, key, value), True)[1])
        if stored is None:
            return False
        if self.live.running:
            try:
                if self.live.update_params(node, self.model.full_params(node)):
                    self.set_status(f"{node}.{key} = {self.model.param_value(node, key)!r} (live)")
                else:
                    self.set_status(f"{node} is not in the running graph: press Apply topology", error=True)
            except Exception as exc:  # the runtime refused the value: say so, keep the stream going
                self.set_status(f"the running graph refused {node}.{key}: {exc}", error=True)
        return True

    def set_setting(self, key: str, value: Any) -> None:
        self._guard(lambda: self.model.set_setting(key, value), f"settings.{key} = {value!r}")

    def undo(self) -> None:
        self.sync_positions()
        label = self.model.undo()
        self.set_status(f"undid: {label}" if label else "nothing to undo")

    def redo(self) -> None:
        label = self.model.redo()
        self.set_status(f"redid: {label}" if label else "nothing to redo")

    def drawn_sizes(self) -> dict[str, tuple[float, float]]:
        sizes = {}
        for name, nid in self.node_ids.items():
            w, h = dpg.get_item_rect_size(nid)
            if w > 0 and h > 0:
                # + two text lines: timings and mode appear under the ports while the graph runs
                sizes[name] = (float(w), float(h) + (0.0 if dpg.is_item_shown(self.stats_text[name]) else STATS_HEIGHT))
        return sizes

    def auto_layout(self) -> None:
        self.model.auto_layout(self.drawn_sizes())
        self.set_status("laid out in columns from sources to outputs")

    def relayout_opened(self) -> None:
        """A file without positions was laid out on estimated sizes; redo it with the drawn ones (not an edit)."""
        if self.model.auto_placed and self.model.auto_placed == set(self.model.all_nodes()):
            dirty = self.model.dirty
            self.model.auto_layout(self.drawn_sizes(), record=False)
            self.model.dirty = dirty
            self._update_title()
        self.model.auto_placed = set()

    def save(self, path: str | Path | None = None, overwrite: bool = False) -> Path | None:
        self.sync_positions()
        if path is None and self.model.path is None:
            self._ask_file(lambda p: self.save(p))
            return None
        target = Path(path) if path is not None else self.model.path
        other = target is not None and target.exists() and (self.model.path is None or target.resolve() != self.model.path.resolve())
        if other and not overwrite:
            self._confirm(f"{target} already exists. Replace it with this graph?", lambda: self.save(target, overwrite=True))
            self.set_status(f"{target} exists: confirm to replace it", error=True)
            return None
        saved = self._guard(lambda: self.model.save(path, overwrite=overwrite))
        if saved is not None:
            self.set_status(f"saved {saved}")
            self._update_title()
        return saved

    def open_graph(self, path: str | Path) -> bool:
        if self.live.running:
            self.live.stop()
        self.clear_preview()
        ok = self._guard(lambda: (self.model.load(path), True)[1])
        if ok:
            self.set_status(f"opened {path}")
            self._build_settings()
            self._relayout_due = True
        return bool(ok)

    def clear_preview(self) -> None:
        self.live.preview_target = None
        self.last_preview = None
        self._texture_data[:] = to_texture(np.zeros((1, 1, 3), np.uint8), PREVIEW_W, PREVIEW_H)
        dpg.set_value(self.preview_texture, self._texture_data)
        dpg.set_value(self.preview_label, "preview: press Run, then 'view' on an output")

    def new_graph(self) -> None:
        if self.live.running:
            self.live.stop()
        self.clear_preview()
        self.model.new()
        self._build_settings()
        self.set_status("new graph: add nodes from the palette")

    def run_or_stop(self) -> None:
        if self.live.running or self.live.starting:
            self.stop()
        else:
            self.run()

    def run(self) -> bool:
        self.sync_positions()
        check = self.validate_now()
        if not check.ok:
            self.set_status(f"cannot run: {len(check.errors)} problem(s), see the list below", error=True)
            return False
        if self.live.preview_target is None or self.live.preview_target[0] not in self.model.nodes:
            first = self._first_previewable()
            if first:
                self.set_preview(*first)
        try:
            # Nodes open (models load) on a worker thread; tick() reports when it runs or why it could not start.
            assert check.graph is not None  # check.ok: the graph validated
            self.live.start(check.graph, background=True)
        except ImportError as exc:
            self.set_status(f"the runtime is not available in this build: {exc}", error=True)
            return False
        self.set_status("starting: opening nodes and loading models...")
        dpg.set_value(self.run_state, "starting")
        return True

    def stop(self) -> None:
        self.live.stop()
        for name, tid in self.stats_text.items():
            dpg.configure_item(tid, show=False)
        self.set_status("stopped")

    def apply(self) -> bool:
        """Swap the edited topology into the running graph (the stream goes on)."""
        check = self.validate_now()
        if not check.ok:
            self.set_status(f"cannot apply: {len(check.errors)} problem(s), see the list below", error=True)
            return False
        if not self.live.running:
            self.set_status("not running: press Run", error=True)
            return False
        try:
            assert check.graph is not None  # check.ok: the graph validated
            self.live.apply(check.graph)
        except Exception as exc:
            self.set_status(f"could not apply: {exc}", error=True)
            return False
        self.set_status("applied the new topology to the running graph")
        return True

    def set_preview(self, node: str, port: str) -> None:
        self.live.set_preview(node, port)
        dpg.set_value(self.preview_label, f"preview: {node}.{port}")

    def _first_previewable(self) -> tuple[str, str] | None:
        """The output feeding a sink (what the stream shows), else any Frame/Mask output."""
        outs = [(n, p) for n in self.model.nodes for p in self.model.node_info(n).outputs
                if self.model.output_type(n, p) in PREVIEWABLE]
        sink_inputs = {(l.src, l.src_port) for l in self.model.links() if not self.model.node_info(l.dst).outputs}
        for o in outs:
            if o in sink_inputs:
                return o
        return outs[0] if outs else None

    def select(self, name: str | None) -> None:
        self.selected = name
        if name in self.node_ids:
            dpg.clear_selected_nodes(self.editor)
        self._show_inspector()

    # -- validation --------------------------------------------------------
    def validate_now(self) -> Check:
        self.check = self.model.validate()
        self.show_check(self.check)
        self._validate_due = 0.0
        return self.check

    def show_check(self, check: Check) -> None:
        """Errors on the nodes they concern (red text, red title) and all of them in the Problems list."""
        for name, tid in self.error_text.items():
            errs = check.for_node(name)
            if errs:
                dpg.set_value(tid, "\n".join(f"{'!' if e in check.errors else '~'} {e.message}" for e in errs))
                has_error = any(e in check.errors for e in errs)
                dpg.configure_item(tid, show=True, color=_ERROR_RED if has_error else _WARN_AMBER)
                if has_error:
                    dpg.bind_item_theme(self.node_ids[name], self._node_theme("_error", (170, 50, 50)))
            else:
                dpg.configure_item(tid, show=False)
                dpg.bind_item_theme(self.node_ids[name], self._theme_of(name))
        dpg.delete_item(self.errors_group, children_only=True)
        if not check.errors and not check.warnings:
            dpg.add_text("no problems: the graph is valid", color=_OK_GREEN, parent=self.errors_group)
        for e in check.errors + check.warnings:
            is_error = e in check.errors
            where = " ".join(x for x in (f"{e.node}" if e.node else "", f".{e.port}" if e.port else "", f" [{e.field}]" if e.field else "") if x)
            text = f"{'error' if is_error else 'warning'} {e.code}: {where + ': ' if where else ''}{e.message}" + (f"  (hint: {e.hint})" if e.hint else "")
            item = dpg.add_selectable(label=text, parent=self.errors_group, user_data=e.node,
                                      callback=lambda s, a, u: (dpg.set_value(s, False), self.select(u) if u else None))
            dpg.bind_item_theme(item, self._text_themes["error" if is_error else "warning"])
        self._update_apply()

    def _update_apply(self) -> None:
        graph = self.check.graph if self.check else None
        dpg.configure_item(self.apply_button, enabled=self.live.needs_apply(graph))

    # -- inspector ---------------------------------------------------------
    def _show_inspector(self) -> None:
        name = self.selected if self.selected in self.model.nodes else None
        key = (name, self._structure_rev)  # not redrawn on param edits: that would end a slider drag
        if self._inspected == key:
            return
        self._inspected = key
        dpg.delete_item(self.inspector, children_only=True)
        if name is None and self.selected in self.model.included:
            inc = self.model.included[self.selected]
            prefix, _, sub = self.selected.partition("/")
            dpg.add_text(f"{self.selected}  ({inc.type})", parent=self.inspector, wrap=330)
            dpg.add_text(f"Included from {self.model.included_from.get(self.selected, 'an include')} (read-only). Set its params "
                         f"in this graph's include entry: params: {{{sub}: {{...}}}} (prefix {prefix}).",
                         parent=self.inspector, color=_MUTED, wrap=330)
            for key, value in inc.params.items():
                dpg.add_text(f"{key}: {value!r}", parent=self.inspector, wrap=330)
            return
        if name is None:
            dpg.add_text("Select a node to edit its parameters.", parent=self.inspector, color=_MUTED, wrap=330)
            return
        node = self.model.nodes[name]
        info = self.model.node_info(name)
        with dpg.group(parent=self.inspector):
            dpg.add_input_text(label="name", default_value=name, on_enter=True, width=200,
                               callback=lambda s, a: self._rename(name, a))
            dpg.add_text(f"{info.display_name}  ({node.type})", color=_MUTED, wrap=330)
            if info.description:
                dpg.add_text(info.description, wrap=330)
            if not info.known:
                dpg.add_text(info.description, color=_ERROR_RED, wrap=330)
            dpg.add_separator()
            for w in widgets_for(info.params_schema):
                self._param_widget(name, w)
            if not info.param_fields:
                dpg.add_text("(no parameters)", color=_MUTED)
            if node.inputs:
                dpg.add_separator()
                dpg.add_text("Inputs (real-time policy)", color=_MUTED)
            for port, ref in node.inputs.items():
                with dpg.group(horizontal=True):
                    dpg.add_text(f"{port} <- {', '.join(ref.sources)}")
                with dpg.group(horizontal=True):
                    combo = dpg.add_combo(["latest", "queue"], default_value=ref.policy, width=90,
                                          callback=lambda s, a, u: self._set_policy(*u, a, None), user_data=(name, port))
                    with dpg.tooltip(combo):
                        dpg.add_text("latest: drop stale items (live video); queue: keep every item in order", wrap=300)
                    dpg.add_input_int(label="queue", default_value=ref.queue or 4, width=90, min_value=1, max_value=1024,
                                      min_clamped=True, max_clamped=True, enabled=ref.policy == "queue", on_enter=True,
                                      callback=lambda s, a, u: self._set_policy(*u, "queue", a), user_data=(name, port))

    def _rename(self, old: str, new: str) -> None:
        self.sync_positions()
        if self._guard(lambda: (self.model.rename_node(old, new), True)[1], f"renamed {old} to {new}"):
            self.selected = new

    def _set_policy(self, node: str, port: str, policy: str, queue: int | None) -> None:
        self._guard(lambda: self.model.set_input_policy(node, port, policy, queue), f"{node}.{port}: {policy}")

    def _param_widget(self, node: str, w: ParamWidget) -> None:
        self._widget(w, self.model.param_value(node, w.name), lambda v: self.set_param(node, w.name, v),
                     explicit=w.name in self.model.nodes[node].params)

    def _widget(self, w: ParamWidget, value: Any, apply: Callable[[Any], Any], explicit: bool = True) -> int:
        def cb(sender: int, app_data: Any) -> None:
            try:
                apply(w.from_widget(app_data))
            except ValueError as exc:  # bad JSON typed by hand
                self.set_status(f"{w.name}: {exc}", error=True)

        shown = w.to_widget(value)
        kw: dict[str, Any] = {"label": w.label, "callback": cb, "width": 170}
        if w.kind == "slider_int":
            item = dpg.add_slider_int(default_value=int(shown if shown is not None else w.minimum or 0),
                                      min_value=int(w.minimum), max_value=int(w.maximum), clamped=True, **kw)
        elif w.kind == "slider_float":
            item = dpg.add_slider_float(default_value=float(shown if shown is not None else w.minimum or 0.0),
                                        min_value=float(w.minimum), max_value=float(w.maximum), clamped=True, format="%.4g", **kw)
        elif w.kind == "int":
            item = dpg.add_input_int(default_value=int(shown or 0), on_enter=True, **kw)
        elif w.kind == "float":
            item = dpg.add_input_float(default_value=float(shown or 0.0), on_enter=True, format="%.4g", **kw)
        elif w.kind == "combo":
            item = dpg.add_combo([str(i) for i in w.items], default_value=shown, **kw)
        elif w.kind == "checkbox":
            kw.pop("width")
            item = dpg.add_checkbox(default_value=bool(shown), **kw)
        elif w.kind.startswith("vector"):
            add = dpg.add_input_intx if w.kind == "vector_int" else dpg.add_input_floatx
            item = add(default_value=shown, size=w.size, on_enter=True, **kw)
        elif w.kind in ("file", "folder"):
            with dpg.group(horizontal=True):
                kw["width"] = 140
                item = dpg.add_input_text(default_value=shown, on_enter=True, **kw)
                dpg.add_button(label="...", small=True,
                               callback=lambda: self._ask_file(lambda p: (dpg.set_value(item, p), cb(item, p)), folder=w.kind == "folder"))
        else:  # text and json
            item = dpg.add_input_text(default_value=shown, on_enter=True, **kw)
        if w.tooltip or w.default is not None:
            with dpg.tooltip(item):
                if w.tooltip:
                    dpg.add_text(w.tooltip, wrap=320)
                dpg.add_text(f"default: {w.default!r}" + ("" if explicit else "  (in use: not set in the file)"), color=_MUTED)
        return item

    def _build_settings(self) -> None:
        dpg.delete_item(self.settings_group, children_only=True)
        schema = Settings.model_json_schema()
        with dpg.group(parent=self.settings_group):
            dpg.add_text("Graph settings", color=_MUTED)
            for name, prop in schema.get("properties", {}).items():
                w = widget_for(name, prop, schema)
                self._widget(w, self.model.settings.get(name), lambda v, n=name: self.set_setting(n, v))

    # -- preview -----------------------------------------------------------
    def _build_preview(self) -> None:
        self.preview_label = dpg.add_text("preview: press Run, then 'view' on an output", color=_MUTED, wrap=340)
        self.preview_image = dpg.add_image(self.preview_texture, width=336, height=189)

    # -- studio ------------------------------------------------------------
    def _build_studio(self) -> None:
        from muse.editor.studio import StudioPage

        self.studio = StudioPage(self.studio_tab, self.set_status, root=self.studio_root)
        self.studio.build()

    # -- files -------------------------------------------------------------
    def _ask_file(self, then: Callable[[str], Any], folder: bool = False) -> None:
        self._file_target = then
        dpg.show_item(self.folder_dialog if folder else self.file_dialog)

    def _on_file_chosen(self, sender: int, app_data: dict[str, Any]) -> None:
        target, self._file_target = self._file_target, None
        path = app_data.get("file_path_name") or app_data.get("current_path")
        if target and path:
            target(path)

    def _confirm(self, text: str, on_yes: Callable[[], Any]) -> None:
        """A yes/no question before anything is replaced."""
        dpg.set_value(self.confirm_text, text)
        self._on_confirm = on_yes
        dpg.configure_item(self.confirm_dialog, show=True)

    def _answer(self, yes: bool) -> None:
        dpg.configure_item(self.confirm_dialog, show=False)
        action, self._on_confirm = self._on_confirm, None
        if yes and action is not None:
            action()

    def request_exit(self) -> bool:
        """The window's close button: quit at once when everything is saved, else ask. True if quitting."""
        self.sync_positions()
        if not self.model.dirty or not self.model.nodes:
            self._exit(save=False)
            return True
        dpg.configure_item(self.exit_dialog, show=True)
        return False

    def _exit(self, save: bool) -> None:
        if save and self.save() is None:
            dpg.configure_item(self.exit_dialog, show=False)
            return  # not saved (no file yet, or refused): stay open, the status bar says why
        self.live.stop()
        dpg.stop_dearpygui()

    # -- per frame ---------------------------------------------------------
    def _on_model_change(self, kind: str) -> None:
        if not self._built:
            return
        if kind in ("structure", "load"):
            self.rebuild_graph()
        if kind == "load":
            self._build_settings()
        self._validate_due = time.monotonic() + 0.25  # validate once the edits settle
        if kind != "params":
            self._structure_rev += 1
        self._update_title()

    def tick(self) -> None:
        """Work done once per rendered frame: selection -> inspector, validation, preview, timings."""
        now = time.monotonic()
        started = self.live.poll_start()
        if started is not None:
            kind, message = started
            if kind == "started":
                self.set_status("running")
            else:  # a node that cannot open names itself in the message
                self.set_status(f"could not start: {message}", error=True)
            self._stats_due = 0.0
        if self._relayout_due and self.drawn_sizes():
            self._relayout_due = False
            self.relayout_opened()
        sel = self.selected_nodes()
        if sel and sel[-1] != self.selected:
            self.selected = sel[-1]
        self._show_inspector()
        if self._validate_due and now >= self._validate_due:
            self.validate_now()
        if self.live.preview is not None:
            img = self.live.preview.poll()
            if img is not None:
                self._texture_data[:] = to_texture(img, PREVIEW_W, PREVIEW_H)  # raw textures are updated in place
                dpg.set_value(self.preview_texture, self._texture_data)
                self.last_preview = img
                self.preview_frames += 1
        if now >= self._stats_due:
            self._stats_due = now + 0.5
            self._show_stats()
        if self.studio is not None:
            self.studio.tick()

    def _show_stats(self) -> None:
        running = self.live.running
        if self.live.ended:
            stats = self.live.node_stats()
            errs = [f"{n}: {s['last_error']}" for n, s in stats.items() if s.get("last_error")]
            self.live.stop()
            self.set_status("the graph stopped" + (f": {errs[0]}" if errs else " (end of stream)"), error=bool(errs))
        dpg.configure_item(self.run_button, label="Stop (F5)" if running or self.live.starting else "Run (F5)")
        if not running:
            dpg.set_value(self.run_state, "starting" if self.live.starting else "stopped")
            return
        g = self.live.graph_stats()
        dpg.set_value(self.run_state, f"running  {g.get('fps', 0)} fps  drops {g.get('drops', 0)}")
        for name, s in self.live.node_stats().items():
            tid = self.stats_text.get(name)
            if tid is not None:
                dpg.set_value(tid, stats_line(s))
                dpg.set_value(self.stats_details[name], stats_details(s))
                dpg.configure_item(tid, show=True)
        self._update_apply()

    def set_status(self, text: str, error: bool = False) -> None:
        self.status_message = text
        if self.status is not None and dpg.does_item_exist(self.status):
            dpg.set_value(self.status, text)
            dpg.configure_item(self.status, color=_ERROR_RED if error else _MUTED)

    def _update_title(self) -> None:
        name = str(self.model.path) if self.model.path else "untitled graph"
        dpg.set_value(self.title_text, f"{name}{' *' if self.model.dirty else ''}")
