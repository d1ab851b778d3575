"""Atomic writes: nothing half-written, usual file mode."""

import os
import stat

import pytest

from unroll3d.utils import atomic_path, atomic_write_json


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_successful_write_has_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert (tmp_path / "a.json").read_text().strip() == '{\n  "x": 1\n}'


def test_peak_rss_counts_what_happens_after_a_reset():
    """reset_peak_rss + peak_rss_gb measure a later allocation (Linux; skipped elsewhere). The
    block is a fresh anonymous mapping, touched page by page: a malloc'd one can reuse pages
    already resident from earlier tests (seen in a full-suite run) and add nothing."""
    import mmap

    from unroll3d.utils import peak_rss_gb, reset_peak_rss, rss_gb

    if not reset_peak_rss():
        pytest.skip("the kernel's peak-RSS counter cannot be reset here")
    base = rss_gb()
    block = mmap.mmap(-1, 64 * 2**20)  # 64 MiB
    block.write(b"\x01" * len(block))
    block.close()
    assert peak_rss_gb() - base >= 0.05  # GB (10⁹ B): 64 MiB = 0.067 GB


def test_atomic_write_csv_roundtrip(tmp_path):
    """Header from the first row (or the given columns); missing and None values are empty."""
    import csv

    from unroll3d.utils import atomic_write_csv

    path = tmp_path / "sub" / "t.csv"
    atomic_write_csv(path, [{"a": 1, "b": None}, {"a": 2}])
    assert list(csv.reader(path.open())) == [["a", "b"], ["1", ""], ["2", ""]]
    atomic_write_csv(path, [{"b": 3}], fieldnames=["a", "b"])
    assert path.read_text().splitlines() == ["a,b", ",3"]
    with pytest.raises(ValueError):  # a key outside the columns is an error, not dropped
        atomic_write_csv(path, [{"c": 1}], fieldnames=["a"])
    assert path.read_text().splitlines() == ["a,b", ",3"]  # the old file is left whole
    assert [p.name for p in path.parent.iterdir()] == ["t.csv"]
