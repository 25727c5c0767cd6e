"""Profiles and one-click capture through the real `capture.demo` node:
the clean plate refuses a picture with someone in it, nothing is overwritten."""

from __future__ import annotations

import numpy as np
import pytest

from muse.studio.files import StudioError, read_image, video_info
from muse.studio.profiles import create_profile, delete_profile, list_profiles, load_profile


def _demo_profile(root, name="front", **params):
    cam = {"type": "capture.demo", "params": {"width": 192, "height": 108, "fps": 0, **params}}
    return create_profile(name, root, camera=cam)


def test_profiles_new_list_show_delete(tmp_path):
    p = create_profile("front", tmp_path)
    create_profile("side", tmp_path)
    assert list_profiles(tmp_path) == ["front", "side"]
    assert load_profile("front", tmp_path).config.training.input_size == (320, 192)
    with pytest.raises(StudioError, match="already exists"):
        create_profile("front", tmp_path)
    with pytest.raises(StudioError, match="not valid"):
        create_profile("../evil", tmp_path)
    with pytest.raises(StudioError, match="--yes"):
        delete_profile("front", tmp_path)
    assert p.yaml_path.is_file()
    delete_profile("front", tmp_path, yes=True)
    assert list_profiles(tmp_path) == ["side"] and not p.root.exists()
    with pytest.raises(StudioError, match="known profiles: side"):
        load_profile("front", tmp_path)


def test_broken_profile_yaml_names_the_file(tmp_path):
    p = create_profile("front", tmp_path)
    p.yaml_path.write_text("name: front\ntraining: {stepz: 3}\n")
    with pytest.raises(StudioError, match="profile.yaml"):
        load_profile("front", tmp_path)


def test_cli_new_list_show_delete(tmp_path, capsys):
    from muse.studio.cli import main

    assert main(["studio", "new", "desk", "--root", str(tmp_path), "--camera", "capture.demo", "--param", "width=192"]) == 0
    assert load_profile("desk", tmp_path).config.camera.params == {"width": 192}
    assert main(["studio", "list", "--root", str(tmp_path)]) == 0
    assert "desk" in capsys.readouterr().out
    assert main(["studio", "show", "desk", "--root", str(tmp_path)]) == 0
    assert '"clean_plate": false' in capsys.readouterr().out
    assert main(["studio", "delete", "desk", "--root", str(tmp_path)]) == 2  # not a tty, no --yes: refused
    assert main(["studio", "delete", "desk", "--root", str(tmp_path), "--yes"]) == 0
    assert list_profiles(tmp_path) == []


def test_plate_from_the_demo_camera_and_no_overwrite(tmp_path):
    from muse.studio.capture import capture_plate

    p = _demo_profile(tmp_path, person=False)
    path = capture_plate(p, frames=4, warmup=1, person_check=False, log=lambda s: None)
    plate = read_image(path)
    assert plate.shape == (108, 192, 3) and plate.std() > 10  # a real room picture, not a blank
    before = path.read_bytes()
    with pytest.raises(StudioError, match="refusing to overwrite"):
        capture_plate(p, frames=4, warmup=1, person_check=False)
    assert path.read_bytes() == before


def test_plate_refuses_a_moving_person(tmp_path):
    from muse.studio.capture import capture_plate

    p = _demo_profile(tmp_path, person=True, motion=2.0)
    with pytest.raises(StudioError, match="moved"):
        capture_plate(p, frames=12, warmup=0, person_check=False, log=lambda s: None)
    assert not p.plate_path.exists()


def test_plate_refuses_a_person_standing_still(tmp_path):
    from muse.studio.capture import capture_plate

    p = _demo_profile(tmp_path, person=True, motion=0.0)
    calls = []

    def detector(rgb):  # the same interface as the bundled selfie check; counts what the plate shows
        calls.append(rgb.shape)
        from muse.studio.teachers.offline import CleanPlateTeacher

        empty = _demo_plate(tmp_path)
        return float((CleanPlateTeacher(empty).mask(rgb) > 0.5).mean())

    with pytest.raises(StudioError, match="someone seems to be in the clean plate"):
        capture_plate(p, frames=3, warmup=0, person_check=detector, log=lambda s: None)
    assert calls and not p.plate_path.exists()


def _demo_plate(tmp_path):
    from muse.studio.capture import capture_plate

    q = _demo_profile(tmp_path, name="empty-room", person=False)
    return read_image(capture_plate(q, frames=3, warmup=0, person_check=False, log=lambda s: None))


@pytest.mark.slow
def test_plate_person_check_with_bundled_selfie(tmp_path):
    from muse.studio.capture import capture_plate, default_person_check

    check = default_person_check()
    if check is None:
        pytest.skip("segment.selfie is not installed")
    p = _demo_profile(tmp_path, person=True, motion=0.0)
    with pytest.raises(StudioError, match="someone"):
        capture_plate(p, frames=3, warmup=0, person_check=check, log=lambda s: None)


def test_record_writes_atomically_and_refuses_overwrite(tmp_path):
    from muse.studio.capture import record

    p = _demo_profile(tmp_path, person=True)
    path = record(p, seconds=0.5, name="take1", log=lambda s: None)  # 15 frames at the demo's 30 fps
    info = video_info(path)
    assert (info["width"], info["height"]) == (192, 108)
    from muse.studio.files import read_video

    frames = [f for _, f in read_video(path)]
    assert len(frames) == 15
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1  # the person moved
    assert [q.name for q in p.recordings_dir.iterdir()] == ["take1.mp4"]  # no temp files left
    with pytest.raises(StudioError, match="refusing to overwrite"):
        record(p, seconds=0.2, name="take1")
    assert len(list(read_video(path))) == 15
