"""Section 8 of the benchmarks (save to pixels with --live) runs end to end at tiny sizes, so it
cannot rot; `--quick` leaves it out unless named (it needs a browser). No figure is checked."""

from __future__ import annotations

from tests.test_benchmarks import quick_run


def test_quick_run_of_save_to_pixels_reports_every_series(tmp_path):
    data, stdout = quick_run(tmp_path, "--only", "8", timeout=110)
    pixels = data["results"]["pixels"]
    assert set(pixels) == {"reload", "reload+state", "morph", "morph+state"}
    for name, series in pixels.items():
        assert len(series["ms"]) == 2, name
        assert all(0 < ms < 60_000 for ms in series["ms"])
        assert len(series["server_ms"]) == 2  # each save was one reload, in the server's log
    assert pixels["morph+state"]["kept"] == [True, True]  # what morph is for
    assert all(p is not None for p in pixels["morph"]["morph"])  # the page morphed
    assert [row["#"] for row in data["rows"]] == ["8"] * 5
    assert "| 8 | save → new text painted, morph, page scrolled + text typed" in stdout


def test_quick_run_leaves_save_to_pixels_out_unless_named():
    from benchmarks.run import parse

    assert 8 not in parse(["--quick"])[0].sections
    assert 8 in parse(["--quick", "--only", "8"])[0].sections
    assert 8 in parse(["--light"])[0].sections
