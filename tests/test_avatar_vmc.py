"""`graphs/vtuber.yaml` run on real photos, its VMC messages received by a
python-osc server on 127.0.0.1: addresses and argument types as the VMC spec
has them, every humanoid bone, unit quaternions, a raised arm pointing up,
and blinks from open vs closed eyes."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import avatar_media
from muse.graph.registry import load_registry
from muse.graph.runtime import GraphRunner
from muse.graph.validate import validate_text
from muse.nodes.motion.solve import BONES, PARENT, VRM_SHAPES, AvatarSolver, quat_mul, quat_rotate, to_avatar
from muse.nodes.pose.skeletons import BLAZEPOSE33

GRAPH = Path(__file__).resolve().parents[1] / "graphs" / "vtuber.yaml"


class VMCReceiver:
    """A python-osc UDP server on 127.0.0.1 (any free port) keeping every message, grouped per frame."""

    def __init__(self) -> None:
        from pythonosc.dispatcher import Dispatcher
        from pythonosc.osc_server import BlockingOSCUDPServer

        self.frames: list[list[tuple[str, tuple]]] = []
        self.lock = threading.Lock()
        d = Dispatcher()
        d.set_default_handler(self._on_message)
        self.server = BlockingOSCUDPServer(("127.0.0.1", 0), d)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _on_message(self, address: str, *args: object) -> None:
        with self.lock:
            if address == "/VMC/Ext/OK" or not self.frames:  # every frame starts with OK
                self.frames.append([])
            self.frames[-1].append((address, args))

    def __enter__(self) -> "VMCReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def run_vtuber(pictures: list[np.ndarray], folder: Path, port: int, **vmc_params: object) -> None:
    """graphs/vtuber.yaml with its camera swapped for the pictures (same node name) and no preview."""
    for i, img in enumerate(pictures):
        cv2.imwrite(str(folder / f"shot{i:02d}.png"), np.ascontiguousarray(img[:, :, ::-1]))
    doc = yaml.safe_load(GRAPH.read_text())
    doc["settings"]["device"] = "cpu"
    doc["nodes"]["camera"] = {"type": "capture.images", "params": {"path": f"{folder}/*.png", "fps": 3}}
    for name in ("skeleton", "preview"):
        doc["nodes"].pop(name)
    doc["nodes"]["avatar"]["params"].update({"port": port, **vmc_params})
    graph = validate_text(yaml.safe_dump(doc), str(GRAPH), load_registry())
    GraphRunner(graph).run()


def world_rotation(bones: dict[str, np.ndarray], bone: str) -> np.ndarray:
    chain = []
    b: str | None = bone
    while b is not None:
        chain.append(b)
        b = PARENT[b]
    q = np.array([0.0, 0.0, 0.0, 1.0])
    for name in reversed(chain):
        q = quat_mul(q, bones[name])
    return q


def last_frame(rx: VMCReceiver) -> list[tuple[str, tuple]]:
    with rx.lock:
        complete = [f for f in rx.frames if f and f[-1][0] == "/VMC/Ext/Blend/Apply"]
    assert complete, "no complete VMC frame arrived"
    return complete[-1]


def test_vtuber_graph_sends_vmc_spec_messages_and_raised_arm_points_up(tmp_path):
    photo = avatar_media.raised_arm()
    with VMCReceiver() as rx:
        run_vtuber([photo] * 3, tmp_path, rx.port, smoothing=0.0)
    frame = last_frame(rx)
    addresses = [a for a, _ in frame]
    assert addresses[:3] == ["/VMC/Ext/OK", "/VMC/Ext/T", "/VMC/Ext/Root/Pos"]
    assert addresses[-1] == "/VMC/Ext/Blend/Apply"
    bones: dict[str, np.ndarray] = {}
    blends: dict[str, float] = {}
    for address, args in frame:
        if address == "/VMC/Ext/OK":
            assert all(isinstance(a, int) for a in args) and args[0] == 1 and len(args) in (1, 3, 4)
        elif address == "/VMC/Ext/T":
            assert len(args) == 1 and isinstance(args[0], float)
        elif address in ("/VMC/Ext/Root/Pos", "/VMC/Ext/Bone/Pos"):
            assert len(args) == 8 and isinstance(args[0], str) and all(isinstance(a, float) for a in args[1:]), args
            q = np.array(args[4:8])
            assert abs(np.linalg.norm(q) - 1.0) < 1e-4, f"{args[0]}: quaternion {q} is not unit length"
            if address == "/VMC/Ext/Bone/Pos":
                bones[args[0]] = q
            else:
                assert args[0] == "root"
        elif address == "/VMC/Ext/Blend/Val":
            assert len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], float) and 0.0 <= args[1] <= 1.0
            blends[args[0]] = args[1]
        elif address == "/VMC/Ext/Blend/Apply":
            assert args == ()
        else:
            pytest.fail(f"unexpected address {address}")
    required = {"Hips", "Spine", "Chest", "Neck", "Head", "LeftShoulder", "RightShoulder", "LeftUpperArm", "RightUpperArm",
                "LeftLowerArm", "RightLowerArm", "LeftHand", "RightHand", "LeftUpperLeg", "RightUpperLeg",
                "LeftLowerLeg", "RightLowerLeg", "LeftFoot", "RightFoot"}  # fmt: skip
    assert required <= set(bones) and set(bones) == set(BONES)
    assert set(VRM_SHAPES) <= set(blends)

    # The avatar's right upper arm, put together from the local rotations received, against the keypoints.
    from muse.nodes.pose.tracker import BlazePoseTracker

    tracker = BlazePoseTracker("check", torch.device("cpu"), torch.float32)
    image = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    for _ in range(2):  # detect, then track, as the graph did
        kp = tracker(image)["points"].numpy()
    p = to_avatar(kp)
    want = p[BLAZEPOSE33.index("right_elbow")] - p[BLAZEPOSE33.index("right_shoulder")]
    want /= np.linalg.norm(want)
    got = quat_rotate(world_rotation(bones, "RightUpperArm"), np.array([1.0, 0.0, 0.0]))  # T-pose: +X
    angle = math.degrees(math.acos(float(np.clip(np.dot(got, want), -1, 1))))
    assert angle < 20.0, f"upper arm is {angle:.1f} degrees off the keypoints' direction"
    assert got[1] > math.cos(math.radians(40)), f"the arm should point up, got direction {got}"


def _face_mesh(img: np.ndarray) -> np.ndarray:
    from muse.nodes.face.tracker import FaceTracker

    tracker = FaceTracker("check", torch.device("cpu"), torch.float32)
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255
    for _ in range(2):
        r = tracker(t)
    assert float(r["confidence"]) > 0.5
    return r["points"].numpy()


def test_blinks_from_open_and_closed_eye_crops(tmp_path):
    open_eyes = avatar_media.face_crop()
    closed_eyes = avatar_media.shut_eyes(open_eyes, _face_mesh(open_eyes))
    values = {}
    for label, img in (("open", open_eyes), ("closed", closed_eyes)):
        folder = tmp_path / label
        folder.mkdir()
        with VMCReceiver() as rx:
            run_vtuber([img] * 2, folder, rx.port, smoothing=0.0, blink_smoothing=0.0)
        blends = {args[0]: args[1] for a, args in last_frame(rx) if a == "/VMC/Ext/Blend/Val"}
        values[label] = (blends["Blink_L"], blends["Blink_R"])
    for i in range(2):
        assert values["closed"][i] - values["open"][i] > 0.5, values
    assert max(values["open"]) < 0.3, values


def test_solver_mirror_swaps_arms():
    """A raised right arm (picture coordinates) lifts the avatar's right arm, or its left with mirror on."""
    kp = np.zeros((33, 3))
    at = {n: i for i, n in enumerate(BLAZEPOSE33)}
    pts = {"left_shoulder": (120, 100), "right_shoulder": (80, 100), "left_hip": (115, 200), "right_hip": (85, 200),
           "left_elbow": (125, 150), "left_wrist": (125, 190), "right_elbow": (80, 50), "right_wrist": (80, 10)}  # fmt: skip
    for n, (x, y) in pts.items():
        kp[at[n], :2] = (x, y)
    conf = np.zeros(33)
    conf[[at[n] for n in pts]] = 1.0
    for mirror, raised in ((False, "RightUpperArm"), (True, "LeftUpperArm")):
        from muse.nodes.motion.solve import SolveSettings

        s = AvatarSolver(SolveSettings(mirror=mirror)).solve(kp, conf, None)
        rest = np.array([1.0, 0, 0]) if raised.startswith("Right") else np.array([-1.0, 0, 0])
        up = quat_rotate(world_rotation(s.rotations, raised), rest)
        assert up[1] > 0.95, (mirror, up)
        for q in s.rotations.values():
            assert abs(np.linalg.norm(q) - 1) < 1e-9


