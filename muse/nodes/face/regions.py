"""Named regions of MediaPipe's 468-point face mesh (plus the 10 iris points
added by iris refinement), so warps say `jaw` or `left_eye`, never indices.

Index sets follow MediaPipe's canonical FaceMesh contours (face_mesh_connections,
Apache-2.0), listed in contour order where they form one. "left" is the
person's left. `jaw` is the lower half of the face oval (ear to ear under the
nose); `cheeks` are the mesh points between the lower eyelids and the mouth
corners, outside the nose wings and inside the oval, mirrored left/right.
"""

from __future__ import annotations

MESH_POINTS = 468
RIGHT_IRIS_CENTER = 468  # person's right eye (landmarks 33/133), then 469-472 around it
LEFT_IRIS_CENTER = 473  # person's left eye (landmarks 362/263), then 474-477
REFINED_POINTS = 478

FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]  # fmt: skip
JAW = [361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132]  # person's left ear -> chin -> right ear
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
LEFT_EYEBROW = [276, 283, 282, 295, 285, 300, 293, 334, 296, 336]
RIGHT_EYEBROW = [46, 53, 52, 65, 55, 70, 63, 105, 66, 107]
LIPS_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]
LIPS_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191]
NOSE = [168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 97, 98, 64, 48, 115, 220, 45, 275, 440, 344, 278, 294, 327, 326]
RIGHT_CHEEK = [36, 50, 92, 101, 186, 187, 205, 206, 207, 216]
LEFT_CHEEK = [266, 280, 322, 330, 410, 411, 425, 426, 427, 436]
RIGHT_IRIS = [468, 469, 470, 471, 472]
LEFT_IRIS = [473, 474, 475, 476, 477]

# Points the tracker uses: eye outer corners set the face's rotation; eye corners crop the iris.
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (362, 263)


def face_regions(with_iris: bool) -> dict[str, list[int]]:
    """Every named region; iris regions only when the mesh has the 10 iris points."""
    regions = {
        "face_oval": FACE_OVAL,
        "jaw": JAW,
        "left_eye": LEFT_EYE,
        "right_eye": RIGHT_EYE,
        "eyes": LEFT_EYE + RIGHT_EYE,
        "left_eyebrow": LEFT_EYEBROW,
        "right_eyebrow": RIGHT_EYEBROW,
        "eyebrows": LEFT_EYEBROW + RIGHT_EYEBROW,
        "lips": LIPS_OUTER + LIPS_INNER,
        "lips_outer": LIPS_OUTER,
        "lips_inner": LIPS_INNER,
        "nose": NOSE,
        "left_cheek": LEFT_CHEEK,
        "right_cheek": RIGHT_CHEEK,
        "cheeks": LEFT_CHEEK + RIGHT_CHEEK,
    }
    if with_iris:
        regions["left_iris"] = LEFT_IRIS
        regions["right_iris"] = RIGHT_IRIS
    return {k: list(v) for k, v in regions.items()}
