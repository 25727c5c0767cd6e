"""The avatar solve shared by `output.vmc` and `output.tracking`: body keypoints
(BlazePose-33 with relative depth) and the 478-point face mesh become humanoid
bone rotations, head rotation, eye gaze and blendshape weights.

Runs on the host in the outputs' own threads (a few hundred small numpy ops, no
torch), so it never touches the frame's device work.

Conventions, chosen to be what VMC receivers (Unity) expect:
- Avatar space is Unity's: left-handed, +X = the avatar's right, +Y up, +Z the
  avatar's forward (it faces the camera). A picture point (x right, y down,
  z away from the camera) maps to (-x, -y, -z): the person's right hand
  (picture left) drives the avatar's right hand, which a viewer facing the
  avatar sees on the same side as in the picture (a mirror, as streamers expect).
  `mirror=True` swaps sides instead.
- Rotations are quaternions (x, y, z, w). A bone's rest pose is a VRM T-pose
  (every normalized bone at identity); rotations sent are local (relative to
  the parent bone), as `Transform.localRotation` in Unity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from muse.nodes.face import regions as REG
from muse.nodes.pose.skeletons import BLAZEPOSE33

J = {name: i for i, name in enumerate(BLAZEPOSE33)}

# Humanoid bones sent, parents first (Unity HumanBodyBones names, as VMC uses).
PARENT: dict[str, str | None] = {
    "Hips": None,
    "Spine": "Hips",
    "Chest": "Spine",
    "Neck": "Chest",
    "Head": "Neck",
    "LeftEye": "Head",
    "RightEye": "Head",
    "LeftShoulder": "Chest",
    "RightShoulder": "Chest",
    "LeftUpperArm": "LeftShoulder",
    "RightUpperArm": "RightShoulder",
    "LeftLowerArm": "LeftUpperArm",
    "RightLowerArm": "RightUpperArm",
    "LeftHand": "LeftLowerArm",
    "RightHand": "RightLowerArm",
    "LeftUpperLeg": "Hips",
    "RightUpperLeg": "Hips",
    "LeftLowerLeg": "LeftUpperLeg",
    "RightLowerLeg": "RightUpperLeg",
    "LeftFoot": "LeftLowerLeg",
    "RightFoot": "RightLowerLeg",
}
BONES = list(PARENT)

# Local rest offsets (metres) of a ~1.6 m VRM avatar, sent as bone positions;
# receivers retarget rotations and mostly ignore positions other than the hips'.
REST_OFFSET: dict[str, tuple[float, float, float]] = {
    "Hips": (0.0, 0.95, 0.0), "Spine": (0.0, 0.08, 0.0), "Chest": (0.0, 0.12, 0.0), "Neck": (0.0, 0.2, 0.0),
    "Head": (0.0, 0.08, 0.0), "LeftEye": (-0.03, 0.06, 0.07), "RightEye": (0.03, 0.06, 0.07),
    "LeftShoulder": (-0.03, 0.16, 0.0), "RightShoulder": (0.03, 0.16, 0.0),
    "LeftUpperArm": (-0.09, 0.0, 0.0), "RightUpperArm": (0.09, 0.0, 0.0),
    "LeftLowerArm": (-0.24, 0.0, 0.0), "RightLowerArm": (0.24, 0.0, 0.0),
    "LeftHand": (-0.22, 0.0, 0.0), "RightHand": (0.22, 0.0, 0.0),
    "LeftUpperLeg": (-0.09, -0.05, 0.0), "RightUpperLeg": (0.09, -0.05, 0.0),
    "LeftLowerLeg": (0.0, -0.4, 0.0), "RightLowerLeg": (0.0, -0.4, 0.0),
    "LeftFoot": (0.0, -0.4, 0.0), "RightFoot": (0.0, -0.4, 0.0),
}  # fmt: skip

# Limb bones: (keypoint from, keypoint to, direction of the bone in the T-pose).
_X, _Y, _Z = np.eye(3)
LIMBS: dict[str, tuple[str, str, np.ndarray]] = {
    "LeftUpperArm": ("left_shoulder", "left_elbow", -_X),
    "LeftLowerArm": ("left_elbow", "left_wrist", -_X),
    "LeftHand": ("left_wrist", "left_hand_tip", -_X),
    "RightUpperArm": ("right_shoulder", "right_elbow", _X),
    "RightLowerArm": ("right_elbow", "right_wrist", _X),
    "RightHand": ("right_wrist", "right_hand_tip", _X),
    "LeftUpperLeg": ("left_hip", "left_knee", -_Y),
    "LeftLowerLeg": ("left_knee", "left_ankle", -_Y),
    "LeftFoot": ("left_heel", "left_foot_index", _Z),
    "RightUpperLeg": ("right_hip", "right_knee", -_Y),
    "RightLowerLeg": ("right_knee", "right_ankle", -_Y),
    "RightFoot": ("right_heel", "right_foot_index", _Z),
}
# Where an unseen limb rests: arms hang down a little outwards; legs and feet as in the T-pose.
RELAXED: dict[str, np.ndarray] = {
    "LeftUpperArm": np.array([-0.26, -0.97, 0.0]), "LeftLowerArm": np.array([-0.1, -0.99, 0.1]),
    "LeftHand": np.array([-0.1, -0.99, 0.1]),
    "RightUpperArm": np.array([0.26, -0.97, 0.0]), "RightLowerArm": np.array([0.1, -0.99, 0.1]),
    "RightHand": np.array([0.1, -0.99, 0.1]),
}  # fmt: skip

VRM_SHAPES = ["Blink_L", "Blink_R", "A", "I", "U", "E", "O", "Joy", "Angry", "Sorrow", "Fun",
              "LookUp", "LookDown", "LookLeft", "LookRight"]  # fmt: skip
ARKIT_SHAPES = ["eyeBlinkLeft", "eyeBlinkRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeLookDownLeft", "eyeLookDownRight",
                "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "jawOpen", "mouthClose",
                "mouthFunnel", "mouthPucker", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
                "mouthStretchLeft", "mouthStretchRight", "browDownLeft", "browDownRight", "browInnerUp"]  # fmt: skip

# Face mesh points used (MediaPipe canonical indices; "left" = the person's left).
EYE = {  # outer corner, inner corner, upper-lid/lower-lid pairs, iris centre
    "right": (33, 133, ((160, 144), (159, 145), (158, 153)), REG.RIGHT_IRIS_CENTER),
    "left": (263, 362, ((385, 380), (386, 374), (387, 373)), REG.LEFT_IRIS_CENTER),
}
FOREHEAD, CHIN = 10, 152
MOUTH_LEFT, MOUTH_RIGHT, LIP_UPPER_IN, LIP_LOWER_IN = 291, 61, 13, 14
BROW_INNER = {"right": 105, "left": 334}


def _parent(bone: str) -> str:
    """The parent of a bone below the hips (the limbs and head all have one)."""
    parent = PARENT[bone]
    if parent is None:
        raise KeyError(f"bone {bone!r} is the root; it has no parent")
    return parent


# -- quaternions (x, y, z, w) -------------------------------------------------
def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ])  # fmt: skip


def quat_conj(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vector v by unit quaternion q."""
    u, w = q[:3], q[3]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def quat_axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    n = np.linalg.norm(axis)
    if n < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    s = math.sin(angle / 2) / n
    return np.array([axis[0] * s, axis[1] * s, axis[2] * s, math.cos(angle / 2)])