def _head_angles(img: np.ndarray) -> tuple[float, float]:
    """(yaw, roll) in degrees of the avatar's head solved from a photo's face mesh."""
    s = AvatarSolver().solve(None, None, _face_mesh(img), 1.0)
    q = s.world["Head"]
    fwd, right = quat_rotate(q, np.array([0.0, 0.0, 1.0])), quat_rotate(q, np.array([1.0, 0.0, 0.0]))
    return math.degrees(math.atan2(fwd[0], fwd[2])), math.degrees(math.atan2(right[1], right[0]))


def test_head_rotation_follows_the_face_in_real_photos():
    face = avatar_media.face_crop()
    yaw, roll = _head_angles(face)
    yaw_m, roll_m = _head_angles(np.ascontiguousarray(face[:, ::-1]))
    assert abs(yaw + yaw_m) < 4 and abs(roll + roll_m) < 4, (yaw, yaw_m, roll, roll_m)  # a mirror image turns the other way
    # The picture turned 20 degrees counter-clockwise: the person's right eye (picture left) drops,
    # so the avatar's head rolls its right side down by about 20 degrees.
    _, roll_ccw = _head_angles(avatar_media.rotated(face, 20))
    _, roll_cw = _head_angles(avatar_media.rotated(face, -20))
    assert abs((roll_ccw - roll) + 20) < 5 and abs((roll_cw - roll) - 20) < 5, (roll, roll_ccw, roll_cw)


