"""Readers of the real downstream datasets, on tiny copies in their distributed layouts (conftest.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from data.downstream.esc50 import read_esc50
from data.downstream.hmdb51 import read_hmdb51
from data.downstream.lrw import read_lrw
from data.downstream.registry import READERS, read_task
from data.downstream.speech_commands import read_speech_commands
from data.downstream.task import Task, TaskError
from data.downstream.ucf101 import read_ucf101
from tests.data.downstream.conftest import (
    LRW_FRAMES,
    LRW_RATE,
    SC_RATE,
    esc_name,
    hmdb_name,
    write_lrw,
    write_speech_commands,
)


def paths(task: Task, split: str, root: Path) -> list[str]:
    return [ex.path.relative_to(root).as_posix() for ex in task.splits[split]]


def one_line_error(read: Callable[[], object], *names: object) -> str:
    """The TaskError message of ``read()``: one line, naming every one of ``names``."""
    with pytest.raises(TaskError) as info:
        read()
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    for name in names:
        assert str(name) in message, f"{name} not in: {message}"
    return message


def append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


# UCF101


def test_ucf101_split1(ucf101_root):
    task = read_ucf101(ucf101_root)
    assert task.name == "ucf101/split1" and task.modalities == ("video",) and task.source == str(ucf101_root)
    assert task.classes == ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    assert task.counts() == {"train": 18, "test": 7}
    assert {ex.group for ex in task.splits["test"]} == {"g01"}
    assert {ex.group for ex in task.splits["train"]} == {"g02", "g03", "g04"}
    for split in ("train", "test"):
        for ex in task.splits[split]:
            assert task.classes[ex.label] == ex.path.parent.name
            assert ex.start is None and ex.end is None
    # The class is the folder, not the file's spelling of it.
    assert "UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi" in paths(task, "test", ucf101_root)
    assert paths(task, "train", ucf101_root) == sorted(paths(task, "train", ucf101_root))


@pytest.mark.parametrize(("split", "train", "test"), [(2, 19, 6), (3, 19, 6)])
def test_ucf101_other_splits_test_their_group(ucf101_root, split, train, test):
    task = read_ucf101(ucf101_root, split=split)
    assert task.name == f"ucf101/split{split}"
    assert task.counts() == {"train": train, "test": test}
    assert {ex.group for ex in task.splits["test"]} == {f"g{split:02d}"}
    assert f"g{split:02d}" not in {ex.group for ex in task.splits["train"]}


def test_ucf101_is_deterministic(ucf101_root):
    assert read_ucf101(ucf101_root) == read_ucf101(ucf101_root)


def test_ucf101_split_out_of_range(ucf101_root):
    with pytest.raises(ValueError, match="split"):
        read_ucf101(ucf101_root, split=4)


def _ucf_bad_class_id(root: Path) -> tuple[Path, int]:
    path = root / "ucfTrainTestlist/classInd.txt"
    path.write_text("1 ApplyEyeMakeup\none Archery\n3 HandstandPushups\n")
    return path, 2


def _ucf_duplicate_class(root: Path) -> tuple[Path, int]:
    path = root / "ucfTrainTestlist/classInd.txt"
    append(path, "4 Archery")
    return path, line_count(path)


def _ucf_missing_video(root: Path) -> tuple[Path, int]:
    (root / "UCF-101/Archery/v_Archery_g03_c02.avi").unlink()
    path = root / "ucfTrainTestlist/trainlist01.txt"
    lines = path.read_text().splitlines()
    return path, 1 + next(i for i, line in enumerate(lines) if "v_Archery_g03_c02" in line)


def _ucf_unknown_class(root: Path) -> tuple[Path, int]:
    video = root / "UCF-101/Bowling/v_Bowling_g02_c01.avi"
    video.parent.mkdir()
    video.write_bytes(b"\x00")
    path = root / "ucfTrainTestlist/trainlist01.txt"
    append(path, "Bowling/v_Bowling_g02_c01.avi 2")
    return path, line_count(path)


def _ucf_non_integer_label(root: Path) -> tuple[Path, int]:
    path = root / "ucfTrainTestlist/trainlist01.txt"
    path.write_text("Archery/v_Archery_g02_c01.avi two\n")
    return path, 1


def _ucf_label_not_folder(root: Path) -> tuple[Path, int]:
    path = root / "ucfTrainTestlist/trainlist01.txt"
    path.write_text("\nArchery/v_Archery_g02_c01.avi 1\n")  # Archery is 2; the blank line still counts
    return path, 2


def _ucf_duplicate_line(root: Path) -> tuple[Path, int]:
    path = root / "ucfTrainTestlist/trainlist01.txt"
    append(path, "Archery/v_Archery_g02_c01.avi 2")
    return path, line_count(path)


def _ucf_train_and_test(root: Path) -> tuple[Path, int]:
    path = root / "ucfTrainTestlist/testlist01.txt"
    append(path, "Archery/v_Archery_g02_c01.avi")
    return path, line_count(path)


def _ucf_no_group(root: Path) -> tuple[Path, int]:
    (root / "UCF-101/Archery/archery.avi").write_bytes(b"\x00")
    path = root / "ucfTrainTestlist/trainlist01.txt"
    append(path, "Archery/archery.avi 2")
    return path, line_count(path)


def _ucf_not_utf8(root: Path) -> tuple[Path, None]:
    path = root / "ucfTrainTestlist/testlist01.txt"
    path.write_bytes(b"Archery/v_Archery_g01_c01.avi\n\xff\xfe\n")
    return path, None


def _ucf_missing_list(root: Path) -> tuple[Path, None]:
    path = root / "ucfTrainTestlist/testlist01.txt"
    path.unlink()
    return path, None


def _ucf_missing_class_index(root: Path) -> tuple[Path, None]:
    path = root / "ucfTrainTestlist/classInd.txt"
    path.unlink()
    return path, None


def _ucf_missing_videos(root: Path) -> tuple[Path, None]:
    shutil.rmtree(root / "UCF-101")
    return root / "UCF-101", None


@pytest.mark.parametrize(
    "break_it",
    [
        _ucf_bad_class_id,
        _ucf_duplicate_class,
        _ucf_missing_video,
        _ucf_unknown_class,
        _ucf_non_integer_label,
        _ucf_label_not_folder,
        _ucf_duplicate_line,
        _ucf_train_and_test,
        _ucf_no_group,
        _ucf_not_utf8,
        _ucf_missing_list,
        _ucf_missing_class_index,
        _ucf_missing_videos,
    ],
)
def test_ucf101_malformed(ucf101_root, break_it):
    file, line = break_it(ucf101_root)
    one_line_error(lambda: read_ucf101(ucf101_root), file if line is None else f"{file}:{line}:")


def test_ucf101_missing_video_names_the_video(ucf101_root):
    _ucf_missing_video(ucf101_root)
    one_line_error(lambda: read_ucf101(ucf101_root), ucf101_root / "UCF-101/Archery/v_Archery_g03_c02.avi")


# HMDB51


@pytest.mark.parametrize(("split", "train", "test"), [(1, 9, 3), (2, 9, 6), (3, 9, 3)])
def test_hmdb51_splits(hmdb51_root, split, train, test):
    task = read_hmdb51(hmdb51_root, split=split)
    assert task.name == f"hmdb51/split{split}" and task.modalities == ("video",)
    assert task.classes == ["brush_hair", "climb", "climb_stairs"]
    assert task.counts() == {"train": train, "test": test}
    for split_name in ("train", "test"):
        for ex in task.splits[split_name]:
            assert task.classes[ex.label] == ex.path.parent.name


def test_hmdb51_id_0_is_left_out(hmdb51_root):
    task = read_hmdb51(hmdb51_root, split=1)
    listed = {ex.path.name for examples in task.splits.values() for ex in examples}
    for cls in ("brush_hair", "climb", "climb_stairs"):
        assert hmdb_name(cls, "TheBigBangTheory", 3) not in listed  # id 0 in split 1
        assert hmdb_name(cls, "Veoh_Alpha_Dog", 2) in {ex.path.name for ex in task.splits["test"]}
    assert len(listed) == 12  # 15 listed, 3 with id 0


def test_hmdb51_groups_are_sources(hmdb51_root):
    task = read_hmdb51(hmdb51_root, split=1)
    groups = {ex.path.name: ex.group for ex in task.splits["train"]}
    assert groups[hmdb_name("climb", "April_09", 0)] == "April_09"
    assert groups[hmdb_name("climb", "April_09", 1)] == "April_09"
    # Off the naming convention, the clip is its own group.
    assert groups[hmdb_name("climb_stairs", None, 4)] == "odd_clip_climb_stairs_4"


def _hmdb_bad_id(root: Path) -> tuple[Path, int]:
    path = root / "testTrainMulti_7030_splits/climb_test_split1.txt"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(" 2 ", " 3 ")
    path.write_text("\n".join(lines) + "\n")
    return path, 3


def _hmdb_missing_video(root: Path) -> tuple[Path, int]:
    (root / "hmdb51_org/climb" / hmdb_name("climb", "April_09", 1)).unlink()
    return root / "testTrainMulti_7030_splits/climb_test_split1.txt", 2


def _hmdb_duplicate(root: Path) -> tuple[Path, int]:
    path = root / "testTrainMulti_7030_splits/climb_test_split1.txt"
    append(path, f"{hmdb_name('climb', 'April_09', 0)} 1")
    return path, line_count(path)


def _hmdb_no_id(root: Path) -> tuple[Path, int]:
    path = root / "testTrainMulti_7030_splits/brush_hair_test_split1.txt"
    append(path, hmdb_name("brush_hair", "April_09", 0) + "1")
    return path, line_count(path)


def _hmdb_not_utf8(root: Path) -> tuple[Path, None]:
    path = root / "testTrainMulti_7030_splits/brush_hair_test_split1.txt"
    path.write_bytes(b"caf\xe9.avi 1\n")
    return path, None


def _hmdb_no_split_files(root: Path) -> tuple[Path, None]:
    lists = root / "testTrainMulti_7030_splits"
    for path in lists.glob("*_test_split1.txt"):
        path.unlink()
    return lists, None


def _hmdb_missing_videos(root: Path) -> tuple[Path, None]:
    shutil.rmtree(root / "hmdb51_org")
    return root / "hmdb51_org", None


@pytest.mark.parametrize(
    "break_it",
    [_hmdb_bad_id, _hmdb_missing_video, _hmdb_duplicate, _hmdb_no_id, _hmdb_not_utf8, _hmdb_no_split_files,
     _hmdb_missing_videos],
)  # fmt: skip
def test_hmdb51_malformed(hmdb51_root, break_it):
    file, line = break_it(hmdb51_root)
    one_line_error(lambda: read_hmdb51(hmdb51_root), file if line is None else f"{file}:{line}:")


# ESC-50


@pytest.mark.parametrize(("fold", "train", "test"), [(1, 16, 5), (3, 17, 4), (5, 17, 4)])
def test_esc50_fold_is_test(esc50_root, fold, train, test):
    task = read_esc50(esc50_root, fold=fold)
    assert task.name == f"esc50/fold{fold}" and task.modalities == ("audio",)
    assert task.classes == ["dog", "rooster", "pig", "rain"]
    assert task.counts() == {"train": train, "test": test}
    # Names are <fold>-<src>-<take>-<target>.wav in the fixture: fold and target are read back from them.
    for split in ("train", "test"):
        for ex in task.splits[split]:
            file_fold, src, _, target = ex.path.stem.split("-")
            assert (int(file_fold) == fold) == (split == "test")
            assert ex.label == int(target) and ex.group == src


def test_esc50_fold1_test_files(esc50_root):
    task = read_esc50(esc50_root, fold=1)
    expected = [esc_name(1, 0, "A"), esc_name(1, 0, "B"), esc_name(1, 1, "A"), esc_name(1, 2, "A"), esc_name(1, 3, "A")]
    assert paths(task, "test", esc50_root) == sorted(f"audio/{name}" for name in expected)
    assert {ex.group for ex in task.splits["test"] if ex.label == 0} == {"1000"}  # two takes, one source


def test_esc10_subset_is_reindexed(esc50_root):
    task = read_esc50(esc50_root, fold=2, esc10=True)
    assert task.name == "esc10/fold2"
    assert task.classes == ["dog", "rain"]
    assert task.counts() == {"train": 9, "test": 2}
    for examples in task.splits.values():
        for ex in examples:
            assert ex.label == {"0": 0, "3": 1}[ex.path.stem.split("-")[-1]]


def test_esc50_fold_out_of_range(esc50_root):
    with pytest.raises(ValueError, match="fold"):
        read_esc50(esc50_root, fold=0)


def _esc_rewrite(root: Path, line: int, old: str, new: str) -> tuple[Path, int]:
    """Replace ``old`` by ``new`` in line ``line`` (1-based) of the csv."""
    path = root / "meta/esc50.csv"
    lines = path.read_text().splitlines()
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_text("\n".join(lines) + "\n")
    return path, line


def _esc_missing_column(root: Path) -> tuple[Path, int]:
    path = root / "meta/esc50.csv"
    lines = [line.rsplit(",", 2)[0] + "," + line.rsplit(",", 1)[1] for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")  # src_file dropped
    return path, 1


def _esc_missing_audio(root: Path) -> tuple[Path, int]:
    (root / "audio" / esc_name(2, 1, "A")).unlink()
    return root / "meta/esc50.csv", 8  # header, 5 rows of fold 1, then fold 2: dog, rooster


def _esc_duplicate(root: Path) -> tuple[Path, int]:
    path = root / "meta/esc50.csv"
    append(path, f"{esc_name(1, 0, 'A')},1,0,dog,True,1000,A")
    return path, line_count(path)


def _esc_short_row(root: Path) -> tuple[Path, int]:
    path = root / "meta/esc50.csv"
    append(path, "9-9-A-0.wav,1,0")
    return path, line_count(path)


def _esc_not_utf8(root: Path) -> tuple[Path, None]:
    path = root / "meta/esc50.csv"
    path.write_bytes(path.read_bytes() + b"caf\xe9.wav,1,0,dog,True,1,A\n")
    return path, None


def _esc_missing_csv(root: Path) -> tuple[Path, None]:
    path = root / "meta/esc50.csv"
    path.unlink()
    return path, None


@pytest.mark.parametrize(
    "break_it",
    [
        lambda root: _esc_rewrite(root, 3, ",1,0,dog,", ",one,0,dog,"),  # non-integer fold
        lambda root: _esc_rewrite(root, 4, ",1,1,rooster,", ",1,x,rooster,"),  # non-integer target
        lambda root: _esc_rewrite(root, 4, ",1,1,rooster,", ",6,1,rooster,"),  # no such fold
        lambda root: _esc_rewrite(root, 8, ",rooster,", ",hen,"),  # two names for one target
        lambda root: _esc_rewrite(root, 4, ",False,", ",maybe,"),  # esc10 flag
        _esc_missing_column,
        _esc_missing_audio,
        _esc_duplicate,
        _esc_short_row,
        _esc_not_utf8,
        _esc_missing_csv,
    ],
)
def test_esc50_malformed(esc50_root, break_it):
    file, line = break_it(esc50_root)
    one_line_error(lambda: read_esc50(esc50_root), file if line is None else f"{file}:{line}:")


def test_esc50_targets_with_a_gap(esc50_root):
    _esc_rewrite(esc50_root, 4, ",1,1,rooster,", ",1,7,rooster,")  # and rooster is 1 further down
    one_line_error(lambda: read_esc50(esc50_root), esc50_root / "meta/esc50.csv")


# Speech Commands


def test_speech_commands_lists_partition(speech_commands_root):
    root = speech_commands_root
    task = read_speech_commands(root)
    assert task.name == "speech_commands" and task.modalities == ("audio",)
    assert task.classes == ["down", "left", "right", "yes"]
    assert task.counts() == {"train": 9, "val": 4, "test": 4}
    everything = sorted(p.relative_to(root).as_posix() for p in root.glob("[!_]*/*.wav"))
    split_paths = [paths(task, split, root) for split in ("train", "val", "test")]
    assert sorted(sum(split_paths, [])) == everything  # disjoint and complete
    assert split_paths[1] == sorted((root / "validation_list.txt").read_text().split())
    assert split_paths[2] == sorted((root / "testing_list.txt").read_text().split())
    assert not any("_background_noise_" in p for p in sum(split_paths, []))


def test_speech_commands_groups_and_labels(speech_commands_root):
    task = read_speech_commands(speech_commands_root)
    assert {ex.group for ex in task.splits["val"]} == {"bb05582b"}
    assert {ex.group for ex in task.splits["test"]} == {"c0ffee00"}
    assert {ex.group for ex in task.splits["train"]} == {"0a1b2c3d", "d00dfeed"}
    for examples in task.splits.values():
        for ex in examples:
            assert task.classes[ex.label] == ex.path.parent.name
    yes = [ex for ex in task.splits["train"] if ex.label == 3]
    assert [ex.path.name for ex in yes] == ["0a1b2c3d_nohash_0.wav", "0a1b2c3d_nohash_1.wav", "d00dfeed_nohash_0.wav"]


def _sc_unknown_word(root: Path) -> tuple[Path, int]:
    path = root / "testing_list.txt"
    append(path, "_background_noise_/white_noise.wav")
    return path, line_count(path)


def _sc_missing_file(root: Path) -> tuple[Path, int]:
    path = root / "validation_list.txt"
    append(path, "left/ffffffff_nohash_0.wav")
    return path, line_count(path)


def _sc_in_both_lists(root: Path) -> tuple[Path, int]:
    path = root / "testing_list.txt"
    append(path, (root / "validation_list.txt").read_text().split()[0])
    return path, line_count(path)


def _sc_bad_line(root: Path) -> tuple[Path, int]:
    path = root / "testing_list.txt"
    append(path, "c0ffee00_nohash_0.wav")
    return path, line_count(path)


def _sc_not_utf8(root: Path) -> tuple[Path, None]:
    path = root / "validation_list.txt"
    path.write_bytes(b"down/\xff_nohash_0.wav\n")
    return path, None


def _sc_missing_list(root: Path) -> tuple[Path, None]:
    path = root / "testing_list.txt"
    path.unlink()
    return path, None


def _sc_bad_name(root: Path) -> tuple[Path, None]:
    path = root / "yes" / "recording.wav"
    path.write_bytes(b"\x00")
    return path, None


def _sc_no_words(root: Path) -> tuple[Path, None]:
    for word in ("down", "left", "right", "yes"):
        shutil.rmtree(root / word)
    return root, None


@pytest.mark.parametrize(
    "break_it",
    [_sc_unknown_word, _sc_missing_file, _sc_in_both_lists, _sc_bad_line, _sc_not_utf8, _sc_missing_list,
     _sc_bad_name, _sc_no_words],
)  # fmt: skip
def test_speech_commands_malformed(speech_commands_root, break_it):
    file, line = break_it(speech_commands_root)
    one_line_error(lambda: read_speech_commands(speech_commands_root), file if line is None else f"{file}:{line}:")


# LRW


def test_lrw_splits_from_folders(lrw_root):
    task = read_lrw(lrw_root)
    assert task.name == "lrw" and task.modalities == ("video", "audio")
    assert task.classes == ["ABOUT", "ABSOLUTELY", "WORLD"]
    assert task.counts() == {"train": 9, "val": 3, "test": 6}
    for split, examples in task.splits.items():
        for ex in examples:
            assert ex.path.parent.name == split and ex.path.suffix == ".mp4"
            assert task.classes[ex.label] == ex.path.parent.parent.name
            assert ex.start is None and ex.end is None and ex.group == ""
    assert paths(task, "test", lrw_root) == [
        "ABOUT/test/ABOUT_00001.mp4",
        "ABOUT/test/ABOUT_00002.mp4",
        "ABSOLUTELY/test/ABSOLUTELY_00001.mp4",
        "ABSOLUTELY/test/ABSOLUTELY_00002.mp4",
        "WORLD/test/WORLD_00001.mp4",
        "WORLD/test/WORLD_00002.mp4",
    ]


def test_lrw_missing_split_folder(lrw_root):
    shutil.rmtree(lrw_root / "WORLD/val")
    one_line_error(lambda: read_lrw(lrw_root), lrw_root / "WORLD/val")


def test_lrw_clip_of_another_word(lrw_root):
    (lrw_root / "WORLD/train/ABOUT_00009.mp4").write_bytes(b"\x00")
    one_line_error(lambda: read_lrw(lrw_root), lrw_root / "WORLD/train/ABOUT_00009.mp4")


def test_lrw_empty_split_folder(lrw_root):
    for path in (lrw_root / "ABOUT/test").iterdir():
        path.unlink()
    one_line_error(lambda: read_lrw(lrw_root), lrw_root / "ABOUT/test")


def test_lrw_no_word_folders(tmp_path):
    (tmp_path / "README").write_text("LRW\n")
    one_line_error(lambda: read_lrw(tmp_path), tmp_path)


def test_missing_roots(tmp_path):
    missing = tmp_path / "nowhere"
    for read in (read_ucf101, read_hmdb51, read_esc50, read_speech_commands, read_lrw):
        one_line_error(lambda read=read: read(missing), missing)


# Real media for the tests that decode


def test_real_media_builders_write_decodable_files(tmp_path):
    from data.media import load_audio, probe

    lrw = read_lrw(write_lrw(tmp_path / "lrw", real=True))
    info = probe(lrw.splits["val"][0].path)
    assert info.fps == pytest.approx(25.0) and info.has_audio
    assert info.duration == pytest.approx(LRW_FRAMES / 25.0, abs=0.05)

    sc = read_speech_commands(write_speech_commands(tmp_path / "sc", real=True))
    wave = load_audio(sc.splits["test"][0].path, SC_RATE)
    assert wave.shape == (SC_RATE,) and 0.4 < float(wave.abs().max()) < 0.6
    assert load_audio(lrw.splits["val"][0].path, LRW_RATE).abs().max() > 0.3


# Registry


def test_read_task_dispatches(esc50_root, lrw_root):
    assert set(READERS) == {"ucf101", "hmdb51", "esc50", "speech_commands", "lrw"}
    assert read_task("esc50", esc50_root, fold=2) == read_esc50(esc50_root, fold=2)
    assert read_task("lrw", str(lrw_root)) == read_lrw(lrw_root)


def test_read_task_unknown_kind(tmp_path):
    with pytest.raises(ValueError) as info:
        read_task("kinetics", tmp_path)
    message = str(info.value)
    assert "\n" not in message and "kinetics" in message
    assert all(kind in message for kind in READERS)
