"""Every number a table prints is screened: a NaN/±inf quality metric (PSNR,
3D SSIM, slice-wise SSIM) is a failed cell named in a footnote, as for PSNR; a NaN/±inf cost or
memory value, or an infinite benchmark cell, is an error naming the file and key."""

import json
import re

import pytest
from test_report import CONFIG, _write_sweep, write_evals

from unroll3d import report
from unroll3d.report.common import ReportError


def _set(path, key, literal):
    """Write ``key`` as a raw JSON literal (NaN, Infinity) into an eval file."""
    rec = json.loads(path.read_text())
    rec[key] = "@@"
    path.write_text(json.dumps(rec).replace('"@@"', literal))


def test_an_infinite_slice_ssim_is_a_failed_cell_not_inf(tmp_path):
    write_evals(tmp_path, slices=False)
    bad = tmp_path / "eval" / "cbct" / "v30" / "postproc" / "vol_b.json"
    _set(bad, "ssim_slices", "Infinity")
    cells = report.collect_evals(tmp_path, CONFIG)
    report.write_tables(cells, CONFIG, tmp_path / "t", commit="x")
    t1 = (tmp_path / "t" / "table1_cbct.md").read_text()
    row = next(line for line in t1.splitlines() if line.startswith("| DRUNet[3D]"))
    assert row.split(" | ")[1].startswith("failed")  # SSIM at v30
    assert "inf" not in row.lower()
    assert f"{bad}: non-finite ssim_slices = inf" in t1
    csv = (tmp_path / "t" / "table1_cbct.csv").read_text()
    assert not re.search(r"(?<![a-z_])inf(?![a-z_])", csv.lower())


@pytest.mark.parametrize(
    ("key", "literal"),
    [("inference_time_s", "Infinity"), ("inference_peak_memory_gb", "NaN")],
)
def test_a_non_finite_cost_stops_the_report_naming_the_file(tmp_path, key, literal):
    write_evals(tmp_path, slices=False)
    bad = tmp_path / "eval" / "mri" / "R5" / "partition" / "vol_a.json"
    _set(bad, key, literal)
    with pytest.raises(ReportError, match=rf"{bad}: key '\w+' is not a finite number"):
        report.collect_evals(tmp_path, CONFIG)


def test_an_infinite_train_stat_stops_the_report(tmp_path):
    write_evals(tmp_path, slices=False)
    bad = tmp_path / "eval" / "cbct" / "v30" / "partition" / "vol_a.json"
    rec = json.loads(bad.read_text())
    rec.pop("train_step", None)
    rec["train_stats"] = {"step_time_mean_s": "@@", "peak_memory_gb": 1.0}
    bad.write_text(json.dumps(rec).replace('"@@"', "Infinity"))
    with pytest.raises(ReportError, match=rf"{bad}: key 'train_stats.step_time_mean_s' is not"):
        report.collect_evals(tmp_path, CONFIG)


def test_an_infinite_benchmark_cell_stops_the_report(tmp_path):
    bench = tmp_path / "bench_normal.csv"
    bench.write_text(
        "volume,patch,views,method,it_per_s,device\n"
        "64,16,30,exact,2.0,cpu\n"
        "64,16,30,H,inf,cpu\n"
    )
    with pytest.raises(ReportError, match=r"bench_normal.csv: line 3, column 'it_per_s' is not"):
        report.write_tables({}, CONFIG, tmp_path / "t", commit="x", bench_normal=bench)
    assert not (tmp_path / "t").exists()  # nothing written before every table was built


def test_a_failing_report_leaves_the_existing_tables_as_they_were(tmp_path):
    """Every table is built before the first file is replaced: a failure keeps the old ones."""
    out = tmp_path / "t"
    out.mkdir()
    old = {p: f"old {p}" for p in ("table1_cbct.md", "table1_cbct.csv", "claims.md")}
    for name, text in old.items():
        (out / name).write_text(text)
    bench = tmp_path / "bench_normal.csv"
    bench.write_text("volume,patch,views,method,it_per_s,device\n64,16,30,H,-inf,cpu\n")
    write_evals(tmp_path, slices=False)
    cells = report.collect_evals(tmp_path, CONFIG)
    with pytest.raises(ReportError, match="not a finite number"):
        report.write_tables(cells, CONFIG, out, commit="x", bench_normal=bench)
    assert {p.name: p.read_text() for p in out.iterdir()} == old


@pytest.mark.parametrize(
    ("key", "said"),
    [("task", "mri"), ("setting", "v50"), ("variant", "partition"), ("volume", "vol_a")],
)
def test_an_eval_file_that_contradicts_its_path_is_refused(tmp_path, key, said):
    """A copied or misnamed file would land in the wrong cell: the content must agree with
    every level of its path, and the error names the file, the key and both values."""
    write_evals(tmp_path, slices=False)
    bad = tmp_path / "eval" / "cbct" / "v30" / "partition-H" / "vol_b.json"
    rec = json.loads(bad.read_text())
    meant = rec[key]
    bad.write_text(json.dumps({**rec, key: said}))
    want = rf"^{re.escape(str(bad))}: key '{key}' is '{said}' but its path says '{meant}'$"
    with pytest.raises(ReportError, match=want):
        report.collect_evals(tmp_path, CONFIG)
    with pytest.raises(ReportError, match=want):
        report.read_eval(bad)  # the path's own layout, when no caller says what it stands for


def test_a_sweep_file_that_contradicts_its_path_is_refused(tmp_path):
    """The sweep's files (``sweep/p<patch>/``) are checked against their task, setting and
    volume, and the sweep's variant."""
    cfg = {**CONFIG, "sweep": {"enabled": True, "variant": "partition-H", "cbct": [[4, 8, 8]]}}
    stats = {"peak_memory_gb": 1.0, "step_time_mean_s": 0.1}
    for setting in ("v30", "v50"):
        _write_sweep(tmp_path, "cbct", setting, "4x8x8", [20.0, 22.0], stats)
    assert report.collect_sweep(tmp_path, cfg, "cbct")[0].n_volumes == 4
    bad = tmp_path / "eval" / "cbct" / "v50" / "sweep" / "p4x8x8" / "vol_a.json"
    bad.write_text(json.dumps({**json.loads(bad.read_text()), "setting": "v30"}))
    with pytest.raises(ReportError, match=r"key 'setting' is 'v30' but its path says 'v50'$"):
        report.collect_sweep(tmp_path, cfg, "cbct")
