"""Dataset files are data: a CIFAR batch or meta pickle whose content would run code is refused with one line naming
the file, and the marker the payload would write never appears; the real release's format still reads. The other
readers of files one is handed (MATLAB files, the YAML and JSON configs beside model files) run nothing either."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_transfer import cifar_rows, module, write_cifar10, write_cifar100

from mae.data.errors import CorruptDataError
from mae.data.transfer_datasets import CIFAR10DataModule, CIFAR100DataModule
from mae.data.transfer_datasets.files import read_pickle


class MakesMarker:
    """Unpickling this object would create the marker folder (``os.mkdir``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


class WritesMarker(MakesMarker):
    """Unpickling this object would call ``exec`` and write the marker file."""

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def write(path: Path, content: object, protocol: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    return path


def python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickle opcode for opcode as the release's (Python 2 ``cPickle``, protocol 2) are: ``str`` keys and
    values as ``SHORT_BINSTRING``/``BINSTRING``, the array through ``numpy.core.multiarray._reconstruct``."""

    def string(raw: bytes) -> bytes:
        return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw

    def integer(value: int) -> bytes:
        return b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value)

    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + integer(0)
        + b"\x85"
        + string(b"b")
        + b"\x87R("
        + integer(1)
        + integer(data.shape[0])
        + integer(data.shape[1])
        + b"\x86"
        + b"cnumpy\ndtype\n"
        + string(b"u1")
        + integer(0)
        + integer(1)
        + b"\x87R("
        + integer(3)
        + string(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff"
        + integer(0)
        + b"tb\x89"
        + string(data.tobytes())
        + b"tb"
    )
    items = (
        string(b"data")
        + array
        + string(b"labels")
        + b"]("
        + b"".join(integer(x) for x in labels)
        + b"e"
        + string(b"batch_label")
        + string(b"training batch 1 of 5")
        + string(b"filenames")
        + b"]("
        + b"".join(string(b"%d.png" % i) for i in range(len(labels)))
        + b"e"
    )
    return b"\x80\x02}(" + items + b"u."


@pytest.mark.parametrize("payload", [MakesMarker, WritesMarker])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_cifar_batch_with_a_payload_is_refused_and_never_runs(tmp_path, payload, protocol):
    tiny = write_cifar10(tmp_path)
    marker = tmp_path / "marker"
    batch = write(
        tiny.root / "cifar-10-batches-py" / "data_batch_3",
        {"labels": [0, 1], "data": cifar_rows([0, 1]), "extra": payload(marker)},
        protocol,
    )
    with pytest.raises(CorruptDataError) as error:
        module(CIFAR10DataModule, tiny.root).setup()
    message = str(error.value)
    assert str(batch) in message and "\n" not in message and "asks for the global" in message, message
    assert not marker.exists()


def test_a_cifar100_meta_file_with_a_payload_is_refused_and_never_runs(tmp_path):
    tiny = write_cifar100(tmp_path)
    marker = tmp_path / "marker"
    meta = write(
        tiny.root / "cifar-100-python" / "meta",
        {"fine_label_names": ["a", "b", "c"], "coarse_label_names": [WritesMarker(marker)]},
    )
    with pytest.raises(CorruptDataError, match=r"asks for the global (__builtin__|builtins)\.exec") as error:
        module(CIFAR100DataModule, tiny.root).setup()
    assert str(meta) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


def test_a_payload_that_is_the_whole_file_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = write(tmp_path / "data_batch_1", MakesMarker(marker))
    with pytest.raises(CorruptDataError, match=r"asks for the global (posix|nt|os)\.mkdir") as error:
        read_pickle(path)
    assert str(path) in str(error.value)
    assert not marker.exists()


def test_the_release_format_still_reads(tmp_path):
    """A Python 2 protocol-2 batch (as the release is written) and Python 3 re-pickles, bytes keys included."""
    data = cifar_rows([2, 0, 1])
    path = tmp_path / "data_batch_1"
    path.write_bytes(python2_batch(data, [2, 0, 1]))
    entry = read_pickle(path)
    assert sorted(entry) == ["batch_label", "data", "filenames", "labels"]
    assert entry["labels"] == [2, 0, 1] and entry["filenames"] == ["0.png", "1.png", "2.png"]
    assert entry["data"].dtype == np.uint8 and np.array_equal(entry["data"], data)
    for protocol in (2, 4, 5):
        again = read_pickle(
            write(
                tmp_path / f"p{protocol}",
                {b"data": data, b"labels": np.array([2, 0, 1]), b"filenames": [b"0.png"]},
                protocol,
            )
        )
        assert np.array_equal(again["data"], data) and list(again["labels"]) == [2, 0, 1]
        assert again["filenames"] == [b"0.png"]


def test_a_tiny_cifar10_in_the_release_format_trains(tmp_path):
    tiny = write_cifar10(tmp_path)
    for number, labels in enumerate([[0, 1], [2, 0], [1, 2], [0, 1], [2, 2]], 1):
        (tiny.root / "cifar-10-batches-py" / f"data_batch_{number}").write_bytes(
            python2_batch(cifar_rows(labels), labels)
        )
    dm = module(CIFAR10DataModule, tiny.root)
    dm.setup()
    assert len(dm.splits.train.dataset) == 10 and dm.classes == ["airplane", "automobile", "bird"]


def test_matlab_files_are_read_without_running_code(tmp_path):
    """``scipy.io.loadmat`` builds arrays only (MATLAB objects become opaque arrays): a pickle payload given as a
    ``.mat`` file is a one-line corrupt-file error, and nothing runs."""
    pytest.importorskip("scipy")
    from mae.data.transfer_datasets.files import read_mat

    marker = tmp_path / "marker"
    path = write(tmp_path / "imagelabels.mat", WritesMarker(marker))
    with pytest.raises(CorruptDataError) as error:
        read_mat(path, "labels")
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


def test_a_run_config_with_a_python_tag_is_refused_and_never_runs(tmp_path):
    """``config_resolved.yaml`` beside a checkpoint is read with YAML's safe subset: a ``!!python/object/apply``
    tag (which PyYAML's unsafe loader would call) is one line naming the file, for both of its readers."""
    from mae.model_files.checkpoint import CheckpointError
    from mae.model_files.loading import stored_architecture
    from mae.model_files.stored_config import stored_normalization

    marker = tmp_path / "marker"
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    config = run_dir / "config_resolved.yaml"
    config.write_text(
        f"data: !!python/object/apply:os.mkdir [{str(marker)!r}]\n"
        f"model: !!python/object/apply:os.mkdir [{str(marker)!r}]\n"
    )
    for read in (lambda: stored_normalization(ckpt), lambda: stored_architecture(ckpt, {"state_dict": {}})):
        with pytest.raises(CheckpointError) as error:
            read()
        message = str(error.value)
        assert (
            message.startswith(f"cannot read {config}: could not determine a constructor for the tag")
            and "\n" not in message
        ), message
        assert not marker.exists()


def test_a_damaged_export_sidecar_is_one_line_naming_it(tmp_path):
    from mae.model_files.checkpoint import CheckpointError
    from mae.model_files.stored_config import stored_normalization

    export = tmp_path / "mae.safetensors"
    export.write_bytes(b"")
    sidecar = tmp_path / "mae.json"
    sidecar.write_text('{"normalization": {"mean": [0.5], ')
    with pytest.raises(CheckpointError, match=f"^cannot read {sidecar}: ") as error:
        stored_normalization(export)
    assert "\n" not in str(error.value)