def test_gaze_and_mouth_follow_the_mesh():
    """The astronaut's real mesh with its irises moved sideways, and with its jaw dropped."""
    from muse.nodes.face import regions as REG

    mesh = _face_mesh(avatar_media.face_crop())
    eye_w = float(np.linalg.norm(mesh[33, :2] - mesh[133, :2]))
    base = AvatarSolver().solve(None, None, mesh, 1.0)
    look = mesh.copy()
    look[REG.LEFT_IRIS + REG.RIGHT_IRIS, 0] += 0.2 * eye_w  # irises towards picture right = the person's left
    moved = AvatarSolver().solve(None, None, look, 1.0)
    assert moved.gaze[0] < base.gaze[0] - 10, (base.gaze, moved.gaze)  # the avatar looks to its left
    assert moved.blend["LookLeft"] > base.blend["LookLeft"] and moved.rotations["LeftEye"][1] < base.rotations["LeftEye"][1]
    jaw = mesh.copy()
    lower = [14, 87, 178, 88, 95, 317, 402, 318, 324, 17, 84, 181, 91, 146, 314, 405, 321, 375, 152, 148, 176, 149, 377, 400, 378]
    jaw[lower, 1] += 0.8 * eye_w  # the lower lip and chin drop
    opened = AvatarSolver().solve(None, None, jaw, 1.0)
    assert opened.blend["jawOpen"] > base.blend["jawOpen"] + 0.4
    assert opened.blend["A"] + opened.blend["O"] + opened.blend["E"] > base.blend["A"] + base.blend["O"] + base.blend["E"] + 0.3


def test_shipped_vtuber_graph_runs_on_the_cpu_without_cameras(capsys):
    from muse.cli import main

    assert main(["validate", str(GRAPH)]) == 0
    with VMCReceiver() as rx:
        args = ["--set", "camera.width=320", "--set", "camera.height=180", "--set", "camera.device=/dev/muse-no-camera",
                "--set", "preview.port=0", f"--set=avatar.port={rx.port}"]  # fmt: skip
        assert main(["run", str(GRAPH), "--frames", "6", "--device", "cpu", *args]) == 0
    assert "camera -> camera/demo" in capsys.readouterr().err
    assert last_frame(rx)[0][0] == "/VMC/Ext/OK"
