"""Downloads and unpacking, against a local HTTP server on 127.0.0.1 (the tests have no internet)."""

import hashlib
import io
import json
import tarfile

import pytest

from http_server import FileServer
from segbench.download import DownloadError, fetch, unpack
from workflow_helpers import DEMO, make_workdir, read_config, snakemake, write_config

IDS = [f"demo_{i:03d}" for i in range(6)]


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_voc_tarball(path):
    """A miniature VOCtrainval tarball: the layout of the real one, with files segbench must skip."""
    with tarfile.open(path, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(f"VOCdevkit/VOC2012/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for i in IDS:
            add(f"JPEGImages/{i}.jpg", (DEMO / "VOC" / "JPEGImages" / f"{i}.jpg").read_bytes())
            add(f"SegmentationClass/{i}.png", (DEMO / "VOC" / "SegmentationClass" / f"{i}.png").read_bytes())
            add(f"Annotations/{i}.xml", b"<annotation/>")
        add("ImageSets/Segmentation/val.txt", "\n".join(IDS).encode() + b"\n")
    return path.read_bytes()


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    files = {"VOCtrainval.tar": make_voc_tarball(root / "VOCtrainval.tar"),
             "seg11valid.txt": "\n".join(IDS[1:5]).encode() + b"\n",
             "deploy.prototxt": (DEMO / "fcn-tiny" / "deploy.prototxt").read_bytes(),
             "model.caffemodel": (DEMO / "fcn-tiny" / "fcn-tiny.caffemodel").read_bytes()}
    for name, data in files.items():
        (root / name).write_bytes(data)
    with FileServer(root) as server:
        yield server, files


def test_interrupted_download_resumes_where_it_stopped(served, tmp_path):
    server, files = served
    dest = tmp_path / "dl" / "model.caffemodel"
    half = len(files["model.caffemodel"]) // 2
    server.cut_once["model.caffemodel"] = half
    with pytest.raises(DownloadError, match="next run resumes"):
        fetch(f"{server.url}/model.caffemodel", dest, sha256(files["model.caffemodel"]), retries=0, backoff=0)
    assert not dest.exists()  # a partial file never looks complete
    assert (tmp_path / "dl" / "model.caffemodel.part").stat().st_size == half
    assert fetch(f"{server.url}/model.caffemodel", dest, sha256(files["model.caffemodel"])) == "downloaded"
    assert server.requests[-1] == ("model.caffemodel", f"bytes={half}-")
    assert dest.read_bytes() == files["model.caffemodel"]
    assert not (tmp_path / "dl" / "model.caffemodel.part").exists()


def test_a_retry_resumes_within_one_call(served, tmp_path):
    server, files = served
    server.cut_once["VOCtrainval.tar"] = 1000
    dest = tmp_path / "voc.tar"
    assert fetch(f"{server.url}/VOCtrainval.tar", dest, sha256(files["VOCtrainval.tar"]), backoff=0) == "downloaded"
    assert [r for _, r in server.requests] == [None, "bytes=1000-"]
    assert dest.read_bytes() == files["VOCtrainval.tar"]


def test_checksum_mismatch_is_refused_with_both_hashes(served, tmp_path):
    server, files = served
    dest = tmp_path / "deploy.prototxt"
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DownloadError) as error:
        fetch(f"{server.url}/deploy.prototxt", dest, wrong)
    message = str(error.value)
    assert str(dest) in message and "0" * 64 in message
    assert hashlib.sha256(files["deploy.prototxt"]).hexdigest() in message
    assert not dest.exists() and not (tmp_path / "deploy.prototxt.part").exists()


def test_present_and_verified_file_is_not_downloaded_again(served, tmp_path):
    server, files = served
    dest = tmp_path / "seg11valid.txt"
    dest.write_bytes(files["seg11valid.txt"])
    assert fetch(f"{server.url}/seg11valid.txt", dest, sha256(files["seg11valid.txt"])) == "present"
    assert server.requests == []
    dest.write_bytes(b"tampered")
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(f"{server.url}/seg11valid.txt", dest, sha256(files["seg11valid.txt"]))


def test_unpack_takes_only_the_members_asked_for(served, tmp_path):
    server, files = served
    archive = tmp_path / "voc.tar"
    archive.write_bytes(files["VOCtrainval.tar"])
    dest = tmp_path / "VOC2012"
    unpack(archive, dest, strip="VOCdevkit/VOC2012", members=["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"])
    assert sorted(p.name for p in dest.iterdir()) == [".segbench-unpacked", "ImageSets", "JPEGImages", "SegmentationClass"]
    assert len(list((dest / "JPEGImages").iterdir())) == len(IDS)
    assert unpack(archive, dest) == "present"


def fetch_config(workdir, server, files, checksums=None):
    checksums = checksums or {name: sha256(data) for name, data in files.items()}
    config = read_config(workdir)
    config["downloads"] = {
        "downloads/VOCtrainval.tar": {"url": f"{server.url}/VOCtrainval.tar", "checksum": checksums["VOCtrainval.tar"]},
        "downloads/seg11valid.txt": {"url": f"{server.url}/seg11valid.txt", "checksum": checksums["seg11valid.txt"]},
        "models/tiny/deploy.prototxt": {"url": f"{server.url}/deploy.prototxt", "checksum": checksums["deploy.prototxt"]},
        "models/tiny/model.caffemodel": {"url": f"{server.url}/model.caffemodel",
                                         "checksum": checksums["model.caffemodel"]},
    }
    config["unpack"] = {"data/VOC2012": {
        "archive": "downloads/VOCtrainval.tar", "strip": "VOCdevkit/VOC2012",
        "members": ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"],
        "add": {"ImageSets/Segmentation/seg11valid.txt": "downloads/seg11valid.txt"}}}
    config["dataset"].update(root="data/VOC2012", split="seg11valid", limit=None)
    config["models"]["fcn-tiny"].update(prototxt="models/tiny/deploy.prototxt", weights="models/tiny/model.caffemodel")
    config["runs"] = {"fcn-tiny-caffe-cpu": config["runs"]["fcn-tiny-caffe-cpu"]}
    write_config(workdir, config)


@pytest.mark.slow
def test_fetch_then_benchmark_then_nothing_downloads_again(served, tmp_path):
    server, files = served
    workdir = make_workdir(tmp_path / "wd")
    fetch_config(workdir, server, files)
    first = snakemake(workdir, "fetch")
    assert sorted(name for name, _ in server.requests) == sorted(files)
    assert (workdir / "data" / "VOC2012" / "ImageSets" / "Segmentation" / "seg11valid.txt").read_bytes() == files["seg11valid.txt"]
    assert "Annotations" not in [p.name for p in (workdir / "data" / "VOC2012").iterdir()]
    snakemake(workdir)
    summary = json.loads((workdir / "results" / "fcn-tiny-caffe-cpu" / "summary.json").read_text())
    assert summary["images"] == 4  # seg11valid lists four of the six images
    requests = len(server.requests)
    snakemake(workdir, "fetch")
    result = snakemake(workdir)
    assert "Nothing to be done" in result.stdout + result.stderr
    assert len(server.requests) == requests, "a second run downloaded something"
    assert first.returncode == 0


@pytest.mark.slow
def test_workflow_refuses_a_download_with_the_wrong_checksum(served, tmp_path):
    server, files = served
    workdir = make_workdir(tmp_path / "wd")
    checksums = {name: sha256(data) for name, data in files.items()}
    checksums["model.caffemodel"] = sha256(b"something else")
    fetch_config(workdir, server, files, checksums)
    result = snakemake(workdir, "fetch", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "models/tiny/model.caffemodel" in output and "sha256 mismatch" in output
    assert hashlib.sha256(files["model.caffemodel"]).hexdigest() in output
    assert not (workdir / "models" / "tiny" / "model.caffemodel").exists()
