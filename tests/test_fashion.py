"""Fashion-MNIST and the built-in `fashion` net (issue 27): the Debian package's IDX files
become upload zips labelled with the class names and go to a data server; the example
name works wherever `mnist` does; a missing package is named in the error."""

from __future__ import annotations

import json
import subprocess
import zipfile

import pytest
from test_master_integration import MLITB, create_project, details

from mlitb import examples
from mlitb.data import fashion
from mlitb.model.spec import Spec


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([MLITB, *args], capture_output=True, text=True, timeout=300, **kw)


def test_fetch_fashion_mnist_makes_labelled_zips_and_uploads_them(master, tmp_path):
    out = run("data", "fetch-fashion-mnist", "--train-limit", "300", "--test-limit", "100", "--out",
              str(tmp_path / "zips"), "--upload", "--server", f"{master.url}/data", "--token",
              master.data_token, "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    with zipfile.ZipFile(report["zips"]["train"]) as zf:
        folders = {n.split("/")[1] for n in zf.namelist()}
    assert folders <= set(fashion.CLASSES) and len(folders) == 10
    assert report["train"]["items"] == 300 and report["test"]["items"] == 100
    assert sorted(report["train"]["labels"]) == sorted(fashion.CLASSES)
    # the built-in net on it, by name, as `--spec mnist` works
    create_project(master.url, "fashion", [report["train"]["dataset"]], [report["test"]["dataset"]],
                   spec=examples.load("fashion")["layer_defs"], hyper={})  # fmt: skip
    d = details(master.url, "fashion")
    assert d["num_params"] == Spec.from_json(examples.load("fashion")["layer_defs"]).num_params
    assert sorted(d["labels"]) == sorted(fashion.CLASSES)


def test_a_missing_package_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion.find_source()


@pytest.mark.parametrize("name", examples.NAMES)
def test_built_in_examples_work_by_name(name, tmp_path):
    check = run("model", "check", name)
    assert check.returncode == 0, check.stderr
    assert "parameters" in check.stdout
    init = run("model", "init", name, str(tmp_path / "m.json"))
    assert init.returncode == 0, init.stderr
    if name == "fashion":  # nested layers are listed under their block, numbered 4.0, 4.1, ...
        assert "  4.0    conv" in check.stdout and "batchnorm" in check.stdout
    assert run("model", "check", "no-such-example").returncode != 0
