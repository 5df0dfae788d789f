"""Federated learning on the user's own data: ``--dataset PATH.npz|PATH.csv``.

Simulations on an .npz and a .csv with string labels (accuracy above chance, class names in the
JSON), one clear line for every unusable file, the server refusing a bad file before starting
anything, and the loader's contract (label mapping, splits, cache, absolute paths, no torch)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, run_cli

pytest.importorskip("flwr")
pytest.importorskip("sklearn")

from tests.conftest import assert_user_error  # noqa: E402
from edgekit.core.errors import DataError, UsageError  # noqa: E402
from edgekit.federated.config import FedConfig  # noqa: E402
from edgekit.federated.data import load_dataset, load_partition  # noqa: E402


_user_error = assert_user_error


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """digits as 8x8 images with string labels in an .npz; a 3-class table with names in a .csv."""
    from sklearn.datasets import load_digits, make_classification

    d = tmp_path_factory.mktemp("userdata")
    dig = load_digits()
    np.savez(d / "digits.npz", x=(dig.images[:700] / 16.0).astype(np.float32),
             y=np.array([f"d{v}" for v in dig.target[:700]]))
    x, y = make_classification(n_samples=400, n_features=6, n_informative=4, n_redundant=0, n_classes=3,
                               class_sep=2.0, random_state=0)
    names = np.array(["cat", "dog", "eel"])[y]
    lines = ["f0,f1,f2,f3,f4,f5,label"] + [",".join(f"{v:.4f}" for v in r) + f",{n}" for r, n in zip(x, names)]
    (d / "table.csv").write_text("\n".join(lines) + "\n")
    return d


def _simulate(*args, cwd=None):
    res = run_cli("federated", "simulate", "--clients", "4", "--horizon", "400", "--no-churn", "--alpha", "1.0",
                  "--json", *args, cwd=cwd, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def test_simulate_on_an_npz_given_by_a_relative_path(files):
    r = _simulate("--dataset", "digits.npz", "--lr", "0.1", cwd=files)
    assert r["classes"] == [f"d{i}" for i in range(10)]
    assert r["dataset"] == str(files / "digits.npz") == r["config"]["dataset"]  # absolute for other processes
    assert r["config"]["lr"] == 0.1 and r["config"]["epochs"] == 2 and r["version"] > 0
    assert r["final_acc"] > 0.4, r["final_acc"]  # chance is 0.1


def test_simulate_on_a_csv_with_string_labels(files):
    r = _simulate("--dataset", files / "table.csv", "--epochs", "3")
    assert r["classes"] == ["cat", "dog", "eel"] and r["config"]["epochs"] == 3
    # chance is 1/3; this seed levels off at 0.60-0.61 (80 test rows) with either client loss
    assert r["final_acc"] > 0.5, r["final_acc"]


def _bad_files(d):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 5)).astype(np.float32), np.arange(80) % 2
    nan = x.copy()
    nan[3, 2] = np.nan
    np.savez(d / "nan.npz", x=nan, y=y)
    np.savez(d / "one.npz", x=x, y=np.zeros(80, np.int64))
    np.savez(d / "few.npz", x=x[:30], y=y[:30])
    np.savez(d / "len.npz", x=x, y=y[:70])
    np.savez(d / "nox.npz", features=x, y=y)
    (d / "data.txt").write_text("a,label\n1,0\n")
    (d / "nohead.csv").write_text("\n".join(f"1,2,{i % 2}" for i in range(60)))
    (d / "cell.csv").write_text("a,b,label\n" + "\n".join(f"1,x{i},{i % 2}" for i in range(60)))


@pytest.mark.parametrize("name, needles", [
    ("absent.npz", ["absent.npz does not exist"]),
    ("data.txt", ["data.txt: unsupported format '.txt'", ".npz", ".csv"]),
    ("nan.npz", ["nan.npz: x has 1 non-finite values", "row 3"]),
    ("one.npz", ["one.npz: y has a single class", "at least two classes"]),
    ("few.npz", ["few.npz: only 30 examples", "at least 50"]),
    ("len.npz", ["len.npz: y: 70 labels for 80 examples"]),
    ("nox.npz", ["nox.npz has no array 'x' (it has: features, y)", "np.savez"]),
    ("nohead.csv", ["nohead.csv: the first row is numbers, not a header row"]),
    ("cell.csv", ["cell.csv, line 2, column 'b': 'x0' is not a number"]),
])
def test_unusable_files_are_one_clear_line(tmp_path, name, needles):
    _bad_files(tmp_path)
    _user_error(run_cli("federated", "simulate", "--dataset", tmp_path / name, "--horizon", "30",
                        "--out", tmp_path / "r.json", timeout=60), *needles)
    assert not (tmp_path / "r.json").exists()


def test_too_many_clients_for_the_file_and_unknown_names(files):
    _user_error(run_cli("federated", "simulate", "--dataset", files / "table.csv", "--clients", "200", timeout=60),
                "fewer than 4 for each of 200 clients", "--clients")
    _user_error(run_cli("federated", "simulate", "--dataset", "cifar", timeout=60),
                "unknown data set 'cifar'", "path of an .npz or .csv file")
    with pytest.raises(UsageError, match="unknown data set"):
        FedConfig(dataset="cifar")
    with pytest.raises(UsageError, match="unknown model"):
        FedConfig(model="rnn")
    for kw in (dict(epochs=0), dict(lr=0.0), dict(lr=float("nan"))):
        with pytest.raises(UsageError):
            FedConfig(**kw)


@pytest.mark.parametrize("dataset, extra, needles", [
    ("absent.npz", [], ["absent.npz does not exist"]),
    ("one.npz", [], ["one.npz: y has a single class"]),
    ("table.csv", ["--model", "cnn"], ["cnn needs a square image input, got 6 features"]),
])
def test_server_refuses_a_bad_data_file_before_starting_anything(files, tmp_path, dataset, extra, needles):
    _bad_files(files)
    out = tmp_path / "result.json"
    out.write_text("{}")
    _user_error(run_cli("federated", "server", "--insecure", "--timeout", "5", "--out", out, "--checkpoint-dir",
                        tmp_path / "ck", "--dataset", files / dataset, *extra, timeout=60), *needles)
    assert out.read_text() == "{}" and not (tmp_path / "ck").exists()


def test_labels_splits_and_test_arrays(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2, 3))  # any shape: flattened to (N, 6) float32
    y = rng.choice([10, -3, 7], size=200)
    te_x, te_y = rng.normal(size=(40, 2, 3)), rng.choice([7, 10], size=40)
    np.savez(tmp_path / "a.npz", x=x, y=y, x_test=te_x, y_test=te_y)
    s = load_dataset(str(tmp_path / "a.npz"), 3)
    assert s.classes == ("-3", "7", "10") and s.n_classes == 3 and s.in_dim == 6
    assert s.pool_x.dtype == np.float32 and len(s.test_y) == 40  # x_test is the test set, whole
    np.testing.assert_array_equal(s.test_y, np.searchsorted([-3, 7, 10], te_y))
    assert len(s.public_x) == 40 and len(s.val_y) == 20 and set(s.val_y) == {0, 1, 2}
    assert len(s.pool_y) + len(s.val_y) + len(s.public_x) == 200
    rows = {r.tobytes() for part in (s.pool_x, s.public_x, s.val_x) for r in part}
    assert len(rows) == 200  # disjoint
    again = load_dataset(str(tmp_path / "a.npz"), 3)
    assert again is s  # cached
    np.savez(tmp_path / "bad.npz", x=x, y=y, x_test=te_x, y_test=np.full(40, 99))
    with pytest.raises(DataError, match=r"y_test has labels not in y: \['99'\]"):
        load_dataset(str(tmp_path / "bad.npz"))


def test_an_edited_file_is_read_again(tmp_path):
    import os

    p = tmp_path / "e.npz"
    rng = np.random.default_rng(0)
    np.savez(p, x=rng.normal(size=(100, 4)), y=np.arange(100) % 2)
    first = load_dataset(str(p))
    np.savez(p, x=rng.normal(size=(120, 4)), y=np.array(["a", "b", "c"])[np.arange(120) % 3])
    os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10**9))  # a coarse clock
    second = load_dataset(str(p))
    assert first.n_classes == 2 and second.classes == ("a", "b", "c")


def test_client_partition_and_node_file_with_class_names(files, tmp_path):
    """The ClientApp's data paths: a Dirichlet partition of the file's pool, or the node's own
    .npz whose string labels are mapped to the data set's class names."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from edgekit.federated.client import train_clone
    from edgekit.federated.models import build_model, get_state
    from edgekit.federated.state import state_to_record
    from edgekit.federated.sim.grid import VirtualGrid  # sets a local task identity

    VirtualGrid([])
    ds = str(files / "table.csv")
    s = load_dataset(ds, 0)
    x, y = load_partition(ds, 1, 4, 0.5, 0)
    assert len(x) > 0 and x.shape[1] == 6 and y.max() < 3
    np.savez(tmp_path / "mine.npz", x=s.test_x[:20], y=np.array(s.classes)[s.test_y[:20]])
    mx, my = load_partition(ds, 0, 1, 0.5, 0, data_path=str(tmp_path / "mine.npz"))
    np.testing.assert_array_equal(my, s.test_y[:20])
    np.savez(tmp_path / "other.npz", x=s.test_x[:20], y=np.array(["cat", "emu"] * 10))
    with pytest.raises(DataError, match="'emu' is not a class"):
        load_partition(ds, 0, 1, 0.5, 0, data_path=str(tmp_path / "other.npz"))
    msg = Message(RecordDict({"arrays": state_to_record(get_state(build_model("mlp", 6, 3))),
                              "config": ConfigRecord(FedConfig(dataset=ds).client_config(0))}), 7, "train")
    for node in ({"partition-id": 2, "num-partitions": 4},
                 {"partition-id": 0, "num-partitions": 1, "data-path": str(tmp_path / "mine.npz")}):
        reply = train_clone(msg, Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={}))
        assert not reply.has_error(), reply.error.reason
        assert reply.content.metric_records["metrics"]["num-examples"] > 0
    # the server sends the data set's shape and class names: a node with its own file needs no copy
    shape = {"in-dim": 6, "n-classes": 3, "classes": ["cat", "dog", "eel"]}
    away = FedConfig(dataset=str(tmp_path / "only-on-the-server.csv")).client_config(0)
    msg = Message(RecordDict({"arrays": state_to_record(get_state(build_model("mlp", 6, 3))),
                              "config": ConfigRecord({**away, **shape})}), 7, "train")
    node = {"partition-id": 0, "num-partitions": 1, "data-path": str(tmp_path / "mine.npz")}
    reply = train_clone(msg, Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={}))
    assert not reply.has_error(), reply.error.reason
    assert reply.content.metric_records["metrics"]["num-examples"] == 20


def test_loading_a_data_file_imports_no_torch(files):
    code = ("import sys; from edgekit.federated.data import load_dataset; "
            f"s = load_dataset({str(files / 'table.csv')!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(s.classes)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "('cat', 'dog', 'eel')" in res.stdout
