"""``lmtune select``'s figure goes to the output folder, never next to the curves file it read."""

import numpy as np

from lmtune.selection.select import choose_model

SIZES = [0] + [200 * 2 ** k for k in range(8)]


def test_the_figure_is_written_to_the_output_folder_by_default(tmp_path, monkeypatch):
    data, work = tmp_path / "data", tmp_path / "work"
    data.mkdir()
    work.mkdir()
    rows = [[3.0 * (1 + d) ** -(0.2 + 0.05 * m) + 0.5 for d in SIZES] for m in range(4)]
    (data / "curves.csv").write_text("config name," + ",".join(map(str, SIZES)) + ",size\n" + "".join(
        f"m{m}," + ",".join(f"{v:.6f}" for v in row) + f",{10 ** 6 * (m + 1)}\n" for m, row in enumerate(rows)))
    monkeypatch.chdir(work)
    result = choose_model(curves=data / "curves.csv", budget_ratio=4)
    assert result.plot_path == work.joinpath("lmtune-out", "select", "curves-select.png").relative_to(work)
    assert (work / result.plot_path).stat().st_size > 10_000
    assert list(data.iterdir()) == [data / "curves.csv"]  # nothing written into the data folder
    assert result.ranking[0] == "m3" and np.isfinite(result.selection.budget)  # steepest curve predicted best