def quat_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shortest rotation turning direction a onto direction b."""
    a = a / max(np.linalg.norm(a), 1e-12)
    b = b / max(np.linalg.norm(b), 1e-12)
    d = float(np.dot(a, b))
    if d < -0.999999:  # opposite: any axis perpendicular to a
        axis = np.cross(a, _X if abs(a[0]) < 0.9 else _Y)
        return quat_axis_angle(axis, math.pi)
    c = np.cross(a, b)
    q = np.array([c[0], c[1], c[2], 1.0 + d])
    return q / np.linalg.norm(q)


def quat_from_matrix(m: np.ndarray) -> np.ndarray:
    """Unit quaternion of a 3x3 rotation matrix (columns = the rotated X, Y, Z axes)."""
    t = m[0, 0] + m[1, 1] + m[2, 2]
    if t > 0:
        s = math.sqrt(t + 1.0) * 2
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    q = np.array(q)
    return q / np.linalg.norm(q)


def quat_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    d = float(np.dot(a, b))
    if d < 0:  # the short way round
        b, d = -b, -d
    if d > 0.9995:
        q = a + t * (b - a)
        return q / np.linalg.norm(q)
    theta = math.acos(min(d, 1.0))
    s = math.sin(theta)
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / s


def frame_rotation(right: np.ndarray, up: np.ndarray) -> np.ndarray | None:
    """World rotation of a body part whose right axis and (roughly) up axis are
    given; None when they are degenerate (parallel or zero)."""
    x = right / max(np.linalg.norm(right), 1e-12)
    y = up - np.dot(up, x) * x
    ny = np.linalg.norm(y)
    if ny < 1e-6 or np.linalg.norm(right) < 1e-9:
        return None
    y = y / ny
    z = np.cross(x, y)
    return quat_from_matrix(np.stack([x, y, z], axis=1))


IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])


# -- the solve ------------------------------------------------------------------
@dataclass
class SolveSettings:
    mirror: bool = False  # swap left and right (the avatar moves its left hand when you move your right)
    min_confidence: float = 0.5  # keypoints below this count as unseen
    blink_open: float = 0.30  # eye opening (lid gap / eye width) of a fully open eye
    blink_closed: float = 0.20  # ... and of a closed eye (the face mesh never reaches 0)
    gaze_gain: float = 1.0  # scales the eye rotation; 1 = about 30 degrees at the eye's edge
    max_gaze_deg: float = 30.0


@dataclass
class Solved:
    """One frame's avatar pose: local bone rotations, the hips' position, blendshape weights."""

    rotations: dict[str, np.ndarray] = field(default_factory=dict)  # bone -> local quaternion (x, y, z, w)
    hips_position: np.ndarray = field(default_factory=lambda: np.array(REST_OFFSET["Hips"]))
    blend: dict[str, float] = field(default_factory=dict)  # VRM and ARKit names -> 0..1
    gaze: tuple[float, float] = (0.0, 0.0)  # (yaw, pitch) degrees; + = the avatar's right / up
    body_seen: bool = False
    face_seen: bool = False
    world: dict[str, np.ndarray] = field(default_factory=dict)  # bone -> world quaternion (tests, debugging)


def to_avatar(points: np.ndarray) -> np.ndarray:
    """(N, 2|3) picture points (x right, y down, z away) -> avatar space (x the avatar's right, y up, z towards the camera)."""
    p = np.zeros((points.shape[0], 3))
    p[:, : min(3, points.shape[1])] = points[:, :3]
    return -p


def _clamp01(v: float) -> float:
    return float(min(1.0, max(0.0, v)))


class AvatarSolver:
    """Stateless per frame except for held limbs (an arm that leaves the picture keeps its last pose briefly)."""

    def __init__(self, settings: SolveSettings | None = None) -> None:
        self.s = settings or SolveSettings()

    # ---- body
    def _body(self, kp: np.ndarray, conf: np.ndarray, out: Solved) -> None:
        s = self.s
        p = to_avatar(kp)
        seen = conf >= s.min_confidence
        names = dict(J)
        # Hand tip: between index and pinky knuckles (the hand's direction).
        tips = {}
        for side in ("left", "right"):
            tips[f"{side}_hand_tip"] = (p[J[f"{side}_index"]] + p[J[f"{side}_pinky"]]) / 2
        if s.mirror:  # the avatar's left follows the person's right
            names = {n.replace("left", "#").replace("right", "left").replace("#", "right"): i for n, i in J.items()}
            tips = {n.replace("left", "#").replace("right", "left").replace("#", "right"): v for n, v in tips.items()}
            p = p * np.array([-1.0, 1.0, 1.0])

        def pt(n: str) -> np.ndarray:
            return tips[n] if n in tips else p[names[n]]

        def ok(n: str) -> bool:
            if n in tips:
                side = n.split("_")[0]
                return bool(seen[names[f"{side}_index"]] and seen[names[f"{side}_pinky"]])
            return bool(seen[names[n]])

        world: dict[str, np.ndarray] = {}
        torso_seen = all(ok(n) for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"))
        shoulders_seen = ok("left_shoulder") and ok("right_shoulder")
        out.body_seen = bool(shoulders_seen)
        sh_mid = (pt("left_shoulder") + pt("right_shoulder")) / 2
        hip_mid = (pt("left_hip") + pt("right_hip")) / 2
        if torso_seen:
            up = sh_mid - hip_mid
            hips = frame_rotation(pt("right_hip") - pt("left_hip"), up)
            chest = frame_rotation(pt("right_shoulder") - pt("left_shoulder"), up)
        elif shoulders_seen:  # webcam framing: no hips; the chest leans with the shoulder line only
            chest = frame_rotation(pt("right_shoulder") - pt("left_shoulder"), _Y)
            hips = IDENTITY.copy()
        else:
            hips = chest = None
        hips = hips if hips is not None else IDENTITY.copy()
        chest = chest if chest is not None else hips
        world["Hips"] = hips
        world["Spine"] = quat_slerp(hips, chest, 0.5)
        world["Chest"] = chest
        world["LeftShoulder"] = chest
        world["RightShoulder"] = chest
        world["Neck"] = chest
        world["Head"] = chest
        # Limbs: the T-pose direction carried by the parent, swung onto the keypoints' direction.
        for bone, (a, b, rest) in LIMBS.items():
            parent = world[_parent(bone)]
            if ok(a) and ok(b) and np.linalg.norm(pt(b) - pt(a)) > 1e-6:
                target = pt(b) - pt(a)
            elif bone in RELAXED:
                target = quat_rotate(world["Chest"], RELAXED[bone])
            else:
                target = quat_rotate(parent, rest)  # unseen leg or foot: straight, as its parent
            carried = quat_rotate(parent, rest)
            world[bone] = quat_mul(quat_between(carried, target), parent)
        out.world.update(world)

    # ---- face
    def _face(self, mesh: np.ndarray, out: Solved) -> None:
        s = self.s
        p = to_avatar(mesh)
        if s.mirror:  # flip sideways: the person's left eye becomes the avatar's right
            p = p * np.array([-1.0, 1.0, 1.0])
        r_eye, l_eye = (p[EYE["right"][0]] + p[EYE["right"][1]]) / 2, (p[EYE["left"][0]] + p[EYE["left"][1]]) / 2
        right = (l_eye - r_eye) if s.mirror else (r_eye - l_eye)  # the avatar's right -> +X
        head = frame_rotation(right, p[FOREHEAD] - p[CHIN])
        if head is None:
            return
        out.face_seen = True
        chest = out.world.get("Chest", IDENTITY)
        out.world["Neck"] = quat_slerp(chest, head, 0.5)  # the neck takes half the turn, the head the rest
        out.world["Head"] = head
        hx, hy = quat_rotate(head, _X), quat_rotate(head, _Y)
        width = float(np.linalg.norm(p[33] - p[263]))  # outer eye corners: the face's scale
        if width < 1e-6:
            return
        blend = out.blend
        person = {"right": "R", "left": "L"}
        if s.mirror:
            person = {"right": "L", "left": "R"}
        gaze = []
        for side in ("right", "left"):
            outer, inner, pairs, iris = EYE[side]
            eye_w = float(np.linalg.norm(p[outer] - p[inner]))
            gap = np.mean([np.linalg.norm(p[u] - p[d]) for u, d in pairs])
            ratio = gap / max(eye_w, 1e-6)
            blink = _clamp01((s.blink_open - ratio) / max(s.blink_open - s.blink_closed, 1e-6))
            blend[f"Blink_{person[side]}"] = blink
            blend["eyeBlinkRight" if person[side] == "R" else "eyeBlinkLeft"] = blink
            if iris < mesh.shape[0]:
                centre = (p[outer] + p[inner]) / 2
                lid_mid = np.mean([(p[u] + p[d]) / 2 for u, d in pairs], axis=0)
                off = p[iris] - centre
                gx = float(np.dot(off, hx)) / (eye_w / 2)  # + = towards the avatar's right
                gy = float(np.dot(p[iris] - lid_mid, hy)) / (eye_w / 2)  # + = up
                gaze.append((gx, gy))
        if gaze:
            gx = float(np.mean([g[0] for g in gaze]))
            gy = float(np.mean([g[1] for g in gaze]))
            # The iris travels about half the eye's half-width at a 30 degree glance.
            yaw = max(-s.max_gaze_deg, min(s.max_gaze_deg, gx * 2 * 30.0 * s.gaze_gain))
            pitch = max(-s.max_gaze_deg, min(s.max_gaze_deg, gy * 2 * 30.0 * s.gaze_gain))
            out.gaze = (yaw, pitch)
            # Unity: +yaw about Y turns forward (+Z) towards +X; looking up is a negative turn about X.
            q = quat_mul(quat_axis_angle(_Y, math.radians(yaw)), quat_axis_angle(_X, math.radians(-pitch)))
            out.world["LeftEye"] = quat_mul(head, q)
            out.world["RightEye"] = quat_mul(head, q)
            look_r, look_l = _clamp01(yaw / s.max_gaze_deg), _clamp01(-yaw / s.max_gaze_deg)
            look_u, look_d = _clamp01(pitch / s.max_gaze_deg), _clamp01(-pitch / s.max_gaze_deg)
            blend.update({"LookRight": look_r, "LookLeft": look_l, "LookUp": look_u, "LookDown": look_d})
            # ARKit: "In" is towards the nose. The avatar's right eye looks in when it looks to the avatar's left.
            blend.update({
                "eyeLookUpLeft": look_u, "eyeLookUpRight": look_u, "eyeLookDownLeft": look_d, "eyeLookDownRight": look_d,
                "eyeLookInRight": look_l, "eyeLookOutRight": look_r, "eyeLookInLeft": look_r, "eyeLookOutLeft": look_l,
            })  # fmt: skip
        self._mouth(p, hy, width, blend)

    def _mouth(self, p: np.ndarray, hy: np.ndarray, width: float, blend: dict[str, float]) -> None:
        """A/I/U/E/O and the expressions from mouth and brow shape (heuristics on the mesh, documented in docs/avatar.md)."""
        corners_l, corners_r = p[MOUTH_LEFT], p[MOUTH_RIGHT]
        if self.s.mirror:
            corners_l, corners_r = corners_r, corners_l
        mouth_w = float(np.linalg.norm(corners_l - corners_r)) / width
        gap = float(np.linalg.norm(p[LIP_UPPER_IN] - p[LIP_LOWER_IN])) / width
        opened = _clamp01((gap - 0.03) / 0.35)  # 0.38 of the eye span = a wide-open jaw
        wide = _clamp01((mouth_w - 0.62) / 0.12)  # stretched lips (I, E)
        narrow = _clamp01((0.55 - mouth_w) / 0.12)  # rounded lips (U, O)
        mid = (p[LIP_UPPER_IN] + p[LIP_LOWER_IN]) / 2
        lift_l = float(np.dot(corners_l - mid, hy)) / width
        lift_r = float(np.dot(corners_r - mid, hy)) / width
        smile_l, smile_r = _clamp01((lift_l - 0.02) / 0.08), _clamp01((lift_r - 0.02) / 0.08)
        frown_l, frown_r = _clamp01((-lift_l - 0.04) / 0.06), _clamp01((-lift_r - 0.04) / 0.06)
        vowels = {
            "A": opened * (1 - wide) * (1 - narrow),
            "I": wide * (1 - opened),
            "E": wide * opened,
            "U": narrow * (1 - opened),
            "O": narrow * opened,
        }
        total = sum(vowels.values())
        if total > 1:
            vowels = {k: v / total for k, v in vowels.items()}
        blend.update(vowels)
        brows = {}
        for side in ("right", "left"):
            outer, inner, pairs, _ = EYE[side]
            lid = p[pairs[1][0]]
            brows[side] = float(np.dot(p[BROW_INNER[side]] - lid, hy)) / width  # ~0.2 at rest
        down_r, down_l = _clamp01((0.17 - brows["right"]) / 0.07), _clamp01((0.17 - brows["left"]) / 0.07)
        if self.s.mirror:
            down_r, down_l = down_l, down_r
        inner_up = _clamp01((np.mean(list(brows.values())) - 0.24) / 0.08)
        smile = (smile_l + smile_r) / 2
        blink = (blend.get("Blink_L", 0.0) + blend.get("Blink_R", 0.0)) / 2
        blend["Joy"] = smile * (1 - blink)
        blend["Fun"] = smile * blink  # a smile with the eyes shut: VRM's "Fun" face
        blend["Angry"] = (down_l + down_r) / 2 * (1 - smile)
        blend["Sorrow"] = max((frown_l + frown_r) / 2, inner_up * (1 - smile))
        blend.update({
            "jawOpen": opened, "mouthClose": 0.0, "mouthFunnel": vowels["O"], "mouthPucker": vowels["U"],
            "mouthSmileLeft": smile_l, "mouthSmileRight": smile_r, "mouthFrownLeft": frown_l, "mouthFrownRight": frown_r,
            "mouthStretchLeft": wide * (1 - smile_l), "mouthStretchRight": wide * (1 - smile_r),
            "browDownLeft": down_l, "browDownRight": down_r, "browInnerUp": inner_up,
        })  # fmt: skip

    def solve(self, body: np.ndarray | None, body_conf: np.ndarray | None, face: np.ndarray | None, face_conf: float = 1.0) -> Solved:
        """body (33, 2|3) and face (468|478, 3) in picture pixels (z relative, same scale as x); either may be None."""
        out = Solved()
        if body is not None and body_conf is not None and body.shape[0] >= len(BLAZEPOSE33):
            self._body(np.asarray(body, np.float64), np.asarray(body_conf, np.float64), out)
        else:
            for b in BONES:
                out.world[b] = IDENTITY.copy()
            for bone, rest in RELAXED.items():
                parent = out.world[_parent(bone)]
                out.world[bone] = quat_mul(quat_between(quat_rotate(parent, LIMBS[bone][2]), RELAXED[bone]), parent)
        if face is not None and face.shape[0] >= REG.MESH_POINTS and face_conf >= self.s.min_confidence:
            self._face(np.asarray(face, np.float64), out)
        for b in VRM_SHAPES + ARKIT_SHAPES:
            out.blend.setdefault(b, 0.0)
        for b in ("LeftEye", "RightEye"):  # the eyes follow the head unless the gaze set them
            out.world.setdefault(b, out.world["Head"])
        for bone in BONES:
            parent = PARENT[bone]
            w = out.world[bone]
            local = w if parent is None else quat_mul(quat_conj(out.world[parent]), w)
            out.rotations[bone] = local / np.linalg.norm(local)
        return out


class Smoother:
    """Exponential smoothing of a solve over time, frame-rate aware: `amount`
    0 = raw, 0.9 = heavy. Blinks use their own, lighter amount so they stay snappy."""

    def __init__(self, amount: float, blink_amount: float) -> None:
        self.amount = amount
        self.blink_amount = blink_amount
        self.state: Solved | None = None
        self.t: float | None = None

    def _keep(self, amount: float, dt: float) -> float:
        # `amount` is the share of the old value kept per 1/30 s.
        return amount ** max(dt * 30.0, 1e-3) if amount > 0 else 0.0

    def __call__(self, new: Solved, t: float) -> Solved:
        if self.state is None or self.t is None:
            self.state, self.t = new, t
            return new
        dt = max(t - self.t, 1.0 / 240)
        self.t = t
        keep = self._keep(self.amount, dt)
        keep_blink = self._keep(self.blink_amount, dt)
        old = self.state
        out = Solved(body_seen=new.body_seen, face_seen=new.face_seen, gaze=new.gaze, world=new.world)
        for bone, q in new.rotations.items():
            prev = old.rotations.get(bone)
            out.rotations[bone] = q if prev is None else quat_slerp(prev, q, 1.0 - keep)
        out.hips_position = old.hips_position * keep + new.hips_position * (1 - keep)
        for name, v in new.blend.items():
            k = keep_blink if "link" in name else keep
            out.blend[name] = float(old.blend.get(name, v) * k + v * (1 - k))
        self.state = out
        return out
